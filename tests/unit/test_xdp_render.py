"""The XDP backend's tables (render/xdp.py, pure) and what it refuses: no kernel."""

from __future__ import annotations

from typing import Any

import pytest

from vipctl.backends.xdp import XdpBackend
from vipctl.core.partition import Layout
from vipctl.core.plan import desired
from vipctl.core.spec import parse_spec
from vipctl.core.transition import Move
from vipctl.errors import SpecError
from vipctl.render import xdp as rx
from vipctl.render.wiring import NO_MAC, Wiring

MACS = {"web1": "02:00:00:00:01:02", "web2": "02:00:00:00:02:02", "web3": "02:00:00:00:03:02"}
WIRING = Wiring(ifindex={"m1": 3, "m2": 4, "m3": 5}, macs=MACS)


def spec(**extra: Any) -> Any:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253", "2001:db8:f::253"],
            "uplink": "up0",
            "mode": "steer",
            "backend": "xdp",
            "partition": {"bits": 4},
            "members": [
                {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in (1, 2, 3)
            ],
            **extra,
        }
    )


def test_buckets_carry_their_phase_and_owners() -> None:
    s = spec()
    layout = desired(s, None)
    owner0 = layout.table[0]
    assert owner0 is not None
    other = next(m for m in ("web1", "web2", "web3") if m != owner0)
    moving = {
        0: Move(other, owner0, 0.0, "move"),
        1: Move(other, layout.table[1] or "", 0.0, "record"),
    }
    t = rx.build(s, layout, WIRING, 7, moving)
    slot = {m.name: i for i, m in enumerate(s.members)}
    assert t.buckets[0] == (rx.PHASE_MOVE, slot[other], slot[owner0])
    assert t.buckets[1] == (rx.PHASE_RECORD, slot[other], slot[other])
    assert all(b[0] == rx.PHASE_STABLE for b in t.buckets[2:])
    names = [m.name for m in s.members]
    # which/fingerprint read new flows' owner: record -> old, move -> new
    assert rx.owner_of(t.buckets[0], names) == owner0
    assert rx.owner_of(t.buckets[1], names) == other
    assert len(t.bucket_bytes()) == 16 * rx.BUCKET.size
    assert rx.CONFIG.unpack(t.config("00000000000000ff"))[:2] == (7, 255)
    # pinning off: no transitions whatever is passed
    off = rx.build(spec(pinning={"mode": "off"}), layout, WIRING, 7, moving)
    assert {b[0] for b in off.buckets} == {rx.PHASE_STABLE}


def test_a_member_that_is_down_or_has_no_port_gets_no_packet() -> None:
    s = spec()
    down = desired(s, None, down={"web2"})
    t = rx.build(s, down, WIRING, 1)
    assert [m.alive for m in t.members] == [True, False, True]
    assert all(rx.owner_of(b, ["web1", "web2", "web3"]) != "web2" for b in t.buckets)
    no_port = Wiring(ifindex={"m1": 3, "m3": 5}, macs={**MACS, "web2": NO_MAC})
    t = rx.build(s, down, no_port, 1)
    assert t.members[1].ifindex == 0 and not t.members[1].alive
    nobody = Layout(bits=4, weights=down.weights, base=down.table, table=(None,) * 16)
    assert {b[0] for b in rx.build(s, nobody, WIRING, 1).buckets} == {rx.PHASE_NONE}


def test_the_digest_ignores_the_generation_and_follows_the_table() -> None:
    s = spec()
    be = XdpBackend()
    layout = desired(s, None)
    a, b = be.render(s, layout, WIRING, 1), be.render(s, layout, WIRING, 2)
    assert a.digest == b.digest and a.text != b.text
    assert "buckets 0-" in a.text or "buckets 0:" in a.text
    moved = be.render(s, desired(s, None, down={"web1"}), WIRING, 1)
    assert moved.digest != a.digest


def test_the_vips_are_part_of_the_generation() -> None:
    s = spec(vips=["198.51.100.253", "198.51.100.252", "2001:db8:f::253"])
    t = rx.build(s, desired(s, None), WIRING, 1)
    fields = rx.CONFIG.unpack(t.config("0" * 16))
    assert fields[8:10] == (2, 1)  # vips4, vips6
    assert fields[10][:8] == bytes([198, 51, 100, 253, 198, 51, 100, 252])
    assert fields[11][:16] == s.vips[2].packed
    assert rx.CONFIG.size == 40 + 4 * rx.MAX_VIPS + 16 * rx.MAX_VIPS  # steer.bpf.c's struct


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"mode": "broadcast"}, "mode:"), ({"pinning": {"mode": "always"}}, "pinning.mode:")],
)
def test_what_one_xdp_pass_cannot_do_is_refused(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        XdpBackend().refuse(spec(**extra))
    assert err.value.exit_code == 78
    assert err.value.problems[0].startswith(field) and "backend: nftables" in str(err.value)

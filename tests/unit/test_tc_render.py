"""The tc backend's pure half: filters per port against the partition's entries, the hash
key refusal, and the netlink encoding pinned by golden attribute dumps (flower and u32;
tests/unit/test_tc_uapi.py checks the u32, pedit and gact bytes against the kernel headers).

Regenerate the goldens after a reviewed change with `VIPCTL_UPDATE_GOLDEN=1 pytest tests/unit`
(see tests/unit/goldens.py) and read the diff of rulesets/.
"""

from __future__ import annotations

import json
from fractions import Fraction
from functools import partial
from typing import Any

import pytest

from tests.unit import goldens
from vipctl.backends import tcnl
from vipctl.core.partition import Layout, compute, shares
from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import SpecError
from vipctl.render.tc import (
    DISPATCH_PRIO,
    SLOT_CHAINS,
    Gact,
    Mirred,
    SetEthDst,
    TcRuleset,
    build_ruleset,
    check_spec,
    generation_cookie,
    parse_cookie,
    render_text,
    rules_per_port,
)
from vipctl.render.wiring import Wiring


def make_spec(members: int, mode: str, *, key: str = "mask", dual: bool = True) -> Spec:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253", "2001:db8:f::253"] if dual else ["198.51.100.253"],
            "uplink": "up0",
            "mode": mode,
            "backend": "tc",
            "partition": {"key": key, "bits": 8},
            "members": [
                {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in range(1, members + 1)
            ],
        }
    )


def fake_wiring(spec: Spec) -> Wiring:
    return Wiring(
        ifindex={spec.uplink: 2, **{m.port: 10 + i for i, m in enumerate(spec.members)}},
        macs={m.name: f"02:00:00:00:{i + 1:02x}:02" for i, m in enumerate(spec.members)},
        uplink_mac="02:00:00:00:00:01",
    )


def layout(spec: Spec) -> Layout:
    return compute(spec.partition.bits, tuple((m.name, Fraction(1)) for m in spec.members))


def ruleset(spec: Spec, slot: int = 1) -> TcRuleset:
    return build_ruleset(spec, layout(spec), fake_wiring(spec), 7, slot)


@pytest.mark.parametrize("members", [2, 3, 5, 8])
@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_rules_per_port_equal_partition_entries(members: int, mode: str) -> None:
    spec = make_spec(members, mode)
    rs = ruleset(spec)
    entries = {s.name: len(s.entries) for s in shares(layout(spec))}
    # one rule per entry and VIP family (broadcast, egress) or VIP (steer, ingress)
    assert rules_per_port(rs) == {m.port: 2 * entries[m.name] for m in spec.members}


def test_rules_per_port_figures() -> None:
    """Source rules per port for 2, 3, 5 and 8 equal members: 8 bits, one IPv4 VIP."""
    got = {}
    for n in (2, 3, 5, 8):
        spec = make_spec(n, "steer", dual=False)
        got[n] = sorted(rules_per_port(ruleset(spec)).values())
    assert got == {2: [1, 1], 3: [4, 4, 7], 5: [3, 4, 6, 6, 6], 8: [1] * 8}


def test_hash_key_is_refused_with_the_reason() -> None:
    # the spec itself refuses it (exit 78 from validate/apply, nothing reaches the kernel)
    with pytest.raises(SpecError) as err:
        make_spec(3, "steer", key="hash")
    assert err.value.exit_code == 78
    assert any(p.startswith("partition.key: ") and "value/mask" in p for p in err.value.problems)
    # and the renderer checks again for a spec built around the model's validation
    spec = make_spec(3, "steer").model_copy(
        update={"partition": make_spec(3, "steer").partition.model_copy(update={"key": "hash"})}
    )
    with pytest.raises(SpecError) as again:
        check_spec(spec)
    assert "cannot be expressed as value/mask" in again.value.problems[0]


def test_dispatcher_is_one_goto_with_the_generation() -> None:
    spec = make_spec(3, "broadcast")
    for slot in (1, 2):
        d = ruleset(spec, slot).dispatcher
        assert (d.dev, d.hook, d.chain, d.prio) == ("up0", "ingress", 0, DISPATCH_PRIO)
        (goto,) = d.actions
        assert isinstance(goto, Gact) and goto.chain == SLOT_CHAINS[slot]
        assert parse_cookie(goto.cookie, "web") == 7
        assert parse_cookie(goto.cookie, "other") is None
    assert len(generation_cookie("a-very-long-cluster-name", 2**40)) == 16


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_uplink_filters_take_only_frames_addressed_to_this_router(mode: str) -> None:
    """Invariant 11: every filter at the uplink matches the uplink's own MAC, so a frame
    the switch floods to every router is taken by none of another router's filters."""
    spec = make_spec(3, mode)
    uplink = [f for f in ruleset(spec, 1).filters if f.dev == "up0"]
    assert uplink and all(f.match.eth_dst == "02:00:00:00:00:01" for f in uplink)
    wiring = fake_wiring(spec)
    no_mac = Wiring(wiring.ifindex, wiring.macs)
    with pytest.raises(KeyError, match="MAC of the uplink"):
        build_ruleset(spec, layout(spec), no_mac, 7, 1)


def test_broadcast_copies_once_and_ports_judge_by_stamp() -> None:
    spec = make_spec(3, "broadcast")
    rs = ruleset(spec)
    uplink = [f for f in rs.filters if f.dev == "up0"]
    assert len(uplink) == 2  # one per VIP
    acts = uplink[0].actions
    assert isinstance(acts[0], SetEthDst)
    mirreds = [a for a in acts if isinstance(a, Mirred)]
    # every port gets a copy, the last one consumes the original (no routed extra copy)
    assert [a.redirect for a in mirreds] == [False, False, True]
    for port in ("m1", "m2", "m3"):
        egress = [f for f in rs.filters if f.dev == port]
        assert egress[0].chain == 0 and egress[0].match.eth_dst == "0a:76:63:00:00:01"
        assert egress[-1].actions == (Gact("drop"),)


def golden_dump(rs: TcRuleset, classifier: tcnl.Classifier) -> list[Any]:
    out = []
    for f in (*rs.filters, rs.dispatcher):
        wire = tcnl.filter_bytes(
            f, fake_wiring(make_spec(3, rs.mode)).ifindex[f.dev], classifier, 0, None
        )
        out.append(tcnl.dump_attrs(tcnl.decode_message(wire)))
    return out


def _dump_text(mode: str, classifier: tcnl.Classifier) -> str:
    return json.dumps(golden_dump(ruleset(make_spec(3, mode)), classifier), indent=1) + "\n"


def _tc_text(mode: str) -> str:
    return render_text(ruleset(make_spec(3, mode)))


GOLDENS: goldens.Goldens = {}
for _mode in ("broadcast", "steer"):
    GOLDENS[f"tc-{_mode}.tc"] = partial(_tc_text, _mode)
    GOLDENS[f"tc-{_mode}.netlink.json"] = partial(_dump_text, _mode, "flower")
    GOLDENS[f"tc-{_mode}.u32.netlink.json"] = partial(_dump_text, _mode, "u32")


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden(name: str) -> None:
    goldens.check(name, GOLDENS[name]())


def test_low_bit_masks_are_sent_as_full_masks() -> None:
    dump = json.dumps(golden_dump(ruleset(make_spec(3, "steer")), "flower"))
    assert '"TCA_FLOWER_KEY_IPV4_SRC_MASK", "0.0.0.255"' in dump
    assert '"TCA_FLOWER_KEY_IPV6_SRC_MASK", "::ff"' in dump
    assert '"TCA_FLOWER_KEY_IPV4_SRC_MASK", "0.0.0.254"' in dump  # not a prefix


@pytest.mark.parametrize("classifier", ["flower", "u32"])
@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_encoding_round_trips(mode: str, classifier: tcnl.Classifier) -> None:
    spec = make_spec(5, mode)
    rs = ruleset(spec, 2)
    wiring = fake_wiring(spec)
    names = {v: k for k, v in wiring.ifindex.items()}
    for f in (*rs.filters, rs.dispatcher):
        wire = tcnl.filter_bytes(f, wiring.ifindex[f.dev], classifier, tcnl.SKIP_HW, None)
        live = tcnl.decode_filter(tcnl.decode_message(wire), names)
        assert live is not None
        assert (live.chain, live.prio, live.hook, live.match, live.actions) == (
            f.chain,
            f.prio,
            f.hook,
            f.match,
            f.actions,
        )
        assert live.flags == tcnl.SKIP_HW and live.kind == classifier


def test_offload_policy_maps_to_flower_flags() -> None:
    assert tcnl.OFFLOAD_FLAGS == {"none": tcnl.SKIP_HW, "prefer": 0, "require": tcnl.SKIP_SW}

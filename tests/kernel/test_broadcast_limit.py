"""The spec's broadcast member limit is the running kernel's: bisected here.

Broadcast copies each VIP packet to every member port in ONE rule (`meta mark set M dup to
"m1" ... dup to "mN" drop`), and the kernel refuses a rule of more than NFT_RULE_MAXEXPRS
expressions. A constant written from a count of expressions drifted once (63 validated,
the kernel refused it with EINVAL); this test renders vipctl's own table for N members and
loads it with `nft -f` in a throwaway namespace, bisecting the largest N the kernel takes
for every key and VIP family, and holds core/spec.py's MAX_BROADCAST_MEMBERS to it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kernel.conftest import unique_prefix
from vipctl.core import spec as specmod
from vipctl.core.plan import desired
from vipctl.render.nft import build_table, render_table
from vipctl.render.wiring import Wiring

MOST = 128  # NFT_RULE_MAXEXPRS: no rule holds more than 128 expressions, let alone dups


def _ip(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *args], input=stdin, text=True, check=True, capture_output=True)


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[str, dict[str, int]]]:
    """A namespace with an uplink and MOST member ports (veth pairs, both ends inside)."""
    ns = f"{unique_prefix()}-bl"
    _ip("netns", "add", ns)
    try:
        batch = ["link add up0 type veth peer name up0p"]
        batch += [f"link add m{i} type veth peer name m{i}p" for i in range(MOST)]
        _ip("-n", ns, "-batch", "-", stdin="\n".join(batch) + "\n")
        links = json.loads(
            subprocess.run(
                ["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True
            ).stdout
        )
        yield ns, {link["ifname"]: link["ifindex"] for link in links}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _spec(n: int, key: str, families: tuple[int, ...]) -> dict[str, Any]:
    vips = (["198.51.100.253"] if 4 in families else []) + (
        ["2001:db8:f::253"] if 6 in families else []
    )
    members = []
    for i in range(n):
        family = families[i % len(families)]
        address = f"10.99.{i // 250}.{i % 250 + 1}" if family == 4 else f"2001:db8:1::{i + 1:x}"
        members.append(
            {"name": f"w{i}", "port": f"m{i}", "address": address, "mac": f"02:00:00:00:01:{i:02x}"}
        )
    return {
        "cluster": "lim",
        "vips": vips,
        "uplink": "up0",
        "mode": "broadcast",
        "partition": {"key": key, "bits": 8},
        "members": members,
    }


def _kernel_takes(ns: str, ifindex: dict[str, int], n: int, key: str, fam: tuple[int, ...]) -> bool:
    """vipctl's whole table for n broadcast members, loaded with `nft -f` in `ns`."""
    raw = _spec(n, key, fam)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(specmod, "MAX_BROADCAST_MEMBERS", 10_000)  # render past the spec's limit
        spec = specmod.parse_spec(raw)
    layout = desired(spec, None)
    wiring = Wiring(
        ifindex={p: ifindex[p] for p in [spec.uplink, *(m.port for m in spec.members)]},
        macs={m.name: str(m.mac) for m in spec.members},
    )
    text = render_table(build_table(spec, layout, wiring, 1))
    loaded = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, capture_output=True
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    if loaded.returncode != 0:
        # only the rule's length may refuse it (EINVAL naming the dups, or ENOBUFS for a
        # rule far past the limit): a syntax error would be a broken test
        assert "Could not process rule" in loaded.stderr, loaded.stderr
    return loaded.returncode == 0


@pytest.mark.parametrize("families", [(4,), (6,), (4, 6)], ids=["ipv4", "ipv6", "dual"])
@pytest.mark.parametrize("key", ["mask", "hash"])
def test_the_broadcast_member_limit_is_the_kernels(
    ports: tuple[str, dict[str, int]], key: str, families: tuple[int, ...]
) -> None:
    ns, ifindex = ports
    low, high = 1, MOST  # the kernel takes low members and refuses high
    assert _kernel_takes(ns, ifindex, low, key, families)
    assert not _kernel_takes(ns, ifindex, high, key, families)
    while high - low > 1:
        mid = (low + high) // 2
        if _kernel_takes(ns, ifindex, mid, key, families):
            low = mid
        else:
            high = mid
    assert low == specmod.MAX_BROADCAST_MEMBERS, (
        f"this kernel takes {low} broadcast members; core/spec.py says "
        f"{specmod.MAX_BROADCAST_MEMBERS}"
    )
    # and the spec refuses the first count the kernel refuses, naming the limit
    with pytest.raises(specmod.SpecError) as refused:
        specmod.parse_spec(_spec(low + 1, key, families))
    assert any(p.startswith("members:") and f"at most {low}" in p for p in refused.value.problems)

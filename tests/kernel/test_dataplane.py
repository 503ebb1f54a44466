"""The nftables data plane with real packets (issue: atomic apply, status, down, lab).

One lab (router, 3 members, client) per module; every test applies what it needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import (
    expected_owners,
    ruleset,
    sh,
    swaps_under_traffic,
    vipctl,
    vipctl_spawn,
    write_spec,
)
from vipctl.lab import traffic
from vipctl.lab.topology import Lab

HERE = Path(__file__).parent


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def apply(topo: Lab, tmp_path: Path, state: str, spec: dict[str, Any]) -> None:
    path = write_spec(tmp_path / f"{spec['cluster']}.json", spec)
    vipctl(topo.router_ns, "apply", str(path), "--state-dir", state, check=True)


def down(topo: Lab, state: str, cluster: str) -> None:
    vipctl(topo.router_ns, "down", cluster, "--state-dir", state, check=True)


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
@pytest.mark.parametrize("key", ["mask", "hash"])
def test_exactly_once_for_4096_sources_v4_and_v6(
    topo: Lab, tmp_path: Path, state: str, mode: str, key: str
) -> None:
    spec = topo.spec("web", mode=mode, key=key, bits=8)
    apply(topo, tmp_path, state, spec)
    try:
        for vip, cidr in ((topo.vip4, topo.sources4), (topo.vip6, topo.sources6)):
            sources = traffic.expand(cidr, 4096)
            want = expected_owners(topo, spec, sources)
            got = traffic.probe(topo, vip, sources)
            bad = {s: (got[s], want[s]) for s in sources if got[s] != [want[s]]}
            assert not bad, (
                f"{len(bad)} of {len(sources)} sources wrong, e.g. {list(bad.items())[:5]}"
            )
            assert {want[s] for s in sources} == set(topo.member_names)
        # an operator can still read the ruleset (text and JSON) with pins in the maps
        assert "table netdev vipctl_web" in ruleset(topo.router_ns)
        assert '"vipctl_web"' in sh(topo.router_ns, "nft -j list ruleset 2>/dev/null")
        # `vipctl which` names the member that really answered (hash key: our jhash = kernel's)
        path = tmp_path / "web.json"
        for src in traffic.expand(topo.sources4, 4096)[::1000]:
            out = vipctl(topo.router_ns, "which", str(path), src, "--json", check=True)
            assert json.loads(out.stdout)["member"] == traffic.probe(topo, topo.vip4, [src])[src][0]
    finally:
        down(topo, state, "web")


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_several_vips_of_one_family_each_exactly_once(
    topo: Lab, tmp_path: Path, state: str, mode: str
) -> None:
    """Two IPv4 VIPs (an anonymous set in the rules): both served exactly once by the
    bucket owner."""
    extra = "198.51.100.252"
    for m in topo.members:
        sh(m.ns, f"ip addr add {extra}/32 dev lo")
    spec = topo.spec("web", mode=mode, key="mask", bits=8, vips=[topo.vip4, extra])
    apply(topo, tmp_path, state, spec)
    try:
        assert f"{{ {extra}, {topo.vip4} }}" in ruleset(topo.router_ns)
        sources = traffic.expand(topo.sources4, 1024)
        want = expected_owners(topo, spec, sources)
        for vip in (topo.vip4, extra):
            got = traffic.probe(topo, vip, sources)
            bad = {s: (got[s], want[s]) for s in sources if got[s] != [want[s]]}
            assert not bad, f"{vip}: {len(bad)} wrong, e.g. {list(bad.items())[:5]}"
    finally:
        down(topo, state, "web")
        for m in topo.members:
            sh(m.ns, f"ip addr del {extra}/32 dev lo")


def test_shares_match_weights_within_one_bucket(topo: Lab, tmp_path: Path, state: str) -> None:
    spec = topo.spec("web", mode="steer", key="mask", bits=8)
    for m, w in zip(spec["members"], (1, 2, 4), strict=True):
        m["weight"] = w
    apply(topo, tmp_path, state, spec)
    try:
        report = json.loads(
            vipctl(
                topo.router_ns, "status", "web", "--json", "--state-dir", state, check=True
            ).stdout
        )
        assert [m["buckets"] for m in report["members"]] == [37, 73, 146]
        for m, w in zip(report["members"], (1, 2, 4), strict=True):
            assert abs(m["buckets"] - 256 * w / 7) < 1
        # 4096 consecutive sources = 16 per bucket: replies per member follow the buckets
        sources = traffic.expand(topo.sources4, 4096)
        counts = traffic.summarize(traffic.probe(topo, topo.vip4, sources))
        assert counts == {"web1": 37 * 16, "web2": 73 * 16, "web3": 146 * 16}
        # and the kernel counters saw them
        after = json.loads(
            vipctl(topo.router_ns, "status", "web", "--json", "--state-dir", state).stdout
        )
        assert [m["packets"] for m in after["members"]] == [37 * 16, 73 * 16, 146 * 16]
    finally:
        down(topo, state, "web")


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
@pytest.mark.parametrize("pinning", [False, True], ids=["nopin", "pin"])
def test_atomic_swap_under_traffic(
    topo: Lab, tmp_path: Path, state: str, mode: str, pinning: bool
) -> None:
    """>= 200 applies with alternating weights while numbered packets flow: each number
    reaches exactly one member (counters alone could hide a loss cancelled by a duplicate).
    Without pinning every swap really moves the flows of the moved buckets."""
    spec = topo.spec("web", mode=mode, key="mask", bits=8)
    spec["pinning"] = {"enabled": pinning}
    apply(topo, tmp_path, state, spec)
    try:
        swaps, sent, lost, duplicated = swaps_under_traffic(
            topo, tmp_path / "web.json", state, HERE
        )
        assert swaps["applies"] == 200 and swaps["moved"] > 0
        assert sent > 10000, f"too little traffic during the swaps ({sent})"
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated[:10], swaps)
    finally:
        down(topo, state, "web")


def test_no_packet_falls_through_a_new_chain(topo: Lab, tmp_path: Path, state: str) -> None:
    """Every apply below moves buckets through a transition, so its transaction adds the
    `mv4_*` chains that the moved buckets' elements point to. A packet that entered the
    table just before such a commit finds the new element but the old generation's (empty)
    rules of the new chain: without the preparation step (render/nft.py Preparation) it
    falls through into the router's own stack: a few of them per few hundred applies at
    full rate. Counted where they land: an `ip` prerouting counter in the router, which no
    packet vipctl steers ever reaches."""
    spec = topo.spec("web", mode="steer", key="mask", bits=8)
    apply(topo, tmp_path, state, spec)  # pinning moving (the default)
    probe = "vipctl_test_fallthrough"
    sh(
        topo.router_ns,
        f"nft 'add table ip {probe}; add chain ip {probe} pre {{ type filter hook prerouting "
        f"priority -500; }}; add rule ip {probe} pre ip daddr {topo.vip4} counter'",
    )
    try:
        sender = traffic.numbered_spawn(
            topo, topo.vip4, traffic.expand(topo.sources4, 1024), count=50_000_000, rate_pps=0
        )
        try:
            loop = subprocess.run(
                ["ip", "netns", "exec", topo.router_ns, sys.executable,
                 str(HERE / "swaploop.py"), str(tmp_path / "web.json"), state, "1000"],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
        finally:
            sender.proc.terminate()
            sender.proc.wait(timeout=30)
        swaps = json.loads(loop.stdout)
        assert swaps["applies"] == 1000 and swaps["moved"] > 0
        assert "mv4_" in ruleset(topo.router_ns)  # the buckets really were in transition
        listing = json.loads(sh(topo.router_ns, f"nft -j list chain ip {probe} pre"))
        counters = [e["counter"] for i in listing["nftables"] if "rule" in i
                    for e in i["rule"]["expr"] if "counter" in e]  # fmt: skip
        assert counters and counters[0]["packets"] == 0, counters
    finally:
        sh(topo.router_ns, f"nft delete table ip {probe}")
        down(topo, state, "web")


REFUSE_AFTER_PREPARATION = """
import sys
from fractions import Fraction
from pathlib import Path
from vipctl import controller
from vipctl.backends import nft
from vipctl.core.spec import load_spec
from vipctl.errors import KernelError

class Refusing(nft.NftBackend):
    # the preparation goes in; the kernel refuses the main transaction after it
    def plan(self, *args, **kwargs):
        plan = super().plan(*args, **kwargs)
        payload = plan.payload
        assert payload.prep is not None, "this change adds no chain"
        bad = payload.batch + "add rule netdev vipctl_web no_such_chain accept\\n"
        return plan.__class__(**{**plan.__dict__, "payload": payload.__class__(
            payload.table, bad, payload.prep)})

spec = load_spec(sys.argv[1])
spec = controller.spec_with_weights(spec, {m.name: Fraction(1 + 2 * (i == 0))
                                           for i, m in enumerate(spec.members)})
try:
    controller.apply(
        spec, Path(sys.argv[2]), env=controller.Env(backends=lambda _s: Refusing())
    )
except KernelError as exc:
    print("refused:", exc)
else:
    sys.exit("committed")
"""


def test_a_refusal_after_the_preparation_changes_nothing(
    topo: Lab, tmp_path: Path, state: str
) -> None:
    """The preparation (new chains, one transaction early) is taken back when the kernel
    refuses the main transaction: the table and the state files are exactly as before."""
    spec = topo.spec("web", mode="steer", key="mask", bits=8)
    apply(topo, tmp_path, state, spec)
    try:
        before = _snapshot(topo, state)
        out = subprocess.run(
            ["ip", "netns", "exec", topo.router_ns, sys.executable, "-c",
             REFUSE_AFTER_PREPARATION, str(tmp_path / "web.json"), state],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0 and "refused:" in out.stdout, (out.stdout, out.stderr)
        assert "no_such_chain" in out.stdout
        assert _snapshot(topo, state) == before
    finally:
        down(topo, state, "web")


def _snapshot(topo: Lab, state: str) -> tuple[str, dict[str, bytes]]:
    files = {p.name: p.read_bytes() for p in sorted(Path(state).glob("*.json"))}
    return ruleset(topo.router_ns), files


def test_bad_input_changes_nothing(topo: Lab, tmp_path: Path, state: str) -> None:
    spec = topo.spec("web", mode="broadcast", key="mask")
    apply(topo, tmp_path, state, spec)
    good = tmp_path / "web.json"
    try:
        before = _snapshot(topo, state)
        bad_spec = write_spec(tmp_path / "bad.json", {**spec, "partition": {"bits": 99}})
        no_uplink = write_spec(tmp_path / "nouplink.json", {**spec, "uplink": "nosuch0"})
        gone_port = {
            **spec,
            "members": [
                *spec["members"],
                {"name": "web9", "port": "m9", "address": "198.51.100.74"},
            ],
        }
        no_port = write_spec(tmp_path / "noport.json", gone_port)
        unresolvable = {
            **spec,
            "members": [*spec["members"][:2], {**spec["members"][2], "address": "198.51.100.29"}],
        }
        no_mac = write_spec(tmp_path / "nomac.json", unresolvable)
        cases = [
            (("apply", str(bad_spec)), 78, "partition.bits"),
            (("apply", str(no_uplink)), 1, "uplink 'nosuch0' does not exist"),
            (("apply", str(no_port)), 1, "port 'm9' of member web9 does not exist"),
            (("apply", str(no_mac)), 1, "cannot resolve the MAC of member web3"),
            (("apply", str(tmp_path / "absent.yaml")), 78, "cannot read"),
            (("rebalance", str(good), "--weights", "nobody=3"), 2, "not a member"),
            (("rebalance", str(good), "--weights", "web1=-1"), 2, "must be >= 0"),
            (("rebalance", str(good), "--weights", "web1=0,web2=0,web3=0"), 2, "weight > 0"),
            (("rebalance", str(good), "--weights", "web1=abc"), 2, "not a number"),
            (("plan", str(good), "--down", "ghost"), 2, "not a member"),
            (("apply", str(good), "--bogus-flag"), 2, ""),
            (("status", "nosuchcluster"), 1, "not installed"),
        ]
        for args, code, message in cases:
            proc = vipctl(topo.router_ns, *args, "--state-dir", state)
            assert proc.returncode == code, (args, proc.returncode, proc.stderr)
            assert message in proc.stderr, (args, proc.stderr)
            assert _snapshot(topo, state) == before, f"{args} changed the kernel or state"
    finally:
        down(topo, state, "web")


def test_a_kernel_refusal_leaves_the_previous_rules(topo: Lab, tmp_path: Path, state: str) -> None:
    """A batch the kernel rejects midway (here: a port vanishes between the check and the
    commit is simulated by a member port that exists but is the uplink of nothing) is all
    or nothing: libnftables commits one transaction."""
    spec = topo.spec("web", mode="steer", key="mask")
    apply(topo, tmp_path, state, spec)
    try:
        before = _snapshot(topo, state)
        # `fwd` to a port that is not a netdev the kernel knows: refused at commit time
        from tests.kernel.helpers import sh as run

        refused = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                topo.router_ns,
                sys.executable,
                "-c",
                "import nftables,sys; n=nftables.Nftables();"
                "rc,o,e=n.cmd('flush chain netdev vipctl_web in_up0\\n"
                'add rule netdev vipctl_web in_up0 ip daddr 1.2.3.4 fwd to "nosuchdev"\\n\');'
                "sys.exit(rc)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert refused.returncode != 0
        assert _snapshot(topo, state) == before
        assert "vmap @owners4" in run(topo.router_ns, "nft list chain netdev vipctl_web in_up0")
    finally:
        down(topo, state, "web")


def test_foreign_objects_survive_apply_rebalance_and_down(
    topo: Lab, tmp_path: Path, state: str
) -> None:
    ns = topo.router_ns
    sh(
        ns,
        "nft add table inet foreign; nft add chain inet foreign fwd "
        "'{ type filter hook forward priority 0; policy accept; }'; "
        "nft add set inet foreign blocked '{ type ipv4_addr; elements = { 192.0.2.9 }; }'; "
        "nft add rule inet foreign fwd ip saddr @blocked counter drop; "
        "nft add table netdev other; nft add chain netdev other in "
        "'{ type filter hook ingress device \"m1\" priority -10; policy accept; }'; "
        "nft add rule netdev other in ip saddr 192.0.2.77 counter",
    )
    sh(
        ns,
        "tc qdisc add dev m2 clsact && tc filter add dev m2 ingress prio 7 u32 "
        "match ip src 192.0.2.55/32 action mirred egress mirror dev m3",
    )
    sh(ns, "ip route add 192.0.2.0/24 via 198.51.100.10")
    try:

        def foreign() -> tuple[str, ...]:
            return (
                sh(ns, "nft list table inet foreign"),
                sh(ns, "nft list table netdev other"),
                sh(ns, "tc qdisc show; tc filter show dev m2 ingress"),
                sh(ns, "ip route; ip -6 route; ip addr"),
            )

        ruleset_before = ruleset(ns)
        objects_before = foreign()
        spec = topo.spec("web", mode="broadcast", key="hash")
        apply(topo, tmp_path, state, spec)
        assert foreign() == objects_before
        vipctl(
            ns,
            "rebalance",
            str(tmp_path / "web.json"),
            "--weights",
            "web1=3",
            "--state-dir",
            state,
            check=True,
        )
        assert foreign() == objects_before
        # traffic still flows with the foreign netdev chain on m1 in place
        sources = traffic.expand(topo.sources4, 512)
        counts = traffic.summarize(traffic.probe(topo, topo.vip4, sources))
        assert sum(counts.get(n, 0) for n in topo.member_names) == 512, counts
        down(topo, state, "web")
        assert foreign() == objects_before
        assert ruleset(ns) == ruleset_before
    finally:
        sh(
            ns,
            "nft delete table inet foreign; nft delete table netdev other; "
            "tc qdisc del dev m2 clsact; ip route del 192.0.2.0/24 || true",
        )
        vipctl(ns, "down", "web", "--state-dir", state)


def test_apply_is_idempotent_and_dry_run_changes_nothing(
    topo: Lab, tmp_path: Path, state: str
) -> None:
    spec = topo.spec("web", mode="steer", key="mask")
    path = write_spec(tmp_path / "web.json", spec)
    ns = topo.router_ns
    dry = vipctl(ns, "apply", str(path), "--dry-run", "--state-dir", state, check=True)
    assert "table netdev vipctl_web {" in dry.stdout
    assert "vipctl_web" not in ruleset(ns)
    vipctl(ns, "apply", str(path), "--state-dir", state, check=True)
    try:
        first = ruleset(ns)
        again = vipctl(ns, "apply", str(path), "--state-dir", state, check=True)
        assert "up to date (generation 1)" in again.stdout
        assert ruleset(ns) == first
        diff = vipctl(
            ns, "apply", str(path), "--dry-run", "--diff", "--state-dir", state, check=True
        )
        assert "(no change)" in diff.stdout
        spec["members"][0]["weight"] = 2
        write_spec(path, spec)
        diff = vipctl(
            ns, "apply", str(path), "--dry-run", "--diff", "--state-dir", state, check=True
        )
        assert diff.stdout.startswith("--- live")
        assert ruleset(ns) == first
    finally:
        down(topo, state, "web")


def test_apply_without_state_adopts_the_live_table(topo: Lab, tmp_path: Path, state: str) -> None:
    """The kernel is the truth: with the state directory lost, apply moves no bucket."""
    import shutil

    spec = topo.spec("web", mode="steer", key="mask")
    path = write_spec(tmp_path / "web.json", spec)
    ns = topo.router_ns
    vipctl(ns, "apply", str(path), "--state-dir", state, check=True)
    try:
        vipctl(ns, "rebalance", str(path), "--weights", "web2=3", "--state-dir", state, check=True)
        sources = [f"10.99.3.{b}" for b in range(256)]
        before = expected_owners(topo, spec, sources)
        shutil.rmtree(state)
        spec["members"][1]["weight"] = 3
        write_spec(path, spec)
        out = vipctl(ns, "apply", str(path), "--state-dir", state, check=True).stdout
        assert "0 buckets moved" in out
        assert expected_owners(topo, spec, sources) == before
    finally:
        down(topo, state, "web")


def test_concurrent_applies_take_turns(topo: Lab, tmp_path: Path, state: str) -> None:
    spec = topo.spec("web", mode="steer", key="mask")
    path = write_spec(tmp_path / "web.json", spec)
    ns = topo.router_ns
    vipctl(ns, "apply", str(path), "--state-dir", state, check=True)
    try:
        procs = [
            vipctl_spawn(ns, "rebalance", str(path), "--weights", f"web1={w}", "--state-dir", state)
            for w in (2, 3, 4, 5)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
        generations = sorted(int(o.split("generation ")[1].split()[0]) for o, _ in outs)
        # each saw the one before it (no lost update): distinct generations; a rebalance
        # whose moves start transitions commits twice (record, then move), so a step is
        # 1 or 2
        assert len(set(generations)) == 4, outs
        assert all(b - a in (1, 2) for a, b in zip([1, *generations], generations, strict=False))
        report = json.loads(
            vipctl(ns, "status", "web", "--json", "--state-dir", state, check=True).stdout
        )
        assert report["generation"] == generations[-1] and report["in_sync"]
    finally:
        down(topo, state, "web")


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
@pytest.mark.parametrize("pinning", ["moving", "always"])
def test_a_frame_for_another_mac_is_not_taken(
    topo: Lab, tmp_path: Path, state: str, mode: str, pinning: str
) -> None:
    """Invariant 11: the client sends the VIPs' packets in frames addressed to another
    router's MAC (what a switch that floods delivers to every router): no member gets
    any, IPv4 or IPv6; the same sources to this router's MAC are answered once each."""
    spec = topo.spec("web", mode=mode, key="mask", bits=8) | {"pinning": {"mode": pinning}}
    apply(topo, tmp_path, state, spec)
    gateways = (("-4", topo.router4), ("-6", topo.router6))
    try:
        for lladdr in ("02:00:00:00:ee:ee", topo.uplink_mac):
            for family, gw in gateways:
                sh(
                    topo.client_ns,
                    f"ip {family} neigh replace {gw} dev eth0 lladdr {lladdr} nud permanent",
                )
            for vip, cidr in ((topo.vip4, topo.sources4), (topo.vip6, topo.sources6)):
                got = traffic.probe(topo, vip, traffic.expand(cidr, 512), timeout=2.0)
                counts = traffic.summarize(got)
                if lladdr == topo.uplink_mac:
                    assert all(len(v) == 1 for v in got.values()), (vip, counts)
                else:
                    assert not any(got.values()), (vip, counts)
    finally:
        for family, gw in gateways:
            sh(topo.client_ns, f"ip {family} neigh del {gw} dev eth0")
        down(topo, state, "web")

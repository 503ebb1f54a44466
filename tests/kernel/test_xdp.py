"""The XDP fast path (`backend: xdp`) with real packets: the same guarantees as the
nftables path. A 3-member lab with XDP_PASS on the members' eth0 (veth delivers
redirected frames only then); the backend's pins on a bpffs under /tmp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import test_pinning as pinning
from tests.kernel import test_retune as retune
from tests.kernel.helpers import sh, swaps_under_traffic, vipctl, write_spec
from tests.kernel.test_pmtu import bottleneck, downloads_complete
from vipctl.backends.xdp import TC_PREF, XdpBackend, attached_id, pin_dir
from vipctl.core.partition import bucket_of
from vipctl.core.plan import desired
from vipctl.core.spec import parse_spec
from vipctl.host import links
from vipctl.lab import topology as labmod
from vipctl.lab import traffic
from vipctl.lab import xdp as labxdp
from vipctl.lab.topology import Lab

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def xtopo() -> Iterator[Lab]:
    from tests.kernel.conftest import unique_prefix

    root = labxdp.mount_bpffs()
    prefix = unique_prefix()
    pins: list[Path] = []
    try:
        lab = labmod.build(prefix, 3)
        pins = labxdp.pins_of(lab, root)
        labxdp.prepare(lab, root)
        yield lab
    finally:
        labmod.destroy(prefix)
        labxdp.cleanup(pins)


def xspec(topo: Lab, **kw: Any) -> dict[str, Any]:
    pinning = kw.pop("pinning", None)
    spec = topo.spec("web", mode="steer", **kw)
    spec["backend"] = "xdp"
    if pinning is not None:
        spec["pinning"] = pinning
    return spec


class Cluster(pinning.Cluster):
    """test_pinning's cluster (steer, mask, 8 bits) on the XDP backend."""

    def __init__(self, topo: Lab, tmp: Path, **kw: Any) -> None:
        super().__init__(topo, tmp)
        self.spec = xspec(topo, key=kw.pop("key", "mask"), bits=kw.pop("bits", 8), **kw)
        self.path = write_spec(tmp / "web.json", self.spec)

    def owners(self, sources: list[str]) -> dict[str, str | None]:
        return owners(self.topo, self.spec, sources)


def owners(topo: Lab, spec: dict[str, Any], sources: list[str]) -> dict[str, str | None]:
    """Owner of each source by the live XDP table, read from the router's maps."""
    model = parse_spec(spec)
    with links.in_netns(topo.router_ns):
        found = XdpBackend().live_table(model)
    assert found is not None, "cluster not installed"
    p = model.partition
    return {s: found[0][bucket_of(s, p.key, p.bits, p.seed)] for s in sources}


@pytest.fixture
def cluster(xtopo: Lab, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(xtopo, tmp_path)
    try:
        yield c
    finally:
        c.down()


def kernel_objects(topo: Lab) -> tuple[object, str, bool]:
    """(XDP program on the uplink, its tc qdiscs and ingress filters, the cluster's pins
    exist)."""
    with links.in_netns(topo.router_ns):
        prog = attached_id(topo.uplink)
        pins = pin_dir("web").exists()
    dev = topo.uplink
    tc = sh(topo.router_ns, f"tc qdisc show dev {dev}; tc filter show dev {dev} ingress || true")
    return prog, tc, pins


@pytest.mark.parametrize("key", ["mask", "hash"])
def test_exactly_once_for_4096_sources_v4_and_v6(xtopo: Lab, tmp_path: Path, key: str) -> None:
    c = Cluster(xtopo, tmp_path, key=key)
    c.apply()
    try:
        prog, filters, pins = kernel_objects(xtopo)
        assert prog is not None and prog[1] in ("driver", 1, "1"), prog
        assert f"pref {TC_PREF}" in filters and pins
        for vip, cidr in ((xtopo.vip4, xtopo.sources4), (xtopo.vip6, xtopo.sources6)):
            sources = traffic.expand(cidr, 4096)
            want = c.owners(sources)
            got = traffic.probe(xtopo, vip, sources)
            bad = {s: (got[s], want[s]) for s in sources if got[s] != [want[s]]}
            assert not bad, f"{len(bad)} of {len(sources)} wrong, e.g. {list(bad.items())[:5]}"
            assert {want[s] for s in sources} == set(xtopo.member_names)
        # `which` (our jhash for the hash key) names the member that really answered
        for src in traffic.expand(xtopo.sources4, 4096)[::1000]:
            out = vipctl(xtopo.router_ns, "which", str(c.path), src, "--json", check=True)
            answered = traffic.probe(xtopo, xtopo.vip4, [src])[src]
            assert [json.loads(out.stdout)["member"]] == answered
        report = c.status()
        assert report["backend"] == "xdp" and report["in_sync"]
        assert sum(m["buckets"] for m in report["members"]) == 256
        # the program's per-member counters saw every probe (2 x 4096 + the which probes)
        assert sum(m["packets"] for m in report["members"]) >= 2 * 4096
    finally:
        c.down()
    prog, tc, pins = kernel_objects(xtopo)
    assert prog is None and f"pref {TC_PREF}" not in tc and "clsact" not in tc and not pins


def test_several_vips_each_exactly_once_and_a_removed_vip_is_not_steered(
    xtopo: Lab, tmp_path: Path
) -> None:
    extra = "198.51.100.252"
    for m in xtopo.members:
        sh(m.ns, f"ip addr add {extra}/32 dev lo")
    c = Cluster(xtopo, tmp_path, vips=[xtopo.vip4, extra, xtopo.vip6])
    try:
        c.apply()
        sources = traffic.expand(xtopo.sources4, 512)
        want = c.owners(sources)
        for vip in (xtopo.vip4, extra):
            got = traffic.probe(xtopo, vip, sources)
            assert got == {s: [want[s]] for s in sources}, vip
        c.spec["vips"] = [xtopo.vip4, xtopo.vip6]
        write_spec(c.path, c.spec)
        c.apply()
        # no member answers: the router passes it on (and has no route for it)
        assert traffic.summarize(traffic.probe(xtopo, extra, sources[:64])) == {"<none>": 64}
        got = traffic.probe(xtopo, xtopo.vip4, sources)
        assert got == {s: [want[s]] for s in sources}
    finally:
        c.down()
        for m in xtopo.members:
            sh(m.ns, f"ip addr del {extra}/32 dev lo")


def test_shares_and_counters_follow_the_weights(xtopo: Lab, tmp_path: Path) -> None:
    c = Cluster(xtopo, tmp_path)
    for m, w in zip(c.spec["members"], (1, 2, 4), strict=True):
        m["weight"] = w
    write_spec(c.path, c.spec)
    c.apply()
    try:
        before = [m["packets"] for m in c.status()["members"]]
        sources = traffic.expand(xtopo.sources4, 4096)
        counts = traffic.summarize(traffic.probe(xtopo, xtopo.vip4, sources))
        assert counts == {"web1": 37 * 16, "web2": 73 * 16, "web3": 146 * 16}
        after = [m["packets"] for m in c.status()["members"]]
        assert [a - b for a, b in zip(after, before, strict=True)] == [37 * 16, 73 * 16, 146 * 16]
    finally:
        c.down()


@pytest.mark.parametrize("pinning", ["off", "moving"])
def test_atomic_swap_under_traffic(xtopo: Lab, tmp_path: Path, pinning: str) -> None:
    """200 applies with alternating weights while numbered packets flow: each number
    reaches exactly one member (the double-buffered table and its one-word flip)."""
    c = Cluster(xtopo, tmp_path, pinning={"mode": pinning, "record_ms": 0})
    c.apply()
    try:
        swaps, sent, lost, duplicated = swaps_under_traffic(xtopo, c.path, c.state, HERE)
        assert swaps["applies"] == 200 and swaps["moved"] > 0
        assert sent > 10000, f"too little traffic during the swaps ({sent})"
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated[:10], swaps)
    finally:
        c.down()


def test_tcp_connections_survive_a_rebalance(cluster: Cluster, xtopo: Lab) -> None:
    cluster.apply()
    sources = pinning.moving_sources(cluster, "web3=4")
    before = cluster.owners(sources)
    with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as tcp:
        assert set(tcp.opened.values()) == {"ok"}
        first = tcp.ping()
        assert first == before
        proc = cluster.rebalance_async("web3=4")
        pings = 0
        while proc.poll() is None or pings < 10:
            assert tcp.ping() == first
            pings += 1
            time.sleep(0.1)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        after = cluster.owners(sources)
        assert all(after[s] != before[s] for s in sources), "the buckets did not move"
        with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as fresh:
            assert fresh.ping() == after  # new connections: the new owner
        assert tcp.ping() == first  # the old ones: still their member
    report = cluster.status()
    assert sum(m["pinned"] for m in report["members"]) >= 64


def test_silent_tcp_connections_keep_their_member(cluster: Cluster, xtopo: Lab) -> None:
    """Nothing sent during the change: the first packet after it finds no record, is not
    a SYN, so it goes to the old owner."""
    cluster.apply()
    sources = pinning.moving_sources(cluster, "web3=4")
    before = cluster.owners(sources)
    with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as tcp:
        assert tcp.ping() == before
        cluster.run("rebalance", str(cluster.path), "--weights", "web3=4")
        after = cluster.owners(sources)
        assert all(after[s] != before[s] for s in sources)
        time.sleep(2)
        assert tcp.ping() == before
        with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as fresh:
            assert fresh.ping() == after


def test_udp_flows_survive_a_rebalance(cluster: Cluster, xtopo: Lab) -> None:
    pinning.test_udp_flows_survive_a_rebalance(cluster, xtopo)


def test_failover_sends_a_down_members_sources_to_the_others(cluster: Cluster, xtopo: Lab) -> None:
    cluster.apply()
    sources = pinning.sources_of(cluster, "web2", 32)
    assert set(traffic.summarize(traffic.probe(xtopo, xtopo.vip4, sources))) == {"web2"}
    cluster.apply("--down", "web2")
    assert [m["buckets"] for m in cluster.status()["members"]] == [128, 0, 128]
    takeover = cluster.owners(sources)
    assert set(takeover.values()) <= {"web1", "web3"}
    assert traffic.probe(xtopo, xtopo.vip4, sources) == {s: [takeover[s]] for s in sources}


def test_restoration_returns_the_exact_table_and_keeps_flows_opened_meanwhile(
    cluster: Cluster, xtopo: Lab
) -> None:
    pinning.test_restoration_returns_the_exact_table_and_keeps_flows_opened_meanwhile(
        cluster, xtopo
    )


def test_a_large_download_completes_through_a_smaller_mtu(
    xtopo: Lab, lab: Callable[..., Lab], tmp_path: Path
) -> None:
    """ICMP fragmentation-needed / packet-too-big from a router on the path reaches the
    member that holds the connection (copied to every member by the tc program). A lab of
    its own: the bottleneck changes the client's routes."""
    lb = lab(3)
    pins = labxdp.pins_of(lb)
    labxdp.prepare(lb)
    try:
        _mid, far = bottleneck(lb)  # its namespaces carry the lab's prefix: removed with it
        c = Cluster(lb, tmp_path)
        c.apply()
        try:
            downloads_complete(lb, far)
        finally:
            c.down()
    finally:
        labxdp.cleanup(pins)


def test_what_xdp_cannot_serve_is_refused_and_nothing_changes(xtopo: Lab, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    broadcast = xspec(xtopo, key="mask", bits=8)
    broadcast["mode"] = "broadcast"
    out = vipctl(
        xtopo.router_ns, "apply", str(write_spec(tmp_path / "b.json", broadcast)), "--state-dir",
        state,
    )  # fmt: skip
    assert out.returncode == 78 and "backend: nftables" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # a member port whose peer runs no XDP program would drop every redirected frame
    m2 = xtopo.member(2)
    sh(m2.ns, "bpftool net detach xdpdrv dev eth0")
    try:
        out = vipctl(
            xtopo.router_ns, "apply", str(write_spec(tmp_path / "w.json", xspec(xtopo))),
            "--state-dir", state,
        )  # fmt: skip
        assert out.returncode != 0 and f"{m2.port} cannot transmit" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        labxdp.members_pass(xtopo)
    prog, tc, pins = kernel_objects(xtopo)
    assert prog is None and f"pref {TC_PREF}" not in tc and "clsact" not in tc and not pins


def test_auto_rebalance_measures_per_bucket_load_in_the_program(
    cluster: Cluster, xtopo: Lab
) -> None:
    """`rebalance --auto`: the program counts each bucket while measuring (config flag),
    the controller re-tunes from it through the transition path; held connections stay."""
    table = desired(parse_spec(cluster.spec), None).table
    sources, heavy = retune.hot_sources(table)
    cluster.apply()
    held = [f"10.99.2.{b}" for b in heavy]
    sender = traffic.numbered_spawn(xtopo, xtopo.vip4, sources, retune.RATE * 60, retune.RATE)
    try:
        with traffic.TcpSessions(xtopo, xtopo.vip4, held, timeout=1.0) as tcp:
            first = tcp.ping()
            time.sleep(1.0)
            out = cluster.run("rebalance", str(cluster.path), "--auto", "--window", "3", "--json")
            report = json.loads(out.stdout)
            assert report["imbalance_before"] > 1.1, report
            assert report["reachable"] and 0 < report["moved"] <= 8, report
            assert report["imbalance_after"] <= 1.1, report
            assert tcp.ping() == first
            assert cluster.status()["in_sync"]
    finally:
        sender.proc.kill()
        sender.proc.wait()


def test_a_second_xdp_cluster_on_the_uplink_is_refused_and_changes_nothing(
    cluster: Cluster, xtopo: Lab, tmp_path: Path
) -> None:
    cluster.apply()
    sources = traffic.expand(xtopo.sources4, 256)
    want = cluster.owners(sources)
    other = xspec(xtopo, key="hash", bits=4)
    other["cluster"] = "two"
    out = vipctl(
        xtopo.router_ns, "apply", str(write_spec(tmp_path / "two.json", other)),
        "--state-dir", cluster.state,
    )  # fmt: skip
    assert out.returncode == 1 and "one XDP cluster per uplink" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    with links.in_netns(xtopo.router_ns):
        assert not pin_dir("two").exists()
    prog, tc, pins = kernel_objects(xtopo)  # the first cluster's program and ICMP copier
    assert prog is not None and f"pref {TC_PREF}" in tc and pins
    assert traffic.probe(xtopo, xtopo.vip4, sources) == {s: [want[s]] for s in sources}
    assert cluster.status()["in_sync"]

"""The XDP fast path (`backend: xdp`) with real packets: the same guarantees as the
nftables path. A 3-member lab with XDP_PASS on the members' eth0 (veth delivers
redirected frames only then); the backend's pins on a bpffs under /tmp.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import sh, vipctl, vipctl_spawn, write_spec
from tests.kernel.test_pinning import moving_sources, sources_of
from tests.kernel.test_pmtu import DOWNLOAD, bottleneck
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
    try:
        lab = labmod.build(prefix, 3)
        labxdp.prepare(lab, root)
        yield lab
    finally:
        labmod.destroy(prefix)
        labxdp.members_unpass(prefix, root)


def xspec(topo: Lab, **kw: Any) -> dict[str, Any]:
    pinning = kw.pop("pinning", None)
    spec = topo.spec("web", mode="steer", **kw)
    spec["backend"] = "xdp"
    if pinning is not None:
        spec["pinning"] = pinning
    return spec


class Cluster:
    def __init__(self, topo: Lab, tmp: Path, **kw: Any) -> None:
        self.topo = topo
        self.state = str(tmp / "state")
        self.spec = xspec(topo, key=kw.pop("key", "mask"), bits=kw.pop("bits", 8), **kw)
        self.path = write_spec(tmp / "web.json", self.spec)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return vipctl(self.topo.router_ns, *args, "--state-dir", self.state, check=True)

    def apply(self, *extra: str) -> None:
        self.run("apply", str(self.path), *extra)

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "web", "--json").stdout)

    def owners(self, sources: list[str]) -> dict[str, str | None]:
        return owners(self.topo, self.spec, sources)

    def down(self) -> None:
        vipctl(self.topo.router_ns, "down", "web", "--state-dir", self.state)


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
    """(XDP program on the uplink, tc ingress filters, the cluster's pins exist)."""
    with links.in_netns(topo.router_ns):
        prog = attached_id(topo.uplink)
        pins = pin_dir("web").exists()
    filters = sh(topo.router_ns, f"tc filter show dev {topo.uplink} ingress 2>/dev/null || true")
    return prog, filters, pins


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
    prog, filters, pins = kernel_objects(xtopo)
    assert prog is None and f"pref {TC_PREF}" not in filters and not pins


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
    sources = traffic.expand(xtopo.sources4, 1024)
    try:
        cap = traffic.capture_start(xtopo)
        try:
            sender = traffic.numbered_spawn(
                xtopo, xtopo.vip4, sources, count=2_000_000, rate_pps=20000
            )
            loop = subprocess.run(
                [
                    *("ip", "netns", "exec", xtopo.router_ns, sys.executable),
                    *(str(HERE / "swaploop.py"), str(c.path), c.state, "200"),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            sender.proc.terminate()
            stats = sender.wait(timeout=30) if sender.proc.returncode == 0 else None
        finally:
            seen = traffic.capture_stop(cap)
        swaps = json.loads(loop.stdout)
        assert swaps["applies"] == 200 and swaps["moved"] > 0
        sent = max((max(v) for v in seen.values() if v), default=-1) + 1
        assert sent > 10000, f"too little traffic during the swaps ({sent})"
        lost, duplicated = traffic.check_exactly_once(sent, seen)
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated[:10], swaps, stats)
    finally:
        c.down()


def test_tcp_connections_survive_a_rebalance(cluster: Cluster, xtopo: Lab) -> None:
    cluster.apply()
    sources = moving_sources(cluster, "web3=4")  # type: ignore[arg-type]
    before = cluster.owners(sources)
    with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as tcp:
        assert set(tcp.opened.values()) == {"ok"}
        first = tcp.ping()
        assert first == before
        proc = vipctl_spawn(
            xtopo.router_ns,
            *("rebalance", str(cluster.path), "--weights", "web3=4", "--state-dir"),
            cluster.state,
        )
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
    sources = moving_sources(cluster, "web3=4")  # type: ignore[arg-type]
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
    cluster.apply()
    sources = moving_sources(cluster, "web3=4")  # type: ignore[arg-type]
    before = cluster.owners(sources)

    def udp(sport: int) -> dict[str, str | None]:
        got = traffic.probe(xtopo, xtopo.vip4, sources, sport=sport)
        assert all(len(v) == 1 for v in got.values()), got
        return {s: v[0] for s, v in got.items()}

    assert udp(41000) == before
    proc = vipctl_spawn(
        xtopo.router_ns,
        *("rebalance", str(cluster.path), "--weights", "web3=4", "--state-dir", cluster.state),
    )
    rounds = 0
    while proc.poll() is None or rounds < 10:
        assert udp(41000) == before
        rounds += 1
        time.sleep(0.1)
    assert proc.returncode == 0
    after = cluster.owners(sources)
    assert udp(41001) == after  # a new flow from the same source: the new owner
    assert udp(41000) == before  # the recorded flow: still its original member


def test_failover_and_restoration(cluster: Cluster, xtopo: Lab) -> None:
    """A member declared down loses its buckets at once (its sources reach the others); on
    restoration the table is exactly the pre-failure one, and connections opened during
    the outage stay on the member that took them."""
    cluster.apply()
    spec = parse_spec(cluster.spec)
    full = desired(spec, None)
    sources = sources_of(cluster, "web2", 32)  # type: ignore[arg-type]
    assert set(traffic.summarize(traffic.probe(xtopo, xtopo.vip4, sources))) == {"web2"}
    cluster.apply("--down", "web2")
    assert [m["buckets"] for m in cluster.status()["members"]] == [128, 0, 128]
    takeover = cluster.owners(sources)
    assert set(takeover.values()) <= {"web1", "web3"}
    got = traffic.probe(xtopo, xtopo.vip4, sources)
    assert {s: v for s, v in got.items()} == {s: [takeover[s]] for s in sources}
    with traffic.TcpSessions(xtopo, xtopo.vip4, sources, timeout=1.0) as tcp:
        assert tcp.ping() == takeover
        cluster.apply("--down", "")
        p = spec.partition
        probe_sources = [f"10.99.7.{b}" for b in range(256)]
        live = cluster.owners(probe_sources)
        assert all(
            live[s] == full.table[bucket_of(s, p.key, p.bits, p.seed)] for s in probe_sources
        )
        for _ in range(5):
            assert tcp.ping() == takeover
            time.sleep(0.1)
        with traffic.TcpSessions(xtopo, xtopo.vip4, sources[:8], timeout=1.0) as fresh:
            assert set(fresh.ping().values()) == {"web2"}


def test_a_large_download_completes_through_a_smaller_mtu(xtopo: Lab, tmp_path: Path) -> None:
    """ICMP fragmentation-needed / packet-too-big from a router on the path reaches the
    member that holds the connection (copied to every member by the tc program)."""
    mid, far = bottleneck(xtopo)
    c = Cluster(xtopo, tmp_path)
    c.apply()
    try:
        for vip in (xtopo.vip4, xtopo.vip6):
            proc = labmod.run_in(
                far,
                [sys.executable, "-c", DOWNLOAD, vip, str(xtopo.echo_port), str(100 * 1024)],
                check=False,
            )
            assert proc.stdout.startswith("ok "), (vip, proc.stdout, proc.stderr[-500:])
    finally:
        c.down()
        labmod._ip_batch(None, [f"netns del {mid}", f"netns del {far}"])


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
    prog, filters, pins = kernel_objects(xtopo)
    assert prog is None and f"pref {TC_PREF}" not in filters and not pins

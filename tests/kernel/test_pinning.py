"""Established flows never move: pinning, rebalance, drain, restoration (real TCP and UDP)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import expected_owners, vipctl, vipctl_spawn, write_spec
from vipctl.core.partition import bucket_of
from vipctl.core.plan import desired, parse_weights
from vipctl.core.spec import parse_spec
from vipctl.lab import traffic
from vipctl.lab.topology import Lab


class Cluster:
    def __init__(
        self, topo: Lab, tmp: Path, mode: str = "steer", pin: str = "moving", **pinning: Any
    ) -> None:
        self.topo = topo
        self.state = str(tmp / "state")
        self.spec = topo.spec("web", mode=mode, key="mask", bits=8)
        self.spec["pinning"] = {"mode": pin, **pinning}
        self.path = write_spec(tmp / "web.json", self.spec)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return vipctl(self.topo.router_ns, *args, "--state-dir", self.state, check=True)

    def apply(self, *extra: str) -> None:
        self.run("apply", str(self.path), *extra)

    def rebalance_async(self, weights: str) -> subprocess.Popen[str]:
        return vipctl_spawn(
            self.topo.router_ns,
            "rebalance",
            str(self.path),
            "--weights",
            weights,
            "--state-dir",
            self.state,
        )

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "web", "--json").stdout)

    def owners(self, sources: list[str]) -> dict[str, str | None]:
        return expected_owners(self.topo, self.spec, sources)

    def down(self) -> None:
        vipctl(self.topo.router_ns, "down", "web", "--state-dir", self.state)


@pytest.fixture
def cluster(topo: Lab, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(topo, tmp_path)
    try:
        yield c
    finally:
        c.down()


def moving_sources(c: Cluster, weights: str, n: int = 32) -> list[str]:
    """n client sources whose buckets change owner when `weights` is applied."""
    spec = parse_spec(c.spec)
    before = desired(spec, None)
    after = desired(spec, before, weights=parse_weights(weights, spec))
    moved = [b for b in range(before.buckets) if before.table[b] != after.table[b]]
    assert len(moved) >= 8
    return [f"10.99.{1 + i // len(moved)}.{moved[i % len(moved)]}" for i in range(n)]


def sources_of(c: Cluster, member: str, n: int, third: int = 2) -> list[str]:
    spec = parse_spec(c.spec)
    layout = desired(spec, None)
    buckets = [b for b, o in enumerate(layout.table) if o == member]
    return [f"10.99.{third + i // len(buckets)}.{buckets[i % len(buckets)]}" for i in range(n)]


@pytest.mark.parametrize("mode", ["steer", "broadcast"])
def test_tcp_connections_survive_a_rebalance_that_moves_their_buckets(
    topo: Lab, tmp_path: Path, mode: str
) -> None:
    c = Cluster(topo, tmp_path, mode=mode)
    try:
        c.apply()
        sources = moving_sources(c, "web3=4")
        before = c.owners(sources)
        with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as tcp:
            assert set(tcp.opened.values()) == {"ok"}
            first = tcp.ping()
            assert first == before
            proc = c.rebalance_async("web3=4")
            pings = 0
            while proc.poll() is None or pings < 10:  # a message every 100 ms, 1 s at least
                assert tcp.ping() == first
                pings += 1
                time.sleep(0.1)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            after = c.owners(sources)
            assert all(after[s] != before[s] for s in sources), "the buckets did not move"
            # new connections from the same sources go to the new owner ...
            with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as fresh:
                assert fresh.ping() == after
            # ... and the old ones are still answered by their original member
            assert tcp.ping() == first
        report = c.status()
        assert sum(m["pinned"] for m in report["members"]) >= 64
    finally:
        c.down()


def test_udp_flows_survive_a_rebalance(cluster: Cluster, topo: Lab) -> None:
    cluster.apply()
    sources = moving_sources(cluster, "web3=4")
    before = cluster.owners(sources)

    def udp(sport: int) -> dict[str, str | None]:
        got = traffic.probe(topo, topo.vip4, sources, sport=sport)
        assert all(len(v) == 1 for v in got.values()), got
        return {s: v[0] for s, v in got.items()}

    assert udp(41000) == before
    proc = cluster.rebalance_async("web3=4")
    rounds = 0
    while proc.poll() is None or rounds < 10:
        assert udp(41000) == before
        rounds += 1
        time.sleep(0.1)
    assert proc.returncode == 0
    after = cluster.owners(sources)
    assert udp(41001) == after  # a new flow from the same source: the new owner
    assert udp(41000) == before  # the old flow: still its original member


def test_restoration_returns_the_exact_table_and_keeps_flows_opened_meanwhile(
    cluster: Cluster, topo: Lab
) -> None:
    cluster.apply()
    original = [m["buckets"] for m in cluster.status()["members"]]
    spec = parse_spec(cluster.spec)
    full = desired(spec, None)
    cluster.apply("--down", "web2")
    during = cluster.status()
    assert [m["buckets"] for m in during["members"]] == [128, 0, 128]
    sources = sources_of(cluster, "web2", 32)
    takeover = cluster.owners(sources)
    assert set(takeover.values()) <= {"web1", "web3"}
    with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as tcp:
        assert tcp.ping() == takeover
        cluster.apply("--down", "")
        restored = cluster.status()
        assert [m["buckets"] for m in restored["members"]] == original
        # the live table is exactly the pre-failure one, bucket by bucket
        probe_sources = [f"10.99.7.{b}" for b in range(256)]
        live = cluster.owners(probe_sources)
        p = spec.partition
        assert all(
            live[s] == full.table[bucket_of(s, p.key, p.bits, p.seed)] for s in probe_sources
        )
        for _ in range(5):
            assert tcp.ping() == takeover  # opened during the outage, still on the takeover
            time.sleep(0.1)
        # new connections from those sources are back on web2
        with traffic.TcpSessions(topo, topo.vip4, sources[:8], timeout=1.0) as fresh:
            assert set(fresh.ping().values()) == {"web2"}


def test_connections_of_a_removed_member_get_a_reset_not_a_timeout(
    cluster: Cluster, topo: Lab
) -> None:
    """The released pin sends the next packet to the bucket's new owner, which answers the
    unknown connection with a reset: the client learns at once instead of hanging (a
    session without an answer within its timeout would be reported as "timeout")."""
    cluster.apply()
    sources = sources_of(cluster, "web2", 16)
    with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as tcp:
        assert set(tcp.ping().values()) == {"web2"}
        cluster.apply("--down", "web2")
        result = tcp.ping()
        assert set(result.values()) <= {"reset", "closed"}, result


@pytest.mark.parametrize("mode", ["steer", "broadcast"])
def test_a_dead_members_flows_are_released_and_pinned_to_the_new_owner(
    topo: Lab, tmp_path: Path, mode: str
) -> None:
    """pinning: always. A UDP flow (fixed 5-tuple) of a member declared down is answered by
    its bucket's new owner from the next packet, is pinned there, and stays there when the
    member returns (the stale pin was deleted, not revived). A flow that never sent during
    the outage finds its original member again. A fresh flow follows the restored table."""
    c = Cluster(topo, tmp_path, mode=mode, pin="always")
    try:
        c.apply()
        sources = sources_of(c, "web2", 24)

        def udp(sport: int, srcs: list[str] = sources) -> dict[str, str | None]:
            got = traffic.probe(topo, topo.vip4, srcs, sport=sport)
            assert all(len(v) == 1 for v in got.values()), got
            return {s: v[0] for s, v in got.items()}

        assert set(udp(42000).values()) == {"web2"}  # pinned to web2
        assert set(udp(42001).values()) == {"web2"}  # pinned to web2, idle during the outage
        c.apply("--down", "web2")
        takeover = c.owners(sources)
        assert set(takeover.values()) <= {"web1", "web3"}
        assert udp(42000) == takeover  # released: the new owner answers ...
        pinned = sum(m["pinned"] for m in c.status()["members"] if m["name"] != "web2")
        assert pinned >= len(sources)  # ... and the flows are pinned to it
        c.apply("--down", "")
        assert set(c.owners(sources).values()) == {"web2"}  # the table is back
        assert udp(42000) == takeover  # the re-pinned flows stay where they live now
        assert set(udp(42001).values()) == {"web2"}  # the idle flows' pins were kept
        assert set(udp(42002).values()) == {"web2"}  # new flows follow the table
    finally:
        c.down()


def test_drain_takes_no_new_flows_and_keeps_existing_ones(cluster: Cluster, topo: Lab) -> None:
    cluster.apply()
    mine = sources_of(cluster, "web1", 16)
    with traffic.TcpSessions(topo, topo.vip4, mine, timeout=1.0) as tcp:
        assert set(tcp.ping().values()) == {"web1"}
        cluster.run("rebalance", str(cluster.path), "--weights", "web1=0")
        everywhere = [f"10.99.9.{b}" for b in range(256)]
        with traffic.TcpSessions(topo, topo.vip4, everywhere, timeout=1.0) as fresh:
            served = fresh.ping()
        assert "web1" not in served.values()
        assert set(served.values()) == {"web2", "web3"}
        for _ in range(3):
            assert set(tcp.ping().values()) == {"web1"}
            time.sleep(0.1)
    report = cluster.status()
    web1 = report["members"][0]
    assert (web1["weight"], web1["buckets"], web1["healthy"]) == (0, 0, True)


def test_full_pin_table_still_serves_new_flows(topo: Lab, tmp_path: Path) -> None:
    c = Cluster(topo, tmp_path, pin="always", max_flows=4)
    try:
        c.apply()
        sources = traffic.expand(topo.sources4, 128)
        got = traffic.probe(topo, topo.vip4, sources, sport=42000)
        want = c.owners(sources)
        assert {s: v for s, v in got.items()} == {s: [want[s]] for s in sources}
        pinned = sum(m["pinned"] for m in c.status()["members"])
        assert 1 <= pinned <= 4
    finally:
        c.down()


def test_rebalance_dry_run_counts_pinned_flows_in_moving_buckets(topo: Lab, tmp_path: Path) -> None:
    cluster = Cluster(topo, tmp_path, pin="always")
    try:
        cluster.apply()
        sources = moving_sources(cluster, "web3=4", 24)
        traffic.probe(topo, topo.vip4, sources, sport=43000)
        args = ("rebalance", str(cluster.path), "--weights", "web3=4", "--dry-run", "--json")
        report = json.loads(cluster.run(*args).stdout)
        assert (report["pinned_in_moved_buckets"], report["pinned_unknown_bucket"]) == (24, 0)
    finally:
        cluster.down()


def test_control_without_pinning_the_same_rebalance_breaks_connections(
    topo: Lab, tmp_path: Path
) -> None:
    """The checks above can fail: with pinning off, moving a bucket breaks its flows."""
    c = Cluster(topo, tmp_path)
    c.spec["pinning"] = {"enabled": False}  # the older spelling of mode: off
    write_spec(c.path, c.spec)
    try:
        c.apply()
        sources = moving_sources(c, "web3=4", 8)
        with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as tcp:
            first = tcp.ping()
            c.run("rebalance", str(c.path), "--weights", "web3=4")
            broken = tcp.ping()
        assert all(broken[s] != first[s] for s in sources), broken
    finally:
        c.down()


# --------------------------------------------------------------------------------------
# pinning: moving (the default) -- per-flow state only for buckets in transition
# --------------------------------------------------------------------------------------


def nft_json(topo: Lab, *what: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["ip", "netns", "exec", topo.router_ns, "nft", "-j", "list", *what],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out)["nftables"])


def transition_objects(topo: Lab) -> tuple[list[str], list[str]]:
    """(chains of buckets in transition, verdict targets in the owners map), from the kernel."""
    items = nft_json(topo, "table", "netdev", "vipctl_web")
    chains = [str(i["chain"]["name"]) for i in items if "chain" in i]
    targets: list[str] = []
    for i in items:
        m = i.get("map")
        if m and str(m["name"]).startswith("owners4"):
            for _key, verdict in m.get("elem", []):
                targets.append(str(verdict.get("goto", {}).get("target")))
    moving = [c for c in chains if c.startswith(("mv4_", "rec4_"))]
    return moving, targets


def test_steady_state_keeps_no_per_flow_state(cluster: Cluster, topo: Lab) -> None:
    cluster.apply()
    sources = traffic.expand(topo.sources4, 256)
    with traffic.TcpSessions(topo, topo.vip4, sources[:32], timeout=1.0) as tcp:
        assert tcp.ping() == cluster.owners(sources[:32])
    got = traffic.probe(topo, topo.vip4, sources, sport=44000)
    assert got == {s: [o] for s, o in cluster.owners(sources).items()}
    assert sum(m["pinned"] for m in cluster.status()["members"]) == 0
    moving, targets = transition_objects(topo)
    assert moving == [] and targets and all(x.startswith("to4_") for x in targets)


def test_silent_tcp_connections_keep_their_member_across_a_rebalance(
    cluster: Cluster, topo: Lab
) -> None:
    """Connections that send nothing before, during and for 5 s after the change: their
    first packet after it finds no record, is not a SYN, so it goes to the old owner."""
    cluster.apply()
    sources = moving_sources(cluster, "web3=4")
    before = cluster.owners(sources)
    with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as tcp:
        assert tcp.ping() == before
        cluster.run("rebalance", str(cluster.path), "--weights", "web3=4")
        after = cluster.owners(sources)
        assert all(after[s] != before[s] for s in sources)
        moving, _ = transition_objects(topo)
        assert any(c.startswith("mv4_") for c in moving)
        time.sleep(5)
        assert tcp.ping() == before
        with traffic.TcpSessions(topo, topo.vip4, sources, timeout=1.0) as fresh:
            assert fresh.ping() == after


def test_moved_buckets_settle_back_to_the_stateless_path(topo: Lab, tmp_path: Path) -> None:
    c = Cluster(topo, tmp_path, idle_timeout_s=2)
    try:
        c.apply()
        sources = moving_sources(c, "web3=4", 16)
        before = c.owners(sources)
        proc = c.rebalance_async("web3=4")
        while proc.poll() is None:  # UDP flows active through the change are recorded
            traffic.probe(topo, topo.vip4, sources, sport=45000)
            time.sleep(0.1)
        assert proc.returncode == 0
        got = traffic.probe(topo, topo.vip4, sources, sport=45000)
        assert got == {s: [before[s]] for s in sources}
        assert sum(m["pinned"] for m in c.status()["members"]) >= len(sources)
        moving, _ = transition_objects(topo)
        assert moving, "the moved buckets are in transition"
        time.sleep(3.5)  # every recorded flow idle for longer than idle_timeout_s
        # the next command settles what is due (the same weights: no bucket moves)
        c.run("rebalance", str(c.path), "--weights", "web3=4")
        moving, targets = transition_objects(topo)
        assert moving == [] and all(x.startswith("to4_") for x in targets)
        assert sum(m["pinned"] for m in c.status()["members"]) == 0
        after = c.owners(sources)
        got = traffic.probe(topo, topo.vip4, sources, sport=45000)
        assert got == {s: [after[s]] for s in sources}  # the table alone decides again
    finally:
        c.down()


def test_a_full_transition_map_never_drops_a_flow(topo: Lab, tmp_path: Path) -> None:
    c = Cluster(topo, tmp_path, max_flows=4)
    try:
        c.apply()
        sources = moving_sources(c, "web3=4", 64)
        proc = c.rebalance_async("web3=4")
        while proc.poll() is None:
            traffic.probe(topo, topo.vip4, sources, sport=46000)
            time.sleep(0.1)
        assert proc.returncode == 0
        for sport in (46000, 46001):
            got = traffic.probe(topo, topo.vip4, sources, sport=sport)
            assert all(len(v) == 1 for v in got.values()), got
        with traffic.TcpSessions(topo, topo.vip4, sources[:16], timeout=1.0) as tcp:
            assert set(tcp.opened.values()) == {"ok"}
        assert sum(m["pinned"] for m in c.status()["members"]) <= 4
    finally:
        c.down()

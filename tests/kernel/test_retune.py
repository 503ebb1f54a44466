"""`rebalance --auto`: per-bucket load measured in the kernel, re-tuned through the
transition path (real skewed UDP traffic, real TCP connections)."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import vipctl, write_spec
from vipctl.core.plan import desired
from vipctl.core.spec import parse_spec
from vipctl.lab import traffic
from vipctl.lab.topology import Lab

RATE = 6000  # packets/s: a python sender on a shared 2-core machine keeps up with this


def hot_sources(table: tuple[str | None, ...]) -> tuple[list[str], list[int]]:
    """20% of the packets from 4 buckets (all of the first member's), the rest uniform."""
    hot = [b for b, o in enumerate(table) if o == table[0]][1:5]
    uniform = [f"10.99.1.{b}" for b in range(256)]
    heavy = [f"10.99.2.{b}" for b in hot for _ in range(16)]  # 64 of 320 entries
    out = uniform + heavy
    random.Random(19).shuffle(out)
    return out, hot


def zipf_sources() -> tuple[list[str], list[int]]:
    """A Zipf population: bucket of rank r sends ~1/r of the top bucket's packets."""
    rng = random.Random(1996)
    ranks = list(range(1, 257))
    rng.shuffle(ranks)
    out = [f"10.99.3.{b}" for b, r in enumerate(ranks) for _ in range(max(1, round(48 / r)))]
    rng.shuffle(out)
    top = sorted(range(256), key=lambda b: ranks[b])[:4]
    return out, top


def member_packets(run: Any) -> dict[str, int]:
    report = json.loads(run("status", "web", "--json").stdout)
    return {m["name"]: m["packets"] for m in report["members"]}


@pytest.mark.parametrize("population", ["hot", "zipf"])
def test_auto_rebalance_evens_measured_load_and_keeps_connections(
    topo: Lab, tmp_path: Path, population: str
) -> None:
    state = str(tmp_path / "state")
    spec = topo.spec("web", mode="steer", key="mask", bits=8)
    path = write_spec(tmp_path / "web.json", spec)

    def run(*args: str, check: bool = True) -> Any:
        return vipctl(topo.router_ns, *args, "--state-dir", state, check=check)

    table = desired(parse_spec(spec), None).table
    sources, heavy = hot_sources(table) if population == "hot" else zipf_sources()
    run("apply", str(path))
    # established connections from the heaviest buckets: the ones most likely to move
    third = 2 if population == "hot" else 3
    held = [f"10.99.{third}.{b}" for b in heavy]
    sender = traffic.numbered_spawn(topo, topo.vip4, sources, RATE * 60, RATE)
    try:
        with traffic.TcpSessions(topo, topo.vip4, held, timeout=1.0) as tcp:
            assert set(tcp.opened.values()) == {"ok"}
            first = tcp.ping()
            time.sleep(1.0)
            out = run("rebalance", str(path), "--auto", "--window", "3", "--json")
            report = json.loads(out.stdout)
            assert report["imbalance_before"] > 1.1, report
            assert report["reachable"] and 0 < report["moved"] <= 8, report
            assert report["imbalance_after"] <= 1.1, report
            assert 0 < report["moved_traffic"] < 0.5
            # the flows live during the change stay where they are (each source's UDP flow
            # is recorded): new flows follow the new table. The same population with new
            # flows (another source port), measured on the members' own counters:
            sender.proc.kill()
            sender.proc.wait()
            sender = traffic.numbered_spawn(topo, topo.vip4, sources, RATE * 60, RATE, sport=41000)
            time.sleep(1.0)
            a = member_packets(run)
            time.sleep(3.0)
            b = member_packets(run)
            got = [b[n] - a[n] for n in a]
            assert min(got) > 0
            assert max(got) / (sum(got) / len(got)) <= 1.1, got
            # unchanged traffic: a second run moves nothing
            again = json.loads(
                run("rebalance", str(path), "--auto", "--window", "3", "--json").stdout
            )
            assert again["moved"] == 0 and again["imbalance_before"] <= 1.1, again
            # every established connection is still answered by its member
            assert tcp.ping() == first
            status = json.loads(run("status", "web", "--json").stdout)
            assert status["in_sync"]
    finally:
        sender.proc.kill()
        sender.proc.wait()
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)


def test_measuring_leaves_nothing_behind_and_bad_input_changes_nothing(
    topo: Lab, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    spec = topo.spec("web", mode="steer", key="mask", bits=8)
    path = write_spec(tmp_path / "web.json", spec)

    def run(*args: str, check: bool = False) -> Any:
        return vipctl(topo.router_ns, *args, "--state-dir", state, check=check)

    try:
        missing = run("rebalance", str(path), "--auto", "--window", "0.2")
        assert missing.returncode == 1 and "not installed" in missing.stderr
        assert "Traceback" not in missing.stderr
        run("apply", str(path), check=True)
        before = traffic_ruleset(topo)
        bad = run("rebalance", str(path), "--auto", "--metric", "frames")
        assert bad.returncode == 2 and "--metric" in bad.stderr
        both = run("rebalance", str(path), "--auto", "--weights", "web1=2")
        assert both.returncode == 2
        idle = run("plan", str(path), "--auto", "--window", "0.3", "--json", check=True)
        assert json.loads(idle.stdout)["moved"] == 0
        load = run("status", "web", "--load", "--window", "0.3", check=True)
        assert "web1" in load.stdout
        png = tmp_path / "strip.png"
        run("status", "web", "--load", "--window", "0.3", "--png", str(png), check=True)
        assert png.read_bytes()[:4] == b"\x89PNG"
        # the counters and their map are gone again: the ruleset is byte-identical but for
        # the generation (three measurements, each one commit on and one off, via apply)
        gen = re.compile(r'comment "vipctl generation (\d+)"')
        after = traffic_ruleset(topo)
        assert gen.sub("", after) == gen.sub("", before)
        assert [int(g) for g in gen.findall(after)] == [int(g) + 6 for g in gen.findall(before)]
    finally:
        run("down", "web")


def traffic_ruleset(topo: Lab) -> str:
    from tests.kernel.helpers import ruleset

    return ruleset(topo.router_ns)


def test_the_hash_key_measures_through_a_counter_set_in_the_clusters_rule(
    topo: Lab, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    path = write_spec(tmp_path / "web.json", topo.spec("web", mode="steer", key="hash", bits=4))

    def run(*args: str) -> Any:
        return vipctl(topo.router_ns, *args, "--state-dir", state, check=True)

    run("apply", str(path))
    before = traffic_ruleset(topo)
    sources = [f"10.99.4.{b}" for b in range(64)]
    sender = traffic.numbered_spawn(topo, topo.vip4, sources, RATE * 30, RATE)
    try:
        time.sleep(0.5)
        report = json.loads(run("status", "web", "--load", "--window", "1", "--json").stdout)
    finally:
        sender.proc.kill()
        sender.proc.wait()
        after = traffic_ruleset(topo)
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)
    assert report["measured"] > RATE / 4, report
    # the counting set is gone: the same ruleset but for the generation and the counts
    norm = re.compile(r'comment "vipctl generation \d+"|packets \d+ bytes \d+')
    assert norm.sub("", after) == norm.sub("", before) and "load4" not in after


def _load_objects(ns: str, cluster: str) -> list[str]:
    """Every per-bucket load object (counter, counter map, counting set) in the cluster's
    table: what a measuring table adds (render/nft.py load_objects)."""
    from tests.kernel.helpers import sh
    from vipctl.render.nft import table_name

    listed = json.loads(sh(ns, f"nft -j list table netdev {table_name(cluster)}"))
    found = []
    for item in listed["nftables"]:
        for kind in ("counter", "map", "set", "chain"):
            obj = item.get(kind)
            if obj is not None and str(obj.get("name", "")).startswith("load"):
                found.append(f"{kind} {obj['name']}")
    return found


@pytest.mark.parametrize("key", ["mask", "hash"])
def test_a_killed_measurement_is_switched_off_by_the_next_apply(
    topo: Lab, tmp_path: Path, key: str
) -> None:
    """SIGKILL `rebalance --auto --window 5` at several moments (before, while and after
    the commit that switches counting on); the next plain `vipctl apply` leaves no load
    counter, counter map or counting set in the kernel (issue 28: 512 counters stayed)."""
    from tests.kernel.helpers import vipctl_spawn

    state = str(tmp_path / "state")
    path = write_spec(tmp_path / "web.json", topo.spec("web", mode="steer", key=key, bits=8))

    def run(*args: str) -> Any:
        return vipctl(topo.router_ns, *args, "--state-dir", state, check=True)

    run("apply", str(path))
    counted = 0
    try:
        for delay in (0.05, 0.15, 0.3, 0.5, 0.8, 1.5):
            proc = vipctl_spawn(
                topo.router_ns, "rebalance", str(path), "--auto", "--window", "5",
                "--state-dir", state,
            )  # fmt: skip
            time.sleep(delay)
            proc.kill()
            proc.communicate(timeout=30)
            counted += bool(_load_objects(topo.router_ns, "web"))
            # the next command switches it off: a plain apply, or a rebalance (every other
            # delay, weights as the spec has them)
            if int(delay * 100) % 2:
                run("rebalance", str(path), "--weights", "web1=1")
            else:
                run("apply", str(path))
            assert _load_objects(topo.router_ns, "web") == [], delay
            status = json.loads(run("status", "web", "--json").stdout)
            assert status["in_sync"], delay
        # the kill landed inside the window at least once (else this proves nothing)
        assert counted, "no kill found counting switched on: the delays are too short"
    finally:
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)


def test_refused_numbers_change_nothing(topo: Lab, tmp_path: Path) -> None:
    """Every refusal of issue 28's command lines: exit 2, no traceback, ruleset and state
    byte-identical (`--window inf` committed the counting table, a new generation, and
    then died in sleep() with an OverflowError)."""
    from tests.kernel.helpers import ruleset

    state = tmp_path / "state"
    path = write_spec(tmp_path / "web.json", topo.spec("web", mode="steer", key="mask", bits=8))

    def run(*args: str) -> Any:
        return vipctl(topo.router_ns, *args, "--state-dir", str(state))

    def snapshot() -> tuple[str, dict[str, bytes]]:
        files = {p.name: p.read_bytes() for p in sorted(state.iterdir())}
        return ruleset(topo.router_ns), files

    nines = "9" * 5000
    refused = [
        ["rebalance", str(path), "--auto", "--window", "inf"],
        ["rebalance", str(path), "--auto", "--window", "nan"],
        ["rebalance", str(path), "--auto", "--window", "3601"],
        ["rebalance", str(path), "--auto", "--tolerance", "inf"],
        ["rebalance", str(path), "--weights", f"web1={nines}"],
        ["plan", str(path), "--weights", f"web1={nines}"],
        ["plan", str(path), "--auto", "--window", "1e400"],
        ["status", "web", "--load", "--window", "inf"],
        ["status", "web", "--watch", "nan"],
        ["which", str(path), "fe80::1%up0"],
        ["metrics", "--listen", f"127.0.0.1:{nines}"],
    ]
    assert run("apply", str(path)).returncode == 0
    try:
        before = snapshot()
        for argv in refused:
            got = run(*argv)
            assert got.returncode == 2, (argv[:4], got.returncode, got.stderr[-500:])
            assert "Traceback" not in got.stderr and nines not in got.stderr, argv[:4]
            assert snapshot() == before, argv[:4]
    finally:
        run("down", "web")

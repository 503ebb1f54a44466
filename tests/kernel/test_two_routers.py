"""Two vipctl routers behind an upstream BIRD doing ECMP + BFD, with real BGP sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vipctl.lab import topology as labmod
from vipctl.lab import traffic

PREFIX = f"vx18.{os.getpid()}"


@pytest.fixture
def two() -> Iterator[labmod.TwoRouters]:
    t = labmod.build_two_routers(PREFIX, 3)
    try:
        yield t
    finally:
        labmod.destroy(PREFIX)


def vipctl(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return labmod.run_in(ns, [sys.executable, "-m", "vipctl.cli", *args], check=check)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_daemons(two: labmod.TwoRouters, tmp_path: Path) -> list[subprocess.Popen[str]]:
    spec = tmp_path / "lab.json"
    spec.write_text(json.dumps(two.spec()))
    procs = []
    for r in two.routers:
        log = open(tmp_path / f"{r}.log", "w")  # noqa: SIM115
        procs.append(
            labmod.spawn_in(
                r,
                [
                    sys.executable,
                    "-m",
                    "vipctl.cli",
                    "daemon",
                    str(spec),
                    "--state-dir",
                    str(tmp_path / r),
                ],
                stdout=log.fileno(),
                stderr=log.fileno(),
            )
        )
    return procs


def fingerprint(two: labmod.TwoRouters, r: str, tmp_path: Path) -> str:
    out = vipctl(r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)).stdout
    data = json.loads(out)
    return str((data[0] if isinstance(data, list) else data)["fingerprint"])


def test_two_routers_ecmp_exactly_once_failover(two: labmod.TwoRouters, tmp_path: Path) -> None:
    procs = start_daemons(two, tmp_path)
    try:
        wait_for(
            "two ECMP paths upstream",
            lambda: labmod.upstream_paths(two, two.lab.vip4) == sorted(labmod.ROUTER_LINK4),
        )
        fps = {fingerprint(two, r, tmp_path) for r in two.routers}
        assert len(fps) == 1
        sources = traffic.expand(two.lab.sources4, 4096)
        got = traffic.probe(two.lab, two.lab.vip4, sources, timeout=3.0)
        assert all(len(v) == 1 for v in got.values()), traffic.summarize(got)
        # through both routers: each router's uplink counted VIP packets
        per_router = [
            sum(
                m["packets"]
                for m in json.loads(
                    vipctl(r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)).stdout
                )["members"]
            )
            for r in two.routers
        ]
        assert all(p > 0 for p in per_router), per_router

        # a member fails on both routers (probes see it) -> fingerprints still equal
        web2 = two.lab.member(2)
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth1", "down"])
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth2", "down"])
        wait_for(
            "web2 down on both",
            lambda: all(
                not next(
                    m
                    for m in json.loads(
                        vipctl(
                            r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)
                        ).stdout
                    )["members"]
                    if m["name"] == "web2"
                )["healthy"]
                for r in two.routers
            ),
        )
        assert len({fingerprint(two, r, tmp_path) for r in two.routers}) == 1
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth1", "up"])
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth2", "up"])

        # router 1 dies (its links go down): the upstream keeps router 2 only (BFD)
        with traffic.TcpSessions(two.lab, two.lab.vip4, sources[:64]) as tcp:
            assert all(v == "ok" for v in tcp.opened.values()), tcp.opened
            before = tcp.ping()
            died = time.monotonic()
            r1 = two.routers[0]
            labmod.run_in(r1, ["ip", "link", "set", two.lab.uplink, "down"])
            for m in two.lab.members:
                labmod.run_in(r1, ["ip", "link", "set", m.port, "down"])
            wait_for(
                "one path upstream",
                lambda: labmod.upstream_paths(two, two.lab.vip4) == [labmod.ROUTER_LINK4[1]],
                timeout=10,
            )
            moved_s = time.monotonic() - died
            after = tcp.ping()
            assert after == before, {
                s: (before[s], after[s]) for s in before if before[s] != after[s]
            }
        (tmp_path / "failover.txt").write_text(f"{moved_s:.3f}\n")
        print(f"upstream route moved to router 2 {1000 * moved_s:.0f} ms after router 1 died")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)

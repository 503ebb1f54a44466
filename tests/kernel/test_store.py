"""One cluster across routers through a real etcd (spec `store:`): two vipctl routers
behind the upstream BIRD (ECMP + BFD), each with its daemon, and Debian's etcd in the
upstream's namespace.

- `rebalance --weights` typed on ONE router changes the shared desired state once; the
  other router's daemon converges to it (same fingerprint) within a second; `status`
  lists both routers and their fingerprints.
- etcd stopped: `rebalance` exits 75 and changes nothing on either router (rulesets
  byte-identical), and a member failure still fails over on both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.test_two_routers import stop_daemons, wait_for
from vipctl.backends import nft
from vipctl.core import plan as planning
from vipctl.core.partition import Layout, bucket_of, fingerprint, moved
from vipctl.core.spec import Spec, parse_spec
from vipctl.host import links
from vipctl.lab import topology as labmod
from vipctl.lab import traffic

PREFIX = f"vx24.{os.getpid()}"
ETCD = shutil.which("etcd")
pytestmark = pytest.mark.skipif(
    ETCD is None and os.environ.get("CI") != "true", reason="etcd-server is not installed"
)
CONVERGE_S = 1.0


@pytest.fixture
def two() -> Iterator[labmod.TwoRouters]:
    t = labmod.build_two_routers(PREFIX, 3)
    try:
        yield t
    finally:
        labmod.destroy(PREFIX)


class Etcd:
    """One etcd member in the upstream's namespace, on its address on the routers' link."""

    def __init__(self, two: labmod.TwoRouters, tmp: Path) -> None:
        assert ETCD is not None, "etcd-server is not installed (scripts/install-deps --tests)"
        self.url = f"http://{labmod.UPSTREAM_LINK4}:2379"
        self.log = open(tmp / "etcd.log", "w")  # noqa: SIM115
        self.proc = labmod.spawn_in(
            two.upstream_ns,
            [
                ETCD,
                "--name", "vipctl-test",
                "--data-dir", str(tmp / "etcd"),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "vipctl-test=http://127.0.0.1:2380",
            ],
            stdout=self.log.fileno(),
            stderr=self.log.fileno(),
        )  # fmt: skip
        wait_for("etcd answers", lambda: self.healthy(two), timeout=20)

    def healthy(self, two: labmod.TwoRouters) -> bool:
        got = labmod.run_in(
            two.routers[0],
            ["etcdctl", "--endpoints", self.url, "endpoint", "health"],
            check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return got.returncode == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def etcd(two: labmod.TwoRouters, tmp_path: Path) -> Iterator[Etcd]:
    e = Etcd(two, tmp_path)
    try:
        yield e
    finally:
        e.stop()


def router_env(r: str) -> dict[str, str]:
    return {**os.environ, "VIPCTL_ROUTER": r.rsplit("-", 1)[-1]}


def vipctl(r: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return labmod.run_in(
        r, [sys.executable, "-m", "vipctl.cli", *args], check=check, env=router_env(r)
    )


def start(two: labmod.TwoRouters, tmp_path: Path, spec: dict[str, Any]) -> list[Any]:
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(spec))
    procs = []
    for r in two.routers:
        log = open(tmp_path / f"{r}.log", "w")  # noqa: SIM115
        procs.append(
            labmod.spawn_in(
                r,
                [sys.executable, "-m", "vipctl.cli", "daemon", str(path),
                 "--state-dir", str(tmp_path / r)],
                stdout=log.fileno(),
                stderr=log.fileno(),
                env=router_env(r),
            )
        )  # fmt: skip
    return procs


def status(r: str, tmp_path: Path) -> dict[str, Any]:
    out = vipctl(r, "status", "lab", "--json", "--state-dir", str(tmp_path / r), check=False)
    if out.returncode:
        return {}
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def fingerprints(two: labmod.TwoRouters, tmp_path: Path) -> list[str | None]:
    return [status(r, tmp_path).get("fingerprint") for r in two.routers]


class Differ:
    """Reads both routers' owner maps every 20 ms in a thread and adds up the time
    during which their fingerprints differ (the goal: at most a second)."""

    def __init__(self, two: labmod.TwoRouters, spec: Spec) -> None:
        self.two, self.spec = two, spec
        self.differed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Differ:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _fingerprint(self, r: str) -> str | None:
        p = self.spec.partition
        with links.in_netns(r):
            found = nft.live_table(self.spec)
        return fingerprint(found[0], p.key, p.bits, p.seed) if found else None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            fps = {self._fingerprint(r) for r in self.two.routers}
            now = time.monotonic()
            if len(fps) > 1:
                self.differed += now - last
            last = now
            time.sleep(0.02)


def spec_with_store(two: labmod.TwoRouters, etcd: Etcd) -> dict[str, Any]:
    spec = two.spec()
    spec["store"] = {"etcd": [etcd.url], "poll_ms": 100}
    return spec


def test_a_rebalance_on_one_router_reaches_every_router(
    two: labmod.TwoRouters, etcd: Etcd, tmp_path: Path
) -> None:
    spec = spec_with_store(two, etcd)
    procs = start(two, tmp_path, spec)
    r1, r2 = two.routers
    try:
        wait_for("both routers serve", lambda: all(fingerprints(two, tmp_path)))
        before = fingerprints(two, tmp_path)
        assert before[0] == before[1]
        model = parse_spec(spec)
        watcher = Differ(two, model)
        with watcher:
            vipctl(r1, "rebalance", str(tmp_path / "lab.json"), "--weights", "web1=3",
                   "--state-dir", str(tmp_path / r1))  # fmt: skip
            new = status(r1, tmp_path)["fingerprint"]
            assert new != before[0]
            wait_for(
                "router 2 converges",
                lambda: status(r2, tmp_path).get("fingerprint") == new,
                timeout=10,
            )
            time.sleep(0.3)
        print(f"\nMEASURED fingerprints differed for {1000 * watcher.differed:.0f} ms in all")
        assert watcher.differed <= CONVERGE_S, watcher.differed
        web1 = next(m for m in status(r2, tmp_path)["members"] if m["name"] == "web1")
        assert (web1["weight"], web1["spec_weight"]) == (3, 1)

        def agreed() -> bool:
            s = status(r2, tmp_path)
            names = {r["name"] for r in s.get("routers", [])}
            return names == {"r1", "r2"} and bool(s.get("routers_agree"))

        wait_for("both routers published the same fingerprint", agreed, timeout=10)
        # a member failure on both routers keeps them equal (same base, same health)
        web2 = two.lab.member(2)
        for dev in ("eth1", "eth2"):
            labmod.run_in(web2.ns, ["ip", "link", "set", dev, "down"])
        wait_for(
            "web2 down on both",
            lambda: all(
                not next(m for m in status(r, tmp_path)["members"] if m["name"] == "web2")[
                    "healthy"
                ]
                for r in two.routers
            ),
        )
        fps = fingerprints(two, tmp_path)
        assert fps[0] == fps[1] and fps[0] != new
    finally:
        stop_daemons(procs)


def test_with_the_store_down_changes_are_refused_and_failover_works(
    two: labmod.TwoRouters, etcd: Etcd, tmp_path: Path
) -> None:
    spec = spec_with_store(two, etcd)
    procs = start(two, tmp_path, spec)
    try:
        wait_for("both routers serve", lambda: all(fingerprints(two, tmp_path)))
        etcd.stop()
        rulesets = [labmod.run_in(r, ["nft", "list", "ruleset"]).stdout for r in two.routers]
        states = [(tmp_path / r / "lab.json").read_bytes() for r in two.routers]
        r1 = two.routers[0]
        got = vipctl(r1, "rebalance", str(tmp_path / "lab.json"), "--weights", "web1=3",
                     "--state-dir", str(tmp_path / r1), check=False)  # fmt: skip
        assert got.returncode == 75, (got.returncode, got.stderr)
        assert "store" in got.stderr and "Traceback" not in got.stderr, got.stderr
        assert [labmod.run_in(r, ["nft", "list", "ruleset"]).stdout for r in two.routers] == (
            rulesets
        )
        assert [(tmp_path / r / "lab.json").read_bytes() for r in two.routers] == states
        # the data plane does not depend on the store: a member failure fails over
        web3 = two.lab.member(3)
        for dev in ("eth1", "eth2"):
            labmod.run_in(web3.ns, ["ip", "link", "set", dev, "down"])
        wait_for(
            "web3 failed over on both",
            lambda: all(
                next(m for m in status(r, tmp_path)["members"] if m["name"] == "web3")["buckets"]
                == 0
                for r in two.routers
            ),
        )
    finally:
        stop_daemons(procs)


# -- a router dies during a transition: the members' second chance ---------------------------


def test_connections_survive_the_death_of_the_router_that_saw_them_open(
    two: labmod.TwoRouters, etcd: Etcd, tmp_path: Path
) -> None:
    """rebalance (through the store: both routers move the same buckets), 200 connections
    in the moving buckets opened before it and 200 after it, spread over both routers by
    the upstream's ECMP; then router 1 dies hard (its links down, its daemon killed). The
    connections opened after the change through router 1 reach router 2 as packets it
    never saw a SYN of: router 2 sends them to the old owner, which has no socket for them
    and hands them back (host/member.py), and router 2 gives them to the new owner. Every
    one of the 400 keeps its member."""
    spec = spec_with_store(two, etcd)
    model = parse_spec(spec)
    p = model.partition
    before_layout = Layout.initial(p.bits, planning.spec_weights(model))
    after_layout = before_layout.reweight(planning.spec_weights(model, {"web1": Fraction(3)}))
    moving = set(moved(before_layout.table, after_layout.table))
    pool = [
        s
        for s in traffic.expand(two.lab.sources4, 8192)
        if bucket_of(s, p.key, p.bits, p.seed) in moving
    ]
    assert len(pool) >= 400, len(pool)
    early, late = pool[:200], pool[200:400]
    procs = start(two, tmp_path, spec)
    r1, r2 = two.routers
    try:
        wait_for("both routers serve", lambda: all(fingerprints(two, tmp_path)))
        wait_for("two paths upstream", lambda: len(labmod.upstream_paths(two, two.lab.vip4)) == 2)
        time.sleep(2.0)  # BGP settles (a route replaced meanwhile answers net unreachable)
        with traffic.TcpSessions(two.lab, two.lab.vip4, early) as first:
            assert set(first.opened.values()) == {"ok"}, first.opened
            was = first.ping()
            vipctl(r1, "rebalance", str(tmp_path / "lab.json"), "--weights", "web1=3",
                   "--state-dir", str(tmp_path / r1))  # fmt: skip
            new = status(r1, tmp_path)["fingerprint"]
            wait_for("router 2 converges",
                     lambda: status(r2, tmp_path).get("fingerprint") == new)  # fmt: skip
            with traffic.TcpSessions(two.lab, two.lab.vip4, late) as second:
                assert set(second.opened.values()) == {"ok"}, second.opened
                now = second.ping()
                assert set(now.values()) == {"web1"}, now  # the new owner
                assert first.ping() == was  # the old connections stayed
                # router 1 dies hard
                procs[0].send_signal(signal.SIGKILL)
                labmod.run_in(r1, ["ip", "link", "set", two.lab.uplink, "down"])
                for m in two.lab.members:
                    labmod.run_in(r1, ["ip", "link", "set", m.port, "down"])
                wait_for(
                    "one path upstream",
                    lambda: labmod.upstream_paths(two, two.lab.vip4) == [labmod.ROUTER_LINK4[1]],
                    timeout=10,
                )
                after_second = second.ping()
                after_first = first.ping()
        broken = {s: (now[s], after_second[s]) for s in late if after_second[s] != now[s]}
        broken.update({s: (was[s], after_first[s]) for s in early if after_first[s] != was[s]})
        assert not broken, f"{len(broken)} of 400 connections reset or moved: {broken}"
    finally:
        stop_daemons(procs)

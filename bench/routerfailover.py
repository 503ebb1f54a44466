"""Router failover time: two vipctl routers behind an upstream BIRD (ECMP + BFD), as in
docs/two-routers.md; one router dies, how long until the upstream's route leaves it?

    .venv/bin/python -m bench.routerfailover --trials 20 --bfd-ms 30 --multiplier 3

The two-router lab (vipctl/lab/topology.py) with BFD at `--bfd-ms` x `--multiplier` on
both sides (the spec's `bgp.bfd_interval_ms`/`bfd_multiplier` on the routers, the same in
the upstream's BIRD). Both routers run `vipctl daemon`; each trial cuts router 1's link at
the upstream (its bridge port set down: router 1 is gone as far as the upstream can
tell, which is what a dead router or a pulled cable looks like) and measures, in one
process inside the upstream namespace, from that netlink call to the instant the
upstream's kernel route to the VIP has router 2 as its only nexthop (route dump every
millisecond). Then the link comes back and the trial waits for both paths again (BGP
re-establishes in 1-4 s). Detection is the BFD multiplier x interval; the rest is BIRD
withdrawing the path and rewriting the kernel route.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import PY, netns, summary
from vipctl.lab import topology as labmod

GOAL_P95_MS = 150


def inner(vip: str, ctl: str, trials: int, timeout: float) -> dict[str, Any]:
    """Runs in the upstream namespace: the trials, as a JSON object."""
    from pyroute2 import IPRoute

    r1, r2 = labmod.ROUTER_LINK4

    def nexthops(ipr: Any) -> set[str]:
        hops: set[str] = set()
        for msg in ipr.get_routes(family=socket.AF_INET, table=254):
            if msg.get_attr("RTA_DST") != vip or msg["dst_len"] != 32:
                continue
            if msg.get_attr("RTA_GATEWAY"):
                hops.add(msg.get_attr("RTA_GATEWAY"))
            for nh in msg.get_attr("RTA_MULTIPATH") or []:
                if nh["flags"] & 0x11 == 0:  # RTNH_F_DEAD | RTNH_F_LINKDOWN
                    hops.add(nh.get_attr("RTA_GATEWAY"))
        return hops

    def bfd_up() -> bool:
        """Both routers' BFD sessions Up at the upstream (a BGP session can be up before
        its BFD session; cut then, the path would go only at the hold timer, 3 s)."""
        out = subprocess.run(
            ["birdc", "-s", ctl, "show", "bfd", "sessions"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        up = {line.split()[0] for line in out.splitlines() if " Up " in f" {line} "}
        return {r1, r2} <= up

    def wait(ipr: Any, want: set[str], limit: float) -> float | None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            if nexthops(ipr) == want:
                return time.perf_counter()
            time.sleep(0.001)
        return None

    times: list[float] = []
    timeouts = 0
    with IPRoute() as ipr:
        port = ipr.link_lookup(ifname="r1")[0]
        if wait(ipr, {r1, r2}, 60) is None:
            raise RuntimeError("the upstream never had both routers' paths")
        for _ in range(trials):
            deadline = time.monotonic() + 60
            while not bfd_up():
                if time.monotonic() > deadline:
                    raise RuntimeError("the BFD sessions did not come up")
                time.sleep(0.05)
            ipr.link("set", index=port, state="down")
            t0 = time.perf_counter()
            done = wait(ipr, {r2}, timeout)
            ipr.link("set", index=port, state="up")
            if done is None:
                timeouts += 1
            else:
                times.append((done - t0) * 1000)
            if wait(ipr, {r1, r2}, 60) is None:
                raise RuntimeError("router 1's path did not come back")
            time.sleep(0.5)
    p95 = statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else None
    return {
        "trials": trials,
        "timeouts": timeouts,
        "failover_ms": summary(times, 1),
        "p95_ms": round(p95, 1) if p95 is not None else None,
        "samples_ms": [round(x, 1) for x in times],
    }


def run(trials: int, bfd_ms: int, multiplier: int, timeout: float) -> dict[str, Any]:
    prefix = f"brf{os.getpid() % 10000}"
    two = labmod.build_two_routers(prefix, 3, bfd=(bfd_ms, multiplier))
    work = two.lab.workdir
    procs = []
    try:
        spec = two.spec()
        spec["bgp"] |= {"bfd_interval_ms": bfd_ms, "bfd_multiplier": multiplier}
        (work / "lab.json").write_text(json.dumps(spec))
        for r in two.routers:
            log = open(work / f"{r}.log", "w")  # noqa: SIM115
            cmd = [PY, "-m", "vipctl.cli", "daemon", str(work / "lab.json")]
            procs.append(
                labmod.spawn_in(
                    r,
                    [*cmd, "--state-dir", str(work / r)],
                    stdout=log.fileno(),
                    stderr=log.fileno(),
                )
            )
        argv = [PY, "-m", "bench.routerfailover", "inner", two.lab.vip4, str(two.bird_ctl)]
        argv += ["--trials", str(trials)]
        proc = netns(two.upstream_ns, [*argv, "--timeout", str(timeout)], check=False, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-800:])
        res: dict[str, Any] = json.loads(proc.stdout)
        return res | {
            "bfd": f"{bfd_ms} ms x {multiplier}",
            "goal_p95_ms": GOAL_P95_MS,
            "load_avg": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        labmod.destroy(prefix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routerfailover", description=__doc__)
    ap.add_argument("cmd", nargs="?", choices=["inner"])
    ap.add_argument("vip", nargs="?")
    ap.add_argument("ctl", nargs="?", help="the upstream BIRD's control socket")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--bfd-ms", type=int, default=30)
    ap.add_argument("--multiplier", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    a = ap.parse_args(argv)
    if a.cmd == "inner":
        json.dump(inner(a.vip, a.ctl, a.trials, a.timeout), sys.stdout)
        return 0
    res = run(a.trials, a.bfd_ms, a.multiplier, a.timeout)
    text = json.dumps(res, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    ok = res["p95_ms"] is not None and res["p95_ms"] <= GOAL_P95_MS and not res["timeouts"]
    verdict = "met" if ok else "NOT met"
    print(f"router failover p95 {res['p95_ms']} ms (goal <= {GOAL_P95_MS}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

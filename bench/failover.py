"""Failover-time distribution: probe failure and link loss, >= 20 trials each in a full run.

A 4-member lab (echo servers answer the TCP probes) runs ``vipctl daemon`` in the router
namespace. Each trial fails one member (rotating) and measures, from the instant the
failure is in place to the instant the daemon's new table is live (the member's port
member owns no bucket any more in the live owners map):

* probe failure: a table of our own in the router namespace drops the probes (TCP to the
  echo port) at the member port's egress; the member stays reachable otherwise;
* link loss: the router's member port is set down.

Then the failure is undone and the trial waits until the member owns buckets again. The
trials run in one process inside the router namespace (``inner``), polling the live owners
map every 2 ms through libnftables.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import PY, netns, summary
from vipctl.lab import topology as labmod

CLUSTER = "bench"
GOALS = {"goal_probe_p95_ms": 400, "goal_link_p95_ms": 100, "goal_trials": 20}


def _p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return round(statistics.quantiles(values, n=20, method="inclusive")[18], 1)


def inner(members: list[str], trials: int, echo_port: int, timeout: float) -> dict[str, Any]:
    import nftables

    from vipctl.host import links
    from vipctl.host import netlink as nl

    nft = nftables.Nftables()
    nft.set_json_output(True)

    def alive() -> set[int]:
        """Port ifindexes of the members that own buckets in the live owners map (the
        table's one lookup: `bucket : goto to4_<member>`, or a chain of a bucket in
        transition, `rec4_<member>` / `mv4_<old mark>_<new mark>`)."""
        rc, out, _ = nft.cmd(f"list map netdev vipctl_{CLUSTER} owners4_m8")
        if rc != 0:
            return set()
        found: set[int] = set()
        for item in json.loads(out).get("nftables", []):
            if "map" not in item:
                continue
            for elem in item["map"].get("elem", []):
                target = (
                    str(elem[1].get("goto", {}).get("target", "")) if isinstance(elem, list) else ""
                )
                head, _, rest = target.partition("_")
                if head in ("to4", "rec4") and rest in by_name:
                    found.add(by_name[rest])
                elif head == "mv4" and rest.rpartition("_")[2].isdigit():
                    found.add(int(rest.rpartition("_")[2]))
        return found

    def wait(ifindex: int, present: bool) -> float | None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if (ifindex in alive()) == present:
                return time.perf_counter()
            time.sleep(0.002)
        return None

    plain = nftables.Nftables()
    out: dict[str, Any] = {}
    by_name: dict[str, int] = {}

    def set_up(ifx: int, up: bool) -> None:
        with nl.connection() as sock:
            change = nl.ifinfomsg(index=ifx, flags=nl.IFF_UP if up else 0, change=nl.IFF_UP)
            sock.request(nl.RTM_NEWLINK, change)

    index = {p: links.ifindex(p) for p in members}
    by_name.update({f"web{p.removeprefix('m')}": i for p, i in index.items()})  # the lab's names
    if wait(max(index.values()), True) is None or not all(i in alive() for i in index.values()):
        raise RuntimeError("the daemon never made every member alive")
    for kind in ("probe", "link"):
        times: list[float] = []
        restore: list[float] = []
        timeouts = 0
        for t in range(trials):
            port = members[t % len(members)]
            ifx = index[port]
            if kind == "probe":
                rc, _, err = plain.cmd(
                    "table netdev bench_fail { chain out { type filter hook egress device "
                    f'"{port}" priority -10; policy accept; tcp dport {echo_port} drop; '
                    "}; }"
                )
                if rc != 0:
                    raise RuntimeError(err)
            else:
                set_up(ifx, False)
            t0 = time.perf_counter()
            done = wait(ifx, False)
            if kind == "probe":
                plain.cmd("delete table netdev bench_fail")
            else:
                set_up(ifx, True)
            if done is None:
                timeouts += 1
            else:
                times.append((done - t0) * 1000)
            t1 = time.perf_counter()
            back = wait(ifx, True)
            if back is None:
                raise RuntimeError(f"{port} did not come back after {kind} trial {t}")
            restore.append((back - t1) * 1000)
            time.sleep(0.3)  # let the member's rise/fall counters settle
        out[kind] = {
            "trials": trials,
            "timeouts": timeouts,
            "failover_ms": summary(times, 1),
            "p95_ms": _p95(times),
            "restore_ms": summary(restore, 1),
            "samples_ms": [round(x, 1) for x in times],
        }
    return out


def run_all(prefix: str, work: Path, quick: bool) -> dict[str, Any]:
    trials = 12 if quick else 25
    name = f"{prefix}f"
    lab = labmod.build(name, 4, echo=True)
    work.mkdir(parents=True, exist_ok=True)
    spec = lab.spec(CLUSTER, mode="steer", key="mask", bits=8, vips=[lab.vip4])
    (work / "spec.json").write_text(json.dumps(spec))
    log = open(work / "daemon.log", "w")  # noqa: SIM115
    daemon = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.router_ns,
            PY,
            "-m",
            "vipctl.cli",
            "daemon",
            str(work / "spec.json"),
            "--state-dir",
            str(work / "state"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        proc = netns(
            lab.router_ns,
            [
                PY,
                "-m",
                "bench.failover",
                "inner",
                *lab.ports,
                "--trials",
                str(trials),
                "--echo-port",
                str(lab.echo_port),
            ],
            check=False,
            timeout=900,
        )
        if proc.returncode != 0:
            tail = (work / "daemon.log").read_text()[-600:]
            return {"error": proc.stderr.strip()[-600:], "daemon_log_tail": tail, **GOALS}
        res: dict[str, Any] = json.loads(proc.stdout)
        res["health"] = spec["health"] | {
            "defaults": "interval 100 ms, timeout 300 ms, rise 2, fall 3"
        }
        return res | GOALS
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        log.close()
        labmod.destroy(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inner")
    i.add_argument("ports", nargs="+")
    i.add_argument("--trials", type=int, default=20)
    i.add_argument("--echo-port", type=int, default=7000)
    i.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    json.dump(inner(args.ports, args.trials, args.echo_port, args.timeout), sys.stdout)


if __name__ == "__main__":
    main()

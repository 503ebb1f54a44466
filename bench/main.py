"""``bench/run``: every benchmark of issue 7 in one command.

Writes bench/results/<timestamp>.json, PNG plots next to it (copied to docs/benchmarks/)
and regenerates docs/benchmarks.md. Needs root (network namespaces), trafgen, iperf3 and
matplotlib. Never touches the machine's own network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import controlplane, dataplane, failover, partition, report
from bench.common import ROOT, machine
from vipctl.lab import topology as labmod

RESULTS = ROOT / "bench" / "results"
PARTS = ("partition", "control", "data", "failover")
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a few-minute subset")
    ap.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    ap.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="only regenerate plots and docs/benchmarks.md from a results file",
    )
    args = ap.parse_args(argv)
    if args.report:
        res = json.loads(args.report.read_text())
        for p in report.write(res, args.report):
            log(f"wrote {p}")
        return 0
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if only - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(only - set(PARTS))}")
    if os.geteuid() != 0 and only - {"partition"}:
        ap.error("run as root: the benchmarks build network namespaces")
    prefix = f"bench{os.getpid()}"
    work = labmod.WORK_ROOT / prefix
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cmd = "./bench/run" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    res: dict[str, Any] = {
        "command": cmd,
        "quick": args.quick,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "notes": [],
    }
    try:
        if "partition" in only:
            log("partition engine")
            res["partition"] = partition.run(args.quick)
        if "control" in only:
            log("control plane")
            res["controlplane"] = controlplane.run_all(prefix, work / "cp", args.quick)
        if "data" in only:
            log("data plane")
            res["dataplane"] = dataplane.run_all(prefix, work / "dp", args.quick, log)
        if "failover" in only:
            log("failover")
            res["failover"] = failover.run_all(prefix, work / "fo", args.quick)
    finally:
        # Each part removes its own labs; this catches what an interrupted part left.
        for sub in (prefix, f"{prefix}c", f"{prefix}f", *(f"{prefix}d{n}" for n in (2, 4, 8, 16))):
            for ns in labmod.namespaces(sub):
                log(f"cleaning up leftover namespace {ns}")
            labmod.destroy(sub)
    if "daemon" in res.get("controlplane", {}) and "skipped" in res["controlplane"]["daemon"]:
        res["notes"].append("Daemon RSS: " + res["controlplane"]["daemon"]["skipped"] + ".")
    if "pending" in res.get("failover", {}):
        res["notes"].append("Failover: " + res["failover"]["pending"] + ".")
    res["duration_s"] = round(time.monotonic() - T0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    res["results_file"] = str(path.relative_to(ROOT))
    path.write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {path}")
    for p in report.write(res, path):
        log(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

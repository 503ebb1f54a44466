"""``python -m bench.chaos``: run a seeded chaos schedule and print the accounting.

Exit 0 when the run reports no violation (no connection reset or moved but for its
member's death, no UDP datagram lost or duplicated outside fault windows), 1 when it
reports some, 2 on bad arguments. Needs root (network namespaces), bird2 and nftables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.chaos import run as chaos
from bench.chaos import schedule


def _kinds(text: str) -> tuple[str, ...]:
    if text == "all":
        return schedule.KINDS
    if text == "holds-now":
        return schedule.HOLDS_NOW
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(schedule.KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown event kinds {unknown}; use all, holds-now or a list of: "
            + ", ".join(schedule.KINDS)
        )
    return kinds


def _gap(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--gap is MIN,MAX seconds, e.g. 3,6") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError("--gap: need 0 < MIN <= MAX")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--conns", type=int, default=300, help="long-lived TCP connections")
    ap.add_argument("--routers", type=int, default=2, help="2..5")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument(
        "--kinds",
        type=_kinds,
        default=schedule.KINDS,
        help="all | holds-now | comma list of " + ",".join(schedule.KINDS),
    )
    ap.add_argument("--gap", type=_gap, default=(3.0, 6.0), help="MIN,MAX s between events")
    ap.add_argument(
        "--new-rate",
        type=float,
        default=None,
        help="new connections per second (default conns/200, at least 1)",
    )
    ap.add_argument("--udp-flows", type=int, default=1024)
    ap.add_argument(
        "--broken",
        choices=["seed", "transitions-off"],
        default=None,
        help="a deliberately broken build: router 2 runs another partition seed, or no "
        "router keeps transition state (pinning mode off)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    ap.add_argument(
        "--logs",
        type=Path,
        default=None,
        help="keep the daemons', echo services' and load's logs here "
        "(default /tmp/chaos<pid>-logs; 'none' keeps none)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = ap.parse_args(argv)
    if not 2 <= a.routers <= 5:
        ap.error("--routers must be 2..5")
    if not 2 <= a.members <= 29:
        ap.error("--members must be 2..29")
    if not 1 <= a.conns <= 50000 or a.events < 0 or not 0 <= a.udp_flows <= 1024:
        ap.error("--conns 1..50000, --events >= 0, --udp-flows 0..1024")
    if os.geteuid() != 0:
        print("bench.chaos: needs root (network namespaces)", file=sys.stderr)
        return 2
    cfg = chaos.Config(
        seed=a.seed,
        events=a.events,
        conns=a.conns,
        routers=a.routers,
        members=a.members,
        kinds=a.kinds,
        gap=a.gap,
        new_rate=a.new_rate,
        udp_flows=a.udp_flows,
        broken=a.broken,
        logs=None if str(a.logs) == "none" else (a.logs or Path(f"/tmp/chaos{os.getpid()}-logs")),
        verbose=not a.quiet,
    )
    report = chaos.Chaos(cfg).run()
    chaos.write_report(report, a.json, sys.stdout)
    bad = (
        report["connections"]["violations"]
        + report["udp"]["lost_outside_windows"]
        + report["udp"]["duplicated_outside_windows"]
    )
    if a.json is None:
        sys.stdout.write(
            json.dumps({k: report[k] for k in ("connections", "fingerprints_differed_s")}) + "\n"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

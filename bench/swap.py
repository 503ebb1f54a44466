"""The daemon's failover swap, in-process: `controller.apply(down=...)` as the daemon calls
it (host=False, want_diff=False), with and without its cache of the last commit.

    .venv/bin/python -m bench.swap [--swaps 40]

A 3-member lab, steer, mask key, 8 bits; alternately declares web2 down and up, and times
each failover (web2 down). With the cache (the daemon's way) the failover reads nothing
from the kernel before the commit and reads back after it (controller.verify_live, not
timed here: it runs after the swap is live).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from vipctl import controller
from vipctl.core.spec import parse_spec
from vipctl.host import links
from vipctl.lab import topology as labmod


def run(swaps: int, cached: bool, lab: labmod.Lab) -> list[float]:
    spec = parse_spec(lab.spec("web", mode="steer", key="mask", bits=8))
    state = Path(f"/tmp/{lab.router_ns}-swap")
    shutil.rmtree(state, ignore_errors=True)
    times: list[float] = []
    with links.in_netns(lab.router_ns):
        controller.apply(spec, state)
        cache = controller.Cache() if cached else None
        for i in range(2 * swaps):
            down = {"web2"} if i % 2 == 0 else set()
            t0 = time.perf_counter()
            controller.apply(
                spec,
                state,
                controller.ApplyOptions(down=down, host=False, want_diff=False, check_drift=False),
                controller.Env(cache=cache),
            )
            if down:
                times.append((time.perf_counter() - t0) * 1000)
            if cache is not None:
                controller.verify_live(cache)
        controller.down("web", state)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.swap")
    ap.add_argument("--swaps", type=int, default=40)
    a = ap.parse_args(argv)
    prefix = "bswap"
    lab = labmod.build(prefix, 3)
    try:
        out = {}
        for cached in (True, False, True, False):  # interleaved
            key = "cached" if cached else "uncached"
            out.setdefault(key, []).extend(run(a.swaps, cached, lab))
    finally:
        labmod.destroy(prefix)
    summary = {
        k: {
            "median_ms": round(statistics.median(v), 2),
            "min_ms": round(min(v), 2),
            "max_ms": round(max(v), 2),
            "n": len(v),
        }
        for k, v in out.items()
    }
    res = {"command": "python -m bench.swap " + " ".join(sys.argv[1:]), **summary}
    out_path = Path(__file__).resolve().parent / "results" / "swap.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

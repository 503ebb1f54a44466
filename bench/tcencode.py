"""What the tc backend's netlink encoder costs: import time, memory and encoding time.

    .venv/bin/python -m bench.tcencode [--tree DIR ...] [--rounds 7] [--filters 600]

Each --tree is a vipctl source tree (default: this checkout). To compare with the
pyroute2-based encoder it replaced (issue 27), extract that tree and give both; the old one
needs pyroute2 0.9.7 in the venv:

    git archive 4ac6e43 vipctl | tar -x -C /tmp/tc-old
    .venv/bin/pip install pyroute2==0.9.7    # a throwaway venv is better
    .venv/bin/python -m bench.tcencode --tree . --tree /tmp/tc-old

Every round runs one fresh interpreter per tree, in an order rotated every round. Each
measures, after importing vipctl.render.tc and building the filters (which both trees
share): the wall time of `import vipctl.backends.tcnl`, the growth of the resident set
(VmRSS) over that import and the encoding, and the time to encode N flower filters (a
steer ruleset's, 8 bits, five unequal members, two VIPs, cycled to N), each filter
encoded from scratch (the old encoder's lru_cache is bypassed). The trees' bytecode is
compiled first, as an installed package has it. Prints the median over rounds, and
min-max. Pure: no root, no kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT

CHILD = r"""
import json, sys, time
sys.path.insert(0, TREE)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from fractions import Fraction
import vipctl.render.tc as render
from vipctl.core.partition import compute
from vipctl.core.spec import parse_spec
from vipctl.render.wiring import Wiring
spec = parse_spec({
    "cluster": "web", "vips": ["198.51.100.253", "2001:db8:f::253"], "uplink": "up0",
    "mode": "steer", "backend": "tc", "partition": {"key": "mask", "bits": 8},
    "members": [{"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in range(1, 6)]})
wiring = Wiring(ifindex={"up0": 2, **{f"m{i}": 10 + i for i in range(1, 6)}},
                macs={f"web{i}": f"02:00:00:00:{i:02x}:02" for i in range(1, 6)})
layout = compute(8, tuple((f"web{i}", Fraction(i + 2)) for i in range(1, 6)))
rs = render.build_ruleset(spec, layout, wiring, 7, 1)
filters = [f for f in rs.filters]
filters = [filters[i % len(filters)] for i in range(N)]
rss0 = rss()
t0 = time.perf_counter()
import vipctl.backends.tcnl as tcnl
import_ms = (time.perf_counter() - t0) * 1000
encode = getattr(tcnl.filter_bytes, "__wrapped__", tcnl.filter_bytes)
t0 = time.perf_counter()
size = sum(len(encode(f, 2, "flower", 0, None)) for f in filters)
encode_ms = (time.perf_counter() - t0) * 1000
print(json.dumps({"file": tcnl.__file__, "import_ms": import_ms, "rss_mb": rss() - rss0,
                  "us_per_filter": encode_ms * 1000 / N, "bytes": size,
                  "distinct": len(rs.filters)}))
"""


def measure(tree: Path, n: int) -> dict[str, Any]:
    code = CHILD.replace("TREE", repr(str(tree))).replace("N)", f"{n})").replace("/ N", f"/ {n}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [PY, "-c", code], check=True, capture_output=True, text=True, cwd="/", timeout=300, env=env
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    if not out["file"].startswith(str(tree)):
        raise RuntimeError(f"{tree}: imported {out['file']} instead")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", type=Path, help="a vipctl source tree")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--filters", type=int, default=600)
    args = ap.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    runs: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    for t in trees:  # bytecode, as an installed package has it
        subprocess.run([PY, "-m", "compileall", "-q", str(t / "vipctl")], check=True)
    for r in range(args.rounds):
        for t in trees[r % len(trees) :] + trees[: r % len(trees)]:
            runs[t].append(measure(t, args.filters))
    for t, rows in runs.items():
        print(f"{t}  ({args.filters} flower filters, {rows[0]['distinct']} distinct, "
              f"{rows[0]['bytes']} bytes; median (min-max) of {len(rows)} rounds)")  # fmt: skip
        for key, unit in (("import_ms", "ms"), ("rss_mb", "MB"), ("us_per_filter", "us")):
            vals = [row[key] for row in rows]
            print(
                f"  {key:14} {statistics.median(vals):8.2f} {unit}"
                f"  ({min(vals):.2f}-{max(vals):.2f})"
            )


if __name__ == "__main__":
    main()

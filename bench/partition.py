"""Pure control-plane benchmarks (no kernel, no root): the partition engine and the renderer.

* ``entries_64x65536``: ``partition.compute`` + ``partition.shares`` with the per-port
  value/mask entry lists, 64 members x 2**16 buckets (goal <= 50 ms).
* ``grid``: compute + render (``build_table`` + ``transaction`` text, what apply sends to
  libnftables) for members x bits; min/median/max over repeats.

Run alone: ``.venv/bin/python -m bench.partition [--quick]`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from typing import Any

from bench.common import summary, timed
from vipctl.core.partition import Layout, Weights, compute, shares
from vipctl.core.spec import Spec, parse_spec
from vipctl.render.nft import Observed, build_table, transaction
from vipctl.render.wiring import Wiring

VIP = "198.51.100.253"


def weights(n: int, bump: int = 0) -> Weights:
    """n equal members; ``bump`` > 0 gives member 1 weight 1 + bump (a rebalance)."""
    return tuple((f"web{i}", Fraction(1 + (bump if i == 1 else 0))) for i in range(1, n + 1))


def spec_for(n: int, bits: int, mode: str = "steer", key: str = "mask") -> Spec:
    return parse_spec(
        {
            "cluster": "grid",
            "vips": [VIP],
            "uplink": "u0",
            "mode": mode,
            "partition": {"key": key, "bits": bits},
            "members": [
                {"name": f"web{i}", "port": f"p{i}", "address": f"10.{i // 250}.{i % 250}.2"}
                for i in range(1, n + 1)
            ],
        }
    )


def fake_wiring(n: int) -> Wiring:
    return Wiring(
        ifindex={"u0": 2, **{f"p{i}": 2 + 2 * i for i in range(1, n + 1)}},
        macs={f"web{i}": f"02:00:00:00:{i:02x}:02" for i in range(1, n + 1)},
    )


def observed_for(spec: Spec, n: int) -> Observed:
    """The names a live table already holds (a swap, not a first install)."""
    table = build_table(spec, Layout.initial(spec.partition.bits, weights(n)), fake_wiring(n), 1)
    return Observed(
        sets=frozenset(s.name for s in table.sets if s.kind == "set"),
        maps=frozenset(s.name for s in table.sets if s.kind == "map"),
        counters=frozenset(table.counters),
        chains=frozenset(c.name for c in table.chains),
        exists=True,
    )


def bench_entries(repeats: int) -> dict[str, Any]:
    """compute + per-port entry lists, 64 members x 65536 buckets; fresh and after a failure."""
    w = weights(64)
    fresh = timed(lambda: shares(compute(16, w)), repeats)
    base = compute(16, w)
    failover = timed(lambda: shares(compute(16, w, down=["web7"], previous=base)), repeats)
    layout = compute(16, w)
    n_entries = sum(len(s.entries) for s in shares(layout))
    return {
        "members": 64,
        "bits": 16,
        "fresh_ms": summary(fresh, 2),
        "failover_ms": summary(failover, 2),
        "entries_total": n_entries,
        "goal_ms": 50,
    }


def bench_grid(members: list[int], bits_list: list[int], repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in members:
        for bits in bits_list:
            spec = spec_for(n, bits)
            wiring = fake_wiring(n)
            observed = observed_for(spec, n)
            previous = compute(bits, weights(n))
            compute_ms: list[float] = []
            render_ms: list[float] = []
            total_ms: list[float] = []
            for r in range(repeats):
                t0 = time.perf_counter()
                layout = compute(bits, weights(n, bump=1 + r % 2), previous=previous)
                t1 = time.perf_counter()
                batch = transaction(build_table(spec, layout, wiring, 2 + r), observed)
                t2 = time.perf_counter()
                assert batch
                compute_ms.append((t1 - t0) * 1000)
                render_ms.append((t2 - t1) * 1000)
                total_ms.append((t2 - t0) * 1000)
            rows.append(
                {
                    "members": n,
                    "bits": bits,
                    "compute_ms": summary(compute_ms, 2),
                    "render_ms": summary(render_ms, 2),
                    "total_ms": summary(total_ms, 2),
                }
            )
    return rows


def run(quick: bool) -> dict[str, Any]:
    if quick:
        members, bits, repeats = [4, 16, 64], [8, 12, 16], 3
    else:
        members, bits, repeats = [4, 8, 16, 32, 64], [8, 10, 12, 14, 16], 5
    return {
        "entries": bench_entries(5 if quick else 11),
        "grid": bench_grid(members, bits, repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(json.dumps(run(args.quick), indent=1))


if __name__ == "__main__":
    main()

"""Run inside the router namespace: N applies back to back with alternating weights.

Usage: python swaploop.py SPEC.json STATE_DIR N   -> prints one JSON line with timings.
"""

from __future__ import annotations

import json
import sys
import time
from fractions import Fraction
from pathlib import Path

from vipctl import controller
from vipctl.core.spec import load_spec


def main() -> None:
    spec_path, state_dir, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    spec = load_spec(spec_path)
    names = [m.name for m in spec.members]
    variants = [
        controller.spec_with_weights(spec, {n: Fraction(1) for n in names}),
        controller.spec_with_weights(
            spec, {n: Fraction(1 + 2 * (i % 2)) for i, n in enumerate(names)}
        ),
    ]
    times = []
    moved = 0
    generation = 0
    for i in range(count):
        started = time.perf_counter()
        result = controller.apply(variants[i % 2], state_dir)
        times.append(time.perf_counter() - started)
        moved += result.moved
        generation = result.generation
    print(
        json.dumps(
            {
                "applies": count,
                "generation": generation,
                "moved": moved,
                "seconds": sum(times),
                "median_ms": 1000 * sorted(times)[len(times) // 2],
            }
        )
    )


if __name__ == "__main__":
    main()

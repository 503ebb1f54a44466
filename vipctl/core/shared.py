"""The desired state shared by every router of a cluster (pure): what `store:` (etcd) holds.

One JSON document per cluster at `{prefix}/{cluster}/desired`:

    {"version": 1, "generation": 7, "source": "rebalance",
     "spec_weights": [["web1", "1"], ...],      the spec's weights it was set over
     "layout": {...}}                            Layout.to_json() with every member up:
                                                 the weights in force and the base table

Every router derives its live table from that base and the members IT sees down
(partition.failover_table), so routers that agree on health agree on the table whatever
order they saw failures in. A change (`rebalance` on any router) is one compare-and-swap of
this document (host/store.py); each router's daemon reads it every `store.poll_ms` and
converges when the generation moved. The base is shared, not only the weights: a router
that missed a change would otherwise re-weight another base and disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from vipctl.core.partition import Layout, Weights
from vipctl.core.reconcile import Intent
from vipctl.errors import SpecError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

VERSION = 1
SOURCES = ("rebalance", "layout", "retune")


@dataclass(frozen=True)
class Shared:
    generation: int
    source: str
    spec_weights: Weights
    layout: Layout  # every member up: table == base, the weights in force

    def to_text(self) -> str:
        data = {
            "version": VERSION,
            "generation": self.generation,
            "source": self.source,
            "spec_weights": [[n, str(w)] for n, w in self.spec_weights],
            "layout": self.layout.to_json(),
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def intent(self) -> Intent:
        """What the local state records of it (its generation included)."""
        src = self.source if self.source in ("rebalance", "layout") else "rebalance"
        return Intent(self.layout.weights, self.spec_weights, src, self.generation)

    def holds(self, spec_weights: Weights) -> bool:
        return self.spec_weights == spec_weights

    def layout_for(self, down: tuple[str, ...] | frozenset[str] | set[str]) -> Layout:
        return Layout.of(self.layout.bits, self.layout.weights, self.layout.base, down)


def parse(text: str, source: str, spec: Spec) -> Shared:
    """The shared document, checked against `spec` as strictly as a layout file
    (SpecError: a document that does not fit is never installed)."""
    from vipctl.core import layoutfile
    from vipctl.core.scalars import Refused
    from vipctl.core.spec import strict_json

    def bad(*problems: str) -> SpecError:
        return SpecError(source, list(problems))

    try:
        data = strict_json(text)
    except (Refused, ValueError) as exc:
        raise bad(f"desired: not JSON ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise bad("desired: not a JSON object")
    problems: list[str] = []
    if type(data.get("version")) is not int or data.get("version") != VERSION:
        problems.append(f"version: {data.get('version')!r} is not {VERSION}")
    generation = data.get("generation")
    if type(generation) is not int or generation < 1:
        problems.append("generation: must be a positive integer")
    if data.get("source") not in SOURCES:
        problems.append(f"source: must be one of {', '.join(SOURCES)}")
    raw = data.get("layout")
    if not isinstance(raw, dict):
        problems.append("layout: missing or not an object")
    if problems:
        raise bad(*problems)
    spec_weights = _weights(data.get("spec_weights"), bad)
    assert isinstance(raw, dict)
    layout = layoutfile.check_layout(raw, spec, bad)
    if layout.down:
        raise bad("layout.down: the shared layout has every member up")
    assert isinstance(generation, int)
    return Shared(generation, str(data["source"]), spec_weights, layout)


def _weights(raw: Any, bad: Any) -> Weights:
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(type(x) is str for x in p) for p in raw
    ):
        raise bad("spec_weights: a list of [member, weight] pairs of strings")
    try:
        return tuple((n, Fraction(w)) for n, w in raw if len(w) <= 64)
    except (ValueError, ZeroDivisionError):
        raise bad("spec_weights: a weight is not an exact fraction") from None

"""The layout file (pure): what `vipctl layout export` prints and `apply --layout` reads.

A second or rebuilt router takes its peer's exact table: the base table (every member
up), the weights and the set of members down, from which the live table follows
(partition.failover_table). The file also carries the key, bits, seed and the fingerprint
of that table, so a file that does not fit the spec, or that was edited, is refused
before anything changes (SpecError: exit 78).
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from vipctl.core.partition import Layout, fingerprint
from vipctl.errors import SpecError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

VERSION = 1


def export(spec: Spec, layout: Layout) -> dict[str, Any]:
    p = spec.partition
    return {
        "version": VERSION,
        "cluster": spec.cluster,
        "key": p.key,
        "bits": p.bits,
        "seed": p.seed,
        "fingerprint": fingerprint(layout.table, p.key, p.bits, p.seed),
        "layout": layout.to_json(),
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def parse(text: str, source: str, spec: Spec) -> Layout:
    """The layout in `text`, checked against `spec`; SpecError (one line per problem)."""

    def bad(*problems: str) -> SpecError:
        return SpecError(source, list(problems))

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("not a layout file (a JSON object from `vipctl layout export`)")
    problems: list[str] = []
    if data.get("version") != VERSION:
        problems.append(f"version: {data.get('version')!r} is not {VERSION}")
    p = spec.partition
    for name, want in (
        ("cluster", spec.cluster),
        ("key", p.key),
        ("bits", p.bits),
        ("seed", p.seed if p.key == "hash" else data.get("seed")),
    ):
        if data.get(name) != want:
            problems.append(f"{name}: {data.get(name)!r} differs from the spec's {want!r}")
    if problems:
        raise bad(*problems)
    try:
        layout = Layout.from_json(data["layout"])
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise bad(f"layout: malformed ({exc})") from None
    names = [n for n, _ in layout.weights]
    if names != list(spec.member_names):
        raise bad(
            f"layout.members: {', '.join(names)} are not the spec's members in its order "
            f"({', '.join(spec.member_names)})"
        )
    if not any(w > 0 for _, w in layout.weights):
        raise bad("layout.weights: at least one member needs a weight > 0")
    if layout.bits != p.bits:
        raise bad(f"layout.bits: {layout.bits} differs from the spec's {p.bits}")
    if not layout.canonical():
        raise bad("layout.table: does not follow from layout.base and layout.down")
    got = fingerprint(layout.table, p.key, p.bits, p.seed)
    if data.get("fingerprint") != got:
        raise bad(f"fingerprint: {data.get('fingerprint')!r} is not the table's ({got})")
    return layout


def weights_of(layout: Layout) -> dict[str, Fraction]:
    return dict(layout.weights)

"""The layout file (pure): what `vipctl layout export` prints and `apply --layout` reads.

A second or rebuilt router takes its peer's exact table: the base table (every member
up), the weights and the set of members down, from which the live table follows
(partition.failover_table). The file also carries the key, bits, seed and the fingerprint
of that table, so a file that does not fit the spec, or that was edited, is refused
before anything changes (SpecError: exit 78).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vipctl.core.partition import Layout, fingerprint
from vipctl.core.plan import MAX_WEIGHT
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


# A layout of 2**16 buckets exports to ~1.3 MB at worst (every bucket its own run, in the
# base and the table); a file larger than this is not one vipctl wrote.
MAX_LAYOUT_BYTES = 4 << 20
MAX_WEIGHT_CHARS = 64  # "1/3", "1000000": exact fractions in text, never long


def read(path: Path, spec: Spec) -> Layout:
    """The layout file at `path`, read as strictly as a spec (a regular UTF-8 file of
    bounded size, read once: a FIFO or a device is refused, never waited on) and checked
    against `spec` (SpecError, one `field: message` line per problem)."""
    from vipctl.core.spec import read_spec_file

    return parse(read_spec_file(path, MAX_LAYOUT_BYTES, "layout"), str(path), spec)


def parse(text: str, source: str, spec: Spec) -> Layout:
    """The layout in `text`, checked against `spec`; SpecError (one line per problem).

    Nothing in the file is trusted because it parses: every bucket of the base table is
    owned by a member of the spec, in the counts its weights give (floor or ceiling of
    each quota), the table follows from the base and the members down, and the fingerprint
    is recomputed and compared. (The fingerprint alone proves nothing: anyone can
    recompute it for a table that drops every packet.)"""
    from vipctl.core.scalars import Refused
    from vipctl.core.spec import strict_json

    def bad(*problems: str) -> SpecError:
        return SpecError(source, list(problems))

    try:
        data = strict_json(text)
    except Refused as exc:
        raise bad(f"layout: {exc}") from None
    except ValueError as exc:
        raise bad(f"layout: not JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise bad("layout: not a layout file (a JSON object from `vipctl layout export`)")
    problems = _header_problems(data, spec)
    if problems:
        raise bad(*problems)
    raw = data.get("layout")
    if not isinstance(raw, dict):
        raise bad("layout: missing or not an object")
    layout = check_layout(raw, spec, bad)
    p = spec.partition
    got = fingerprint(layout.table, p.key, p.bits, p.seed)
    if data.get("fingerprint") != got:
        shown = str(data.get("fingerprint"))[:40]
        raise bad(f"fingerprint: {shown!r} is not the table's ({got})")
    return layout


def check_layout(raw: dict[str, Any], spec: Spec, bad: Callable[..., SpecError]) -> Layout:
    """`layout` of a layout file (or of the shared desired state), checked against `spec`:
    JSON types first, then every bucket owned, counts that fit the weights, the table
    following from the base and the members down."""
    problems = _shape_problems(raw)
    if problems:
        raise bad(*problems)
    try:
        layout = Layout.from_json(raw)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise bad(f"layout: malformed ({exc})") from None
    problems = _content_problems(layout, spec)
    if problems:
        raise bad(*problems)
    return layout


def _same(value: object, want: object) -> bool:
    """Equal and of the same JSON type (`true` is not 1, `1.0` is not 1)."""
    return type(value) is type(want) and value == want


def _header_problems(data: dict[str, Any], spec: Spec) -> list[str]:
    known = {"version", "cluster", "key", "bits", "seed", "fingerprint", "layout"}
    problems = [f"{_name(k)}: unknown field" for k in data if k not in known]
    if not _same(data.get("version"), VERSION):
        problems.append(f"version: {_shown(data.get('version'))} is not {VERSION}")
    p = spec.partition
    for name, want in (("cluster", spec.cluster), ("key", p.key), ("bits", p.bits)):
        if not _same(data.get(name), want):
            problems.append(f"{name}: {_shown(data.get(name))} differs from the spec's {want!r}")
    seed = data.get("seed")
    if p.key == "hash" and not _same(seed, p.seed):
        problems.append(f"seed: {_shown(seed)} differs from the spec's {p.seed!r}")
    elif type(seed) is not int:
        problems.append(f"seed: {_shown(seed)} is not an integer")
    return problems


def _shape_problems(raw: dict[str, Any]) -> list[str]:
    """The JSON types of layout.*, before anything is built from them."""
    known = {"bits", "members", "weights", "base", "down", "table"}
    problems = [f"layout.{_name(k)}: unknown field" for k in raw if k not in known]
    for field in ("members", "weights", "base", "down", "table"):
        value = raw.get(field)
        if not isinstance(value, list):
            problems.append(f"layout.{field}: missing or not a list")
    if problems:
        return problems
    for field in ("members", "down"):
        if not all(type(v) is str for v in raw[field]):
            problems.append(f"layout.{field}: every item must be a member name (a string)")
    weights = raw["weights"]
    if not all(type(w) is str and 0 < len(w) <= MAX_WEIGHT_CHARS for w in weights):
        problems.append(
            f'layout.weights: every weight is an exact fraction in text ("1/3"), at most '
            f"{MAX_WEIGHT_CHARS} characters"
        )
    for field in ("base", "table"):
        runs = raw[field]
        if not all(
            isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r) for r in runs
        ):
            problems.append(f"layout.{field}: every run is [member index, length] (integers)")
    return problems


def _content_problems(layout: Layout, spec: Spec) -> list[str]:
    from vipctl.core.partition import _effective, count

    p = spec.partition
    names = [n for n, _ in layout.weights]
    if names != list(spec.member_names):
        return [
            f"layout.members: {', '.join(names)[:200]} are not the spec's members in its "
            f"order ({', '.join(spec.member_names)})"
        ]
    if layout.bits != p.bits:
        return [f"layout.bits: {layout.bits} differs from the spec's {p.bits}"]
    if any(w > MAX_WEIGHT for _, w in layout.weights):
        return [f"layout.weights: a weight is above {MAX_WEIGHT}"]
    if not any(w > 0 for _, w in layout.weights):
        return ["layout.weights: at least one member needs a weight > 0"]
    problems: list[str] = []
    if None in layout.base:
        n = layout.base.count(None)
        problems.append(f"layout.base: {n} buckets have no owner (every bucket needs one)")
    eff = dict(_effective(layout.weights))
    total = sum(eff.values())
    held = count(layout.base)
    for name, w in layout.weights:
        quota = Fraction(layout.buckets) * eff.get(name, Fraction(0)) / total
        lo, hi = quota.numerator // quota.denominator, -(-quota.numerator // quota.denominator)
        if not lo <= held.get(name, 0) <= hi:
            problems.append(
                f"layout.base: {name} owns {held.get(name, 0)} buckets, its weight "
                f"{float(w):g} gives {lo if lo == hi else f'{lo} or {hi}'} of {layout.buckets}"
            )
    if not layout.canonical():
        problems.append("layout.table: does not follow from layout.base and layout.down")
    return problems


def _name(key: object) -> str:
    text = str(key)
    return text[:40] if text.isidentifier() else repr(text[:40])


def _shown(value: object) -> str:
    text = json.dumps(value) if value is not None else "missing"
    return text if len(text) <= 40 else text[:40] + "..."


def weights_of(layout: Layout) -> dict[str, Fraction]:
    return dict(layout.weights)

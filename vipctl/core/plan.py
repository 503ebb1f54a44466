"""Planning (pure): spec + overrides + what was live -> the layout to install, and reports."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from vipctl.core.partition import Layout, Weights, compute, count, moved, shares
from vipctl.core.scalars import MAX_NUMBER_CHARS
from vipctl.errors import UsageError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

# a plain decimal, as in the spec: ASCII digits, no sign, no underscores, a short exponent
# (Fraction("1e-99999999") would compute a 10**99999999 denominator)
_WEIGHT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
# the spec's limit (core/spec.py MAX_WEIGHT), here so that planning needs no pydantic
MAX_WEIGHT = 1_000_000


def parse_weights(text: str, spec: Spec) -> dict[str, Fraction]:
    """`NAME=W,...` -> exact weights; names must be members of the spec, each given once,
    with the range the spec allows (0..MAX_WEIGHT), so plan, rebalance and the spec the
    state records agree."""
    out: dict[str, Fraction] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--weights: '{item}' is not NAME=WEIGHT")
        name, raw = name.strip(), raw.strip()
        if name not in spec.member_names:
            raise UsageError(f"--weights: '{name}' is not a member of cluster {spec.cluster}")
        if name in out:
            raise UsageError(f"--weights: {name} is given twice")
        out[name] = _weight(name, raw)
    if not out:
        raise UsageError("--weights: give at least one NAME=WEIGHT")
    return out


def _weight(name: str, raw: str) -> Fraction:
    if len(raw) > MAX_NUMBER_CHARS:  # Fraction() of 4300+ digits raises ValueError
        raise UsageError(
            f"--weights: the weight of {name} is {len(raw)} characters long, too long "
            f"(at most {MAX_NUMBER_CHARS})"
        )
    if raw.startswith("-") and _WEIGHT.fullmatch(raw[1:]):
        raise UsageError(f"--weights: weight of {name} must be >= 0")
    if not _WEIGHT.fullmatch(raw):
        if raw.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            raise UsageError(f"--weights: '{raw}' is not a finite number (member {name})")
        raise UsageError(f"--weights: '{raw[:32]}' is not a number (member {name})")
    weight = Fraction(raw)
    if weight > MAX_WEIGHT:
        raise UsageError(f"--weights: weight of {name} must be at most {MAX_WEIGHT}")
    if weight and not float(weight):
        # the state records a float: this one would be 0, a drained member
        raise UsageError(f"--weights: weight of {name} ({raw}) is too small to tell from 0")
    return weight


def parse_names(text: str, spec: Spec, option: str = "--down") -> set[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    for name in sorted(names):
        if name not in spec.member_names:
            raise UsageError(f"{option}: '{name}' is not a member of cluster {spec.cluster}")
    return names


def spec_weights(spec: Spec, overrides: Mapping[str, Fraction] | None = None) -> Weights:
    overrides = overrides or {}
    weights = tuple((m.name, overrides.get(m.name, m.exact_weight)) for m in spec.members)
    if not any(w > 0 for _, w in weights):
        raise UsageError("--weights: at least one member needs a weight > 0")
    return weights


def desired(
    spec: Spec,
    previous: Layout | None,
    *,
    weights: Mapping[str, Fraction] | None = None,
    down: Iterable[str] | None = None,
) -> Layout:
    """The layout to install. `down` None keeps the previous health (members down stay down)."""
    if down is None:
        down = previous.down if previous is not None else ()
    return compute(spec.partition.bits, spec_weights(spec, weights), down, previous)


@dataclass(frozen=True)
class Change:
    before: Layout | None
    after: Layout

    @property
    def moved(self) -> list[int]:
        if self.before is None or self.before.bits != self.after.bits:
            return []
        return moved(self.before.table, self.after.table)

    @property
    def lower_bound(self) -> int:
        """sum(max(0, old - new)) over members: no assignment can move fewer buckets."""
        if self.before is None or self.before.bits != self.after.bits:
            return 0
        old, new = count(self.before.table), count(self.after.table)
        return sum(max(0, c - new.get(n, 0)) for n, c in old.items())


def fmt_weight(w: Fraction | float) -> str:
    """A weight for a person: `1`, `0.5`."""
    w = Fraction(w)
    return str(w.numerator) if w.denominator == 1 else f"{float(w):g}"


def weight_number(w: Fraction) -> int | float:
    """A weight for JSON: an int when whole (`1`, not `"1"` or `1.0`), else a float."""
    return w.numerator if w.denominator == 1 else float(w)


def report(spec: Spec, change: Change) -> dict[str, Any]:
    """The plan as data (`vipctl plan --json`)."""
    layout = change.after
    moved_buckets = change.moved
    moved_from: dict[str, int] = {}
    moved_to: dict[str, int] = {}
    if change.before is not None and moved_buckets:
        for b in moved_buckets:
            src, dst = change.before.table[b], layout.table[b]
            if src is not None:
                moved_from[src] = moved_from.get(src, 0) + 1
            if dst is not None:
                moved_to[dst] = moved_to.get(dst, 0) + 1
    members = []
    for share in shares(layout):
        m = spec.member(share.name)
        members.append(
            {
                "name": share.name,
                "port": m.port,
                "address": str(m.address),
                "weight": weight_number(share.weight),
                "up": share.up,
                "buckets": share.buckets,
                "share": round(share.share, 6),
                "target": round(share.target, 6),
                "moved_in": moved_to.get(share.name, 0),
                "moved_out": moved_from.get(share.name, 0),
                "entries": [{"value": e.value, "mask": e.mask} for e in share.entries],
            }
        )
    return {
        "cluster": spec.cluster,
        "mode": spec.mode,
        "key": spec.partition.key,
        "bits": spec.partition.bits,
        "buckets": layout.buckets,
        "down": list(layout.down),
        "members": members,
        "moved": len(moved_buckets),
        "lower_bound": change.lower_bound,
        "compared_with": "live" if change.before is not None else None,
    }


def render_report(data: Mapping[str, Any]) -> str:
    """The plan for a person."""
    lines = [
        f"cluster {data['cluster']}: mode {data['mode']}, key {data['key']}, "
        f"{data['buckets']} buckets ({data['bits']} bits)"
    ]
    header = ("member", "port", "weight", "up", "buckets", "share", "target", "entries", "moved")
    rows = [header]
    for m in data["members"]:
        mv = f"+{m['moved_in']}/-{m['moved_out']}" if (m["moved_in"] or m["moved_out"]) else "0"
        rows.append(
            (
                m["name"],
                m["port"],
                fmt_weight(m["weight"]),
                "yes" if m["up"] else "DOWN",
                str(m["buckets"]),
                f"{100 * m['share']:.2f}%",
                f"{100 * m['target']:.2f}%",
                str(len(m["entries"])),
                mv,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if data["compared_with"] is None:
        lines.append("nothing live to compare with: every bucket is new")
    else:
        lines.append(
            f"buckets moved compared with live: {data['moved']} (lower bound {data['lower_bound']})"
        )
    for m in data["members"]:
        if m["entries"]:
            masks = " ".join(f"0x{e['value']:x}/0x{e['mask']:x}" for e in m["entries"][:8])
            more = f" ... (+{len(m['entries']) - 8})" if len(m["entries"]) > 8 else ""
            lines.append(f"  {m['port']}: {masks}{more}")
    return "\n".join(lines)

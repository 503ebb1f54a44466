"""Re-tuning from measured load (pure): move the fewest buckets that bring every member's
measured load within a tolerance of its weighted share.

Source masks balance sources, not load: one NAT gateway or crawler makes its bucket many
times heavier than the rest. Given the load each bucket carried over a measurement window
(packets or bytes), `solve` returns a new table in which every member that may own buckets
(up, weight > 0) carries at most `tolerance` times its weighted share of the measured
total, moving as few buckets as it can and, among equally many, the least traffic.

The problem is bin packing with a starting assignment (NP-hard in general), so `solve` is
a heuristic: per overloaded member, one bucket when one fits the excess (the lightest that
does), else the heaviest that fits somewhere, repeatedly; if that gets stuck, a re-pack of
every bucket heaviest first that keeps each bucket where it still fits; then every move
that is not needed any more is undone. `exact` is the exhaustive search the unit tests
hold it to on small instances (at most 1.5 times the exact number of moves).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from vipctl.core.partition import Owner, Table, Weights, _effective

EPS = 1e-9
LOOKAHEAD = 24  # first moves tried per overloaded member and receiver (heaviest buckets)
PAIRS = 4  # heaviest buckets per member tried in pairs of first moves
PAIRS_MAX = 40  # first moves (heaviest) combined in pairs
PAIRS_MAX_BUCKETS = 4096  # pairs of first moves only up to this many buckets
EXACT_SPACE = 200_000  # tables the exhaustive search may try (tiny, coarse instances)


@dataclass(frozen=True)
class Retune:
    table: Table  # the table after re-tuning (the input table when nothing moves)
    moved: tuple[int, ...]  # buckets that change owner
    before: float  # imbalance before: max over members of load / weighted share
    after: float
    moved_load: float  # fraction of the measured traffic carried by the moved buckets
    total: float  # measured traffic (packets or bytes)
    reachable: bool
    reason: str = ""  # why the tolerance is out of reach, and what would help
    targets: dict[str, float] = field(default_factory=dict)  # share of the traffic, 0..1
    load_before: dict[str, float] = field(default_factory=dict)  # share of the traffic
    load_after: dict[str, float] = field(default_factory=dict)


def targets(weights: Weights, down: Sequence[str] = ()) -> dict[str, float]:
    """Each member's weighted share (0..1) among the members that may own buckets."""
    up = tuple((n, w) for n, w in weights if n not in down)
    eff = dict(_effective(up)) if up else {}
    wsum = sum(eff.values(), Fraction(0))
    return {n: float(eff[n] / wsum) if n in eff and wsum else 0.0 for n, _ in weights}


def member_loads(table: Table, load: Sequence[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for owner, x in zip(table, load, strict=True):
        if owner is not None:
            out[owner] = out.get(owner, 0.0) + x
    return out


def imbalance(table: Table, load: Sequence[float], target: dict[str, float]) -> float:
    """max over members of (its share of the load) / (its weighted share); 1.0 with no
    load; inf when a member with no share carries load."""
    total = float(sum(load))
    if total <= 0:
        return 1.0
    worst = 0.0
    for name, x in member_loads(table, load).items():
        t = target.get(name, 0.0)
        if x <= EPS:
            continue
        worst = max(worst, x / total / t if t > 0 else float("inf"))
    return worst


def feasible(table: Table, load: Sequence[float], caps: dict[str, float]) -> bool:
    loads = member_loads(table, load)
    return all(x <= caps.get(n, 0.0) + EPS for n, x in loads.items() if x > EPS)


def solve(
    table: Table,
    load: Sequence[float],
    weights: Weights,
    tolerance: float,
    *,
    down: Sequence[str] = (),
    aim: float | None = None,
    max_moves: int | None = None,
    exhaustive: int = EXACT_SPACE,
) -> Retune:
    """The re-tuned table. Nothing moves when the imbalance is already within `tolerance`;
    otherwise the moves aim at `aim` (default `tolerance`; a tighter aim leaves room for
    measurement noise, so a second run on the same traffic moves nothing), falling back to
    `tolerance` when the aim is out of reach. `max_moves` caps the buckets moved (the
    daemon's step size): the result may then be only part of the way."""
    if len(load) != len(table):
        raise ValueError(f"{len(load)} loads for {len(table)} buckets")
    target = targets(weights, down)
    total = float(sum(load))
    before = imbalance(table, load, target)

    def result(new: Table, reachable: bool, reason: str = "") -> Retune:
        moved = tuple(b for b, (o, n) in enumerate(zip(table, new, strict=True)) if o != n)
        share = (lambda d: {k: v / total for k, v in d.items()}) if total > 0 else dict
        return Retune(
            table=new,
            moved=moved,
            before=before,
            after=imbalance(new, load, target),
            moved_load=sum(load[b] for b in moved) / total if total > 0 else 0.0,
            total=total,
            reachable=reachable,
            reason=reason,
            targets=target,
            load_before=share(member_loads(table, load)),
            load_after=share(member_loads(new, load)),
        )

    if total <= 0 or before <= tolerance + EPS:
        return result(table, True)
    eligible = [n for n, t in target.items() if t > 0]
    caps_t = {n: tolerance * target[n] * total for n in eligible}
    heaviest = max(range(len(load)), key=lambda b: load[b])
    if load[heaviest] > max(caps_t.values()) + EPS:
        return result(
            table,
            False,
            f"bucket {heaviest} alone carries {100 * load[heaviest] / total:.1f}% of the "
            f"traffic, more than {tolerance:g} times the largest member share "
            f"({100 * max(target.values()):.1f}%): no table reaches the tolerance. More "
            "partition bits split a bucket of many sources (one source address is never "
            "split); the hash key spreads neighbouring heavy sources over many buckets; "
            "or raise --tolerance.",
        )
    for goal in dict.fromkeys((aim if aim is not None else tolerance, tolerance)):
        caps = {n: goal * target[n] * total for n in eligible}
        new = _best(table, load, caps, exhaustive)
        if new is not None:
            if max_moves is not None:
                new = _first_moves(table, new, load, caps, max_moves)
            return result(new, True)
    return result(
        table,
        False,
        f"no table found with every member within {tolerance:g} of its share (the "
        f"buckets are too coarse for the members: {len(eligible)} members, "
        f"{sum(1 for x in load if x > 0)} buckets with traffic). More partition bits make "
        "finer buckets; or raise --tolerance.",
    )


Sorted = dict[str, list[tuple[float, int]]]  # member -> its buckets with traffic, by load


def _by_load(table: Table, load: Sequence[float], caps: dict[str, float]) -> Sorted:
    out: Sorted = {n: [] for n in caps}
    for b, o in enumerate(table):
        if o is not None and load[b] > 0:
            out.setdefault(o, []).append((load[b], b))
    for v in out.values():
        v.sort()
    return out


def _best(
    table: Table, load: Sequence[float], caps: dict[str, float], exhaustive: int = EXACT_SPACE
) -> Table | None:
    """The fewest moves (then the least traffic moved) found by: the greedy from the table
    as it is; the greedy after one or two first moves of heavy buckets (what lets a move
    overfill a member that then sheds lighter ones, or swap two heavy buckets); the
    re-pack. On an instance of at most `exhaustive` tables, the exhaustive search then
    looks for fewer moves."""
    found: list[Table] = []
    index = _by_load(table, load, caps)

    def run(first: Sequence[tuple[int, str]]) -> None:
        start = list(table)
        moved_index = {n: list(v) for n, v in index.items()}
        for b, r in first:
            o = start[b]
            if o == r:
                return
            if o is not None:
                moved_index[o].remove((load[b], b))
            bisect.insort(moved_index.setdefault(r, []), (load[b], b))
            start[b] = r
        after = _greedy(tuple(start), load, caps, moved_index)
        if after is not None:
            found.append(after)

    run(())
    loads = member_loads(table, load)
    over = {n for n, x in loads.items() if x > caps.get(n, 0.0) + EPS}
    singles: list[tuple[int, str]] = []
    # fine buckets rarely need the look-ahead, and each try copies the index
    lookahead = LOOKAHEAD if len(table) <= PAIRS_MAX_BUCKETS else 3
    pairs: list[tuple[float, int, str]] = []
    for m in sorted(set(caps) | set(loads)):
        tried, last = 0, None
        for x, b in reversed(index.get(m, [])):
            if tried >= (lookahead if m in over else PAIRS):
                break
            if x == last:
                continue  # equal loads give equal searches
            last, tried = x, tried + 1
            for r in sorted(caps):
                if r == m:
                    continue
                if m in over:
                    singles.append((b, r))
                if tried <= PAIRS:
                    pairs.append((-x, b, r))
    for one in singles:
        run((one,))
    fewest = min((_moves(table, t) for t in found), default=len(table))
    if fewest > 2 and len(table) <= PAIRS_MAX_BUCKETS:
        heavy = [(b, r) for _, b, r in sorted(pairs)[:PAIRS_MAX]]
        for i, one in enumerate(heavy):
            for two in heavy[i + 1 :]:
                if two[0] != one[0]:
                    run((one, two))
    packed = _repack(table, load, caps)
    if packed is not None:
        found.append(packed)
    tidy = [_undo_needless(table, t, load, caps) for t in found]

    def cost(t: Table) -> tuple[int, float]:
        moved = [b for b in range(len(table)) if table[b] != t[b]]
        return len(moved), sum(load[b] for b in moved)

    best = min(tidy, key=cost) if tidy else None
    busy = [b for b in range(len(table)) if load[b] > 0]
    if len(caps) ** len(busy) <= exhaustive:
        limit = None if best is None else cost(best)[0] - 1
        better = exact_table(table, load, caps, limit)
        if better is not None:
            return better
    return best


def _moves(table: Table, new: Table) -> int:
    return sum(1 for o, n in zip(table, new, strict=True) if o != n)


def _greedy(
    table: Table, load: Sequence[float], caps: dict[str, float], index: Sorted
) -> Table | None:
    """Per step, the member furthest over its cap sheds one bucket: the lightest that
    removes its whole excess and fits some member, else the heaviest that fits one; it
    goes to the member with the least room that takes it. `index` is consumed."""
    owners: list[Owner] = list(table)
    loads = {n: 0.0 for n in caps}
    for n, x in member_loads(table, load).items():
        loads[n] = x
    for _ in range(2 * len(table)):
        over = [n for n, x in loads.items() if x > caps.get(n, 0.0) + EPS]
        if not over:
            return tuple(owners)
        m = max(over, key=lambda n: (loads[n] - caps.get(n, 0.0), n))
        excess = loads[m] - caps.get(m, 0.0)
        room = {r: caps[r] - loads[r] for r in caps if r != m}
        if not room:
            return None
        mine = index.get(m, [])
        best_room = max(room.values())
        i = bisect.bisect_left(mine, (excess - EPS, -1))
        if i < len(mine) and mine[i][0] <= best_room + EPS:
            pick = i  # the lightest bucket that removes the whole excess
        else:
            pick = bisect.bisect_right(mine, (best_room + EPS, len(table))) - 1
            if pick < 0:
                return None  # the heaviest that fits somewhere: fewest moves
        x, b = mine.pop(pick)
        takers = [r for r, left in room.items() if left + EPS >= x]
        r = min(takers, key=lambda r: (room[r], r))
        owners[b] = r
        bisect.insort(index.setdefault(r, []), (x, b))
        loads[m] -= x
        loads[r] += x
    return None


def _repack(table: Table, load: Sequence[float], caps: dict[str, float]) -> Table | None:
    """Every bucket heaviest first: stays with its owner when it still fits there, else
    goes to the member with the most room left."""
    owners: list[Owner] = list(table)
    used = {n: 0.0 for n in caps}
    for b in sorted(range(len(table)), key=lambda b: (-load[b], b)):
        if load[b] <= 0:
            if owners[b] not in caps:
                owners[b] = max(caps, key=lambda n: caps[n] - used[n])
            continue
        o = owners[b]
        if o in caps and used[o] + load[b] <= caps[o] + EPS:
            used[o] += load[b]
            continue
        r = max(caps, key=lambda n: (caps[n] - used[n], n))
        if used[r] + load[b] > caps[r] + EPS:
            return None
        owners[b] = r
        used[r] += load[b]
    return tuple(owners)


def _undo_needless(
    table: Table, new: Table, load: Sequence[float], caps: dict[str, float]
) -> Table:
    """Put back every moved bucket whose return keeps the table within the caps (heaviest
    first: returning traffic is what moving least traffic means)."""
    out = list(new)
    loads = member_loads(new, load)
    for b in sorted((b for b in range(len(table)) if table[b] != new[b]), key=lambda b: -load[b]):
        home, now = table[b], out[b]
        if home not in caps:
            continue
        if loads.get(home, 0.0) + load[b] <= caps[home] + EPS:
            out[b] = home
            loads[home] = loads.get(home, 0.0) + load[b]
            if now is not None:
                loads[now] -= load[b]
    return tuple(out)


def _first_moves(
    table: Table, new: Table, load: Sequence[float], caps: dict[str, float], limit: int
) -> Table:
    """At most `limit` of the moves, heaviest first (the largest step toward balance)."""
    moved = sorted((b for b in range(len(table)) if table[b] != new[b]), key=lambda b: -load[b])
    if len(moved) <= limit:
        return new
    out = list(table)
    for b in moved[:limit]:
        out[b] = new[b]
    return tuple(out)


def exact(
    table: Table, load: Sequence[float], caps: dict[str, float], limit: int | None = None
) -> int | None:
    """The fewest moves that bring every member within its cap, by exhaustive search
    (None: impossible). For tests and tiny instances: up to members ** buckets tables."""
    found = exact_table(table, load, caps, limit)
    return None if found is None else sum(1 for o, n in zip(table, found, strict=True) if o != n)


def exact_table(
    table: Table, load: Sequence[float], caps: dict[str, float], limit: int | None = None
) -> Table | None:
    names = sorted(caps)
    n = len(table)
    for k in range(0, (limit if limit is not None else n) + 1):
        for chosen in itertools.combinations(range(n), k):
            choices = [[m for m in names if m != table[b]] for b in chosen]
            for assign in itertools.product(*choices):
                trial = list(table)
                for b, m in zip(chosen, assign, strict=True):
                    trial[b] = m
                if feasible(tuple(trial), load, caps):
                    return tuple(trial)
    return None


def caps_for(
    weights: Weights, load: Sequence[float], tolerance: float, down: Sequence[str] = ()
) -> dict[str, float]:
    """Each eligible member's cap in load units (what `solve` packs to)."""
    target = targets(weights, down)
    total = float(sum(load))
    return {n: tolerance * t * total for n, t in target.items() if t > 0}

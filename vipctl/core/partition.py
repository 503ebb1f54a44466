"""The partition engine (pure): 2**bits buckets -> members.

Invariants, all exact:
- balance: every up member owns floor or ceil of 2**bits * w / sum(w over up members);
- least movement: a failure from all-up moves only the failed member's buckets; any
  recovery restores the exact table of the set of members still down; a weight change moves
  sum(max(0, old - new)) buckets and picks the new counts that make that sum smallest;
- determinism: only spec order, names and bucket numbers break ties.

A Layout is the whole state: `base` is the table with every member up (weights only) and
`down` the SET of members down; the live table is `failover_table(base, weights, down)`, a
pure function of the two, so routers that share a base agree whatever order they saw
failures in (see failover_table for what holds with several members down).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from ipaddress import IPv4Address, IPv6Address, ip_address

from vipctl.core.jhash import nft_jhash

Owner = str | None
Table = tuple[Owner, ...]
Weights = tuple[tuple[str, Fraction], ...]  # ordered (spec order), names unique


# --------------------------------------------------------------------------------------
# Counting and moving buckets
# --------------------------------------------------------------------------------------


def _effective(weights: Weights) -> Weights:
    """Members that may own buckets. If every candidate has weight 0 (all drained), they
    share equally: traffic must reach someone while at least one member is up."""
    positive = tuple((n, w) for n, w in weights if w > 0)
    if positive:
        return positive
    return tuple((n, Fraction(1)) for n, _ in weights)


def apportion(total: int, weights: Weights, current: Mapping[str, int]) -> dict[str, int]:
    """Bucket counts: floor or ceil of each quota, summing to `total`.

    The extra buckets go first to members that already hold at least the ceiling (each
    such choice saves one move), then by largest remainder, then by spec order.
    """
    eff = _effective(weights)
    if not eff:
        return {}
    wsum = sum(w for _, w in eff)
    counts: dict[str, int] = {}
    extra: list[tuple[int, Fraction, int, str]] = []
    for index, (name, w) in enumerate(eff):
        quota = Fraction(total) * w / wsum
        floor = quota.numerator // quota.denominator
        counts[name] = floor
        remainder = quota - floor
        if remainder:
            keeps = 0 if current.get(name, 0) > floor else 1
            extra.append((keeps, -remainder, index, name))
    left = total - sum(counts.values())
    extra.sort()
    for _, _, _, name in extra[:left]:
        counts[name] += 1
    return counts


def fresh_table(buckets: int, weights: Weights) -> Table:
    """A table from nothing: contiguous runs in spec order (short mask lists per port)."""
    counts = apportion(buckets, weights, {})
    table: list[Owner] = []
    for name, _ in weights:
        table.extend([name] * counts.get(name, 0))
    table.extend([None] * (buckets - len(table)))
    return tuple(table)


def rebalance(table: Table, weights: Weights) -> Table:
    """Move the fewest buckets so that `weights` (the members allowed to own buckets) are
    balanced. Buckets of members not in `weights` are all released."""
    counts = apportion(len(table), weights, count(table))
    if not counts:
        return tuple(None for _ in table)
    held: dict[str, list[int]] = {name: [] for name in counts}
    free: list[int] = []
    for bucket, owner in enumerate(table):
        if owner is not None and owner in held:
            held[owner].append(bucket)
        else:
            free.append(bucket)
    for name, buckets in held.items():
        surplus = len(buckets) - counts[name]
        if surplus > 0:
            # give up the highest-numbered buckets: keeps the low runs (and mask lists) intact
            free.extend(buckets[-surplus:])
    free.sort()
    new = list(table)
    for bucket in free:
        new[bucket] = None
    cursor = 0
    for name, _ in weights:
        need = counts.get(name, 0) - min(len(held.get(name, ())), counts.get(name, 0))
        for bucket in free[cursor : cursor + need]:
            new[bucket] = name
        cursor += need
    return tuple(new)


def count(table: Table) -> dict[str, int]:
    counts = Counter(table)
    counts.pop(None, None)
    return {str(k): v for k, v in counts.items()}


def moved(old: Table, new: Table) -> list[int]:
    return [b for b, (o, n) in enumerate(zip(old, new, strict=True)) if o != n]


def fingerprint(table: Table, key: str, bits: int, seed: int) -> str:
    """A short hash of what decides every packet: the owner of each bucket, the key, the
    bits and (with the hash key) the seed. Two routers with the same fingerprint send every
    source to the same member (docs/operations.md). The mask key ignores the seed, so it is left
    out there: two mask routers that differ only in an unused seed still agree.

    The encoding is canonical JSON (sorted keys, no spaces, owners in bucket order,
    null for an unowned bucket), so another implementation can recompute it."""
    if len(table) != 1 << bits:
        raise ValueError(f"table has {len(table)} buckets, {1 << bits} expected for {bits} bits")
    canonical = {
        "bits": bits,
        "key": key,
        "owners": list(table),
        "seed": seed if key == "hash" else None,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    import hashlib  # ~2 ms to import: only the commands that show a fingerprint

    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# The layout: base table + the SET of members down -> the live table
# --------------------------------------------------------------------------------------


def failover_table(base: Table, weights: Weights, down: Iterable[str]) -> Table:
    """The live table: a pure function of the base table, the weights and the SET of
    members down (never of the order failures were seen in), so two routers that share a
    base agree whatever they saw.

    What holds, for every set D of members down (tests/unit/test_partition.py):
    - balance: every up member owns floor or ceil of its quota among the up members;
    - a bucket whose base owner is up stays with it (only buckets of members in D are
      placed elsewhere than in the base), whenever the quotas allow it (no up member
      holds more base buckets than its new quota's ceiling; only tiny quotas break it);
    - hence one failure from all-up moves only the failed member's buckets, recovery of
      every member restores the base exactly, and going back to any set D restores the
      exact table D had;
    - D -> D + {x} moves x's buckets and, when D is not empty, may also re-place buckets
      of members already in D among the up members (never a bucket whose base owner is
      up). That is the price of order independence: no table can be both a function of
      the set and a pure undo of every path of failures."""
    gone = set(down)
    if not gone & {n for n, _ in weights}:
        return base
    return rebalance(base, tuple((n, w) for n, w in weights if n not in gone))


@dataclass(frozen=True)
class Layout:
    """`base` is the table with every member up (weights only, the shared layout two
    routers must agree on); `down` is the set of members down, kept in spec order;
    `table` = failover_table(base, weights, down), except in a state written by an older
    version (stack-based), which is kept as it is until the next change."""

    bits: int
    weights: Weights
    base: Table
    down: tuple[str, ...] = ()
    table: Table = field(default=())

    @property
    def buckets(self) -> int:
        return 1 << self.bits

    @property
    def up(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.weights if n not in self.down)

    def up_weights(self, down: Iterable[str] | None = None) -> Weights:
        gone = set(self.down if down is None else down)
        return tuple((n, w) for n, w in self.weights if n not in gone)

    # -- transitions -----------------------------------------------------------------
    @classmethod
    def initial(cls, bits: int, weights: Weights) -> Layout:
        base = fresh_table(1 << bits, weights)
        return cls(bits=bits, weights=weights, base=base, table=base)

    @classmethod
    def of(cls, bits: int, weights: Weights, base: Table, down: Iterable[str] = ()) -> Layout:
        """The layout of a base and a set of members down (spec order)."""
        gone = set(down)
        canonical = tuple(n for n, _ in weights if n in gone)
        return cls(
            bits=bits,
            weights=weights,
            base=base,
            down=canonical,
            table=failover_table(base, weights, canonical),
        )

    def with_down(self, down: Iterable[str]) -> Layout:
        names = {n for n, _ in self.weights}
        want = {d for d in down if d in names}
        if want == set(self.down):
            return self
        return Layout.of(self.bits, self.weights, self.base, want)

    def fail(self, name: str) -> Layout:
        return self.with_down({*self.down, name})

    def recover(self, name: str) -> Layout:
        return self.with_down(set(self.down) - {name})

    def reweight(self, weights: Weights) -> Layout:
        """New weights: the base moves the fewest buckets (balance over every member);
        the live table follows from the new base and the same set of members down."""
        if weights == self.weights:
            return self
        base = rebalance(self.base, weights)
        return Layout.of(self.bits, weights, base, self.down)

    def canonical(self) -> bool:
        """Is the table the one the base and the set down give (not an older state)?"""
        return self.table == failover_table(self.base, self.weights, self.down)

    # -- (de)serialisation for the state file ----------------------------------------
    def to_json(self) -> dict[str, object]:
        names = [n for n, _ in self.weights]
        index = {n: i for i, n in enumerate(names)}

        def enc(t: Table) -> list[list[int]]:
            # run-length: [[member index or -1, run length], ...] (tables are long runs)
            return [
                [-1 if o is None else index[o], sum(1 for _ in g)] for o, g in itertools.groupby(t)
            ]

        return {
            "bits": self.bits,
            "members": names,
            "weights": [str(w) for _, w in self.weights],
            "base": enc(self.base),
            "down": list(self.down),
            "table": enc(self.table),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Layout:
        """Also reads states of older versions (their failure `stack` is ignored: the
        table they recorded stays live until the next change)."""
        names = [str(n) for n in data["members"]]  # type: ignore[attr-defined]
        if len(set(names)) != len(names):
            raise ValueError("member names repeat")
        weights = tuple(
            (n, Fraction(str(w)))
            for n, w in zip(names, data["weights"], strict=True)  # type: ignore[call-overload]
        )
        if any(w < 0 for _, w in weights):
            raise ValueError("a weight is negative")
        bits = int(data["bits"])  # type: ignore[call-overload]
        if not 1 <= bits <= 16:
            raise ValueError("bits must be 1..16")

        def dec(raw: object) -> Table:
            out: list[Owner] = []
            for i, n in raw:  # type: ignore[attr-defined]
                if not isinstance(i, int) or not isinstance(n, int) or n < 1 or i >= len(names):
                    raise ValueError(f"bad run [{i}, {n}]")
                out.extend([None if i < 0 else names[i]] * n)
            t = tuple(out)
            if len(t) != 1 << bits:
                raise ValueError("table length does not match bits")
            return t

        down = tuple(str(d) for d in data["down"])  # type: ignore[attr-defined]
        if not set(down) <= set(names):
            raise ValueError("a member down is not a member")
        return cls(
            bits=bits,
            weights=weights,
            base=dec(data["base"]),
            down=tuple(n for n in names if n in set(down)),
            table=dec(data["table"]),
        )


def compute(
    bits: int,
    weights: Weights,
    down: Iterable[str] = (),
    previous: Layout | None = None,
) -> Layout:
    """The one entry point: desired weights and health, given what was live before.
    The result depends on the previous layout's base only (and on its table only when
    nothing changes: then it is returned as it is)."""
    if previous is None or previous.bits != bits:
        layout = Layout.initial(bits, weights)
    else:
        layout = previous.reweight(weights)
    return layout.with_down(down)


# --------------------------------------------------------------------------------------
# Buckets of a source address, and the per-port value/mask lists
# --------------------------------------------------------------------------------------


def bucket_of(source: str | IPv4Address | IPv6Address, key: str, bits: int, seed: int) -> int:
    addr = ip_address(source) if isinstance(source, str) else source
    if key == "mask":
        return int(addr) & ((1 << bits) - 1)
    return nft_jhash(addr.packed, 1 << bits, seed)


@dataclass(frozen=True, order=True)
class Entry:
    """Buckets b with (b & mask) == value: one ternary rule (the draft's wildcard mask)."""

    value: int
    mask: int

    def covers(self, bucket: int) -> bool:
        return bucket & self.mask == self.value


def entries(buckets: Iterable[int], bits: int) -> list[Entry]:
    """A short exact cover of `buckets` by disjoint value/mask entries.

    Start from the aligned power-of-two runs (at most 2*bits per contiguous run), then merge
    entries with equal masks whose values differ in one bit, until nothing merges. Exact
    (never covers a bucket outside the set); minimal for aligned runs and their unions.
    """
    full = (1 << bits) - 1
    chosen = sorted(set(buckets))
    found: set[Entry] = set()
    i = 0
    while i < len(chosen):
        start = chosen[i]
        j = i
        while j + 1 < len(chosen) and chosen[j + 1] == chosen[j] + 1:
            j += 1
        end = chosen[j] + 1
        pos = start
        while pos < end:
            size = pos & -pos if pos else 1 << bits
            while size > end - pos:
                size >>= 1
            found.add(Entry(pos, full & ~(size - 1)))
            pos += size
        i = j + 1
    merged = True
    while merged:
        merged = False
        by_mask: dict[int, set[int]] = {}
        for e in found:
            by_mask.setdefault(e.mask, set()).add(e.value)
        for mask, values in sorted(by_mask.items()):
            for bit in range(bits):
                b = 1 << bit
                if not mask & b:
                    continue
                for v in sorted(values):
                    if v & b or (v | b) not in values or v not in values:
                        continue
                    values.discard(v)
                    values.discard(v | b)
                    found.discard(Entry(v, mask))
                    found.discard(Entry(v | b, mask))
                    found.add(Entry(v, mask & ~b))
                    merged = True
            if merged:
                break
    return sorted(found, key=lambda e: (-bin(e.mask).count("0"), e.value))


@dataclass(frozen=True)
class MemberShare:
    name: str
    weight: Fraction
    up: bool
    buckets: int
    share: float
    target: float
    entries: tuple[Entry, ...]


def shares(layout: Layout, with_entries: bool = True) -> list[MemberShare]:
    """Per member: buckets, share, target share over the up members, value/mask list."""
    total = layout.buckets
    counts = count(layout.table)
    up = layout.up_weights()
    eff = dict(_effective(up)) if up else {}
    wsum = sum(eff.values())
    per: dict[str, list[int]] = {}
    if with_entries:
        for b, owner in enumerate(layout.table):
            if owner is not None:
                per.setdefault(owner, []).append(b)
    out = []
    for name, w in layout.weights:
        target = float(eff[name] / wsum) if name in eff and wsum else 0.0
        out.append(
            MemberShare(
                name=name,
                weight=w,
                up=name not in layout.down,
                buckets=counts.get(name, 0),
                share=counts.get(name, 0) / total,
                target=target,
                entries=tuple(entries(per.get(name, ()), layout.bits)) if with_entries else (),
            )
        )
    return out

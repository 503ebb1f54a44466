"""Property tests for the partition engine: balance, least movement and determinism as the
README states them ("How the partition behaves"), exactly."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipctl.core.partition import (
    Layout,
    Weights,
    apportion,
    bucket_of,
    compute,
    count,
    entries,
    moved,
    rebalance,
    shares,
)

NAMES = [f"m{i:02d}" for i in range(40)]


def assert_balanced(layout: Layout) -> None:
    up = layout.up_weights()
    positive = [(n, w) for n, w in up if w > 0]
    pool = positive or [(n, Fraction(1)) for n, _ in up]
    total = sum(w for _, w in pool)
    counts = count(layout.table)
    assert sum(counts.values()) == (layout.buckets if pool else 0)
    for name, w in layout.weights:
        got = counts.get(name, 0)
        if name in layout.down:
            assert got == 0, f"{name} is down but owns {got} buckets"
            continue
        if positive and w == 0:
            assert got == 0, f"{name} has weight 0 but owns {got} buckets"
            continue
        quota = Fraction(layout.buckets) * (w if positive else 1) / total
        assert math.floor(quota) <= got <= math.ceil(quota), (name, got, float(quota))


def only_victim_can_move(layout: Layout, victim: str) -> bool:
    """Whether balance lets the others keep every bucket they hold when `victim` fails.

    With tiny quotas (2**bits * w / W below a few buckets) exact balance can force a bucket
    of a healthy member to move even though the victim's buckets were all handed out; then
    the engine must still move no more than the lower bound.
    """
    counts = count(layout.table)
    pool = [(n, w) for n, w in layout.up_weights((*layout.down, victim)) if w > 0]
    if not pool:
        return True
    total = sum(w for _, w in pool)
    need = 0
    for name, w in pool:
        quota = Fraction(layout.buckets) * w / total
        have = counts.get(name, 0)
        if have > math.ceil(quota):
            return False
        need += max(0, math.floor(quota) - have)
    return need <= counts.get(victim, 0)


def lower_bound(old: tuple[str | None, ...], new: tuple[str | None, ...]) -> int:
    before, after = count(old), count(new)
    return sum(max(0, c - after.get(n, 0)) for n, c in before.items())


weights_st = st.lists(
    st.one_of(st.integers(0, 20), st.sampled_from([0.5, 1.5, 0.1, 33.3])),
    min_size=1,
    max_size=12,
).filter(lambda ws: any(w > 0 for w in ws))


def as_weights(ws: list[float]) -> Weights:
    return tuple((NAMES[i], Fraction(str(w))) for i, w in enumerate(ws))


@settings(max_examples=300, deadline=None)
@given(ws=weights_st, bits=st.integers(1, 10))
def test_fresh_table_is_balanced(ws: list[float], bits: int) -> None:
    assert_balanced(compute(bits, as_weights(ws)))


@settings(max_examples=300, deadline=None)
@given(ws=weights_st, bits=st.integers(1, 10), data=st.data())
def test_one_failure_moves_only_the_failed_members_buckets(
    ws: list[float], bits: int, data: st.DataObject
) -> None:
    weights = as_weights(ws)
    names = [n for n, _ in weights]
    layout = compute(bits, weights)
    victim = data.draw(st.sampled_from(names))
    after = layout.fail(victim)
    assert_balanced(after)
    assert len(moved(layout.table, after.table)) == lower_bound(layout.table, after.table)
    if only_victim_can_move(layout, victim):
        for b in moved(layout.table, after.table):
            assert layout.table[b] == victim, "a bucket of a healthy member moved"
    # and recovery is an exact undo
    assert after.recover(victim).table == layout.table
    assert after.recover(victim) == layout


def base_owners_allow(layout: Layout, down: set[str]) -> bool:
    """Whether balance lets every up member keep its base buckets with `down` down: no up
    member holds more base buckets than the ceiling of its new quota (tiny quotas only)."""
    pool = [(n, w) for n, w in layout.weights if n not in down and w > 0]
    if not pool:
        return True
    total = sum(w for _, w in pool)
    base = count(layout.base)
    over = 0
    for name, w in pool:
        quota = Fraction(layout.buckets) * w / total
        if base.get(name, 0) > math.ceil(quota):
            return False
        over += base.get(name, 0) > math.floor(quota)
    extra = layout.buckets - sum(math.floor(Fraction(layout.buckets) * w / total) for _, w in pool)
    return over <= extra


@settings(max_examples=300, deadline=None)
@given(ws=weights_st, bits=st.integers(1, 10), data=st.data())
def test_several_members_down_what_holds(ws: list[float], bits: int, data: st.DataObject) -> None:
    """With a set D down: balance; every bucket whose base owner is up keeps it (when the
    quotas allow, `base_owners_allow`); D -> D + {x} moves only buckets whose base owner
    is in D + {x}; going back to any earlier set gives its exact table."""
    weights = as_weights(ws)
    names = [n for n, _ in weights]
    layout = compute(bits, weights)
    seen = {(): layout.table}
    for victim in data.draw(st.permutations(names))[: len(names) - 1]:
        after = layout.fail(victim)
        assert_balanced(after)
        gone = set(after.down)
        for b in moved(layout.table, after.table):
            if base_owners_allow(layout, gone):
                assert layout.base[b] in gone, "a bucket whose base owner is up moved"
        if base_owners_allow(layout, gone):
            for b, owner in enumerate(layout.base):
                if owner not in gone and owner is not None:
                    assert after.table[b] == owner
        seen[after.down] = after.table
        layout = after
    for down, table in seen.items():
        assert compute(bits, weights, down, layout).table == table


@settings(max_examples=300, deadline=None)
@given(
    ws=st.lists(st.integers(0, 9), min_size=2, max_size=12).filter(any),
    bits=st.integers(1, 10),
    data=st.data(),
)
def test_the_table_depends_only_on_the_set_of_members_down(
    ws: list[int], bits: int, data: st.DataObject
) -> None:
    """Two routers see random sequences of failures and recoveries, each in its own order,
    ending with the same set down: byte-identical tables (same fingerprint)."""
    from vipctl.core.partition import fingerprint

    weights = as_weights(ws)
    names = [n for n, _ in weights]
    start = compute(bits, weights)
    final = data.draw(st.sets(st.sampled_from(names)))
    tables = []
    for _ in range(2):
        layout = start
        for _ in range(data.draw(st.integers(0, 12))):
            layout = compute(bits, weights, data.draw(st.sets(st.sampled_from(names))), layout)
        layout = compute(bits, weights, final, layout)
        tables.append(layout.table)
        assert layout == Layout.of(bits, weights, start.base, final)
    assert tables[0] == tables[1]
    assert fingerprint(tables[0], "hash", bits, 1) == fingerprint(tables[1], "hash", bits, 1)


@settings(max_examples=300, deadline=None)
@given(ws=weights_st, bits=st.integers(1, 10), data=st.data())
def test_weight_change_moves_exactly_the_lower_bound(
    ws: list[float], bits: int, data: st.DataObject
) -> None:
    weights = as_weights(ws)
    layout = compute(bits, weights)
    for _ in range(4):
        new_ws = data.draw(
            st.lists(st.integers(0, 9), min_size=len(ws), max_size=len(ws)).filter(any)
        )
        new_weights = as_weights(new_ws)
        after = compute(bits, new_weights, (), layout)
        assert_balanced(after)
        assert len(moved(layout.table, after.table)) == lower_bound(layout.table, after.table)
        # the counts chosen are the best possible: nobody keeps fewer than it could
        best = apportion(layout.buckets, new_weights, count(layout.table))
        assert count(after.table) == {n: c for n, c in best.items() if c}
        layout = after


@settings(max_examples=200, deadline=None)
@given(ws=weights_st, bits=st.integers(1, 9), data=st.data())
def test_random_sequences_keep_every_invariant(
    ws: list[float], bits: int, data: st.DataObject
) -> None:
    weights = as_weights(ws)
    names = [n for n, _ in weights]
    layout = compute(bits, weights)
    for _ in range(12):
        op = data.draw(st.sampled_from(["fail", "recover", "reweight"]))
        if op == "fail":
            up = [n for n in names if n not in layout.down]
            if len(up) <= 1:
                continue
            victim = data.draw(st.sampled_from(up))
            after = compute(bits, weights, {*layout.down, victim}, layout)
            if not layout.down and only_victim_can_move(layout, victim):
                for b in moved(layout.table, after.table):
                    assert layout.table[b] == victim
            for b in moved(layout.table, after.table):
                assert layout.base[b] in after.down or not base_owners_allow(
                    layout, set(after.down)
                )
            assert compute(bits, weights, set(layout.down), after).table == layout.table
        elif op == "recover":
            if not layout.down:
                continue
            back = data.draw(st.sampled_from(list(layout.down)))
            after = compute(bits, weights, set(layout.down) - {back}, layout)
        else:
            weights = as_weights(
                data.draw(
                    st.lists(st.integers(0, 9), min_size=len(ws), max_size=len(ws)).filter(any)
                )
            )
            after = compute(bits, weights, set(layout.down), layout)
        assert_balanced(after)
        # determinism: the same inputs give the same table, whatever the set order
        again = compute(bits, weights, sorted(after.down, reverse=True), layout)
        assert again.table == after.table
        layout = after


@settings(max_examples=300, deadline=None)
@given(
    ws=st.lists(st.integers(1, 5), min_size=2, max_size=16),
    bits=st.integers(6, 12),
    data=st.data(),
)
def test_with_realistic_quotas_a_failure_never_moves_a_healthy_bucket(
    ws: list[int], bits: int, data: st.DataObject
) -> None:
    """Every quota >= 4 buckets: the freed buckets always suffice (no balance conflict):
    the first failure moves only the victim's buckets, and with more members down no
    bucket whose base owner is up ever moves."""
    weights = as_weights(ws)
    layout = compute(bits, weights)
    if min(Fraction(1 << bits) * w / sum(ws) for w in ws if w) < 4:
        return
    for i, victim in enumerate(data.draw(st.permutations([n for n, _ in weights]))[: len(ws) - 1]):
        after = layout.fail(victim)
        if i == 0:
            assert {layout.table[b] for b in moved(layout.table, after.table)} <= {victim}
        assert {layout.base[b] for b in moved(layout.table, after.table)} <= set(after.down)
        layout = after


def test_recovery_after_a_chain_of_failures_unwinds_exactly() -> None:
    weights = as_weights([1, 2, 3, 1, 1])
    tables = [compute(8, weights)]
    for victim in ["m02", "m00", "m04"]:
        tables.append(compute(8, weights, (*tables[-1].down, victim), tables[-1]))
    for i in range(len(tables) - 1, 0, -1):
        back = compute(8, weights, tables[i - 1].down, tables[i])
        assert back.table == tables[i - 1].table


def test_zero_weight_drains_and_all_drained_share_equally() -> None:
    weights = as_weights([1, 0, 1])
    layout = compute(4, weights)
    assert count(layout.table) == {"m00": 8, "m02": 8}
    # if the only members up are drained, they still serve (never nobody while one is up)
    only_drained = compute(4, weights, {"m00", "m02"}, layout)
    assert count(only_drained.table) == {"m01": 16}


def test_everyone_down_leaves_no_owner() -> None:
    weights = as_weights([1, 1])
    layout = compute(3, weights, {"m00", "m01"})
    assert layout.table == (None,) * 8
    back = compute(3, weights, (), layout)
    assert back.table == compute(3, weights).table


def test_determinism_does_not_depend_on_hash_seed_or_process() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import json; from fractions import Fraction as F;"
        "from vipctl.core.partition import compute;"
        "w=tuple((f'n{i}',F(i%4+1)) for i in range(9));"
        "l=compute(9,w,{'n3','n7'},compute(9,w));print(json.dumps(l.to_json()))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "1", "4242")
    }
    assert len(outs) == 1
    assert json.loads(outs.pop())["down"] == ["n3", "n7"]


def test_layout_json_round_trip() -> None:
    weights = as_weights([1, 2.5, 0, 3])
    layout = compute(6, weights, {"m01"}, compute(6, weights))
    assert Layout.from_json(layout.to_json()) == layout


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 10), data=st.data())
def test_entries_cover_exactly(bits: int, data: st.DataObject) -> None:
    size = 1 << bits
    chosen = data.draw(st.sets(st.integers(0, size - 1)))
    found = entries(chosen, bits)
    covered = [b for b in range(size) if any(e.covers(b) for e in found)]
    assert covered == sorted(chosen)
    # disjoint: every bucket is covered at most once (order-independent rules)
    for b in range(size):
        assert sum(e.covers(b) for e in found) <= 1


@pytest.mark.parametrize(
    ("members", "expected_max"),
    [(2, 1), (4, 1), (8, 1), (16, 1)],
)
def test_power_of_two_members_get_one_entry_each(members: int, expected_max: int) -> None:
    layout = compute(8, as_weights([1] * members))
    for share in shares(layout):
        assert len(share.entries) == expected_max


def test_entries_use_wildcard_masks() -> None:
    # odd buckets are a single non-prefix entry: the draft's low-bit wildcard
    assert [(e.value, e.mask) for e in entries(range(1, 256, 2), 8)] == [(1, 1)]
    assert [(e.value, e.mask) for e in entries(range(0, 64), 8)] == [(0, 0xC0)]


def test_rebalance_releases_buckets_of_unknown_members() -> None:
    table = ("x", "x", "a", "b")
    new = rebalance(table, (("a", Fraction(1)), ("b", Fraction(1))))
    assert count(new) == {"a": 2, "b": 2}
    assert new[2:] == ("a", "b")


def test_bucket_of_mask_uses_low_source_bits() -> None:
    assert bucket_of("10.99.1.5", "mask", 8, 0) == 5
    assert bucket_of("10.99.1.5", "mask", 9, 0) == 0x105
    assert bucket_of("2001:db8:99::1:2", "mask", 16, 0) == 0x0002
    assert bucket_of("2001:db8:99::1:2", "mask", 16, 0) == 2


def test_bucket_of_hash_is_spread_and_in_range() -> None:
    rng = random.Random(7)
    seen = [
        bucket_of(f"10.99.{rng.randrange(256)}.{rng.randrange(256)}", "hash", 4, 0x5EED)
        for _ in range(4000)
    ]
    assert set(seen) == set(range(16))
    assert max(seen.count(b) for b in range(16)) < 2 * 4000 / 16

"""core/reconcile.py: the desired state and `decide`, table-tested with plain values (no
fakes, no kernel): adopt, drift, failover, restore, rebalance in force, transitions."""

from __future__ import annotations

from fractions import Fraction

import pytest

from vipctl.core import reconcile
from vipctl.core.partition import Layout, Table, Weights
from vipctl.core.reconcile import Decision, Desired, Intent, Observed, decide
from vipctl.core.transition import Move

SPEC_W: Weights = (("a", Fraction(1)), ("b", Fraction(1)), ("c", Fraction(1)))
REB_W: Weights = (("a", Fraction(3)), ("b", Fraction(1)), ("c", Fraction(1)))
NOW = 1000.0


def base(weights: Weights = SPEC_W, bits: int = 4) -> Layout:
    return Layout.initial(bits, weights)


def run(
    weights: Weights = SPEC_W,
    *,
    previous: Layout | None = None,
    down: set[str] | None = None,
    trusted: bool = True,
    drift: tuple[str, ...] = (),
    moving: dict[int, Move] | None = None,
    flows: set[int] | None = None,
    exact: Layout | None = None,
    transitions: bool = True,
) -> Decision:
    desired = Desired(
        bits=4,
        weights=weights,
        down=frozenset(down) if down is not None else None,
        layout=exact,
        transitions=transitions,
        idle_timeout_s=600,
        record_s=1.0,
    )
    observed = Observed(
        previous=previous, moving=moving or {}, flows=flows, trusted=trusted, drift=drift
    )
    return decide(desired, observed, NOW)


def moved(a: Table, b: Table) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


# -- weights in force ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("intent", "spec_weights", "expected"),
    [
        (None, SPEC_W, SPEC_W),  # nothing set: the spec's
        (Intent(REB_W, SPEC_W), SPEC_W, REB_W),  # rebalance in force
        (Intent(REB_W, SPEC_W), REB_W, REB_W),  # the spec caught up
        # the operator edited the spec's weights: the spec wins
        (
            Intent(REB_W, SPEC_W),
            (("a", Fraction(2)), *SPEC_W[1:]),
            (("a", Fraction(2)), *SPEC_W[1:]),
        ),
        # a member added to the spec: the spec wins
        (Intent(REB_W, SPEC_W), (*SPEC_W, ("d", Fraction(1))), (*SPEC_W, ("d", Fraction(1)))),
    ],
)
def test_weights_in_force(intent: Intent | None, spec_weights: Weights, expected: Weights) -> None:
    assert reconcile.weights_in_force(spec_weights, intent) == expected


def test_next_intent() -> None:
    first = reconcile.next_intent(None, SPEC_W, weights=REB_W)
    assert first == Intent(REB_W, SPEC_W, "rebalance", 1)
    # an apply of the same spec keeps it; another rebalance replaces it (generation + 1)
    assert reconcile.next_intent(first, SPEC_W) is first
    again = reconcile.next_intent(first, SPEC_W, weights=SPEC_W[:1] + REB_W[1:], source="layout")
    assert again is None  # the spec's own weights again: nothing to remember
    other: Weights = (("a", Fraction(1)), ("b", Fraction(2)), ("c", Fraction(1)))
    second = reconcile.next_intent(first, SPEC_W, weights=other, source="layout")
    assert second == Intent(other, SPEC_W, "layout", 2)
    # the spec's weights changed: dropped
    assert reconcile.next_intent(first, REB_W[:1] + SPEC_W[1:] + (("d", Fraction(1)),)) is None


def test_intent_round_trips_through_json() -> None:
    intent = Intent(REB_W, SPEC_W, "layout", 7)
    assert Intent.from_json(intent.to_json()) == intent
    for bad in (
        {"weights": [["a", "-1"]], "spec_weights": []},
        {"weights": [["a", "1"], ["a", "2"]], "spec_weights": []},
        {"weights": [], "spec_weights": [], "source": "magic"},
    ):
        with pytest.raises(ValueError):
            Intent.from_json(bad)


# -- decide ----------------------------------------------------------------------------


def test_adopt_nothing_live_installs_a_fresh_table_whole() -> None:
    d = run(previous=None, trusted=False)
    assert d.whole and d.layout.table == base().table and not d.moving and not d.record
    assert d.reasons == ()  # a first install: nothing was repaired


def test_in_sync_changes_nothing() -> None:
    prev = base()
    d = run(previous=prev)
    assert not d.whole and d.layout == prev and not d.moving and not d.failover
    assert reconcile.unchanged(d, "x", "x") and not reconcile.unchanged(d, "x", "y")


def test_drift_replaces_the_whole_table_without_moving_a_bucket() -> None:
    prev = base()
    d = run(previous=prev, drift=("1 buckets differ",))
    assert d.whole and d.layout.table == prev.table and d.reasons == ("1 buckets differ",)
    assert not reconcile.unchanged(d, "x", "x")


def test_failover_moves_only_the_dead_members_buckets_and_records_nothing() -> None:
    prev = base(REB_W).reweight(REB_W)
    d = run(REB_W, previous=prev, down={"b"})
    assert d.failover and d.record == () and d.record_s == 0
    gone = [i for i, o in enumerate(prev.table) if o == "b"]
    assert moved(prev.table, d.layout.table) == gone
    assert not d.moving  # a dead member's flows are gone: nothing to keep


def test_failover_under_the_specs_weights_would_move_healthy_buckets() -> None:
    """What the daemon did before the desired state: it failed over with the spec's
    weights over a rebalanced table, so healthy buckets moved and a record step ran."""
    prev = base().reweight(REB_W)
    d = run(SPEC_W, previous=prev, down={"b"})
    healthy = [i for i in moved(prev.table, d.layout.table) if prev.table[i] != "b"]
    assert healthy and d.record == ()  # and even then the failover does not wait


def test_restore_gives_back_the_exact_table() -> None:
    prev = base().reweight(REB_W)
    failed = run(REB_W, previous=prev, down={"b"}).layout
    back = run(REB_W, previous=failed, down=set())
    assert back.layout.table == prev.table and not back.failover
    # b's buckets come back through a transition (their flows are at the interim owners)
    assert back.moving and set(back.record) == set(back.moving)
    assert back.record_s == 1.0


def test_rebalance_records_then_moves_the_fewest_buckets() -> None:
    prev = base()
    d = run(REB_W, previous=prev)
    n = len(moved(prev.table, d.layout.table))
    assert n == 16 * 3 // 5 + 1 - 6 or n == 16 * 3 // 5 - 6  # web a: 6 -> 9 or 10
    assert sorted(d.moving) == moved(prev.table, d.layout.table)
    assert all(m.phase == "move" and m.since == NOW for m in d.moving.values())
    assert set(d.record) == set(d.moving)


def test_no_transitions_without_flow_state() -> None:
    d = run(REB_W, previous=base(), transitions=False)
    assert not d.moving and not d.record


def test_transitions_under_way_are_kept_until_their_flows_are_idle() -> None:
    prev = base().reweight(REB_W)
    b = next(i for i, o in enumerate(prev.table) if o == "a")
    under_way = {b: Move("b", "a", NOW - 700)}
    kept = run(REB_W, previous=prev, moving=under_way, flows={b})
    assert kept.moving == under_way and kept.record == ()
    settled = run(REB_W, previous=prev, moving=under_way, flows=set())
    assert settled.moving == {}
    unknown = run(REB_W, previous=prev, moving=under_way, flows=None)
    assert unknown.moving == under_way  # not read: nothing settles


def test_an_exact_layout_wins_and_down_overrides_its_health() -> None:
    exact = Layout.of(4, REB_W, base(REB_W).table)
    d = run(SPEC_W, previous=base(), exact=exact)
    assert d.layout == exact
    d = run(SPEC_W, previous=base(), exact=exact, down={"c"})
    assert d.layout.down == ("c",) and d.failover


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        (("a", "b"), ()),
        (None, ("the cluster's table is missing from the kernel",)),
        (("a",), ("the kernel's table has 1 buckets, 2 expected",)),
        (("a", None), ("1 buckets differ from the state in the kernel (bucket 1)",)),
    ],
)
def test_drift_descriptions(live: tuple[str | None, ...] | None, expected: tuple[str, ...]) -> None:
    assert reconcile.drift(("a", "b"), live) == expected


def test_expected_owners_show_the_old_owner_while_recording() -> None:
    layout = Layout.of(1, (("a", Fraction(1)), ("b", Fraction(1))), ("a", "b"))
    moving = {0: Move("b", "a", NOW, "record"), 1: Move("a", "b", NOW, "move")}
    assert reconcile.expected_owners(layout, moving) == ("b", "b")

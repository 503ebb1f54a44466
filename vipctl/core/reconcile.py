"""The desired state of a cluster and the decision that converges the kernel to it (pure).

vipctl keeps ONE desired state per cluster: the spec, plus the operator's intent that the
spec file does not carry (weights set by `vipctl rebalance --weights`, weights imported
with a peer's layout), plus the health the daemon sees. It is persisted with the state
(statefile.ClusterState.intent) and read under the cluster's lock by every command and by
the daemon before each decision, so none of them acts on a stale copy.

`decide(desired, observed, now)` says what the kernel must hold next; the controller's
shell (controller.py) observes, calls it, renders, checks, commits, verifies and saves,
the same for the command line and the daemon. Nothing here reads the kernel, the clock or
a file: every input is an argument, so the whole policy is table-tested
(tests/unit/test_reconcile.py).

The rules:
- weights in force: the intent's weights while the spec's own weights are those they were
  set over; a spec with other weights (or other members) replaces them. A failover, a
  restoration, a daemon restart or a reload of an unchanged spec keeps them.
- least movement: the new layout follows from the previous one's base table
  (core/partition.py): a failure moves only the failed member's buckets, a recovery
  restores the exact table that set of members had.
- a failover is never delayed: a change that takes a member down commits at once, with no
  record step (its buckets' flows are gone; no bucket of an up member moves).
- drift: when the kernel is not what the state says (an element deleted, the table
  flushed, a port re-created with a new ifindex), the whole table is replaced.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from vipctl.core import transition
from vipctl.core.partition import Layout, Weights, compute
from vipctl.core.transition import Move, Moving

# --------------------------------------------------------------------------------------
# Intent: what the operator asked for beyond the spec file
# --------------------------------------------------------------------------------------

INTENT_SOURCES = ("rebalance", "layout")


@dataclass(frozen=True)
class Intent:
    """Weights in force that differ from the spec's: set by `rebalance --weights` or
    imported with a layout (`apply --layout`). `spec_weights` are the spec's weights when
    they were set: the intent holds while the spec still has exactly those."""

    weights: Weights
    spec_weights: Weights
    source: str = "rebalance"
    generation: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": [[n, str(w)] for n, w in self.weights],
            "spec_weights": [[n, str(w)] for n, w in self.spec_weights],
            "source": self.source,
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intent:
        def weights(raw: Any) -> Weights:
            out = tuple((str(n), Fraction(str(w))) for n, w in raw)
            if len({n for n, _ in out}) != len(out) or any(w < 0 for _, w in out):
                raise ValueError("intent weights: names repeat or a weight is negative")
            return out

        source = str(data.get("source", "rebalance"))
        if source not in INTENT_SOURCES:
            raise ValueError(f"intent source {source!r}")
        return cls(
            weights=weights(data["weights"]),
            spec_weights=weights(data["spec_weights"]),
            source=source,
            generation=int(data.get("generation", 1)),
        )


def holds(intent: Intent | None, spec_weights: Weights) -> bool:
    """Is the intent still in force for a spec with `spec_weights`?"""
    return intent is not None and intent.spec_weights == spec_weights


def weights_in_force(spec_weights: Weights, intent: Intent | None) -> Weights:
    """The weights the table follows: the intent's while it holds, else the spec's."""
    if intent is not None and holds(intent, spec_weights):
        return intent.weights
    return spec_weights


def next_intent(
    previous: Intent | None,
    spec_weights: Weights,
    *,
    weights: Weights | None = None,
    source: str = "rebalance",
    generation: int | None = None,
) -> Intent | None:
    """The intent after a command: `weights` given (rebalance, layout import) sets them
    (None when they are the spec's own and no shared `generation` is to be kept: nothing
    to remember); otherwise the previous intent stays while it holds and is dropped when
    the spec's weights changed. `generation`: the shared store's (core/shared.py)."""
    if weights is None:
        return previous if holds(previous, spec_weights) else None
    if weights == spec_weights and generation is None:
        return None
    if generation is None:
        generation = (previous.generation + 1) if previous is not None else 1
    return Intent(weights, spec_weights, source, generation)


# --------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """What the kernel should hold: the spec's partition, the weights in force, the
    members down (None: as the previous layout has them), or an exact layout (a peer's,
    a re-tune's) that wins over both."""

    bits: int
    weights: Weights
    down: frozenset[str] | None
    layout: Layout | None
    transitions: bool  # the backend keeps flow state and pinning.mode is moving
    idle_timeout_s: float  # spec.pinning.idle_timeout_s
    record_s: float  # spec.pinning.record_ms, in seconds


@dataclass(frozen=True)
class Observed:
    """What the shell found: the layout live before (from the state, or adopted from the
    kernel's own table), the transitions under way, the buckets that still hold a recorded
    flow (None: not read, or unknown), whether the state describes the kernel exactly
    (`trusted`) and, when it was checked, what differs between them (`drift`; also why it
    is not trusted, when a state exists)."""

    previous: Layout | None
    moving: Moving = field(default_factory=dict)
    flows: Collection[int] | None = None
    trusted: bool = False
    drift: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    layout: Layout
    moving: dict[int, Move]
    record: tuple[int, ...]  # buckets recorded for `record_s` before the move (UDP flows)
    record_s: float  # 0: one commit
    whole: bool  # replace the whole table: the kernel is not what the state says
    failover: bool  # members went down: commit at once
    reasons: tuple[str, ...] = ()  # what differed from the state (drift repaired)


def target_layout(desired: Desired, previous: Layout | None) -> Layout:
    """The layout to install: the exact one given (with `down` overriding its health when
    given), else the previous one re-weighted and with the members down applied."""
    if desired.layout is not None:
        return desired.layout if desired.down is None else desired.layout.with_down(desired.down)
    down: Iterable[str] = (
        desired.down
        if desired.down is not None
        else (previous.down if previous is not None else ())
    )
    return compute(desired.bits, desired.weights, down, previous)


def decide(desired: Desired, observed: Observed, now: float) -> Decision:
    """What to commit next (see the module's rules)."""
    previous = observed.previous
    layout = target_layout(desired, previous)
    newly_down = set(layout.down) - set(previous.down if previous is not None else ())
    failover = bool(newly_down)
    moving: dict[int, Move] = {}
    before = dict(observed.moving)
    if desired.transitions:
        if before and observed.flows is not None:
            before = transition.settle(before, observed.flows, now, desired.idle_timeout_s)
        table = previous.table if previous is not None else None
        moving = transition.plan_moves(table, layout.table, before, layout.down, now)
    fresh = transition.newly_moving(moving, before)
    # a failover never waits for a record step: the buckets it moves were a dead member's
    record = () if failover or not desired.record_s else tuple(fresh)
    whole = not observed.trusted or bool(observed.drift)
    return Decision(
        layout=layout,
        moving=moving,
        record=record,
        record_s=desired.record_s if record else 0.0,
        whole=whole,
        failover=failover,
        reasons=observed.drift,
    )


def unchanged(decision: Decision, committed_digest: str, planned_digest: str) -> bool:
    """Nothing to commit: the kernel is what the state says and the plan renders the same
    ruleset."""
    return not decision.whole and committed_digest == planned_digest


def expected_owners(layout: Layout, moving: Moving) -> tuple[str | None, ...]:
    """The owner of NEW flows per bucket as the kernel's tables show it once `layout` and
    `moving` are committed: the old owner while a bucket records, the new one otherwise.
    What a read-back of the owner maps must find (drift detection)."""
    return tuple(
        m.old if (m := moving.get(b)) is not None and m.phase == "record" else owner
        for b, owner in enumerate(layout.table)
    )


def drift(expected: tuple[str | None, ...], live: tuple[str | None, ...] | None) -> tuple[str, ...]:
    """What differs between the owners the state says are live and the kernel's."""
    if live is None:
        return ("the cluster's table is missing from the kernel",)
    if len(live) != len(expected):
        return (f"the kernel's table has {len(live)} buckets, {len(expected)} expected",)
    wrong = [b for b, (e, g) in enumerate(zip(expected, live, strict=True)) if e != g]
    if not wrong:
        return ()
    shown = ", ".join(str(b) for b in wrong[:8]) + (" ..." if len(wrong) > 8 else "")
    return (f"{len(wrong)} buckets differ from the state in the kernel (bucket {shown})",)

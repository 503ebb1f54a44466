"""Buckets in transition (pure): per-flow state only where buckets move.

In steady state a bucket sends every packet to its owner with no per-flow state at all.
When a change (rebalance, restoration, re-tuning) gives a bucket a new owner, the bucket
goes through a transition so the flows it carries stay where they are:

- record (at most `pinning.record_ms`, before the move): UDP flows of the bucket are
  recorded (flow -> current owner) and delivered as before. TCP needs no recording: its
  packets say whether they start a connection.
- move: a recorded flow goes to its recorded member; a TCP packet that does not start a
  connection (anything but SYN without ACK) and is not recorded goes to the old owner and
  is recorded there (a connection that was silent until now); a TCP SYN goes to the new
  owner and is recorded there; any other unrecorded packet goes to the new owner.
- settle: once the transition is `idle_timeout_s` old and none of its recorded flows is
  left (each expires after `idle_timeout_s` without a packet), the bucket returns to the
  stateless path.

A member that is down is never an `old` owner: its flows are gone, so its buckets move at
once with no transition (its clients get a reset from the new owner). `old` is the member
that held the bucket's flows when its transition began; a bucket that moves again while in
transition keeps that `old` (unrecorded connections can only be that member's).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vipctl.core.partition import Table

Phase = Literal["record", "move"]


@dataclass(frozen=True)
class Move:
    old: str  # who held the bucket's flows when its transition began
    new: str  # the bucket's owner now (new flows go there)
    since: float  # wall-clock time the move was committed (settle counts from it)
    phase: Phase = "move"

    def to_json(self) -> list[Any]:
        return [self.old, self.new, self.since, self.phase]

    @classmethod
    def from_json(cls, data: list[Any]) -> Move:
        old, new, since, *rest = data
        phase: Phase = "record" if rest and rest[0] == "record" else "move"
        return cls(str(old), str(new), float(since), phase)


Moving = Mapping[int, Move]


def moving_to_json(moving: Moving) -> dict[str, list[Any]]:
    return {str(b): m.to_json() for b, m in sorted(moving.items())}


def moving_from_json(data: Mapping[str, Any] | None) -> dict[int, Move]:
    return {int(b): Move.from_json(v) for b, v in (data or {}).items()}


def plan_moves(
    before: Table | None,
    after: Table,
    moving: Moving,
    down: Collection[str],
    now: float,
) -> dict[int, Move]:
    """The buckets in transition once `after` is live.

    `before` is the table packets met until now (None: nothing was live), `moving` the
    transitions already under way, `down` the members down after the change."""
    out: dict[int, Move] = {}
    for bucket, owner in enumerate(after):
        current = moving.get(bucket)
        if owner is None:
            continue  # nobody is up: nothing to keep
        if current is not None:
            if current.old in down:
                continue  # the flows it protected are gone
            out[bucket] = Move(current.old, owner, current.since, "move")
            continue
        if before is None or bucket >= len(before):
            continue
        old = before[bucket]
        if old is None or old == owner or old in down:
            continue
        out[bucket] = Move(old, owner, now, "move")
    return out


def newly_moving(moving: Moving, previous: Moving) -> list[int]:
    """Buckets whose transition starts with this change (they get the record phase)."""
    return sorted(b for b in moving if b not in previous)


def recording(moving: Moving, buckets: Iterable[int]) -> dict[int, Move]:
    """`moving` with `buckets` in their record phase."""
    chosen = set(buckets)
    return {
        b: Move(m.old, m.new, m.since, "record") if b in chosen else m for b, m in moving.items()
    }


def settle(
    moving: Moving,
    live: Collection[int] | None,
    now: float,
    idle_timeout_s: float,
) -> dict[int, Move]:
    """The transitions left after settling: a transition at least `idle_timeout_s` old
    whose bucket has no recorded flow left (`live`: the buckets that still have one; None
    when that is unknown: then only an empty flow map, `live` == (), settles)."""
    out: dict[int, Move] = {}
    for bucket, m in moving.items():
        old_enough = now - m.since >= idle_timeout_s
        has_flows = live is None or bucket in live
        if m.phase == "record" or not old_enough or has_flows:
            out[bucket] = m
    return out


def due(moving: Moving, now: float, idle_timeout_s: float) -> bool:
    """Is any transition old enough to settle (worth reading the flow map for)?"""
    return any(now - m.since >= idle_timeout_s for m in moving.values())

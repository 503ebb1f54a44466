"""The chaos run's schedule (pure): a seeded, replayable list of faults and operator actions.

The same seed, event count, router count, member names and kinds give the same schedule on
any machine (``random.Random(seed)``, nothing else). Kinds are drawn from a shuffled bag, so
every kind asked for appears once in each run of ``len(kinds)`` events (a 10-event run of 7
kinds has them all). An event starts at ``at`` seconds after
the load is up; one with a ``duration`` is healed (member restarted, link up, router back,
daemon restarted) that many seconds later. Events overlap, within limits that keep the
cluster serving: at least one member and one router stay up, and a member or router is the
target of one event at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# member faults: the member (or its link from one router) is gone; its connections may reset
MEMBER_FAULTS = ("member_kill", "member_hang", "member_link", "link_flap")
# operator actions and control-plane faults: no connection may reset
OPERATOR = (
    "rebalance_weights",
    "rebalance_auto",
    "sighup",
    "apply_unchanged",
    "reload_changed",
    "daemon_kill",
)
ROUTER_FAULTS = ("router_down",)
KINDS = MEMBER_FAULTS + OPERATOR + ROUTER_FAULTS

# What is meant to hold on the code as it is (issue 25): member faults, SIGHUP, apply of the
# unchanged spec, a daemon killed and restarted. Weight changes and router failures are what
# issues 24 and 26 fix.
HOLDS_NOW = (
    "member_kill",
    "member_hang",
    "member_link",
    "link_flap",
    "sighup",
    "apply_unchanged",
    "daemon_kill",
)

# seconds an event lasts before it is healed: (min, max), or None for an instant event
DURATION: dict[str, tuple[float, float] | None] = {
    "member_kill": (2.0, 5.0),
    "member_hang": (2.0, 5.0),
    "member_link": (2.0, 5.0),
    "link_flap": (0.2, 0.6),
    "daemon_kill": (1.0, 3.0),
    "router_down": (3.0, 6.0),
    "rebalance_weights": None,
    "rebalance_auto": None,
    "sighup": None,
    "apply_unchanged": None,
    "reload_changed": None,
}


@dataclass(frozen=True)
class Event:
    index: int  # 1-based, the order in the schedule
    kind: str
    at: float  # seconds after the start
    duration: float = 0.0  # healed at `at + duration` (0: nothing to heal)
    routers: tuple[int, ...] = ()  # 1-based router numbers the event acts on
    member: str | None = None
    weights: tuple[tuple[str, int], ...] = field(default=())

    @property
    def heals(self) -> bool:
        return self.duration > 0

    def label(self) -> str:
        where = ",".join(f"r{r}" for r in self.routers)
        parts = [f"#{self.index}", self.kind]
        if where:
            parts.append(where)
        if self.member:
            parts.append(self.member)
        if self.weights:
            parts.append(",".join(f"{n}={w}" for n, w in self.weights))
        if self.heals:
            parts.append(f"for {self.duration:.1f}s")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "at": self.at,
            "duration": self.duration,
            "routers": list(self.routers),
            "member": self.member,
            "weights": dict(self.weights) or None,
            "label": self.label(),
        }


def make(
    seed: int,
    n: int,
    *,
    routers: int,
    members: Sequence[str],
    kinds: Sequence[str] = KINDS,
    gap: tuple[float, float] = (3.0, 6.0),
    start: float = 2.0,
) -> list[Event]:
    """``n`` events drawn from ``kinds`` with ``random.Random(seed)``."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; known: {', '.join(KINDS)}")
    if routers < 1 or not members:
        raise ValueError("need at least one router and one member")
    rng = random.Random(seed)
    member_busy: dict[str, float] = {}
    router_busy: dict[int, float] = {}
    router_down: dict[int, float] = {}
    events: list[Event] = []
    t = start
    all_routers = tuple(range(1, routers + 1))
    bag: list[str] = []  # every kind once per len(kinds) events, in a seeded order
    for index in range(1, n + 1):
        if not bag:
            bag = list(dict.fromkeys(kinds))
            rng.shuffle(bag)
        ev = None
        for kind in list(bag):  # the first kind of the bag that fits now
            ev = _draw(
                rng, index, kind, t, all_routers, members, member_busy, router_busy, router_down
            )
            if ev is not None:
                bag.remove(kind)
                break
        if ev is None:  # nothing fits now: a harmless signal
            ev = Event(index, "sighup", round(t, 2), routers=all_routers)
        end = ev.at + ev.duration
        if ev.kind in MEMBER_FAULTS and ev.member:
            member_busy[ev.member] = end + 1.0
        if ev.kind in ("router_down", "daemon_kill"):
            router_busy[ev.routers[0]] = end + 1.0
        if ev.kind == "router_down":
            router_down[ev.routers[0]] = end + 1.0
        events.append(ev)
        t += rng.uniform(*gap)
    return events


def _draw(
    rng: random.Random,
    index: int,
    kind: str,
    t: float,
    all_routers: tuple[int, ...],
    members: Sequence[str],
    member_busy: dict[str, float],
    router_busy: dict[int, float],
    router_down: dict[int, float],
) -> Event | None:
    span = DURATION[kind]
    duration = round(rng.uniform(*span), 2) if span else 0.0
    at = round(t, 2)
    free_members = [m for m in members if member_busy.get(m, 0.0) <= t]
    faulty = len(members) - len(free_members)
    free_routers = [r for r in all_routers if router_busy.get(r, 0.0) <= t]
    down = sum(1 for r in all_routers if router_down.get(r, 0.0) > t)
    if kind in MEMBER_FAULTS:
        if not free_members or faulty + 1 >= len(members):
            return None  # keep at least one member up and untouched
        member = rng.choice(free_members)
        cut = (rng.choice(all_routers),) if kind in ("member_link", "link_flap") else ()
        return Event(index, kind, at, duration, cut, member)
    if kind in ("router_down", "daemon_kill"):
        if not free_routers or (kind == "router_down" and down + 1 >= len(all_routers)):
            return None
        return Event(index, kind, at, duration, (rng.choice(free_routers),))
    # operator actions: on one router or on all of them
    where: tuple[int, ...] = all_routers if rng.random() < 0.5 else (rng.choice(all_routers),)
    if kind == "rebalance_weights":
        weights = tuple((m, rng.randint(1, 3)) for m in members)
        return Event(index, kind, at, 0.0, where, weights=weights)
    if kind == "reload_changed":
        where = all_routers  # the spec file is the cluster's: every router reloads it
    return Event(index, kind, at, 0.0, where)


def timeline(events: Sequence[Event]) -> list[tuple[float, str, Event]]:
    """Every action in time order: ``(seconds, "start" | "heal", event)``."""
    out = [(e.at, "start", e) for e in events]
    out += [(e.at + e.duration, "heal", e) for e in events if e.heals]
    return sorted(out, key=lambda x: (x[0], x[1] == "start", x[2].index))

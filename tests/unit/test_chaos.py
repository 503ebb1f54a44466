"""bench/chaos's pure parts: the seeded schedule and the accounting (no root, no kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos import account, schedule
from bench.chaos.account import Ran
from bench.chaos.schedule import Event

MEMBERS = ("web1", "web2", "web3")


def test_schedule_is_replayable() -> None:
    a = schedule.make(7, 100, routers=2, members=MEMBERS)
    assert a == schedule.make(7, 100, routers=2, members=MEMBERS)
    assert a != schedule.make(8, 100, routers=2, members=MEMBERS)
    assert [e.index for e in a] == list(range(1, 101))
    assert {e.kind for e in a} == set(schedule.KINDS)  # 100 events draw every kind


@pytest.mark.parametrize("seed", range(20))
def test_schedule_keeps_the_cluster_serving(seed: int) -> None:
    """At any moment at least one member is untouched and at least one router is up; a
    member or router is the target of one event at a time."""
    events = schedule.make(seed, 60, routers=2, members=MEMBERS, gap=(0.5, 1.5))
    for t in sorted({e.at for e in events} | {e.at + e.duration for e in events}):
        live = [e for e in events if e.at <= t < e.at + e.duration]
        faulty = [e.member for e in live if e.kind in schedule.MEMBER_FAULTS]
        assert len(faulty) == len(set(faulty)) and len(faulty) < len(MEMBERS), (t, live)
        down = [e.routers[0] for e in live if e.kind == "router_down"]
        busy = [e.routers[0] for e in live if e.kind in ("router_down", "daemon_kill")]
        assert len(down) < 2 and len(busy) == len(set(busy)), (t, live)


def test_schedule_draws_only_the_kinds_asked_for() -> None:
    events = schedule.make(3, 50, routers=3, members=MEMBERS, kinds=schedule.HOLDS_NOW)
    assert {e.kind for e in events} <= set(schedule.HOLDS_NOW)
    for seed in range(10):  # a CI-sized run meets every kind
        ten = schedule.make(seed, 10, routers=2, members=MEMBERS, kinds=schedule.HOLDS_NOW)
        assert {e.kind for e in ten} == set(schedule.HOLDS_NOW), seed
    assert all(1 <= r <= 3 for e in events for r in e.routers)
    with pytest.raises(ValueError, match="unknown event kinds"):
        schedule.make(3, 5, routers=2, members=MEMBERS, kinds=("member_kill", "nope"))


def test_timeline_heals_after_starts() -> None:
    events = schedule.make(5, 30, routers=2, members=MEMBERS)
    tl = schedule.timeline(events)
    assert len(tl) == len(events) + sum(e.heals for e in events)
    assert [t for t, _, _ in tl] == sorted(t for t, _, _ in tl)
    seen: set[int] = set()
    for _, phase, ev in tl:
        if phase == "start":
            seen.add(ev.index)
        else:
            assert ev.index in seen


# --------------------------------------------------------------------------- accounting

KILL = Event(1, "member_kill", 10.0, 3.0, (), "web2")
REBAL = Event(2, "rebalance_weights", 20.0, 0.0, (1, 2), weights=(("web1", 2),))
DOWN = Event(3, "router_down", 30.0, 4.0, (1,))
RAN = [Ran(KILL, 110.0, 113.0), Ran(REBAL, 120.0, 120.0), Ran(DOWN, 130.0, 134.0)]
WINDOWS = account.windows(RAN, grace=5.0)


def conn(end: str, t: float, member: str | None = "web2", start: float = 101.0) -> dict[str, Any]:
    return {
        "id": 1,
        "src": "10.99.0.1",
        "member": member,
        "end": end,
        "why": "",
        "t_start": start,
        "t_open": start,
        "t_end": t,
        "seq": 3,
        "acked": 2,
    }


@pytest.mark.parametrize(
    ("rec", "verdict"),
    [
        (conn("kept", 150.0), "kept"),
        (conn("unfinished", 150.0), "unfinished"),
        (conn("reset", 111.0), "member_died"),  # its member was killed
        (conn("eof", 117.9), "member_died"),  # within the grace after the restart
        (conn("stall", 112.0), "violation"),  # a black hole, not a quick reset
        (conn("reset", 119.0), "violation"),  # after the grace
        (conn("reset", 111.0, member="web1"), "violation"),  # web1 did not die
        (conn("reset", 111.0, member=None), "member_died"),  # never answered: some member
        (conn("reset", 121.0), "violation"),  # the rebalance
        (conn("reset", 131.0), "violation"),  # a router failure resets nothing
        (conn("moved", 111.0), "violation"),  # an echo from another member, ever
        (conn("refused", 111.5, start=111.0), "connect_allowed"),
        (conn("connect-timeout", 139.0, start=131.0), "connect_allowed"),  # router down
        (conn("connect-timeout", 128.0, start=120.0), "violation"),
    ],
)
def test_judge_connection(rec: dict[str, Any], verdict: str) -> None:
    assert account.judge_connection(rec, WINDOWS) == verdict


def test_coinciding_event_is_the_latest_action() -> None:
    assert account.coinciding(RAN, 112.0, 5.0) == RAN[0]
    assert account.coinciding(RAN, 125.0, 5.0) == RAN[1]  # after the grace: last started
    assert account.coinciding(RAN, 100.0, 5.0) is None
    heal_late = [Ran(DOWN, 130.0, 140.0), Ran(REBAL, 135.0, 135.0)]
    assert account.coinciding(heal_late, 141.0, 5.0) == heal_late[0]  # its heal came last
    assert account.coinciding(heal_late, 137.0, 5.0) == heal_late[1]


def sample(t: float, **fps: str) -> dict[str, Any]:
    return {"t": t, "routers": {r: {"fingerprint": f} for r, f in fps.items()}}


def test_fingerprint_split_skips_a_router_that_is_down() -> None:
    samples = [
        sample(100.0, r1="a", r2="a"),
        sample(101.0, r1="a", r2="b"),  # 1 s differing
        sample(102.0, r1="a", r2="a"),
        sample(131.0, r1="x", r2="a"),  # r1 is down (DOWN): not counted
        sample(132.0, r1="a", r2="a"),
    ]
    assert account.fingerprint_split(samples, RAN, ["r1", "r2"]) == 1.0


def test_account_report_and_table() -> None:
    tcp = [
        conn("kept", 150.0),
        conn("reset", 111.0),
        {**conn("reset", 121.0, member="web1"), "id": 7},
        {"summary": True, "sent": 30, "echoed": 28},
    ]
    udp = [
        {"udp_flow": 3, "seq": 5, "t": 111.0, "replies": 0},  # in a window
        {"udp_flow": 3, "seq": 9, "t": 125.0, "replies": 0},  # outside
        {"udp_flow": 4, "seq": 9, "t": 126.0, "replies": 2},  # outside
        {"udp_flow": 4, "t": 121.0, "from": "web1", "to": "web3", "seq": 1},
        {"summary": True, "udp_sent": 1000},
    ]
    samples = [
        sample(100.0, r1="a", r2="a"),
        sample(121.0, r1="a", r2="b"),
        sample(122.0, r1="a", r2="a"),
    ]
    report = account.account(
        t0=100.0, ran=RAN, tcp=tcp, udp=udp, samples=samples, routers=["r1", "r2"], grace=5.0
    )
    c = report["connections"]
    assert (c["total"], c["kept"], c["member_died"], c["violations"]) == (3, 1, 1, 1)
    (v,) = report["violations"]
    assert v["conn"] == 7 and v["event"] == REBAL.label() and v["t"] == 21.0
    assert v["routers"] == {"r1": {"fingerprint": "a"}, "r2": {"fingerprint": "b"}}
    u = report["udp"]
    assert (u["lost_in_windows"], u["lost_outside_windows"], u["duplicated_outside_windows"]) == (
        1,
        1,
        1,
    )
    assert u["flows_changed_member_alive_by_event"] == {"rebalance_weights": 1}
    assert report["fingerprints_differed_s"] == 1.0
    assert report["by_kind"]["rebalance_weights"]["violations"] == 1
    report.update(seed=1, n_events=3, routers=2, members=3, duration_s=40.0)
    text = account.table(report)
    assert "VIOLATIONS               1" in text and "#2 rebalance_weights r1,r2" in text

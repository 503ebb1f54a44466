"""The chaos run at CI size (bench/chaos, issue 25): two vipctl daemons behind an upstream
BIRD (ECMP + BFD), a few hundred long-lived TCP connections and 1024 numbered UDP flows,
10 seeded events; every connection and datagram accounted.

What holds on the code as it is, at this size: member faults (kill, hang, a member link cut
on one router, link flaps), SIGHUP, `apply` of the unchanged spec, a daemon killed and
restarted reset no connection whose member lived and lose no datagram outside fault windows.
(At 10000 connections and 100 events the same kinds do give violations: docs/benchmarks.md,
"Chaos run".)
Weight changes together with router failures do not hold yet (issues 24 and 26): that
schedule is an xfail that turns into a pass when they land. A broken build (router 2 with
another partition seed) must be caught: the run can fail.
"""

from __future__ import annotations

import json
import os
from itertools import count
from typing import Any

import pytest

from bench.chaos import run as chaos
from bench.chaos import schedule
from bench.chaos.account import table

_n = count(1)


def run(**kw: Any) -> dict[str, Any]:
    # the conftest's prefix form (vt<pid>x<n>): a killed run's namespaces are reaped later
    cfg = chaos.Config(prefix=f"vt{os.getpid()}x{900 + next(_n)}", verbose=False, **kw)
    report = chaos.Chaos(cfg).run()
    print(table(report))
    return report


def no_violations(report: dict[str, Any]) -> None:
    c, u = report["connections"], report["udp"]
    assert c["violations"] == 0, json.dumps(report["violations"][:5], indent=1)
    assert u["lost_outside_windows"] == 0, u["outside_examples"]
    assert u["duplicated_outside_windows"] == 0, u["outside_examples"]


def test_chaos_member_faults_and_control_plane_faults() -> None:
    report = run(seed=25, events=10, conns=300, kinds=schedule.HOLDS_NOW, gap=(3.0, 5.0))
    assert {e["kind"] for e in report["events"]} == set(schedule.HOLDS_NOW)
    c = report["connections"]
    # the load really ran and the faults really hit it
    assert c["messages_echoed"] > 300 * 10 and c["kept"] > 30, c
    assert c["member_died"] > 0, c
    assert report["udp"]["sent"] > 1024 * 60
    assert not report["commands_failed"], report["commands_failed"]
    no_violations(report)


@pytest.mark.xfail(
    strict=False,
    reason="issues 24 and 26: transition state is router-local and weight changes are per "
    "router, so a router failure after a weight change resets live connections",
)
def test_chaos_weight_changes_and_router_failures() -> None:
    kinds = ("rebalance_weights", "rebalance_auto", "router_down", "reload_changed", "member_kill")
    report = run(seed=24, events=10, conns=300, kinds=kinds, gap=(3.0, 5.0))
    no_violations(report)
    assert report["fingerprints_differed_s"] <= 2.0


def test_chaos_catches_a_broken_build() -> None:
    """Router 2 partitions with another seed: the routers' fingerprints differ and
    connections that the upstream moves from one router to the other (a router down and
    back) are reset although their member lives. The run reports them."""
    report = run(
        seed=3, events=2, conns=300, kinds=("router_down",), gap=(8.0, 10.0), broken="seed"
    )
    assert report["connections"]["violations"] > 0, report["connections"]
    assert report["by_kind"]["router_down"]["violations"] > 0
    assert report["fingerprints_differed_s"] > 5.0


def test_chaos_catches_transitions_off() -> None:
    """No router keeps transition state (pinning mode off): a weight change moves buckets
    with their live connections, which reset although their member lives."""
    report = run(
        seed=5,
        events=3,
        conns=300,
        kinds=("rebalance_weights",),
        gap=(4.0, 5.0),
        broken="transitions-off",
        udp_flows=0,
    )
    assert report["connections"]["violations"] > 0, report["connections"]
    assert report["by_kind"]["rebalance_weights"]["violations"] > 0

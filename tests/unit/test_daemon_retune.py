"""The daemon's scheduled re-tune with a fake measurement and a fake controller.apply (no
root, no kernel): it moves at most `max_moves` buckets through apply with the measured
generation, never holds the apply slot while measuring (a failover goes first and the
step is skipped), never applies while another apply runs, and is off by default."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from vipctl import controller, statefile
from vipctl.controller import ApplyResult
from vipctl.core.partition import Layout
from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import SpecError
from vipctl.service import sdnotify
from vipctl.service.daemon import Daemon


def make_spec(**retune: Any) -> Spec:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253"],
            "uplink": "up0",
            "members": [
                {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in (1, 2, 3)
            ],
            "retune": {"interval_s": 60, "window_s": 0.3, "max_moves": 2, **retune},
        }
    )


LAYOUT = Layout.initial(8, tuple((f"web{i}", Fraction(1)) for i in (1, 2, 3)))
STATE = statefile.ClusterState("web", 5, LAYOUT, digest="d")


def skewed() -> list[tuple[int, int]]:
    """The first 4 buckets carry 10x the packets of the others."""
    return [(1000 if b < 4 else 100, 0) for b in range(len(LAYOUT.table))]


def result(layout: Layout, generation: int) -> ApplyResult:
    return ApplyResult(
        generation=generation,
        changed=True,
        dry_run=False,
        ruleset="",
        diff="",
        moved=0,
        lower_bound=0,
        seconds=0.01,
        layout=layout,
        state=statefile.ClusterState("web", generation, layout, digest="d"),
    )


class Fakes:
    """measure_start / measure_stop / apply, each one commit (a new generation)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, load: list[tuple[int, int]]) -> None:
        self.applies: list[dict[str, Any]] = []
        self.gen = STATE.generation
        self.measuring = threading.Event()
        self.stopped = False
        self.load = load
        monkeypatch.setattr(controller, "measure_start", self.start)
        monkeypatch.setattr(controller, "measure_stop", self.stop)
        monkeypatch.setattr(controller, "apply", self.apply)
        monkeypatch.setattr(sdnotify, "notify", lambda *fields: True)

    def start(
        self,
        spec: Spec,
        directory: Path,
        options: controller.ApplyOptions,
        env: controller.Env,
    ) -> controller.Measuring:
        assert options.state_write_failure == "continue"
        self.gen += 1
        self.measuring.set()
        return controller.Measuring(self.gen, [(0, 0)] * len(LAYOUT.table))

    def stop(
        self,
        spec: Spec,
        directory: Path,
        started: controller.Measuring,
        options: controller.ApplyOptions,
        env: controller.Env,
    ) -> tuple[statefile.ClusterState, list[tuple[int, int]]]:
        assert started.generation == self.gen  # nobody committed during the window
        self.stopped = True
        self.gen += 1
        return statefile.ClusterState("web", self.gen, LAYOUT, digest="d"), self.load

    def apply(
        self,
        spec: Spec,
        directory: Path,
        options: controller.ApplyOptions,
        env: controller.Env,
    ) -> ApplyResult:
        kw = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        self.applies.append(kw)
        self.gen += 1
        return result(kw.get("layout") or LAYOUT, self.gen)


def make_daemon(spec: Spec) -> Daemon:
    d = Daemon(Path("/etc/vipctl/web.yaml"), Path("/nonexistent"), spec)
    d.layout, d.generation = LAYOUT, STATE.generation
    return d


def test_retune_is_off_by_default_and_strictly_typed() -> None:
    spec = parse_spec({**make_spec().model_dump(mode="json"), "retune": {}})
    assert spec.retune.interval_s == 0
    for bad in (
        {"interval_s": "60"},  # strict: a string is not a number
        {"interval_s": 60, "window_s": 60},  # the window must fit in the interval
        {"tolerance": 1.0},
        {"max_moves": 0},
        {"every": 60},  # extra="forbid"
    ):
        with pytest.raises(SpecError):
            parse_spec({**make_spec().model_dump(mode="json"), "retune": bad})


def test_a_skewed_load_moves_at_most_max_moves_through_apply(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = Fakes(monkeypatch, skewed())
    d = make_daemon(make_spec())
    with caplog.at_level(logging.INFO, logger="vipctl.daemon"):
        what = asyncio.run(d.retune_once())
    assert what.startswith("moved: 2 buckets (at most 2)"), what
    (kw,) = fakes.applies
    moved = [
        b for b, (o, n) in enumerate(zip(LAYOUT.table, kw["layout"].table, strict=True)) if o != n
    ]
    assert 1 <= len(moved) <= 2 and set(moved) <= {0, 1, 2, 3}  # heavy buckets move
    # counting on (6), off (7): the re-tune is refused if anyone committed since 7
    assert kw["expect_generation"] == 7 and fakes.stopped
    assert kw["state_write_failure"] == "continue" and kw["host"] is False
    assert d.generation == 8 and d.layout.table == kw["layout"].table and d.retunes == 1
    assert "re-tune of cluster web: moved: 2 buckets" in caplog.text
    assert "re-tune: generation 8 applied" in caplog.text


def test_a_balanced_load_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = Fakes(monkeypatch, [(100, 0)] * len(LAYOUT.table))
    what = asyncio.run(make_daemon(make_spec()).retune_once())
    assert what.startswith("balanced: imbalance 1.008 <= tolerance 1.1") and fakes.applies == []


def test_a_failover_during_the_window_goes_first_and_the_step_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(monkeypatch, skewed())
    d = make_daemon(make_spec(window_s=2))

    async def scenario() -> str:
        task = asyncio.create_task(d.retune_once())
        await asyncio.to_thread(fakes.measuring.wait, 5)
        started = time.monotonic()
        r = await asyncio.wait_for(d._apply({"web2"}), 1)  # the slot is free in the window
        assert time.monotonic() - started < 1
        d._applied(r, None, "health change")
        return await task

    what = asyncio.run(scenario())
    assert what.startswith("skipped: the cluster changed during the window"), what
    assert not fakes.stopped  # its commit switched counting off already
    assert len(fakes.applies) == 1 and fakes.applies[0].get("layout") is None  # failover only


def test_the_retune_never_commits_while_another_apply_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(monkeypatch, skewed())
    d = make_daemon(make_spec())

    async def scenario() -> str:
        await d._slot.acquire()  # an apply holds the slot
        task = asyncio.create_task(d.retune_once())
        await asyncio.sleep(0.3)
        assert not fakes.measuring.is_set() and not task.done()  # counting-on waits
        d._slot.release()
        await asyncio.to_thread(fakes.measuring.wait, 5)
        await d._slot.acquire()  # another apply during the window
        await asyncio.sleep(0.6)  # past the window
        assert not fakes.stopped and fakes.applies == []  # counting-off waits
        d._slot.release()
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(scenario()).startswith("moved: ")
    assert len(fakes.applies) == 1


def test_no_retune_before_the_first_apply_or_with_an_unsaved_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(monkeypatch, skewed())
    d = make_daemon(make_spec())
    d.layout = None
    assert asyncio.run(d.retune_once()) == "skipped: nothing applied yet"
    d = make_daemon(make_spec())
    d._unsaved = STATE
    assert asyncio.run(d.retune_once()) == "skipped: the state is not written yet"
    assert not fakes.measuring.is_set() and fakes.applies == []

"""The daemon's reload and state-write paths with fake loaders, a fake controller and a
captured sd_notify (no root, no kernel): a reload never blocks the event loop and always
ends with READY=1 and a STATUS line; a state that cannot be written is kept, handed to the
next apply and reported until it is written."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from vipctl import controller, statefile
from vipctl.controller import ApplyResult
from vipctl.core.partition import Layout
from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import SpecError
from vipctl.service import daemon as daemonmod
from vipctl.service import sdnotify
from vipctl.service.daemon import Daemon, status_text


def make_spec(rise: int = 2) -> Spec:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253"],
            "uplink": "up0",
            "members": [
                {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in (1, 2, 3)
            ],
            "health": {"rise": rise},
        }
    )


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    sent: list[str] = []

    def notify(*fields: str) -> bool:
        sent.extend(fields)
        return True

    monkeypatch.setattr(sdnotify, "notify", notify)
    yield sent


def make_daemon(loader: Any) -> Daemon:
    return Daemon(Path("/etc/vipctl/web.yaml"), Path("/nonexistent"), make_spec(), loader=loader)


def test_status_text_puts_the_trouble_first() -> None:
    assert status_text("cluster web generation 3: 3/3 up", []) == (
        "cluster web generation 3: 3/3 up"
    )
    assert status_text("base", ["probes failing locally: too many open files (web1)"]) == (
        "DEGRADED: probes failing locally: too many open files (web1) | base"
    )


def test_a_slow_reload_does_not_stop_the_loop(notes: list[str]) -> None:
    """A loader stuck for 0.4 s: the loop ticks on (probes, failover and the watchdog live
    there); READY=1 and STATUS= come when it is done."""
    release = threading.Event()

    def slow(path: Path) -> Spec:
        release.wait(5)
        return make_spec(rise=1)

    async def scenario() -> int:
        d = make_daemon(slow)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        d.reload()
        await asyncio.sleep(0.4)
        assert notes[0] == "RELOADING=1" and "READY=1" not in notes
        release.set()
        assert d._reload_task is not None
        await d._reload_task
        t.cancel()
        assert d.spec.health.rise == 1 and d._dirty.is_set()
        return ticks

    ticks = asyncio.run(scenario())
    assert ticks >= 30, ticks  # ~40 expected at 10 ms
    assert notes[-2] == "READY=1" and notes[-1].startswith("STATUS=cluster web")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"), "last reload failed"),
        (RuntimeError("a bug"), "last reload failed (RuntimeError: a bug)"),
        (SpecError("web.yaml", ["spec: not UTF-8 (invalid byte at offset 3)"]), "rejected"),
    ],
)
def test_any_failed_reload_ends_ready_and_keeps_the_spec(
    notes: list[str], error: Exception, said: str
) -> None:
    def bad(path: Path) -> Spec:
        raise error

    d = make_daemon(bad)
    before = d.spec

    async def scenario() -> None:
        d.reload()
        assert d._reload_task is not None
        await d._reload_task

    asyncio.run(scenario())
    assert d.spec is before and d.stats.reload_failures == 1
    assert notes[0] == "RELOADING=1" and notes[-2] == "READY=1"
    assert notes[-1].startswith("STATUS=DEGRADED: ") and said in notes[-1], notes[-1]
    assert "running the last good spec" in notes[-1]

    # a good spec afterwards clears the complaint
    d.loader = lambda path: make_spec(rise=1)
    asyncio.run(scenario())
    assert d.spec.health.rise == 1 and notes[-1] == "STATUS=cluster web: not applied yet"


def test_a_hung_read_is_given_up(notes: list[str]) -> None:
    stuck = threading.Event()
    d = make_daemon(lambda path: (stuck.wait(5), make_spec())[1])
    d.reload_timeout = 0.1

    async def scenario() -> None:
        d.reload()
        assert d._reload_task is not None
        await d._reload_task
        stuck.set()  # let the worker thread end (asyncio.run waits for it)

    asyncio.run(scenario())
    assert notes[-2] == "READY=1" and "reading took over 0.1 s" in notes[-1]


def test_sighups_during_a_reload_are_folded_into_one_more(notes: list[str]) -> None:
    calls = []
    release = threading.Event()

    def loader(path: Path) -> Spec:
        calls.append(path)
        release.wait(5)
        return make_spec()

    async def scenario() -> None:
        d = make_daemon(loader)
        d.reload()
        await asyncio.sleep(0.05)
        d.reload()
        d.reload()
        release.set()
        assert d._reload_task is not None
        await d._reload_task

    asyncio.run(scenario())
    assert len(calls) == 2
    assert notes.count("RELOADING=1") == 2 and notes.count("READY=1") == 2


def _result(generation: int, error: str | None) -> ApplyResult:
    spec = make_spec()
    layout = Layout.initial(8, tuple((m.name, Fraction(1)) for m in spec.members))
    state = statefile.ClusterState("web", generation, layout, digest="d")
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
        state=state,
        state_error=error,
    )


def test_an_unwritable_state_is_kept_retried_and_reported(
    notes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    results = [
        _result(2, "cannot write the state of web in /x: Read-only file system"),
        _result(2, None),
    ]

    def apply(
        spec: Spec, directory: Path, options: controller.ApplyOptions, env: controller.Env
    ) -> ApplyResult:
        calls.append({f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
        return results[len(calls) - 1]

    monkeypatch.setattr(controller, "apply", apply)
    monkeypatch.setattr(daemonmod, "RETRY_FIRST_S", 0.05)
    d = make_daemon(lambda path: make_spec())
    d._state_backoff = 0.05

    async def scenario() -> None:
        r = await d._apply({"web2"})
        d._applied(r, None, "health change")
        assert d.stats.state_write_failing and d.stats.degraded
        assert notes[-1].startswith("STATUS=DEGRADED: state not written (cannot write")
        await asyncio.wait_for(d._dirty.wait(), 1.0)  # the retry is scheduled
        r = await d._apply({"web2"})
        d._applied(r, None, "retry")

    asyncio.run(scenario())
    assert calls[0]["state_write_failure"] == "continue" and calls[0]["unsaved"] is None
    assert calls[1]["unsaved"] is results[0].state  # the state in memory stands for the file
    assert not d.stats.state_write_failing and d.stats.state_write_failures == 1
    assert d._unsaved is None and not notes[-1].startswith("STATUS=DEGRADED")

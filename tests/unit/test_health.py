"""Health: the rise/fall state machine (pure), flap damping, link events, and the probes
against real sockets on the loopback (no root needed; ICMP only where permitted)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipctl.core.partition import Layout
from vipctl.core.spec import Member, Spec, parse_spec
from vipctl.service import health, sdnotify
from vipctl.service.daemon import describe_moves, status_line
from vipctl.service.health import (
    MemberHealth,
    Thresholds,
    Transition,
    carrier,
    link_lost,
    link_restored,
    observe,
    required_rise,
)

TH = Thresholds(rise=2, fall=3)


def run(h: MemberHealth, results: str, th: Thresholds = TH, t0: float = 0.0) -> list[bool]:
    """Feed 'o' (ok) / 'x' (fail) one per 0.1 s; the `up` value after each."""
    ups = []
    for i, r in enumerate(results):
        h, _ = observe(h, r == "o", "probe", th, t0 + i * 0.1)
        ups.append(h.up)
    return ups


# -- the state machine ---------------------------------------------------------------------


def test_up_member_goes_down_after_fall_consecutive_failures() -> None:
    assert run(MemberHealth(up=True), "xxx") == [True, True, False]
    # a success in between resets the run
    assert run(MemberHealth(up=True), "xxoxxoxx") == [True] * 8


def test_down_member_comes_back_after_rise_consecutive_successes() -> None:
    assert run(MemberHealth(up=False), "oo") == [False, True]
    assert run(MemberHealth(up=False), "oxoxo") == [False] * 5


def test_transition_reports_reason_and_counts() -> None:
    h = MemberHealth(up=True)
    changes = []
    for _ in range(3):
        h, changed = observe(h, False, "tcp connect 10.0.0.1:80: connection refused", TH, 1.0)
        changes.append(changed)
    assert changes == [False, False, True]
    assert h.reason == "tcp connect 10.0.0.1:80: connection refused (3 failures in a row)"
    # further failures are no new transition
    h, changed = observe(h, False, "again", TH, 1.1)
    assert not changed and not h.up


def test_flap_penalty_doubles_rise_per_recent_down_and_is_capped() -> None:
    th = Thresholds(rise=2, fall=1, flap_window_s=60, flap_max_factor=8)
    h = MemberHealth(up=True)
    needed = []
    now = 0.0
    for _ in range(6):
        h, changed = observe(h, False, "x", th, now)
        assert changed and not h.up
        need = required_rise(h, th, now)
        needed.append(need)
        for _ in range(need):
            now += 0.1
            h, _ = observe(h, True, "o", th, now)
        assert h.up
    assert needed == [2, 4, 8, 16, 16, 16]
    # once the window has passed, the penalty is gone
    h, _ = observe(h, False, "x", th, now + 61)
    assert required_rise(h, th, now + 61) == 2


def test_link_loss_is_immediate_and_probes_do_not_count_without_link() -> None:
    h, changed = link_lost(MemberHealth(up=True), "port m2 lost carrier", TH, 5.0)
    assert changed and not h.up and not h.link and h.reason == "port m2 lost carrier"
    # successes while the link is down do not count (and are not a transition)
    for _ in range(5):
        h, changed = observe(h, True, "ok", TH, 5.1)
        assert not changed and not h.up
    h = link_restored(h)
    assert run(h, "oo", t0=6.0) == [False, True]
    # losing link while already down is no new transition
    h2, changed = link_lost(MemberHealth(up=False), "again", TH, 7.0)
    assert not changed and not h2.up


def test_carrier_needs_admin_up_and_lower_up() -> None:
    assert carrier(0x1 | 0x10000 | 0x2)
    assert not carrier(0x1)  # up, no carrier
    assert not carrier(0x10000)  # carrier, administratively down


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 5), st.integers(1, 5))
def test_state_machine_invariants(results: list[bool], rise: int, fall: int) -> None:
    """Never down without `fall` failures in a row just before; never up without at least
    `rise` successes in a row just before; transitions alternate."""
    th = Thresholds(rise=rise, fall=fall)
    h = MemberHealth(up=True)
    last = True
    for i, ok in enumerate(results):
        h, changed = observe(h, ok, "p", th, i * 0.1)
        assert changed == (h.up != last)
        if changed and not h.up:
            assert results[i - fall + 1 : i + 1] == [False] * fall
        if changed and h.up:
            assert i + 1 >= rise and results[i - rise + 1 : i + 1] == [True] * rise
        last = h.up


# -- the monitor's bookkeeping (no tasks started) -----------------------------------------


def _spec(probe: dict[str, object] | None = None, *, rise: int = 2, fall: int = 2) -> Spec:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253"],
            "uplink": "up0",
            "members": [
                {"name": "web1", "port": "m1", "address": "127.0.0.1"},
                {"name": "web2", "port": "m2", "address": "127.0.0.1"},
            ],
            "health": {
                "probe": probe or {"kind": "tcp", "port": 7000},
                "interval_ms": 50,
                "timeout_ms": 200,
                "rise": rise,
                "fall": fall,
            },
        }
    )


def test_monitor_link_events_and_reload_keep_health() -> None:
    seen: list[Transition] = []
    spec = _spec()
    m = health.Monitor(spec, seen.append, initial_down={"web2"}, clock=lambda: 1.0)
    assert m.down() == {"web2"}
    m.link_event("m1", False, "lost carrier")
    assert m.down() == {"web1", "web2"}
    assert [(t.member, t.up, t.reason) for t in seen] == [("web1", False, "port m1 lost carrier")]
    m.link_event("m1", True, "is up")  # link back: not up until probes succeed
    assert m.down() == {"web1", "web2"}
    m.feed("web1", True, "ok")
    m.feed("web1", True, "ok")
    assert m.down() == {"web2"} and seen[-1].up
    m.link_event("other0", False, "lost carrier")  # not a member port: ignored
    assert m.down() == {"web2"}

    async def reload() -> None:
        # a reloaded spec without web1 and with a new web3: web2 stays down, web3 starts up
        data = spec.model_dump(mode="json")
        data["members"] = [data["members"][1], {"name": "web3", "port": "m3", "address": "::1"}]
        data["vips"].append("2001:db8::1")
        m.update(parse_spec(data))
        assert m.down() == {"web2"} and set(m.health) == {"web2", "web3"}
        await m.stop()

    asyncio.run(reload())


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _monitor(
    *, rise: int = 2, fall: int = 3, down: set[str] | None = None
) -> tuple[health.Monitor, list[Transition], FakeClock]:
    seen: list[Transition] = []
    clock = FakeClock()
    m = health.Monitor(_spec(rise=rise, fall=fall), seen.append, down or set(), clock=clock)
    return m, seen, clock


def _feed(m: health.Monitor, clock: FakeClock, name: str, results: str) -> list[bool]:
    """'o' (ok) / 'x' (fail), one every 0.1 s on the fake clock; `up` after each."""
    ups = []
    for r in results:
        clock.advance(0.1)
        m.feed(name, r == "o", "probe ok" if r == "o" else "probe failed")
        ups.append(m.health[name].up)
    return ups


def _successes_to_come_back(m: health.Monitor, clock: FakeClock, name: str) -> int:
    n = 0
    while not m.health[name].up:
        assert n < 100, "never came back"
        _feed(m, clock, name, "o")
        n += 1
    return n


def test_monitor_rise_and_fall_counts_and_transition_times() -> None:
    m, seen, clock = _monitor(rise=2, fall=3)
    assert _feed(m, clock, "web1", "xxoxx") == [True] * 5  # a success resets the run
    assert seen == []
    assert _feed(m, clock, "web1", "x") == [False]  # third failure in a row
    assert seen == [Transition("web1", False, "probe failed (3 failures in a row)", clock())]
    down_at = clock()
    assert _feed(m, clock, "web1", "xoxo") == [False] * 4  # successes must be consecutive
    assert _feed(m, clock, "web1", "o") == [True]
    assert seen[-1] == Transition("web1", True, "probe ok (2 successes in a row)", clock())
    assert seen[-1].at == pytest.approx(down_at + 0.5)
    assert m.down() == set() and len(seen) == 2
    # the other member was never touched
    assert m.health["web2"] == MemberHealth(up=True)


def test_monitor_flap_damping_grows_required_rise_on_its_clock() -> None:
    """fall 1, rise 2: each further down within FLAP_WINDOW_S doubles the successes needed,
    up to FLAP_MAX_FACTOR times; once the window has passed on the Monitor's clock, it is
    back to `rise` (with the real clock this test would need a minute)."""
    m, seen, clock = _monitor(rise=2, fall=1)
    needed = []
    for _ in range(6):
        _feed(m, clock, "web1", "x")
        assert not m.health["web1"].up
        needed.append(_successes_to_come_back(m, clock, "web1"))
    assert needed == [2, 4, 8, 16, 16, 16]
    assert [t.up for t in seen] == [False, True] * 6
    clock.advance(health.FLAP_WINDOW_S + 1)
    _feed(m, clock, "web1", "x")
    assert _successes_to_come_back(m, clock, "web1") == 2
    # just inside the window the last down still counts
    clock.advance(health.FLAP_WINDOW_S - 1)
    _feed(m, clock, "web1", "x")
    assert _successes_to_come_back(m, clock, "web1") == 4


def test_monitor_link_loss_is_immediate_and_restored_link_needs_rise() -> None:
    m, seen, clock = _monitor(rise=2, fall=3)
    clock.advance(5)
    m.link_event("m1", False, "lost carrier")
    assert seen == [Transition("web1", False, "port m1 lost carrier", clock())]
    assert m.down() == {"web1"} and not m.health["web1"].link
    # probes that succeed while the port has no link do not count
    assert _feed(m, clock, "web1", "ooooo") == [False] * 5
    m.link_event("m1", False, "was set down")  # no link already: no new transition
    assert len(seen) == 1
    m.link_event("m1", True, "is up")
    assert m.down() == {"web1"} and m.health["web1"].link and len(seen) == 1
    assert _feed(m, clock, "web1", "oo") == [False, True]
    assert seen[-1].up and seen[-1].at == clock()
    # a second loss within the flap window: the way back needs twice the successes
    clock.advance(1)
    m.link_event("m1", False, "lost carrier")
    m.link_event("m1", True, "is up")
    assert _successes_to_come_back(m, clock, "web1") == 4
    # a member already down by probes that loses link: no transition, still needs rise
    assert _feed(m, clock, "web2", "xxx") == [True, True, False]
    n = len(seen)
    m.link_event("m2", False, "lost carrier")
    m.link_event("m2", True, "is up")
    assert len(seen) == n
    clock.advance(health.FLAP_WINDOW_S + 1)
    assert _successes_to_come_back(m, clock, "web2") == 2


def test_monitor_measures_probe_latency_on_its_clock() -> None:
    clock = FakeClock()

    async def main() -> dict[str, float]:
        m = health.Monitor(_spec({"kind": "none"}), lambda _t: None, clock=clock)

        async def slow_probe() -> tuple[bool, str]:
            clock.advance(0.25)  # the probe "takes" 250 ms of the Monitor's clock
            return True, "ok"

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(m, "prober", lambda _spec, _member: slow_probe)
            m._start_probes()
            for _ in range(100):
                if len(m.latency) == 2:
                    break
                await asyncio.sleep(0)
            await m.stop()
        return m.latency

    assert asyncio.run(main()) == {"web1": 0.25, "web2": 0.25}


# -- probes against real sockets on the loopback ------------------------------------------


@contextlib.contextmanager
def http_server(status: int) -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def _member() -> Member:
    return Member.model_validate({"name": "web1", "port": "m1", "address": "127.0.0.1"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_tcp_probe_real_sockets() -> None:
    with http_server(200) as port:
        ok, detail = asyncio.run(health.probe_tcp(_member(), port, 1.0))
    assert ok and detail == f"tcp connect 127.0.0.1:{port}: ok"
    closed = _free_port()
    ok, detail = asyncio.run(health.probe_tcp(_member(), closed, 1.0))
    assert not ok and detail == f"tcp connect 127.0.0.1:{closed}: connection refused"


def test_http_probe_checks_the_status() -> None:
    with http_server(200) as port:
        ok, detail = asyncio.run(health.probe_http(_member(), port, "/health", 200, 1.0))
        assert ok, detail
        ok, detail = asyncio.run(health.probe_http(_member(), port, "/health", 204, 1.0))
        assert not ok and detail.endswith("status 200, expected 204")
    with http_server(503) as port:
        ok, detail = asyncio.run(health.probe_http(_member(), port, "/", 200, 1.0))
        assert not ok and "status 503" in detail


def test_http_probe_times_out() -> None:
    srv = socket.socket()  # accepts (backlog) but never answers
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with srv:
        ok, detail = asyncio.run(health.probe_http(_member(), srv.getsockname()[1], "/", 200, 0.2))
    assert not ok and detail.endswith("no answer within 200 ms")


def test_icmp_probe_loopback() -> None:
    try:
        health._icmp_socket(4)[0].close()
    except OSError as exc:
        pytest.skip(f"no ICMP socket here ({exc.strerror}): needs CAP_NET_RAW or ping group")
    ok, detail = asyncio.run(health.probe_icmp(_member(), 1.0))
    assert ok, detail


# -- sd_notify and log helpers -------------------------------------------------------------


def test_sdnotify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1", "STATUS=two\nlines")
        assert s.recv(4096) == b"READY=1\nSTATUS=two lines"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert sdnotify.watchdog_seconds() == 3.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_seconds() is None  # meant for another process


def test_describe_moves_and_status_line() -> None:
    layout = Layout.initial(2, (("a", Fraction(1)), ("b", Fraction(1))))
    failed = layout.fail("b")
    assert describe_moves(layout, failed) == "2 buckets moved (b->a 2)"
    assert describe_moves(failed, failed.recover("b")) == "2 buckets moved (a->b 2)"
    assert describe_moves(None, layout) == "first table"
    spec = _spec()
    assert status_line(spec, 7, set()) == "cluster web generation 7: 2/2 up"
    assert status_line(spec, 8, {"web2"}) == "cluster web generation 8: 1/2 up (down: web2)"
    assert "ALL 2 MEMBERS DOWN" in status_line(spec, 9, {"web1", "web2"})


def test_sdnotify_never_blocks_on_a_full_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that does not read (queue of net.unix.max_dgram_qlen datagrams) must not
    stall the daemon: found when a test's notify socket stopped the daemon's event loop."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        sent = [sdnotify.notify("WATCHDOG=1") for _ in range(2000)]
        assert sent[0] and not sent[-1]


# -- the prober's own failures are not the member's ----------------------------------------


def test_local_errors_are_told_from_the_members() -> None:
    emfile = health.local_error(OSError(errno.EMFILE, "x"), "tcp connect 10.0.0.1:80")
    assert emfile is not None and emfile.cause == "EMFILE"
    assert emfile.detail == "tcp connect 10.0.0.1:80: too many open files"
    for member_side in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ECONNRESET):
        assert health.local_error(OSError(member_side, "x"), "probe") is None
    assert health.local_error(ValueError("not HTTP"), "probe") is None


def test_inflight_cap_keeps_detection_and_bounds_sockets() -> None:
    assert health.inflight_cap(0.1, 0.3, 3) == 3  # fall probes staggered by the interval
    assert health.inflight_cap(0.1, 0.05, 3) == 1  # timeout < interval: one at a time
    assert health.inflight_cap(0.01, 60.0, 3) == 3  # was 6002 sockets per silent member
    assert health.inflight_cap(0.01, 60.0, 100) == health.MAX_INFLIGHT


def test_tcp_probe_out_of_file_descriptors_is_a_local_error() -> None:
    async def probe() -> None:
        spare = os.dup(0)  # the lowest free descriptor: a limit of it leaves none
        os.close(spare)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (spare, hard))
        try:
            with pytest.raises(health.LocalProbeError) as info:
                await health.probe_tcp(_member(), 9, 1.0)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert info.value.cause == "EMFILE"
        assert info.value.detail == "tcp connect 127.0.0.1:9: too many open files"

    asyncio.run(probe())


def _fast_spec(interval_ms: int, timeout_ms: int, fall: int = 3) -> Spec:
    data = _spec().model_dump(mode="json")
    data["health"].update(interval_ms=interval_ms, timeout_ms=timeout_ms, fall=fall, rise=1)
    return parse_spec(data)


def test_monitor_keeps_health_while_it_cannot_probe(caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE on every probe for 30 rounds: nobody is declared down, the cause is logged
    once and counted, the trouble reported; then real failures count again."""
    seen: list[Transition] = []
    troubles: list[str | None] = []
    mode = {"now": "emfile"}

    def fake(spec: Spec, member: Member) -> Callable[[], Awaitable[health.ProbeResult]]:
        async def run() -> health.ProbeResult:
            if mode["now"] == "emfile":
                raise OSError(errno.EMFILE, "Too many open files")
            return False, "tcp connect: connection refused"

        async def probe() -> health.ProbeResult:
            try:
                return await run()
            except OSError as exc:
                local = health.local_error(exc, f"tcp connect {member.address}")
                assert local is not None
                raise local from None

        return probe

    async def scenario() -> None:
        m = health.Monitor(_fast_spec(10, 5), seen.append, on_trouble=troubles.append, probers=fake)
        m._start_probes()
        await asyncio.sleep(0.3)
        assert seen == [] and m.down() == set()
        assert set(m.unprobed) == {"web1", "web2"} and m.local_errors["EMFILE"] >= 20
        assert troubles[-1] == "probes failing locally: too many open files (web1, web2)"
        mode["now"] = "refused"
        await asyncio.sleep(0.2)
        assert m.down() == {"web1", "web2"} and m.unprobed == {}
        assert troubles[-1] is None
        await m.stop()

    with caplog.at_level(logging.INFO, logger="vipctl.health"):
        asyncio.run(scenario())
    cannot = [r for r in caplog.records if r.getMessage().startswith("cannot probe")]
    assert len(cannot) == 1, [r.getMessage() for r in cannot]
    assert "too many open files" in cannot[0].getMessage()
    assert any("probes work again" in r.getMessage() for r in caplog.records)


def test_a_probe_bug_is_not_a_failure() -> None:
    seen: list[Transition] = []

    def buggy(spec: Spec, member: Member) -> Callable[[], Awaitable[health.ProbeResult]]:
        async def probe() -> health.ProbeResult:
            raise KeyError("oops")

        return probe

    async def scenario() -> None:
        m = health.Monitor(_fast_spec(10, 5), seen.append, probers=buggy)
        m._start_probes()
        await asyncio.sleep(0.1)
        assert seen == [] and m.unprobed["web1"].cause == "bug"
        await m.stop()

    asyncio.run(scenario())


def test_a_silent_member_holds_a_bounded_number_of_probes() -> None:
    """10 ms probes with a 60 s timeout: at most inflight_cap() at once (was 6002)."""
    now = {"inflight": 0, "max": 0}

    def silent(spec: Spec, member: Member) -> Callable[[], Awaitable[health.ProbeResult]]:
        async def probe() -> health.ProbeResult:
            now["inflight"] += 1
            now["max"] = max(now["max"], now["inflight"])
            try:
                await asyncio.sleep(60)
            finally:
                now["inflight"] -= 1
            return False, "no answer"

        return probe

    async def scenario() -> None:
        m = health.Monitor(_fast_spec(10, 60_000), lambda t: None, probers=silent)
        m._start_probes()
        await asyncio.sleep(0.5)
        assert max(m.inflight.values()) <= 3
        await m.stop()

    asyncio.run(scenario())
    assert now["max"] == 2 * 3, now  # two members, fall=3 each

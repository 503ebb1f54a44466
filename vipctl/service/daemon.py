"""`vipctl daemon SPEC`: adopt what is live, probe the members forever, fail over and restore.

The loop (one asyncio event loop, one thread for kernel work):

* start: `controller.apply(spec, dir)` with the health recorded in the state (down=None), so
  a restarted daemon whose table is live and matches moves no bucket and writes nothing;
* `health.Monitor` probes every member concurrently and watches link events; each up/down
  transition is logged with its reason and marks the cluster dirty;
* the reconciler applies `down = every member currently down` in ONE transaction
  (`controller.apply(..., down=...)`), off the event loop so probes keep their rhythm;
  transitions that arrive during an apply are folded into the next one;
* SIGHUP reloads the spec (a bad spec is logged, the last good one stays in force);
  SIGTERM/SIGINT exit 0 and leave the rules in place: the data plane never needs us;
* systemd: READY=1 after the first successful apply, STATUS= after every change,
  WATCHDOG=1 every WatchdogSec/2 while the loop is healthy, RELOADING=1/STOPPING=1.

Every member down: the partition leaves every bucket without an owner and the rules drop
VIP traffic (nothing is sent to a member known dead). The first member to come back gets
every bucket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vipctl import statefile
from vipctl.core.spec import Spec, load_spec
from vipctl.errors import SpecError, VipctlError
from vipctl.service import sdnotify
from vipctl.service.stats import DaemonStats

if TYPE_CHECKING:
    from vipctl.controller import ApplyResult, Cache
    from vipctl.core.partition import Layout
    from vipctl.service.health import Monitor, Transition

log = logging.getLogger("vipctl.daemon")

EX_CONFIG = 78
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


# --------------------------------------------------------------------------------------
# Logging: journald gets syslog priority prefixes, a terminal gets timestamps
# --------------------------------------------------------------------------------------


class _JournalFormatter(logging.Formatter):
    """`<N>message`: journald reads the priority from the prefix (SyslogLevelPrefix=)."""

    PRIORITY: ClassVar[dict[str, int]] = {
        "CRITICAL": 2,
        "ERROR": 3,
        "WARNING": 4,
        "INFO": 6,
        "DEBUG": 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger("vipctl")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


# --------------------------------------------------------------------------------------
# Pure helpers for the log
# --------------------------------------------------------------------------------------


def describe_moves(before: Layout | None, after: Layout) -> str:
    """`web2->web1 43, web2->web3 42` (ownerless buckets shown as `nobody`)."""
    if before is None or before.bits != after.bits:
        return "first table"
    moves = Counter(
        (old or "nobody", new or "nobody")
        for old, new in zip(before.table, after.table, strict=True)
        if old != new
    )
    if not moves:
        return "no bucket moved"
    parts = [f"{a}->{b} {n}" for (a, b), n in sorted(moves.items())]
    return f"{sum(moves.values())} buckets moved ({', '.join(parts)})"


def status_line(spec: Spec, generation: int, down: set[str]) -> str:
    up = [m.name for m in spec.members if m.name not in down]
    if not up:
        return (
            f"cluster {spec.cluster} generation {generation}: ALL {len(spec.members)} MEMBERS "
            "DOWN, VIP traffic is dropped"
        )
    text = f"cluster {spec.cluster} generation {generation}: {len(up)}/{len(spec.members)} up"
    if down:
        text += " (down: " + ", ".join(m.name for m in spec.members if m.name in down) + ")"
    return text


# --------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, spec_path: Path, state_dir: Path, spec: Spec) -> None:
        self.spec_path = spec_path
        self.state_dir = state_dir
        self.spec = spec
        self.layout: Layout | None = None
        self.generation = 0
        self.ready = False
        self.monitor: Monitor | None = None
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._pending_since: float | None = None  # first transition not applied yet
        self._apply_started: float | None = None
        self._backoff = RETRY_FIRST_S
        self._retry: asyncio.TimerHandle | None = None
        self._host_pending = False
        self.reasons: dict[str, str] = {}  # member -> last transition, shown by `status`
        self.stats = DaemonStats()  # what `--metrics` exports beyond the kernel's counters
        self.cache: Cache | None = None  # the structure of our last commit (controller)

    # -- transitions --------------------------------------------------------------------
    def on_transition(self, t: Transition) -> None:
        when = time.strftime("%H:%M:%S")
        self.reasons[t.member] = f"{'up' if t.up else 'down'} since {when}: {t.reason}"
        if t.up:
            log.info("%s UP: %s", t.member, t.reason)
        else:
            log.warning("%s DOWN: %s", t.member, t.reason)
        if self._pending_since is None:
            self._pending_since = t.at
        self._dirty.set()

    async def _apply(self, down: set[str] | None) -> ApplyResult:
        from vipctl import controller

        self._apply_started = time.monotonic()
        # Host setup (ARP/ND answering) depends on the spec only: done at start and after a
        # reload, skipped on failovers, where every millisecond before the commit counts.
        host = down is None or self._host_pending
        if self.cache is None:
            self.cache = controller.Cache()
        try:
            result = await asyncio.to_thread(
                controller.apply,
                self.spec,
                self.state_dir,
                down=down,
                host=host,
                reasons=dict(self.reasons),
                cache=self.cache,
                want_diff=False,  # nobody reads it: rendering the old table costs ~2 ms
            )
            self._host_pending = False
            return result
        finally:
            self._apply_started = None

    def _applied(self, result: ApplyResult, since: float | None, what: str) -> None:
        before, self.layout = self.layout, result.layout
        self.generation = result.generation
        down = set(result.layout.down)
        if result.changed:
            newly_down = sorted(down - set(before.down if before else ()))
            with self.stats.lock:
                self.stats.swaps += 1
                self.stats.last_swap_seconds = result.seconds
                self.stats.failovers += len(newly_down)
            pins = f"; pins of {', '.join(newly_down)} released" if newly_down else ""
            lag = (
                f", {1000 * (time.monotonic() - since):.0f} ms after the transition"
                if since is not None
                else ""
            )
            log.info(
                "%s: generation %d applied in %s in %.1f ms%s: %s%s",
                what,
                result.generation,
                "two transactions (record, then move)" if result.recorded_s else "one transaction",
                1000 * result.seconds,
                lag,
                describe_moves(before, result.layout),
                pins,
            )
        else:
            log.info(
                "%s: the live table (generation %d) already matches, nothing written",
                what,
                result.generation,
            )
        if not [m for m in self.spec.members if m.name not in down]:
            log.error(
                "every member of cluster %s is down: no bucket has an owner, VIP traffic is "
                "dropped until a member passes its probes again",
                self.spec.cluster,
            )
        status = status_line(self.spec, result.generation, down)
        if not self.ready:
            self.ready = True
            sdnotify.notify("READY=1", f"STATUS={status}")
        else:
            sdnotify.notify(f"STATUS={status}")

    async def _reconcile(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            assert self.monitor is not None
            down = self.monitor.down()
            since, self._pending_since = self._pending_since, None
            if self.spec.bgp is not None and not set(self.spec.member_names) - down:
                await self._bgp(False)  # nobody to serve: withdraw before the rules change
            try:
                result = await self._apply(down)
            except Exception as exc:  # keep serving: the previous rules stay in place
                if isinstance(exc, VipctlError):
                    log.error("apply failed, the previous rules stay in place: %s", exc)
                else:
                    log.exception("apply failed unexpectedly, the previous rules stay in place")
                log.info("retrying in %.1f s", self._backoff)
                sdnotify.notify(f"STATUS=apply failed ({exc}); retrying")
                if self._pending_since is None:
                    self._pending_since = since
                self._retry = loop.call_later(self._backoff, self._dirty.set)
                self._backoff = min(self._backoff * 2, RETRY_MAX_S)
                continue
            self._backoff = RETRY_FIRST_S
            self._applied(result, since, "health change" if since is not None else "retry")
            await self._bgp(bool(set(self.spec.member_names) - set(result.layout.down)))
            if result.changed and self.cache is not None:
                await self._verify()

    async def _verify(self) -> None:
        """Read back what the fast path committed without reading (after the swap, off its
        critical path); a difference is logged and the next apply reads the kernel."""
        from vipctl import controller

        assert self.cache is not None
        try:
            await asyncio.to_thread(controller.verify_live, self.cache)
        except VipctlError as exc:
            log.error("read-back after the swap found a difference: %s; re-applying", exc)
            self._dirty.set()

    async def _bgp(self, serving: bool) -> None:
        """Announce the VIPs while this router serves (rules installed and verified, a
        member up), withdraw otherwise; with no `bgp` section, nothing."""
        if self.spec.bgp is None:
            return
        from vipctl.host import bgp

        try:
            what = await asyncio.to_thread(bgp.sync, self.spec, self.state_dir, serving)
        except VipctlError as exc:
            log.error("BGP: %s", exc)
            return
        if what != "unchanged":
            log.info(
                "BGP: BIRD %s, VIPs %s",
                what,
                "announced" if serving else "withdrawn (no member up)",
            )
        with self.stats.lock:
            self.stats.announced = serving

    # -- signals ------------------------------------------------------------------------
    def reload(self) -> None:
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            spec = load_spec(self.spec_path)
            if spec.cluster != self.spec.cluster:
                raise SpecError(
                    str(self.spec_path),
                    [
                        f"cluster: '{spec.cluster}' differs from the running cluster "
                        f"'{self.spec.cluster}'; a new cluster needs its own service"
                    ],
                )
        except SpecError as exc:
            for line in exc.problems:
                log.error("reload rejected: %s: %s", exc.source, line)
            log.error(
                "reload rejected: keeping the last good spec (cluster %s, generation %d)",
                self.spec.cluster,
                self.generation,
            )
            sdnotify.notify("READY=1", "STATUS=reload rejected (bad spec), running the last good")
            return
        if spec == self.spec:
            log.info("reload: %s is unchanged", self.spec_path)
            sdnotify.notify("READY=1")
            return
        log.info("reload: %s accepted, applying it", self.spec_path)
        self.spec = spec
        self._host_pending = True  # the new spec may change the uplink's ARP/ND answering
        if self.monitor is not None:
            self.monitor.update(spec)
        self._dirty.set()
        sdnotify.notify("READY=1")

    async def _settler(self) -> None:
        """Buckets in transition return to the stateless path once their recorded flows
        are idle (controller.apply settles what is due): check now and then, apply when a
        transition is old enough."""
        from vipctl.core import transition

        while True:
            idle = self.spec.pinning.idle_timeout_s
            await asyncio.sleep(min(60.0, max(1.0, idle / 10)))
            try:
                st = statefile.load(self.state_dir, self.spec.cluster)
            except VipctlError:
                continue
            if st is not None and st.moving and transition.due(st.moving, time.time(), idle):
                log.info("transitions are due to settle: applying")
                self._dirty.set()

    async def _watchdog(self, period: float) -> None:
        """Ping at half the period while the loop runs and no apply is stuck in the kernel."""
        while True:
            started = self._apply_started
            if started is None or time.monotonic() - started < period / 2:
                sdnotify.notify("WATCHDOG=1")
            else:
                log.error("an apply has been running for %.1f s", time.monotonic() - started)
            await asyncio.sleep(period / 2)

    # -- main ---------------------------------------------------------------------------
    async def run(self) -> int:
        from vipctl.service import health

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        spec = self.spec
        log.info(
            "vipctl daemon %d: cluster %s, %d members, %s; state in %s",
            os.getpid(),
            spec.cluster,
            len(spec.members),
            health.describe(spec),
            self.state_dir,
        )
        try:
            recorded = statefile.load(self.state_dir, spec.cluster)
        except VipctlError as exc:
            log.error("%s", exc)
            return exc.exit_code
        initial_down: set[str] = set(recorded.layout.down) if recorded else set()
        try:
            result = await self._apply(None)
        except Exception as exc:  # keep probing: a member's health may be what is missing
            if not isinstance(exc, VipctlError):
                log.exception("unexpected error in the first apply")
            log.error(
                "cannot apply at start (%s); probing, and retrying when health changes or in "
                "%.1f s",
                exc,
                self._backoff,
            )
            self._retry = loop.call_later(self._backoff, self._dirty.set)
        else:
            initial_down = set(result.layout.down)
            self._applied(result, None, "start")
            await self._bgp(bool(set(spec.member_names) - initial_down))
        if initial_down:
            log.info("members down according to the state: %s", ", ".join(sorted(initial_down)))
        self.monitor = health.Monitor(spec, self.on_transition, initial_down)
        self.stats.probe_latency = self.monitor.latency
        await self.monitor.start()
        tasks = [
            asyncio.create_task(self._reconcile(), name="reconcile"),
            asyncio.create_task(self._settler(), name="settle"),
        ]
        period = sdnotify.watchdog_seconds()
        if period:
            tasks.append(asyncio.create_task(self._watchdog(period), name="watchdog"))
        await self._stop.wait()
        log.info(
            "stopping: the rules of generation %d stay in place (the data plane does not "
            "need the daemon)",
            self.generation,
        )
        sdnotify.notify("STOPPING=1")
        if self._retry is not None:
            self._retry.cancel()
        await self.monitor.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0


def main(
    spec_path: Path, state_dir: Path, *, verbose: bool = False, metrics: str | None = None
) -> int:
    """Run the service until SIGTERM; returns the process's exit code (78: bad spec)."""
    setup_logging(verbose)
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        for line in exc.problems:
            log.error("%s: %s", exc.source, line)
        return EX_CONFIG
    daemon = Daemon(spec_path, state_dir, spec)
    if metrics:
        from vipctl.service import metrics as exporter

        try:
            exporter.serve(metrics, daemon.state_dir, [spec.cluster], {spec.cluster: daemon.stats})
        except (VipctlError, OSError) as exc:
            log.error("cannot serve metrics on %s: %s", metrics, exc)
            return 2
        log.info("serving metrics on http://%s/metrics", metrics)
    return asyncio.run(daemon.run())

"""`vipctl daemon SPEC`: adopt what is live, probe the members forever, fail over and restore.

The loop (one asyncio event loop, one thread for kernel work):

* start: `controller.apply(spec, dir)` with the health recorded in the state (down=None), so
  a restarted daemon whose table is live and matches moves no bucket and writes nothing;
* `health.Monitor` probes every member concurrently and watches link events; each up/down
  transition is logged with its reason and marks the cluster dirty;
* the reconciler applies `down = every member currently down` in ONE transaction
  (`controller.apply(..., down=...)`), off the event loop so probes keep their rhythm;
  transitions that arrive during an apply are folded into the next one;
* SIGHUP reloads the spec: read and validated in a worker thread (the loop keeps probing,
  failing over and pinging the watchdog), a bad spec is logged and the last good one stays
  in force; every reload ends with READY=1 and a STATUS line, whatever happened;
* failover first: a state file that cannot be written (full or read-only disk) does not
  stop a commit (controller.apply(state_write_failure="continue")); the state is kept in
  memory, handed to every apply, and written again until it can be;
* the prober's own errors (EMFILE...) fail no member; while the daemon cannot do its job
  fully it says so first in STATUS= and in the metrics (vipctl_daemon_degraded);
  SIGTERM/SIGINT exit 0 and leave the rules in place: the data plane never needs us;
* systemd: READY=1 after the first successful apply, STATUS= after every change,
  WATCHDOG=1 every WatchdogSec/2 while the loop is healthy, RELOADING=1/STOPPING=1;
* re-tuning on a schedule (spec `retune.interval_s`, off by default): every interval one
  commit switches per-bucket counting on, the window (`window_s`) passes with the apply
  slot free (a failover never waits for it), one commit reads and switches it off, and at
  most `max_moves` buckets move through controller.apply's transition path; every commit
  holds the slot (never two applies at once), and a failover, reload or commit by anyone
  else during the window skips that step.

Every member down: the partition leaves every bucket without an owner and the rules drop
VIP traffic (nothing is sent to a member known dead). The first member to come back gets
every bucket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vipctl import statefile
from vipctl.core.spec import Spec, load_spec
from vipctl.errors import SpecError, VipctlError
from vipctl.service import sdnotify
from vipctl.service.stats import DaemonStats

if TYPE_CHECKING:
    from vipctl.controller import ApplyResult, Cache
    from vipctl.core.partition import Layout
    from vipctl.service.health import Monitor, Transition
    from vipctl.statefile import ClusterState

log = logging.getLogger("vipctl.daemon")

EX_CONFIG = 78
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
RELOAD_TIMEOUT_S = 10.0  # a spec read that hangs (a dead NFS mount) is given up
RETUNE_OFF_POLL_S = 5.0  # re-tuning off: how often to look whether a reload switched it on
CONVERGE_POLL_S = 0.1  # how often the ruleset generation is read (invariant 10: within 1 s)
CONVERGE_FULL_S = 30.0  # a read-back of the whole table however quiet the generation is
CONVERGE_TC_S = 1.0  # the same for backends without a generation (tc)


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


def status_text(base: str, problems: list[str]) -> str:
    """The STATUS= line: what keeps the daemon from doing its job comes first."""
    if not problems:
        return base
    return "DEGRADED: " + "; ".join(problems) + " | " + base


# --------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------


class Daemon:
    def __init__(
        self,
        spec_path: Path,
        state_dir: Path,
        spec: Spec,
        loader: Callable[[Path], Spec] = load_spec,
    ) -> None:
        self.spec_path = spec_path
        self.state_dir = state_dir
        self.spec = spec
        self.loader = loader  # runs in a worker thread: never on the event loop
        self.reload_timeout = RELOAD_TIMEOUT_S
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
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False  # a SIGHUP arrived while a reload ran: read again
        self._reload_problem: str | None = None  # the last reload was refused: why
        self._probe_trouble: str | None = None  # health.trouble(): probes failing locally
        self._unsaved: ClusterState | None = None  # committed, not yet in the state file
        self._state_error: str | None = None
        self._state_backoff = RETRY_FIRST_S
        self._state_retry: asyncio.TimerHandle | None = None
        self._slot = asyncio.Lock()  # one apply at a time: health, retry, reload, re-tune
        self.retunes = 0  # re-tunes that moved buckets
        # convergence: the ruleset generation our last apply saw, and whether the next apply
        # must read the kernel back (someone else changed the rules, a port was re-created)
        self._genid_seen: int | None = None
        self._check = False
        # the shared store (spec `store:`): the generation of the desired state installed,
        # the document to install next, and why the store cannot be read (None: it can)
        self._shared_generation = 0
        self._shared_pending: Any = None
        self._store_problem: str | None = None

    # -- what STATUS= says --------------------------------------------------------------
    def problems(self) -> list[str]:
        out = []
        if self._probe_trouble:
            out.append(self._probe_trouble)
        if self._state_error:
            out.append(f"state not written ({self._state_error}), kept in memory")
        if self._reload_problem:
            out.append(self._reload_problem)
        if self._store_problem:
            out.append(self._store_problem)
        return out

    def status(self) -> str:
        if self.layout is None:
            base = f"cluster {self.spec.cluster}: not applied yet"
        else:
            base = status_line(self.spec, self.generation, set(self.layout.down))
        return status_text(base, self.problems())

    def on_trouble(self, text: str | None) -> None:
        """health.Monitor: the set of members the prober cannot probe changed."""
        self._probe_trouble = text
        if self.monitor is not None:
            with self.stats.lock:
                self.stats.unprobed = len(self.monitor.unprobed)
        if text:
            log.error("%s: their health is kept as it is until they can be probed", text)
        sdnotify.notify(f"STATUS={self.status()}")

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

    async def _apply(
        self, down: set[str] | None, *, check: bool = False, shared: Any = None
    ) -> ApplyResult:
        """One apply off the event loop. `check`: read the kernel back first and replace
        the whole table where it differs from the state (drift), instead of trusting our
        own last commit (the fast path of a failover)."""
        from vipctl import controller

        self._apply_started = time.monotonic()
        # Host setup (ARP/ND answering) depends on the spec only: done at start and after a
        # reload, skipped on failovers, where every millisecond before the commit counts.
        host = down is None or self._host_pending
        if self.cache is None:
            self.cache = controller.Cache()
        options = controller.ApplyOptions(
            down=down,
            host=host,
            reasons=dict(self.reasons),
            want_diff=False,  # nobody reads it: rendering the old table costs ~2 ms
            state_write_failure="continue",
            unsaved=self._unsaved,
            check_drift=check or down is None,
        )
        try:
            async with self._slot:
                seen = self._kernel_generation()
                env = controller.Env(cache=self.cache)
                if shared is not None:
                    result = await asyncio.to_thread(
                        controller.converge_shared, self.spec, self.state_dir, shared, options, env
                    )
                else:
                    result = await asyncio.to_thread(
                        controller.apply, self.spec, self.state_dir, options, env
                    )
                self._genid_seen = seen
            self._host_pending = False
        finally:
            self._apply_started = None
        self._state_written(result)
        if result.repaired:
            with self.stats.lock:
                self.stats.repairs += 1
            log.warning(
                "the kernel differed from the desired state (%s): whole table replaced, "
                "generation %d",
                "; ".join(result.repaired),
                result.generation,
            )
        return result

    def _own_commit(self) -> None:
        """The ruleset generation now is our own commit's: the measuring table of a
        re-tune must not be taken for drift (a convergence check would switch its counting
        off). A change by someone else in the same instant waits for the periodic check."""
        self._genid_seen = self._kernel_generation()

    def _kernel_generation(self) -> int | None:
        """The backend's ruleset generation (None: it has none, or it cannot be read)."""
        from vipctl.controller import backend_for

        try:
            return backend_for(self.spec).ruleset_generation()
        except VipctlError:
            return None

    def _state_written(self, result: ApplyResult) -> None:
        """Keep the state in memory while it cannot be written, retry, say so."""
        if result.state_error is None:
            if self._unsaved is not None:
                log.warning(
                    "state written again: %s has caught up with the kernel (generation %d)",
                    self.state_dir,
                    result.generation,
                )
            self._unsaved = None
            self._state_error = None
            self._state_backoff = RETRY_FIRST_S
            with self.stats.lock:
                self.stats.state_write_failing = False
            return
        if self._state_error is None:
            log.error(
                "STATE NOT WRITTEN: %s. The kernel has generation %d (failovers are not "
                "held back by this); the state is kept in memory and written as soon as "
                "the directory is writable again",
                result.state_error,
                result.generation,
            )
        self._unsaved = result.state
        self._state_error = result.state_error
        with self.stats.lock:
            self.stats.state_write_failing = True
            self.stats.state_write_failures += 1
        if self._state_retry is not None:
            self._state_retry.cancel()
        self._state_retry = asyncio.get_running_loop().call_later(
            self._state_backoff, self._dirty.set
        )
        self._state_backoff = min(self._state_backoff * 2, RETRY_MAX_S)

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
        elif result.state_error is None and what in ("retry", "check"):
            log.debug("%s: the live table (generation %d) matches", what, result.generation)
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
        status = self.status()
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
            check, self._check = self._check, False
            shared, self._shared_pending = self._shared_pending, None
            try:
                result = await self._apply(down, check=check, shared=shared)
            except Exception as exc:  # keep serving: the previous rules stay in place
                if isinstance(exc, VipctlError):
                    log.error("apply failed, the previous rules stay in place: %s", exc)
                else:
                    log.exception("apply failed unexpectedly, the previous rules stay in place")
                log.info("retrying in %.1f s", self._backoff)
                sdnotify.notify(f"STATUS=apply failed ({exc}); retrying")
                if self._pending_since is None:
                    self._pending_since = since
                self._check = self._check or check
                self._shared_pending = self._shared_pending or shared
                self._retry = loop.call_later(self._backoff, self._dirty.set)
                self._backoff = min(self._backoff * 2, RETRY_MAX_S)
                continue
            self._backoff = RETRY_FIRST_S
            what = (
                "health change"
                if since is not None
                else "shared desired state"
                if shared is not None
                else "check"
                if check
                else "retry"
            )
            self._applied(result, since, what)
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
        """SIGHUP: start a reload, or ask the running one to read the file once more."""
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        """RELOADING=1, read and validate in a worker thread, READY=1 and STATUS=: always,
        whatever the file holds or the worker raises."""
        while True:
            self._reload_again = False
            sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                await self._reload_once()
            except Exception as exc:  # never a traceback, never stuck in "reloading"
                log.error("reload failed (%r): keeping the last good spec", exc)
                self._rejected(f"last reload failed ({type(exc).__name__}: {exc})")
            sdnotify.notify("READY=1", f"STATUS={self.status()}")
            if not self._reload_again:
                return

    def _rejected(self, why: str) -> None:
        self._reload_problem = f"{why}; running the last good spec"
        with self.stats.lock:
            self.stats.reload_failures += 1

    async def _reload_once(self) -> None:
        try:
            spec = await asyncio.wait_for(
                asyncio.to_thread(self.loader, self.spec_path), self.reload_timeout
            )
            if spec.cluster != self.spec.cluster:
                raise SpecError(
                    str(self.spec_path),
                    [
                        f"cluster: '{spec.cluster}' differs from the running cluster "
                        f"'{self.spec.cluster}'; a new cluster needs its own service"
                    ],
                )
        except TimeoutError:
            log.error(
                "reload rejected: reading %s took more than %g s; keeping the last good spec",
                self.spec_path,
                self.reload_timeout,
            )
            self._rejected(f"last reload rejected (reading took over {self.reload_timeout:g} s)")
            return
        except SpecError as exc:
            for line in exc.problems:
                log.error("reload rejected: %s: %s", exc.source, line)
            log.error(
                "reload rejected: keeping the last good spec (cluster %s, generation %d)",
                self.spec.cluster,
                self.generation,
            )
            first = exc.problems[0] if exc.problems else "bad spec"
            self._rejected(f"last reload rejected ({first})")
            return
        self._reload_problem = None
        if spec == self.spec:
            log.info("reload: %s is unchanged", self.spec_path)
            return
        log.info("reload: %s accepted, applying it", self.spec_path)
        self.spec = spec
        self._host_pending = True  # the new spec may change the uplink's ARP/ND answering
        if self.monitor is not None:
            self.monitor.update(spec)
        self._dirty.set()

    def converge(self, why: str) -> None:
        """Read the kernel back and converge it to the desired state at once (the rules
        may have changed under us: anyone's commit, a port removed or re-created)."""
        log.debug("converging: %s", why)
        if self.cache is not None:
            self.cache.forget()  # its wiring (ifindex, MACs) may be stale
        self._check = True
        self._dirty.set()

    async def _watch_kernel(self) -> None:
        """Invariant 10: whatever changes vipctl's rules, the desired table is back within
        a second. The backend's ruleset generation (nftables: NFT_MSG_GETGEN, one tiny
        netlink request) is polled every CONVERGE_POLL_S; when it moved since our last
        apply, the next apply reads the table back and replaces it where it differs.
        Without a generation (tc), and every CONVERGE_FULL_S in any case, the same check
        runs on a timer."""
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(CONVERGE_POLL_S)
            if self.layout is None or self._dirty.is_set() or self._slot.locked():
                continue
            now = time.monotonic()
            gen = self._kernel_generation()
            if gen is not None and gen != self._genid_seen:
                self.converge(f"ruleset generation {self._genid_seen} -> {gen}")
                last_full = now
            elif now - last_full >= (CONVERGE_FULL_S if gen is not None else CONVERGE_TC_S):
                self.converge("periodic read-back")
                last_full = now

    async def _watch_store(self) -> None:
        """With `store:` (etcd): read the shared desired state every `store.poll_ms`;
        when its generation moved, converge to it (the next apply, with this router's
        health); publish what is live here for `vipctl status` about once a second. An
        unreachable store changes nothing on the data path: failovers go on from the local
        state, and it is said in STATUS= until the store answers again."""
        from vipctl.host import store

        client: store.Client | None = None
        published = 0.0
        while True:
            spec = self.spec
            if spec.store is None:
                await asyncio.sleep(RETUNE_OFF_POLL_S)
                continue
            await asyncio.sleep(spec.store.poll_ms / 1000)
            if client is None or client.spec is not spec:
                client = store.Client(spec)
            try:
                found = await asyncio.to_thread(client.read)
            except VipctlError as exc:
                if self._store_problem is None:
                    log.error("store: %s", exc)
                    self._store_problem = "store unreachable (changes refused, failover works)"
                    sdnotify.notify(f"STATUS={self.status()}")
                continue
            if self._store_problem is not None:
                log.warning("store: reachable again")
                self._store_problem = None
                sdnotify.notify(f"STATUS={self.status()}")
            shared = found.shared
            if shared is not None and shared.generation != self._shared_generation:
                if shared.holds(tuple((m.name, m.exact_weight) for m in spec.members)):
                    log.info("store: desired state generation %d (%s)", shared.generation,
                             shared.source)  # fmt: skip
                    self._shared_pending = found  # kept for a retry if the apply fails
                    self._shared_generation = shared.generation
                    self._dirty.set()
                else:
                    log.warning(
                        "store: desired state generation %d was set over other spec weights; "
                        "this router follows its own spec until they agree",
                        shared.generation,
                    )
                    self._shared_generation = shared.generation
            now = time.monotonic()
            if self.layout is not None and now - published >= 1.0:
                published = now
                await asyncio.to_thread(self._publish, client)

    def _publish(self, client: Any) -> None:
        from vipctl.core.partition import fingerprint

        assert self.layout is not None
        p = self.spec.partition
        report = {
            "fingerprint": fingerprint(self.layout.table, p.key, p.bits, p.seed),
            "generation": self.generation,
            "desired_generation": self._shared_generation,
        }
        try:
            client.publish(client.router_name, report)
        except VipctlError as exc:
            log.debug("store: cannot publish: %s", exc)

    def on_port(self, port: str, why: str) -> None:
        """health.Monitor: a member's port was removed or re-created (a new ifindex): the
        rules name ports by ifindex, so they are rendered again."""
        log.warning("port %s %s: rendering the rules again", port, why)
        self.converge(f"port {port} {why}")

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

    async def _retuner(self) -> None:
        """Every `retune.interval_s` (0: off, looked at again after a reload), one re-tune."""
        while True:
            interval = self.spec.retune.interval_s
            if not interval:
                await asyncio.sleep(RETUNE_OFF_POLL_S)
                continue
            await asyncio.sleep(interval)
            if self.spec.retune.interval_s:
                await self.retune_once()

    async def retune_once(self) -> str:
        """Count on, wait the window (no apply slot held), count off, solve and apply. Returns
        what it did, as logged: "skipped: ...", "balanced: ...", "out of reach: ..." or
        "moved: ..."."""
        from vipctl import controller

        spec, rt = self.spec, self.spec.retune
        if self.layout is None or self._unsaved is not None or self._dirty.is_set():
            why = (
                "nothing applied yet"
                if self.layout is None
                else "the state is not written yet"
                if self._unsaved is not None
                else "an apply is pending"
            )
            return self._retune_log(f"skipped: {why}")
        from vipctl.controller import ApplyOptions, Env, Tuning

        common = ApplyOptions(reasons=dict(self.reasons), state_write_failure="continue")
        env = Env(cache=self.cache)
        async with self._slot:  # counting on: one commit, like any apply
            if spec is not self.spec or self._dirty.is_set():
                return self._retune_log("skipped: an apply is pending")
            try:
                started = await asyncio.to_thread(
                    controller.measure_start, spec, self.state_dir, common, env
                )
            except VipctlError as exc:
                return self._retune_log(f"skipped: measuring failed: {exc}", logging.ERROR)
            self.generation = started.generation
            self._own_commit()  # the counting table is ours: no convergence check for it
        await asyncio.sleep(rt.window_s)  # the slot is free: a failover goes first
        async with self._slot:
            if (
                spec is not self.spec
                or self._dirty.is_set()
                or started.generation != self.generation
            ):
                # the commit that came first rendered the table without counting
                return self._retune_log(
                    "skipped: the cluster changed during the window (failover, reload or "
                    "another commit); measuring again at the next interval"
                )
            try:
                st, load = await asyncio.to_thread(
                    controller.measure_stop, spec, self.state_dir, started, common, env
                )
            except VipctlError as exc:
                return self._retune_log(f"skipped: {exc}", logging.WARNING)
            self.generation = st.generation
            self._own_commit()
            self._apply_started = time.monotonic()
            try:
                res = await asyncio.to_thread(
                    controller.retune_measured,
                    spec,
                    self.state_dir,
                    st,
                    load,
                    Tuning(
                        window=rt.window_s,
                        tolerance=rt.tolerance,
                        metric=rt.metric,
                        max_moves=rt.max_moves,
                    ),
                    dataclasses.replace(
                        common, host=False, reasons=dict(self.reasons), want_diff=False
                    ),
                    env,
                )
            except VipctlError as exc:
                return self._retune_log(f"skipped: {exc}", logging.WARNING)
            finally:
                self._apply_started = None
                self._own_commit()
        solved = res.solved
        if res.applied is None:
            if solved.total == 0:
                return self._retune_log(f"balanced: no {rt.metric} in {rt.window_s:g} s")
            if not solved.reachable:
                return self._retune_log(f"out of reach: {solved.reason}", logging.WARNING)
            return self._retune_log(
                f"balanced: imbalance {solved.before:.3f} <= tolerance {rt.tolerance:g}, "
                "nothing moved"
            )
        self._state_written(res.applied)
        self._applied(res.applied, None, "re-tune")
        self.retunes += 1
        return self._retune_log(
            f"moved: {len(solved.moved)} buckets (at most {rt.max_moves}), "
            f"{100 * solved.moved_load:.1f}% of the {rt.metric}; imbalance "
            f"{solved.before:.3f} -> {solved.after:.3f} (tolerance {rt.tolerance:g}); "
            f"generation {res.applied.generation}"
        )

    def _retune_log(self, what: str, level: int = logging.INFO) -> str:
        log.log(level, "re-tune of cluster %s: %s", self.spec.cluster, what)
        return what

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
        self.monitor = health.Monitor(
            spec,
            self.on_transition,
            initial_down,
            on_trouble=self.on_trouble,
            on_port=self.on_port,
        )
        self.stats.probe_latency = self.monitor.latency
        self.stats.probe_local_errors = self.monitor.local_errors
        await self.monitor.start()
        tasks = [
            asyncio.create_task(self._reconcile(), name="reconcile"),
            asyncio.create_task(self._settler(), name="settle"),
            asyncio.create_task(self._retuner(), name="retune"),
            asyncio.create_task(self._watch_kernel(), name="converge"),
            asyncio.create_task(self._watch_store(), name="store"),
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
        for timer in (self._retry, self._state_retry):
            if timer is not None:
                timer.cancel()
        if self._reload_task is not None:
            self._reload_task.cancel()
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

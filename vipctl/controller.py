"""Orchestration: spec -> layout -> ruleset -> kernel -> state, for every backend.

One `apply` runs for nftables and tc alike: the backend (backends/base.py, chosen by
`backend_for`) renders, commits and reads back; the host (`Box`: links, preflight checks,
ARP/ND announcement) is the box around the rules. Both are arguments, so the decisions
here (adopting the kernel's table, the digest shortcut, the write order, the restore on a
refusal) are unit-tested over fakes. No printing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from vipctl import statefile
from vipctl.backends.base import Backend, Live, Plan
from vipctl.core import plan as planning
from vipctl.core import transition
from vipctl.core.partition import Layout, Table, count, fingerprint, shares
from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import KernelError, StateError, VipctlError
from vipctl.render.wiring import NO_MAC, Wiring

if TYPE_CHECKING:
    from vipctl.core import retune as retuning
    from vipctl.host.doctor import Finding


@dataclass(frozen=True)
class ApplyResult:
    generation: int
    changed: bool
    dry_run: bool
    ruleset: str
    diff: str
    moved: int
    lower_bound: int
    seconds: float
    layout: Layout
    backend: str = "nftables"
    moving: int = 0  # buckets in transition once applied
    recorded_s: float = 0.0  # how long the record step waited
    # What the state file should hold now, and why it does not (state_write_failure=
    # "continue" only): the caller keeps `state` and passes it back as `unsaved`.
    state: statefile.ClusterState | None = None
    state_error: str | None = None


# "raise": the state cannot be written, nothing changes (the CLI: exit 1, nothing done).
# "continue": commit anyway and report it in ApplyResult.state_error (the daemon: a dead
# member must leave the table even when the disk is full or read-only; the kernel is the
# truth and the daemon keeps the state in memory until it can write it).
StateWriteFailure = Literal["raise", "continue"]


# --------------------------------------------------------------------------------------
# What apply needs from outside: a backend and the host
# --------------------------------------------------------------------------------------


Backends = Callable[[Spec | str], Backend]  # spec (or backend name) -> its backend


def backend_for(spec: Spec | str) -> Backend:
    """The one place that maps `spec.backend` to its implementation."""
    name = spec if isinstance(spec, str) else spec.backend
    if name == "tc":
        from vipctl.backends.tc import TcBackend

        return TcBackend()
    from vipctl.backends.nft import NftBackend

    return NftBackend()


class Box(Protocol):
    """The host around the rules."""

    def wiring(self, spec: Spec, optional: Collection[str]) -> Wiring: ...

    def preflight(self, spec: Spec, down: Collection[str]) -> list[Finding]: ...

    def announce(self, spec: Spec, enabled: bool | None = None) -> list[str]: ...

    def announce_check(self, spec: Spec) -> None:
        """Raise KernelError if `announce(spec)` could not succeed (checked before a commit)."""


class LiveBox:
    """This network namespace."""

    def wiring(self, spec: Spec, optional: Collection[str]) -> Wiring:
        from vipctl.host import links

        return links.wiring(spec, optional=set(optional))

    def preflight(self, spec: Spec, down: Collection[str]) -> list[Finding]:
        return preflight(spec, down)

    def announce(self, spec: Spec, enabled: bool | None = None) -> list[str]:
        from vipctl.host import announce

        return announce.sync(spec, enabled)

    def announce_check(self, spec: Spec) -> None:
        from vipctl.host import announce

        announce.check(spec)


def preflight(spec: Spec, down: Collection[str] = ()) -> list[Finding]:
    """The doctor's checks against this network namespace."""
    from vipctl.host import doctor

    check_batch = None
    if spec.backend == "nftables":
        try:
            from vipctl.backends import nft
        except ImportError:  # the bindings are missing: the kernel check says so
            pass
        else:
            check_batch = nft.check
    return doctor.run_checks(spec, doctor.LiveHost(check_batch=check_batch), down)


# --------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------


@dataclass
class Cache:
    """What a long-running caller (the daemon) keeps between its applies: the structure
    and wiring of its own last commit. While the state's generation is that commit's (no
    one else committed since: every commit holds the cluster's lock and writes the
    state), a failover skips the netlink reads before the commit and the read-back after
    it (`verify_live` does that off the critical path)."""

    generation: int = -1
    backend: str = ""
    live: Live | None = None
    wiring: Wiring | None = None
    last: Plan | None = None

    def covers(self, spec: Spec, layout: Layout) -> bool:
        """Does the cached wiring hold every port, and the MAC of every member that is up?"""
        w = self.wiring
        if w is None:
            return False
        return all(
            m.port in w.ifindex and w.macs.get(m.name, NO_MAC) != NO_MAC
            for m in spec.members
            if m.name not in layout.down
        )

    def remember(self, be: Backend, plan: Plan, wiring: Wiring) -> None:
        self.generation, self.backend, self.wiring, self.last = (
            plan.generation,
            be.name,
            wiring,
            plan,
        )
        self.live = be.assumed(plan)

    def forget(self) -> None:
        self.generation, self.live, self.wiring, self.last = -1, None, None, None


def verify_live(cache: Cache, backends: Backends | None = None) -> None:
    """Read back the cache's last commit (KernelError on a difference; the cache is then
    forgotten, so the next apply reads the kernel)."""
    plan = cache.last
    if plan is None:
        return
    pick = backends if backends is not None else backend_for
    try:
        pick(plan.spec).verify(plan, whole=False)
    except KernelError:
        cache.forget()
        raise


def _previous(
    spec: Spec, st: statefile.ClusterState | None, live: Live | None, backend: Backend
) -> tuple[Layout | None, int]:
    """What was live: the state file's layout, else the kernel's own table (adopt)."""
    live_gen = live.generation if live is not None else None
    kernel_ahead = st is not None and live_gen is not None and live_gen > st.generation
    if st is not None and st.layout.bits == spec.partition.bits and not kernel_ahead:
        # (state ahead of the kernel: a crash between the state write and the commit; the
        # state holds what was meant to be live, so converge to it)
        return st.layout, max(st.generation, live_gen or 0)
    if live is not None:
        found = backend.live_table(spec, live)
        if found is not None:
            table, _ = found
            weights = planning.spec_weights(spec)
            adopted = Layout(bits=spec.partition.bits, weights=weights, base=table, table=table)
            return adopted, live_gen or 0
    return None, (st.generation if st else live_gen or 0)


def _recorded(st: statefile.ClusterState | None) -> Spec | None:
    if st is None or not st.spec:
        return None
    try:
        return parse_spec(st.spec, "state")
    except Exception:  # a state written by another version: not trusted, re-derived
        return None


def _diff(old: str, new: str) -> str:
    import difflib  # only for --diff and --dry-run

    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), "live", "new", n=1
        )
    )


def apply(
    spec: Spec,
    directory: Path,
    *,
    dry_run: bool = False,
    down: set[str] | None = None,
    want_diff: bool = True,
    preflight: bool = False,
    host: bool = True,
    reasons: Mapping[str, str] | None = None,
    backends: Backends | None = None,
    box: Box | None = None,
    cache: Cache | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    state_write_failure: StateWriteFailure = "raise",
    unsaved: statefile.ClusterState | None = None,
    layout: Layout | None = None,
    expect_generation: int | None = None,
    measuring: bool = False,
) -> ApplyResult:
    """Compute and install the cluster's ruleset in one atomic step (idempotent).

    Buckets that change owner go through a transition (core/transition.py) when the
    backend keeps flow state and `pinning.mode` is moving: first, for `pinning.record_ms`,
    one commit records the UDP flows of the newly moving buckets; then one commit moves
    them. Transitions that are due and whose flows are gone settle back to the stateless
    path in the same apply. Buckets of a member that is down move at once.

    `preflight` runs the doctor's checks first (the CLI does; the daemon's failovers do
    not: they take 0.3-0.5 s) and refuses, changing nothing, on any error. `host` also
    converges the uplink's ARP/ND answering for the VIPs (spec.announce_vips); it depends
    only on the spec, so a failover can skip it. `down=None` keeps the health the state
    recorded. `unsaved` is a state a previous apply could not write (see StateWriteFailure):
    it stands for the file while it is newer, and is written when the file can be.
    `layout` installs exactly that layout instead of computing one from the previous
    (another router's, `apply --layout`; or re-tuning); `expect_generation` refuses,
    changing nothing, when the state's generation is another by then (someone committed
    since the caller read it). `measuring` renders the table with per-bucket load
    counting (`measure`); any apply without it switches the counting off."""
    started = time.perf_counter()
    pick = backends if backends is not None else backend_for
    be = pick(spec)
    bx = box if box is not None else LiveBox()
    be.refuse(spec)
    keep_going = state_write_failure == "continue"
    with statefile.locked(directory, spec.cluster, required=not keep_going):
        st = statefile.load(directory, spec.cluster)
        behind = unsaved is not None and (st is None or unsaved.generation > st.generation)
        if behind:
            st = unsaved
        if expect_generation is not None and (st is None or st.generation != expect_generation):
            raise StateError(
                f"cluster {spec.cluster} changed while measuring (generation "
                f"{st.generation if st else None}, {expect_generation} was measured): "
                "nothing changed, run it again"
            )
        recorded = _recorded(st)
        # the daemon's own last commit, when nobody committed since: no netlink read
        fast = (
            cache is not None
            and st is not None
            and cache.generation == st.generation
            and cache.backend == be.name
            and cache.live is not None
        )
        live = cache.live if fast and cache is not None else be.observe(spec)
        if (
            live is not None
            and not live.complete
            and (st is None or live.generation != st.generation)
        ):
            # the state does not describe the kernel: read the table the full way
            live = be.observe(spec, complete=True)
        previous, generation = _previous(spec, st, live, be)
        if layout is not None:
            # `apply --layout`: exactly the peer's table (checked against the spec by
            # core/layoutfile.py); `down` given still overrides its health
            layout = layout if down is None else layout.with_down(down)
        else:
            layout = planning.desired(spec, previous, down=down)
        if fast and cache is not None and cache.wiring is not None and cache.covers(spec, layout):
            wiring = cache.wiring  # every member that is up has its MAC and port already
        else:
            wiring = bx.wiring(spec, set(layout.down))
        if preflight and not dry_run:
            _preflight(bx, spec, layout.down)
        # The state describes the kernel exactly when the live generation is the one it
        # recorded, by this backend, on the same ports (ifindex) as now: then nothing
        # needs reading back.
        trusted = (
            previous is not None
            and live is not None
            and st is not None
            and recorded is not None
            and recorded.backend == spec.backend
            and live.generation == st.generation
            and st.ifindex == dict(wiring.ifindex)
        )
        before = st.moving if st is not None else {}
        moving: dict[int, transition.Move] = {}
        if be.transitions and spec.pinning.mode == "moving":
            now = clock()
            if before and transition.due(before, now, spec.pinning.idle_timeout_s):
                before = transition.settle(
                    before, _flow_buckets(be, spec), now, spec.pinning.idle_timeout_s
                )
            table = previous.table if previous is not None else None
            moving = transition.plan_moves(table, layout.table, before, layout.down, now)
        fresh = transition.newly_moving(moving, before)
        record_s = spec.pinning.record_ms / 1000 if fresh and not dry_run else 0.0
        plan = be.plan(
            spec,
            layout,
            wiring,
            generation + 1,
            live,
            recorded if trusted else None,
            moving,
            measuring,
        )
        change = planning.Change(previous, layout)

        state_error: str | None = None

        def result(changed: bool, text: str = "", diff: str = "") -> ApplyResult:
            return ApplyResult(
                generation=generation + (1 if changed and not dry_run else 0),
                changed=changed,
                dry_run=dry_run,
                ruleset=text,
                diff=diff,
                moved=len(change.moved) if changed else 0,
                lower_bound=change.lower_bound if changed else 0,
                seconds=time.perf_counter() - started,
                layout=layout,
                backend=be.name,
                moving=len(moving),
                recorded_s=record_s if changed else 0.0,
                state=new_state,
                state_error=state_error,
            )

        new_state = statefile.ClusterState(
            cluster=spec.cluster,
            generation=generation + 1,
            layout=layout,
            digest=plan.digest,
            spec=spec.model_dump(mode="json"),
            ifindex=dict(wiring.ifindex),
            macs=dict(wiring.macs),
            reasons={**(st.reasons if st else {}), **(reasons or {})},
            moving=moving,
        )
        if trusted and st is not None and st.digest == plan.digest:
            new_state = dataclasses.replace(new_state, generation=st.generation)
            if not dry_run:
                if behind or (new_state.spec, new_state.reasons, moving) != (
                    st.spec,
                    st.reasons,
                    st.moving,
                ):
                    # the kernel is right; the state learns the spec (addresses, health
                    # settings) and the reasons, keeping its generation
                    state_error = _save(directory, new_state, keep_going)
                if host:
                    bx.announce(spec)  # not part of the ruleset digest
            return result(False, plan.text if want_diff or dry_run else "")
        diff = ""
        if want_diff:
            diff = _diff(
                _old_text(be, recorded, previous, wiring, st, generation, trusted), plan.text
            )
        if dry_run:
            be.check(plan)
            return result(True, plan.text, diff)
        if host:
            bx.announce_check(spec)  # a refusal after the commit would be too late
        if record_s > 0:
            # record first: the newly moving buckets deliver to their old owner and record
            # their UDP flows; then the move below. Each step is one transaction.
            rec = transition.recording(moving, fresh)
            first = be.plan(
                spec,
                layout,
                wiring,
                generation + 1,
                live,
                recorded if trusted else None,
                rec,
                measuring,
            )
            state_error = _commit(
                be,
                first,
                directory,
                dataclasses.replace(new_state, digest=first.digest, moving=rec),
                whole=not trusted,
                keep_going=keep_going,
            )
            sleep(record_s)
            generation += 1
            # we hold the lock: what is live is what we just committed (no read-back)
            live = be.assumed(first) or be.observe(spec)
            plan = be.plan(spec, layout, wiring, generation + 1, live, spec, moving, measuring)
            new_state = dataclasses.replace(
                new_state, generation=generation + 1, digest=plan.digest
            )
        state_error = (
            _commit(
                be,
                plan,
                directory,
                new_state,
                whole=not trusted and record_s == 0,
                verify=not fast,
                keep_going=keep_going,
            )
            or state_error
        )
        if cache is not None:
            cache.remember(be, plan, wiring)
        if recorded is not None and recorded.backend != spec.backend:
            # the cluster moved to another backend: the new rules are live, remove the old
            pick(recorded).down(recorded, spec.cluster)
        if host:
            bx.announce(spec)
        return result(True, plan.text if want_diff else "", diff)


def _old_text(
    be: Backend,
    recorded: Spec | None,
    previous: Layout | None,
    wiring: Wiring,
    st: statefile.ClusterState | None,
    generation: int,
    trusted: bool,
) -> str:
    """The live ruleset as text, re-rendered from the state (for --diff)."""
    if not trusted or recorded is None or previous is None or st is None:
        return ""
    old_wiring = Wiring(ifindex=wiring.ifindex, macs={**wiring.macs, **st.macs})
    try:
        return be.render(recorded, previous, old_wiring, generation).text
    except KeyError:
        return ""


def _flow_buckets(be: Backend, spec: Spec) -> set[int] | None:
    """Buckets that still hold a recorded flow; None when unknown (then nothing settles)."""
    try:
        return be.flow_buckets(spec)
    except KernelError:
        return None


def _save(directory: Path, state: statefile.ClusterState, keep_going: bool) -> str | None:
    """Write the state; on failure raise StateError (nothing changed yet), or with
    `keep_going` return what failed."""
    try:
        statefile.save(directory, state)
    except OSError as exc:
        what = f"cannot write the state of {state.cluster} in {directory}: {exc.strerror}"
        if keep_going:
            return what
        raise StateError(f"{what}; nothing changed") from None
    return None


def _commit(
    be: Backend,
    plan: Plan,
    directory: Path,
    state: statefile.ClusterState,
    *,
    whole: bool,
    verify: bool = True,
    keep_going: bool = False,
) -> str | None:
    """The state is written first: a crash between the two leaves a state that is ahead of
    the kernel, which the next apply converges to. The other order would leave the kernel
    ahead with stale health in the state. A refused commit puts the old state back.
    `verify` False (the daemon's fast path): the commit's all-or-nothing answer is taken
    as it is; the daemon reads back after the swap (`verify_live`).

    A state that cannot be written stops the commit, unless `keep_going`: then the commit
    happens anyway and the failure is returned (a crash before the state is written later
    leaves the kernel ahead of the file, which the next apply adopts without moving a
    bucket)."""
    try:
        saved = statefile.read_raw(directory, state.cluster)
    except OSError:
        if not keep_going:
            raise
        saved = None
        readable = False
    else:
        readable = True
    error = _save(directory, state, keep_going)
    try:
        be.commit(plan)
    except BaseException:
        if error is None and readable:
            statefile.restore_raw(directory, state.cluster, saved)
        raise
    if verify:
        be.verify(plan, whole=whole)
    return error


def _preflight(box: Box, spec: Spec, down: tuple[str, ...]) -> None:
    found = [f for f in box.preflight(spec, down) if f.status == "error"]
    if found:
        raise KernelError(
            "preflight check failed, nothing changed: "
            + "; ".join(f"{f.check}: {f.message} (fix: {f.fix})" for f in found)
        )


@dataclass(frozen=True)
class RetuneResult:
    solved: retuning.Retune
    metric: str
    window: float
    generation: int  # the generation that was measured
    applied: ApplyResult | None  # None: nothing to move, or the tolerance is out of reach
    load: list[tuple[int, int]]  # (packets, bytes) per bucket


def _installed(spec: Spec, directory: Path) -> statefile.ClusterState:
    st = statefile.load(directory, spec.cluster)
    if st is None:
        raise KernelError(f"cluster {spec.cluster} is not installed here; run vipctl apply first")
    expected = planning.desired(spec, st.layout)
    if expected.table != st.layout.table:
        n = len(planning.Change(st.layout, expected).moved)
        raise StateError(
            f"the spec differs from what is live for cluster {spec.cluster} ({n} buckets "
            "would move): apply it first, then re-tune"
        )
    return st


def installed_spec(cluster: str, directory: Path) -> Spec:
    """The spec the state says is live for `cluster`."""
    spec = _recorded(statefile.load(directory, cluster))
    if spec is None:
        raise KernelError(f"cluster {cluster} is not installed here (no state in {directory})")
    return spec


@dataclass(frozen=True)
class Measuring:
    """A measurement under way: the counting table's generation and the counts at start."""

    generation: int
    baseline: list[tuple[int, int]]


def measure_start(
    spec: Spec,
    directory: Path,
    *,
    backends: Backends | None = None,
    window: float | None = None,
    **apply_args: Any,
) -> Measuring:
    """Switch per-bucket load counting on: one apply (one transaction, a new generation)
    of the same layout with the counters in the cluster's own ingress rule. A lease in
    the state directory (statefile.measuring_begin, until `window` and a grace have
    passed) lets the daemon switch it off when this process dies before measure_stop."""
    st = _installed(spec, directory)
    pick = backends if backends is not None else backend_for
    statefile.measuring_begin(directory, spec.cluster, window or 3600.0)
    try:
        res = apply(
            spec,
            directory,
            measuring=True,
            preflight=False,
            host=False,
            want_diff=False,
            expect_generation=st.generation,
            backends=backends,
            **apply_args,
        )
    except VipctlError:
        statefile.measuring_end(directory, spec.cluster)  # refused: nothing counts
        raise
    baseline = pick(spec).read_load(spec)  # counters a crashed run left keep their counts
    if baseline is None:
        raise KernelError(f"cluster {spec.cluster}: the load counters did not appear")
    return Measuring(res.generation, baseline)


def measure_stop(
    spec: Spec,
    directory: Path,
    started: Measuring,
    *,
    backends: Backends | None = None,
    **apply_args: Any,
) -> tuple[statefile.ClusterState, list[tuple[int, int]]]:
    """Read the counters, then switch counting off (one apply, refused if anyone committed
    since `measure_start`: their commit switched it off already). (the state after, the
    (packets, bytes) per bucket since the start)."""
    pick = backends if backends is not None else backend_for
    st = statefile.load(directory, spec.cluster)
    found = pick(spec).read_load(spec) if st and st.generation == started.generation else None
    if found is None:
        statefile.measuring_end(directory, spec.cluster)  # that commit switched it off
        raise KernelError(
            "the measurement was interrupted: another commit replaced the table during the "
            "window (a failover?); nothing changed, run it again"
        )
    res = apply(
        spec,
        directory,
        preflight=False,
        host=False,
        want_diff=False,
        expect_generation=started.generation,
        backends=backends,
        **apply_args,
    )
    statefile.measuring_end(directory, spec.cluster)
    after = res.state or statefile.load(directory, spec.cluster)
    if after is None:
        raise KernelError(f"cluster {spec.cluster} is not installed here")
    load = [
        (max(0, p - p0), max(0, b - b0))
        for (p, b), (p0, b0) in zip(found, started.baseline, strict=True)
    ]
    return after, load


def measure(
    spec: Spec,
    directory: Path,
    window: float,
    *,
    backends: Backends | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[statefile.ClusterState, list[tuple[int, int]]]:
    """(the state after measuring, (packets, bytes) per bucket over `window` seconds),
    counted in the cluster's own ingress rule: one commit switches it on, one off, both
    through apply (generation and state stay consistent). The cluster's lock is held only
    for those commits: a failover during the window commits a table without counting,
    and the measurement is reported interrupted, changing nothing."""
    started = measure_start(spec, directory, backends=backends, sleep=sleep, window=window)
    try:
        sleep(window)
    except BaseException:
        with contextlib.suppress(VipctlError):
            measure_stop(spec, directory, started, backends=backends, sleep=sleep)
        raise
    return measure_stop(spec, directory, started, backends=backends, sleep=sleep)


AIM = 0.8  # re-tuning aims at 1 + AIM * (tolerance - 1): room for measurement noise


def retune(
    spec: Spec,
    directory: Path,
    *,
    window: float = 10.0,
    tolerance: float = 1.1,
    metric: str = "packets",
    dry_run: bool = False,
    max_moves: int | None = None,
    backends: Backends | None = None,
    box: Box | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> RetuneResult:
    """Measure each bucket's load for `window` seconds, then move the fewest buckets that
    bring every member within `tolerance` of its weighted share (core/retune.py), through
    the transition path (apply with the re-tuned layout): live flows stay.

    It acts only when the measured imbalance is above `tolerance`, and then aims a little
    tighter (AIM), so a second run on unchanged traffic moves nothing. The cluster's lock
    is not held while measuring (a failover must not wait); a commit by anyone else during
    the window makes the re-tune refuse, changing nothing."""
    st, load = measure(spec, directory, window, backends=backends, sleep=sleep)
    return retune_measured(
        spec,
        directory,
        st,
        load,
        window=window,
        tolerance=tolerance,
        metric=metric,
        dry_run=dry_run,
        max_moves=max_moves,
        backends=backends,
        box=box,
        sleep=sleep,
        clock=clock,
    )


def retune_measured(
    spec: Spec,
    directory: Path,
    st: statefile.ClusterState,
    load: list[tuple[int, int]],
    *,
    window: float,
    tolerance: float = 1.1,
    metric: str = "packets",
    dry_run: bool = False,
    max_moves: int | None = None,
    backends: Backends | None = None,
    box: Box | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    **apply_args: Any,
) -> RetuneResult:
    """The second half of `retune`: solve on what `measure` returned and apply (refused,
    changing nothing, when the state's generation is no longer `st`'s). The daemon measures
    without holding its apply slot and calls this holding it; `apply_args` go to apply
    (cache, reasons, state_write_failure, ...)."""
    from vipctl.core import retune as retuning  # only when re-tuning

    values = [float(p if metric == "packets" else b) for p, b in load]
    layout = st.layout
    solved = retuning.solve(
        layout.table,
        values,
        layout.weights,
        tolerance,
        down=layout.down,
        aim=1 + AIM * (tolerance - 1),
        max_moves=max_moves,
    )
    applied = None
    if solved.reachable and solved.moved:
        # with every member up the re-tuned table is also the base a recovery returns to;
        # with members down it is the current step (a recovery undoes to the stack's table)
        base = solved.table if not layout.down else layout.base
        new = dataclasses.replace(layout, table=solved.table, base=base)
        applied = apply(
            spec,
            directory,
            dry_run=dry_run,
            layout=new,
            expect_generation=st.generation,
            preflight=False,
            backends=backends,
            box=box,
            sleep=sleep,
            clock=clock,
            **apply_args,
        )
    return RetuneResult(solved, metric, window, st.generation, applied, load)


def spec_with_weights(spec: Spec, weights: Mapping[str, Fraction]) -> Spec:
    """The spec as it stands after `rebalance --weights` (what the state remembers)."""
    data = spec.model_dump(mode="json")
    for m in data["members"]:
        if m["name"] in weights:
            m["weight"] = float(weights[m["name"]])
    return parse_spec(data)


# --------------------------------------------------------------------------------------
# down, clusters, status, which
# --------------------------------------------------------------------------------------


def down(
    cluster: str, directory: Path, *, box: Box | None = None, backends: Backends | None = None
) -> bool:
    """Remove the cluster's kernel objects (any backend) and state; touches nothing else.
    A cluster with neither is "not installed" (KernelError, exit 1), as for `status`."""
    statefile.checked(cluster)
    bx = box if box is not None else LiveBox()
    pick = backends if backends is not None else backend_for
    if statefile.read_raw(directory, cluster) is None and not _nft_has(pick, cluster):
        # checked before the lock, so an unknown name leaves no lock file behind
        raise KernelError(f"cluster {cluster} is not installed (no state in {directory})")
    with statefile.locked(directory, cluster):
        st = statefile.load(directory, cluster)
        spec = _recorded(st)
        removed = False
        if spec is not None and spec.bgp is not None:
            # withdraw first and let the upstream move the traffic to the other routers,
            # then remove the rules (no black hole)
            from vipctl.host import bgp

            bgp.withdraw(spec, directory)
        if spec is not None:
            bx.announce(spec, False)  # stop answering ARP/ND for its VIPs
            if spec.backend != "nftables":
                removed = pick(spec).down(spec, cluster)
        # the nftables table is found by name, with or without a state
        try:
            removed = pick("nftables").down(spec, cluster) or removed
        except KernelError:
            if spec is None or spec.backend == "nftables":
                raise
            # a tc cluster on a box whose nftables cannot be read: there is no table

        if spec is not None and spec.bgp is not None:
            from vipctl.host import bgp

            bgp.stop(cluster, directory)
        statefile.remove(directory, cluster)
        if not removed and st is None:
            raise KernelError(f"cluster {cluster} is not installed (no state in {directory})")
        return removed


def _nft_has(pick: Backends, cluster: str) -> bool:
    """An nftables table of that cluster exists (found by name, with or without a state)."""
    try:
        return cluster in pick("nftables").clusters([])
    except KernelError:
        return False


def _known_specs(directory: Path) -> list[Spec]:
    out = []
    for name in statefile.clusters(directory):
        try:
            spec = _recorded(statefile.load(directory, name))
        except StateError:
            continue
        if spec is not None:
            out.append(spec)
    return out


def clusters(directory: Path, *, backends: Backends | None = None) -> list[str]:
    """Every cluster installed here, whatever its backend."""
    pick = backends if backends is not None else backend_for
    known = _known_specs(directory)
    names: set[str] = set()
    for backend in ("nftables", "tc"):
        users = [s for s in known if s.backend == backend]
        if backend == "tc" and not users:
            continue
        try:
            names.update(pick(backend).clusters(known))
        except KernelError:
            if backend == "nftables" and not any(s.backend != "nftables" for s in known):
                raise  # only nftables clusters here: its error is the answer
            # nftables unreadable on a box that runs tc clusters: list those
    return sorted(names)


def status(
    cluster: str, directory: Path, *, backends: Backends | None = None, pins: bool = True
) -> dict[str, Any]:
    """What the kernel says is live, joined with the state (weights, health).

    `pins=False` leaves out each member's `pinned` count, which reads every pin map (up to
    `pinning.max_flows` elements each): the metrics endpoint counts them on its own clock."""
    statefile.checked(cluster)
    pick = backends if backends is not None else backend_for
    st = statefile.load(directory, cluster)
    spec = _recorded(st)
    if st is None or spec is None:
        if cluster not in pick("nftables").clusters([]):
            raise KernelError(f"cluster {cluster} is not installed (no state in {directory})")
        raise StateError(
            f"cluster {cluster} is live but has no state in {directory}; run vipctl apply"
        )
    be = pick(spec)
    live = be.observe(spec, complete=True)
    if live is None:
        raise KernelError(f"cluster {cluster} is not installed ({be.name} backend)")
    found = be.live_table(spec, live)
    live_counts = count(found[0]) if found else {}
    layout = st.layout
    targets = {s.name: s for s in shares(layout, with_entries=False)}
    counters = be.counters(spec, live)
    pinned = be.pin_counts(spec) if pins else {}
    members = []
    total = spec.partition.buckets
    for m in spec.members:
        packets, nbytes = counters.get(m.name, (0, 0))
        share = targets.get(m.name)
        members.append(
            {
                "name": m.name,
                "port": m.port,
                "address": str(m.address),
                "healthy": m.name not in layout.down,
                "reason": st.reasons.get(m.name, ""),
                "weight": planning.weight_number(dict(layout.weights).get(m.name, Fraction(0))),
                "buckets": live_counts.get(m.name, 0),
                "share": round(live_counts.get(m.name, 0) / total, 6),
                "target": round(share.target, 6) if share else 0.0,
                "packets": packets,
                "bytes": nbytes,
            }
        )
        if pins:
            members[-1]["pinned"] = pinned.get(m.name, 0)
    p = spec.partition
    report: dict[str, Any] = {
        "cluster": cluster,
        "backend": be.name,
        "generation": live.generation,
        "mode": spec.mode,
        # of the table packets meet (the kernel's), not of the state's
        "fingerprint": fingerprint(found[0], p.key, p.bits, p.seed) if found else None,
        "key": spec.partition.key,
        "bits": spec.partition.bits,
        "vips": [str(v) for v in spec.vips],
        "uplink": spec.uplink,
        "in_sync": live.generation == st.generation
        and found is not None
        and found[0] == layout.table,
        "members": members,
    }
    offload = be.offload(live)
    if offload is not None:
        report["offload"] = offload
    return report


def exportable(
    cluster: str, directory: Path, *, backends: Backends | None = None
) -> tuple[Spec, Layout]:
    """The spec and layout of an installed cluster, when the kernel holds exactly the
    table the state describes (else a peer would copy a table that is not live)."""
    pick = backends if backends is not None else backend_for
    st = statefile.load(directory, cluster)
    spec = _recorded(st)
    if st is None or spec is None:
        raise StateError(f"cluster {cluster} has no state in {directory}; run vipctl apply")
    found = pick(spec).live_table(spec)
    if found is None:
        raise KernelError(f"cluster {cluster} is not installed")
    if found[0] != st.layout.table:
        raise StateError(
            f"cluster {cluster}: the kernel's table differs from the state's; run vipctl "
            "apply first"
        )
    layout = st.layout
    if not layout.canonical():
        # a state from an older version: export the table its base and set give
        layout = Layout.of(layout.bits, layout.weights, layout.base, layout.down)
    return spec, layout


def pin_counts(cluster: str, directory: Path) -> dict[str, int]:
    """Pinned flows per member of an installed cluster ({} without a state or pinning)."""
    spec = _recorded(statefile.load(directory, cluster))
    return backend_for(spec).pin_counts(spec) if spec is not None else {}


def live_table(spec: Spec) -> tuple[Table, dict[int, Table]] | None:
    """The bucket table packets meet now, read from the kernel (None: not installed).
    Without a Live the backend reads only what the table needs (for `which`: nftables
    lists the owner maps and nothing else)."""
    return backend_for(spec).live_table(spec)


def live_layout(spec: Spec) -> Layout | None:
    """For `which`: the live table as a Layout (None when not installed)."""
    try:
        found = live_table(spec)
    except KernelError:
        return None
    if found is None:
        return None
    table, _ = found
    return Layout(
        bits=spec.partition.bits, weights=tuple(spec.weights.items()), base=table, table=table
    )


def pins_in_moved_buckets(spec: Spec, moved_buckets: list[int]) -> tuple[int, int]:
    """(pinned flows whose source bucket moves, pinned flows whose bucket is unknown)."""
    moving = set(moved_buckets)
    _, flows = backend_for(spec).pinned(spec)
    inside = sum(1 for b, _ in flows if b is not None and b in moving)
    unknown = sum(1 for b, _ in flows if b is None)
    return inside, unknown

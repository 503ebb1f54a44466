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
from vipctl.core import reconcile, transition
from vipctl.core.partition import Layout, Table, count, fingerprint, shares
from vipctl.core.spec import (
    RETUNE_METRIC,
    RETUNE_TOLERANCE,
    RETUNE_WINDOW_S,
    Spec,
    parse_spec,
)
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
    failover: bool = False  # members went down: committed at once, no record step
    repaired: tuple[str, ...] = ()  # the kernel differed from the state: what, replaced whole


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
    if name == "xdp":
        from vipctl.backends.xdp import XdpBackend

        return XdpBackend()
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
            # the weights in force, and the members the state knew down that own nothing
            # live (they stay down: a stale state must not hand them buckets back)
            weights = tuple(weights_in_force(spec, st).items())
            down = tuple(n for n in (st.layout.down if st else ()) if n not in table)
            adopted = Layout(
                bits=spec.partition.bits, weights=weights, base=table, down=down, table=table
            )
            return adopted, live_gen or 0
    return None, (st.generation if st else live_gen or 0)


def _recorded(st: statefile.ClusterState | None) -> Spec | None:
    if st is None or not st.spec:
        return None
    try:
        return parse_spec(st.spec, "state")
    except Exception:  # a state written by another version: not trusted, re-derived
        return None


@dataclass(frozen=True)
class ApplyOptions:
    """What one apply is asked to do (the command line's and the daemon's knobs).

    `down` None keeps the health the state recorded. `weights` sets the weights in force
    (`rebalance --weights`, or a peer's with `layout`; core/reconcile.py Intent): they stay
    in force for every later apply of a spec with the same weights. `layout` installs
    exactly that layout (a peer's, `apply --layout`; a re-tune's). `expect_generation`
    refuses, changing nothing, when the state's generation is another by then. `measuring`
    renders per-bucket load counting (`measure`); any apply without it switches it off.
    `check_drift` reads the kernel's owner maps back before deciding and replaces the whole
    table when they differ from the state (the command line always; the daemon when the
    kernel's ruleset changed under it, not on a failover). `preflight` runs the doctor's
    checks first; `host` converges the uplink's ARP/ND answering for the VIPs. `unsaved`
    is a state a previous apply could not write (StateWriteFailure): it stands for the
    file while it is newer."""

    dry_run: bool = False
    down: Collection[str] | None = None
    want_diff: bool = True
    preflight: bool = False
    host: bool = True
    reasons: Mapping[str, str] | None = None
    state_write_failure: StateWriteFailure = "raise"
    unsaved: statefile.ClusterState | None = None
    layout: Layout | None = None
    weights: Mapping[str, Fraction] | None = None
    intent_source: str = "rebalance"
    intent_generation: int | None = None  # the shared store's generation being installed
    expect_generation: int | None = None
    measuring: bool = False
    check_drift: bool = True


@dataclass
class Env:
    """What apply runs against: the backends, the host, the daemon's cache, the clock."""

    backends: Backends | None = None
    box: Box | None = None
    cache: Cache | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def backend(self, spec: Spec | str) -> Backend:
        return (self.backends or backend_for)(spec)

    @property
    def host(self) -> Box:
        return self.box if self.box is not None else LiveBox()


@dataclass(frozen=True)
class _Seen:
    """What `_observe` found: the state (or the unsaved one standing for it), the spec it
    recorded, the kernel's view, and whether it came from the daemon's cache."""

    st: statefile.ClusterState | None
    behind: bool
    recorded: Spec | None
    live: Live | None
    fast: bool


def apply(
    spec: Spec,
    directory: Path,
    options: ApplyOptions | None = None,
    env: Env | None = None,
) -> ApplyResult:
    """Converge the kernel to the cluster's desired state in one atomic step (idempotent):
    observe, decide (core/reconcile.py), plan, then nothing (the kernel is right), or
    check, commit, verify, save.

    Buckets that change owner go through a transition (core/transition.py) when the
    backend keeps flow state and `pinning.mode` is moving: first, for `pinning.record_ms`,
    one commit records the UDP flows of the newly moving buckets; then one commit moves
    them. A change that takes a member down commits at once. Transitions that are due and
    whose flows are gone settle back to the stateless path in the same apply."""
    opts = options or ApplyOptions()
    env = env or Env()
    started = time.perf_counter()
    be = env.backend(spec)
    be.refuse(spec)
    with statefile.locked(directory, spec.cluster, required=opts.state_write_failure == "raise"):
        ctx, work = _decide(spec, directory, opts, env, be)
        outcome = _Outcome(spec, opts, be, work.decision, work.previous, work.generation, started)
        st = ctx.seen.st
        if st is not None and reconcile.unchanged(work.decision, st.digest, work.plan.digest):
            return _up_to_date(ctx, outcome, work)
        diff = _diff(work.old_text(be, ctx.seen), work.plan.text) if opts.want_diff else ""
        if opts.dry_run:
            be.check(work.plan)
            return outcome.result(True, work.state, work.plan.text, diff)
        return _install(ctx, outcome, work, diff)


@dataclass(frozen=True)
class _Work:
    """What apply decided and rendered: the layout live before and its generation, the
    decision, the wiring it was rendered for, the plan and the state to save with it."""

    previous: Layout | None
    generation: int
    trusted: bool
    decision: reconcile.Decision
    wiring: Wiring
    plan: Plan
    state: statefile.ClusterState

    def old_text(self, be: Backend, seen: _Seen) -> str:
        return _old_text(
            be, seen.recorded, self.previous, self.wiring, seen.st, self.generation, self.trusted
        )


def _decide(
    spec: Spec, directory: Path, opts: ApplyOptions, env: Env, be: Backend
) -> tuple[_Context, _Work]:
    """Observe, build the desired state, check the kernel against the state, decide and
    plan. Reads the kernel (unless the daemon's cache stands for it); changes nothing."""
    seen = _observe(be, spec, directory, opts, env.cache)
    ctx = _Context(be, spec, directory, env, seen, opts)
    previous, generation = _previous(spec, seen.st, seen.live, be)
    desired, intent = _desired(spec, seen.st, opts, be)
    layout = reconcile.target_layout(desired, previous)
    wiring = _wiring(env, spec, layout, seen.fast)
    if opts.preflight and not opts.dry_run:
        _preflight(env.host, spec, layout.down)
    trusted = _trusted(spec, seen, previous, wiring)
    observed = reconcile.Observed(
        previous=previous,
        moving=seen.st.moving if seen.st is not None else {},
        flows=_flows_if_due(be, spec, seen.st, desired, env.clock()),
        trusted=trusted,
        drift=(
            (_drift(be, spec, seen, wiring) if opts.check_drift else ())
            if trusted
            else _untrusted(seen, wiring)
        ),
    )
    decision = reconcile.decide(desired, observed, env.clock())
    if opts.dry_run:
        decision = dataclasses.replace(decision, record=(), record_s=0.0)
    plan = be.plan(
        spec,
        decision.layout,
        wiring,
        generation + 1,
        seen.live,
        seen.recorded if trusted and not decision.whole else None,
        decision.moving,
        opts.measuring,
    )
    state = statefile.ClusterState(
        cluster=spec.cluster,
        generation=generation + 1,
        layout=decision.layout,
        digest=plan.digest,
        spec=spec.model_dump(mode="json"),
        ifindex=dict(wiring.ifindex),
        macs=dict(wiring.macs),
        reasons={**(seen.st.reasons if seen.st else {}), **(opts.reasons or {})},
        moving=decision.moving,
        intent=intent,
    )
    return ctx, _Work(previous, generation, trusted, decision, wiring, plan, state)


def _install(ctx: _Context, outcome: _Outcome, work: _Work, diff: str) -> ApplyResult:
    """Commit what was decided: the record step first when buckets start a transition,
    then the move; the cache, the old backend's removal and the ARP/ND answering after."""
    be, spec, opts, env, decision = ctx.be, ctx.spec, ctx.opts, ctx.env, work.decision
    if opts.host:
        env.host.announce_check(spec)  # a refusal after the commit would be too late
    plan, state = work.plan, work.state
    state_error: str | None = None
    if decision.record_s > 0:
        plan, state, state_error = _record_step(ctx, plan, state, decision)
        outcome = dataclasses.replace(outcome, generation=outcome.generation + 1)
    state_error = (
        _commit(
            be,
            plan,
            ctx.directory,
            state,
            whole=decision.whole and decision.record_s == 0,
            verify=not ctx.seen.fast,
            keep_going=opts.state_write_failure == "continue",
        )
        or state_error
    )
    if env.cache is not None:
        env.cache.remember(be, plan, work.wiring)
    recorded = ctx.seen.recorded
    if recorded is not None and recorded.backend != spec.backend:
        # the cluster moved to another backend: the new rules are live, remove the old
        env.backend(recorded).down(recorded, spec.cluster)
    if opts.host:
        env.host.announce(spec)
    text = plan.text if opts.want_diff else ""
    return outcome.result(True, state, text, diff, state_error)


@dataclass(frozen=True)
class _Outcome:
    """What an ApplyResult is made of, collected along the way."""

    spec: Spec
    opts: ApplyOptions
    be: Backend
    decision: reconcile.Decision
    previous: Layout | None
    generation: int  # the generation before this apply's (last) commit
    started: float

    def result(
        self,
        changed: bool,
        state: statefile.ClusterState,
        text: str = "",
        diff: str = "",
        state_error: str | None = None,
    ) -> ApplyResult:
        d = self.decision
        change = planning.Change(self.previous, d.layout)
        return ApplyResult(
            generation=self.generation + (1 if changed and not self.opts.dry_run else 0),
            changed=changed,
            dry_run=self.opts.dry_run,
            ruleset=text,
            diff=diff,
            moved=len(change.moved) if changed else 0,
            lower_bound=change.lower_bound if changed else 0,
            seconds=time.perf_counter() - self.started,
            layout=d.layout,
            backend=self.be.name,
            moving=len(d.moving),
            recorded_s=d.record_s if changed else 0.0,
            state=state,
            state_error=state_error,
            failover=d.failover,
            repaired=d.reasons if changed and d.whole else (),
        )


def _observe(
    be: Backend, spec: Spec, directory: Path, opts: ApplyOptions, cache: Cache | None
) -> _Seen:
    """The state (the unsaved one when newer) and what the kernel holds: the daemon's own
    last commit when nobody committed since (no netlink read), else a structure read."""
    st = statefile.load(directory, spec.cluster)
    behind = opts.unsaved is not None and (st is None or opts.unsaved.generation > st.generation)
    if behind:
        st = opts.unsaved
    if opts.expect_generation is not None and (
        st is None or st.generation != opts.expect_generation
    ):
        raise StateError(
            f"cluster {spec.cluster} changed while measuring (generation "
            f"{st.generation if st else None}, {opts.expect_generation} was measured): "
            "nothing changed, run it again"
        )
    fast = (
        cache is not None
        and st is not None
        and cache.generation == st.generation
        and cache.backend == be.name
        and cache.live is not None
        and not opts.check_drift
    )
    live = cache.live if fast and cache is not None else be.observe(spec)
    if live is not None and not live.complete and (st is None or live.generation != st.generation):
        # the state does not describe the kernel: read the table the full way
        live = be.observe(spec, complete=True)
    return _Seen(st, behind, _recorded(st), live, fast)


def _desired(
    spec: Spec, st: statefile.ClusterState | None, opts: ApplyOptions, be: Backend
) -> tuple[reconcile.Desired, reconcile.Intent | None]:
    """The desired state: the spec, the weights in force (the state's intent while the
    spec's weights are those it was set over; `opts.weights` sets new ones), the health
    asked for, and the exact layout when one is given."""
    own = planning.spec_weights(spec)
    if opts.weights is not None:
        wanted = planning.spec_weights(spec, opts.weights)
        intent = reconcile.next_intent(
            st.intent if st else None,
            own,
            weights=wanted,
            source=opts.intent_source,
            generation=opts.intent_generation,
        )
    else:
        intent = reconcile.next_intent(st.intent if st else None, own)
    weights = reconcile.weights_in_force(own, intent)
    desired = reconcile.Desired(
        bits=spec.partition.bits,
        weights=weights,
        down=frozenset(opts.down) if opts.down is not None else None,
        layout=opts.layout,
        transitions=be.transitions and spec.pinning.mode == "moving",
        idle_timeout_s=spec.pinning.idle_timeout_s,
        record_s=spec.pinning.record_ms / 1000,
    )
    return desired, intent


def _wiring(env: Env, spec: Spec, layout: Layout, fast: bool) -> Wiring:
    cache = env.cache
    if fast and cache is not None and cache.wiring is not None and cache.covers(spec, layout):
        return cache.wiring  # every member that is up has its MAC and port already
    return env.host.wiring(spec, set(layout.down))


def _trusted(spec: Spec, seen: _Seen, previous: Layout | None, wiring: Wiring) -> bool:
    """The state describes the kernel exactly: the live generation is the one it recorded,
    by this backend, on the same ports (ifindex) as now."""
    st, live, recorded = seen.st, seen.live, seen.recorded
    return (
        previous is not None
        and live is not None
        and st is not None
        and recorded is not None
        and recorded.backend == spec.backend
        and live.generation == st.generation
        and st.ifindex == dict(wiring.ifindex)
    )


def _untrusted(seen: _Seen, wiring: Wiring) -> tuple[str, ...]:
    """Why the state does not describe the kernel, when there is a state (a first install
    has nothing to repair)."""
    st, live = seen.st, seen.live
    if st is None or seen.recorded is None:
        return ()
    if live is None:
        return ("the cluster's table is missing from the kernel",)
    if live.generation != st.generation:
        return (f"the kernel holds generation {live.generation}, the state {st.generation}",)
    moved = sorted(p for p, i in wiring.ifindex.items() if st.ifindex.get(p) not in (None, i))
    if moved:
        return (f"ports re-created since the commit (new ifindex): {', '.join(moved)}",)
    return ()


def _flows_if_due(
    be: Backend,
    spec: Spec,
    st: statefile.ClusterState | None,
    desired: reconcile.Desired,
    now: float,
) -> set[int] | None:
    """The buckets that still hold a recorded flow, read only when a transition is old
    enough to settle (None otherwise, or when unknown: then nothing settles)."""
    if st is None or not st.moving or not desired.transitions:
        return None
    if not transition.due(st.moving, now, desired.idle_timeout_s):
        return None
    return _flow_buckets(be, spec)


def _drift(be: Backend, spec: Spec, seen: _Seen, wiring: Wiring) -> tuple[str, ...]:
    """What differs between the kernel and the state that says what was committed: the
    table's chains and maps (read back as after a commit) and the owner of every bucket."""
    st, recorded = seen.st, seen.recorded
    if st is None or recorded is None:
        return ()
    try:
        committed = be.render(recorded, st.layout, wiring, st.generation, st.moving)
    except KeyError:  # a port the state knew is gone: that is drift
        return ("a port of the committed table is missing",)
    try:
        be.verify(committed, whole=False)
    except KernelError as exc:
        return (str(exc),)
    try:
        found = be.live_table(recorded)
    except (KernelError, ValueError) as exc:
        return (f"cannot read the owner maps back: {exc}",)
    expected = reconcile.expected_owners(st.layout, st.moving)
    if found is None:
        return reconcile.drift(expected, None)
    problems: list[str] = []
    for table in found[1].values():
        problems.extend(reconcile.drift(expected, table))
    return tuple(dict.fromkeys(problems))


def _up_to_date(ctx: _Context, outcome: _Outcome, work: _Work) -> ApplyResult:
    """The kernel is right: the state learns the spec (addresses, health settings), the
    reasons and the intent, keeping its generation; nothing is committed."""
    st = ctx.seen.st
    assert st is not None
    new_state = dataclasses.replace(work.state, generation=st.generation)
    state_error = None
    opts = ctx.opts
    if not opts.dry_run:
        learned = (new_state.spec, new_state.reasons, new_state.moving, new_state.intent)
        if ctx.seen.behind or learned != (st.spec, st.reasons, st.moving, st.intent):
            keep_going = opts.state_write_failure == "continue"
            state_error = _save(ctx.directory, new_state, keep_going)
        if opts.host:
            ctx.env.host.announce(ctx.spec)  # not part of the ruleset digest
    text = work.plan.text if opts.want_diff or opts.dry_run else ""
    return outcome.result(False, new_state, text, state_error=state_error)


@dataclass(frozen=True)
class _Context:
    """What the steps after the decision share."""

    be: Backend
    spec: Spec
    directory: Path
    env: Env
    seen: _Seen
    opts: ApplyOptions


def _record_step(
    ctx: _Context,
    plan: Plan,
    new_state: statefile.ClusterState,
    decision: reconcile.Decision,
) -> tuple[Plan, statefile.ClusterState, str | None]:
    """Record first: the newly moving buckets deliver to their old owner and record their
    UDP flows for `record_s`; then the move (the plan returned). Each step is one
    transaction. Returns (the move's plan, its state, a state write failure)."""
    be, spec, seen = ctx.be, ctx.spec, ctx.seen
    rec = transition.recording(decision.moving, decision.record)
    first = be.plan(
        spec,
        decision.layout,
        plan.wiring,
        plan.generation,
        seen.live,
        seen.recorded if not decision.whole else None,
        rec,
        ctx.opts.measuring,
    )
    state_error = _commit(
        be,
        first,
        ctx.directory,
        dataclasses.replace(new_state, digest=first.digest, moving=rec),
        whole=decision.whole,
        keep_going=ctx.opts.state_write_failure == "continue",
    )
    ctx.env.sleep(decision.record_s)
    # we hold the lock: what is live is what we just committed (no read-back)
    live = be.assumed(first) or be.observe(spec)
    move = be.plan(
        spec,
        decision.layout,
        plan.wiring,
        plan.generation + 1,
        live,
        spec,
        decision.moving,
        ctx.opts.measuring,
    )
    return (
        move,
        dataclasses.replace(new_state, generation=plan.generation + 1, digest=move.digest),
        state_error,
    )


def _diff(old: str, new: str) -> str:
    import difflib  # only for --diff and --dry-run

    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), "live", "new", n=1
        )
    )


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
    old_wiring = Wiring(wiring.ifindex, {**wiring.macs, **st.macs}, wiring.uplink_mac)
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
    expected = desired_layout(spec, st)
    if expected.table != st.layout.table:
        n = len(planning.Change(st.layout, expected).moved)
        raise StateError(
            f"the spec differs from what is live for cluster {spec.cluster} ({n} buckets "
            "would move): apply it first, then re-tune"
        )
    return st


def weights_in_force(spec: Spec, st: statefile.ClusterState | None) -> dict[str, Fraction]:
    """The weights the table follows: those `rebalance` set while the spec still has the
    weights they were set over, else the spec's (core/reconcile.py)."""
    own = planning.spec_weights(spec)
    return dict(reconcile.weights_in_force(own, st.intent if st is not None else None))


def desired_layout(
    spec: Spec,
    st: statefile.ClusterState | None,
    *,
    weights: Mapping[str, Fraction] | None = None,
    down: Collection[str] | None = None,
) -> Layout:
    """The layout an apply of `spec` would install over the state `st` (plan, which):
    the weights in force, or `weights` over them."""
    in_force = weights_in_force(spec, st)
    return planning.desired(
        spec,
        st.layout if st is not None else None,
        weights={**in_force, **(weights or {})},
        down=down,
    )


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
    options: ApplyOptions | None = None,
    env: Env | None = None,
    window: float | None = None,
) -> Measuring:
    """Switch per-bucket load counting on: one apply (one transaction, a new generation)
    of the same layout with the counters in the cluster's own ingress rule. A lease in
    the state directory (statefile.measuring_begin, until `window` and a grace have
    passed) lets the daemon switch it off when this process dies before measure_stop."""
    st = _installed(spec, directory)
    env = env or Env()
    statefile.measuring_begin(directory, spec.cluster, window or 3600.0)
    try:
        res = _counting(spec, directory, options, env, on=True, generation=st.generation)
    except VipctlError:
        statefile.measuring_end(directory, spec.cluster)  # refused: nothing counts
        raise
    baseline = env.backend(spec).read_load(spec)  # a crashed run's counters keep their counts
    if baseline is None:
        raise KernelError(f"cluster {spec.cluster}: the load counters did not appear")
    return Measuring(res.generation, baseline)


def _counting(
    spec: Spec,
    directory: Path,
    options: ApplyOptions | None,
    env: Env,
    *,
    on: bool,
    generation: int,
) -> ApplyResult:
    """The apply that switches per-bucket counting on or off (refused, changing nothing,
    when the state's generation is no longer `generation`)."""
    return apply(
        spec,
        directory,
        dataclasses.replace(
            options or ApplyOptions(),
            measuring=on,
            preflight=False,
            host=False,
            want_diff=False,
            expect_generation=generation,
        ),
        env,
    )


def measure_stop(
    spec: Spec,
    directory: Path,
    started: Measuring,
    options: ApplyOptions | None = None,
    env: Env | None = None,
) -> tuple[statefile.ClusterState, list[tuple[int, int]]]:
    """Read the counters, then switch counting off (one apply, refused if anyone committed
    since `measure_start`: their commit switched it off already). (the state after, the
    (packets, bytes) per bucket since the start)."""
    env = env or Env()
    st = statefile.load(directory, spec.cluster)
    current = st is not None and st.generation == started.generation
    found = env.backend(spec).read_load(spec) if current else None
    if found is None:
        statefile.measuring_end(directory, spec.cluster)  # that commit switched it off
        raise KernelError(
            "the measurement was interrupted: another commit replaced the table during the "
            "window (a failover?); nothing changed, run it again"
        )
    res = _counting(spec, directory, options, env, on=False, generation=started.generation)
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
    spec: Spec, directory: Path, window: float, env: Env | None = None
) -> tuple[statefile.ClusterState, list[tuple[int, int]]]:
    """(the state after measuring, (packets, bytes) per bucket over `window` seconds),
    counted in the cluster's own ingress rule: one commit switches it on, one off, both
    through apply (generation and state stay consistent). The cluster's lock is held only
    for those commits: a failover during the window commits a table without counting,
    and the measurement is reported interrupted, changing nothing."""
    env = env or Env()
    started = measure_start(spec, directory, None, env, window)
    try:
        env.sleep(window)
    except BaseException:
        with contextlib.suppress(VipctlError):
            measure_stop(spec, directory, started, None, env)
        raise
    return measure_stop(spec, directory, started, None, env)


AIM = 0.8  # re-tuning aims at 1 + AIM * (tolerance - 1): room for measurement noise


@dataclass(frozen=True)
class Tuning:
    """What a re-tune is asked for (`rebalance --auto`, the daemon's `retune` section)."""

    window: float = RETUNE_WINDOW_S
    tolerance: float = RETUNE_TOLERANCE
    metric: str = RETUNE_METRIC
    max_moves: int | None = None
    dry_run: bool = False


def retune(
    spec: Spec, directory: Path, tuning: Tuning | None = None, env: Env | None = None
) -> RetuneResult:
    """Measure each bucket's load for `tuning.window` seconds, then move the fewest buckets
    that bring every member within `tuning.tolerance` of its weighted share
    (core/retune.py), through the transition path (apply with the re-tuned layout): live
    flows stay.

    It acts only when the measured imbalance is above the tolerance, and then aims a little
    tighter (AIM), so a second run on unchanged traffic moves nothing. The cluster's lock
    is not held while measuring (a failover must not wait); a commit by anyone else during
    the window makes the re-tune refuse, changing nothing."""
    tuning = tuning or Tuning()
    env = env or Env()
    st, load = measure(spec, directory, tuning.window, env)
    return retune_measured(spec, directory, st, load, tuning, None, env)


def retune_measured(
    spec: Spec,
    directory: Path,
    st: statefile.ClusterState,
    load: list[tuple[int, int]],
    tuning: Tuning,
    options: ApplyOptions | None = None,
    env: Env | None = None,
) -> RetuneResult:
    """The second half of `retune`: solve on what `measure` returned and apply (refused,
    changing nothing, when the state's generation is no longer `st`'s). The daemon measures
    without holding its apply slot and calls this holding it, with its own `options`
    (reasons, state_write_failure) and `env` (its cache)."""
    from vipctl.core import retune as retuning  # only when re-tuning

    metric, tolerance = tuning.metric, tuning.tolerance
    values = [float(p if metric == "packets" else b) for p, b in load]
    layout = st.layout
    solved = retuning.solve(
        layout.table,
        values,
        layout.weights,
        tolerance,
        down=layout.down,
        aim=1 + AIM * (tolerance - 1),
        max_moves=tuning.max_moves,
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
            dataclasses.replace(
                options or ApplyOptions(),
                dry_run=tuning.dry_run,
                layout=new,
                expect_generation=st.generation,
                preflight=False,
            ),
            env,
        )
    return RetuneResult(solved, metric, tuning.window, st.generation, applied, load)


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

            bgp.stop(cluster, directory, spec)
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
    for backend in ("nftables", "tc", "xdp"):
        users = [s for s in known if s.backend == backend]
        if backend != "nftables" and not users:
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
                "spec_weight": planning.weight_number(m.exact_weight),
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
        # every family's owners are the state's table: not while a change records its
        # UDP flows first (the old owners still take new flows for that second)
        and all(t == layout.table for t in found[1].values()),
        "weights_from": st.intent.source if st.intent is not None else "spec",
        "members": members,
    }
    offload = be.offload(live)
    if offload is not None:
        report["offload"] = offload
    if spec.store is not None:
        report.update(_routers(spec))
    return report


def _routers(spec: Spec) -> dict[str, Any]:
    """With a store: every router's fingerprint and generations, as their daemons
    published them (`routers`), and whether they differ (`routers_agree`)."""
    from vipctl.host import store

    try:
        found = store.Client(spec).routers()
    except VipctlError as exc:
        return {"routers": [], "store_error": str(exc)}
    routers = [
        {
            "name": str(r["name"]),
            "fingerprint": r.get("fingerprint"),
            "generation": r.get("generation"),
            "desired_generation": r.get("desired_generation"),
            "age_s": round(max(0.0, time.time() - float(r.get("at", 0))), 1),
        }
        for r in found
    ]
    return {
        "routers": routers,
        "routers_agree": len({r["fingerprint"] for r in routers}) <= 1,
    }


def rebalance_shared(
    spec: Spec,
    directory: Path,
    weights: Mapping[str, Fraction],
    options: ApplyOptions | None = None,
    env: Env | None = None,
) -> ApplyResult:
    """`rebalance --weights` with a store: the new base table is computed from the shared
    one (every router re-weights the same base), written once by compare-and-swap on the
    shared document (StoreError, exit 75, nothing changed: unreachable, or another router
    changed it first), then installed here; every other router's daemon converges to it.
    The store is written first: it is the desired state, and a router that cannot install
    it now converges as soon as it can."""
    from vipctl.core import shared as sharedmod
    from vipctl.host import store

    opts = options or ApplyOptions()
    client = store.Client(spec)
    found = client.read()
    st = statefile.load(directory, spec.cluster)
    own = planning.spec_weights(spec)
    wanted = planning.spec_weights(spec, {**weights_in_force(spec, st), **weights})
    if found.shared is not None:
        base = found.shared.layout
    elif st is not None and st.layout.bits == spec.partition.bits:
        base = Layout.of(st.layout.bits, st.layout.weights, st.layout.base)
    else:
        base = Layout.initial(spec.partition.bits, own)
    layout = base.reweight(wanted).with_down(())
    generation = (found.shared.generation if found.shared is not None else 0) + 1
    new = sharedmod.Shared(generation, "rebalance", own, layout)
    if not opts.dry_run:
        client.swap(found, new)
    down = st.layout.down if st is not None else ()
    return apply(
        spec,
        directory,
        dataclasses.replace(
            opts,
            layout=new.layout_for(down),
            weights=dict(wanted),
            intent_generation=generation,
        ),
        env,
    )


def converge_shared(
    spec: Spec,
    directory: Path,
    found: Any,
    options: ApplyOptions,
    env: Env | None = None,
) -> ApplyResult:
    """Install the shared desired state `found.shared` with this router's health
    (`options.down`): the daemon, when the store's generation moved."""
    shared = found.shared
    down = options.down if options.down is not None else ()
    return apply(
        spec,
        directory,
        dataclasses.replace(
            options,
            layout=shared.layout_for(set(down)),
            weights=dict(shared.layout.weights),
            intent_generation=shared.generation,
            intent_source=shared.intent().source,
        ),
        env,
    )


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

"""The tc backend's shell: install, observe and delete one cluster's tc filters.

Make-before-break (see render/tc.py for the layout):
1. refuse what tc cannot express (hash key) before touching anything;
2. build the new generation in the slot chain the dispatcher does NOT point at (clearing
   leftovers there first), and the broadcast egress selectors for its stamp;
3. read the new chain back and compare it with the rendered filters;
4. flip the dispatcher to the new chain: one RTM_NEWTFILTER with NLM_F_REPLACE, which the
   kernel swaps under RCU, so every packet is classified by exactly one generation;
5. delete the old generation's chains (RTM_DELCHAIN flushes a chain in one operation).

Any failure in 1-3 removes what 2 added (and a clsact qdisc this call created): the live
generation is never touched, nothing is half-installed. Works in the network namespace
the process runs in.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from vipctl.backends.base import Live, Plan, text_digest
from vipctl.backends.tcnl import (
    OFFLOAD_FLAGS,
    Classifier,
    LiveFilter,
    TcError,
    TcSocket,
    decode_filter,
    filter_bytes,
    filter_message,
)
from vipctl.core.partition import Layout, Owner, Table
from vipctl.core.spec import Spec
from vipctl.core.transition import Moving
from vipctl.errors import KernelError
from vipctl.host import links
from vipctl.render.tc import (
    DISPATCH_PRIO,
    ETH_P_ALL,
    ETH_P_IP,
    SELECT_PRIO,
    SLOT_CHAINS,
    Gact,
    Mirred,
    TcFilter,
    TcRuleset,
    build_ruleset,
    check_spec,
    other_slot,
    parse_cookie,
    render_text,
)
from vipctl.render.wiring import Wiring

MISSING_HINT = (
    "this kernel lacks what the tc backend needs (cls_flower or cls_u32, act_mirred, "
    "act_pedit, act_gact: CONFIG_NET_CLS_FLOWER, CONFIG_NET_ACT_PEDIT, CONFIG_NET_ACT_GACT, "
    "CONFIG_NET_ACT_MIRRED); use backend: nftables"
)


@dataclass(frozen=True)
class TcLive:
    """What the kernel has for a cluster: the dispatcher's target and every filter."""

    slot: int
    generation: int
    classifier: str
    dispatcher: LiveFilter
    filters: tuple[LiveFilter, ...] = field(default=())

    @property
    def in_hw_count(self) -> int:
        return sum(1 for f in (self.dispatcher, *self.filters) if f.in_hw_count > 0)


@dataclass(frozen=True)
class TcApplyResult:
    generation: int
    slot: int
    classifier: str
    ruleset: TcRuleset
    text: str
    seconds: float
    flip_seconds: float


_ifindex = links.ifindex


def _names() -> dict[int, str]:
    return {index: name for name, index in links.names().items()}


def _kernel_error(exc: TcError, what: str) -> KernelError:
    text = f"{what}: the kernel refused: {exc}"
    if exc.code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL) and (
        "not found" in exc.message
        or "Unknown" in exc.message
        or "load" in exc.message
        or not exc.message
    ):
        text += f". {MISSING_HINT}"
    return KernelError(text + ". Nothing changed.")


def _is_missing_classifier(exc: TcError) -> bool:
    return exc.code in (errno.ENOENT, errno.EOPNOTSUPP) and "classifier" in exc.message.lower()


def _find_dispatcher(nl: TcSocket, uplink: int, names: dict[int, str]) -> LiveFilter | None:
    for msg in nl.filters(uplink, "ingress", 0):
        f = decode_filter(msg, names)
        if f is not None and f.prio == DISPATCH_PRIO and f.chain == 0:
            return f
    return None


def _dispatcher_target(live: LiveFilter, cluster: str) -> tuple[int, int] | None:
    """(slot, generation) when `live` is this cluster's dispatcher."""
    for a in live.actions:
        if isinstance(a, Gact) and a.verdict == "goto":
            generation = parse_cookie(a.cookie, cluster)
            slot = {c: s for s, c in SLOT_CHAINS.items()}.get(a.chain)
            if generation is not None and slot is not None:
                return slot, generation
    return None


def observe(spec: Spec) -> TcLive | None:
    """The cluster's live tc state, None when no dispatcher of it is installed."""
    names = _names()
    if spec.uplink not in names.values():
        return None
    uplink = _ifindex(spec.uplink)
    with TcSocket() as nl:
        disp = _find_dispatcher(nl, uplink, names)
        if disp is None:
            return None
        target = _dispatcher_target(disp, spec.cluster)
        if target is None:
            return None
        slot, generation = target
        chain = SLOT_CHAINS[slot]
        filters: list[LiveFilter] = []
        for msg in nl.filters(uplink, "ingress", chain):
            f = decode_filter(msg, names)
            if f is not None:
                filters.append(f)
        for m in spec.members:
            if m.port not in names.values():
                continue
            idx = _ifindex(m.port)
            for ch in (0, chain):
                for msg in nl.filters(idx, "egress", ch):
                    f = decode_filter(msg, names)
                    if f is None:
                        continue
                    if ch == 0 and f.prio != SELECT_PRIO + slot:
                        continue
                    filters.append(f)
        return TcLive(slot, generation, disp.kind, disp, tuple(filters))


def _groups(filters: Iterable[TcFilter]) -> dict[tuple[str, str, int], list[TcFilter]]:
    out: dict[tuple[str, str, int], list[TcFilter]] = {}
    for f in filters:
        out.setdefault((f.dev, f.hook, f.chain), []).append(f)
    return out


def _comparable(f: TcFilter | LiveFilter) -> tuple[object, ...]:
    return (f.chain, f.prio, f.match, f.actions)


def read_back(nl: TcSocket, ruleset: TcRuleset, names: dict[int, str]) -> list[str]:
    """Differences between the kernel and the rendered filters of `ruleset` (empty: equal)."""
    problems: list[str] = []
    for (dev, hook, chain), want in _groups(ruleset.filters).items():
        idx = _ifindex(dev)
        prios = {f.prio for f in want}
        got = []
        for msg in nl.filters(idx, hook, chain):
            f = decode_filter(msg, names)
            if f is not None and (chain != 0 or f.prio in prios):
                got.append(f)
        w = sorted((_comparable(f) for f in want), key=repr)
        g = sorted((_comparable(f) for f in got), key=repr)
        if w != g:
            missing = [x for x in w if x not in g]
            extra = [x for x in g if x not in w]
            problems.append(
                f"{dev} {hook} chain {chain}: {len(missing)} missing, {len(extra)} unexpected"
                f" (first missing {missing[:1]}, first unexpected {extra[:1]})"
            )
    return problems


def verify(ruleset: TcRuleset) -> list[str]:
    """Compare the kernel with `ruleset` (its chains, selectors and the dispatcher)."""
    names = _names()
    with TcSocket() as nl:
        problems = read_back(nl, ruleset, names)
        disp = _find_dispatcher(nl, _ifindex(ruleset.uplink), names)
    if disp is None or _comparable(disp) != _comparable(ruleset.dispatcher):
        problems.append(f"dispatcher: kernel has {disp and _comparable(disp)}")
    return problems


def _clear_slot(nl: TcSocket, devices: Iterable[tuple[int, str]], slot: int) -> None:
    """Remove a slot's chain and egress selector from the given devices (ENOENT is fine)."""
    chain = SLOT_CHAINS[slot]
    for idx, hook in devices:
        try:
            nl.del_chain(idx, hook, chain)
        except TcError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise
        if hook != "egress":
            continue
        try:
            nl.del_filter(idx, hook, 0, SELECT_PRIO + slot, ETH_P_ALL)
        except TcError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise


def _slot_devices(nl: TcSocket, uplink: int, slot: int, names: dict[int, str]) -> set[int]:
    """The ports a generation sends to (its mirred targets): where its egress filters are,
    also for ports that a later spec no longer lists."""
    out: set[int] = set()
    for msg in nl.filters(uplink, "ingress", SLOT_CHAINS[slot]):
        f = decode_filter(msg, names)
        if f is not None:
            out |= {a.ifindex for a in f.actions if isinstance(a, Mirred)}
    return out


def apply(
    spec: Spec,
    layout: Layout,
    wiring: Wiring,
    generation: int,
    *,
    classifier: Classifier | None = None,
) -> TcApplyResult:
    """Install `layout` as generation `generation` (make-before-break, see module doc).

    `classifier` None picks the live dispatcher's kind, else flower, else u32 when the
    kernel has no flower. Raises SpecError for a hash key, KernelError (nothing changed)
    when the kernel refuses.
    """
    started = time.perf_counter()
    check_spec(spec)
    names = _names()
    uplink = _ifindex(spec.uplink)
    ports = {m.port: _ifindex(m.port) for m in spec.members if m.port in wiring.ifindex}
    flags = OFFLOAD_FLAGS[spec.offload]
    with TcSocket() as nl:
        disp = _find_dispatcher(nl, uplink, names)
        live = _dispatcher_target(disp, spec.cluster) if disp is not None else None
        if disp is not None and live is None:
            raise KernelError(
                f"{spec.uplink} ingress prio {DISPATCH_PRIO} holds a filter that is not "
                f"cluster {spec.cluster}'s dispatcher (one tc cluster per uplink). "
                "Nothing changed."
            )
        slot = other_slot(live[0]) if live else 1
        ruleset = build_ruleset(spec, layout, wiring, generation, slot)
        kinds: list[Classifier]
        if classifier is not None:
            kinds = [classifier]
        elif disp is not None:
            kinds = ["u32" if disp.kind == "u32" else "flower"]
        else:
            kinds = ["flower", "u32"]
        created: list[int] = []
        devices = [(uplink, "ingress")] + [(i, "egress") for i in ports.values()]
        try:
            for idx in {uplink, *ports.values()}:
                if not nl.has_clsact(idx):
                    nl.add_clsact(idx)
                    created.append(idx)
            _clear_slot(nl, devices, slot)
            used = _install(nl, ruleset, kinds, flags, devices, slot)
            problems = read_back(nl, ruleset, _names())
            if problems:
                raise KernelError(
                    "read-back differs from the rendered filters: " + "; ".join(problems)
                )
        except (TcError, KernelError) as exc:
            _undo(nl, devices, slot, created)
            if isinstance(exc, TcError):
                raise _kernel_error(exc, f"cluster {spec.cluster}") from None
            raise
        flip_started = time.perf_counter()
        msg = filter_message(
            ruleset.dispatcher,
            uplink,
            classifier=used,
            flags=flags,
            handle=disp.handle if disp is not None else None,
        )
        try:
            nl.add_filter(msg, replace=True, what="flip the dispatcher")
        except TcError as exc:
            _undo(nl, devices, slot, created)
            raise _kernel_error(exc, f"cluster {spec.cluster}") from None
        flip_seconds = time.perf_counter() - flip_started
        if live is not None:
            old = _slot_devices(nl, uplink, live[0], names) | set(ports.values())
            _clear_slot(nl, [(uplink, "ingress")] + [(i, "egress") for i in old], live[0])
    return TcApplyResult(
        generation=generation,
        slot=slot,
        classifier=used,
        ruleset=ruleset,
        text=render_text(ruleset),
        seconds=time.perf_counter() - started,
        flip_seconds=flip_seconds,
    )


def _install(
    nl: TcSocket,
    ruleset: TcRuleset,
    kinds: list[Classifier],
    flags: int,
    devices: list[tuple[int, str]],
    slot: int,
) -> Classifier:
    for n, kind in enumerate(kinds):
        try:
            for f in ruleset.filters:
                nl.add_filter(
                    filter_bytes(f, _ifindex(f.dev), kind, flags, None),
                    what=f"add {kind} filter {f.dev} {f.hook} chain {f.chain} prio {f.prio}",
                )
            return kind
        except TcError as exc:
            if n + 1 < len(kinds) and _is_missing_classifier(exc):
                _clear_slot(nl, devices, slot)
                continue
            raise
    raise AssertionError("no classifier to try")


def _undo(nl: TcSocket, devices: list[tuple[int, str]], slot: int, created: list[int]) -> None:
    try:
        _clear_slot(nl, devices, slot)
        for idx in created:
            nl.del_clsact(idx)
    except TcError:
        pass  # best effort: the live generation was never touched


def delete(spec: Spec) -> bool:
    """Remove the cluster's dispatcher and chains; other tc filters are left alone."""
    names = _names()
    if spec.uplink not in names.values():
        return False
    uplink = _ifindex(spec.uplink)
    with TcSocket() as nl:
        disp = _find_dispatcher(nl, uplink, names)
        if disp is None or _dispatcher_target(disp, spec.cluster) is None:
            return False
        ports = {_ifindex(m.port) for m in spec.members if m.port in names.values()}
        for slot in SLOT_CHAINS:
            ports |= _slot_devices(nl, uplink, slot, names)
        nl.del_filter(uplink, "ingress", 0, DISPATCH_PRIO, ETH_P_ALL)
        for slot in SLOT_CHAINS:
            _clear_slot(nl, [(uplink, "ingress")] + [(i, "egress") for i in ports], slot)
    return True


# --------------------------------------------------------------------------------------
# The Backend (backends/base.py) for tc
# --------------------------------------------------------------------------------------


Rule = tuple[int, int, str]  # (value, mask, member) of one source rule


def _owner_entries(spec: Spec, live: TcLive, names: dict[int, str]) -> dict[int, list[Rule]]:
    """Per address family, the live generation's source rules in the order the kernel
    applies them (by device, then prio)."""
    port_owner = {m.port: m.name for m in spec.members}
    chain = SLOT_CHAINS[live.slot]
    found: dict[int, list[tuple[tuple[int, int], Rule]]] = {}
    for f in live.filters:
        if f.chain != chain or f.match is None or f.match.src is None:
            continue
        family = 4 if f.match.eth_type == ETH_P_IP else 6
        if spec.mode == "steer":
            port = next((a.port for a in f.actions if isinstance(a, Mirred)), "")
        else:
            port = names.get(f.ifindex, "")
        owner = port_owner.get(port)
        if owner is not None:
            value, mask = f.match.src
            found.setdefault(family, []).append(((f.ifindex, f.prio), (value, mask, owner)))
    return {fam: [rule for _, rule in sorted(rules)] for fam, rules in found.items()}


class TcBackend:
    """flower (or u32) filters with make-before-break chain flips (see the module doc)."""

    name = "tc"
    transitions = False  # keeps per-flow state for buckets in transition

    def refuse(self, spec: Spec) -> None:
        check_spec(spec)

    def observe(self, spec: Spec, *, complete: bool = False) -> Live | None:
        live = observe(spec)
        if live is None:
            return None
        return Live(self.name, live.generation, live, complete=True)

    def live_table(
        self, spec: Spec, live: Live | None = None
    ) -> tuple[Table, dict[int, Table]] | None:
        """The bucket table, decoded from the live chain's source rules: a bucket belongs
        to the first rule (lowest prio) whose value/mask matches its low bits."""
        live = live if live is not None else self.observe(spec)
        if live is None:
            return None
        rules = _owner_entries(spec, live.detail, _names())
        size = spec.partition.buckets
        by_family: dict[int, Table] = {}
        for family in spec.vip_families:
            table: list[Owner] = [None] * size
            for bucket in range(size):
                for value, mask, owner in rules.get(family, []):
                    if bucket & mask == value & mask:
                        table[bucket] = owner
                        break
            by_family[family] = tuple(table)
        return by_family[spec.vip_families[0]], by_family

    def render(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        if measuring:
            self.read_load(spec)  # refuses: no per-bucket counters with tc
        # tc has no dynamic state: no transitions, buckets move at once
        # rendered in slot 1: the text and digest do not depend on the slot it lands in
        ruleset = build_ruleset(spec, layout, wiring, generation, slot=1)
        text = render_text(ruleset)
        digest = text_digest(ln for ln in text.splitlines() if not ln.startswith("#"))
        return Plan(spec, layout, wiring, generation, digest, text, ruleset)

    def plan(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        live: Live | None,
        recorded: Spec | None = None,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        return self.render(spec, layout, wiring, generation, measuring=measuring)

    def flow_buckets(self, spec: Spec) -> set[int] | None:
        return set()

    def assumed(self, plan: Plan) -> Live | None:
        return None  # observe() reads the dispatcher: cheap enough for a failover

    def check(self, plan: Plan) -> None:
        # tc has no check mode: rendering (done) is what can be checked without a commit
        return None

    def commit(self, plan: Plan) -> None:
        apply(plan.spec, plan.layout, plan.wiring, plan.generation)

    def verify(self, plan: Plan, *, whole: bool) -> None:
        live = observe(plan.spec)
        if live is None or live.generation != plan.generation:
            raise KernelError(
                f"read-back: cluster {plan.spec.cluster} shows tc generation "
                f"{live.generation if live else None}, {plan.generation} was committed"
            )
        ruleset = build_ruleset(plan.spec, plan.layout, plan.wiring, plan.generation, live.slot)
        problems = verify(ruleset)
        if problems:
            raise KernelError("read-back after the flip: " + "; ".join(problems))

    def down(self, spec: Spec | None, cluster: str) -> bool:
        return delete(spec) if spec is not None else False

    def clusters(self, known: list[Spec]) -> list[str]:
        return [s.cluster for s in known if s.backend == "tc" and observe(s) is not None]

    def counters(self, spec: Spec, live: Live) -> dict[str, tuple[int, int]]:
        return {}  # tc action statistics are not read yet

    def pinned(self, spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
        return {}, []  # no pinning in tc (no dynamic sets)

    def pin_counts(self, spec: Spec) -> dict[str, int]:
        return {}

    def read_load(self, spec: Spec) -> list[tuple[int, int]] | None:
        raise KernelError(
            "measuring per-bucket load needs the nftables backend (backend: tc has no "
            "per-bucket counters yet)"
        )

    def offload(self, live: Live) -> dict[str, int] | None:
        tc: TcLive = live.detail
        return {"rules": 1 + len(tc.filters), "in_hw": tc.in_hw_count}

    def ruleset_generation(self) -> int | None:
        return None  # tc has no generation counter: the daemon reads the filters back

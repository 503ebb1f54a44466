"""The nftables backend: the only module that imports the nftables bindings.

Everything here works in the network namespace the process runs in (run vipctl under
`ip netns exec NS` for another one). One libnftables call is one kernel transaction.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import nftables

from vipctl.backends.base import Live, Plan
from vipctl.core.partition import Layout, Owner, Table, bucket_of
from vipctl.core.spec import Spec
from vipctl.errors import KernelError
from vipctl.host import links
from vipctl.render.nft import (
    GENERATION_TAG,
    TABLE_PREFIX,
    NftTable,
    Observed,
    build_table,
    counter_name,
    digest,
    owner_map_name,
    render_table,
    table_name,
    transaction,
)
from vipctl.render.wiring import Wiring

_CONTEXTS: dict[tuple[int, bool], Any] = {}
NETLINK_NETFILTER = 12


def _require_nfnetlink() -> None:
    """libnftables (1.0.6, through libmnl) calls exit() when it cannot open its netlink
    socket, as on a kernel without nf_tables: ask the kernel first, so that is an error
    vipctl can report (a tc-only box must still answer `status` and `down`)."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER).close()
    except OSError as exc:
        raise KernelError(
            f"nftables is not available in this kernel (netlink netfilter: {exc.strerror}); "
            "load nf_tables or use backend: tc"
        ) from None


def _new_context(json_output: bool) -> Any:
    _require_nfnetlink()
    nft = nftables.Nftables()
    if json_output:
        nft.set_json_output(True)
        nft.set_handle_output(False)
    return nft


def _context(json_output: bool) -> Any:
    """One libnftables context per network namespace (a context binds to the namespace
    that is current when it is created; creating and freeing one costs ~20 ms)."""
    if os.environ.get("VIPCTL_NO_CTX_CACHE"):
        return _new_context(json_output)
    key = (links.netns_inode(), json_output)
    nft = _CONTEXTS.get(key)
    if nft is None:
        nft = _CONTEXTS[key] = _new_context(json_output)
    return nft


def _nft() -> Any:
    return _context(True)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """libnftables 1.0.6 fprintf()s "stmt ops map have no json callback" to fd 2 for every
    `update @map { k : v }` it lists as JSON; errors we need come back in the buffer."""

    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_json(cmd: dict[str, Any], *, terse: bool = False) -> dict[str, Any] | None:
    """A JSON command; None when the object does not exist. `terse` leaves out elements."""
    nft = _nft()
    nft.set_terse_output(terse)
    with _quiet_stderr():
        rc, out, err = nft.json_cmd(cmd)
    if rc != 0:
        if "No such file or directory" in str(err):
            return None
        raise KernelError(f"nft refused {cmd}: {str(err).strip()}")
    return out if isinstance(out, dict) else None


def commit(batch: str) -> None:
    """Send one batch: the kernel commits all of it or none of it."""
    nft = _context(False)
    rc, _out, err = nft.cmd(batch)
    if rc != 0:
        raise KernelError(
            "the kernel refused the ruleset, nothing changed: " + _refusal(batch, str(err))
        )


def check(batch: str) -> None:
    """Validate a batch in the kernel without committing (libnftables dry-run)."""
    nft = _new_context(False)
    _set_dry_run(nft)
    rc, _out, err = nft.cmd(batch)
    if rc != 0:
        raise KernelError("the kernel would refuse the ruleset: " + _refusal(batch, str(err)))


def _refusal(batch: str, err: str) -> str:
    """The kernel's reason and the batch line it refused.

    nft 1.0.6 quotes a refusal that the kernel reports (a netlink error, e.g. EBUSY from
    `delete chain`) with the columns of the right command but on line 1 of a multi-line
    buffer ("add table ..."). So find the line itself: the shortest prefix of the batch
    that the kernel refuses in a dry run (a bisection: ~log2(lines) dry runs, only on
    this error path). Each command of a vipctl batch is one line."""
    messages = [ln.strip() for ln in err.splitlines() if ln.startswith("Error:")]
    reason = messages[0].removeprefix("Error:").strip() if messages else err.strip()[:300]
    lines = batch.splitlines()
    dry = _new_context(False)
    _set_dry_run(dry)

    def _accepted(text: str) -> bool:
        return bool(dry.cmd(text)[0] == 0)

    if not lines or _accepted(batch):  # refused at commit only: no line to blame
        return reason
    lo, hi = 1, len(lines)
    while lo < hi:
        mid = (lo + hi) // 2
        if _accepted("\n".join(lines[:mid]) + "\n"):
            lo = mid + 1
        else:
            hi = mid
    return f"{reason} (batch line {lo}: {lines[lo - 1][:200]})"


def _set_dry_run(nft: Any) -> None:
    """nft_ctx_set_dry_run(): Debian's bindings have set_dry_run(), pip-nftables 1.0.2 does
    not, so call libnftables directly on the context the object owns."""
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(True)
        return
    import ctypes

    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_ctx_set_dry_run(nft._Nftables__ctx, True)


# --------------------------------------------------------------------------------------
# Reading what is live
# --------------------------------------------------------------------------------------


@dataclass
class LiveTable:
    name: str
    observed: Observed
    generation: int | None
    maps: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> packets, bytes


def list_tables() -> list[str]:
    out = run_json({"nftables": [{"list": {"tables": {"family": "netdev"}}}]}) or {}
    names = []
    for item in out.get("nftables", []):
        t = item.get("table")
        if t and t.get("family") == "netdev" and str(t.get("name", "")).startswith(TABLE_PREFIX):
            names.append(str(t["name"]))
    return sorted(names)


def _list(kind: str, table: str, name: str | None = None, *, terse: bool = False) -> Any:
    obj: dict[str, Any] = {"family": "netdev", "name": name or table}
    if name is not None:
        obj["table"] = table
    return run_json({"nftables": [{"list": {kind: obj}}]}, terse=terse)


def observe(
    cluster: str, *, with_elements: bool = True, with_pins: bool = False
) -> LiveTable | None:
    """The cluster's table: structure, counters, generation, and the owner maps' elements.

    Pin maps can hold a million flows: their elements are read only when asked for.
    """
    name = table_name(cluster)
    out = _list("table", name, terse=True)
    if out is None:
        return None
    for item in list(out.get("nftables", [])):
        m = item.get("map")
        is_pin = m is not None and str(m["name"]).startswith("pin")
        if m and ((with_elements and not is_pin) or (with_pins and is_pin)):
            full = _list("map", name, str(m["name"]))
            if full is not None:
                out["nftables"].extend(i for i in full["nftables"] if "map" in i)
    sets: set[str] = set()
    maps: set[str] = set()
    chains: set[str] = set()
    counters: dict[str, tuple[int, int]] = {}
    elements: dict[str, list[tuple[Any, Any]]] = {}
    generation: int | None = None
    items = out.get("nftables", [])
    for item in items:
        if "set" in item:
            sets.add(item["set"]["name"])
        elif "map" in item:
            m = item["map"]
            maps.add(m["name"])
            if "elem" in m or m["name"] not in elements:
                elements[m["name"]] = [_elem_pair(e) for e in m.get("elem", [])]
        elif "counter" in item:
            c = item["counter"]
            counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "chain" in item:
            chains.add(item["chain"]["name"])
        elif "rule" in item:
            generation = _generation(item["rule"].get("comment")) or generation
    return LiveTable(
        name=name,
        observed=Observed(
            sets=frozenset(sets),
            maps=frozenset(maps),
            counters=frozenset(counters),
            chains=frozenset(chains),
            exists=True,
        ),
        generation=generation,
        maps=elements,
        counters=counters,
    )


def observe_structure(cluster: str) -> LiveTable | None:
    """Names of the table's chains, sets and maps, and its generation, straight from
    netlink (pyroute2). No set elements and no counters: this costs ~5 ms however large the
    maps are, where any libnftables read fetches every element first (0.2-1 s at 65536)."""
    name = table_name(cluster)
    with _nftables_netlink() as nft:
        if name not in {t.get_attr("NFTA_TABLE_NAME") for t in nft.get_tables()}:
            return None
        chains = {
            str(c.get_attr("NFTA_CHAIN_NAME"))
            for c in nft.get_chains()
            if c.get_attr("NFTA_CHAIN_TABLE") == name
        }
        sets: set[str] = set()
        maps: set[str] = set()
        for item in nft.get_sets():
            if item.get_attr("NFTA_SET_TABLE") != name:
                continue
            flags = item.get_attr("NFTA_SET_FLAGS") or frozenset()
            if "NFT_SET_ANONYMOUS" in flags:  # `{ tcp, udp }` in a rule: owned by the rule
                continue
            (maps if "NFT_SET_MAP" in flags else sets).add(str(item.get_attr("NFTA_SET_NAME")))
        generation = None
        for rule in nft.get_rules():
            if rule.get_attr("NFTA_RULE_TABLE") != name:
                continue
            generation = _generation(rule.get_attr("NFTA_RULE_USERDATA")) or generation
    return LiveTable(
        name=name,
        observed=Observed(
            sets=frozenset(sets),
            maps=frozenset(maps),
            chains=frozenset(chains),
            exists=True,
        ),
        generation=generation,
    )


NFPROTO_NETDEV = 5
_NFNL: dict[tuple[int, int], Any] = {}
_NFNL_LOCK = threading.Lock()


@contextmanager
def _nftables_netlink() -> Iterator[Any]:
    """One nfnetlink socket per network namespace and thread, reused (setting one up costs
    ~10 ms; pyroute2's sockets drive an asyncio loop of their own, so no sharing across
    threads)."""
    from pyroute2.nftables.main import NFTables

    key = (links.netns_inode(), threading.get_ident())
    with _NFNL_LOCK:
        nft = _NFNL.get(key)
        if nft is None:
            _require_nfnetlink()
            nft = _NFNL[key] = NFTables(nfgen_family=NFPROTO_NETDEV)
        try:
            yield nft
        except Exception:
            _NFNL.pop(key, None)
            nft.close()
            raise


def _generation(comment: object) -> int | None:
    """The generation from the ingress rule's comment ("vipctl generation 7")."""
    if isinstance(comment, str) and comment.startswith(GENERATION_TAG):
        return int(comment.split()[-1])
    return None


def _elem_pair(elem: Any) -> tuple[Any, Any]:
    key, value = elem
    if isinstance(key, dict) and "elem" in key:  # {"elem": {"val": ..., "expires": ...}}
        key = key["elem"].get("val")
    if isinstance(key, dict) and "concat" in key:
        key = key["concat"]
    return key, value


def _bucket_from_key(key: Any, spec: Spec) -> int:
    if spec.partition.key == "hash":
        return int(key)
    return int(ip_address(str(key)))


def live_table(spec: Spec, live: LiveTable | None = None) -> tuple[Table, dict[int, Table]] | None:
    """The bucket table packets meet now, read from the kernel's owner maps.

    Returns (table of the first VIP family, {family: table}); None if not installed.
    """
    live = live if live is not None else observe(spec.cluster)
    if live is None:
        return None
    by_family: dict[int, Table] = {}
    ifindex = links.port_ifindex(spec)
    port_owner = {m.port: m.name for m in spec.members}
    index_owner = {ifindex[p]: n for p, n in port_owner.items() if p in ifindex}
    size = spec.partition.buckets
    for family in spec.vip_families:
        owner_map = owner_map_name(family, spec)
        if owner_map not in live.maps:
            return None
        table: list[Owner] = [None] * size
        for key, value in live.maps[owner_map]:
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                owner = index_owner.get(int(value))
            else:
                owner = port_owner.get(str(value))
            if isinstance(key, dict) and "range" in key:
                lo, hi = (_bucket_from_key(k, spec) for k in key["range"])
            elif isinstance(key, dict) and "prefix" in key:  # nft prints aligned runs so
                base = ip_address(str(key["prefix"]["addr"]))
                host_bits = base.max_prefixlen - int(key["prefix"]["len"])
                lo = int(base)
                hi = lo | ((1 << host_bits) - 1)
            else:
                lo = hi = _bucket_from_key(key, spec)
            for bucket in range(max(lo, 0), min(hi, size - 1) + 1):
                table[bucket] = owner
        by_family[family] = tuple(table)
    first = by_family[spec.vip_families[0]]
    return first, by_family


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


# --------------------------------------------------------------------------------------
# Whole-table operations
# --------------------------------------------------------------------------------------


def delete_table(cluster: str) -> bool:
    name = table_name(cluster)
    if observe(cluster) is None:
        return False
    commit(f"delete table netdev {name}\n")
    return True


def verify(table: NftTable, generation: int, *, whole: bool) -> None:
    """Read back what we sent.

    Always over netlink (cheap): the table carries the new generation and every chain, set
    and map. After a whole-table install (`whole`) also through libnftables, which fetches
    every element first (slow with big sets): each set is listed and its element count
    compared with the batch."""
    live = observe_structure(table.name.removeprefix("vipctl_"))
    if live is None or live.generation != generation:
        raise KernelError(
            f"read-back: {table.name} shows generation "
            f"{live.generation if live else None}, {generation} was committed"
        )
    names = live.observed.sets | live.observed.maps
    missing = [s.name for s in table.sets if s.name not in names]
    missing += [c.name for c in table.chains if c.name not in live.observed.chains]
    if missing:
        raise KernelError(f"read-back: {', '.join(missing)} missing after commit")
    if not whole:
        return
    for s in table.sets:
        if s.dynamic:
            continue
        out = _list(s.kind, table.name, s.name)
        if out is None:
            raise KernelError(f"read-back: {s.kind} {s.name} is missing right after commit")
        got_count = sum(len(i[s.kind].get("elem", [])) for i in out["nftables"] if s.kind in i)
        if got_count != len(s.elements):
            raise KernelError(
                f"read-back mismatch: {s.name} holds {got_count} elements, "
                f"{len(s.elements)} were committed"
            )


@dataclass(frozen=True)
class Pin:
    family: int
    key: Any  # IPv4: [saddr, sport, vip, dport]; IPv6: [iid, sport, dport]
    mark: int


def pins(cluster: str) -> list[Pin]:
    """Every pinned flow of the cluster (reads the pin maps: can be large)."""
    live = observe(cluster, with_pins=True)
    if live is None:
        return []
    out: list[Pin] = []
    for name, elems in live.maps.items():
        if not name.startswith("pin"):
            continue
        family = 4 if name.startswith("pin4") else 6
        for key, value in elems:
            out.append(Pin(family=family, key=key, mark=int(value)))
    return out


# --------------------------------------------------------------------------------------
# Pinned flows
# --------------------------------------------------------------------------------------


def _pin_bucket(spec: Spec, pin: Pin) -> int | None:
    """The bucket of a pinned flow's source, when the pin key carries enough of it."""
    p = spec.partition
    if pin.family == 4:
        return bucket_of(str(pin.key[0]), p.key, p.bits, p.seed)
    if p.key == "mask":  # the IPv6 key keeps the low 64 source bits: enough for <= 16 bits
        return int(pin.key[0]) & ((1 << p.bits) - 1)
    return None


def pinned_flows(spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
    """Pinned flows per member, and (bucket, member) of each pin (bucket None: unknown)."""
    found = pins(spec.cluster)
    ifindex = links.port_ifindex(spec)
    by_index = {ifindex[m.port]: m.name for m in spec.members if m.port in ifindex}
    per: dict[str, int] = {m.name: 0 for m in spec.members}
    flows: list[tuple[int | None, str | None]] = []
    for pin in found:
        owner = by_index.get(pin.mark)
        if owner is not None:
            per[owner] += 1
        flows.append((_pin_bucket(spec, pin), owner))
    return per, flows


# --------------------------------------------------------------------------------------
# The Backend (backends/base.py) for nftables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payload:
    table: NftTable
    batch: str


class NftBackend:
    """One netdev table per cluster, replaced by one libnftables transaction."""

    name = "nftables"

    def refuse(self, spec: Spec) -> None:
        return None  # every valid spec renders

    def observe(self, spec: Spec, *, complete: bool = False) -> Live | None:
        # structure over netlink (~5 ms), or the full libnftables read (counters, owner maps)
        live = observe(spec.cluster) if complete else observe_structure(spec.cluster)
        if live is None:
            return None
        return Live(self.name, live.generation, live, complete=complete)

    def live_table(
        self, spec: Spec, live: Live | None = None
    ) -> tuple[Table, dict[int, Table]] | None:
        table = live.detail if live is not None and live.complete else None
        return live_table(spec, table)

    def render(self, spec: Spec, layout: Layout, wiring: Wiring, generation: int) -> Plan:
        table = build_table(spec, layout, wiring, generation)
        text = render_table(table)
        return Plan(spec, layout, wiring, generation, digest(table, text), text, table)

    def plan(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        live: Live | None,
        recorded: Spec | None = None,
    ) -> Plan:
        rendered = self.render(spec, layout, wiring, generation)
        table: NftTable = rendered.payload
        observed = live.detail.observed if live is not None else Observed()
        if recorded is not None:
            # netlink gives no counter names: the last committed spec says which exist
            observed = dataclasses.replace(
                observed, counters=frozenset(counter_name(m.name) for m in recorded.members)
            )
        elif live is not None and not live.complete:
            full = observe(spec.cluster, with_elements=False)
            observed = full.observed if full is not None else observed
        return dataclasses.replace(rendered, payload=_Payload(table, transaction(table, observed)))

    def check(self, plan: Plan) -> None:
        check(plan.payload.batch)

    def commit(self, plan: Plan) -> None:
        commit(plan.payload.batch)

    def verify(self, plan: Plan, *, whole: bool) -> None:
        verify(plan.payload.table, plan.generation, whole=whole)

    def down(self, spec: Spec | None, cluster: str) -> bool:
        return delete_table(cluster)

    def clusters(self, known: list[Spec]) -> list[str]:
        return [n.removeprefix(TABLE_PREFIX).replace("_", "-") for n in list_tables()]

    def counters(self, spec: Spec, live: Live) -> dict[str, tuple[int, int]]:
        table = live.detail if live.complete else observe(spec.cluster)
        found = table.counters if table is not None else {}
        return {m.name: found.get(counter_name(m.name), (0, 0)) for m in spec.members}

    def pinned(self, spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
        if not spec.pinning.enabled:
            return {}, []
        return pinned_flows(spec)

    def offload(self, live: Live) -> dict[str, int] | None:
        return None  # nftables runs in software (netdev hooks are not offloaded here)

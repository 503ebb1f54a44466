"""The nftables backend: the only module that imports the nftables bindings.

Everything here works in the network namespace the process runs in (run vipctl under
`ip netns exec NS` for another one). One libnftables call is one kernel transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
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
from vipctl.core.transition import Moving
from vipctl.errors import KernelError
from vipctl.host import links
from vipctl.host import netlink as nl
from vipctl.host.netlink import NetlinkDecodeError, NetlinkError, NetlinkSocket
from vipctl.render.nft import (
    GENERATION_TAG,
    TABLE_PREFIX,
    NftTable,
    Observed,
    Preparation,
    build_table,
    counter_name,
    digest,
    load_counter_name,
    load_counters,
    load_map_name,
    load_set_name,
    measure_how,
    owner_map_name,
    owners_map_name,
    preparation,
    prepared,
    render_table,
    table_name,
    transaction,
)
from vipctl.render.wiring import Wiring

_CONTEXTS: dict[tuple[int, bool], Any] = {}
# A libnftables context is not thread-safe (one output buffer, one cache), and the metrics
# endpoint answers every scrape in a thread of its own: every use of a cached context holds
# this lock, for the whole call and the read of its buffers.
_LOCK = threading.RLock()
NETLINK_NETFILTER = nl.NETLINK_NETFILTER


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
    that is current when it is created; creating and freeing one costs ~20 ms). Callers
    hold _LOCK while they use it."""
    if os.environ.get("VIPCTL_NO_CTX_CACHE"):
        return _new_context(json_output)
    key = (links.netns_inode(), json_output)
    with _LOCK:
        nft = _CONTEXTS.get(key)
        if nft is None:
            nft = _CONTEXTS[key] = _new_context(json_output)
        return nft


def _cmd(text: str, *, json_output: bool) -> tuple[int, str, str]:
    """One libnftables command on this namespace's context, serialized (see _LOCK)."""
    with _LOCK:
        nft = _context(json_output)
        nft.set_terse_output(False)
        rc, out, err = nft.cmd(text)
    return int(rc), str(out), str(err)


def run_json(cmd: dict[str, Any], *, terse: bool = False) -> dict[str, Any] | None:
    """A JSON command; None when the object does not exist. `terse` leaves out elements.

    Never list rules this way: libnftables 1.0.6 fprintf()s "stmt ops map have no json
    callback" straight to fd 2 (not to its error buffer) for every `update @map { k : v }`
    it prints as JSON, and redirecting fd 2 around the call would hide every other thread's
    log lines meanwhile. observe() reads rules over netlink instead."""
    with _LOCK:
        nft = _nft()
        nft.set_terse_output(terse)
        rc, out, err = nft.json_cmd(cmd)
    if rc != 0:
        if "No such file or directory" in str(err):
            return None
        raise KernelError(f"nft refused {cmd}: {str(err).strip()}")
    return out if isinstance(out, dict) else None


def _nft() -> Any:
    return _context(True)


def commit(batch: str) -> None:
    """Send one batch: the kernel commits all of it or none of it."""
    rc, _out, err = _cmd(batch, json_output=False)
    if rc != 0:
        raise KernelError(
            "the kernel refused the ruleset, nothing changed: " + _refusal(batch, str(err))
        )


def check(batch: str) -> None:
    """Validate a batch in the kernel without committing (libnftables dry-run, on a
    context of its own so the cached one never carries the dry-run flag)."""
    nft = _new_context(False)
    if not hasattr(nft, "set_dry_run"):
        # pip-nftables (1.0.2) has no set_dry_run; Debian's python3-nftables does, and is
        # built for the libnftables it ships with (scripts/install-deps links it in)
        raise KernelError(
            "these nftables bindings cannot check a ruleset without committing it "
            "(no set_dry_run): install Debian's python3-nftables (scripts/install-deps)"
        )
    nft.set_dry_run(True)
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
    dry.set_dry_run(True)

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


def replace_tables(batch: str, tables: list[tuple[str, str]]) -> bool:
    """Commit `batch`, which replaces `tables` ((family, name) pairs) whole, in one
    transaction; True when they read differently afterwards (for "nothing to change").
    Used on members (host/member.py's second chance)."""

    def text(family: str, name: str) -> str:
        rc, out, _ = _cmd(f"list table {family} {name}", json_output=False)
        return out if rc == 0 else ""

    before = [text(f, n) for f, n in tables]
    commit(batch)
    return [text(f, n) for f, n in tables] != before


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


def observe(cluster: str, *, with_elements: bool = True) -> LiveTable | None:
    """The cluster's table: structure, counters, generation, and the owner maps' elements.

    Structure and generation come over netlink (observe_structure), counters and map
    elements from libnftables; no rule is listed as JSON (see run_json). Pin maps can hold
    a million flows: their elements are never read here (pins lists them, pin_counts
    counts them without building a Python object per flow).
    """
    structure = observe_structure(cluster)
    if structure is None:
        return None
    name = table_name(cluster)
    rc, text, _err = _cmd(f"list counters table netdev {name}", json_output=True)
    if rc != 0:
        return None  # removed since the netlink read
    counters: dict[str, tuple[int, int]] = {}
    for item in json.loads(text).get("nftables", []) if text.strip() else []:
        c = item.get("counter")
        if c is not None and c.get("table") == name:
            counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    elements: dict[str, list[tuple[Any, Any]]] = {}
    for m in sorted(structure.observed.maps):
        elements[m] = []
        is_pin = m.startswith(("pin", "flows"))
        if with_elements and not is_pin:
            full = _list("map", name, m)
            for item in full["nftables"] if full is not None else []:
                if "map" in item:
                    elements[m] = [_elem_pair(e) for e in item["map"].get("elem", [])]
    return LiveTable(
        name=name,
        observed=dataclasses.replace(structure.observed, counters=frozenset(counters)),
        generation=structure.generation,
        maps=elements,
        counters=counters,
    )


def observe_structure(cluster: str) -> LiveTable | None:
    """Names of the table's chains, sets and maps, and its generation, straight from
    nfnetlink (vipctl.host.netlink). No set elements and no counters: this costs ~1 ms
    however large the maps are, where any libnftables read fetches every element first
    (0.2-1 s at 65536)."""
    name = table_name(cluster)
    family = nl.nfgenmsg(NFPROTO_NETDEV)  # the kernel answers for netdev tables only
    try:
        with _nftables_netlink() as sock:
            tables = sock.dump(nl.nft_type(nl.NFT_MSG_GETTABLE), family)
            if name not in {t.get_attr("NFTA_TABLE_NAME") for t in tables}:
                return None
            found_chains = sock.dump(nl.nft_type(nl.NFT_MSG_GETCHAIN), family)
            # sets and rules: filtered by the kernel (ENOENT when the table is gone)
            of_table = nl.attr_str(nl.NFTA_SET_TABLE, name)
            found_sets = sock.dump(nl.nft_type(nl.NFT_MSG_GETSET), family + of_table)
            of_table = nl.attr_str(nl.NFTA_RULE_TABLE, name)
            found_rules = sock.dump(nl.nft_type(nl.NFT_MSG_GETRULE), family + of_table)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None  # the table went away between two dumps
        raise KernelError(f"cannot read the nftables table {name}: {_describe(exc.code)}") from None
    except (NetlinkDecodeError, OSError) as exc:
        raise KernelError(f"cannot read the nftables table {name}: {exc}") from None
    chains = {
        str(c.get_attr("NFTA_CHAIN_NAME"))
        for c in found_chains
        if c.get_attr("NFTA_CHAIN_TABLE") == name
    }
    sets: set[str] = set()
    maps: set[str] = set()
    for item in found_sets:
        if item.get_attr("NFTA_SET_TABLE") != name:
            continue
        flags = item.get_attr("NFTA_SET_FLAGS") or frozenset()
        if "NFT_SET_ANONYMOUS" in flags:  # `{ tcp, udp }` in a rule: owned by the rule
            continue
        # a counter map (`type ipv4_addr : counter`) is an object map, not NFT_SET_MAP
        is_map = "NFT_SET_MAP" in flags or "NFT_SET_OBJECT" in flags
        (maps if is_map else sets).add(str(item.get_attr("NFTA_SET_NAME")))
    generation = None
    for rule in found_rules:
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


NFPROTO_NETDEV = nl.NFPROTO_NETDEV


def ruleset_generation() -> int:
    """The kernel's nf_tables generation id: it changes with every committed transaction
    in this namespace, vipctl's or anyone's (`nft flush ruleset`, a reload of
    nftables.service, a deleted element). One tiny netlink request (NFT_MSG_GETGEN): the
    daemon polls it and reads its table back only when it changed."""
    try:
        with _nftables_netlink() as sock:
            found = sock.request(nl.nft_type(nl.NFT_MSG_GETGEN), nl.nfgenmsg(0))
    except NetlinkError as exc:
        raise KernelError(f"cannot read the nftables generation: {_describe(exc.code)}") from None
    except (NetlinkDecodeError, OSError) as exc:
        raise KernelError(f"cannot read the nftables generation: {exc}") from None
    for msg in found:
        gen = msg.get_attr("NFTA_GEN_ID")
        if gen is not None:
            return int(gen)
    raise KernelError("cannot read the nftables generation: the kernel sent no NFTA_GEN_ID")


def _describe(code: int) -> str:
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


@contextmanager
def _nftables_netlink() -> Iterator[NetlinkSocket]:
    """The nfnetlink socket of this namespace and thread, reused (netlink.connection: one
    per namespace and thread, closed when its thread has ended; the metrics endpoint
    answers each scrape in a new thread). Before a new one is opened, _require_nfnetlink
    says whether the kernel has nf_tables at all."""
    with nl.connection(nl.NETLINK_NETFILTER, before_open=_require_nfnetlink) as sock:
        yield sock


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
    text = str(key)  # a masked source address: 0.0.0.7, ::7
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return int.from_bytes(socket.inet_pton(family, text), "big")
    except OSError:
        raise ValueError(f"{text!r} is not an address") from None


def live_table(spec: Spec, live: LiveTable | None = None) -> tuple[Table, dict[int, Table]] | None:
    """The bucket table packets meet now, read from the kernel's owner maps.

    Returns (table of the first VIP family, {family: table}); None if not installed.
    """
    maps = live.maps if live is not None else _owner_maps(spec)
    if maps is None:
        return None
    by_family: dict[int, Table] = {}
    ifindex = links.port_ifindex(spec)
    port_owner = {m.port: m.name for m in spec.members}
    index_owner = {ifindex[p]: n for p, n in port_owner.items() if p in ifindex}
    size = spec.partition.buckets
    for family in spec.vip_families:
        name = owners_map_name(family, spec)  # pinning moving/off: bucket -> verdict
        if name not in maps:
            name = owner_map_name(family, spec)  # pinning always: bucket -> mark
        if name not in maps:
            return None
        table: list[Owner] = [None] * size
        for key, value in maps[name]:
            owner = _owner_of(value, family, index_owner, port_owner)
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


def _owner_of(
    value: Any, family: int, index_owner: dict[int, str], port_owner: dict[str, str]
) -> Owner:
    """The member a bucket's map value sends new flows to: a mark (the port's ifindex), or
    a verdict `goto to4_<member>`, `goto rec4_<member>` (recording, still the old owner's)
    or `goto mv4_<old mark>_<new mark>` (in transition: new flows go to the new owner)."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return index_owner.get(int(value))
    if isinstance(value, dict):
        verdict = value.get("goto") or value.get("jump")
        target = str(verdict.get("target", "")) if isinstance(verdict, dict) else ""
        for prefix in (f"to{family}_", f"rec{family}_"):
            if target.startswith(prefix):
                return target.removeprefix(prefix)
        if target.startswith(f"mv{family}_"):
            marks = target.removeprefix(f"mv{family}_").split("_")
            return index_owner.get(int(marks[-1])) if marks[-1].isdigit() else None
        return None
    return port_owner.get(str(value))


def _owner_maps(spec: Spec) -> dict[str, list[tuple[Any, Any]]] | None:
    """Only the owner maps' elements (what `which` needs): one libnftables listing per
    VIP family, no netlink dump, no counters, no pin maps. None: not installed."""
    name = table_name(spec.cluster)
    maps: dict[str, list[tuple[Any, Any]]] = {}
    for family in spec.vip_families:
        # pinning moving/off: bucket -> verdict; pinning always: bucket -> mark
        for owner_map in (owners_map_name(family, spec), owner_map_name(family, spec)):
            out = _list("map", name, owner_map)
            if out is None:
                continue
            for item in out["nftables"]:
                if "map" in item:
                    maps[owner_map] = [_elem_pair(e) for e in item["map"].get("elem", [])]
            break
        else:
            return None
    return maps


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
    """Every pinned flow of the cluster (reads the pin maps, which can be large, and
    nothing else; no pin map, as in steady state with pinning moving: no listing at all)."""
    structure = observe_structure(cluster)
    if structure is None:
        return []
    name = table_name(cluster)
    out: list[Pin] = []
    for m in sorted(structure.observed.maps):
        if not m.startswith(("pin", "flows")):
            continue
        family = 4 if m.startswith(("pin4", "flows4")) else 6
        full = _list("map", name, m)
        for item in full["nftables"] if full is not None else []:
            for key, value in (_elem_pair(e) for e in item.get("map", {}).get("elem", [])):
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


def pin_counts(spec: Spec) -> dict[str, int]:
    """Pinned flows per member, counted in the text listing of the pin maps: no Python
    object per flow (JSON of 200k pins: 5.7 s and 740 MB RSS; this: 3.1 s and 320 MB, most
    of it inside libnftables, which has no way to count elements without listing them)."""
    name = table_name(spec.cluster)
    structure = observe_structure(spec.cluster)
    if structure is None:
        return {}
    ifindex = links.port_ifindex(spec)
    marks = {m.name: ifindex[m.port] for m in spec.members if m.port in ifindex}
    per = {m.name: 0 for m in spec.members}
    for pin_map in sorted(n for n in structure.observed.maps if n.startswith(("pin", "flows"))):
        rc, text, _err = _cmd(f"list map netdev {name} {pin_map}", json_output=False)
        if rc != 0:
            continue
        for member, mark in marks.items():  # every element ends ": 0x%08x" (meta mark)
            per[member] += text.count(f": 0x{mark:08x}")
    return per


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


def read_load(spec: Spec) -> list[tuple[int, int]] | None:
    """(packets, bytes) per bucket counted so far by a measuring table (apply with
    measuring=True, render.nft.load_objects); None when the table does not count (another
    commit replaced it: a failover during the window)."""
    found: list[tuple[int, int]] = [(0, 0)] * spec.partition.buckets
    if measure_how(spec) == "set":
        complete = _read_load_sets(spec, found)
    else:
        complete = _read_load_counters(spec, found)
    return found if complete else None


def _read_load_counters(spec: Spec, found: list[tuple[int, int]]) -> bool:
    name = table_name(spec.cluster)
    rc, text, err = _cmd(f"list counters table netdev {name}", json_output=True)
    if rc != 0:
        raise KernelError(f"cannot read the load counters: {str(err).strip()}")
    wanted = {
        load_counter_name(f, b): b for f in spec.vip_families for b in range(spec.partition.buckets)
    }
    seen = 0
    for item in json.loads(text).get("nftables", []) if text.strip() else []:
        c = item.get("counter")
        if c is None or c.get("table") != name or c.get("name") not in wanted:
            continue
        b = wanted[c["name"]]
        p, n = found[b]
        found[b] = (p + int(c.get("packets", 0)), n + int(c.get("bytes", 0)))
        seen += 1
    return seen == len(wanted)


def _read_load_sets(spec: Spec, found: list[tuple[int, int]]) -> bool:
    for family in spec.vip_families:
        out = _list("set", table_name(spec.cluster), load_set_name(family))
        if out is None:
            return False
        for item in out["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                e = elem.get("elem", {}) if isinstance(elem, dict) else {}
                counter = e.get("counter") or {}
                b = _bucket_from_key(e.get("val"), spec)
                p, n = found[b]
                found[b] = (p + int(counter.get("packets", 0)), n + int(counter.get("bytes", 0)))
    return True


@dataclass(frozen=True)
class _Payload:
    table: NftTable
    batch: str
    prep: Preparation | None = None  # committed one transaction before `batch`


class NftBackend:
    """One netdev table per cluster, replaced by one libnftables transaction."""

    name = "nftables"
    transitions = True  # keeps per-flow state for buckets in transition

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

    def render(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        table = build_table(spec, layout, wiring, generation, moving, measuring)
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
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        rendered = self.render(spec, layout, wiring, generation, moving, measuring)
        table: NftTable = rendered.payload
        observed = live.detail.observed if live is not None else Observed()
        if recorded is not None:
            # netlink gives no counter names: the last committed spec says which exist,
            # and a load map says its per-bucket counters do (added and deleted together)
            names = {counter_name(m.name) for m in recorded.members}
            if any(load_map_name(f) in observed.maps for f in (4, 6)):
                names.update(load_counters(recorded))
            observed = dataclasses.replace(observed, counters=frozenset(names))
        elif live is not None and not live.complete:
            full = observe(spec.cluster, with_elements=False)
            observed = full.observed if full is not None else observed
        prep = preparation(table, observed)
        batch = transaction(table, prepared(observed, prep))
        return dataclasses.replace(rendered, payload=_Payload(table, batch, prep))

    def flow_buckets(self, spec: Spec) -> set[int] | None:
        """Buckets that still have a recorded flow (None: some flows cannot be placed)."""
        buckets: set[int] = set()
        for bucket, _owner in pinned_flows(spec)[1]:
            if bucket is None:
                return None
            buckets.add(bucket)
        return buckets

    def assumed(self, plan: Plan) -> Live | None:
        table: NftTable = plan.payload.table
        observed = Observed(
            sets=frozenset(s.name for s in table.sets if s.kind == "set"),
            maps=frozenset(s.name for s in table.sets if s.kind == "map"),
            counters=frozenset(table.counters),
            chains=frozenset(c.name for c in table.chains),
            exists=True,
        )
        name = table.name
        return Live(self.name, plan.generation, LiveTable(name, observed, plan.generation))

    def check(self, plan: Plan) -> None:
        payload: _Payload = plan.payload
        check((payload.prep.batch if payload.prep else "") + payload.batch)

    def commit(self, plan: Plan) -> None:
        """One transaction; two when the table gains regular chains (render/nft.py
        Preparation: they go in first, unreferenced, so that no packet meets them empty).
        A refused second transaction takes the first one back: nothing changed."""
        payload: _Payload = plan.payload
        if payload.prep is None:
            commit(payload.batch)
            return
        commit(payload.prep.batch)
        try:
            commit(payload.batch)
        except KernelError:
            with contextlib.suppress(KernelError):
                commit(payload.prep.undo)
            raise

    def verify(self, plan: Plan, *, whole: bool) -> None:
        # a planned commit (payload: the table and its batch) or a rendered one (the table:
        # the controller's drift check reads back what the state says was committed)
        payload = plan.payload
        table = payload.table if isinstance(payload, _Payload) else payload
        verify(table, plan.generation, whole=whole)

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

    def pin_counts(self, spec: Spec) -> dict[str, int]:
        return pin_counts(spec) if spec.pinning.enabled else {}

    def read_load(self, spec: Spec) -> list[tuple[int, int]] | None:
        return read_load(spec)

    def offload(self, live: Live) -> dict[str, int] | None:
        return None  # nftables runs in software (netdev hooks are not offloaded here)

    def ruleset_generation(self) -> int | None:
        return ruleset_generation()

"""Partition -> one nftables table per cluster, netdev family (pure).

Design (as measured on kernel 6.18 with nft 1.0.6):
- The owner of a packet is decided ONCE, at the uplink's ingress, by one map lookup keyed
  by the source bucket. Per-port sets are not atomic per packet, a single lookup is.
- broadcast: the ingress rule stamps `meta mark` with the owner's port ifindex, `dup`s the
  packet to every member port and drops the original (else it is also routed). Each port's
  egress chain drops copies whose mark is not its own ifindex and rewrites the destination
  MAC (a `dup` copy keeps the uplink's MAC and the member would drop it as OTHERHOST).
  The mark is the port's ifindex, so it means the same port in every generation: a copy
  stamped under generation N and judged by egress rules of N+1 still gets the right verdict.
- steer: the owner's chain (reached by `goto` from a mark -> chain verdict map) rewrites
  the destination MAC and `fwd`s one copy to its port, all at ingress: no egress chain.
- pinning: a dynamic map flow -> mark, looked up before the bucket map; see build_table.
- Buckets nobody owns (no member up) fall through to an explicit drop.
- Object names encode their definition (buckets4_m8 = IPv4, mask key, 8 bits), so a change of
  key type is a new object and the old one is deleted in the same transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from vipctl.core.partition import Layout
from vipctl.core.spec import Member, Spec
from vipctl.core.transition import Moving
from vipctl.render.wiring import Wiring

TABLE_PREFIX = "vipctl_"
GENERATION_TAG = "vipctl generation"


def table_name(cluster: str) -> str:
    return TABLE_PREFIX + cluster.replace("-", "_")


@dataclass(frozen=True)
class NftSet:
    name: str
    kind: str  # "set" | "map"
    decl: tuple[str, ...]  # statements inside the braces, without elements
    elements: tuple[str, ...]
    dynamic: bool = False  # filled by the packet path (pins): never flushed by a swap


@dataclass(frozen=True)
class NftChain:
    name: str
    hook: str | None  # e.g. 'type filter hook ingress device "up0" priority 0; policy accept;'
    rules: tuple[str, ...]


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    sets: tuple[NftSet, ...]
    counters: tuple[str, ...]
    chains: tuple[NftChain, ...]

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"


def _key_expr(family: int, key: str, bits: int, seed: int) -> tuple[str, str]:
    """(expression computing the bucket key, typeof of the map key)."""
    saddr = "ip saddr" if family == 4 else "ip6 saddr"
    if key == "hash":
        # The map is declared with `typeof numgen inc mod N`, not `typeof jhash ...`: both
        # are 32-bit integers to the kernel, but nft 1.0.6 segfaults when it prints a set
        # whose typeof is a jhash (`nft list ruleset` would crash for every operator).
        return f"jhash {saddr} mod {1 << bits} seed 0x{seed:x}", f"numgen inc mod {1 << bits}"
    return f"{saddr} & {_mask_literal(family, bits)}", saddr


def _mask_literal(family: int, bits: int) -> str:
    return str(_bucket_addr(family, (1 << bits) - 1))


def _bucket_addr(family: int, bucket: int) -> IPv4Address | IPv6Address:
    return IPv4Address(bucket) if family == 4 else IPv6Address(bucket)


@functools.lru_cache(maxsize=16)
def _bucket_literals(family: int, key: str, bits: int) -> tuple[str, ...]:
    """The map key of every bucket, as nft spells it (cached: 65536 of them cost ~1 s to
    format through ipaddress, ~20 ms this way)."""
    size = 1 << bits
    if key == "hash":
        return tuple(str(b) for b in range(size))
    if family == 4:
        return tuple(f"0.0.{b >> 8}.{b & 255}" for b in range(size))
    return tuple(f"::{b:x}" if b else "::" for b in range(size))


def runs(table: Layout | tuple[str | None, ...]) -> list[tuple[int, int, str]]:
    """Maximal runs of consecutive buckets with one owner (or one verdict): (first, last,
    owner); buckets of None are left out."""
    owners = table.table if isinstance(table, Layout) else table
    out: list[tuple[int, int, str]] = []
    start = 0
    for owner, group in itertools.groupby(owners):
        n = sum(1 for _ in group)
        if owner is not None:
            out.append((start, start + n - 1, owner))
        start += n
    return out


def vip_match(family: int, spec: Spec) -> str:
    """The VIPs of one family as a literal: one address compares in place, several make an
    anonymous constant set. Cheaper per packet than a named set (a resizable hash lookup),
    and the rules are rewritten by every transaction anyway."""
    vips = [str(v) for v in sorted((v for v in spec.vips if v.version == family), key=int)]
    return vips[0] if len(vips) == 1 else "{ " + ", ".join(vips) + " }"


def owner_map_name(family: int, spec: Spec) -> str:
    """Name of the bucket -> owner map of one address family."""
    p = spec.partition
    suffix = f"m{p.bits}" if p.key == "mask" else f"h{p.bits}_{p.seed:x}"
    return f"buckets{family}_{suffix}"


def counter_name(member: str) -> str:
    return f"c_{member}"


def _flow_key(ip: str) -> str:
    """The pin key of a flow: 12 bytes, one transport-header load.

    IPv4: source address, VIP, then both ports as one 32-bit load (`@th,0,32` = sport and
    dport). Fewer and shorter loads than `th sport . th dport` (two loads, each padded to
    4 bytes): every pinned packet computes this key twice (lookup and refresh).
    IPv6: nft 1.0.6 cannot generate a dynset whose key is longer than 16 bytes when the
    element carries data (netlink_linearize.c assertion `dreg < ctx->reg_low`), and a typeof
    of jhash over a concatenation makes `nft list ruleset` segfault. So the IPv6 key is the
    low 64 bits of the source (the interface ID, raw payload @nh,128,64) and both ports.
    Two flows that share a key share one pin: both stay on one member for their whole life
    (every member serves every VIP of its cluster), which keeps every flow consistent; only
    the initial member choice of the later flow differs from its bucket's owner.
    """
    if ip == "ip":
        return "ip saddr . ip daddr . @th,0,32"
    return "@nh,128,64 . @th,0,32"


def pin_name(family: int, spec: Spec) -> str:
    """`_k12`: the 12-byte key of `_flow_key` (a new key layout is a new map)."""
    pin = spec.pinning
    return f"pin{family}_t{pin.idle_timeout_s}_n{pin.max_flows}_k12"


def member_chain(family: int, member: str) -> str:
    return f"to{family}_{member}"


EXACT_BITS = 12  # up to 2**12 buckets the owners map holds one element per bucket


def owners_map_name(family: int, spec: Spec) -> str:
    """Name of the bucket -> verdict map of one family (pinning moving or off)."""
    p = spec.partition
    suffix = f"m{p.bits}" if p.key == "mask" else f"h{p.bits}_{p.seed:x}"
    return f"owners{family}_{suffix}"


def flows_name(family: int, spec: Spec) -> str:
    """The flows recorded for buckets in transition (pinning: moving)."""
    pin = spec.pinning
    return f"flows{family}_t{pin.idle_timeout_s}_n{pin.max_flows}_k12"


def record_chain(family: int, member: str) -> str:
    return f"rec{family}_{member}"


def move_chain(family: int, old_mark: int, new_mark: int) -> str:
    """Chains of moving buckets are named by the ports' marks: member names may hold `_`."""
    return f"mv{family}_{old_mark}_{new_mark}"


def icmp_chain(family: int) -> str:
    return f"icmp{family}"


# ICMP errors about a flow to a VIP come from a router on the path, not from the client:
# bucketing them by source would pick an arbitrary member (and the one that holds the
# connection would never learn the path MTU). They are copied to every member that is up;
# the members without the connection ignore them.
_ICMP_ERRORS = {
    4: "icmp type destination-unreachable",
    6: "icmpv6 type { destination-unreachable, packet-too-big }",
}


@dataclass(frozen=True)
class _Ctx:
    """What every family's rules need: the ports, marks, MACs and VIP matches."""

    spec: Spec
    wiring: Wiring
    present: tuple[Member, ...]  # members whose port exists
    alive: tuple[Member, ...]  # present and up, by mark
    mark: Mapping[str, int]

    def deliver(self, member: str) -> str:
        """The rule that hands a packet (at ingress) to `member`."""
        m = next(x for x in self.present if x.name == member)
        if self.spec.mode == "broadcast":
            copies = " ".join(f'dup to "{x.port}"' for x in self.present)
            return f"meta mark set {self.mark[member]} {copies} drop"
        return (
            f'counter name "{counter_name(member)}" '
            f'ether daddr set {self.wiring.macs[member].lower()} fwd to "{m.port}"'
        )


def _icmp_rules(ctx: _Ctx) -> tuple[str, ...]:
    """Copy an ICMP error to every member that is up (steer: the MAC per copy; broadcast:
    the mark per copy, each port's egress keeps its own and sets the MAC)."""
    if not ctx.alive:
        return ("drop",)
    out = []
    for i, m in enumerate(ctx.alive):
        last = i == len(ctx.alive) - 1
        if ctx.spec.mode == "broadcast":
            out.append(
                f'meta mark set {ctx.mark[m.name]} dup to "{m.port}"' + (" drop" if last else "")
            )
        else:
            verb = "fwd" if last else "dup"
            out.append(f'ether daddr set {ctx.wiring.macs[m.name].lower()} {verb} to "{m.port}"')
    return tuple(out)


def build_table(
    spec: Spec,
    layout: Layout,
    wiring: Wiring,
    generation: int,
    moving: Moving | None = None,
    measuring: bool = False,
) -> NftTable:
    """The cluster's whole table as data (no kernel access).

    `measuring` (only for the window of `rebalance --auto`): each bucket's packets and
    bytes are counted in the same rule as the owners lookup (`counter name <bucket> map
    @loadmap4`, one named counter per bucket; hash key: `update @load4 { <bucket> }`, a
    dynamic set with a counter per element); see load_objects.

    The uplink's ingress jumps VIP packets of each family to chain vip4/vip6. There:
      1. an ICMP error about a flow (fragmentation needed, packet too big, unreachable) is
         copied to every member that is up (path MTU discovery works through vipctl);
      2. pinning moving/off: ONE lookup, bucket(saddr) -> `goto` the owner's chain
         (`to4_<member>`), the whole per-packet cost in steady state. A bucket in
         transition (`moving`) goes to a chain of its own instead: `rec4_<old>` records
         UDP flows and delivers to the old owner; `mv4_<old>_<new>` sends recorded flows
         to their member, silent TCP connections to the old owner and the rest to the new
         one (see core/transition.py);
         pinning always: a pinned TCP/UDP flow goes to its member (mark := pin[flow],
         `vmap @deliverN`), a pin of a member that is not alive is deleted, then mark :=
         owner[bucket] and the same vmap; each member chain refreshes the pin;
      3. drop (no owner: nobody is up; never let a VIP packet be routed).
    Each member's chain: steer counts, rewrites the destination MAC and `fwd`s to the
    port, all at ingress; broadcast stamps the mark (the owner's port ifindex), `dup`s to
    every port and drops the original, and each port's egress chain drops copies whose
    mark is not its own ifindex, counts and rewrites the MAC. The mark means the same port
    in every generation: a copy stamped under generation N and judged by egress rules of
    N+1 gets the right verdict.
    """
    present = tuple(m for m in spec.members if m.port in wiring.ifindex)
    # a member whose port is gone (allowed only while it is down) has no chain and no copy
    mark = {m.name: wiring.ifindex[m.port] for m in present}
    alive = tuple(
        sorted((m for m in present if m.name not in layout.down), key=lambda m: mark[m.name])
    )
    ctx = _Ctx(spec, wiring, present, alive, mark)
    parts = _Parts()
    for family in spec.vip_families:
        fam = _Family.of(spec, family, generation)
        body = _member_bodies(parts, ctx, fam, layout, moving or {}, measuring)
        parts.chains.append(NftChain(icmp_chain(family), None, _icmp_rules(ctx)))
        for m in present:
            rules = (*body[m.name], ctx.deliver(m.name))
            parts.chains.append(NftChain(member_chain(family, m.name), None, rules))
    uplink = f'type filter hook ingress device "{spec.uplink}" priority 0; policy accept;'
    parts.chains.insert(0, NftChain(f"in_{spec.uplink}", uplink, tuple(parts.ingress)))
    for m in present:
        if m.name in parts.second:
            hook = f'type filter hook ingress device "{m.port}" priority 0; policy accept;'
            parts.chains.append(NftChain(f"from_{m.port}", hook, tuple(parts.second[m.name])))
    if spec.mode == "broadcast":
        parts.chains.extend(_egress_chains(ctx))
    return NftTable(
        family="netdev",
        name=table_name(spec.cluster),
        sets=tuple(parts.sets),
        counters=tuple(counter_name(m.name) for m in spec.members)
        + (load_counters(spec) if measuring and measure_how(spec) == "counters" else ()),
        chains=tuple(parts.chains),
    )


@dataclass
class _Parts:
    """The table as it is built: sets, the uplink's ingress rules, the other chains."""

    sets: list[NftSet] = dataclasses.field(default_factory=list)
    ingress: list[str] = dataclasses.field(default_factory=list)
    chains: list[NftChain] = dataclasses.field(default_factory=list)
    # the second chance: rules of each old owner's port ingress, by member
    second: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class _Family:
    """What one VIP family's rules are made of."""

    family: int
    is_vip: str  # `ip daddr <VIPs>`: each egress rule's match
    # the uplink's match: only frames addressed to this router (invariant 11): a frame the
    # routers' switch floods (unknown unicast, a MAC table flush) reaches every router, and
    # each one forwarding it would deliver it twice. Not taken here, an OTHERHOST frame
    # goes on to the stack, which drops it.
    to_me: str
    ttl: str  # `ip ttl` / `ip6 hoplimit`: the second chance's marker
    expr: str  # the bucket of a packet (mask or jhash of the source)
    typeof: str
    literals: tuple[str, ...]  # each bucket as a map key
    flow: str  # a flow's key in the pin/flow maps
    deliver: str  # the mark -> member chain map
    icmp: str  # an ICMP error about a flow -> the copy-to-every-member chain
    comment: str  # the generation, on the first family's lookup rule

    @classmethod
    def of(cls, spec: Spec, family: int, generation: int) -> _Family:
        p = spec.partition
        ip = "ip" if family == 4 else "ip6"
        expr, typeof = _key_expr(family, p.key, p.bits, p.seed)
        first = family == spec.vip_families[0]
        is_vip = f"{ip} daddr {vip_match(family, spec)}"
        return cls(
            family=family,
            is_vip=is_vip,
            to_me=f"meta pkttype host {is_vip}",
            ttl="ip ttl" if family == 4 else "ip6 hoplimit",
            expr=expr,
            typeof=typeof,
            literals=_bucket_literals(family, p.key, p.bits),
            flow=_flow_key(ip),
            deliver=f"deliver{family}",
            icmp=f"{_ICMP_ERRORS[family]} goto {icmp_chain(family)}",
            comment=f' comment "{GENERATION_TAG} {generation}"' if first else "",
        )


def _member_bodies(
    parts: _Parts,
    ctx: _Ctx,
    fam: _Family,
    layout: Layout,
    moving: Moving,
    measuring: bool,
) -> dict[str, list[str]]:
    """The family's lookup (sets, the uplink's rules, transition chains) and what each
    member's chain does before delivering."""
    body: dict[str, list[str]] = {m.name: [] for m in ctx.present}
    if ctx.spec.pinning.mode == "always":
        _pinned_lookup(parts, ctx, fam, layout, body, measuring)
        return body
    pairs = _owners_lookup(parts, ctx, fam, layout, moving, measuring)
    for m in ctx.present:
        body[m.name].append(fam.icmp)
    if pairs:
        parts.sets.append(_deliver_map(ctx, fam))
    return body


def _deliver_map(ctx: _Ctx, fam: _Family) -> NftSet:
    elements = tuple(
        f"{ctx.mark[m.name]} : goto {member_chain(fam.family, m.name)}" for m in ctx.alive
    )
    return NftSet(fam.deliver, "map", ("type mark : verdict",), elements)


def _pinned_lookup(
    parts: _Parts,
    ctx: _Ctx,
    fam: _Family,
    layout: Layout,
    body: dict[str, list[str]],
    measuring: bool,
) -> None:
    """pinning always: a pinned flow goes to its member, a pin of a member that is not
    alive is deleted, then the bucket's owner; each member chain refreshes the pin."""
    spec, mark, family = ctx.spec, ctx.mark, fam.family
    owner_name = owner_map_name(family, spec)
    # An interval map of runs of buckets: a few elements per member instead of one per
    # bucket, so a 65536-bucket table installs and swaps as fast as a small one.
    elements = tuple(
        _element(fam.literals, lo, hi, str(mark[owner])) for lo, hi, owner in runs(layout.table)
    )
    decl = (f"typeof {fam.typeof} : meta mark", "flags interval")
    parts.sets.append(NftSet(owner_name, "map", decl, elements))
    pin = pin_name(family, spec)
    parts.sets.append(_dynamic_map(pin, fam.flow, spec))
    rules = [
        fam.icmp,
        # only TCP/UDP flows are ever pinned, so no protocol check is needed here: an
        # ICMP packet's bytes at the port offsets simply find no pin
        f"meta mark set {fam.flow} map @{pin} meta mark vmap @{fam.deliver}",
        # packets arrive unmarked, so a mark here is the pin of a member that is not alive
        # (an unexpected foreign mark only costs a delete of a missing key)
        f"meta mark != 0 delete @{pin} {{ {fam.flow} : 0 }}",
        f"meta mark set {fam.expr} map @{owner_name} meta mark vmap @{fam.deliver}",
    ]
    for m in ctx.present:
        body[m.name].append(
            f"meta l4proto {{ tcp, udp }} update @{pin} {{ {fam.flow} : {mark[m.name]} }}"
        )
    parts.sets.append(_deliver_map(ctx, fam))
    if measuring:
        count, extra = load_objects(spec, family, fam.expr, fam.typeof, fam.literals)
        parts.sets.extend(extra)
        rules.insert(1, count.strip())
    rules.append("drop")
    parts.chains.append(NftChain(f"vip{family}", None, tuple(rules)))
    parts.ingress.append(f"{fam.to_me} jump vip{family}{fam.comment}")


def _owners_lookup(
    parts: _Parts,
    ctx: _Ctx,
    fam: _Family,
    layout: Layout,
    moving: Moving,
    measuring: bool,
) -> set[tuple[str, str]]:
    """pinning moving/off: ONE lookup in the uplink's base chain, bucket -> `goto` the
    owner's chain, or a transition chain for a moving bucket. Returns the (old, new) pairs
    in transition (their chains need the deliver map)."""
    spec, family = ctx.spec, fam.family
    verdicts, pairs, recorders = _verdicts(ctx, family, layout, moving)
    owners = owners_map_name(family, spec)
    if spec.partition.bits <= EXACT_BITS:
        # a hash lookup of the exact bucket: measured 1-2% faster than the interval map's
        # tree at 8 bits, and a swap of 2**12 elements is still cheap
        decl: tuple[str, ...] = (f"typeof {fam.typeof} : verdict",)
        elems = tuple(f"{fam.literals[b]} : {v}" for b, v in enumerate(verdicts) if v)
    else:
        # an interval map of runs: a few elements per member at 2**16 buckets
        decl = (f"typeof {fam.typeof} : verdict", "flags interval")
        elems = tuple(_element(fam.literals, lo, hi, v) for lo, hi, v in runs(tuple(verdicts)))
    parts.sets.append(NftSet(owners, "map", decl, elems))
    # The lookup sits in the uplink's base chain: no jump (a jump measured ~1.5% of the
    # forwarding rate); ICMP errors are caught in the member chains, where the check costs
    # one protocol compare (in the base chain it cost ~3%).
    count = ""
    if measuring:
        count, extra = load_objects(spec, family, fam.expr, fam.typeof, fam.literals)
        parts.sets.extend(extra)
    parts.ingress.append(f"{fam.to_me} {count}{fam.expr} vmap @{owners}{fam.comment}")
    parts.ingress.append(f"{fam.to_me} drop")
    if spec.pinning.mode == "moving":
        fmap = flows_name(family, spec)
        parts.sets.append(_dynamic_map(fmap, fam.flow, spec))
        parts.chains.extend(_transition_chains(ctx, fam, fmap, recorders, pairs))
        _second_chance(parts, ctx, fam, layout, moving)
    return pairs


# Packets of a moving bucket leave the router with this TTL (hop limit): at the member, the
# destination, a TTL means nothing more, so it can say "the router takes this back if you do
# not hold it" (host/member.py). A packet handed back gets SECOND_CHANCE_RESET_TTL, so the
# new owner resets it instead of handing it back again; a dead member's buckets move with
# no transition and no marker, so their clients get the quick reset (invariant 5).
SECOND_CHANCE_TTL = 1
SECOND_CHANCE_RESET_TTL = 64


def second_map_name(family: int, member: str) -> str:
    return f"second{family}_{member}"


def _second_chance(parts: _Parts, ctx: _Ctx, fam: _Family, layout: Layout, moving: Moving) -> None:
    """A moving bucket's old owner gives the router a second chance (host/member.py): a
    TCP packet that does not start a connection and that it has no socket for comes back
    on its port, still addressed to the VIP, and goes to the bucket's new owner. That is
    where a connection opened after the change lives when another router (whose flow
    map never saw its SYN) sent its packet to the old owner: the connection survives the
    death of the router that recorded it. Only packets of moving buckets carry the marker
    the member checks (SECOND_CHANCE_TTL); only the old owner's port takes them back, only
    for the buckets it gave away, with the marker removed: a packet bounces once at most.
    Anything else addressed to a VIP from a member port is dropped (a member never sends to
    a VIP: it holds it)."""
    family, mark = fam.family, ctx.mark
    by_old: dict[str, list[str]] = {}
    for bucket, move in sorted(moving.items()):
        owner = layout.table[bucket] if bucket < len(layout.table) else None
        if move.phase != "move" or owner is None or not {move.old, move.new} <= set(mark):
            continue  # as _verdicts: only a bucket in its move chain
        by_old.setdefault(move.old, []).append(
            f"{fam.literals[bucket]} : goto {member_chain(family, move.new)}"
        )
    for old, elements in sorted(by_old.items(), key=lambda kv: mark[kv[0]]):
        name = second_map_name(family, old)
        parts.sets.append(NftSet(name, "map", (f"typeof {fam.typeof} : verdict",), tuple(elements)))
        parts.second.setdefault(old, []).extend(
            [
                # the marker goes: the new owner resets what it does not hold either
                f"{fam.is_vip} {fam.ttl} set {SECOND_CHANCE_RESET_TTL} {fam.expr} vmap @{name}",
                f"{fam.is_vip} drop",
            ]
        )


def _verdicts(
    ctx: _Ctx, family: int, layout: Layout, moving: Moving
) -> tuple[list[str | None], set[tuple[str, str]], set[str]]:
    """Each bucket's verdict (None: nobody owns it), the (old, new) pairs in their move
    phase and the old owners recording."""
    mark = ctx.mark
    verdicts: list[str | None] = []
    pairs: set[tuple[str, str]] = set()
    recorders: set[str] = set()
    for bucket, owner in enumerate(layout.table):
        move = moving.get(bucket) if ctx.spec.pinning.mode == "moving" else None
        if owner is None or owner not in mark:
            verdicts.append(None)
        elif move is None or move.old not in mark or move.new not in mark:
            verdicts.append(f"goto {member_chain(family, owner)}")
        elif move.phase == "record":
            recorders.add(move.old)
            verdicts.append(f"goto {record_chain(family, move.old)}")
        else:
            pairs.add((move.old, move.new))
            verdicts.append(f"goto {move_chain(family, mark[move.old], mark[move.new])}")
    return verdicts, pairs, recorders


def _transition_chains(
    ctx: _Ctx,
    fam: _Family,
    fmap: str,
    recorders: set[str],
    pairs: set[tuple[str, str]],
) -> list[NftChain]:
    """`rec4_<old>` records UDP flows and delivers to the old owner; `mv4_<old>_<new>`
    sends recorded flows to their member, silent TCP connections to the old owner and the
    rest to the new one (core/transition.py)."""
    family, mark, flow = fam.family, ctx.mark, fam.flow
    out = [
        NftChain(
            record_chain(family, old),
            None,
            (
                fam.icmp,
                f"meta l4proto udp update @{fmap} {{ {flow} : {mark[old]} }}",
                f"goto {member_chain(family, old)}",
            ),
        )
        for old in sorted(recorders)
    ]
    syn = "tcp flags & (syn | ack) == syn"
    for old, new in sorted(pairs, key=lambda pr: (mark[pr[0]], mark[pr[1]])):
        o, n = mark[old], mark[new]
        rules = (
            fam.icmp,
            # the second chance's marker (_second_chance): a packet of a moving bucket that
            # its member does not hold may come back; only such packets carry it
            f"{fam.ttl} set {SECOND_CHANCE_TTL}",
            # a recorded flow: refresh its entry, go to its member
            f"meta mark set {flow} map @{fmap}",
            f"meta mark != 0 update @{fmap} {{ {flow} : meta mark }}",
            f"meta mark vmap @{fam.deliver}",
            # recorded to a member that is down: released
            f"meta mark != 0 delete @{fmap} {{ {flow} : 0 }}",
            # a new connection: the new owner (recorded: its next packets are not SYNs);
            # delivery never depends on the map
            f"{syn} update @{fmap} {{ {flow} : {n} }}",
            f"{syn} goto {member_chain(family, new)}",
            # an unrecorded packet of a connection: the old owner's, recorded there. One
            # rule: with the map full the update fails, the rule stops, and the packet
            # goes to the new owner (where a connection opened under a full map is)
            f"meta l4proto tcp update @{fmap} {{ {flow} : {o} }} goto {member_chain(family, old)}",
            f"goto {member_chain(family, new)}",
        )
        out.append(NftChain(move_chain(family, o, n), None, rules))
    return out


def _egress_chains(ctx: _Ctx) -> list[NftChain]:
    """broadcast: each port's egress drops copies whose mark is not its own ifindex, counts
    and rewrites the destination MAC."""
    spec = ctx.spec
    is_vip = {f: _Family.of(spec, f, 0).is_vip for f in spec.vip_families}
    out = []
    for m in ctx.present:
        mac = ctx.wiring.macs[m.name].lower()
        rules = [f"{is_vip[f]} meta mark != {ctx.mark[m.name]} drop" for f in spec.vip_families]
        rules += [
            f'{is_vip[f]} counter name "{counter_name(m.name)}" ether daddr set {mac}'
            for f in spec.vip_families
        ]
        hook = f'type filter hook egress device "{m.port}" priority 0; policy accept;'
        out.append(NftChain(f"out_{m.port}", hook, tuple(rules)))
    return out


def load_counters(spec: Spec, bits: int | None = None) -> tuple[str, ...]:
    """The per-bucket counters a measuring table holds (mask key)."""
    n = 1 << (bits if bits is not None else spec.partition.bits)
    return tuple(load_counter_name(f, b) for f in spec.vip_families for b in range(n))


def load_objects(
    spec: Spec, family: int, expr: str, typeof: str, literals: tuple[str, ...]
) -> tuple[str, list[NftSet]]:
    """(the counting statement put before the owners lookup, the sets it needs). Counting
    in the cluster's own rule measured 4-5% of the forwarding rate, against 8-9% for a
    base chain of its own (a second hook and VIP compare): docs/benchmarks.md."""
    p = spec.partition
    if measure_how(spec) == "set":
        name = load_set_name(family)
        decl = (f"typeof {typeof}", f"size {1 << p.bits}", "flags dynamic", "counter")
        return f"update @{name} {{ {expr} }} ", [NftSet(name, "set", decl, (), dynamic=True)]
    cmap = load_map_name(family)
    kind = "ipv4_addr" if family == 4 else "ipv6_addr"  # 1.0.6: no typeof with counter
    elems = tuple(f'{literals[b]} : "{load_counter_name(family, b)}"' for b in range(p.buckets))
    return f"counter name {expr} map @{cmap} ", [
        NftSet(cmap, "map", (f"type {kind} : counter",), elems)
    ]


def _element(literals: tuple[str, ...], lo: int, hi: int, value: str) -> str:
    return f"{literals[lo]}-{literals[hi]} : {value}" if hi > lo else f"{literals[lo]} : {value}"


def _dynamic_map(name: str, flow: str, spec: Spec) -> NftSet:
    """A flow -> mark map filled by the packet path; never flushed by a swap."""
    return NftSet(
        name=name,
        kind="map",
        decl=(
            f"typeof {flow} : meta mark",
            f"size {spec.pinning.max_flows}",
            "flags dynamic,timeout",
            f"timeout {spec.pinning.idle_timeout_s}s",
        ),
        elements=(),
        dynamic=True,
    )


def render_table(table: NftTable) -> str:
    """The whole table in `nft -f` syntax: golden files, `apply --dry-run`."""
    out = [f"table {table.ref} {{"]
    for s in table.sets:
        out.append(f"\t{s.kind} {s.name} {{")
        out.extend(f"\t\t{d}" for d in s.decl)
        if s.elements:
            rows = [", ".join(s.elements[i : i + 8]) for i in range(0, len(s.elements), 8)]
            out.append("\t\telements = { " + ",\n\t\t\t     ".join(rows) + " }")
        out.append("\t}")
    for c in table.counters:
        out.append(f"\tcounter {c} {{\n\t}}")
    for ch in table.chains:
        out.append(f"\tchain {ch.name} {{")
        if ch.hook:
            out.append(f"\t\t{ch.hook}")
        out.extend(f"\t\t{r}" for r in ch.rules)
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Observed:
    """What vipctl's own table holds now (names only; the kernel is the truth)."""

    sets: frozenset[str] = frozenset()
    maps: frozenset[str] = frozenset()
    counters: frozenset[str] = frozenset()
    chains: frozenset[str] = frozenset()
    exists: bool = False


def transaction(table: NftTable, observed: Observed) -> str:
    """One libnftables batch that turns whatever is live into `table`, atomically.

    Base chains are flushed and refilled, never deleted and re-created, so their hooks stay
    registered through the commit and every packet sees either the old or the new rules.
    Named counters survive (packet counts accumulate across generations). Pin maps are
    never touched. Every other set is flushed and refilled: the bucket maps are interval
    maps of runs (a few elements per member at any bucket count), so this stays small.
    """
    ref = table.ref
    cmds = [f"add table {ref}"]
    # chains before maps: nft 1.0.6 cannot add an element `goto C` to an interval verdict
    # map declared before chain C in the same batch (ENOENT), whatever the element order
    for ch in table.chains:
        cmds.append(f"add chain {ref} {ch.name}" + (f" {{ {ch.hook} }}" if ch.hook else ""))
    for s in table.sets:
        cmds.append(f"add {s.kind} {ref} {s.name} {{ {'; '.join(s.decl)}; }}")
    for c in table.counters:
        cmds.append(f"add counter {ref} {c}")
    wanted_chains = {ch.name for ch in table.chains}
    for name in sorted(observed.chains | wanted_chains):
        if name in observed.chains:
            cmds.append(f"flush chain {ref} {name}")
    live_sets = observed.sets | observed.maps
    for s in table.sets:
        if s.dynamic:
            continue
        if s.name in live_sets:
            cmds.append(f"flush {s.kind} {ref} {s.name}")
        if s.elements:
            cmds.append(f"add element {ref} {s.name} {{ {', '.join(s.elements)} }}")
    for ch in table.chains:
        cmds.extend(f"add rule {ref} {ch.name} {rule}" for rule in ch.rules)
    # Maps before chains: a verdict map's elements (`deliver6`: mark -> goto to6_web1) hold
    # references to chains, and the kernel refuses to delete a chain still referenced
    # (EBUSY, nf_tables_delchain, kernel 6.18). Dropping a whole family (dual-stack ->
    # IPv4-only) deletes both in this one transaction, so the map goes first.
    wanted_sets = {s.name for s in table.sets}
    for name in sorted(observed.maps - wanted_sets):
        cmds.append(f"delete map {ref} {name}")
    for name in sorted(observed.sets - wanted_sets):
        cmds.append(f"delete set {ref} {name}")
    for name in sorted(observed.chains - wanted_chains):
        cmds.append(f"delete chain {ref} {name}")
    for name in sorted(observed.counters - set(table.counters)):
        cmds.append(f"delete counter {ref} {name}")
    return "\n".join(cmds) + "\n"


@dataclass(frozen=True)
class Preparation:
    """What must be in the kernel one transaction before `transaction(table, observed)`:
    the regular chains that are new, with their rules, and the maps, sets and counters
    those rules need that are new too. Nothing live refers to them yet, so committing it
    changes no packet's path; `undo` deletes them again (when the main transaction is
    refused).

    Why: a packet that entered the table under the old generation and looks a map element
    up after the commit finds the NEW element (set lookups use the generation current at
    lookup time) but runs the OLD generation's rules of the chain it points to (the rules
    are fixed when the packet enters the table). A chain added in the same transaction has
    no rules in the old generation: the packet falls through the base chain (its policy
    accepts it) into the router's own stack and is lost. Measured on kernel 6.18 (bench:
    tests/kernel/test_dataplane.py::test_no_packet_falls_through_a_new_chain): 87 and 147
    of ~1.5M packets over 4000 swaps that add the chain their elements point to; 0 when the
    chain is added one transaction earlier."""

    batch: str
    undo: str
    chains: frozenset[str]
    sets: frozenset[str]
    maps: frozenset[str]
    counters: frozenset[str]


def preparation(table: NftTable, observed: Observed) -> Preparation | None:
    """None when nothing needs preparing: a first install (no packet is in the table
    before it exists) or no new regular chain (every failover: elements only move
    between chains that exist)."""
    if not observed.exists:
        return None
    new_chains = [ch for ch in table.chains if ch.hook is None and ch.name not in observed.chains]
    if not new_chains:
        return None
    ref = table.ref
    live_sets = observed.sets | observed.maps
    rules = " ".join(r for ch in new_chains for r in ch.rules)
    # what the new chains' rules refer to and is new itself (a word match on `@name` or
    # `name "c_..."`: vipctl's names are distinct words)
    new_sets = [
        s
        for s in table.sets
        if s.name not in live_sets and re.search(rf"@{re.escape(s.name)}\b", rules)
    ]
    new_counters = [c for c in table.counters if c not in observed.counters and f'"{c}"' in rules]
    cmds = []
    for ch in new_chains:  # chains first: a new verdict map's elements may name them
        cmds.append(f"add chain {ref} {ch.name}")
    for st in new_sets:
        cmds.append(f"add {st.kind} {ref} {st.name} {{ {'; '.join(st.decl)}; }}")
        if st.elements and not st.dynamic:
            cmds.append(f"add element {ref} {st.name} {{ {', '.join(st.elements)} }}")
    for c in new_counters:
        cmds.append(f"add counter {ref} {c}")
    for ch in new_chains:
        cmds.extend(f"add rule {ref} {ch.name} {rule}" for rule in ch.rules)
    undo = [f"flush chain {ref} {ch.name}" for ch in new_chains]
    undo += [f"delete {st.kind} {ref} {st.name}" for st in new_sets]
    undo += [f"delete chain {ref} {ch.name}" for ch in new_chains]
    undo += [f"delete counter {ref} {c}" for c in new_counters]
    return Preparation(
        "\n".join(cmds) + "\n",
        "\n".join(undo) + "\n",
        chains=frozenset(ch.name for ch in new_chains),
        sets=frozenset(st.name for st in new_sets if st.kind == "set"),
        maps=frozenset(st.name for st in new_sets if st.kind == "map"),
        counters=frozenset(new_counters),
    )


def prepared(observed: Observed, prep: Preparation | None) -> Observed:
    """What is live once `prep` is committed (the main transaction is computed on it)."""
    if prep is None:
        return observed
    return dataclasses.replace(
        observed,
        chains=observed.chains | prep.chains,
        sets=observed.sets | prep.sets,
        maps=observed.maps | prep.maps,
        counters=observed.counters | prep.counters,
    )


def digest(table: NftTable, text: str | None = None) -> str:
    """Identifies a ruleset independent of its generation comment (`text`: the table
    rendered already)."""
    text = render_table(table) if text is None else text
    lines = [ln.split(' comment "')[0] for ln in text.splitlines()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Measuring per-bucket load (rebalance --auto): installed only for the window
# --------------------------------------------------------------------------------------


def load_set_name(family: int) -> str:
    return f"load{family}"


def load_chain_name(spec: Spec) -> str:
    return f"load_{spec.uplink}"


def load_counter_name(family: int, bucket: int) -> str:
    return f"load{family}_{bucket}"


def load_map_name(family: int) -> str:
    return f"loadmap{family}"


def measure_how(spec: Spec) -> str:
    """`counters` with the mask key; `set` with the hash key (nft 1.0.6 maps a jhash to a
    counter only through a typed map whose key type is an address or a mark, and a mark
    key refuses the jhash's integer: "datatype mismatch")."""
    return "set" if spec.partition.key == "hash" else "counters"


def measure_batches(spec: Spec, how: str | None = None) -> tuple[str, str]:
    """(start, stop): the batches that switch per-bucket counting on and off in a chain of
    their own. No longer what `rebalance --auto` uses (it applies the cluster's table with
    the counters in its own rule, load_objects: 4-5% against 7-9%); kept for the bench's
    `steer-measuring-chain` comparison.

    A base chain of its own on the uplink's ingress (priority -1, before the cluster's),
    one rule per family. `counters` (default): one named counter per bucket, picked by a
    map lookup of the packet's bucket (`counter name ip saddr & 0.0.0.255 map @loadmap4`);
    `set`: a dynamic set with a counter per element (`update @load4 { ip saddr & ... }`),
    measured 10% slower. Its own chain, so switching it on and off never touches the
    cluster's rules and needs no rule handle; start flushes whatever a crashed run left
    behind and starts every counter at zero. Zero cost when not measuring: the chain is
    gone. (Measured forwarding cost while on: docs/benchmarks.md.)"""
    how = how or measure_how(spec)
    p = spec.partition
    ref = f"netdev {table_name(spec.cluster)}"
    chain = load_chain_name(spec)
    start = [
        f"add table {ref}",
        f"add chain {ref} {chain} {{ type filter hook ingress device "
        f'"{spec.uplink}" priority -1; policy accept; }}',
        f"flush chain {ref} {chain}",
    ]
    stop = [f"delete chain {ref} {chain}"]
    for family in spec.vip_families:
        expr, typeof = _key_expr(family, p.key, p.bits, p.seed)
        literals = _bucket_literals(family, p.key, p.bits)
        match = f"{'ip' if family == 4 else 'ip6'} daddr {vip_match(family, spec)}"
        if how == "set":
            name = load_set_name(family)
            start += [
                f"add set {ref} {name} {{ typeof {typeof}; size {1 << p.bits}; "
                "flags dynamic; counter; }",
                f"flush set {ref} {name}",
                f"add rule {ref} {chain} {match} update @{name} {{ {expr} }}",
            ]
            stop.append(f"delete set {ref} {name}")
            continue
        cmap = load_map_name(family)
        names = [load_counter_name(family, b) for b in range(p.buckets)]
        # a counter object is reset by deleting and adding it (a crashed run's counts)
        start += [f"add counter {ref} {n}" for n in names]
        kind = "ipv4_addr" if family == 4 else "ipv6_addr"  # 1.0.6: no typeof with counter
        start.append(f"add map {ref} {cmap} {{ type {kind} : counter; }}")
        start.append(f"flush map {ref} {cmap}")
        start.append(
            f"add element {ref} {cmap} {{ "
            + ", ".join(f'{literals[b]} : "{n}"' for b, n in enumerate(names))
            + " }"
        )
        start.append(f"add rule {ref} {chain} {match} counter name {expr} map @{cmap}")
        stop.append(f"delete map {ref} {cmap}")
        stop += [f"delete counter {ref} {n}" for n in names]
    return "\n".join(start) + "\n", "\n".join(stop) + "\n"

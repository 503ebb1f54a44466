"""Partition -> one nftables table per cluster, netdev family (pure).

Design (KERNEL-NOTES.md, kernel 6.18 / nft 1.0.6):
- The owner of a packet is decided ONCE, at the uplink's ingress, by one map lookup keyed
  by the source bucket. Per-port sets are not atomic per packet, a single lookup is.
- broadcast: the ingress rule stamps `meta mark` with the owner's port ifindex, `dup`s the
  packet to every member port and drops the original (else it is also routed). Each port's
  egress chain drops copies whose mark is not its own ifindex and rewrites the destination
  MAC (a `dup` copy keeps the uplink's MAC and the member would drop it as OTHERHOST).
  The mark is the port's ifindex, so it means the same port in every generation: a copy
  stamped under generation N and judged by egress rules of N+1 still gets the right verdict.
- steer: the ingress rule looks the owner's port up and `fwd`s one copy there.
- Buckets nobody owns (no member up) fall through to an explicit drop.
- Object names encode their definition (owner4_m8 = IPv4, mask key, 8 bits), so a change of
  key type is a new object and the old one is deleted in the same transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from vipctl.partition import Layout
from vipctl.spec import Spec

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


@dataclass(frozen=True)
class Wiring:
    """Kernel facts the rules embed: each port's ifindex and each member's MAC."""

    ifindex: Mapping[str, int]  # port name -> ifindex
    macs: Mapping[str, str]  # member name -> MAC


def _key_expr(family: int, key: str, bits: int, seed: int) -> tuple[str, str]:
    """(expression computing the bucket key, typeof of the map key)."""
    saddr = "ip saddr" if family == 4 else "ip6 saddr"
    if key == "hash":
        expr = f"jhash {saddr} mod {1 << bits} seed 0x{seed:x}"
        return expr, expr
    return f"{saddr} & {_mask_literal(family, bits)}", saddr


def _mask_literal(family: int, bits: int) -> str:
    return str(_bucket_addr(family, (1 << bits) - 1))


def _bucket_addr(family: int, bucket: int) -> IPv4Address | IPv6Address:
    return IPv4Address(bucket) if family == 4 else IPv6Address(bucket)


def _bucket_literal(family: int, key: str, bucket: int) -> str:
    return str(bucket) if key == "hash" else str(_bucket_addr(family, bucket))


def object_names(family: int, spec: Spec) -> tuple[str, str]:
    """Names of the (vips set, owner map) for one address family."""
    p = spec.partition
    suffix = f"m{p.bits}" if p.key == "mask" else f"h{p.bits}_{p.seed:x}"
    kind = "owner" if spec.mode == "broadcast" else "port"
    return f"vips{family}", f"{kind}{family}_{suffix}"


def counter_name(member: str) -> str:
    return f"c_{member}"


def build_table(spec: Spec, layout: Layout, wiring: Wiring, generation: int) -> NftTable:
    """The cluster's whole table as data (no kernel access)."""
    p = spec.partition
    port_of = {m.name: m.port for m in spec.members}
    sets: list[NftSet] = []
    ingress: list[str] = []
    families = spec.vip_families
    for family in families:
        ip = "ip" if family == 4 else "ip6"
        vips_name, owner_name = object_names(family, spec)
        vips = sorted((v for v in spec.vips if v.version == family), key=int)
        sets.append(
            NftSet(
                name=vips_name,
                kind="set",
                decl=(f"type {'ipv4_addr' if family == 4 else 'ipv6_addr'}",),
                elements=tuple(str(v) for v in vips),
            )
        )
        expr, typeof = _key_expr(family, p.key, p.bits, p.seed)
        elements: list[str] = []
        for bucket, owner in enumerate(layout.table):
            if owner is None:
                continue
            port = port_of[owner]
            value = str(wiring.ifindex[port]) if spec.mode == "broadcast" else f'"{port}"'
            elements.append(f"{_bucket_literal(family, p.key, bucket)} : {value}")
        # typeof (not type): nft 1.0.6 needs it for jhash keys; `meta oif` carries iface_index
        data = "meta mark" if spec.mode == "broadcast" else "meta oif"
        decl = (f"typeof {typeof} : {data}",)
        sets.append(NftSet(name=owner_name, kind="map", decl=decl, elements=tuple(elements)))
        comment = f' comment "{GENERATION_TAG} {generation}"' if family == families[0] else ""
        if spec.mode == "broadcast":
            dups = " ".join(f'dup to "{m.port}"' for m in spec.members)
            ingress.append(
                f"{ip} daddr @{vips_name} meta mark set {expr} map @{owner_name} {dups} drop"
                f"{comment}"
            )
        else:
            ingress.append(f"{ip} daddr @{vips_name} fwd to {expr} map @{owner_name}{comment}")
    for family in families:
        ip = "ip" if family == 4 else "ip6"
        # no owner for this bucket (nobody up): never let the original be routed
        ingress.append(f"{ip} daddr @vips{family} drop")

    chains = [
        NftChain(
            name=f"in_{spec.uplink}",
            hook=f'type filter hook ingress device "{spec.uplink}" priority 0; policy accept;',
            rules=tuple(ingress),
        )
    ]
    for m in spec.members:
        rules: list[str] = []
        mac = wiring.macs[m.name]
        for family in families:
            ip = "ip" if family == 4 else "ip6"
            if spec.mode == "broadcast":
                rules.append(f"{ip} daddr @vips{family} meta mark != {wiring.ifindex[m.port]} drop")
        for family in families:
            ip = "ip" if family == 4 else "ip6"
            rules.append(
                f'{ip} daddr @vips{family} counter name "{counter_name(m.name)}" '
                f"ether daddr set {mac.lower()}"
            )
        chains.append(
            NftChain(
                name=f"out_{m.port}",
                hook=f'type filter hook egress device "{m.port}" priority 0; policy accept;',
                rules=tuple(rules),
            )
        )
    return NftTable(
        family="netdev",
        name=table_name(spec.cluster),
        sets=tuple(sets),
        counters=tuple(counter_name(m.name) for m in spec.members),
        chains=tuple(chains),
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
    Named counters survive (packet counts accumulate across generations).
    """
    ref = table.ref
    cmds = [f"add table {ref}"]
    for s in table.sets:
        cmds.append(f"add {s.kind} {ref} {s.name} {{ {'; '.join(s.decl)}; }}")
    for c in table.counters:
        cmds.append(f"add counter {ref} {c}")
    for ch in table.chains:
        cmds.append(f"add chain {ref} {ch.name}" + (f" {{ {ch.hook} }}" if ch.hook else ""))
    wanted_chains = {ch.name for ch in table.chains}
    for name in sorted(observed.chains | wanted_chains):
        if name in observed.chains:
            cmds.append(f"flush chain {ref} {name}")
    for s in table.sets:
        if s.name in (observed.sets | observed.maps):
            cmds.append(f"flush {s.kind} {ref} {s.name}")
        if s.elements:
            cmds.append(f"add element {ref} {s.name} {{ {', '.join(s.elements)} }}")
    for ch in table.chains:
        cmds.extend(f"add rule {ref} {ch.name} {rule}" for rule in ch.rules)
    for name in sorted(observed.chains - wanted_chains):
        cmds.append(f"delete chain {ref} {name}")
    wanted_sets = {s.name for s in table.sets}
    for name in sorted(observed.maps - wanted_sets):
        cmds.append(f"delete map {ref} {name}")
    for name in sorted(observed.sets - wanted_sets):
        cmds.append(f"delete set {ref} {name}")
    for name in sorted(observed.counters - set(table.counters)):
        cmds.append(f"delete counter {ref} {name}")
    return "\n".join(cmds) + "\n"


def digest(table: NftTable) -> str:
    """Identifies a ruleset independent of its generation comment."""
    text = render_table(table)
    lines = [ln.split(' comment "')[0] for ln in text.splitlines()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

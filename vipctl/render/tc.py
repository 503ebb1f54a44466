"""Partition -> tc filter descriptions for the tc backend (pure).

The tc backend does all per-packet work in tc, because tc mirred copies skip the nftables
netdev egress chains of the port they are sent to: replication AND per-port filtering must
both be tc. The filters are written for flower (+ mirred, pedit, gact), which is what switch
ASICs and smart NICs offload; vipctl/backends/tcnl.py encodes them as flower or, where flower
is missing, u32.

Only the mask key can be expressed. A flower or u32 key is value/mask on packet bits; the
hash key (`jhash ip saddr mod N seed S`) is a function of all address bits that no
value/mask list can describe, so the tc backend refuses it (a SpecError, exit 78).

Layout of one cluster (one cluster per uplink, one per port):

    uplink ingress, chain 0, prio DISPATCH_PRIO   the dispatcher: matches every packet and
        `goto chain C`, C = the live generation's chain (SLOT_CHAINS: two, used in turn).
        Flipping it is one netlink REPLACE, so each packet is judged by exactly one
        generation: a packet either sees the old chain or the new one, never a mix.
    uplink ingress, chain C                       per VIP:
        broadcast: set dst MAC := stamp(C), mirror to every port that owns buckets,
                   the last one a redirect (consumes the original, no routed copy)
        steer:     per owner entry: set dst MAC := member MAC, redirect to its port;
                   then `drop` (buckets nobody owns)
    port egress, chain 0, prio SELECT_PRIO+slot   broadcast only: dst MAC == stamp(C) ->
        `goto chain C`. The stamp carries the ingress decision's generation to every copy,
        so the per-port filters of C judge all copies of a packet (the nftables backend
        needs a mark for the same reason).
    port egress, chain C                          broadcast only: per owner entry and
        family: set dst MAC := member MAC, ok; then drop (copies owned by another port).

A flip leaves the old generation's chain in place until the new one is live, then the
shell deletes it (make-before-break).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from vipctl.core.partition import Entry, Layout, shares
from vipctl.core.spec import Spec
from vipctl.errors import SpecError
from vipctl.render.wiring import Wiring

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# Priorities and chains vipctl owns. Chain indexes must fit in a goto verdict's 28 bits
# (TC_ACT_EXT_VAL_MASK). The kernel auto-assigns prios from 0xC000 down, so stay clear.
DISPATCH_PRIO = 0x7663
SELECT_PRIO = 0x7663
SLOT_CHAINS = {1: 0x76631, 2: 0x76632}

Hook = Literal["ingress", "egress"]


class TcRenderError(SpecError):
    """The spec asks for something the tc backend cannot express."""


def check_spec(spec: Spec) -> None:
    """Refuse what value/mask filters cannot express (exit 78, nothing touched)."""
    if spec.partition.key != "mask":
        raise TcRenderError(
            "spec",
            [
                "partition.key: the tc backend matches value/mask on the source address; "
                "the hash key (jhash over the whole address) cannot be expressed as "
                "value/mask rules. Use key: mask, or backend: nftables for the hash key"
            ],
        )


def stamp_mac(slot: int) -> str:
    """Locally administered unicast MAC that tags broadcast copies of generation `slot`."""
    return f"0a:76:63:00:00:{slot:02x}"


def other_slot(slot: int) -> int:
    return 2 if slot == 1 else 1


def generation_cookie(cluster: str, generation: int) -> bytes:
    """16 bytes (TC_COOKIE_MAX_SIZE): b"vc", the generation (48 bits), cluster digest."""
    digest = hashlib.blake2b(cluster.encode(), digest_size=8).digest()
    return b"vc" + (generation & (1 << 48) - 1).to_bytes(6, "big") + digest


def parse_cookie(cookie: bytes, cluster: str) -> int | None:
    """The generation in a dispatcher cookie of `cluster`, else None."""
    if len(cookie) != 16 or cookie[:2] != b"vc":
        return None
    if cookie[8:] != hashlib.blake2b(cluster.encode(), digest_size=8).digest():
        return None
    return int.from_bytes(cookie[2:8], "big")


@dataclass(frozen=True)
class Match:
    """Flower keys. `src`/`dst` are (value, mask) over the family's address width."""

    eth_type: int = ETH_P_ALL
    src: tuple[int, int] | None = None
    dst: tuple[int, int] | None = None
    eth_dst: str | None = None  # exact


@dataclass(frozen=True)
class Mirred:
    port: str
    ifindex: int
    redirect: bool  # False: mirror (copy, pipe on); True: redirect (consumes the packet)


@dataclass(frozen=True)
class SetEthDst:
    mac: str


@dataclass(frozen=True)
class Gact:
    verdict: Literal["ok", "drop", "goto"]
    chain: int = 0
    cookie: bytes = b""


Action = Mirred | SetEthDst | Gact


@dataclass(frozen=True)
class TcFilter:
    dev: str
    hook: Hook
    chain: int
    prio: int
    match: Match
    actions: tuple[Action, ...]
    member: str | None = None  # the member a source rule serves (rule counts, status)


@dataclass(frozen=True)
class TcRuleset:
    cluster: str
    mode: str
    generation: int
    slot: int
    uplink: str
    dispatcher: TcFilter
    filters: tuple[TcFilter, ...]  # the generation's chain(s) and egress selectors


def dispatcher(spec: Spec, generation: int, slot: int) -> TcFilter:
    return TcFilter(
        dev=spec.uplink,
        hook="ingress",
        chain=0,
        prio=DISPATCH_PRIO,
        match=Match(),
        actions=(Gact("goto", SLOT_CHAINS[slot], generation_cookie(spec.cluster, generation)),),
    )


def _family_match(
    family: int,
    entry: Entry,
    *,
    dst: IPv4Address | IPv6Address | None,
    eth_dst: str | None = None,
) -> Match:
    width = 32 if family == 4 else 128
    full = (1 << width) - 1
    return Match(
        eth_type=ETH_P_IP if family == 4 else ETH_P_IPV6,
        src=(entry.value, entry.mask),
        dst=(int(dst), full) if dst is not None else None,
        eth_dst=eth_dst,
    )


def _vip_match(vip: IPv4Address | IPv6Address, eth_dst: str) -> Match:
    """A VIP packet at the uplink in a frame addressed to this router (invariant 11): a
    frame the routers' switch floods reaches every router, and each one forwarding it
    would deliver it twice. Matched by none of the cluster's filters, a frame for another
    MAC goes on to the stack, which drops it (OTHERHOST)."""
    width = 32 if vip.version == 4 else 128
    return Match(
        eth_type=ETH_P_IP if vip.version == 4 else ETH_P_IPV6,
        dst=(int(vip), (1 << width) - 1),
        eth_dst=eth_dst,
    )


def build_ruleset(
    spec: Spec, layout: Layout, wiring: Wiring, generation: int, slot: int
) -> TcRuleset:
    """All filters of one generation, in slot `slot`'s chain."""
    check_spec(spec)
    chain = SLOT_CHAINS[slot]
    owners = [s for s in shares(layout) if s.entries]
    by_name = {m.name: m for m in spec.members}
    for s in owners:
        m = by_name[s.name]
        if m.port not in wiring.ifindex or m.name not in wiring.macs:
            raise KeyError(f"member {m.name}: port {m.port} or its MAC is not in the wiring")
    if wiring.uplink_mac is None:
        raise KeyError(f"the MAC of the uplink {spec.uplink} is not in the wiring")
    me = wiring.uplink_mac
    filters: list[TcFilter] = []
    families = spec.vip_families
    if spec.mode == "broadcast":
        copies: list[Action] = [SetEthDst(stamp_mac(slot))]
        for i, s in enumerate(owners):
            port = by_name[s.name].port
            last = i == len(owners) - 1
            copies.append(Mirred(port, wiring.ifindex[port], redirect=last))
        if not owners:
            copies = [Gact("drop")]
        for prio, vip in enumerate(spec.vips, start=1):
            filters.append(
                TcFilter(spec.uplink, "ingress", chain, prio, _vip_match(vip, me), tuple(copies))
            )
        for s in owners:
            m = by_name[s.name]
            filters.append(
                TcFilter(
                    m.port,
                    "egress",
                    0,
                    SELECT_PRIO + slot,
                    Match(eth_dst=stamp_mac(slot)),
                    (Gact("goto", chain),),
                )
            )
            prio = 1
            for family in families:
                for entry in s.entries:
                    filters.append(
                        TcFilter(
                            m.port,
                            "egress",
                            chain,
                            prio,
                            _family_match(family, entry, dst=None),
                            (SetEthDst(wiring.macs[m.name]), Gact("ok")),
                            member=m.name,
                        )
                    )
                    prio += 1
            filters.append(TcFilter(m.port, "egress", chain, prio, Match(), (Gact("drop"),)))
    else:
        prio = 1
        for vip in spec.vips:
            for s in owners:
                m = by_name[s.name]
                for entry in s.entries:
                    filters.append(
                        TcFilter(
                            spec.uplink,
                            "ingress",
                            chain,
                            prio,
                            _family_match(vip.version, entry, dst=vip, eth_dst=me),
                            (
                                SetEthDst(wiring.macs[m.name]),
                                Mirred(m.port, wiring.ifindex[m.port], redirect=True),
                            ),
                            member=m.name,
                        )
                    )
                    prio += 1
            filters.append(
                TcFilter(spec.uplink, "ingress", chain, prio, _vip_match(vip, me), (Gact("drop"),))
            )
            prio += 1
    return TcRuleset(
        cluster=spec.cluster,
        mode=spec.mode,
        generation=generation,
        slot=slot,
        uplink=spec.uplink,
        dispatcher=dispatcher(spec, generation, slot),
        filters=tuple(filters),
    )


def rules_per_port(ruleset: TcRuleset) -> dict[str, int]:
    """Source rules per member port: the per-port filters (broadcast) or the uplink rules
    that redirect to the port (steer). Equal to the partition's entries per family/VIP."""
    counts: dict[str, int] = {}
    for f in ruleset.filters:
        if f.member is None:
            continue
        port = f.dev
        for a in f.actions:
            if isinstance(a, Mirred):
                port = a.port
        counts[port] = counts.get(port, 0) + 1
    return counts


# -- text, for --dry-run and docs ------------------------------------------------------


def _addr(family_eth: int, value: int) -> str:
    return str(IPv4Address(value) if family_eth == ETH_P_IP else IPv6Address(value))


def _match_text(m: Match) -> str:
    proto = {ETH_P_ALL: "all", ETH_P_IP: "ip", ETH_P_IPV6: "ipv6"}[m.eth_type]
    parts = [f"protocol {proto} flower"]
    if m.eth_dst:
        parts.append(f"dst_mac {m.eth_dst}")
    for name, field in (("src_ip", m.src), ("dst_ip", m.dst)):
        if field is not None:
            value, mask = field
            parts.append(f"{name} {_addr(m.eth_type, value)}/{_addr(m.eth_type, mask)}")
    return " ".join(parts)


def _action_text(a: Action) -> str:
    if isinstance(a, Mirred):
        return f"action mirred egress {'redirect' if a.redirect else 'mirror'} dev {a.port}"
    if isinstance(a, SetEthDst):
        return f"action pedit ex munge eth dst set {a.mac} pipe"
    if a.verdict == "goto":
        return f"action gact goto chain {a.chain}"
    return f"action gact {a.verdict}"


def filter_text(f: TcFilter) -> str:
    acts = " ".join(_action_text(a) for a in f.actions)
    where = f"dev {f.dev} {f.hook} chain {f.chain} prio {f.prio}"
    return f"filter add {where} {_match_text(f.match)} {acts}"


def render_text(ruleset: TcRuleset) -> str:
    """tc(8)-like text of the generation (the real thing is netlink: tc(8) itself refuses
    non-prefix flower masks such as src_ip 0.0.0.1/0.0.0.1)."""
    lines = [f"# vipctl cluster {ruleset.cluster} generation {ruleset.generation} (tc)"]
    lines += [filter_text(f) for f in ruleset.filters]
    lines.append("# dispatcher, replaced in one netlink operation:")
    lines.append(filter_text(ruleset.dispatcher))
    return "\n".join(lines) + "\n"

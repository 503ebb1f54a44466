"""Partition -> the XDP steer program's tables (pure): what backends/xdp.py writes into the
maps of vipctl/backends/bpf/steer.bpf.c, as data and as packed bytes, and its text.

One generation is one half of each double-buffered map: the config (with the VIPs), the
bucket table
(one entry per bucket: phase, owner slot, next owner slot), the members (slot = index in
spec.members: port ifindex, MAC, alive, name) and the ports devmap (slot -> ifindex).
The struct layouts here are steer.bpf.c's (x86-64 and every little-endian 64-bit ABI).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from vipctl.core.partition import Layout
from vipctl.core.spec import Spec
from vipctl.core.transition import Moving
from vipctl.render.wiring import NO_MAC, Wiring

MAX_MEMBERS = 256
MAX_BUCKETS = 1 << 16
TABLE_SHIFT = 16

PHASE_NONE, PHASE_STABLE, PHASE_RECORD, PHASE_MOVE = 0, 1, 2, 3
PHASES = {PHASE_NONE: "none", PHASE_STABLE: "stable", PHASE_RECORD: "record", PHASE_MOVE: "move"}

BUCKET = struct.Struct("<HHB3x")  # owner, next, phase
MEMBER = struct.Struct("<I6sBx32s")  # ifindex, mac, alive, name
MAX_VIPS = 64  # per family (the spec allows 64 in all)
# generation, digest, timeout_ns, bits, seed, hash, measuring, members, vips4, vips6,
# vip4[64] (network order, as 4 raw bytes), vip6[64] (16 raw bytes each)
CONFIG = struct.Struct(f"<QQQIIBBHHH{4 * MAX_VIPS}s{16 * MAX_VIPS}s")
CONFIG_HEAD = struct.Struct("<QQQIIBBH")  # the fields vipctl reads back
FLOW_KEY = struct.Struct("<16s16sII")  # saddr, daddr, ports, family
FLOW = struct.Struct("<IIQ")  # slot, pad, seen (ns, CLOCK_MONOTONIC)
COUNT = struct.Struct("<QQ")  # packets, bytes
U32 = struct.Struct("<I")


@dataclass(frozen=True)
class XdpMember:
    name: str
    port: str
    ifindex: int  # 0: the port does not exist (the member is down)
    mac: str
    alive: bool


@dataclass(frozen=True)
class XdpTable:
    """One generation of the cluster's XDP tables."""

    uplink: str
    generation: int
    bits: int
    hash: bool
    seed: int
    timeout_ns: int
    measuring: bool
    members: tuple[XdpMember, ...]
    buckets: tuple[tuple[int, int, int], ...]  # (phase, owner slot, next slot) per bucket
    vips: tuple[IPv4Address | IPv6Address, ...]

    def config(self, digest: str) -> bytes:
        v4 = [v.packed for v in self.vips if isinstance(v, IPv4Address)]
        v6 = [v.packed for v in self.vips if isinstance(v, IPv6Address)]
        return CONFIG.pack(
            self.generation,
            int(digest[:16], 16),
            self.timeout_ns,
            self.bits,
            self.seed,
            int(self.hash),
            int(self.measuring),
            len(self.members),
            len(v4),
            len(v6),
            b"".join(v4),
            b"".join(v6),
        )

    def bucket_bytes(self) -> bytes:
        return b"".join(BUCKET.pack(owner, nxt, phase) for phase, owner, nxt in self.buckets)

    def member_bytes(self) -> list[bytes]:
        return [
            MEMBER.pack(m.ifindex, mac_bytes(m.mac), int(m.alive), m.name.encode())
            for m in self.members
        ]


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ipaddress_of(family: int, raw: bytes) -> IPv4Address | IPv6Address:
    """A flow key's source address."""
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw[:16])


def build(
    spec: Spec,
    layout: Layout,
    wiring: Wiring,
    generation: int,
    moving: Moving | None = None,
    measuring: bool = False,
) -> XdpTable:
    """The generation's tables (no kernel access). A bucket whose owner is None or has no
    port drops (never routed); a bucket in transition whose old or new owner has no port
    is stable (as the nftables path renders it)."""
    slot = {m.name: i for i, m in enumerate(spec.members)}
    members = []
    for m in spec.members:
        ifindex = wiring.ifindex.get(m.port, 0)
        mac = wiring.macs.get(m.name, NO_MAC)
        alive = bool(ifindex) and m.name not in layout.down and mac != NO_MAC
        members.append(XdpMember(m.name, m.port, ifindex, mac.lower(), alive))
    present = {m.name for m in members if m.ifindex}
    moves = moving if spec.pinning.mode == "moving" and moving else {}
    buckets: list[tuple[int, int, int]] = []
    for b, owner in enumerate(layout.table):
        move = moves.get(b)
        if owner is None or owner not in present:
            buckets.append((PHASE_NONE, 0, 0))
        elif move is None or move.old not in present or move.new not in present:
            buckets.append((PHASE_STABLE, slot[owner], slot[owner]))
        elif move.phase == "record":
            buckets.append((PHASE_RECORD, slot[move.old], slot[move.old]))
        else:
            buckets.append((PHASE_MOVE, slot[move.old], slot[move.new]))
    return XdpTable(
        uplink=spec.uplink,
        generation=generation,
        bits=spec.partition.bits,
        hash=spec.partition.key == "hash",
        seed=spec.partition.seed,
        timeout_ns=spec.pinning.idle_timeout_s * 1_000_000_000,
        measuring=measuring,
        members=tuple(members),
        buckets=tuple(buckets),
        vips=tuple(spec.vips),
    )


def render_text(table: XdpTable) -> str:
    """The tables as text (`apply --dry-run`, `--diff`): the first line carries the
    generation, the rest identifies what packets meet (its digest)."""
    out = [
        f"# xdp generation {table.generation}",
        f"xdp steer on {table.uplink}: key {'hash' if table.hash else 'mask'} "
        f"bits {table.bits}" + (f" seed 0x{table.seed:x}" if table.hash else ""),
        f"flows idle timeout {table.timeout_ns // 1_000_000_000}s"
        + (", measuring per-bucket load" if table.measuring else ""),
        "vips " + " ".join(str(v) for v in table.vips),
    ]
    for i, m in enumerate(table.members):
        state = "up" if m.alive else "down"
        out.append(f"member {i} {m.name} port {m.port} ifindex {m.ifindex} mac {m.mac} {state}")
    names = [m.name for m in table.members]
    start = 0
    for b in range(1, len(table.buckets) + 1):
        if b < len(table.buckets) and table.buckets[b] == table.buckets[start]:
            continue
        phase, owner, nxt = table.buckets[start]
        span = f"{start}-{b - 1}" if b - 1 > start else f"{start}"
        if phase == PHASE_NONE:
            what = "drop"
        elif phase == PHASE_STABLE:
            what = names[owner]
        elif phase == PHASE_RECORD:
            what = f"record -> {names[owner]}"
        else:
            what = f"move {names[owner]} -> {names[nxt]}"
        out.append(f"buckets {span}: {what}")
        start = b
    return "\n".join(out) + "\n"


def owner_of(entry: tuple[int, int, int], names: list[str]) -> str | None:
    """Who new flows of a bucket go to (as `which` and the fingerprint read it): record:
    still the old owner; move: the new owner."""
    phase, owner, nxt = entry
    if phase == PHASE_NONE:
        return None
    idx = nxt if phase == PHASE_MOVE else owner
    return names[idx] if idx < len(names) else None

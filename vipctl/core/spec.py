"""The cluster spec: pydantic v2 models (frozen, unknown keys rejected) and the loader.

These models are the spec file's format, the operator's interface. Everything but cluster,
vips, uplink and members has a default an operator would pick.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from fractions import Fraction
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from vipctl.core.scalars import MAX_DEPTH, Refused, core_float, core_int
from vipctl.errors import SpecError


def _address(value: object) -> IPv4Address | IPv6Address:
    """A string that is an IPv4 or IPv6 address, nothing else: `vips: [7]` is not 0.0.0.7
    and `true` is not 0.0.0.1. No scope id: it would be written into the rules verbatim
    and means nothing to a VIP or a member on its own port."""
    if isinstance(value, IPv4Address | IPv6Address):  # a model built in code, or a copy
        addr = value
    elif not isinstance(value, str):
        raise ValueError("must be an IP address written as a string")
    else:
        if "%" in value:
            raise ValueError("an address with a scope id (%...) is not accepted")
        try:
            addr = ip_address(value)
        except ValueError:
            raise ValueError(f"{value[:64]!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, IPv6Address) and addr.scope_id is not None:
        raise ValueError("an address with a scope id (%...) is not accepted")
    return addr


IPAddress = Annotated[
    IPv4Address | IPv6Address,
    PlainValidator(_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "ipvanyaddress"}),
]

# Linux IFNAMSIZ is 16 including the NUL; we also keep names free of characters that
# would need escaping in nftables strings.


def _usable_ifname(name: str) -> str:
    # lo carries no traffic to or from a member or an upstream router; "all" and "default"
    # are /proc/sys/net/*/conf entries, so the kernel refuses them as interface names
    # (dev_valid_name + devinet sysctl registration: EINVAL)
    if name == "lo":
        raise ValueError("'lo' (loopback) cannot be a cluster port")
    if name in ("all", "default"):
        raise ValueError(f"'{name}' cannot be an interface name (the kernel refuses it)")
    return name


IfName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"), AfterValidator(_usable_ifname)
]
CLUSTER_NAME = "[a-z][a-z0-9-]{0,23}"
ClusterName = Annotated[str, Field(pattern=f"^{CLUSTER_NAME}$")]
# Member names become nftables object names (counters, sets): letters first, no dots.
MemberName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]
MacAddress = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]

MAX_MEMBERS = 256
MAX_WEIGHT = 1_000_000
# broadcast copies a VIP packet to every member port in ONE rule (`dup to "m1" dup to "m2"
# ... drop`); each `dup to` is two expressions (immediate device + dup) and the kernel
# refuses a rule of more than NFT_RULE_MAXEXPRS = 128 (nf_tables_api.c, kernel 6.18):
# 63 members apply, 64 are E2BIG. The spec's limit is the kernel's.
MAX_BROADCAST_MEMBERS = 63


class _Model(BaseModel):
    # strict: a YAML `true` is not 1, "8" is not 8, 8.0 is not 8; the few coercions a
    # user expects (an int weight, a seed written "0x5eed") are explicit validators
    # defer_build: a model's validator is built when first used, not at import (building
    # every model's own, nested ones included, cost ~20 ms at each start; a command that
    # reads no spec pays nothing, one that does builds what it uses once)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)


class Partition(_Model):
    key: Literal["mask", "hash"] = "mask"
    bits: int = Field(default=8, ge=1, le=16)
    seed: int = Field(default=0x5EED, ge=0, le=0xFFFFFFFF)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_from_text(cls, value: object) -> object:
        # YAML reads 0x5eed as an int; JSON has no hex numbers, so "0x5eed" is accepted as
        # a string, spelled exactly (no spaces, underscores or non-ASCII digits int() takes)
        if isinstance(value, str):
            if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10}", value):
                raise ValueError("must be an integer such as 24301 or 0x5eed")
            return int(value, 0)
        return value

    @property
    def buckets(self) -> int:
        return 1 << self.bits


class Member(_Model):
    name: MemberName
    port: IfName
    address: IPAddress
    # strict float: an int or a float, never a bool or a string; finite
    weight: float = Field(default=1.0, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    mac: MacAddress | None = Field(
        default=None,
        description="member MAC; default: resolved from the router's neighbour table",
    )

    @field_validator("address")
    @classmethod
    def _unicast(cls, addr: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
        # probes go to it and its MAC is resolved from it: one host on the member's port
        if addr.is_unspecified or addr.is_multicast:
            raise ValueError(f"{addr} is not a member's unicast address")
        if addr == IPv4Address("255.255.255.255"):
            raise ValueError(f"{addr} is the broadcast address")
        return addr

    @field_validator("mac")
    @classmethod
    def _unicast_mac(cls, mac: str | None) -> str | None:
        # the destination MAC of every packet to the member: a group address (broadcast,
        # multicast: low bit of the first octet) would flood the port's segment
        if mac is not None:
            if int(mac[:2], 16) & 1:
                raise ValueError(f"{mac} is a broadcast or multicast MAC")
            if int(mac.replace(":", ""), 16) == 0:
                raise ValueError(f"{mac} is not a MAC of any host")
        return mac

    @property
    def exact_weight(self) -> Fraction:
        # Exact decimal, so that 0.1 + 0.2 style rounding never moves a bucket.
        return Fraction(str(self.weight))


class IcmpProbe(_Model):
    kind: Literal["icmp"]


class TcpProbe(_Model):
    kind: Literal["tcp"]
    port: int = Field(ge=1, le=65535)


class HttpProbe(_Model):
    kind: Literal["http"]
    port: int = Field(default=80, ge=1, le=65535)
    # one request target: printable ASCII, no space, CR, LF or NUL (those would write a
    # second request or extra headers to the member, and forge log lines)
    path: str = Field(default="/", pattern=r"^/[!-~]{0,1023}$")
    expect: int = Field(default=200, ge=100, le=599)


class NoProbe(_Model):
    kind: Literal["none"]


Probe = Annotated[IcmpProbe | TcpProbe | HttpProbe | NoProbe, Field(discriminator="kind")]


class Health(_Model):
    probe: Probe = Field(default_factory=lambda: IcmpProbe(kind="icmp"))
    interval_ms: int = Field(default=100, ge=10, le=3_600_000)
    timeout_ms: int = Field(default=300, ge=1, le=3_600_000)
    rise: int = Field(default=2, ge=1, le=1000)
    fall: int = Field(default=3, ge=1, le=1000)


PinningMode = Literal["moving", "always", "off"]


class Pinning(_Model):
    """Flow affinity. `moving` (the default): no per-flow state in steady state; when a
    change moves buckets, only the flows of the moving buckets are recorded and kept on
    their member until they have been idle for `idle_timeout_s`. `always`: every TCP/UDP
    flow is pinned on every packet (for UDP services whose flows go silent for minutes
    across a change). `off`: the bucket table alone. The older `enabled: true|false`
    means `moving` or `off`."""

    mode: PinningMode = "moving"
    idle_timeout_s: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    max_flows: int = Field(default=1 << 20, ge=1, le=1 << 26)
    record_ms: int = Field(
        default=1000,
        ge=0,
        le=1000,
        description="before buckets move, how long UDP flows of the moving buckets are "
        "recorded (a UDP flow that sent within this window keeps its member)",
    )

    @model_validator(mode="before")
    @classmethod
    def _enabled_means_a_mode(cls, data: object) -> object:
        if not isinstance(data, dict) or "enabled" not in data:
            return data
        data = dict(data)
        enabled = data.pop("enabled")
        if not isinstance(enabled, bool):
            raise ValueError("enabled: must be true or false (or use mode: moving|always|off)")
        implied = "moving" if enabled else "off"
        if "mode" in data and (data["mode"] == "off") == enabled:
            raise ValueError(f"enabled: {str(enabled).lower()} contradicts mode: {data['mode']}")
        data.setdefault("mode", implied)
        return data

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


# The re-tune defaults: the spec's `retune` section and `rebalance/plan --auto` alike.
RETUNE_WINDOW_S = 10.0
RETUNE_TOLERANCE = 1.1
RETUNE_METRIC: Final = "packets"


class Retune(_Model):
    """Re-tune from measured load on a schedule (the daemon; off by default): every
    `interval_s`, measure each bucket's traffic for `window_s`, and when a member's load is
    above `tolerance` times its weighted share move at most `max_moves` buckets (the fewest,
    then the least traffic) through the transition path, as `vipctl rebalance --auto`."""

    interval_s: int = Field(
        default=0, ge=0, le=7 * 24 * 3600, description="seconds between re-tunes; 0: off"
    )
    window_s: float = Field(
        default=RETUNE_WINDOW_S,
        ge=0.1,
        le=3600,
        allow_inf_nan=False,
        description="how long each bucket's traffic is measured",
    )
    tolerance: float = Field(
        default=RETUNE_TOLERANCE,
        gt=1.0,
        le=10.0,
        allow_inf_nan=False,
        description="act when a member's load is above tolerance x its weighted share",
    )
    max_moves: int = Field(
        default=16, ge=1, le=1 << 16, description="most buckets moved per re-tune"
    )
    metric: Literal["packets", "bytes"] = RETUNE_METRIC

    @model_validator(mode="after")
    def _window_fits(self) -> Retune:
        if self.interval_s and self.window_s >= self.interval_s:
            raise ValueError(
                f"window_s ({self.window_s:g}) must be shorter than interval_s ({self.interval_s})"
            )
        return self


def _peer_address(value: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """A BGP neighbour is one unicast host BIRD can open a session to: BIRD accepts
    224.0.0.5 and then shows "Invalid next hop" while the daemon believes it announces."""
    if value.is_multicast or value == IPv4Address("255.255.255.255"):
        raise ValueError(f"{value} is not a unicast address")
    if value.is_unspecified or value.is_loopback:
        raise ValueError(f"{value} is not the address of an upstream router")
    if isinstance(value, IPv4Address) and value.is_reserved:
        raise ValueError(f"{value} is in the reserved 240.0.0.0/4")
    if value.is_link_local:
        raise ValueError(
            f"{value} is link-local: a session to it needs an interface; use the "
            "upstream's global address on the shared link"
        )
    return value


def _router_id(value: object) -> IPv4Address:
    """A BGP router id is 32 bits written as an IPv4 address (a string, as every address
    in the spec; strict mode refused the string before, "an instance of IPv4Address")."""
    addr = _address(value)
    if not isinstance(addr, IPv4Address):
        raise ValueError("a router id is written as an IPv4 address (32 bits)")
    if addr.is_unspecified:
        raise ValueError("0.0.0.0 is not a router id (BGP needs a non-zero one)")
    return addr


RouterId = Annotated[
    IPv4Address,
    PlainValidator(_router_id),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "ipv4"}),
]


class BgpPeer(_Model):
    address: Annotated[IPAddress, AfterValidator(_peer_address)] = Field(
        description="the upstream router's unicast address (on a shared link)"
    )
    asn: int = Field(ge=1, le=4294967295, description="the upstream's AS number")


BIRD_INCLUDE_DIR = "/etc/bird/vipctl.d"
BIRD_CONTROL = "/run/bird/bird.ctl"
# written into a birdc command line and a BIRD include directive: no quotes, no spaces
BirdPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./@+-]{1,4095}$")]
# what the operator's BIRD holds when vipctl only writes an include file
_SESSION_DEFAULTS: dict[str, object] = {
    "asn": None,
    "peers": [],
    "bfd": True,
    "bfd_interval_ms": 100,
    "bfd_multiplier": 3,
    "router_id": None,
}


class Bgp(_Model):
    """Announce the VIPs to upstream routers, which spread traffic over every vipctl
    router by ECMP (docs/two-routers.md). One BGP speaker per router, shared by every
    cluster: `speaker: vipctl` runs one BIRD for all clusters with a `bgp` section (one
    session per peer); `speaker: external` only writes this cluster's VIP routes into an
    include file of the BIRD the operator already runs and reloads it (`birdc configure`);
    the sessions, BFD and export policy are then the operator's."""

    speaker: Literal["vipctl", "external"] = Field(
        default="vipctl",
        description="vipctl: one BIRD that vipctl starts and shares across clusters; "
        "external: the operator's BIRD (vipctl writes `include` and reloads it)",
    )
    asn: int | None = Field(
        default=None, ge=1, le=4294967295, description="this router's AS number (vipctl)"
    )
    peers: list[BgpPeer] = Field(default_factory=list, max_length=16)
    bfd: bool = Field(default=True, description="sub-second detection of a dead router")
    bfd_interval_ms: int = Field(
        default=100, ge=10, le=10000, description="BFD transmit and receive interval (ms)"
    )
    bfd_multiplier: int = Field(
        default=3, ge=1, le=255, description="BFD packets missed before a session is down"
    )
    router_id: RouterId | None = Field(
        default=None, description="BGP router id (default: BIRD picks the lowest IPv4 address)"
    )
    include: BirdPath | None = Field(
        default=None,
        description=f"external: the file of this cluster's routes (default "
        f"{BIRD_INCLUDE_DIR}/<cluster>.conf); the operator's bird.conf includes it",
    )
    control: BirdPath | None = Field(
        default=None, description=f"external: BIRD's control socket (default {BIRD_CONTROL})"
    )

    def problems(self) -> list[str]:
        """What the speaker does not take, as `bgp.<field>: message` lines."""
        problems: list[str] = []
        if self.speaker == "vipctl":
            if self.asn is None:
                problems.append("bgp.asn: required (this router's AS number)")
            if not self.peers:
                problems.append("bgp.peers: at least one peer is required")
            for key in ("include", "control"):
                if getattr(self, key) is not None:
                    problems.append(f"bgp.{key}: only for speaker: external")
        else:
            # by value, not by the keys given: a recorded spec is dumped with every default
            for key, default in _SESSION_DEFAULTS.items():
                if getattr(self, key) != default:
                    problems.append(
                        f"bgp.{key}: speaker: external leaves the sessions to the operator's "
                        "BIRD (set it in its configuration)"
                    )
        return problems


# An etcd endpoint: http(s)://host[:port], host a name, an IPv4 address or [IPv6]
EtcdUrl = Annotated[
    str,
    Field(
        pattern=r"^https?://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
        r"(:[0-9]{1,5})?/?$"
    ),
]
StorePath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]{0,200}$")]


class Store(_Model):
    """The cluster's desired state shared by every router (docs/two-routers.md): weights in
    force and the base table live in this etcd cluster; `rebalance` on any router changes
    them once and every router's daemon converges to them. The data plane never depends on
    it: with the store unreachable, failover and restoration still work and changes are
    refused (exit 75)."""

    etcd: list[EtcdUrl] = Field(min_length=1, max_length=16, description="etcd endpoints")
    prefix: StorePath = Field(default="/vipctl", description="key prefix in etcd")
    ca: StorePath | None = Field(default=None, description="CA file for https endpoints")
    cert: StorePath | None = Field(default=None, description="client certificate file")
    key: StorePath | None = Field(default=None, description="client key file")
    timeout_ms: int = Field(default=1000, ge=50, le=30_000, description="per request")
    poll_ms: int = Field(
        default=250, ge=50, le=10_000, description="how often a daemon reads the store"
    )

    @model_validator(mode="after")
    def _pairs(self) -> Store:
        if (self.cert is None) != (self.key is None):
            raise ValueError("store.cert and store.key go together")
        return self


class Spec(_Model):
    cluster: ClusterName
    vips: list[IPAddress] = Field(min_length=1, max_length=64)
    uplink: IfName
    mode: Literal["broadcast", "steer"] = "broadcast"
    partition: Partition = Field(default_factory=Partition)
    members: list[Member] = Field(min_length=1, max_length=MAX_MEMBERS)
    health: Health = Field(default_factory=Health)
    pinning: Pinning = Field(default_factory=Pinning)
    backend: Literal["nftables", "tc", "xdp"] = Field(
        default="nftables",
        description="nftables (netdev tables), tc (flower/u32 + mirred, hardware-offloadable) "
        "or xdp (native XDP on the uplink, mode: steer)",
    )
    offload: Literal["none", "prefer", "require"] = Field(
        default="prefer",
        description="tc backend only: none = skip_hw, prefer = hardware if it can, "
        "require = skip_sw (fail if the hardware refuses)",
    )
    announce_vips: bool = Field(
        default=False,
        description="answer ARP and neighbour solicitations for the VIPs on the uplink "
        "(for an on-link upstream; off when the VIPs are routed to the router)",
    )
    bgp: Bgp | None = None
    retune: Retune = Field(default_factory=Retune)
    store: Store | None = None

    @field_validator("vips")
    @classmethod
    def _unique_vips(cls, vips: list[IPAddress]) -> list[IPAddress]:
        seen: set[IPAddress] = set()
        for vip in vips:
            if vip in seen:
                raise ValueError(f"{vip} is listed twice")
            if (
                vip.is_multicast
                or vip.is_unspecified
                or vip.is_loopback
                or vip == IPv4Address("255.255.255.255")
            ):
                raise ValueError(f"{vip} cannot be a virtual IP")
            seen.add(vip)
        return vips

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        problems: list[str] = []
        names: dict[str, int] = {}
        ports: dict[str, int] = {}
        families = {vip.version for vip in self.vips}
        for i, member in enumerate(self.members):
            if member.name in names:
                problems.append(
                    f"members.{i}.name: '{member.name}' is also member {names[member.name]}"
                )
            names.setdefault(member.name, i)
            if member.port in ports:
                problems.append(
                    f"members.{i}.port: '{member.port}' is also the port of member "
                    f"{ports[member.port]}"
                )
            ports.setdefault(member.port, i)
            if member.port == self.uplink:
                problems.append(f"members.{i}.port: '{member.port}' is the uplink")
            if member.address in self.vips:
                problems.append(f"members.{i}.address: {member.address} is a VIP")
            if member.address.version not in families:
                problems.append(
                    f"members.{i}.address: IPv{member.address.version} address but no IPv"
                    f"{member.address.version} VIP"
                )
        if self.backend == "tc" and self.partition.key == "hash":
            problems.append(
                "partition.key: the tc backend needs key: mask (hash buckets cannot be "
                "written as value/mask rules)"
            )
        if self.mode == "broadcast" and len(self.members) > MAX_BROADCAST_MEMBERS:
            problems.append(
                f"members: broadcast copies each packet to every member in one kernel rule, "
                f"which takes at most {MAX_BROADCAST_MEMBERS} members ({len(self.members)} "
                "given); use mode: steer for more"
            )
        if not any(m.weight > 0 for m in self.members):
            problems.append("members: at least one member needs a weight > 0")
        if self.bgp is not None:
            problems += self.bgp.problems()
        if self.bgp is not None and self.bgp.speaker == "vipctl":
            peer_families = {p.address.version for p in self.bgp.peers}
            for family in sorted(families - peer_families):
                problems.append(
                    f"bgp.peers: no IPv{family} peer to announce the IPv{family} VIPs to"
                )
            seen_peers: set[IPAddress] = set()
            for i, peer in enumerate(self.bgp.peers):
                if peer.address in seen_peers:
                    problems.append(f"bgp.peers.{i}.address: {peer.address} is listed twice")
                if peer.address in self.vips:
                    problems.append(
                        f"bgp.peers.{i}.address: {peer.address} is a VIP (the peer is "
                        "the upstream router, the VIPs are what is announced to it)"
                    )
                seen_peers.add(peer.address)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- helpers used by the core -------------------------------------------------------
    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def weights(self) -> dict[str, Fraction]:
        return {m.name: m.exact_weight for m in self.members}

    @property
    def vip_families(self) -> tuple[int, ...]:
        return tuple(sorted({v.version for v in self.vips}))


# -- loading ----------------------------------------------------------------------------


# A spec is small (256 members fit in ~40 KB): these bounds keep a hostile or mistaken file
# from costing more than a fraction of a second before it is refused.
MAX_SPEC_BYTES = 1 << 20


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:  # json.loads keeps the last one silently
            raise Refused(f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


def _json_constant(name: str) -> float:
    raise Refused(f"{name} is not a JSON number")


def _json_depth(text: str) -> None:
    """json.loads recurses per level (RecursionError past ~1000): measure the nesting first,
    skipping strings."""
    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{\]}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise Refused(f"nested deeper than {MAX_DEPTH} levels")
        elif token in "]}":
            depth -= 1


def strict_json(text: str) -> object:
    """JSON as vipctl reads its input files: bounded nesting, no duplicate keys, no NaN or
    Infinity, numbers of bounded length (Refused, or ValueError when not JSON)."""
    _json_depth(text)
    return json.loads(
        text,
        object_pairs_hook=_json_object,
        parse_int=core_int,
        parse_float=core_float,
        parse_constant=_json_constant,
    )


def _parse(text: str, source: str) -> object:
    if source.endswith(".json"):
        return strict_json(text)
    from vipctl.core import specyaml  # PyYAML (~8 ms): only when a YAML spec is read

    return specyaml.load(text)


def _loc_part(part: object) -> str:
    """A path element as printed: an unknown key is the user's text (it may hold a newline,
    quotes or 10 kB), so anything but a plain name is shown quoted and cut."""
    text = str(part)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", text):
        return text
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def format_errors(exc: ValidationError) -> list[str]:
    """One `field.path: message` line per problem."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [_loc_part(part) for part in err["loc"]]
        # Discriminated unions add the tag as a path element ("probe.tcp.port"): drop it.
        if len(loc) >= 2 and loc[-2] in {"icmp", "tcp", "http", "none"} and "probe" in loc:
            loc = [p for p in loc if p not in {"icmp", "tcp", "http", "none"}]
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "value_error" and not loc:
            # our cross-field checks already carry their own paths, one per line
            lines.extend(message.splitlines())
            continue
        path = ".".join(loc) if loc else "spec"
        lines.append(f"{path}: {message}")
    return lines


def is_cluster_name(name: str) -> bool:
    """The spec's cluster name rule, for names given on a command line (fullmatch: a
    trailing newline is not accepted as `$` would)."""
    return re.fullmatch(CLUSTER_NAME, name) is not None


def parse_spec(data: object, source: str = "spec") -> Spec:
    if not isinstance(data, Mapping):
        raise SpecError(source, ["spec: must be a mapping of fields"])
    try:
        return Spec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_text(text: str, source: str = "spec") -> Spec:
    try:
        data = _parse(text, source)
    except Refused as exc:
        raise SpecError(source, [f"spec: {exc}"]) from None
    except ValueError as exc:  # JSONDecodeError, specyaml.YamlError
        message = " ".join(str(exc).split())
        raise SpecError(source, [f"spec: not valid YAML/JSON: {message[:300]}"]) from None
    return parse_spec(data, source)


def read_spec_bytes(path: Path, limit: int = MAX_SPEC_BYTES, what: str = "spec") -> bytes:
    """The file's bytes, read once: a regular file of at most `limit` bytes. Opened
    non-blocking, so a FIFO (or a device) is refused instead of hanging the reader.
    `what` starts each message (the spec, a layout file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpecError(str(path), [f"{what}: cannot read {path}: {exc.strerror}"]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(str(path), [f"{what}: {path} is not a regular file"])
        if info.st_size > limit:
            raise SpecError(str(path), [_too_large(path, limit, what)])
        chunks: list[bytes] = []
        left = limit + 1  # a file that grows while read is caught too
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise SpecError(str(path), [f"{what}: cannot read {path}: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise SpecError(str(path), [_too_large(path, limit, what)])
    return data


def _too_large(path: Path, limit: int, what: str = "spec") -> str:
    return f"{what}: {path} is larger than {limit} bytes ({limit // 1024} KiB)"


def read_spec_file(path: str | Path, limit: int = MAX_SPEC_BYTES, what: str = "spec") -> str:
    """The file's text (a regular UTF-8 file of at most `limit` bytes, read once), or
    SpecError; never blocks on a FIFO or a device."""
    path = Path(path)
    data = read_spec_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise SpecError(str(path), [f"{what}: not UTF-8 text ({where})"]) from None


def load_spec(path: str | Path) -> Spec:
    return load_text(read_spec_file(path), str(path))


def json_schema() -> dict[str, Any]:
    return Spec.model_json_schema()

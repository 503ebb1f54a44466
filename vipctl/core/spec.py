"""The cluster spec: pydantic v2 models (frozen, unknown keys rejected) and the loader.

These models are the spec file's format, the operator's interface. Everything but cluster,
vips, uplink and members has a default an operator would pick.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fractions import Fraction
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from vipctl.errors import SpecError

IPAddress = IPvAnyAddress

# Linux IFNAMSIZ is 16 including the NUL; we also keep names free of characters that
# would need escaping in nftables strings.
IfName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")]
ClusterName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,23}$")]
# Member names become nftables object names (counters, sets): letters first, no dots.
MemberName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]
MacAddress = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]

MAX_MEMBERS = 256


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Partition(_Model):
    key: Literal["mask", "hash"] = "mask"
    bits: int = Field(default=8, ge=1, le=16)
    seed: int = Field(default=0x5EED, ge=0, le=0xFFFFFFFF)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_from_text(cls, value: object) -> object:
        # YAML 1.1 already reads 0x5eed as an int; JSON and quoted YAML give a string.
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                raise ValueError("must be an integer such as 24301 or 0x5eed") from None
        return value

    @property
    def buckets(self) -> int:
        return 1 << self.bits


class Member(_Model):
    name: MemberName
    port: IfName
    address: IPAddress
    weight: float = Field(default=1.0, ge=0, le=1_000_000)
    mac: MacAddress | None = Field(
        default=None,
        description="member MAC; default: resolved from the router's neighbour table",
    )

    @field_validator("weight", mode="before")
    @classmethod
    def _weight_is_number(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number >= 0")
        return value

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
    path: str = Field(default="/", pattern=r"^/")
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


class BgpPeer(_Model):
    address: IPAddress = Field(description="the upstream router's address (on a shared link)")
    asn: int = Field(ge=1, le=4294967295, description="the upstream's AS number")


class Bgp(_Model):
    """Announce the VIPs to upstream routers, which spread traffic over every vipctl
    router by ECMP (docs/two-routers.md)."""

    asn: int = Field(ge=1, le=4294967295, description="this router's AS number")
    peers: list[BgpPeer] = Field(min_length=1, max_length=16)
    bfd: bool = Field(default=True, description="sub-second detection of a dead router")
    router_id: IPv4Address | None = Field(
        default=None, description="BGP router id (default: BIRD picks the lowest IPv4 address)"
    )


class Spec(_Model):
    cluster: ClusterName
    vips: list[IPAddress] = Field(min_length=1, max_length=64)
    uplink: IfName
    mode: Literal["broadcast", "steer"] = "broadcast"
    partition: Partition = Field(default_factory=Partition)
    members: list[Member] = Field(min_length=1, max_length=MAX_MEMBERS)
    health: Health = Field(default_factory=Health)
    pinning: Pinning = Field(default_factory=Pinning)
    backend: Literal["nftables", "tc"] = Field(
        default="nftables",
        description="nftables (netdev tables) or tc (flower/u32 + mirred, hardware-offloadable)",
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

    @field_validator("vips")
    @classmethod
    def _unique_vips(cls, vips: list[IPAddress]) -> list[IPAddress]:
        seen: set[IPAddress] = set()
        for vip in vips:
            if vip in seen:
                raise ValueError(f"{vip} is listed twice")
            if vip.is_multicast or vip.is_unspecified or vip.is_loopback:
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
        if not any(m.weight > 0 for m in self.members):
            problems.append("members: at least one member needs a weight > 0")
        if self.bgp is not None:
            peer_families = {p.address.version for p in self.bgp.peers}
            for family in sorted(families - peer_families):
                problems.append(
                    f"bgp.peers: no IPv{family} peer to announce the IPv{family} VIPs to"
                )
            seen_peers: set[IPAddress] = set()
            for i, peer in enumerate(self.bgp.peers):
                if peer.address in seen_peers:
                    problems.append(f"bgp.peers.{i}.address: {peer.address} is listed twice")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def format_errors(exc: ValidationError) -> list[str]:
    """One `field.path: message` line per problem."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
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


def parse_spec(data: object, source: str = "spec") -> Spec:
    if not isinstance(data, Mapping):
        raise SpecError(source, ["spec: must be a mapping of fields"])
    try:
        return Spec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_text(text: str, source: str = "spec") -> Spec:
    try:
        if source.endswith(".json"):
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(source, [f"spec: not valid YAML/JSON: {exc}".replace("\n", " ")]) from None
    return parse_spec(data, source)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"spec: cannot read {path}: {exc.strerror}"]) from None
    return load_text(text, str(path))


def json_schema() -> dict[str, Any]:
    return Spec.model_json_schema()

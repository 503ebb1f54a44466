"""Hypothesis strategies for spec fuzzing, shared by the unit test (validate:
exit 0 or 78, never a traceback) and the kernel test (every valid spec applies)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import strategies as st

# strings that have broken parsers, nft batches, HTTP requests and log lines
NASTY = [
    "",
    " ",
    '"',
    "'",
    "\\",
    "{",
    "}",
    "}\nflush ruleset\n{",
    '"; flush ruleset; "',
    "a\nb",
    "\r\n",
    "\x00",
    "\u200b",
    "\u0668",
    "é",
    "💥",
    "%",
    "fe80::1%eth0",
    'fe80::1%"x"',
    "1:2:3:4:5:6:7:8",
    "52:54:00:12:34:56",
    "ff:ff:ff:ff:ff:ff",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "on",
    "no",
    "0x5eed",
    " 8 ",
    "1e400",
    "lo",
    "-",
    "..",
    "/",
    "a" * 300,
]

texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 8, 16, 17, 63, 64, 65535, 65536, 10**6, 10**7, 2**32]),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)

NAME = r"\A[A-Za-z][A-Za-z0-9_-]{0,31}\Z"
IFNAME = r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,14}\Z"
CLUSTER = r"\A[a-z][a-z0-9-]{0,23}\Z"


def _mac(i: int) -> str:
    return f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"


@st.composite
def valid_specs(draw: st.DrawFn, max_members: int = 6) -> dict[str, Any]:
    """Specs that should validate: every field drawn over its whole range, names over
    their whole pattern."""
    n = draw(st.integers(1, max_members))
    names = draw(st.lists(st.from_regex(NAME), min_size=n, max_size=n, unique=True))
    ifnames = draw(
        st.lists(
            st.from_regex(IFNAME).filter(lambda s: s not in ("lo", "all", "default")),
            min_size=n + 1,
            max_size=n + 1,
            unique=True,
        )
    )
    families = draw(st.sampled_from([(4,), (6,), (4, 6)]))
    vips: list[str] = []
    if 4 in families:
        vips.append("198.51.100.253")
    if 6 in families:
        vips.append("2001:db8:f::253")
    members = []
    for i, (name, port) in enumerate(zip(names, ifnames[1:], strict=True)):
        family = draw(st.sampled_from(families))
        address = f"10.0.{i // 250}.{i % 250 + 1}" if family == 4 else f"2001:db8:1::{i + 1:x}"
        member: dict[str, Any] = {
            "name": name,
            "port": port,
            "address": address,
            "mac": _mac(i + 1),
        }
        if draw(st.booleans()):
            member["weight"] = draw(
                st.one_of(st.integers(0, 1000), st.floats(0, 1000, allow_nan=False))
            )
        members.append(member)
    if not any(m.get("weight", 1) > 0 for m in members):
        members[0]["weight"] = 1
    probe = draw(
        st.sampled_from(
            [
                {"kind": "none"},
                {"kind": "icmp"},
                {"kind": "tcp", "port": 80},
                {"kind": "http", "port": 8080, "path": "/health?x=%22a%22", "expect": 204},
            ]
        )
    )
    spec: dict[str, Any] = {
        "cluster": draw(st.from_regex(CLUSTER)),
        "vips": vips,
        "uplink": ifnames[0],
        "mode": draw(st.sampled_from(["broadcast", "steer"])),
        "partition": {
            "key": draw(st.sampled_from(["mask", "hash"])),
            "bits": draw(st.integers(1, 16)),
            "seed": draw(st.one_of(st.integers(0, 2**32 - 1), st.just("0x5eed"))),
        },
        "members": members,
        "health": {
            "probe": probe,
            "interval_ms": draw(st.integers(10, 3_600_000)),
            "timeout_ms": draw(st.integers(1, 3_600_000)),
            "rise": draw(st.integers(1, 1000)),
            "fall": draw(st.integers(1, 1000)),
        },
        "pinning": {
            "idle_timeout_s": draw(st.integers(1, 7 * 24 * 3600)),
            "max_flows": draw(st.integers(1, 1 << 26)),
            "record_ms": draw(st.integers(0, 1000)),
        },
    }
    # the older spelling or the mode, never both in contradiction
    if draw(st.booleans()):
        spec["pinning"]["enabled"] = draw(st.booleans())
    else:
        spec["pinning"]["mode"] = draw(st.sampled_from(["moving", "always", "off"]))
    if draw(st.booleans()):
        spec["retune"] = draw(retunes())
    if draw(st.booleans()):
        spec["bgp"] = draw(bgps(families))
    return spec


@st.composite
def retunes(draw: st.DrawFn) -> dict[str, Any]:
    """The retune section over its whole range (window_s shorter than interval_s)."""
    interval = draw(st.one_of(st.just(0), st.integers(1, 7 * 24 * 3600)))
    top = min(3600.0, interval - 0.001) if interval else 3600.0
    out: dict[str, Any] = {"interval_s": interval}
    if top >= 0.1:
        out["window_s"] = draw(
            st.one_of(
                st.floats(0.1, top, allow_nan=False), st.integers(1, max(1, int(top)))
            ).filter(lambda w: 0.1 <= w <= top)
        )
    out["tolerance"] = draw(st.floats(1.0, 10.0, exclude_min=True, allow_nan=False))
    out["max_moves"] = draw(st.integers(1, 1 << 16))
    out["metric"] = draw(st.sampled_from(["packets", "bytes"]))
    return out


@st.composite
def bgps(draw: st.DrawFn, families: tuple[int, ...]) -> dict[str, Any]:
    """A bgp section with a peer of every VIP family (the spec requires one)."""
    peers = []
    if 4 in families:
        peers.append({"address": "203.0.113.254", "asn": draw(st.integers(1, 4294967295))})
    if 6 in families:
        peers.append({"address": "2001:db8:c::fe", "asn": draw(st.integers(1, 4294967295))})
    out: dict[str, Any] = {"asn": draw(st.integers(1, 4294967295)), "peers": peers}
    if draw(st.booleans()):
        out["bfd"] = draw(st.booleans())
    if draw(st.booleans()):
        out["router_id"] = draw(st.sampled_from(["203.0.113.1", "192.0.2.1", "10.0.0.1"]))
    return out


# where a mutation may land: every level of the spec
PATHS: list[tuple[Any, ...]] = [
    (),
    ("partition",),
    ("health",),
    ("health", "probe"),
    ("pinning",),
    ("members", 0),
    ("vips",),
    ("retune",),
    ("bgp",),
    ("bgp", "peers"),
    ("bgp", "peers", 0),
]
FIELDS = [
    "cluster", "vips", "uplink", "mode", "partition", "members", "health", "pinning",
    "backend", "offload", "announce_vips", "key", "bits", "seed", "name", "port", "address",
    "weight", "mac", "probe", "kind", "path", "expect", "interval_ms", "timeout_ms", "rise",
    "fall", "enabled", "idle_timeout_s", "max_flows", "mode", "record_ms", "retune",
    "interval_s", "window_s", "tolerance", "max_moves", "metric", "bgp", "asn", "peers",
    "bfd", "router_id",
]  # fmt: skip


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with one to three fields replaced by arbitrary values (types, ranges,
    unknown keys at every level, deletions)."""
    spec = draw(valid_specs(max_members=3))
    spec.setdefault("retune", {"interval_s": 60})
    spec.setdefault("bgp", draw(bgps((4, 6))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node: Any = spec
        for part in path:
            if not isinstance(node, dict | list):
                break
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        if not isinstance(node, dict | list):
            continue
        if isinstance(node, list):
            if node and draw(st.booleans()):
                node[draw(st.integers(0, len(node) - 1))] = draw(values)
            else:
                node.append(draw(values))
            continue
        key = draw(st.one_of(st.sampled_from(FIELDS), texts))
        if draw(st.integers(0, 4)) == 0:
            node.pop(key, None)
        else:
            node[key] = draw(values)
    return spec


def dump(spec: object, kind: str) -> str:
    if kind == "json":
        return json.dumps(spec)
    return yaml.safe_dump(spec, allow_unicode=True, default_flow_style=None)


# YAML text features, spliced into a valid spec's YAML
YAML_SNIPPETS = [
    "!!str 8", "!!float 8", "!!int '8'", "!!binary AAAA", "!!timestamp 2001-01-01",
    "&a [1, *a]", "*nope", "[1, [2, [3]]]", "{? [a]: 1}", "<<: {bits: 4}", ".nan", "-.inf",
    "0o17", "0x1F", "1_000", "010", "1:20", "~", "null", "yes", "Off", "'\\x00'",
    '"\\u0000"', '"\\ud800"', "|\n  a\n  b", "? a\n: b", "%YAML 1.1", "---\n---", "@x",
    "`x`", "\t", "!custom x",
]  # fmt: skip

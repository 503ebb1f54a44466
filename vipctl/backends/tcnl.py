"""tc netlink for the tc backend: flower and u32 filters with mirred, pedit and gact,
encoded and sent over vipctl's own netlink client (host/netlink.py).

Attribute numbers and structs are as in include/uapi/linux/pkt_cls.h and tc_act/*.h (6.1;
the same in 6.18); tests/unit/test_tc_uapi.py checks every number and struct layout here
against the installed headers, and tests/unit/test_tc_wire.py checks that the encoding is
byte for byte what the earlier pyroute2-based encoder produced. Keys carry full
value/mask: the tc(8) command line refuses non-prefix flower masks (src_ip
0.0.0.1/0.0.0.1), the kernel attribute does not.

`filter_payload` is pure (description -> RTM_NEWTFILTER body); `decode_filter` is its
inverse for read-back. The functions at the end send tc requests on a
netlink.NetlinkSocket (extended ACKs: a refusal raises NetlinkError with the kernel's own
reason, "Unknown filter" ..., and the request named in `what`).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from vipctl.core.net import mac_bytes
from vipctl.host import netlink as nl
from vipctl.host.netlink import (
    TCA_CHAIN,
    TCA_KIND,
    TCA_OPTIONS,
    AttrList,
    AttrTable,
    Buffer,
    Message,
    NetlinkError,
    NetlinkSocket,
    attr,
    attr_be16,
    attr_nested,
    attr_str,
    attr_u16,
    attr_u32,
    nested,
    parse_attr_list,
)
from vipctl.render.tc import (
    ETH_P_ALL,
    ETH_P_IP,
    ETH_P_IPV6,
    Action,
    Gact,
    Match,
    Mirred,
    SetEthDst,
    TcFilter,
)

# --- linux/pkt_cls.h --------------------------------------------------------------------
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_INDEX, TCA_ACT_COOKIE = 1, 2, 3, 6
TCA_ACT_MAX_PRIO = 32
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_PIPE, TC_ACT_STOLEN = 0, 2, 3, 4
TC_ACT_GOTO_CHAIN = 2 << 28
TC_ACT_EXT_VAL_MASK = (1 << 28) - 1
# TCA_CLS_FLAGS_*: the offload policy of spec.offload
SKIP_HW, SKIP_SW, IN_HW, NOT_IN_HW = 1, 2, 4, 8
OFFLOAD_FLAGS = {"none": SKIP_HW, "prefer": 0, "require": SKIP_SW}

TCA_FLOWER_CLASSID, TCA_FLOWER_ACT = 1, 3
TCA_FLOWER_KEY_ETH_DST, TCA_FLOWER_KEY_ETH_DST_MASK = 4, 5
TCA_FLOWER_KEY_ETH_SRC, TCA_FLOWER_KEY_ETH_SRC_MASK = 6, 7
TCA_FLOWER_KEY_ETH_TYPE, TCA_FLOWER_KEY_IP_PROTO = 8, 9
TCA_FLOWER_KEY_IPV4_SRC, TCA_FLOWER_KEY_IPV4_SRC_MASK = 10, 11
TCA_FLOWER_KEY_IPV4_DST, TCA_FLOWER_KEY_IPV4_DST_MASK = 12, 13
TCA_FLOWER_KEY_IPV6_SRC, TCA_FLOWER_KEY_IPV6_SRC_MASK = 14, 15
TCA_FLOWER_KEY_IPV6_DST, TCA_FLOWER_KEY_IPV6_DST_MASK = 16, 17
TCA_FLOWER_FLAGS = 22
TCA_FLOWER_KEY_FLAGS, TCA_FLOWER_KEY_FLAGS_MASK = 47, 48
TCA_FLOWER_IN_HW_COUNT = 86

TCA_U32_CLASSID, TCA_U32_HASH, TCA_U32_LINK, TCA_U32_DIVISOR = 1, 2, 3, 4
TCA_U32_SEL, TCA_U32_ACT, TCA_U32_PCNT, TCA_U32_FLAGS = 5, 7, 9, 11
TC_U32_TERMINAL = 1

# --- linux/tc_act/tc_gact.h, tc_mirred.h, tc_pedit.h ------------------------------------
TCA_GACT_PARMS = 2
TCA_MIRRED_PARMS = 2
TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR = 1, 2
TCA_PEDIT_PARMS, TCA_PEDIT_PARMS_EX, TCA_PEDIT_KEYS_EX, TCA_PEDIT_KEY_EX = 2, 4, 5, 6
TCA_PEDIT_KEY_EX_HTYPE, TCA_PEDIT_KEY_EX_CMD = 1, 2
TCA_PEDIT_KEY_EX_HDR_TYPE_ETH, TCA_PEDIT_KEY_EX_CMD_SET = 1, 0

CLSACT_HANDLE = 0xFFFF0000  # TC_H_MAKE(TC_H_CLSACT, 0)
PARENT = {
    "ingress": 0xFFFF0000 | nl.TC_H_MIN_INGRESS,
    "egress": 0xFFFF0000 | nl.TC_H_MIN_EGRESS,
}

# tc_gen (pkt_cls.h): __u32 index; __u32 capab; int action; int refcnt; int bindcnt;
TC_GACT = struct.Struct("=IIiii")  # struct tc_gact { tc_gen; }
TC_MIRRED = struct.Struct("=IIiiiiI")  # struct tc_mirred { tc_gen; int eaction; __u32 ifindex; }
_TC_GEN_FIELDS = ("index", "capab", "action", "refcnt", "bindcnt")
# struct tc_pedit_sel { tc_gen; u8 nkeys, flags; struct tc_pedit_key keys[]; }
TC_PEDIT_SEL = struct.Struct("=IIiiiBBxx")
# struct tc_pedit_key { __u32 mask, val, off, at, offmask, shift; } (mask/val in wire order)
TC_PEDIT_KEY_TAIL = struct.Struct("=iIII")
# struct tc_u32_sel { u8 flags, offshift, nkeys; __be16 offmask; u16 off; short offoff, hoff;
#                     __be32 hmask; struct tc_u32_key keys[]; }
TC_U32_SEL = struct.Struct("=BBBxHHhhI")
# struct tc_u32_key { __be32 mask, val; int off, offmask; }
TC_U32_KEY_OFF = struct.Struct("=ii")

Classifier = Literal["flower", "u32"]


# --------------------------------------------------------------------------------------
# Description -> attributes
# --------------------------------------------------------------------------------------


def pedit_sel_bytes(keys: list[tuple[int, bytes, bytes]], action: int) -> bytes:
    """struct tc_pedit_sel + keys: (offset, keep-mask, value), mask/value in wire order."""
    out = TC_PEDIT_SEL.pack(0, 0, action, 0, 0, len(keys), 0)
    for off, mask, val in keys:
        out += mask + val + TC_PEDIT_KEY_TAIL.pack(off, 0, 0, 0)
    return out


def _set_eth_dst_keys(mac: str) -> list[tuple[int, bytes, bytes]]:
    b = mac_bytes(mac)
    # new = (old & mask) ^ val: words 0..3 replaced, word 4..7 keeps the source MAC's head
    return [(0, b"\0\0\0\0", b[:4]), (4, b"\0\0\xff\xff", b[4:6] + b"\0\0")]


def _action(a: Action) -> bytes:
    """The attributes of one TCA_ACT_PRIO_n: kind, options (and the cookie)."""
    if isinstance(a, Mirred):
        eaction = TCA_EGRESS_REDIR if a.redirect else TCA_EGRESS_MIRROR
        verdict = TC_ACT_STOLEN if a.redirect else TC_ACT_PIPE
        parms = TC_MIRRED.pack(0, 0, verdict, 0, 0, eaction, a.ifindex)
        return attr_str(TCA_ACT_KIND, "mirred") + attr_nested(
            TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, parms)
        )
    if isinstance(a, SetEthDst):
        keys = _set_eth_dst_keys(a.mac)
        key_ex = attr_nested(
            TCA_PEDIT_KEY_EX,
            attr_u16(TCA_PEDIT_KEY_EX_HTYPE, TCA_PEDIT_KEY_EX_HDR_TYPE_ETH),
            attr_u16(TCA_PEDIT_KEY_EX_CMD, TCA_PEDIT_KEY_EX_CMD_SET),
        )
        return attr_str(TCA_ACT_KIND, "pedit") + attr_nested(
            TCA_ACT_OPTIONS,
            attr(TCA_PEDIT_PARMS_EX, pedit_sel_bytes(keys, TC_ACT_PIPE)),
            attr_nested(TCA_PEDIT_KEYS_EX, *(key_ex for _ in keys)),
        )
    verdict = {"ok": TC_ACT_OK, "drop": TC_ACT_SHOT}.get(a.verdict, 0)
    if a.verdict == "goto":
        if not 0 <= a.chain <= TC_ACT_EXT_VAL_MASK:
            raise ValueError(f"chain {a.chain} does not fit a goto verdict")
        verdict = TC_ACT_GOTO_CHAIN | a.chain
    out = attr_str(TCA_ACT_KIND, "gact") + attr_nested(
        TCA_ACT_OPTIONS, attr(TCA_GACT_PARMS, TC_GACT.pack(0, 0, verdict, 0, 0))
    )
    if a.cookie:
        out += attr(TCA_ACT_COOKIE, a.cookie)
    return out


def actions_attr(kind: int, actions: tuple[Action, ...]) -> bytes:
    """TCA_FLOWER_ACT / TCA_U32_ACT: TCA_ACT_PRIO_1.. in the order the actions run."""
    if len(actions) > TCA_ACT_MAX_PRIO:
        raise ValueError(f"{len(actions)} actions: tc takes {TCA_ACT_MAX_PRIO} at most")
    return attr_nested(kind, *(attr_nested(i, _action(a)) for i, a in enumerate(actions, start=1)))


def _flower_options(m: Match, flags: int, actions: tuple[Action, ...]) -> bytes:
    out = b""
    if m.eth_dst is not None:
        out += attr(TCA_FLOWER_KEY_ETH_DST, mac_bytes(m.eth_dst))
        out += attr(TCA_FLOWER_KEY_ETH_DST_MASK, b"\xff" * 6)
    if m.eth_type != ETH_P_ALL:
        out += attr_be16(TCA_FLOWER_KEY_ETH_TYPE, m.eth_type)
    width = 4 if m.eth_type == ETH_P_IP else 16
    base = TCA_FLOWER_KEY_IPV4_SRC if m.eth_type == ETH_P_IP else TCA_FLOWER_KEY_IPV6_SRC
    for side, field in ((0, m.src), (2, m.dst)):  # _SRC, _SRC_MASK, _DST, _DST_MASK
        if field is not None:
            if m.eth_type not in (ETH_P_IP, ETH_P_IPV6):
                raise ValueError("address keys need eth_type IPv4 or IPv6")
            out += attr(base + side, field[0].to_bytes(width, "big"))
            out += attr(base + side + 1, field[1].to_bytes(width, "big"))
    out += attr_u32(TCA_FLOWER_FLAGS, flags)
    return out + actions_attr(TCA_FLOWER_ACT, actions)


def _u32_keys(m: Match) -> list[tuple[int, int, int]]:
    """(offset from the network header, mask, value) words; link-layer at negative offsets."""
    keys: list[tuple[int, int, int]] = []
    if m.eth_dst is not None:
        b = mac_bytes(m.eth_dst)
        keys.append((-14, 0xFFFFFFFF, int.from_bytes(b[:4], "big")))
        keys.append((-10, 0xFFFF0000, int.from_bytes(b[4:] + b"\0\0", "big")))
    for field, v4off, v6off in ((m.src, 12, 8), (m.dst, 16, 24)):
        if field is None:
            continue
        value, mask = field
        if m.eth_type == ETH_P_IP:
            keys.append((v4off, mask, value & mask))
        else:
            for word in range(4):
                shift = 96 - 32 * word
                wmask = (mask >> shift) & 0xFFFFFFFF
                if wmask:
                    keys.append((v6off + 4 * word, wmask, (value >> shift) & wmask))
    if not keys:
        keys.append((0, 0, 0))  # match everything
    return keys


def u32_sel_bytes(m: Match) -> bytes:
    keys = _u32_keys(m)
    out = TC_U32_SEL.pack(TC_U32_TERMINAL, 0, len(keys), 0, 0, 0, 0, 0)
    for off, mask, val in keys:
        out += struct.pack(">II", mask, val) + TC_U32_KEY_OFF.pack(off, 0)
    return out


def _u32_options(m: Match, flags: int, actions: tuple[Action, ...]) -> bytes:
    return (
        attr(TCA_U32_SEL, u32_sel_bytes(m))
        + attr_u32(TCA_U32_FLAGS, flags)
        + actions_attr(TCA_U32_ACT, actions)
    )


def filter_payload(
    f: TcFilter,
    ifindex: int,
    *,
    classifier: Classifier = "flower",
    flags: int = 0,
    handle: int | None = None,
) -> bytes:
    """The RTM_NEWTFILTER body (tcmsg + attributes) for one filter."""
    header = nl.tcmsg(
        socket.AF_UNSPEC,
        ifindex,
        (1 if classifier == "flower" else 0) if handle is None else handle,
        PARENT[f.hook],
        (f.prio << 16) | socket.htons(f.match.eth_type),
    )
    options = (
        _flower_options(f.match, flags, f.actions)
        if classifier == "flower"
        else _u32_options(f.match, flags, f.actions)
    )
    return (
        header
        + attr_str(TCA_KIND, classifier)
        + attr_u32(TCA_CHAIN, f.chain)
        + attr_nested(TCA_OPTIONS, options)
    )


def filter_bytes(
    f: TcFilter, ifindex: int, classifier: Classifier, flags: int, handle: int | None
) -> bytes:
    """The whole RTM_NEWTFILTER message for `f` (flags 0, sequence number 1: the sender
    sets its own; tests and the golden dumps read this)."""
    payload = filter_payload(f, ifindex, classifier=classifier, flags=flags, handle=handle)
    return nl.encode(nl.RTM_NEWTFILTER, 0, 1, payload)


# --------------------------------------------------------------------------------------
# Attributes -> description (read-back)
# --------------------------------------------------------------------------------------


def _struct(layout: struct.Struct, names: tuple[str, ...]) -> Any:
    def decode(data: Buffer) -> dict[str, int]:
        if len(data) < layout.size:
            raise nl.NetlinkDecodeError(f"a struct of {len(data)} bytes, {layout.size} expected")
        return dict(zip(names, layout.unpack_from(data), strict=True))

    return decode


def _ip(width: int) -> Any:
    family = socket.AF_INET if width == 4 else socket.AF_INET6

    def decode(data: Buffer) -> str:
        if len(data) != width:
            raise nl.NetlinkDecodeError(f"an address of {len(data)} bytes, {width} expected")
        return socket.inet_ntop(family, bytes(data))

    return decode


_str, _u16, _u32 = nl.decode_str, nl.decode_u16, nl.decode_u32
_be16, _be32, _raw, _mac = nl.decode_be16, nl.decode_be32, nl.decode_bytes, nl.decode_mac

GACT_ATTRS: AttrTable = {TCA_GACT_PARMS: ("TCA_GACT_PARMS", _struct(TC_GACT, _TC_GEN_FIELDS))}
MIRRED_ATTRS: AttrTable = {
    TCA_MIRRED_PARMS: (
        "TCA_MIRRED_PARMS",
        _struct(TC_MIRRED, (*_TC_GEN_FIELDS, "eaction", "ifindex")),
    )
}
PEDIT_KEY_EX_ATTRS: AttrTable = {
    TCA_PEDIT_KEY_EX_HTYPE: ("TCA_PEDIT_KEY_EX_HTYPE", _u16),
    TCA_PEDIT_KEY_EX_CMD: ("TCA_PEDIT_KEY_EX_CMD", _u16),
}
PEDIT_KEYS_EX_ATTRS: AttrTable = {
    TCA_PEDIT_KEY_EX: ("TCA_PEDIT_KEY_EX", nested(PEDIT_KEY_EX_ATTRS))
}
PEDIT_ATTRS: AttrTable = {
    TCA_PEDIT_PARMS: ("TCA_PEDIT_PARMS", _raw),
    TCA_PEDIT_PARMS_EX: ("TCA_PEDIT_PARMS_EX", _raw),
    TCA_PEDIT_KEYS_EX: ("TCA_PEDIT_KEYS_EX", nested(PEDIT_KEYS_EX_ATTRS)),
}
ACT_OPTIONS: dict[str, AttrTable] = {
    "gact": GACT_ATTRS,
    "mirred": MIRRED_ATTRS,
    "pedit": PEDIT_ATTRS,
}
ACT_ATTRS: AttrTable = {
    TCA_ACT_KIND: ("TCA_ACT_KIND", _str),
    TCA_ACT_OPTIONS: ("TCA_ACT_OPTIONS", _raw),  # by TCA_ACT_KIND: see _tca_act
    TCA_ACT_INDEX: ("TCA_ACT_INDEX", _u32),
    TCA_ACT_COOKIE: ("TCA_ACT_COOKIE", _raw),
}


def _by_kind(attrs: AttrList, kind: str, options: str, tables: dict[str, AttrTable]) -> AttrList:
    """`attrs` with the raw `options` attribute decoded by the table of the `kind`
    attribute's value (left as bytes for a kind vipctl does not write)."""
    table = tables.get(attrs.get(kind))
    if table is None:
        return attrs
    return AttrList(
        (name, parse_attr_list(value, 0, len(value), table) if name == options else value)
        for name, value in attrs
    )


def _tca_act(data: Buffer) -> AttrList:
    return _by_kind(
        parse_attr_list(data, 0, len(data), ACT_ATTRS), "TCA_ACT_KIND", "TCA_ACT_OPTIONS",
        ACT_OPTIONS,
    )  # fmt: skip


ACT_PRIO_ATTRS: AttrTable = {
    i: (f"TCA_ACT_PRIO_{i}", _tca_act) for i in range(1, TCA_ACT_MAX_PRIO + 1)
}
FLOWER_ATTRS: AttrTable = {
    TCA_FLOWER_CLASSID: ("TCA_FLOWER_CLASSID", _u32),
    TCA_FLOWER_ACT: ("TCA_FLOWER_ACT", nested(ACT_PRIO_ATTRS)),
    TCA_FLOWER_KEY_ETH_DST: ("TCA_FLOWER_KEY_ETH_DST", _mac),
    TCA_FLOWER_KEY_ETH_DST_MASK: ("TCA_FLOWER_KEY_ETH_DST_MASK", _mac),
    TCA_FLOWER_KEY_ETH_SRC: ("TCA_FLOWER_KEY_ETH_SRC", _mac),
    TCA_FLOWER_KEY_ETH_SRC_MASK: ("TCA_FLOWER_KEY_ETH_SRC_MASK", _mac),
    TCA_FLOWER_KEY_ETH_TYPE: ("TCA_FLOWER_KEY_ETH_TYPE", _be16),
    TCA_FLOWER_KEY_IP_PROTO: ("TCA_FLOWER_KEY_IP_PROTO", nl.decode_u8),
    TCA_FLOWER_KEY_IPV4_SRC: ("TCA_FLOWER_KEY_IPV4_SRC", _ip(4)),
    TCA_FLOWER_KEY_IPV4_SRC_MASK: ("TCA_FLOWER_KEY_IPV4_SRC_MASK", _ip(4)),
    TCA_FLOWER_KEY_IPV4_DST: ("TCA_FLOWER_KEY_IPV4_DST", _ip(4)),
    TCA_FLOWER_KEY_IPV4_DST_MASK: ("TCA_FLOWER_KEY_IPV4_DST_MASK", _ip(4)),
    TCA_FLOWER_KEY_IPV6_SRC: ("TCA_FLOWER_KEY_IPV6_SRC", _ip(16)),
    TCA_FLOWER_KEY_IPV6_SRC_MASK: ("TCA_FLOWER_KEY_IPV6_SRC_MASK", _ip(16)),
    TCA_FLOWER_KEY_IPV6_DST: ("TCA_FLOWER_KEY_IPV6_DST", _ip(16)),
    TCA_FLOWER_KEY_IPV6_DST_MASK: ("TCA_FLOWER_KEY_IPV6_DST_MASK", _ip(16)),
    TCA_FLOWER_FLAGS: ("TCA_FLOWER_FLAGS", _u32),
    TCA_FLOWER_KEY_FLAGS: ("TCA_FLOWER_KEY_FLAGS", _be32),
    TCA_FLOWER_KEY_FLAGS_MASK: ("TCA_FLOWER_KEY_FLAGS_MASK", _be32),
    TCA_FLOWER_IN_HW_COUNT: ("TCA_FLOWER_IN_HW_COUNT", _u32),
}
U32_ATTRS: AttrTable = {
    TCA_U32_CLASSID: ("TCA_U32_CLASSID", _u32),
    TCA_U32_HASH: ("TCA_U32_HASH", _u32),
    TCA_U32_LINK: ("TCA_U32_LINK", _u32),
    TCA_U32_DIVISOR: ("TCA_U32_DIVISOR", _u32),
    TCA_U32_SEL: ("TCA_U32_SEL", _raw),
    TCA_U32_ACT: ("TCA_U32_ACT", nested(ACT_PRIO_ATTRS)),
    TCA_U32_PCNT: ("TCA_U32_PCNT", _raw),
    TCA_U32_FLAGS: ("TCA_U32_FLAGS", _u32),
}
CLS_OPTIONS: dict[str, AttrTable] = {"flower": FLOWER_ATTRS, "u32": U32_ATTRS}

# every table above, for the check against the UAPI headers (TCA_ACT_PRIO_n excepted)
ATTRIBUTE_TABLES: tuple[AttrTable, ...] = (
    nl.TC_ATTRS, FLOWER_ATTRS, U32_ATTRS, ACT_ATTRS, GACT_ATTRS, MIRRED_ATTRS, PEDIT_ATTRS,
    PEDIT_KEYS_EX_ATTRS, PEDIT_KEY_EX_ATTRS,
)  # fmt: skip


def decode_message(data: Buffer) -> Message:
    """One tc message (nlmsghdr included), TCA_OPTIONS still raw."""
    return nl.decode_message(data)


def options(msg: Message) -> AttrList | None:
    """A tc message's TCA_OPTIONS decoded by its TCA_KIND (None: none, or a kind vipctl
    does not write)."""
    raw = msg.get_attr("TCA_OPTIONS")
    table = CLS_OPTIONS.get(msg.get_attr("TCA_KIND"))
    if raw is None or table is None:
        return None
    return parse_attr_list(raw, 0, len(raw), table)


def _dump(value: Any) -> Any:
    if isinstance(value, AttrList):
        return {"attrs": [[name, _dump(v)] for name, v in value]} if value else {}
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return value


def dump_attrs(msg: Message) -> dict[str, Any]:
    """A canonical, JSON-able tree of a tc message: its tcmsg fields and attributes in
    wire order (golden tests)."""
    opts = options(msg)
    attrs = [
        [name, _dump(opts if name == "TCA_OPTIONS" and opts is not None else value)]
        for name, value in msg.attrs.items()
    ]
    return {**msg.fields, "attrs": attrs} if attrs else dict(msg.fields)


@dataclass(frozen=True)
class LiveFilter:
    ifindex: int
    hook: str | None  # "ingress" | "egress" | None (another parent)
    chain: int
    prio: int
    protocol: int
    handle: int
    kind: str
    match: Match | None  # None when the keys are not ones vipctl writes
    actions: tuple[Action, ...]
    flags: int
    in_hw_count: int


def _decode_actions(acts: AttrList | None, ports: dict[int, str]) -> tuple[Action, ...]:
    out: list[Action] = []
    if acts is None:
        return ()
    for _name, act in sorted(acts, key=lambda t: int(t[0].rsplit("_", 1)[1])):
        kind = act.get("TCA_ACT_KIND")
        opts = act.get("TCA_ACT_OPTIONS")
        cookie = act.get("TCA_ACT_COOKIE")
        if kind == "mirred":
            p = opts.get("TCA_MIRRED_PARMS")
            ifindex = p["ifindex"]
            out.append(
                Mirred(
                    ports.get(ifindex, f"if{ifindex}"),
                    ifindex,
                    redirect=p["eaction"] == TCA_EGRESS_REDIR,
                )
            )
        elif kind == "gact":
            verdict = opts.get("TCA_GACT_PARMS")["action"]
            if verdict & ~TC_ACT_EXT_VAL_MASK == TC_ACT_GOTO_CHAIN:
                out.append(Gact("goto", verdict & TC_ACT_EXT_VAL_MASK, bytes(cookie or b"")))
            else:
                name = {TC_ACT_OK: "ok", TC_ACT_SHOT: "drop"}.get(verdict)
                out.append(Gact(name or f"verdict{verdict}", 0, bytes(cookie or b"")))  # type: ignore[arg-type]
        elif kind == "pedit":
            raw = bytes(opts.get("TCA_PEDIT_PARMS_EX") or opts.get("TCA_PEDIT_PARMS"))
            nkeys = raw[20]
            keys = {}
            for i in range(nkeys):
                k = raw[24 + 24 * i : 48 + 24 * i]
                keys[struct.unpack("=i", k[8:12])[0]] = k[4:8]
            mac = keys.get(0, b"\0" * 4) + keys.get(4, b"\0" * 4)[:2]
            out.append(SetEthDst(":".join(f"{x:02x}" for x in mac)))
        else:
            out.append(Gact(f"unknown-{kind}"))  # type: ignore[arg-type]
    return tuple(out)


def _flower_match(opts: AttrList, protocol: int) -> Match:
    eth_type = opts.get("TCA_FLOWER_KEY_ETH_TYPE") or ETH_P_ALL
    eth_dst = opts.get("TCA_FLOWER_KEY_ETH_DST")
    fields: dict[str, tuple[int, int] | None] = {"SRC": None, "DST": None}
    for v, addr in (("IPV4", IPv4Address), ("IPV6", IPv6Address)):
        for side in fields:
            value = opts.get(f"TCA_FLOWER_KEY_{v}_{side}")
            if value is not None:
                mask = opts.get(f"TCA_FLOWER_KEY_{v}_{side}_MASK")
                fields[side] = (int(addr(value)), int(addr(mask)))
    return Match(eth_type=eth_type, src=fields["SRC"], dst=fields["DST"], eth_dst=eth_dst)


def _u32_match(raw: bytes, protocol: int) -> Match | None:
    nkeys = raw[2]
    keys = []
    for i in range(nkeys):
        k = raw[16 + 16 * i : 32 + 16 * i]
        mask, val = struct.unpack(">II", k[:8])
        off = struct.unpack("=i", k[8:12])[0]
        keys.append((off, mask, val))
    # rebuild the description from the keys vipctl writes (see _u32_keys)
    src = dst = None
    eth_dst = None
    words = dict((off, (mask, val)) for off, mask, val in keys)
    if -14 in words and -10 in words:
        hi = words[-14][1].to_bytes(4, "big") + words[-10][1].to_bytes(4, "big")[:2]
        eth_dst = ":".join(f"{x:02x}" for x in hi)
    if protocol == ETH_P_IP:
        if 12 in words:
            src = (words[12][1], words[12][0])
        if 16 in words:
            dst = (words[16][1], words[16][0])
    elif protocol == ETH_P_IPV6:
        for base, side in ((8, "src"), (24, "dst")):
            value = mask = 0
            seen = False
            for word in range(4):
                if base + 4 * word in words:
                    seen = True
                    wm, wv = words[base + 4 * word]
                    mask |= wm << (96 - 32 * word)
                    value |= wv << (96 - 32 * word)
            if seen:
                if side == "src":
                    src = (value, mask)
                else:
                    dst = (value, mask)
    result = Match(eth_type=protocol, src=src, dst=dst, eth_dst=eth_dst)
    return result if _u32_keys(result) == keys else None


def decode_filter(msg: Message, ports: dict[int, str]) -> LiveFilter | None:
    """A dumped filter as a description; None for a tp without a filter node."""
    kind = msg.get_attr("TCA_KIND")
    opts = options(msg)
    if opts is None:
        return None
    info = msg["info"]
    protocol = socket.ntohs(info & 0xFFFF)
    hook = {v: k for k, v in PARENT.items()}.get(msg["parent"])
    if kind == "flower":
        match: Match | None = _flower_match(opts, protocol)
        acts = opts.get("TCA_FLOWER_ACT")
        flags = opts.get("TCA_FLOWER_FLAGS") or 0
        in_hw = opts.get("TCA_FLOWER_IN_HW_COUNT") or 0
    else:
        sel = opts.get("TCA_U32_SEL")
        if sel is None:
            return None  # the hash table node every u32 tp has
        match = _u32_match(sel, protocol)
        acts = opts.get("TCA_U32_ACT")
        flags = opts.get("TCA_U32_FLAGS") or 0
        in_hw = 1 if flags & IN_HW else 0
    return LiveFilter(
        ifindex=msg["index"],
        hook=hook,
        chain=msg.get_attr("TCA_CHAIN") or 0,
        prio=info >> 16,
        protocol=protocol,
        handle=msg["handle"],
        kind=kind,
        match=match,
        actions=_decode_actions(acts, ports),
        flags=flags,
        in_hw_count=in_hw,
    )


# --------------------------------------------------------------------------------------
# Requests, on a netlink.NetlinkSocket (NETLINK_ROUTE)
# --------------------------------------------------------------------------------------


def _request(sock: NetlinkSocket, msg_type: int, payload: bytes, flags: int, what: str) -> None:
    """One acknowledged request; a refusal raises NetlinkError naming `what`."""
    try:
        sock.request(msg_type, payload, flags)
    except NetlinkError as exc:
        exc.what = what
        raise


def filters(
    sock: NetlinkSocket, ifindex: int, hook: str, chain: int | None = None
) -> list[Message]:
    """The filters of a clsact hook (one chain, or all); none without a clsact qdisc."""
    payload = nl.tcmsg(socket.AF_UNSPEC, ifindex, parent=PARENT[hook])
    if chain is not None:
        payload += attr_u32(TCA_CHAIN, chain)
    try:
        return sock.dump(nl.RTM_GETTFILTER, payload)
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: nothing there
            return []
        exc.what = f"list filters of ifindex {ifindex} {hook}"
        raise


def add_filter(
    sock: NetlinkSocket, payload: bytes, *, replace: bool = False, what: str = "add filter"
) -> None:
    """RTM_NEWTFILTER of `payload` (filter_payload): create, or replace a filter in place."""
    flags = nl.NLM_F_CREATE | (nl.NLM_F_REPLACE if replace else nl.NLM_F_EXCL)
    _request(sock, nl.RTM_NEWTFILTER, payload, flags, what)


def del_filter(
    sock: NetlinkSocket, ifindex: int, hook: str, chain: int, prio: int, protocol: int
) -> None:
    payload = nl.tcmsg(
        socket.AF_UNSPEC, ifindex, parent=PARENT[hook], info=(prio << 16) | socket.htons(protocol)
    ) + attr_u32(TCA_CHAIN, chain)
    _request(sock, nl.RTM_DELTFILTER, payload, 0, f"delete filter prio {prio} chain {chain}")


def del_chain(sock: NetlinkSocket, ifindex: int, hook: str, chain: int) -> None:
    """Flush and remove a chain in one operation (ENOENT when it does not exist)."""
    payload = nl.tcmsg(socket.AF_UNSPEC, ifindex, parent=PARENT[hook]) + attr_u32(TCA_CHAIN, chain)
    what = f"delete chain {chain} of ifindex {ifindex} {hook}"
    _request(sock, nl.RTM_DELCHAIN, payload, 0, what)


def qdiscs(sock: NetlinkSocket, ifindex: int) -> list[Message]:
    try:
        found = sock.dump(nl.RTM_GETQDISC, nl.tcmsg(socket.AF_UNSPEC, ifindex))
    except NetlinkError as exc:
        exc.what = "list qdiscs"
        raise
    return [m for m in found if m["index"] == ifindex]


def has_clsact(sock: NetlinkSocket, ifindex: int) -> bool:
    return any(
        m.get_attr("TCA_KIND") == "clsact" and m["parent"] == nl.TC_H_CLSACT
        for m in qdiscs(sock, ifindex)
    )


def _clsact(ifindex: int) -> bytes:
    return nl.tcmsg(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, nl.TC_H_CLSACT) + attr_str(
        TCA_KIND, "clsact"
    )


def add_clsact(sock: NetlinkSocket, ifindex: int) -> None:
    flags = nl.NLM_F_CREATE | nl.NLM_F_EXCL
    _request(sock, nl.RTM_NEWQDISC, _clsact(ifindex), flags, "add clsact qdisc")


def del_clsact(sock: NetlinkSocket, ifindex: int) -> None:
    _request(sock, nl.RTM_DELQDISC, _clsact(ifindex), 0, "delete clsact qdisc")

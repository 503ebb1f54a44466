"""tc netlink for the tc backend: flower and u32 filters with mirred, pedit and gact.

pyroute2 0.9.7 has no flower classifier, no pedit action, and its tcmsg lacks TCA_CHAIN,
so this module declares them on pyroute2's own netlink attribute classes (nla_map with
explicit attribute numbers from include/uapi/linux/pkt_cls.h, rtnetlink.h and
tc_act/*.h as of 6.1; tests/unit/test_tc_uapi.py checks them, and the u32, pedit, mirred
and gact structs, against the installed headers). Keys carry full value/mask:
the tc(8) command line refuses non-prefix flower masks (src_ip 0.0.0.1/0.0.0.1), the
kernel attribute does not.

The socket is a plain NETLINK_ROUTE socket with extended ACKs, so a refusal comes back
with the kernel's own reason ("Unknown filter" ...) and errno.

`filter_message` is pure (description -> message); `decode_filter` is its inverse for
read-back; `TcSocket` sends and dumps.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from pyroute2.netlink import NLA_F_NESTED, nla
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from vipctl.core.net import mac_bytes
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

# rtnetlink message types and flags
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
RTM_NEWCHAIN, RTM_DELCHAIN, RTM_GETCHAIN = 100, 101, 102
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLMSGERR_ATTR_MSG = 1

TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS, TC_H_MIN_EGRESS = 0xFFF2, 0xFFF3
CLSACT_HANDLE = 0xFFFF0000
PARENT = {"ingress": 0xFFFF0000 | TC_H_MIN_INGRESS, "egress": 0xFFFF0000 | TC_H_MIN_EGRESS}

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_PIPE, TC_ACT_STOLEN = 0, 2, 3, 4
TC_ACT_GOTO_CHAIN = 2 << 28
TC_ACT_EXT_VAL_MASK = (1 << 28) - 1
MIRRED_EGRESS_REDIRECT, MIRRED_EGRESS_MIRROR = 1, 2
TCA_PEDIT_KEY_EX_HDR_TYPE_ETH, TCA_PEDIT_KEY_EX_CMD_SET = 1, 0
TC_U32_TERMINAL = 1

# TCA_CLS_FLAGS_*: the offload policy of spec.offload
SKIP_HW, SKIP_SW, IN_HW, NOT_IN_HW = 1, 2, 4, 8
OFFLOAD_FLAGS = {"none": SKIP_HW, "prefer": 0, "require": SKIP_SW}

Classifier = Literal["flower", "u32"]


class TcError(Exception):
    """The kernel refused a tc request: errno and the extended ACK message."""

    def __init__(self, code: int, message: str, what: str) -> None:
        self.code = code
        self.message = message
        self.what = what
        text = message or errno.errorcode.get(code, str(code))
        super().__init__(f"{what}: {text} (errno {code}, {errno.errorcode.get(code, '?')})")


# --------------------------------------------------------------------------------------
# Attribute classes (pyroute2 nla), numbered as in the 6.1 uapi headers
# --------------------------------------------------------------------------------------


class _nested(nla):  # type: ignore[misc]  # pyroute2 is untyped
    nla_flags = NLA_F_NESTED


class gact_options(_nested):
    nla_map = ((1, "TCA_GACT_TM", "none"), (2, "TCA_GACT_PARMS", "tc_gact"))

    class tc_gact(nla):  # type: ignore[misc]
        fields = (
            ("index", "I"),
            ("capab", "I"),
            ("action", "i"),
            ("refcnt", "i"),
            ("bindcnt", "i"),
        )


class mirred_options(_nested):
    nla_map = ((1, "TCA_MIRRED_TM", "none"), (2, "TCA_MIRRED_PARMS", "tc_mirred"))

    class tc_mirred(nla):  # type: ignore[misc]
        fields = (
            ("index", "I"),
            ("capab", "I"),
            ("action", "i"),
            ("refcnt", "i"),
            ("bindcnt", "i"),
            ("eaction", "i"),
            ("ifindex", "I"),
        )


class pedit_options(_nested):
    # PARMS_EX is struct tc_pedit_sel followed by nkeys struct tc_pedit_key; the keys'
    # mask and val are big-endian words, so the struct is packed here (pedit_sel_bytes).
    nla_map = (
        (1, "TCA_PEDIT_TM", "none"),
        (2, "TCA_PEDIT_PARMS", "cdata"),
        (3, "TCA_PEDIT_PAD", "none"),
        (4, "TCA_PEDIT_PARMS_EX", "cdata"),
        (5, "TCA_PEDIT_KEYS_EX", "keys_ex"),
    )

    class keys_ex(_nested):
        nla_map = ((6, "TCA_PEDIT_KEY_EX", "key_ex"),)

        class key_ex(_nested):
            nla_map = (
                (1, "TCA_PEDIT_KEY_EX_HTYPE", "uint16"),
                (2, "TCA_PEDIT_KEY_EX_CMD", "uint16"),
            )


_ACT_OPTIONS: dict[str, type[nla]] = {
    "gact": gact_options,
    "mirred": mirred_options,
    "pedit": pedit_options,
}


class act_prio(_nested):
    nla_map = tuple((i, f"TCA_ACT_PRIO_{i}", "tca_act") for i in range(1, 33))

    class tca_act(_nested):
        nla_map = (
            (1, "TCA_ACT_KIND", "asciiz"),
            (2, "TCA_ACT_OPTIONS", "get_act_options"),
            (3, "TCA_ACT_INDEX", "uint32"),
            (4, "TCA_ACT_STATS", "cdata"),
            (5, "TCA_ACT_PAD", "none"),
            (6, "TCA_ACT_COOKIE", "cdata"),
            (7, "TCA_ACT_FLAGS", "cdata"),
            (8, "TCA_ACT_HW_STATS", "cdata"),
            (9, "TCA_ACT_USED_HW_STATS", "cdata"),
            (10, "TCA_ACT_IN_HW_COUNT", "uint32"),
        )

        @staticmethod
        def get_act_options(self: Any, *argv: Any, **kwarg: Any) -> Any:
            return _ACT_OPTIONS.get(self.get_attr("TCA_ACT_KIND"), self.cdata)


class flower_options(_nested):
    nla_map = (
        (1, "TCA_FLOWER_CLASSID", "uint32"),
        (3, "TCA_FLOWER_ACT", "act_prio"),
        (4, "TCA_FLOWER_KEY_ETH_DST", "l2addr"),
        (5, "TCA_FLOWER_KEY_ETH_DST_MASK", "l2addr"),
        (6, "TCA_FLOWER_KEY_ETH_SRC", "l2addr"),
        (7, "TCA_FLOWER_KEY_ETH_SRC_MASK", "l2addr"),
        (8, "TCA_FLOWER_KEY_ETH_TYPE", "be16"),
        (9, "TCA_FLOWER_KEY_IP_PROTO", "uint8"),
        (10, "TCA_FLOWER_KEY_IPV4_SRC", "ip4addr"),
        (11, "TCA_FLOWER_KEY_IPV4_SRC_MASK", "ip4addr"),
        (12, "TCA_FLOWER_KEY_IPV4_DST", "ip4addr"),
        (13, "TCA_FLOWER_KEY_IPV4_DST_MASK", "ip4addr"),
        (14, "TCA_FLOWER_KEY_IPV6_SRC", "ip6addr"),
        (15, "TCA_FLOWER_KEY_IPV6_SRC_MASK", "ip6addr"),
        (16, "TCA_FLOWER_KEY_IPV6_DST", "ip6addr"),
        (17, "TCA_FLOWER_KEY_IPV6_DST_MASK", "ip6addr"),
        (22, "TCA_FLOWER_FLAGS", "uint32"),
        (47, "TCA_FLOWER_KEY_FLAGS", "be32"),
        (48, "TCA_FLOWER_KEY_FLAGS_MASK", "be32"),
        (86, "TCA_FLOWER_IN_HW_COUNT", "uint32"),
    )

    act_prio = act_prio


class u32_options(_nested):
    nla_map = (
        (1, "TCA_U32_CLASSID", "uint32"),
        (2, "TCA_U32_HASH", "uint32"),
        (3, "TCA_U32_LINK", "uint32"),
        (4, "TCA_U32_DIVISOR", "uint32"),
        (5, "TCA_U32_SEL", "cdata"),
        (7, "TCA_U32_ACT", "act_prio"),
        (9, "TCA_U32_PCNT", "cdata"),
        (11, "TCA_U32_FLAGS", "uint32"),
    )

    act_prio = act_prio


_CLS_OPTIONS: dict[str, type[nla]] = {"flower": flower_options, "u32": u32_options}


class TcMsg(tcmsg):  # type: ignore[misc]
    """pyroute2's tcmsg with the attributes it lacks (TCA_CHAIN, TCA_HW_OFFLOAD) and
    options classes for flower and u32 from this module."""

    nla_map = (
        (1, "TCA_KIND", "asciiz"),
        (2, "TCA_OPTIONS", "get_options"),
        (3, "TCA_STATS", "cdata"),
        (4, "TCA_XSTATS", "cdata"),
        (7, "TCA_STATS2", "cdata"),
        (9, "TCA_PAD", "none"),
        (11, "TCA_CHAIN", "uint32"),
        (12, "TCA_HW_OFFLOAD", "uint8"),
    )

    @staticmethod
    def get_options(self: Any, *argv: Any, **kwarg: Any) -> Any:
        return _CLS_OPTIONS.get(self.get_attr("TCA_KIND"), self.cdata)


# --------------------------------------------------------------------------------------
# Description -> attributes
# --------------------------------------------------------------------------------------


def pedit_sel_bytes(keys: list[tuple[int, bytes, bytes]], action: int) -> bytes:
    """struct tc_pedit_sel + keys: (offset, keep-mask, value), mask/value in wire order."""
    out = struct.pack("=IIiiiBBxx", 0, 0, action, 0, 0, len(keys), 0)
    for off, mask, val in keys:
        out += mask + val + struct.pack("=iIII", off, 0, 0, 0)
    return out


def _set_eth_dst_keys(mac: str) -> list[tuple[int, bytes, bytes]]:
    b = mac_bytes(mac)
    # new = (old & mask) ^ val: words 0..3 replaced, word 4..7 keeps the source MAC's head
    return [(0, b"\0\0\0\0", b[:4]), (4, b"\0\0\xff\xff", b[4:6] + b"\0\0")]


def _action_attrs(a: Action, last: bool) -> list[Any]:
    if isinstance(a, Mirred):
        eaction = MIRRED_EGRESS_REDIRECT if a.redirect else MIRRED_EGRESS_MIRROR
        verdict = TC_ACT_STOLEN if a.redirect else TC_ACT_PIPE
        return [
            ["TCA_ACT_KIND", "mirred"],
            [
                "TCA_ACT_OPTIONS",
                {
                    "attrs": [
                        [
                            "TCA_MIRRED_PARMS",
                            {"action": verdict, "eaction": eaction, "ifindex": a.ifindex},
                        ]
                    ]
                },
            ],
        ]
    if isinstance(a, SetEthDst):
        keys = _set_eth_dst_keys(a.mac)
        ex = [
            [
                "TCA_PEDIT_KEY_EX",
                {
                    "attrs": [
                        ["TCA_PEDIT_KEY_EX_HTYPE", TCA_PEDIT_KEY_EX_HDR_TYPE_ETH],
                        ["TCA_PEDIT_KEY_EX_CMD", TCA_PEDIT_KEY_EX_CMD_SET],
                    ]
                },
            ]
            for _ in keys
        ]
        return [
            ["TCA_ACT_KIND", "pedit"],
            [
                "TCA_ACT_OPTIONS",
                {
                    "attrs": [
                        ["TCA_PEDIT_PARMS_EX", pedit_sel_bytes(keys, TC_ACT_PIPE)],
                        ["TCA_PEDIT_KEYS_EX", {"attrs": ex}],
                    ]
                },
            ],
        ]
    verdict = {"ok": TC_ACT_OK, "drop": TC_ACT_SHOT}.get(a.verdict, 0)
    if a.verdict == "goto":
        if not 0 <= a.chain <= TC_ACT_EXT_VAL_MASK:
            raise ValueError(f"chain {a.chain} does not fit a goto verdict")
        verdict = TC_ACT_GOTO_CHAIN | a.chain
    attrs: list[Any] = [
        ["TCA_ACT_KIND", "gact"],
        ["TCA_ACT_OPTIONS", {"attrs": [["TCA_GACT_PARMS", {"action": verdict}]]}],
    ]
    if a.cookie:
        attrs.append(["TCA_ACT_COOKIE", a.cookie])
    return attrs


def actions_attr(actions: tuple[Action, ...]) -> dict[str, Any]:
    return {
        "attrs": [
            [f"TCA_ACT_PRIO_{i}", {"attrs": _action_attrs(a, i == len(actions))}]
            for i, a in enumerate(actions, start=1)
        ]
    }


def _flower_attrs(m: Match, flags: int, actions: tuple[Action, ...]) -> list[Any]:
    attrs: list[Any] = []
    if m.eth_dst is not None:
        attrs += [
            ["TCA_FLOWER_KEY_ETH_DST", m.eth_dst],
            ["TCA_FLOWER_KEY_ETH_DST_MASK", "ff:ff:ff:ff:ff:ff"],
        ]
    if m.eth_type != ETH_P_ALL:
        attrs.append(["TCA_FLOWER_KEY_ETH_TYPE", m.eth_type])
    v = "IPV4" if m.eth_type == ETH_P_IP else "IPV6"
    addr = IPv4Address if m.eth_type == ETH_P_IP else IPv6Address
    for side, field in (("SRC", m.src), ("DST", m.dst)):
        if field is not None:
            if m.eth_type not in (ETH_P_IP, ETH_P_IPV6):
                raise ValueError("address keys need eth_type IPv4 or IPv6")
            attrs += [
                [f"TCA_FLOWER_KEY_{v}_{side}", str(addr(field[0]))],
                [f"TCA_FLOWER_KEY_{v}_{side}_MASK", str(addr(field[1]))],
            ]
    attrs.append(["TCA_FLOWER_FLAGS", flags])
    attrs.append(["TCA_FLOWER_ACT", actions_attr(actions)])
    return attrs


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
    out = struct.pack("=BBBxHHhhI", TC_U32_TERMINAL, 0, len(keys), 0, 0, 0, 0, 0)
    for off, mask, val in keys:
        out += struct.pack(">II", mask, val) + struct.pack("=ii", off, 0)
    return out


def _u32_attrs(m: Match, flags: int, actions: tuple[Action, ...]) -> list[Any]:
    return [
        ["TCA_U32_SEL", u32_sel_bytes(m)],
        ["TCA_U32_FLAGS", flags],
        ["TCA_U32_ACT", actions_attr(actions)],
    ]


def filter_message(
    f: TcFilter,
    ifindex: int,
    *,
    classifier: Classifier = "flower",
    flags: int = 0,
    handle: int | None = None,
) -> TcMsg:
    """The RTM_NEWTFILTER body for one filter (header type/flags are set by the sender)."""
    msg = TcMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = (1 if classifier == "flower" else 0) if handle is None else handle
    msg["parent"] = PARENT[f.hook]
    msg["info"] = (f.prio << 16) | socket.htons(f.match.eth_type)
    options = (
        _flower_attrs(f.match, flags, f.actions)
        if classifier == "flower"
        else _u32_attrs(f.match, flags, f.actions)
    )
    msg["attrs"] = [
        ["TCA_KIND", classifier],
        ["TCA_CHAIN", f.chain],
        ["TCA_OPTIONS", {"attrs": options}],
    ]
    return msg


@functools.lru_cache(maxsize=4096)
def filter_bytes(
    f: TcFilter, ifindex: int, classifier: Classifier, flags: int, handle: int | None
) -> bytes:
    """Encoded RTM_NEWTFILTER for `f`, cached: a daemon re-sends the same filters on every
    flip, and pyroute2's encoder costs ~0.6 ms per filter (seconds per apply under TCG)."""
    msg = filter_message(f, ifindex, classifier=classifier, flags=flags, handle=handle)
    return encode(msg, RTM_NEWTFILTER, 0)


def encode(msg: TcMsg, msg_type: int, msg_flags: int, seq: int = 1) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = msg_flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def dump_attrs(obj: Any) -> Any:
    """A canonical, JSON-able tree of a decoded message's attributes (golden tests)."""
    if isinstance(obj, nla | tcmsg):
        out: dict[str, Any] = {}
        for name, _ in obj.fields if hasattr(obj, "fields") else ():
            if name.startswith("__") or name == "header":
                continue
            out[name] = obj.get(name)
        attrs = [[name, dump_attrs(value)] for name, value, *_ in obj.get("attrs", [])]
        if attrs:
            out["attrs"] = attrs
        if "value" in out and len(out) == 1:
            return dump_attrs(out["value"])
        return out
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    return obj


def decode_message(data: bytes) -> TcMsg:
    msg = TcMsg(data)
    msg.decode()
    return msg


# --------------------------------------------------------------------------------------
# Attributes -> description (read-back)
# --------------------------------------------------------------------------------------


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


def _decode_actions(acts: Any, ports: dict[int, str]) -> tuple[Action, ...]:
    out: list[Action] = []
    if acts is None:
        return ()
    for _name, act, *_ in sorted(acts.get("attrs", []), key=lambda t: int(t[0].rsplit("_", 1)[1])):
        kind = act.get_attr("TCA_ACT_KIND")
        opts = act.get_attr("TCA_ACT_OPTIONS")
        cookie = act.get_attr("TCA_ACT_COOKIE")
        if kind == "mirred":
            p = opts.get_attr("TCA_MIRRED_PARMS")
            ifindex = p["ifindex"]
            out.append(
                Mirred(
                    ports.get(ifindex, f"if{ifindex}"),
                    ifindex,
                    redirect=p["eaction"] == MIRRED_EGRESS_REDIRECT,
                )
            )
        elif kind == "gact":
            verdict = opts.get_attr("TCA_GACT_PARMS")["action"]
            if verdict & ~TC_ACT_EXT_VAL_MASK == TC_ACT_GOTO_CHAIN:
                out.append(Gact("goto", verdict & TC_ACT_EXT_VAL_MASK, bytes(cookie or b"")))
            else:
                name = {TC_ACT_OK: "ok", TC_ACT_SHOT: "drop"}.get(verdict)
                out.append(Gact(name or f"verdict{verdict}", 0, bytes(cookie or b"")))  # type: ignore[arg-type]
        elif kind == "pedit":
            raw = bytes(opts.get_attr("TCA_PEDIT_PARMS_EX") or opts.get_attr("TCA_PEDIT_PARMS"))
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


def _flower_match(opts: Any, protocol: int) -> Match:
    eth_type = opts.get_attr("TCA_FLOWER_KEY_ETH_TYPE") or ETH_P_ALL
    eth_dst = opts.get_attr("TCA_FLOWER_KEY_ETH_DST")
    fields: dict[str, tuple[int, int] | None] = {"SRC": None, "DST": None}
    for v, addr in (("IPV4", IPv4Address), ("IPV6", IPv6Address)):
        for side in fields:
            value = opts.get_attr(f"TCA_FLOWER_KEY_{v}_{side}")
            if value is not None:
                mask = opts.get_attr(f"TCA_FLOWER_KEY_{v}_{side}_MASK")
                fields[side] = (int(addr(value)), int(addr(mask)))
    return Match(eth_type=eth_type, src=fields["SRC"], dst=fields["DST"], eth_dst=eth_dst)


def _u32_match(opts: Any, protocol: int) -> Match | None:
    raw = opts.get_attr("TCA_U32_SEL")
    if raw is None:
        return None
    raw = bytes(raw)
    nkeys = raw[2]
    keys = []
    for i in range(nkeys):
        k = raw[16 + 16 * i : 32 + 16 * i]
        mask, val = struct.unpack(">II", k[:8])
        off = struct.unpack("=i", k[8:12])[0]
        keys.append((off, mask, val))
    # rebuild the description from the keys vipctl writes (see _u32_keys)
    probe = Match(eth_type=protocol)
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
    result = Match(eth_type=probe.eth_type, src=src, dst=dst, eth_dst=eth_dst)
    return result if _u32_keys(result) == keys else None


def decode_filter(msg: TcMsg, ports: dict[int, str]) -> LiveFilter | None:
    """A dumped filter as a description; None for a tp without a filter node."""
    kind = msg.get_attr("TCA_KIND")
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None or kind not in _CLS_OPTIONS:
        return None
    info = msg["info"]
    protocol = socket.ntohs(info & 0xFFFF)
    parent = msg["parent"]
    hook = {v: k for k, v in PARENT.items()}.get(parent)
    if kind == "flower":
        match: Match | None = _flower_match(opts, protocol)
        acts = opts.get_attr("TCA_FLOWER_ACT")
        flags = opts.get_attr("TCA_FLOWER_FLAGS") or 0
        in_hw = opts.get_attr("TCA_FLOWER_IN_HW_COUNT") or 0
    else:
        if opts.get_attr("TCA_U32_SEL") is None:
            return None  # the hash table node every u32 tp has
        match = _u32_match(opts, protocol)
        acts = opts.get_attr("TCA_U32_ACT")
        flags = opts.get_attr("TCA_U32_FLAGS") or 0
        in_hw = 1 if flags & IN_HW else 0
    actions = _decode_actions(acts, ports)
    return LiveFilter(
        ifindex=msg["index"],
        hook=hook,
        chain=msg.get_attr("TCA_CHAIN") or 0,
        prio=info >> 16,
        protocol=protocol,
        handle=msg["handle"],
        kind=kind,
        match=match,
        actions=actions,
        flags=flags,
        in_hw_count=in_hw,
    )


# --------------------------------------------------------------------------------------
# The socket
# --------------------------------------------------------------------------------------


class TcSocket:
    """A NETLINK_ROUTE socket in the current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TcSocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _messages(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, whole message) of the replies to `seq` until DONE or an ACK."""
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, mflags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
                chunk = data[offset : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                yield mtype, mflags, chunk
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    return

    @staticmethod
    def _error(chunk: bytes, what: str) -> TcError | None:
        code = -struct.unpack_from("=i", chunk, 16)[0]
        if code == 0:
            return None
        message = ""
        # with CAP_ACK the original request is not echoed: header(16) errno(4) hdr(16)
        offset = 36
        while offset + 4 <= len(chunk):
            alen, atype = struct.unpack_from("=HH", chunk, offset)
            if alen < 4:
                break
            if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
                message = chunk[offset + 4 : offset + alen].split(b"\0")[0].decode(errors="replace")
            offset += (alen + 3) & ~3
        return TcError(code, message, what)

    def request(self, msg: TcMsg | bytes, msg_type: int, flags: int, what: str) -> None:
        """One request (a message, or one already encoded), acknowledged; raises TcError
        with the kernel's reason."""
        self.seq += 1
        flags |= NLM_F_REQUEST | NLM_F_ACK
        if isinstance(msg, bytes):
            data = bytearray(msg)
            struct.pack_into("=HHI", data, 4, msg_type, flags, self.seq)
            self.sock.send(data)
        else:
            self.sock.send(encode(msg, msg_type, flags, self.seq))
        for mtype, _f, chunk in self._messages(self.seq):
            if mtype == NLMSG_ERROR:
                err = self._error(chunk, what)
                if err is not None:
                    raise err

    def dump(self, msg: TcMsg, msg_type: int, what: str) -> list[TcMsg]:
        self.seq += 1
        self.sock.send(encode(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq))
        out = []
        for mtype, _f, chunk in self._messages(self.seq):
            if mtype == NLMSG_ERROR:
                err = self._error(chunk, what)
                if err is not None:
                    raise err
            elif mtype != NLMSG_DONE:
                out.append(decode_message(chunk))
        return out

    # -- conveniences --------------------------------------------------------------
    def filters(self, ifindex: int, hook: str, chain: int | None = None) -> list[TcMsg]:
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["parent"] = PARENT[hook]
        if chain is not None:
            msg["attrs"] = [["TCA_CHAIN", chain]]
        try:
            return self.dump(msg, RTM_GETTFILTER, f"list filters of ifindex {ifindex} {hook}")
        except TcError as exc:
            if exc.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: nothing there
                return []
            raise

    def add_filter(
        self, msg: TcMsg | bytes, *, replace: bool = False, what: str = "add filter"
    ) -> None:
        flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        self.request(msg, RTM_NEWTFILTER, flags, what)

    def del_filter(self, ifindex: int, hook: str, chain: int, prio: int, protocol: int) -> None:
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["parent"] = PARENT[hook]
        msg["info"] = (prio << 16) | socket.htons(protocol)
        msg["attrs"] = [["TCA_CHAIN", chain]]
        self.request(msg, RTM_DELTFILTER, 0, f"delete filter prio {prio} chain {chain}")

    def del_chain(self, ifindex: int, hook: str, chain: int) -> None:
        """Flush and remove a chain in one operation (ENOENT when it does not exist)."""
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["parent"] = PARENT[hook]
        msg["attrs"] = [["TCA_CHAIN", chain]]
        self.request(msg, RTM_DELCHAIN, 0, f"delete chain {chain} of ifindex {ifindex} {hook}")

    def qdiscs(self, ifindex: int) -> list[TcMsg]:
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        return [m for m in self.dump(msg, RTM_GETQDISC, "list qdiscs") if m["index"] == ifindex]

    def has_clsact(self, ifindex: int) -> bool:
        return any(
            m.get_attr("TCA_KIND") == "clsact" and m["parent"] == TC_H_CLSACT
            for m in self.qdiscs(ifindex)
        )

    def add_clsact(self, ifindex: int) -> None:
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["handle"] = CLSACT_HANDLE
        msg["parent"] = TC_H_CLSACT
        msg["attrs"] = [["TCA_KIND", "clsact"]]
        self.request(msg, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, "add clsact qdisc")

    def del_clsact(self, ifindex: int) -> None:
        msg = TcMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["handle"] = CLSACT_HANDLE
        msg["parent"] = TC_H_CLSACT
        msg["attrs"] = [["TCA_KIND", "clsact"]]
        self.request(msg, RTM_DELQDISC, 0, "delete clsact qdisc")

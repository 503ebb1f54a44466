"""A small netlink client of vipctl's own: the few rtnetlink and nfnetlink messages vipctl
reads and sends (links, addresses, routes, neighbours; nftables tables, chains, sets and
rules), stdlib only.

Why not pyroute2 on these paths: importing any part of it (even its exceptions) runs
pyroute2/__init__, which imports conntrack, ipdb, ndb and asyncio: 70-100 ms at every start
of the command line, whose goals are 150-250 ms for the whole process. Its decoder also
builds every attribute of every message; this one decodes only what vipctl uses and skips
the rest.

Messages come back as `Message`: header fields by name (``msg["index"]``) and the decoded
attributes by their UAPI name (``msg.get_attr("IFLA_IFNAME")``), with the values vipctl
reads: names as str, numbers as int, addresses as canonical text, MACs as lowercase
"aa:bb:cc:dd:ee:ff", a route's RTA_MULTIPATH as a list of nexthop messages (``hop["oif"]``),
a set's NFTA_SET_FLAGS as the frozenset of NFT_SET_* names, and a rule's
NFTA_RULE_USERDATA as its comment (libnftnl's udata TLVs).

A refused request raises NetlinkError (``.code`` is the errno); data that does not parse
(truncated, lengths that do not add up) raises NetlinkDecodeError, never struct.error.

Every number below is named as in the kernel's UAPI headers (tests/unit/test_netlink.py
compiles them against the installed headers). rtnetlink numbers are in host order,
nfnetlink attribute values in network order (nfgenmsg.res_id and the NFTA_* integers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# --- linux/netlink.h ------------------------------------------------------------------
NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270  # linux/socket.h
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100  # modifiers of NEW requests
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # flags of an NLMSG_ERROR
NLM_F_ACK_TLVS = 0x200

NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# --- linux/rtnetlink.h ----------------------------------------------------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

# enum rtattr_type_t
RTA_DST = 1
RTA_SRC = 2
RTA_IIF = 3
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15

RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RT_TABLE_MAIN = 254

# --- linux/if_link.h, linux/if.h ------------------------------------------------------
IFLA_IFNAME = 3
IFLA_MTU = 4
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

# --- linux/if_addr.h ------------------------------------------------------------------
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_F_NODAD = 0x02

# --- linux/neighbour.h ----------------------------------------------------------------
NDA_DST = 1
NDA_LLADDR = 2
NDA_PROTOCOL = 12
NTF_PROXY = 0x08
NUD_PERMANENT = 0x80

# --- linux/netfilter/nfnetlink.h, linux/netfilter.h -----------------------------------
NFNL_SUBSYS_NFTABLES = 10
NFNETLINK_V0 = 0
NFPROTO_NETDEV = 5

# --- linux/netfilter/nf_tables.h ------------------------------------------------------
# enum nf_tables_msg_types (the message type is NFNL_SUBSYS_NFTABLES << 8 | this)
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16

NFTA_TABLE_NAME = 1
NFTA_TABLE_FLAGS = 2
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_USERDATA = 7
NFTA_GEN_ID = 1

# enum nft_set_flags
NFT_SET_ANONYMOUS = 0x1
NFT_SET_CONSTANT = 0x2
NFT_SET_INTERVAL = 0x4
NFT_SET_MAP = 0x8
NFT_SET_TIMEOUT = 0x10
NFT_SET_EVAL = 0x20
NFT_SET_OBJECT = 0x40
NFT_SET_CONCAT = 0x80
NFT_SET_EXPR = 0x100

# libnftnl/udata.h: enum nftnl_udata_rule_types (not a kernel header: the kernel stores
# NFTA_RULE_USERDATA as opaque bytes; nft writes type-length-value records into it)
NFTNL_UDATA_RULE_COMMENT = 0

# --- linux/sched.h --------------------------------------------------------------------
CLONE_NEWNET = 0x40000000

SET_FLAG_NAMES = {
    NFT_SET_ANONYMOUS: "NFT_SET_ANONYMOUS",
    NFT_SET_CONSTANT: "NFT_SET_CONSTANT",
    NFT_SET_INTERVAL: "NFT_SET_INTERVAL",
    NFT_SET_MAP: "NFT_SET_MAP",
    NFT_SET_TIMEOUT: "NFT_SET_TIMEOUT",
    NFT_SET_EVAL: "NFT_SET_EVAL",
    NFT_SET_OBJECT: "NFT_SET_OBJECT",
    NFT_SET_CONCAT: "NFT_SET_CONCAT",
    NFT_SET_EXPR: "NFT_SET_EXPR",
}

# struct nlmsghdr { __u32 len; __u16 type; __u16 flags; __u32 seq; __u32 pid; }
NLMSGHDR = struct.Struct("=IHHII")
# struct nlattr { __u16 nla_len; __u16 nla_type; }
NLATTR = struct.Struct("=HH")
# struct ifinfomsg { u8 family; u8 pad; u16 type; int index; unsigned flags, change; }
IFINFOMSG = struct.Struct("=BxHiII")
# struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
IFADDRMSG = struct.Struct("=BBBBI")
# struct rtmsg { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags; }
RTMSG = struct.Struct("=BBBBBBBBI")
# struct ndmsg { u8 family, pad1; u16 pad2; s32 ifindex; u16 state; u8 flags, type; }
NDMSG = struct.Struct("=BxxxiHBB")
# struct rtnexthop { u16 len; u8 flags; u8 hops; int ifindex; }
RTNEXTHOP = struct.Struct("=HBBi")
# struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }
NFGENMSG = struct.Struct(">BBH")

_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_BE32 = struct.Struct(">I")

RECV_BUFFER = 1 << 18  # dump datagrams are <= 32 KiB (af_netlink); one reply may be larger
DUMP_RETRIES = 3  # NLM_F_DUMP_INTR: the table changed during the dump, which is redone


class NetlinkError(Exception):
    """The kernel refused a request: NLMSG_ERROR with a negative errno (``code`` > 0)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))
        self.code = code
        self.message = message  # the extended ACK's text, when the kernel gave one


class NetlinkDecodeError(Exception):
    """Netlink data that does not parse: truncated, or lengths that do not add up."""


def align(length: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN / RTNH_ALIGN: 4 bytes."""
    return (length + 3) & ~3


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------

Buffer = bytes | bytearray | memoryview
Decoder = Callable[[Buffer], Any]


class Message:
    """One decoded message: header fields by name, the attributes vipctl uses by name."""

    __slots__ = ("attrs", "fields", "flags", "seq", "type")

    def __init__(
        self,
        type: int,
        fields: dict[str, int],
        attrs: dict[str, Any],
        flags: int = 0,
        seq: int = 0,
    ) -> None:
        self.type = type
        self.fields = fields
        self.attrs = attrs
        self.flags = flags
        self.seq = seq

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get_attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name)
        return default if value is None else value

    def __repr__(self) -> str:
        return f"Message(type={self.type}, fields={self.fields}, attrs={self.attrs})"


def _str(data: Buffer) -> str:
    raw = bytes(data)
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode("utf-8", "replace")


def _u8(data: Buffer) -> int:
    if len(data) != 1:
        raise NetlinkDecodeError(f"a u8 attribute of {len(data)} bytes")
    return data[0]


def _u32(data: Buffer) -> int:
    return int(_U32.unpack(data)[0])


def _be32(data: Buffer) -> int:
    return int(_BE32.unpack(data)[0])


def _ip(data: Buffer) -> str:
    if len(data) == 4:
        return socket.inet_ntop(socket.AF_INET, bytes(data))
    if len(data) == 16:
        return socket.inet_ntop(socket.AF_INET6, bytes(data))
    raise NetlinkDecodeError(f"an address attribute of {len(data)} bytes")


def _mac(data: Buffer) -> str:
    return bytes(data).hex(":")


def _set_flags(data: Buffer) -> frozenset[str]:
    bits = _be32(data)
    return frozenset(name for bit, name in SET_FLAG_NAMES.items() if bits & bit)


def rule_comment(data: Buffer) -> str | None:
    """The comment in a rule's NFTA_RULE_USERDATA: libnftnl's records (u8 type, u8 length,
    value; no padding), type NFTNL_UDATA_RULE_COMMENT holding a NUL-terminated string.
    None without a comment record."""
    raw = bytes(data)
    comment = None
    offset = 0
    while offset < len(raw):
        if offset + 2 > len(raw):
            raise NetlinkDecodeError("truncated rule userdata record")
        kind, length = raw[offset], raw[offset + 1]
        value = raw[offset + 2 : offset + 2 + length]
        if len(value) != length:
            raise NetlinkDecodeError(f"rule userdata record of {length} bytes is truncated")
        if kind == NFTNL_UDATA_RULE_COMMENT:
            comment = _str(value)
        offset += 2 + length
    return comment


def _multipath(data: Buffer) -> list[Message]:
    """RTA_MULTIPATH: struct rtnexthop records, each followed by its own attributes."""
    hops = []
    offset = 0
    while offset < len(data):
        if offset + RTNEXTHOP.size > len(data):
            raise NetlinkDecodeError("truncated rtnexthop")
        length, flags, weight, ifindex = RTNEXTHOP.unpack_from(data, offset)
        if length < RTNEXTHOP.size or offset + length > len(data):
            raise NetlinkDecodeError(f"rtnexthop of length {length} does not fit")
        attrs = parse_attrs(data, offset + RTNEXTHOP.size, offset + length, ROUTE_ATTRS)
        fields = {"flags": flags, "hops": weight, "oif": ifindex}
        hops.append(Message(RTM_NEWROUTE, fields, attrs))
        offset += align(length)
    return hops


AttrTable = Mapping[int, tuple[str, Decoder]]

LINK_ATTRS: AttrTable = {IFLA_IFNAME: ("IFLA_IFNAME", _str), IFLA_MTU: ("IFLA_MTU", _u32)}
ADDR_ATTRS: AttrTable = {
    IFA_ADDRESS: ("IFA_ADDRESS", _ip),
    IFA_LOCAL: ("IFA_LOCAL", _ip),
    IFA_LABEL: ("IFA_LABEL", _str),
    IFA_FLAGS: ("IFA_FLAGS", _u32),
}
ROUTE_ATTRS: AttrTable = {
    RTA_DST: ("RTA_DST", _ip),
    RTA_SRC: ("RTA_SRC", _ip),
    RTA_IIF: ("RTA_IIF", _u32),
    RTA_OIF: ("RTA_OIF", _u32),
    RTA_GATEWAY: ("RTA_GATEWAY", _ip),
    RTA_PRIORITY: ("RTA_PRIORITY", _u32),
    RTA_PREFSRC: ("RTA_PREFSRC", _ip),
    RTA_MULTIPATH: ("RTA_MULTIPATH", _multipath),
    RTA_TABLE: ("RTA_TABLE", _u32),
}
NEIGH_ATTRS: AttrTable = {
    NDA_DST: ("NDA_DST", _ip),
    NDA_LLADDR: ("NDA_LLADDR", _mac),
    NDA_PROTOCOL: ("NDA_PROTOCOL", _u8),
}
TABLE_ATTRS: AttrTable = {
    NFTA_TABLE_NAME: ("NFTA_TABLE_NAME", _str),
    NFTA_TABLE_FLAGS: ("NFTA_TABLE_FLAGS", _be32),
}
GEN_ATTRS: AttrTable = {NFTA_GEN_ID: ("NFTA_GEN_ID", _be32)}
CHAIN_ATTRS: AttrTable = {
    NFTA_CHAIN_TABLE: ("NFTA_CHAIN_TABLE", _str),
    NFTA_CHAIN_NAME: ("NFTA_CHAIN_NAME", _str),
}
SET_ATTRS: AttrTable = {
    NFTA_SET_TABLE: ("NFTA_SET_TABLE", _str),
    NFTA_SET_NAME: ("NFTA_SET_NAME", _str),
    NFTA_SET_FLAGS: ("NFTA_SET_FLAGS", _set_flags),
}
RULE_ATTRS: AttrTable = {
    NFTA_RULE_TABLE: ("NFTA_RULE_TABLE", _str),
    NFTA_RULE_CHAIN: ("NFTA_RULE_CHAIN", _str),
    NFTA_RULE_USERDATA: ("NFTA_RULE_USERDATA", rule_comment),
}


def nft_type(msg: int) -> int:
    """The nlmsg_type of an nf_tables message."""
    return NFNL_SUBSYS_NFTABLES << 8 | msg


_IFINFO_FIELDS = ("family", "ifi_type", "index", "flags", "change")
_IFADDR_FIELDS = ("family", "prefixlen", "flags", "scope", "index")
_RTMSG_FIELDS = ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags")
_NDMSG_FIELDS = ("family", "ifindex", "state", "flags", "ndm_type")
_NFGEN_FIELDS = ("nfgen_family", "version", "res_id")

# nlmsg_type -> (fixed header, its field names, attribute table)
LAYOUTS: dict[int, tuple[struct.Struct, tuple[str, ...], AttrTable]] = {
    **{t: (IFINFOMSG, _IFINFO_FIELDS, LINK_ATTRS) for t in (RTM_NEWLINK, RTM_DELLINK)},
    **{t: (IFADDRMSG, _IFADDR_FIELDS, ADDR_ATTRS) for t in (RTM_NEWADDR, RTM_DELADDR)},
    **{t: (RTMSG, _RTMSG_FIELDS, ROUTE_ATTRS) for t in (RTM_NEWROUTE, RTM_DELROUTE)},
    **{t: (NDMSG, _NDMSG_FIELDS, NEIGH_ATTRS) for t in (RTM_NEWNEIGH, RTM_DELNEIGH)},
    nft_type(NFT_MSG_NEWTABLE): (NFGENMSG, _NFGEN_FIELDS, TABLE_ATTRS),
    nft_type(NFT_MSG_NEWCHAIN): (NFGENMSG, _NFGEN_FIELDS, CHAIN_ATTRS),
    nft_type(NFT_MSG_NEWSET): (NFGENMSG, _NFGEN_FIELDS, SET_ATTRS),
    nft_type(NFT_MSG_NEWRULE): (NFGENMSG, _NFGEN_FIELDS, RULE_ATTRS),
    nft_type(NFT_MSG_NEWGEN): (NFGENMSG, _NFGEN_FIELDS, GEN_ATTRS),
}


def parse_attrs(data: Buffer, offset: int, end: int, table: AttrTable) -> dict[str, Any]:
    """The attributes in data[offset:end] that `table` names, decoded; others skipped."""
    out: dict[str, Any] = {}
    while offset + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > end:
            raise NetlinkDecodeError(f"attribute {kind & NLA_TYPE_MASK} of length {length}")
        entry = table.get(kind & NLA_TYPE_MASK)
        if entry is not None:
            name, decode = entry
            try:
                out[name] = decode(data[offset + NLATTR.size : offset + length])
            except (NetlinkDecodeError, struct.error, ValueError, IndexError, OSError) as exc:
                raise NetlinkDecodeError(f"{name}: {exc}") from None
        offset += align(length)
    if offset < end and any(data[offset:end]):  # fewer than 4 bytes left: padding only
        raise NetlinkDecodeError(f"truncated attribute ({end - offset} bytes)")
    return out


def decode_message(
    data: Buffer,
    offset: int = 0,
    end: int | None = None,
    layouts: Mapping[int, tuple[struct.Struct, tuple[str, ...], AttrTable]] | None = None,
) -> Message:
    """The message at data[offset:end] (its nlmsghdr included); `layouts`: the protocol's
    (message types are numbered per protocol; default: rtnetlink's and nf_tables')."""
    end = len(data) if end is None else end
    if end - offset < NLMSGHDR.size:
        raise NetlinkDecodeError(f"truncated netlink header ({end - offset} bytes)")
    length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
    if length < NLMSGHDR.size or offset + length > end:
        raise NetlinkDecodeError(f"netlink message of length {length} in {end - offset} bytes")
    end = offset + length
    layout = (LAYOUTS if layouts is None else layouts).get(mtype)
    if layout is None:
        return Message(mtype, {}, {}, flags, seq)
    header, names, table = layout
    start = offset + NLMSGHDR.size
    if end - start < header.size:
        raise NetlinkDecodeError(f"message type {mtype}: truncated header")
    fields = dict(zip(names, header.unpack_from(data, start), strict=True))
    attrs = parse_attrs(data, start + align(header.size), end, table)
    return Message(mtype, fields, attrs, flags, seq)


def frames(data: Buffer, size: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, offset, end) of each message in a datagram."""
    size = len(data) if size is None else size
    offset = 0
    while offset < size:
        if size - offset < NLMSGHDR.size:
            raise NetlinkDecodeError(f"truncated netlink header ({size - offset} bytes)")
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > size:
            raise NetlinkDecodeError(f"netlink message of length {length} in {size - offset} bytes")
        yield mtype, flags, seq, offset, offset + length
        offset += align(length)


def error_of(data: Buffer, offset: int, end: int, flags: int) -> NetlinkError | None:
    """The NLMSG_ERROR at data[offset:end]: None for an ACK (error 0), else the error with
    the extended ACK's message when there is one."""
    start = offset + NLMSGHDR.size
    if end - start < _I32.size:
        raise NetlinkDecodeError("truncated NLMSG_ERROR")
    code = -int(_I32.unpack_from(data, start)[0])
    if code == 0:
        return None
    if code < 0:
        raise NetlinkDecodeError(f"NLMSG_ERROR with a positive error {-code}")
    message = ""
    inner = start + _I32.size  # struct nlmsghdr of the request ...
    if flags & NLM_F_ACK_TLVS and end - inner >= NLMSGHDR.size:
        request_length = NLMSGHDR.unpack_from(data, inner)[0]
        # ... and its payload unless NETLINK_CAP_ACK left it out
        tlvs = inner + (NLMSGHDR.size if flags & NLM_F_CAPPED else align(request_length))
        text = parse_attrs(data, tlvs, end, {NLMSGERR_ATTR_MSG: ("msg", _str)}).get("msg")
        message = text or ""
    return NetlinkError(code, message)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


def encode(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """One message: nlmsghdr + payload (padded)."""
    length = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(length, msg_type, flags, seq, pid) + payload + b"\0" * (-length % 4)


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, bytes((value,)))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_be32(kind: int, value: int) -> bytes:
    return attr(kind, _BE32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    """A NUL-terminated string (NLA_STRING / NLA_NUL_STRING)."""
    return attr(kind, value.encode() + b"\0")


def packed_ip(text: str) -> bytes:
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_pton(family, text)
    except OSError:
        raise ValueError(f"{text!r} is not an IP address") from None


def attr_ip(kind: int, text: str) -> bytes:
    return attr(kind, packed_ip(text))


def ifinfomsg(family: int = 0, index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


def ifaddrmsg(
    family: int, prefixlen: int = 0, flags: int = 0, scope: int = 0, index: int = 0
) -> bytes:
    return IFADDRMSG.pack(family, prefixlen, flags, scope, index)


def rtmsg(
    family: int,
    dst_len: int = 0,
    src_len: int = 0,
    table: int = 0,
    proto: int = 0,
    scope: int = 0,
    type: int = 0,
    flags: int = 0,
) -> bytes:
    return RTMSG.pack(family, dst_len, src_len, 0, table, proto, scope, type, flags)


def ndmsg(family: int, ifindex: int = 0, state: int = 0, flags: int = 0) -> bytes:
    return NDMSG.pack(family, ifindex, state, flags, 0)


def rtnexthop(ifindex: int, flags: int = 0, hops: int = 0, attrs: bytes = b"") -> bytes:
    """One nexthop of RTA_MULTIPATH (hops is the weight - 1)."""
    length = RTNEXTHOP.size + len(attrs)
    return RTNEXTHOP.pack(length, flags, hops, ifindex) + attrs + b"\0" * (-length % 4)


def nfgenmsg(family: int, res_id: int = 0) -> bytes:
    return NFGENMSG.pack(family, NFNETLINK_V0, res_id)


# --------------------------------------------------------------------------------------
# The socket
# --------------------------------------------------------------------------------------


class NetlinkSocket:
    """A netlink socket in the network namespace current at its creation. Not
    thread-safe: `connection()` hands out one per namespace and thread."""

    def __init__(
        self,
        protocol: int = NETLINK_ROUTE,
        sock: Any = None,
        layouts: Mapping[int, tuple[struct.Struct, tuple[str, ...], AttrTable]] | None = None,
    ) -> None:
        """`sock`: for tests, an object with send, recv_into and close instead of a
        netlink socket (then nothing is set up). `layouts`: how to decode the protocol's
        messages (default: rtnetlink's and nf_tables')."""
        self.protocol = protocol
        self.layouts = layouts
        self._seq = 0
        self._buf = bytearray(RECV_BUFFER)
        if sock is not None:
            self._sock = sock
            return
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
        )
        try:
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                with contextlib.suppress(OSError):  # an old kernel: full echoes, no text
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def send(self, msg_type: int, flags: int, payload: bytes) -> int:
        """Send one message; returns its sequence number."""
        self._seq = self._seq % 0xFFFFFFFF + 1
        self._sock.send(encode(msg_type, flags, self._seq, payload))
        return self._seq

    def replies(self, seq: int) -> tuple[list[Message], bool]:
        """The messages answering `seq` up to NLMSG_DONE or NLMSG_ERROR, and whether the
        kernel flagged the dump as interrupted. Replies to other (earlier) sequence numbers
        are skipped; an error raises NetlinkError."""
        out: list[Message] = []
        interrupted = False
        buf = self._buf
        while True:
            size = int(self._sock.recv_into(buf, len(buf), socket.MSG_TRUNC))
            if size > len(buf):
                raise NetlinkDecodeError(f"a netlink datagram of {size} bytes was truncated")
            for mtype, flags, mseq, offset, end in frames(buf, size):
                if mseq != seq:
                    continue  # a late reply to a request given up on
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_ERROR:
                    error = error_of(buf, offset, end, flags)
                    if error is not None:
                        raise error
                    return out, interrupted
                if mtype == NLMSG_DONE:
                    start = offset + NLMSGHDR.size
                    if end - start >= _I32.size:  # a dump that failed half-way
                        code = -int(_I32.unpack_from(buf, start)[0])
                        if code > 0:
                            raise NetlinkError(code)
                    return out, interrupted
                if mtype == NLMSG_OVERRUN:
                    raise NetlinkDecodeError("NLMSG_OVERRUN: the kernel lost data")
                if mtype == NLMSG_NOOP:
                    continue
                out.append(decode_message(buf, offset, end, self.layouts))

    def dump(self, msg_type: int, payload: bytes) -> list[Message]:
        """NLM_F_REQUEST|NLM_F_DUMP: every message of the multi-part answer. A dump the
        kernel flags as inconsistent (NLM_F_DUMP_INTR: the table changed meanwhile) is
        redone, DUMP_RETRIES times at most."""
        for _ in range(DUMP_RETRIES):
            found, interrupted = self.replies(
                self.send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, payload)
            )
            if not interrupted:
                break
        return found

    def request(self, msg_type: int, payload: bytes, flags: int = 0) -> list[Message]:
        """NLM_F_REQUEST|NLM_F_ACK (plus `flags`): the messages sent before the ACK (the
        answer of a get; none for a change). NetlinkError when refused."""
        return self.replies(self.send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, payload))[0]


RTMGRP_LINK = 0x1  # linux/rtnetlink.h: the link events' multicast group


class Subscription:
    """A non-blocking rtnetlink socket joined to multicast `groups` (RTMGRP_LINK): the
    kernel's events, read with `messages()` after the socket is readable. An overrun
    (the kernel dropped events: ENOBUFS) raises OSError; the caller starts over."""

    def __init__(self, groups: int, protocol: int = NETLINK_ROUTE) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            protocol,
        )  # fmt: skip
        try:
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray(RECV_BUFFER)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def messages(self) -> list[Message]:
        """Every event queued now (none when nothing is)."""
        out: list[Message] = []
        while True:
            try:
                size = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return out
            for mtype, _flags, _seq, offset, end in frames(self._buf, size):
                if mtype in LAYOUTS:
                    out.append(decode_message(self._buf, offset, end))


# --------------------------------------------------------------------------------------
# One socket per namespace and thread
# --------------------------------------------------------------------------------------

_SOCKETS: dict[int, dict[tuple[int, int], tuple[threading.Thread, NetlinkSocket]]] = {}
_LOCKS = {NETLINK_ROUTE: threading.RLock(), NETLINK_NETFILTER: threading.RLock()}


def netns_inode() -> int:
    """Identifies the network namespace of the calling thread (for per-namespace caches)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextmanager
def connection(
    protocol: int = NETLINK_ROUTE, *, before_open: Callable[[], None] | None = None
) -> Iterator[NetlinkSocket]:
    """The cached netlink socket of this namespace, thread and protocol; uses of one
    protocol are serialized (one lock per protocol, held for the block).

    A socket binds to the namespace current when it is created, so the cache is keyed by
    namespace inode and thread; the sockets of threads that have ended are closed when a
    new one is opened (a thread that joins a namespace for one call would otherwise keep
    the namespace alive). `before_open` runs before a new socket is opened. Any error but
    a refusal (NetlinkError, after which the socket is in step) drops the socket.
    """
    me = threading.current_thread()
    key = (netns_inode(), threading.get_ident())
    lock = _LOCKS.get(protocol)
    if lock is None:
        lock = _LOCKS.setdefault(protocol, threading.RLock())
    with lock:
        cache = _SOCKETS.setdefault(protocol, {})
        entry = cache.get(key)
        if entry is None or entry[0] is not me:
            _close_ended(cache)
            if before_open is not None:
                before_open()
            entry = cache[key] = (me, NetlinkSocket(protocol))
        nl = entry[1]
        try:
            yield nl
        except NetlinkError:
            raise
        except BaseException:
            cache.pop(key, None)
            nl.close()
            raise


def _close_ended(cache: dict[tuple[int, int], tuple[threading.Thread, NetlinkSocket]]) -> None:
    """Close the sockets of threads that have ended (the caller holds the lock); a new
    thread may also reuse an ended one's ident."""
    for key, (thread, nl) in list(cache.items()):
        if not thread.is_alive():
            del cache[key]
            nl.close()


def cached_sockets(protocol: int) -> int:
    """How many sockets of `protocol` the cache holds (for tests)."""
    return len(_SOCKETS.get(protocol, {}))


# --------------------------------------------------------------------------------------
# Generic netlink: the `netdev` family's XDP features of a device (kernel >= 6.3)
# --------------------------------------------------------------------------------------

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
GENLMSGHDR = struct.Struct("=BBH")
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
# include/uapi/linux/netdev.h (Linux >= 6.3: newer than Debian 12's linux-libc-dev), enum
# netdev_xdp_act and the netdev family's command and attributes
NETDEV_XDP_ACT_BASIC = 1  # XDP_PASS, XDP_DROP, XDP_ABORTED, XDP_TX in the driver
NETDEV_XDP_ACT_REDIRECT = 2  # XDP_REDIRECT from the driver's XDP program
NETDEV_XDP_ACT_NDO_XMIT = 4  # the device transmits frames other devices' XDP redirects to it

_U16 = struct.Struct("=H")
_U64 = struct.Struct("=Q")


def _u16(data: Buffer) -> int:
    return int(_U16.unpack_from(data)[0])


def _u64(data: Buffer) -> int:
    return int(_U64.unpack_from(data)[0])


CTRL_ATTRS: AttrTable = {
    CTRL_ATTR_FAMILY_ID: ("CTRL_ATTR_FAMILY_ID", _u16),
    CTRL_ATTR_FAMILY_NAME: ("CTRL_ATTR_FAMILY_NAME", _str),
}
NETDEV_ATTRS: AttrTable = {
    NETDEV_A_DEV_IFINDEX: ("NETDEV_A_DEV_IFINDEX", _u32),
    NETDEV_A_DEV_XDP_FEATURES: ("NETDEV_A_DEV_XDP_FEATURES", _u64),
}
_GENL_FIELDS = ("cmd", "version", "reserved")


def xdp_features(ifindexes: list[int]) -> dict[int, int] | None:
    """ifindex -> the device's NETDEV_XDP_ACT_* bits, in the current network namespace. None: the
    kernel has no `netdev` generic netlink family (before 6.3), so it cannot say."""
    layouts = {GENL_ID_CTRL: (GENLMSGHDR, _GENL_FIELDS, CTRL_ATTRS)}
    with NetlinkSocket(NETLINK_GENERIC, layouts=layouts) as sock:
        try:
            found = sock.request(
                GENL_ID_CTRL,
                GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0)
                + attr_str(CTRL_ATTR_FAMILY_NAME, "netdev"),
            )
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return None
            raise
        family = next((m.get_attr("CTRL_ATTR_FAMILY_ID") for m in found), None)
        if family is None:
            return None
        layouts[family] = (GENLMSGHDR, _GENL_FIELDS, NETDEV_ATTRS)
        out: dict[int, int] = {}
        for index in ifindexes:
            replies = sock.request(
                family,
                GENLMSGHDR.pack(NETDEV_CMD_DEV_GET, 1, 0) + attr_u32(NETDEV_A_DEV_IFINDEX, index),
            )
            for m in replies:
                out[index] = int(m.get_attr("NETDEV_A_DEV_XDP_FEATURES", 0))
        return out

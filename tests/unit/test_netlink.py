"""vipctl.host.netlink without a kernel: its numbers against the installed UAPI headers,
encoding and decoding of every message kind vipctl uses, the replies of a fake kernel
(multi-part dumps, acknowledgements, errors, interrupted dumps), truncated data, and the
per-thread socket cache."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.cheaders import header_values
from vipctl.host import netlink as nl
from vipctl.host.netlink import Message, NetlinkDecodeError, NetlinkError, NetlinkSocket


def nla(kind: int, payload: bytes) -> bytes:
    """struct nlattr + payload, padded (written out here, independent of netlink.attr)."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def nlmsg(msg_type: int, body: bytes, flags: int = 0, seq: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


# --------------------------------------------------------------------------- the numbers

HEADERS = (
    "sys/socket.h",  # SOL_NETLINK
    "linux/netlink.h",
    "linux/rtnetlink.h",
    "linux/if.h",
    "linux/if_link.h",
    "linux/if_addr.h",
    "linux/neighbour.h",
    "linux/netfilter.h",
    "linux/genetlink.h",
    "linux/netfilter/nfnetlink.h",
    "linux/netfilter/nf_tables.h",
    "linux/sched.h",
)
NOT_IN_THE_HEADERS = {"RECV_BUFFER", "DUMP_RETRIES", "NFTNL_UDATA_RULE_COMMENT"}  # libnftnl's
# linux/netdev.h (Linux >= 6.3) is newer than Debian 12's linux-libc-dev (6.1): checked
# against the kernel's include/uapi/linux/netdev.h by hand, and by tests/kernel/test_xdp.py
# (the doctor reads 0x23 = BASIC | REDIRECT | RX_SG from a veth without XDP on its peer)
NETDEV_H = {
    "NETDEV_CMD_DEV_GET": 1,
    "NETDEV_A_DEV_IFINDEX": 1,
    "NETDEV_A_DEV_XDP_FEATURES": 3,
    "NETDEV_XDP_ACT_BASIC": 1,
    "NETDEV_XDP_ACT_REDIRECT": 2,
    "NETDEV_XDP_ACT_NDO_XMIT": 4,
}
NOT_IN_THE_HEADERS |= set(NETDEV_H)
LAYOUT = {
    "sizeof(struct nlmsghdr)": nl.NLMSGHDR.size,
    "sizeof(struct nlattr)": nl.NLATTR.size,
    "sizeof(struct nlmsgerr)": 4 + nl.NLMSGHDR.size,
    "sizeof(struct ifinfomsg)": nl.IFINFOMSG.size,
    "offsetof(struct ifinfomsg, ifi_type)": 2,
    "offsetof(struct ifinfomsg, ifi_index)": 4,
    "offsetof(struct ifinfomsg, ifi_flags)": 8,
    "offsetof(struct ifinfomsg, ifi_change)": 12,
    "sizeof(struct ifaddrmsg)": nl.IFADDRMSG.size,
    "offsetof(struct ifaddrmsg, ifa_prefixlen)": 1,
    "offsetof(struct ifaddrmsg, ifa_flags)": 2,
    "offsetof(struct ifaddrmsg, ifa_index)": 4,
    "sizeof(struct rtmsg)": nl.RTMSG.size,
    "offsetof(struct rtmsg, rtm_table)": 4,
    "offsetof(struct rtmsg, rtm_protocol)": 5,
    "offsetof(struct rtmsg, rtm_scope)": 6,
    "offsetof(struct rtmsg, rtm_type)": 7,
    "offsetof(struct rtmsg, rtm_flags)": 8,
    "sizeof(struct ndmsg)": nl.NDMSG.size,
    "offsetof(struct ndmsg, ndm_ifindex)": 4,
    "offsetof(struct ndmsg, ndm_state)": 8,
    "offsetof(struct ndmsg, ndm_flags)": 10,
    "offsetof(struct ndmsg, ndm_type)": 11,
    "sizeof(struct rtnexthop)": nl.RTNEXTHOP.size,
    "offsetof(struct rtnexthop, rtnh_ifindex)": 4,
    "sizeof(struct nfgenmsg)": nl.NFGENMSG.size,
    "offsetof(struct nfgenmsg, res_id)": 2,
}


def uapi_numbers() -> dict[str, int]:
    """Every upper-case integer of the module: each is a macro or enum member of a header."""
    return {
        name: value
        for name, value in vars(nl).items()
        if name.isupper() and isinstance(value, int) and name not in NOT_IN_THE_HEADERS
    }


def test_netdev_numbers_are_the_kernels() -> None:
    assert {n: getattr(nl, n) for n in NETDEV_H} == NETDEV_H


def test_numbers_are_the_installed_headers(tmp_path: Path) -> None:
    ours = uapi_numbers()
    assert len(ours) > 80
    kernel = header_values(
        tmp_path, HEADERS, [*sorted(ours), *LAYOUT], needs="linux/netfilter/nf_tables.h"
    )
    kernel["NLA_TYPE_MASK"] &= 0xFFFF  # ~(...) is a negative int in C
    assert {n: (v, kernel[n]) for n, v in ours.items() if v != kernel[n]} == {}
    assert {e: (v, kernel[e]) for e, v in LAYOUT.items() if v != kernel[e]} == {}


# --------------------------------------------------------------------------- encoders


def test_encoders_write_the_header_layouts() -> None:
    assert nl.encode(18, 0x301, 7, b"\1\2\3") == struct.pack("=IHHII", 19, 18, 0x301, 7, 0) + (
        b"\1\2\3\0"
    )
    assert nl.attr(3, b"abcde") == b"\x09\x00\x03\x00abcde\0\0\0"
    assert nl.attr_str(3, "m1") == nla(3, b"m1\0")
    assert nl.attr_u8(12, 211) == nla(12, b"\xd3")
    assert nl.attr_u32(6, 4211) == nla(6, struct.pack("=I", 4211))
    assert nl.attr_be32(3, 0x48) == nla(3, b"\0\0\0\x48")
    assert nl.attr_ip(1, "2001:db8::1") == nla(1, socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
    assert nl.ifinfomsg(index=7, flags=1, change=1) == struct.pack("=BxHiII", 0, 0, 7, 1, 1)
    assert nl.ifaddrmsg(10, 128, 2, 0, 1) == bytes([10, 128, 2, 0]) + struct.pack("=I", 1)
    assert nl.rtmsg(2, dst_len=32, table=254, proto=211, scope=255, type=1) == bytes(
        [2, 32, 0, 0, 254, 211, 255, 1, 0, 0, 0, 0]
    )
    assert nl.ndmsg(10, 3, state=0x80, flags=8) == struct.pack("=BxxxiHBB", 10, 3, 0x80, 8, 0)
    assert nl.rtnexthop(5) == struct.pack("=HBBi", 8, 0, 0, 5)
    assert nl.nfgenmsg(5, res_id=0x0102) == b"\x05\x00\x01\x02"  # res_id in network order
    with pytest.raises(ValueError, match="not an IP address"):
        nl.packed_ip("198.51.100.999")


# --------------------------------------------------------------------------- round trips


def test_link_round_trip_skips_what_vipctl_does_not_use() -> None:
    body = nl.ifinfomsg(index=5, flags=0x11043)
    body += nl.attr_str(nl.IFLA_IFNAME, "m1") + nl.attr_u32(nl.IFLA_MTU, 1500)
    body += nl.attr(nl.NLA_F_NESTED | 26, nl.attr_u32(1, 0))  # IFLA_AF_SPEC: skipped
    msg = nl.decode_message(nl.encode(nl.RTM_NEWLINK, nl.NLM_F_MULTI, 9, body))
    assert (msg.type, msg.flags, msg.seq) == (nl.RTM_NEWLINK, nl.NLM_F_MULTI, 9)
    assert (msg["index"], msg["flags"], msg["family"]) == (5, 0x11043, 0)
    assert msg.attrs == {"IFLA_IFNAME": "m1", "IFLA_MTU": 1500}
    assert msg.get_attr("IFLA_ADDRESS") is None and msg.get_attr("IFLA_QDISC", "x") == "x"
    with pytest.raises(KeyError):
        msg["nothing"]


def test_address_route_neighbour_round_trips() -> None:
    body = nl.ifaddrmsg(socket.AF_INET, 29, 0x80, 0, 5)
    body += nl.attr_ip(nl.IFA_ADDRESS, "198.51.100.9") + nl.attr_ip(nl.IFA_LOCAL, "198.51.100.9")
    body += nl.attr_str(nl.IFA_LABEL, "m1") + nl.attr_u32(nl.IFA_FLAGS, 0x80)
    a = nl.decode_message(nl.encode(nl.RTM_NEWADDR, 0, 1, body))
    assert (a["family"], a["prefixlen"], a["flags"], a["index"]) == (2, 29, 0x80, 5)
    assert a.attrs == {
        "IFA_ADDRESS": "198.51.100.9",
        "IFA_LOCAL": "198.51.100.9",
        "IFA_LABEL": "m1",
        "IFA_FLAGS": 0x80,
    }

    hops = nl.rtnexthop(5) + nl.rtnexthop(7, hops=2, attrs=nl.attr_ip(nl.RTA_GATEWAY, "fe80::1"))
    body = nl.rtmsg(socket.AF_INET6, dst_len=64, table=252, proto=4, type=1)
    body += nl.attr_ip(nl.RTA_DST, "2001:DB8:F::") + nl.attr_u32(nl.RTA_TABLE, 1000)
    body += nl.attr_u32(nl.RTA_PRIORITY, 1024) + nl.attr(nl.RTA_MULTIPATH, hops)
    r = nl.decode_message(nl.encode(nl.RTM_NEWROUTE, 0, 1, body))
    assert (r["family"], r["dst_len"], r["table"], r["proto"], r["type"]) == (10, 64, 252, 4, 1)
    assert r.get_attr("RTA_DST") == "2001:db8:f::" and r.get_attr("RTA_TABLE") == 1000
    one, two = r.get_attr("RTA_MULTIPATH")
    assert (one["oif"], one["hops"], one.get_attr("RTA_GATEWAY")) == (5, 0, None)
    assert (two["oif"], two["hops"], two.get_attr("RTA_GATEWAY")) == (7, 2, "fe80::1")

    body = nl.ndmsg(socket.AF_INET, 3, state=0x04)
    body += nl.attr_ip(nl.NDA_DST, "203.0.113.2") + nl.attr(nl.NDA_LLADDR, bytes.fromhex("02AB"))
    body += nl.attr_u8(nl.NDA_PROTOCOL, 211)
    n = nl.decode_message(nl.encode(nl.RTM_NEWNEIGH, 0, 1, body))
    assert (n["ifindex"], n["state"], n["flags"]) == (3, 4, 0)
    assert n.attrs == {"NDA_DST": "203.0.113.2", "NDA_LLADDR": "02:ab", "NDA_PROTOCOL": 211}


def test_nftables_round_trips_big_endian() -> None:
    family = nl.nfgenmsg(nl.NFPROTO_NETDEV)
    table = nl.decode_message(
        nl.encode(
            nl.nft_type(nl.NFT_MSG_NEWTABLE),
            nl.NLM_F_MULTI,
            3,
            family + nl.attr_str(nl.NFTA_TABLE_NAME, "vipctl_web") + nl.attr_be32(2, 0),
        )
    )
    assert table["nfgen_family"] == 5 and table.get_attr("NFTA_TABLE_NAME") == "vipctl_web"
    chain = nl.decode_message(
        nl.encode(
            nl.nft_type(nl.NFT_MSG_NEWCHAIN),
            0,
            3,
            family
            + nl.attr_str(nl.NFTA_CHAIN_TABLE, "vipctl_web")
            + nl.attr(2, struct.pack(">Q", 7))  # NFTA_CHAIN_HANDLE: skipped
            + nl.attr_str(nl.NFTA_CHAIN_NAME, "in_up0"),
        )
    )
    assert chain.attrs == {"NFTA_CHAIN_TABLE": "vipctl_web", "NFTA_CHAIN_NAME": "in_up0"}

    def set_flags(flags: bytes) -> Any:
        body = family + nl.attr_str(nl.NFTA_SET_NAME, "owners4") + nl.attr(nl.NFTA_SET_FLAGS, flags)
        return nl.decode_message(nl.encode(nl.nft_type(nl.NFT_MSG_NEWSET), 0, 3, body)).get_attr(
            "NFTA_SET_FLAGS"
        )

    assert set_flags(struct.pack(">I", 0x8 | 0x10 | 0x20)) == {
        "NFT_SET_MAP",
        "NFT_SET_TIMEOUT",
        "NFT_SET_EVAL",
    }
    assert set_flags(struct.pack(">I", 0x1 | 0x2 | 0x4)) == {
        "NFT_SET_ANONYMOUS",
        "NFT_SET_CONSTANT",
        "NFT_SET_INTERVAL",
    }
    assert set_flags(struct.pack(">I", 0x40 | 0x80 | 0x100)) == {
        "NFT_SET_OBJECT",
        "NFT_SET_CONCAT",
        "NFT_SET_EXPR",
    }
    assert set_flags(struct.pack("<I", 0x8)) == frozenset()  # host order would be wrong
    with pytest.raises(NetlinkDecodeError, match="NFTA_SET_FLAGS"):
        set_flags(b"\0\0\x08")

    udata = bytes([1, 2, 0xAA, 0xBB]) + bytes([0, 20]) + b"vipctl generation 7\0"
    rule = nl.decode_message(
        nl.encode(
            nl.nft_type(nl.NFT_MSG_NEWRULE),
            0,
            3,
            family
            + nl.attr_str(nl.NFTA_RULE_TABLE, "vipctl_web")
            + nl.attr_str(nl.NFTA_RULE_CHAIN, "in_up0")
            + nl.attr(nl.NLA_F_NESTED | 4, nl.attr(nl.NLA_F_NESTED | 1, b""))  # expressions
            + nl.attr(nl.NFTA_RULE_USERDATA, udata),
        )
    )
    assert rule.attrs == {
        "NFTA_RULE_TABLE": "vipctl_web",
        "NFTA_RULE_CHAIN": "in_up0",
        "NFTA_RULE_USERDATA": "vipctl generation 7",
    }


@pytest.mark.parametrize(
    "udata, comment",
    [
        (b"", None),
        (bytes([0, 4]) + b"abc\0", "abc"),
        (bytes([0, 3]) + b"abc", "abc"),  # not NUL-terminated: taken whole
        (bytes([1, 1, 0]) + bytes([0, 3]) + b"hi\0", "hi"),  # after another record
        (bytes([0, 3]) + b"hi\0" + bytes([1, 0]), "hi"),  # before one
        (bytes([1, 4]) + b"abc\0", None),  # an ebtables policy, no comment
        (bytes([0, 0]), ""),
    ],
)
def test_rule_comment_records(udata: bytes, comment: str | None) -> None:
    assert nl.rule_comment(udata) == comment


@pytest.mark.parametrize("udata", [b"\0", bytes([0, 5]) + b"abc", bytes([0, 3]) + b"hi\0" + b"\1"])
def test_truncated_rule_userdata_is_a_decode_error(udata: bytes) -> None:
    with pytest.raises(NetlinkDecodeError, match="userdata"):
        nl.rule_comment(udata)


# --------------------------------------------------------------------------- bad data


def samples() -> list[bytes]:
    hops = nl.rtnexthop(5) + nl.rtnexthop(7, attrs=nl.attr_ip(nl.RTA_GATEWAY, "192.0.2.1"))
    return [
        nl.encode(
            nl.RTM_NEWLINK,
            0,
            1,
            nl.ifinfomsg(index=1) + nl.attr_str(nl.IFLA_IFNAME, "lo") + nl.attr_u32(4, 65536),
        ),
        nl.encode(
            nl.RTM_NEWROUTE,
            0,
            1,
            nl.rtmsg(2, 32) + nl.attr_ip(nl.RTA_DST, "192.0.2.9") + nl.attr(nl.RTA_MULTIPATH, hops),
        ),
        nl.encode(
            nl.nft_type(nl.NFT_MSG_NEWRULE),
            0,
            1,
            nl.nfgenmsg(5)
            + nl.attr_str(nl.NFTA_RULE_TABLE, "t")
            + nl.attr(nl.NFTA_RULE_USERDATA, bytes([0, 2]) + b"x\0"),
        ),
    ]


@pytest.mark.parametrize("data", samples())
def test_truncated_messages_are_decode_errors(data: bytes) -> None:
    for cut in range(1, len(data)):
        with pytest.raises(NetlinkDecodeError):  # nlmsg_len says more than there is
            nl.decode_message(data[:cut])
        with pytest.raises(NetlinkDecodeError):
            list(nl.frames(data[:cut]))
        # nlmsg_len patched to the cut: either whole attributes are left, or an error
        patched = bytearray(data[:cut])
        if cut >= 4:
            struct.pack_into("=I", patched, 0, cut)
        with contextlib.suppress(NetlinkDecodeError):
            nl.decode_message(patched)


@pytest.mark.parametrize(
    "msg_type, body, words",
    [
        (nl.RTM_NEWLINK, nl.ifinfomsg() + nl.attr(nl.IFLA_MTU, b"\1\2"), "IFLA_MTU"),
        (nl.RTM_NEWADDR, nl.ifaddrmsg(2) + nl.attr(nl.IFA_LOCAL, b"\1\2\3\4\5"), "IFA_LOCAL"),
        (nl.RTM_NEWNEIGH, nl.ndmsg(2) + nl.attr(nl.NDA_PROTOCOL, b"\0\0"), "NDA_PROTOCOL"),
        (nl.RTM_NEWROUTE, nl.rtmsg(2) + nl.attr(nl.RTA_MULTIPATH, b"\x08\0\0\0"), "rtnexthop"),
        (nl.RTM_NEWROUTE, nl.rtmsg(2) + nl.attr(nl.RTA_MULTIPATH, b"\x20\0\0\0\0\0\0\0"), "fit"),
        (nl.RTM_NEWROUTE, nl.rtmsg(2)[:8], "truncated header"),
        (nl.RTM_NEWLINK, nl.ifinfomsg() + struct.pack("=HH", 2, 3), "length 2"),
        (nl.RTM_NEWLINK, nl.ifinfomsg() + b"\1\2", "truncated attribute"),
    ],
)
def test_malformed_attributes_are_decode_errors(msg_type: int, body: bytes, words: str) -> None:
    with pytest.raises(NetlinkDecodeError, match=words):
        nl.decode_message(nlmsg(msg_type, body))


@given(st.binary(max_size=200), st.sampled_from(sorted(nl.LAYOUTS)))
def test_garbage_never_escapes_as_another_exception(data: bytes, msg_type: int) -> None:
    for blob in (data, nlmsg(msg_type, data)):
        try:
            for _t, _f, _s, offset, end in nl.frames(blob):
                nl.decode_message(blob, offset, end)
        except NetlinkDecodeError:
            pass


def test_several_messages_in_one_datagram() -> None:
    one = nl.encode(nl.RTM_NEWLINK, 2, 4, nl.ifinfomsg(index=1) + nl.attr_str(3, "lo"))
    two = nl.encode(nl.NLMSG_DONE, 2, 4, struct.pack("=i", 0))
    assert [f[:3] for f in nl.frames(one + two)] == [(nl.RTM_NEWLINK, 2, 4), (nl.NLMSG_DONE, 2, 4)]
    assert nl.decode_message(one + two).get_attr("IFLA_IFNAME") == "lo"  # the first only


# --------------------------------------------------------------------------- the socket


class FakeKernel:
    """Stands in for the netlink socket: each request is answered by `answer(type, flags,
    seq, payload)` with a list of datagrams (each a list of messages)."""

    def __init__(self, answer: Callable[[int, int, int, bytes], list[list[bytes]]]) -> None:
        self.answer = answer
        self.sent: list[tuple[int, int, int, bytes]] = []
        self.queue: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> int:
        length, msg_type, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        assert length == len(data) - (-length % 4)
        self.sent.append((msg_type, flags, seq, data[16:length]))
        self.queue += [b"".join(d) for d in self.answer(msg_type, flags, seq, data[16:length])]
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int) -> int:
        data = self.queue.pop(0)
        got = data[:nbytes]
        buf[: len(got)] = got
        return len(data) if flags & socket.MSG_TRUNC else len(got)

    def close(self) -> None:
        self.closed = True


def link_msg(index: int, name: str, seq: int, flags: int = nl.NLM_F_MULTI) -> bytes:
    body = nl.ifinfomsg(index=index) + nl.attr_str(nl.IFLA_IFNAME, name)
    return nl.encode(nl.RTM_NEWLINK, flags, seq, body)


def done(seq: int, code: int = 0) -> bytes:
    return nl.encode(nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, struct.pack("=i", code))


def error(seq: int, code: int, text: str = "") -> bytes:
    """NLMSG_ERROR as with NETLINK_CAP_ACK: errno, the request's header, then TLVs."""
    body = struct.pack("=i", -code) + struct.pack("=IHHII", 32, 18, 5, seq, 0)
    flags = nl.NLM_F_CAPPED
    if text:
        body += nla(nl.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
        flags |= nl.NLM_F_ACK_TLVS
    return nl.encode(nl.NLMSG_ERROR, flags, seq, body)


def names(found: list[Message]) -> list[str]:
    return [m.get_attr("IFLA_IFNAME") for m in found]


def test_a_dump_in_several_parts_until_done() -> None:
    def answer(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        stale = link_msg(9, "old", seq - 1)  # a late reply to an earlier request: skipped
        return [
            [stale, link_msg(1, "lo", seq), link_msg(2, "up0", seq)],
            [link_msg(3, "m1", seq)],
            [done(seq)],
        ]

    kernel = FakeKernel(answer)
    sock = NetlinkSocket(sock=kernel)
    assert names(sock.dump(nl.RTM_GETLINK, nl.ifinfomsg())) == ["lo", "up0", "m1"]
    assert names(sock.dump(nl.RTM_GETLINK, nl.ifinfomsg())) == ["lo", "up0", "m1"]
    (t1, f1, s1, p1), (_t, _f, s2, _p) = kernel.sent
    assert (t1, f1, p1) == (nl.RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, nl.ifinfomsg())
    assert s2 == s1 + 1


def test_errors_acks_and_answers() -> None:
    def answer(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        if t == nl.RTM_DELADDR:
            return [[error(seq, errno.EADDRNOTAVAIL, "no such address")]]
        if t == nl.RTM_GETNEIGH:
            return [[link_msg(5, "reply", seq, 0)], [error(seq, 0)]]  # a get: answer, then ACK
        if t == nl.RTM_GETROUTE:
            return [[link_msg(1, "lo", seq), error(seq, errno.EPERM)]]  # a dump refused
        if t == nl.RTM_GETADDR:
            return [[link_msg(1, "lo", seq)], [done(seq, -errno.EMSGSIZE)]]  # failed half-way
        return [[error(seq, 0)]]

    sock = NetlinkSocket(sock=FakeKernel(answer))
    assert sock.request(nl.RTM_NEWADDR, b"", nl.NLM_F_CREATE) == []
    with pytest.raises(NetlinkError) as refused:
        sock.request(nl.RTM_DELADDR, b"")
    assert refused.value.code == errno.EADDRNOTAVAIL and refused.value.message == "no such address"
    assert names(sock.request(nl.RTM_GETNEIGH, b"")) == ["reply"]
    with pytest.raises(NetlinkError) as dump_refused:
        sock.dump(nl.RTM_GETROUTE, b"")
    assert dump_refused.value.code == errno.EPERM and dump_refused.value.message == ""
    with pytest.raises(NetlinkError) as half:
        sock.dump(nl.RTM_GETADDR, b"")
    assert half.value.code == errno.EMSGSIZE
    assert isinstance(NetlinkError(errno.ENOENT), Exception)
    assert "No such file" in str(NetlinkError(errno.ENOENT))


def test_an_interrupted_dump_is_redone() -> None:
    rounds: list[int] = []

    def answer(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        rounds.append(seq)
        flags = nl.NLM_F_MULTI | (nl.NLM_F_DUMP_INTR if len(rounds) == 1 else 0)
        return [[link_msg(1, f"try{len(rounds)}", seq, flags), done(seq)]]

    assert names(NetlinkSocket(sock=FakeKernel(answer)).dump(nl.RTM_GETLINK, b"")) == ["try2"]
    assert len(rounds) == 2

    def always(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        rounds.append(seq)
        flags = nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR
        return [[link_msg(1, "x", seq, flags), done(seq)]]

    rounds.clear()
    assert names(NetlinkSocket(sock=FakeKernel(always)).dump(nl.RTM_GETLINK, b"")) == ["x"]
    assert len(rounds) == nl.DUMP_RETRIES


def test_bad_datagrams_are_decode_errors() -> None:
    def answer(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        if t == nl.RTM_GETLINK:  # longer than the receive buffer
            return [[link_msg(1, "x" * 1000, seq)] * (nl.RECV_BUFFER // 1000 + 1)]
        if t == nl.RTM_GETADDR:
            return [[nl.encode(nl.NLMSG_OVERRUN, 0, seq, b"")]]
        if t == nl.RTM_GETROUTE:
            return [[link_msg(1, "lo", seq)[:-3]]]
        return [[nl.encode(nl.NLMSG_ERROR, 0, seq, b"\0\0")]]

    sock = NetlinkSocket(sock=FakeKernel(answer))
    for msg_type, words in [
        (nl.RTM_GETLINK, "truncated"),
        (nl.RTM_GETADDR, "OVERRUN"),
        (nl.RTM_GETROUTE, "length"),
        (nl.RTM_GETNEIGH, "NLMSG_ERROR"),
    ]:
        with pytest.raises(NetlinkDecodeError, match=words):
            sock.dump(msg_type, b"")


# --------------------------------------------------------------------------- the cache


@pytest.fixture
def fake_sockets(monkeypatch: pytest.MonkeyPatch) -> list[FakeKernel]:
    made: list[FakeKernel] = []

    def factory(protocol: int) -> NetlinkSocket:
        kernel = FakeKernel(lambda t, f, seq, p: [[error(seq, 0)]])
        made.append(kernel)
        return NetlinkSocket(protocol, sock=kernel)

    monkeypatch.setattr(nl, "NetlinkSocket", factory)
    monkeypatch.setattr(nl, "_SOCKETS", {})
    return made


def test_one_socket_per_thread_and_protocol(fake_sockets: list[FakeKernel]) -> None:
    with nl.connection() as a, nl.connection() as nested:
        assert a is nested  # the same thread may nest (one lock per protocol, re-entrant)
    with nl.connection() as b:
        assert b is a
    with nl.connection(nl.NETLINK_NETFILTER) as f:
        assert f is not a
    seen: list[Any] = []

    def other() -> None:
        with nl.connection() as c:
            seen.append(c)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen[0] is not a and len(fake_sockets) == 3
    assert nl.cached_sockets(nl.NETLINK_ROUTE) == 2
    # the ended thread's socket is closed when the next one is opened
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert fake_sockets[2].closed and not fake_sockets[0].closed
    assert nl.cached_sockets(nl.NETLINK_ROUTE) == 2


def test_a_refusal_keeps_the_socket_other_errors_drop_it(fake_sockets: list[FakeKernel]) -> None:
    opened: list[int] = []
    with nl.connection(before_open=lambda: opened.append(1)) as a:
        pass
    with pytest.raises(NetlinkError), nl.connection(before_open=lambda: opened.append(1)):
        raise NetlinkError(errno.EPERM)
    with nl.connection() as b:
        assert b is a and opened == [1]
    for exc in (OSError(errno.ENOBUFS, "No buffer space"), NetlinkDecodeError("x"), KeyError(1)):
        with pytest.raises(type(exc)), nl.connection():
            raise exc
        assert fake_sockets[-1].closed
    with nl.connection() as c:
        assert c is not a and len(fake_sockets) == 4


def test_a_failing_check_opens_nothing(fake_sockets: list[FakeKernel]) -> None:
    def refuse() -> None:
        raise RuntimeError("no nf_tables")

    with pytest.raises(RuntimeError, match="no nf_tables"), nl.connection(12, before_open=refuse):
        pass  # pragma: no cover
    assert fake_sockets == [] and nl.cached_sockets(12) == 0


# --------------------------------------------------------------------------- nft over it


def test_observe_structure_over_fake_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables, chains, sets and rules of other tables are left out; anonymous sets too;
    an object map counts as a map; the generation comes from the rule comment. A table
    that goes away between the dumps (ENOENT) is not installed."""
    from vipctl.backends import nft
    from vipctl.errors import KernelError

    def msg(kind: int, **attrs: Any) -> Message:
        return Message(nl.nft_type(kind), {"nfgen_family": 5}, attrs)

    dumps = {
        nl.NFT_MSG_GETTABLE: [
            msg(0, NFTA_TABLE_NAME="vipctl_other"),
            msg(0, NFTA_TABLE_NAME="vipctl_web"),
        ],
        nl.NFT_MSG_GETCHAIN: [
            msg(3, NFTA_CHAIN_TABLE="vipctl_web", NFTA_CHAIN_NAME="in_up0"),
            msg(3, NFTA_CHAIN_TABLE="vipctl_other", NFTA_CHAIN_NAME="elsewhere"),
        ],
        nl.NFT_MSG_GETSET: [
            msg(
                9,
                NFTA_SET_TABLE="vipctl_web",
                NFTA_SET_NAME="owners4",
                NFTA_SET_FLAGS={"NFT_SET_MAP"},
            ),
            msg(
                9,
                NFTA_SET_TABLE="vipctl_web",
                NFTA_SET_NAME="cmap",
                NFTA_SET_FLAGS={"NFT_SET_OBJECT"},
            ),
            msg(
                9,
                NFTA_SET_TABLE="vipctl_web",
                NFTA_SET_NAME="seen",
                NFTA_SET_FLAGS={"NFT_SET_TIMEOUT"},
            ),
            msg(9, NFTA_SET_TABLE="vipctl_web", NFTA_SET_NAME="plain"),
            msg(
                9,
                NFTA_SET_TABLE="vipctl_web",
                NFTA_SET_NAME="__set0",
                NFTA_SET_FLAGS={"NFT_SET_ANONYMOUS", "NFT_SET_CONSTANT"},
            ),
            msg(9, NFTA_SET_TABLE="vipctl_other", NFTA_SET_NAME="x"),
        ],
        nl.NFT_MSG_GETRULE: [
            msg(6, NFTA_RULE_TABLE="vipctl_web"),
            msg(6, NFTA_RULE_TABLE="vipctl_web", NFTA_RULE_USERDATA="vipctl generation 12"),
            msg(6, NFTA_RULE_TABLE="vipctl_web", NFTA_RULE_USERDATA="an operator's note"),
            msg(6, NFTA_RULE_TABLE="vipctl_other", NFTA_RULE_USERDATA="vipctl generation 99"),
        ],
    }
    requests: list[tuple[int, bytes]] = []
    refuse: list[BaseException] = []

    class Fake:
        def dump(self, msg_type: int, payload: bytes) -> list[Message]:
            requests.append((msg_type, payload))
            if refuse and msg_type == nl.nft_type(nl.NFT_MSG_GETSET):
                raise refuse[0]
            return dumps[msg_type & 0xFF]

    @contextlib.contextmanager
    def fake() -> Any:
        yield Fake()

    monkeypatch.setattr(nft, "_nftables_netlink", fake)
    live = nft.observe_structure("web")
    assert live is not None and live.generation == 12
    assert live.observed.chains == {"in_up0"}
    assert live.observed.maps == {"owners4", "cmap"}
    assert live.observed.sets == {"seen", "plain"}
    family = nl.nfgenmsg(nl.NFPROTO_NETDEV)
    assert [t & 0xFF for t, _p in requests] == [1, 4, 10, 7]
    assert requests[2][1] == family + nla(nl.NFTA_SET_TABLE, b"vipctl_web\0")
    assert requests[3][1] == family + nla(nl.NFTA_RULE_TABLE, b"vipctl_web\0")
    assert nft.observe_structure("nothing") is None
    refuse.append(NetlinkError(errno.ENOENT))
    assert nft.observe_structure("web") is None
    refuse[0] = NetlinkError(errno.EPERM)
    with pytest.raises(KernelError, match=r"cannot read the nftables table vipctl_web: .*EPERM"):
        nft.observe_structure("web")
    refuse[0] = NetlinkDecodeError("NFTA_SET_FLAGS: bad")
    with pytest.raises(KernelError, match="NFTA_SET_FLAGS: bad"):
        nft.observe_structure("web")

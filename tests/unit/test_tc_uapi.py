"""The u32, pedit, mirred and gact encoding of vipctl/backends/tcnl.py checked against the
Linux UAPI headers, not against vipctl's own decoder.

Every number below is transcribed from the headers (as installed by linux-libc-dev, 6.1, at
/usr/include/linux; the same in 6.18) with the header and field named next to it. The
expected bytes are built from those numbers and the headers' struct layouts, field by field,
and compared with what `tcnl.filter_bytes` sends. Where the kernel's semantics are simple
(u32 key matching, pedit munging), the test also applies the encoded keys to a packet the way
the kernel does and checks the result.

`test_numbers_are_the_installed_headers` compiles a C program against the installed headers
and checks every number and struct layout used here, and every number and struct tcnl (and
host/netlink.py for tc) declares (flower included), against the compiler's answer. It is
skipped without a C compiler or the headers (`apt-get install linux-libc-dev gcc`).
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Literal

from tests.unit.cheaders import header_values
from vipctl.backends import tcnl
from vipctl.host import netlink as nl
from vipctl.render.tc import Gact, Match, Mirred, SetEthDst, TcFilter

# --- linux/netlink.h --------------------------------------------------------------------
NLA_F_NESTED = 1 << 15  # #define NLA_F_NESTED (1 << 15)
NLA_F_NET_BYTEORDER = 1 << 14  # #define NLA_F_NET_BYTEORDER (1 << 14)
NLA_ALIGNTO = 4  # #define NLA_ALIGNTO 4
# struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq;
#                   __u32 nlmsg_pid; }
NLMSGHDR = struct.Struct("=IHHII")
# struct nlattr { __u16 nla_len; __u16 nla_type; }
NLATTR = struct.Struct("=HH")

# --- linux/rtnetlink.h ------------------------------------------------------------------
RTM_NEWTFILTER = 44  # enum { ... RTM_NEWTFILTER = 44, ... }
# struct tcmsg { unsigned char tcm_family; unsigned char tcm__pad1; unsigned short tcm__pad2;
#                int tcm_ifindex; __u32 tcm_handle; __u32 tcm_parent; __u32 tcm_info; }
TCMSG = struct.Struct("=BBHiIII")
# enum { TCA_UNSPEC, TCA_KIND, TCA_OPTIONS, ... TCA_PAD, TCA_DUMP_INVISIBLE, TCA_CHAIN, ... }
TCA_KIND, TCA_OPTIONS, TCA_CHAIN = 1, 2, 11

# --- linux/pkt_sched.h ------------------------------------------------------------------
TC_H_MAJ_MASK = 0xFFFF0000  # #define TC_H_MAJ_MASK (0xFFFF0000U)
TC_H_MIN_MASK = 0x0000FFFF  # #define TC_H_MIN_MASK (0x0000FFFFU)
TC_H_CLSACT = 0xFFFFFFF1  # #define TC_H_CLSACT TC_H_INGRESS, TC_H_INGRESS (0xFFFFFFF1U)
TC_H_MIN_INGRESS = 0xFFF2  # #define TC_H_MIN_INGRESS 0xFFF2U
TC_H_MIN_EGRESS = 0xFFF3  # #define TC_H_MIN_EGRESS 0xFFF3U


def tc_h_make(major: int, minor: int) -> int:
    # #define TC_H_MAKE(maj,min) (((maj)&TC_H_MAJ_MASK)|((min)&TC_H_MIN_MASK))
    return (major & TC_H_MAJ_MASK) | (minor & TC_H_MIN_MASK)


# --- linux/pkt_cls.h --------------------------------------------------------------------
# enum { TCA_ACT_UNSPEC, TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_INDEX, TCA_ACT_STATS,
#        TCA_ACT_PAD, TCA_ACT_COOKIE, ... }
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_COOKIE = 1, 2, 6
TC_ACT_OK = 0  # #define TC_ACT_OK 0
TC_ACT_SHOT = 2  # #define TC_ACT_SHOT 2
TC_ACT_PIPE = 3  # #define TC_ACT_PIPE 3
TC_ACT_STOLEN = 4  # #define TC_ACT_STOLEN 4
# #define __TC_ACT_EXT_SHIFT 28, #define __TC_ACT_EXT(local) ((local) << __TC_ACT_EXT_SHIFT)
# #define TC_ACT_GOTO_CHAIN __TC_ACT_EXT(2)
TC_ACT_GOTO_CHAIN = 0x20000000
TC_ACT_EXT_VAL_MASK = (1 << 28) - 1  # #define TC_ACT_EXT_VAL_MASK ((1 << __TC_ACT_EXT_SHIFT) - 1)
TCA_CLS_FLAGS_SKIP_HW = 1 << 0  # #define TCA_CLS_FLAGS_SKIP_HW (1 << 0)
# enum { TCA_U32_UNSPEC, TCA_U32_CLASSID, TCA_U32_HASH, TCA_U32_LINK, TCA_U32_DIVISOR,
#        TCA_U32_SEL, TCA_U32_POLICE, TCA_U32_ACT, TCA_U32_INDEV, TCA_U32_PCNT, TCA_U32_MARK,
#        TCA_U32_FLAGS, TCA_U32_PAD, ... }
TCA_U32_SEL, TCA_U32_ACT, TCA_U32_FLAGS = 5, 7, 11
TC_U32_TERMINAL = 1  # #define TC_U32_TERMINAL 1
TC_COOKIE_MAX_SIZE = 16  # #define TC_COOKIE_MAX_SIZE 16

# --- linux/tc_act/tc_gact.h, tc_mirred.h, tc_pedit.h ------------------------------------
TCA_GACT_PARMS = 2  # enum { TCA_GACT_UNSPEC, TCA_GACT_TM, TCA_GACT_PARMS, ... }
TCA_MIRRED_PARMS = 2  # enum { TCA_MIRRED_UNSPEC, TCA_MIRRED_TM, TCA_MIRRED_PARMS, ... }
TCA_EGRESS_REDIR = 1  # #define TCA_EGRESS_REDIR 1
TCA_EGRESS_MIRROR = 2  # #define TCA_EGRESS_MIRROR 2
# enum { TCA_PEDIT_UNSPEC, TCA_PEDIT_TM, TCA_PEDIT_PARMS, TCA_PEDIT_PAD, TCA_PEDIT_PARMS_EX,
#        TCA_PEDIT_KEYS_EX, TCA_PEDIT_KEY_EX, ... }
TCA_PEDIT_PARMS_EX, TCA_PEDIT_KEYS_EX, TCA_PEDIT_KEY_EX = 4, 5, 6
# enum { TCA_PEDIT_KEY_EX_HTYPE = 1, TCA_PEDIT_KEY_EX_CMD = 2, ... }
TCA_PEDIT_KEY_EX_HTYPE, TCA_PEDIT_KEY_EX_CMD = 1, 2
TCA_PEDIT_KEY_EX_HDR_TYPE_ETH = 1  # enum pedit_header_type { ..._NETWORK = 0, ..._ETH = 1, ...
TCA_PEDIT_KEY_EX_CMD_SET = 0  # enum pedit_cmd { TCA_PEDIT_KEY_EX_CMD_SET = 0, ... }

# --- linux/if_ether.h, linux/ip.h, linux/ipv6.h -----------------------------------------
ETH_P_ALL = 0x0003  # #define ETH_P_ALL 0x0003
ETH_P_IP = 0x0800  # #define ETH_P_IP 0x0800
ETH_P_IPV6 = 0x86DD  # #define ETH_P_IPV6 0x86DD
ETH_HLEN = 14  # #define ETH_HLEN 14; struct ethhdr { h_dest[6]; h_source[6]; __be16 h_proto; }
ETH_H_DEST = 0  # offsetof(struct ethhdr, h_dest)
IPHDR_SADDR, IPHDR_DADDR = 12, 16  # offsetof(struct iphdr, saddr), offsetof(..., daddr)
IPV6HDR_SADDR, IPV6HDR_DADDR = 8, 24  # offsetof(struct ipv6hdr, saddr), offsetof(..., daddr)

NATIVE: Literal["little", "big"] = (
    sys.byteorder
)  # int / __u32 / short fields are host order; __be16/__be32 big-endian


def _u(
    value: int, size: int, order: Literal["little", "big"] = NATIVE, signed: bool = False
) -> bytes:
    return value.to_bytes(size, order, signed=signed)


# --- expected structs, field by field ---------------------------------------------------


def tc_u32_key(mask: int, val: int, off: int) -> bytes:
    """struct tc_u32_key { __be32 mask; __be32 val; int off; int offmask; } (pkt_cls.h)."""
    return _u(mask, 4, "big") + _u(val, 4, "big") + _u(off, 4, signed=True) + _u(0, 4)


def tc_u32_sel(keys: list[bytes]) -> bytes:
    """struct tc_u32_sel { unsigned char flags, offshift, nkeys; __be16 offmask; __u16 off;
    short offoff; short hoff; __be32 hmask; struct tc_u32_key keys[]; } (pkt_cls.h); one
    padding byte after nkeys aligns offmask to 2 (16 bytes before keys[])."""
    head = bytes([TC_U32_TERMINAL, 0, len(keys)]) + b"\0"  # flags, offshift, nkeys, padding
    head += _u(0, 2, "big") + _u(0, 2) + _u(0, 2, signed=True)  # offmask, off, offoff
    head += _u(0, 2, signed=True) + _u(0, 4, "big")  # hoff, hmask
    return head + b"".join(keys)


def tc_gen(action: int) -> bytes:
    """tc_gen (pkt_cls.h): __u32 index; __u32 capab; int action; int refcnt; int bindcnt."""
    return _u(0, 4) + _u(0, 4) + _u(action, 4, signed=action >= 1 << 31) + _u(0, 4) + _u(0, 4)


def tc_mirred(action: int, eaction: int, ifindex: int) -> bytes:
    """struct tc_mirred { tc_gen; int eaction; __u32 ifindex; } (tc_act/tc_mirred.h)."""
    return tc_gen(action) + _u(eaction, 4, signed=True) + _u(ifindex, 4)


def tc_pedit_key(mask: bytes, val: bytes, off: int) -> bytes:
    """struct tc_pedit_key { __u32 mask; __u32 val; __u32 off; __u32 at; __u32 offmask;
    __u32 shift; } (tc_act/tc_pedit.h). The kernel munges a packet word in place,
    `*ptr = (*ptr & mask) ^ val`, so mask and val hold packet (wire) byte order."""
    return mask + val + _u(off, 4) + _u(0, 4) + _u(0, 4) + _u(0, 4)


def tc_pedit_sel(action: int, keys: list[bytes]) -> bytes:
    """struct tc_pedit_sel { tc_gen; unsigned char nkeys; unsigned char flags;
    struct tc_pedit_key keys[0]; } (tc_act/tc_pedit.h): 20 + 2 bytes, padded to 24 (keys
    are 4-aligned)."""
    return tc_gen(action) + bytes([len(keys), 0]) + b"\0\0" + b"".join(keys)


# --- a netlink reader of our own (netlink.h) ---------------------------------------------

Attrs = list[tuple[int, bool, bytes]]  # (type, NLA_F_NESTED set, payload)


def attrs(data: bytes) -> Attrs:
    out: Attrs = []
    off = 0
    while off < len(data):
        length, kind = NLATTR.unpack_from(data, off)
        assert NLATTR.size <= length <= len(data) - off, (off, length)
        nested = bool(kind & NLA_F_NESTED)
        out.append(
            (kind & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER), nested, data[off + 4 : off + length])
        )
        off += (length + NLA_ALIGNTO - 1) & ~(NLA_ALIGNTO - 1)
    assert off == len(data)
    return out


def types(a: Attrs) -> list[int]:
    return [t for t, _, _ in a]


def get(a: Attrs, kind: int, *, nested: bool = False) -> bytes:
    found = [(n, p) for t, n, p in a if t == kind]
    assert len(found) == 1, f"attribute {kind}: {len(found)} times in {types(a)}"
    is_nested, payload = found[0]
    assert is_nested == nested, f"attribute {kind}: NLA_F_NESTED is {is_nested}"
    return payload


def message(f: TcFilter, ifindex: int, flags: int = 0) -> tuple[tuple[int, ...], Attrs]:
    """(tcmsg fields, its attributes) of the u32 RTM_NEWTFILTER vipctl sends for `f`."""
    data = tcnl.filter_bytes(f, ifindex, "u32", flags, None)
    length, kind, _nlflags, _seq, _pid = NLMSGHDR.unpack_from(data)
    assert length == len(data) and kind == RTM_NEWTFILTER
    tcm = TCMSG.unpack_from(data, NLMSGHDR.size)
    return tcm, attrs(data[NLMSGHDR.size + TCMSG.size :])


def u32_parts(f: TcFilter, ifindex: int = 2, flags: int = 0) -> tuple[bytes, list[Attrs]]:
    """(TCA_U32_SEL, the options of each action in order) after checking the envelope."""
    tcm, top = message(f, ifindex, flags)
    family, pad1, pad2, index, handle, parent, info = tcm
    assert (family, pad1, pad2, index, handle) == (socket.AF_UNSPEC, 0, 0, ifindex, 0)
    minor = TC_H_MIN_INGRESS if f.hook == "ingress" else TC_H_MIN_EGRESS
    assert parent == tc_h_make(TC_H_CLSACT, minor)
    # tcm_info = TC_H_MAKE(prio << 16, protocol), the protocol in network order (as tc(8))
    assert info == tc_h_make(f.prio << 16, socket.htons(f.match.eth_type))
    assert types(top) == [TCA_KIND, TCA_CHAIN, TCA_OPTIONS]
    assert get(top, TCA_KIND) == b"u32\0"
    assert get(top, TCA_CHAIN) == _u(f.chain, 4)
    opts = attrs(get(top, TCA_OPTIONS, nested=True))
    assert types(opts) == [TCA_U32_SEL, TCA_U32_FLAGS, TCA_U32_ACT]
    assert get(opts, TCA_U32_FLAGS) == _u(flags, 4)
    prios = attrs(get(opts, TCA_U32_ACT, nested=True))
    assert types(prios) == list(range(1, len(f.actions) + 1))  # TCA_ACT_PRIO_1.. = order
    return get(opts, TCA_U32_SEL), [attrs(p) for _, _, p in prios]


def act_options(act: Attrs, kind: str, *, cookie: bytes = b"") -> Attrs:
    want = [TCA_ACT_KIND, TCA_ACT_OPTIONS] + ([TCA_ACT_COOKIE] if cookie else [])
    assert types(act) == want
    assert get(act, TCA_ACT_KIND) == kind.encode() + b"\0"
    if cookie:
        assert get(act, TCA_ACT_COOKIE) == cookie
    return attrs(get(act, TCA_ACT_OPTIONS, nested=True))


# --- the kernel's semantics, for a second opinion ----------------------------------------


def u32_matches(sel: bytes, frame: bytes) -> bool:
    """cls_u32's match of one terminal node: every key's 32-bit word at network header + off
    satisfies `(word ^ val) & mask == 0`; offsets may be negative (the link-layer header)."""
    flags, _offshift, nkeys = sel[0], sel[1], sel[2]
    assert flags == TC_U32_TERMINAL
    nh = ETH_HLEN
    for i in range(nkeys):
        key = sel[16 + 16 * i : 32 + 16 * i]
        mask, val = int.from_bytes(key[0:4], "big"), int.from_bytes(key[4:8], "big")
        off = int.from_bytes(key[8:12], NATIVE, signed=True)
        word = int.from_bytes(frame[nh + off : nh + off + 4], "big")
        if (word ^ val) & mask:
            return False
    return True


def pedit_apply(parms_ex: bytes, frame: bytes) -> bytes:
    """act_pedit with TCA_PEDIT_KEY_EX_HDR_TYPE_ETH keys: offsets from the MAC header."""
    nkeys = parms_ex[20]
    out = bytearray(frame)
    for i in range(nkeys):
        key = parms_ex[24 + 24 * i : 48 + 24 * i]
        mask, val = key[0:4], key[4:8]
        off = int.from_bytes(key[8:12], NATIVE)
        word = bytes((b & m) ^ v for b, m, v in zip(out[off : off + 4], mask, val, strict=True))
        out[off : off + 4] = word
    return bytes(out)


def ipv4_frame(src: str, dst: str, eth_dst: bytes = b"\xaa" * 6) -> bytes:
    ip = bytearray(20)
    ip[0] = 0x45
    ip[IPHDR_SADDR : IPHDR_SADDR + 4] = IPv4Address(src).packed
    ip[IPHDR_DADDR : IPHDR_DADDR + 4] = IPv4Address(dst).packed
    return eth_dst + b"\xbb" * 6 + _u(ETH_P_IP, 2, "big") + bytes(ip)


def ipv6_frame(src: str, dst: str) -> bytes:
    ip = bytearray(40)
    ip[0] = 0x60
    ip[IPV6HDR_SADDR : IPV6HDR_SADDR + 16] = IPv6Address(src).packed
    ip[IPV6HDR_DADDR : IPV6HDR_DADDR + 16] = IPv6Address(dst).packed
    return b"\xaa" * 6 + b"\xbb" * 6 + _u(ETH_P_IPV6, 2, "big") + bytes(ip)


# --- the tests --------------------------------------------------------------------------

VIP4 = IPv4Address("198.51.100.253")
VIP6 = IPv6Address("2001:db8:f::253")
CHAIN = 0x76631
MAC = "02:00:00:00:02:02"


def steer4() -> TcFilter:
    """A steer rule: IPv4 sources with low bits 101 (mask 0.0.0.7) to the VIP -> member."""
    return TcFilter(
        dev="up0",
        hook="ingress",
        chain=CHAIN,
        prio=3,
        match=Match(eth_type=ETH_P_IP, src=(0x5, 0x7), dst=(int(VIP4), 0xFFFFFFFF)),
        actions=(SetEthDst(MAC), Mirred("m2", 11, redirect=True)),
    )


def test_u32_ipv4_steer_rule_is_the_headers_layout() -> None:
    sel, (pedit, mirred) = u32_parts(steer4(), ifindex=2)
    assert sel == tc_u32_sel(
        [
            tc_u32_key(0x00000007, 0x00000005, IPHDR_SADDR),  # iphdr.saddr & 0.0.0.7
            tc_u32_key(0xFFFFFFFF, int(VIP4), IPHDR_DADDR),  # iphdr.daddr == VIP
        ]
    )
    # pedit: TCA_PEDIT_PARMS_EX + one TCA_PEDIT_KEY_EX (HTYPE ETH, CMD SET) per key
    opts = act_options(pedit, "pedit")
    assert types(opts) == [TCA_PEDIT_PARMS_EX, TCA_PEDIT_KEYS_EX]
    assert get(opts, TCA_PEDIT_PARMS_EX) == tc_pedit_sel(
        TC_ACT_PIPE,
        [
            # word at h_dest[0..3]: replaced whole
            tc_pedit_key(b"\0\0\0\0", bytes([0x02, 0x00, 0x00, 0x00]), ETH_H_DEST),
            # word at h_dest[4..5] + h_source[0..1]: the source bytes are kept
            tc_pedit_key(b"\0\0\xff\xff", bytes([0x02, 0x02, 0x00, 0x00]), ETH_H_DEST + 4),
        ],
    )
    keys_ex = attrs(get(opts, TCA_PEDIT_KEYS_EX, nested=True))
    assert types(keys_ex) == [TCA_PEDIT_KEY_EX, TCA_PEDIT_KEY_EX]
    for _, nested, payload in keys_ex:
        assert nested
        ex = attrs(payload)
        assert types(ex) == [TCA_PEDIT_KEY_EX_HTYPE, TCA_PEDIT_KEY_EX_CMD]
        assert get(ex, TCA_PEDIT_KEY_EX_HTYPE) == _u(TCA_PEDIT_KEY_EX_HDR_TYPE_ETH, 2)
        assert get(ex, TCA_PEDIT_KEY_EX_CMD) == _u(TCA_PEDIT_KEY_EX_CMD_SET, 2)
    # mirred: redirect to egress of ifindex 11, consuming the packet
    opts = act_options(mirred, "mirred")
    assert types(opts) == [TCA_MIRRED_PARMS]
    assert get(opts, TCA_MIRRED_PARMS) == tc_mirred(TC_ACT_STOLEN, TCA_EGRESS_REDIR, 11)


def test_u32_ipv4_keys_match_what_the_kernel_would_match() -> None:
    sel, _ = u32_parts(steer4())
    for last in range(256):
        src = f"10.0.0.{last}"
        assert u32_matches(sel, ipv4_frame(src, str(VIP4))) == (last & 7 == 5), src
    assert not u32_matches(sel, ipv4_frame("10.0.0.5", "198.51.100.254"))  # another address


def test_set_eth_dst_rewrites_the_destination_mac_and_keeps_the_source() -> None:
    _, (pedit, _) = u32_parts(steer4())
    parms = get(act_options(pedit, "pedit"), TCA_PEDIT_PARMS_EX)
    frame = ipv4_frame("10.0.0.5", str(VIP4), eth_dst=bytes.fromhex("0a7663000001"))
    out = pedit_apply(parms, frame)
    assert out[0:6] == bytes.fromhex(MAC.replace(":", ""))
    assert out[6:] == frame[6:]  # source MAC, ethertype and payload untouched


def test_u32_ipv6_words_are_the_ipv6_header_offsets() -> None:
    f = TcFilter(
        dev="up0",
        hook="ingress",
        chain=CHAIN,
        prio=9,
        match=Match(eth_type=ETH_P_IPV6, src=(0x5, 0x7), dst=(int(VIP6), (1 << 128) - 1)),
        actions=(Gact("drop"),),
    )
    sel, (drop,) = u32_parts(f)
    dst = VIP6.packed
    assert sel == tc_u32_sel(
        [
            # ipv6hdr.saddr bytes 12..15 (the only word with mask bits); zero words omitted
            tc_u32_key(0x00000007, 0x00000005, IPV6HDR_SADDR + 12),
            *(
                tc_u32_key(0xFFFFFFFF, int.from_bytes(dst[i : i + 4], "big"), IPV6HDR_DADDR + i)
                for i in (0, 4, 8, 12)
            ),
        ]
    )
    assert get(act_options(drop, "gact"), TCA_GACT_PARMS) == tc_gen(TC_ACT_SHOT)
    assert u32_matches(sel, ipv6_frame("2001:db8:1::d", str(VIP6)))
    assert not u32_matches(sel, ipv6_frame("2001:db8:1::e", str(VIP6)))
    assert not u32_matches(sel, ipv6_frame("2001:db8:1::d", "2001:db8:f::254"))


def test_u32_eth_dst_selector_and_the_goto_chain_verdict() -> None:
    """The broadcast egress selector: destination MAC == the stamp, any protocol ->
    gact goto chain (TC_ACT_GOTO_CHAIN | chain)."""
    stamp = "0a:76:63:00:00:01"
    f = TcFilter(
        dev="m1",
        hook="egress",
        chain=0,
        prio=0x7664,
        match=Match(eth_dst=stamp),
        actions=(Gact("goto", CHAIN),),
    )
    sel, (goto,) = u32_parts(f, ifindex=10, flags=TCA_CLS_FLAGS_SKIP_HW)
    # h_dest at -ETH_HLEN from the network header: bytes 0..3, then 4..5 (mask ffff0000)
    assert sel == tc_u32_sel(
        [
            tc_u32_key(0xFFFFFFFF, 0x0A766300, ETH_H_DEST - ETH_HLEN),
            tc_u32_key(0xFFFF0000, 0x00010000, ETH_H_DEST - ETH_HLEN + 4),
        ]
    )
    assert get(act_options(goto, "gact"), TCA_GACT_PARMS) == tc_gen(0x20076631)
    assert TC_ACT_GOTO_CHAIN | CHAIN == 0x20076631 and CHAIN <= TC_ACT_EXT_VAL_MASK
    stamped = ipv4_frame("10.0.0.1", str(VIP4), eth_dst=bytes.fromhex("0a7663000001"))
    assert u32_matches(sel, stamped)
    assert not u32_matches(sel, ipv4_frame("10.0.0.1", str(VIP4), bytes.fromhex("0a7663000002")))


def test_u32_match_all_dispatcher_carries_the_cookie() -> None:
    cookie = bytes(range(TC_COOKIE_MAX_SIZE))
    f = TcFilter(
        dev="up0",
        hook="ingress",
        chain=0,
        prio=0x7663,
        match=Match(),  # eth_type ETH_P_ALL
        actions=(Gact("goto", CHAIN, cookie),),
    )
    sel, (goto,) = u32_parts(f)
    assert sel == tc_u32_sel([tc_u32_key(0, 0, 0)])  # `match u32 0 0`: every packet
    assert get(act_options(goto, "gact", cookie=cookie), TCA_GACT_PARMS) == tc_gen(
        TC_ACT_GOTO_CHAIN | CHAIN
    )


def test_broadcast_copy_is_a_mirror_that_pipes_and_ok_is_tc_act_ok() -> None:
    f = TcFilter(
        dev="up0",
        hook="ingress",
        chain=CHAIN,
        prio=1,
        match=Match(eth_type=ETH_P_IP, dst=(int(VIP4), 0xFFFFFFFF)),
        actions=(Mirred("m1", 10, redirect=False), Gact("ok")),
    )
    sel, (mirror, ok) = u32_parts(f)
    assert sel == tc_u32_sel([tc_u32_key(0xFFFFFFFF, int(VIP4), IPHDR_DADDR)])
    assert get(act_options(mirror, "mirred"), TCA_MIRRED_PARMS) == tc_mirred(
        TC_ACT_PIPE, TCA_EGRESS_MIRROR, 10
    )
    assert get(act_options(ok, "gact"), TCA_GACT_PARMS) == tc_gen(TC_ACT_OK)


# --- the numbers above, and tcnl's attribute numbers, against the installed headers -----

HEADERS = (
    "linux/netlink.h",
    "linux/rtnetlink.h",
    "linux/pkt_sched.h",
    "linux/pkt_cls.h",
    "linux/tc_act/tc_gact.h",
    "linux/tc_act/tc_mirred.h",
    "linux/tc_act/tc_pedit.h",
    "linux/if_ether.h",
    "linux/ip.h",
    "linux/ipv6.h",
)

_HEADER_NAMES = (
    "NLA_F_NESTED NLA_F_NET_BYTEORDER NLA_ALIGNTO RTM_NEWTFILTER TCA_KIND TCA_OPTIONS "
    "TCA_CHAIN TC_H_MAJ_MASK TC_H_MIN_MASK TC_H_CLSACT TC_H_MIN_INGRESS TC_H_MIN_EGRESS "
    "TCA_ACT_KIND TCA_ACT_OPTIONS TCA_ACT_COOKIE TC_ACT_OK TC_ACT_SHOT TC_ACT_PIPE "
    "TC_ACT_STOLEN TC_ACT_GOTO_CHAIN TC_ACT_EXT_VAL_MASK TCA_CLS_FLAGS_SKIP_HW TCA_U32_SEL "
    "TCA_U32_ACT TCA_U32_FLAGS TC_U32_TERMINAL TC_COOKIE_MAX_SIZE TCA_GACT_PARMS "
    "TCA_MIRRED_PARMS TCA_EGRESS_REDIR TCA_EGRESS_MIRROR TCA_PEDIT_PARMS_EX "
    "TCA_PEDIT_KEYS_EX TCA_PEDIT_KEY_EX TCA_PEDIT_KEY_EX_HTYPE TCA_PEDIT_KEY_EX_CMD "
    "TCA_PEDIT_KEY_EX_HDR_TYPE_ETH TCA_PEDIT_KEY_EX_CMD_SET ETH_P_ALL ETH_P_IP ETH_P_IPV6 "
    "ETH_HLEN"
)
# every number of this module that is a header's macro or enum member, by its name
NUMBERS = {name: globals()[name] for name in _HEADER_NAMES.split()}

# the structs tcnl and netlink.py pack (spelt `sizeof (...)`: the keys below check this
# test's own layouts)
LAYOUT = {
    "sizeof (struct tc_gact)": tcnl.TC_GACT.size,
    "sizeof (struct tc_mirred)": tcnl.TC_MIRRED.size,
    "sizeof (struct tc_pedit_sel)": tcnl.TC_PEDIT_SEL.size,
    "sizeof(struct tc_pedit_key) - offsetof(struct tc_pedit_key, off)": tcnl.TC_PEDIT_KEY_TAIL.size,
    "offsetof(struct tc_u32_sel, keys)": tcnl.TC_U32_SEL.size,
    "sizeof(struct tc_u32_key) - offsetof(struct tc_u32_key, off)": tcnl.TC_U32_KEY_OFF.size,
    "sizeof (struct tcmsg)": nl.TCMSG.size,
    "sizeof(struct nlmsghdr)": NLMSGHDR.size,
    "sizeof(struct nlattr)": NLATTR.size,
    "sizeof(struct tcmsg)": TCMSG.size,
    "sizeof(struct tc_u32_sel)": len(tc_u32_sel([])),
    "offsetof(struct tc_u32_sel, offmask)": 4,
    "offsetof(struct tc_u32_sel, hmask)": 12,
    "sizeof(struct tc_u32_key)": len(tc_u32_key(0, 0, 0)),
    "offsetof(struct tc_u32_key, off)": 8,
    "sizeof(struct tc_gact)": len(tc_gen(0)),
    "offsetof(struct tc_gact, action)": 8,
    "sizeof(struct tc_mirred)": len(tc_mirred(0, 0, 0)),
    "offsetof(struct tc_mirred, eaction)": 20,
    "sizeof(struct tc_pedit_sel)": len(tc_pedit_sel(0, [])),
    "offsetof(struct tc_pedit_sel, nkeys)": 20,
    "sizeof(struct tc_pedit_key)": len(tc_pedit_key(b"\0" * 4, b"\0" * 4, 0)),
    "offsetof(struct tc_pedit_key, off)": 8,
    "offsetof(struct ethhdr, h_dest)": ETH_H_DEST,
    "offsetof(struct iphdr, saddr)": IPHDR_SADDR,
    "offsetof(struct iphdr, daddr)": IPHDR_DADDR,
    "offsetof(struct ipv6hdr, saddr)": IPV6HDR_SADDR,
    "offsetof(struct ipv6hdr, daddr)": IPV6HDR_DADDR,
}


def tcnl_attribute_numbers() -> dict[str, int]:
    """Every attribute name -> number tcnl (and netlink.py for tc) declares."""
    out = {name: num for table in tcnl.ATTRIBUTE_TABLES for num, (name, _) in table.items()}
    out |= {
        "RTM_NEWTFILTER": nl.RTM_NEWTFILTER,
        "RTM_DELTFILTER": nl.RTM_DELTFILTER,
        "RTM_GETTFILTER": nl.RTM_GETTFILTER,
        "RTM_NEWQDISC": nl.RTM_NEWQDISC,
        "RTM_DELQDISC": nl.RTM_DELQDISC,
        "RTM_GETQDISC": nl.RTM_GETQDISC,
        "RTM_NEWCHAIN": nl.RTM_NEWCHAIN,
        "RTM_DELCHAIN": nl.RTM_DELCHAIN,
        "RTM_GETCHAIN": nl.RTM_GETCHAIN,
        "TC_H_CLSACT": nl.TC_H_CLSACT,
        "TC_H_MIN_INGRESS": nl.TC_H_MIN_INGRESS,
        "TC_H_MIN_EGRESS": nl.TC_H_MIN_EGRESS,
        "TCA_ACT_MAX_PRIO": tcnl.TCA_ACT_MAX_PRIO,
        "TC_ACT_OK": tcnl.TC_ACT_OK,
        "TC_ACT_SHOT": tcnl.TC_ACT_SHOT,
        "TC_ACT_PIPE": tcnl.TC_ACT_PIPE,
        "TC_ACT_STOLEN": tcnl.TC_ACT_STOLEN,
        "TC_ACT_GOTO_CHAIN": tcnl.TC_ACT_GOTO_CHAIN,
        "TC_ACT_EXT_VAL_MASK": tcnl.TC_ACT_EXT_VAL_MASK,
        "TCA_EGRESS_REDIR": tcnl.TCA_EGRESS_REDIR,
        "TCA_EGRESS_MIRROR": tcnl.TCA_EGRESS_MIRROR,
        "TCA_PEDIT_KEY_EX_HDR_TYPE_ETH": tcnl.TCA_PEDIT_KEY_EX_HDR_TYPE_ETH,
        "TCA_PEDIT_KEY_EX_CMD_SET": tcnl.TCA_PEDIT_KEY_EX_CMD_SET,
        "TC_U32_TERMINAL": tcnl.TC_U32_TERMINAL,
        "TCA_CLS_FLAGS_SKIP_HW": tcnl.SKIP_HW,
        "TCA_CLS_FLAGS_SKIP_SW": tcnl.SKIP_SW,
        "TCA_CLS_FLAGS_IN_HW": tcnl.IN_HW,
        "TCA_CLS_FLAGS_NOT_IN_HW": tcnl.NOT_IN_HW,
    }
    # and every other upper-case integer of tcnl is a header's name
    aliases = {"SKIP_HW", "SKIP_SW", "IN_HW", "NOT_IN_HW", "CLSACT_HANDLE"}
    out |= {
        name: value
        for name, value in vars(tcnl).items()
        if name.isupper() and isinstance(value, int) and name not in aliases
    }
    # TCA_ACT_PRIO_n is the action's position (1..TCA_ACT_MAX_PRIO), not a header name
    return {k: v for k, v in out.items() if not k.startswith("TCA_ACT_PRIO_")}


def test_numbers_are_the_installed_headers(tmp_path: Path) -> None:
    ours = tcnl_attribute_numbers()
    checks = dict(NUMBERS.items())
    names = sorted(set(checks) | set(ours))
    kernel = header_values(tmp_path, HEADERS, [*names, *LAYOUT], needs="linux/pkt_cls.h")
    assert {n: checks[n] for n in checks if checks[n] != kernel[n]} == {}, "this test's numbers"
    assert {n: (ours[n], kernel[n]) for n in ours if ours[n] != kernel[n]} == {}, "tcnl's"
    assert {e: (v, kernel[e]) for e, v in LAYOUT.items() if v != kernel[e]} == {}, "layout"


def test_membarrier_numbers_are_the_installed_headers(tmp_path: Path) -> None:
    """The tc backend's grace period (backends/tc.py grace_period) calls membarrier by
    number: this machine's number and the command are the headers'."""
    from vipctl.backends import tc

    kernel = header_values(
        tmp_path,
        ["linux/membarrier.h", "sys/syscall.h"],
        ["MEMBARRIER_CMD_GLOBAL", "SYS_membarrier"],
        needs="linux/membarrier.h",
    )
    assert kernel["MEMBARRIER_CMD_GLOBAL"] == tc.MEMBARRIER_CMD_GLOBAL
    assert tc.SYS_MEMBARRIER[platform.machine()] == kernel["SYS_membarrier"]

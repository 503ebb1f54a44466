"""Netlink messages -> vipctl's host facts (fake messages, and byte messages decoded by
vipctl.host.netlink; no kernel), and the decisions taken on them: protocol 211 and errnos
compared as numbers."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from vipctl.core.spec import load_text
from vipctl.errors import KernelError
from vipctl.host import announce, doctor, rtnl
from vipctl.host import netlink as nl
from vipctl.host.netlink import NetlinkDecodeError, NetlinkError
from vipctl.host.rtnl import Address, LinkInfo, Neigh, Route

NAMES = {1: "lo", 3: "up0", 5: "m1", 7: "m2"}


class Msg(dict[str, Any]):
    """A netlink message as the converters see it: header fields by key, NLAs by name."""

    def __init__(self, attrs: dict[str, Any] | None = None, **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs or {}

    def get_attr(self, attr: str, default: Any = None) -> Any:
        return self.attrs.get(attr, default)


def link(index: int = 5, flags: int = 0x11043, **attrs: Any) -> Msg:
    return Msg({"IFLA_IFNAME": "m1", "IFLA_MTU": 1500, **attrs}, index=index, flags=flags)


def route(dst_len: int = 32, type: int = 1, proto: int = 211, **attrs: Any) -> Msg:
    return Msg(attrs, family=2, dst_len=dst_len, type=type, proto=proto, table=254)


# --------------------------------------------------------------------------- links


def test_link_flags_and_mtu() -> None:
    assert rtnl.link_info(link()) == LinkInfo("m1", True, True, 1500, 5)
    down = rtnl.link_info(link(flags=0x1002))  # BROADCAST|MULTICAST, not UP
    assert not down.admin_up and not down.carrier
    no_carrier = rtnl.link_info(link(flags=0x1003))  # UP without LOWER_UP
    assert no_carrier.admin_up and not no_carrier.carrier
    assert rtnl.link_info(link(IFLA_MTU=None)).mtu == 0


@pytest.mark.parametrize(
    "msg, words",
    [
        (link(IFLA_IFNAME=None), "no IFLA_IFNAME"),
        (link(IFLA_IFNAME=""), "no IFLA_IFNAME"),
        (Msg({"IFLA_IFNAME": "m1"}, flags=1), "no index"),
        (link(flags="UP"), "no flags"),
        (link(IFLA_MTU="1500"), "IFLA_MTU"),
    ],
)
def test_malformed_links_are_kernel_errors(msg: Msg, words: str) -> None:
    with pytest.raises(KernelError, match="malformed link message") as exc:
        rtnl.link_info(msg)
    assert words in str(exc.value)


def nla(kind: int, payload: bytes) -> bytes:
    """struct nlattr + payload, padded to 4 bytes (written out here, not netlink.attr)."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def nlmsg(msg_type: int, body: bytes, flags: int = 0, seq: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def test_a_kernel_link_message_decoded() -> None:
    # struct ifinfomsg: family, pad, type (ARPHRD_ETHER), index, flags, change
    body = struct.pack("=BxHiII", 0, 1, 7, 0x10003, 0)
    body += nla(3, b"m2\0")  # IFLA_IFNAME
    body += nla(4, struct.pack("=I", 9000))  # IFLA_MTU
    body += nla(7, struct.pack("=64s", b""))  # IFLA_STATS: not decoded, skipped
    msg = nl.decode_message(nlmsg(16, body))  # RTM_NEWLINK
    assert rtnl.link_info(msg) == LinkInfo("m2", True, True, 9000, 7)


# --------------------------------------------------------------------------- addresses


def test_addresses_local_first_canonical_text() -> None:
    v4 = Msg({"IFA_LOCAL": "198.51.100.9", "IFA_ADDRESS": "198.51.100.1"}, index=5, prefixlen=29)
    assert rtnl.address_of(v4, NAMES) == Address("198.51.100.9", 29, "m1")
    v6 = Msg({"IFA_ADDRESS": "2001:DB8:F:0:0::253"}, index=1, prefixlen=128)
    assert rtnl.address_of(v6, NAMES) == ("2001:db8:f::253", 128, "lo")
    assert rtnl.address_of(Msg({"IFA_ADDRESS": "::1"}, index=9, prefixlen=128), NAMES).dev == "if9"


@pytest.mark.parametrize(
    "msg",
    [
        Msg({}, index=1, prefixlen=32),
        Msg({"IFA_ADDRESS": "not-an-ip"}, index=1, prefixlen=32),
        Msg({"IFA_ADDRESS": "192.0.2.1"}, index=1),
    ],
)
def test_malformed_addresses_are_kernel_errors(msg: Msg) -> None:
    with pytest.raises(KernelError, match="malformed address message"):
        rtnl.address_of(msg, NAMES)


# --------------------------------------------------------------------------- routes


def test_routes_as_ip_shows_them_with_numbers_kept() -> None:
    host = rtnl.route_of(route(RTA_DST="198.51.100.253", RTA_PRIORITY=4211), NAMES)
    assert host.dst == "198.51.100.253" and host.protocol == announce.PROTO == 211
    assert host.metric == 4211 and host.table == "main" and host.type == "unicast"
    multi = rtnl.route_of(
        route(RTA_DST="198.51.100.253", RTA_MULTIPATH=[Msg(oif=5), Msg(oif=7)]), NAMES
    )
    assert multi.nexthops == ("m1", "m2") and multi.dev == ""
    local = rtnl.route_of(
        route(24, type=2, proto=2, RTA_DST="203.0.113.7", RTA_OIF=1, RTA_TABLE=255), NAMES
    )
    assert (local.type, local.dst, local.dev, local.table, local.protocol) == (
        "local",
        "203.0.113.0/24",
        "lo",
        "local",
        2,
    )
    default = rtnl.route_of(route(0, proto=3, RTA_GATEWAY="203.0.113.254", RTA_OIF=3), NAMES)
    assert (default.dst, default.gateway, default.dev) == ("default", "203.0.113.254", "up0")
    v6 = rtnl.route_of(route(64, type=6, RTA_DST="2001:db8:f::", RTA_TABLE=1000), NAMES)
    assert (v6.type, v6.dst, v6.table) == ("blackhole", "2001:db8:f::/64", "1000")
    assert rtnl.route_of(route(0, type=99), NAMES).type == "99"


@pytest.mark.parametrize(
    "msg, words",
    [
        (route(32), "no RTA_DST"),
        (route(32, RTA_DST="x"), "not an IP address"),
        (route(33, RTA_DST="192.0.2.1"), "bad destination"),
        (route(32, RTA_DST="192.0.2.1", RTA_MULTIPATH=5), "RTA_MULTIPATH"),
        (route(32, RTA_DST="192.0.2.1", RTA_MULTIPATH=[Msg()]), "no oif"),
        (route(32, RTA_DST="192.0.2.1", RTA_TABLE="main"), "RTA_TABLE"),
        (Msg({}, dst_len=0, type=1), "no proto"),
    ],
)
def test_malformed_routes_are_kernel_errors(msg: Msg, words: str) -> None:
    with pytest.raises(KernelError, match="malformed") as exc:
        rtnl.route_of(msg, NAMES)
    assert words in str(exc.value)


# --------------------------------------------------------------------------- neighbours


def test_neighbours_and_proxy_entries() -> None:
    proxy = rtnl.neigh_of(
        Msg({"NDA_DST": "198.51.100.253", "NDA_PROTOCOL": 211}, ifindex=3, flags=8), NAMES
    )
    assert proxy == Neigh("198.51.100.253", "up0", None, 0, True, 211)
    resolved = rtnl.neigh_of(
        Msg(
            {"NDA_DST": "198.51.100.10", "NDA_LLADDR": "02:AA:00:00:01:02"},
            ifindex=5,
            flags=0,
            state=0x02,
        ),
        NAMES,
    )
    assert resolved.usable and resolved.lladdr == "02:aa:00:00:01:02" and resolved.protocol == 0
    for state in (0x01, 0x20, 0x40):  # incomplete, failed, noarp: `ip neigh show` skips them
        n = rtnl.neigh_of(
            Msg(
                {"NDA_DST": "198.51.100.10", "NDA_LLADDR": "02:aa:00:00:01:02"},
                ifindex=5,
                flags=0,
                state=state,
            ),
            NAMES,
        )
        assert not n.usable
    no_mac = rtnl.neigh_of(Msg({"NDA_DST": "198.51.100.10"}, ifindex=5, flags=0, state=4), NAMES)
    assert not no_mac.usable
    with pytest.raises(KernelError, match="no NDA_DST"):
        rtnl.neigh_of(Msg({}, ifindex=3, flags=8), NAMES)
    with pytest.raises(KernelError, match="NDA_PROTOCOL"):
        rtnl.neigh_of(
            Msg({"NDA_DST": "192.0.2.1", "NDA_PROTOCOL": "vipctl"}, ifindex=3, flags=8), NAMES
        )


def test_a_kernel_proxy_message_decoded() -> None:
    # struct ndmsg: family, pad1, pad2, ifindex, state, flags (NTF_PROXY), type
    body = struct.pack("=BxxxiHBB", socket.AF_INET6, 3, 0, 8, 0)
    body += nla(1, socket.inet_pton(socket.AF_INET6, "2001:db8:f::253"))  # NDA_DST
    body += nla(12, bytes([211]))  # NDA_PROTOCOL (u8)
    msg = nl.decode_message(nlmsg(28, body))  # RTM_NEWNEIGH
    assert rtnl.neigh_of(msg, NAMES) == Neigh("2001:db8:f::253", "up0", None, 0, True, 211)


def test_a_kernel_neighbour_message_decoded() -> None:
    body = struct.pack("=BxxxiHBB", socket.AF_INET, 5, 0x02, 0, 1)  # NUD_REACHABLE
    body += nla(1, socket.inet_aton("198.51.100.10"))  # NDA_DST
    body += nla(2, bytes.fromhex("02AA00000102"))  # NDA_LLADDR
    body += nla(3, b"\0" * 16)  # NDA_CACHEINFO: skipped
    msg = nl.decode_message(nlmsg(28, body))
    n = rtnl.neigh_of(msg, NAMES)
    assert n == Neigh("198.51.100.10", "m1", "02:aa:00:00:01:02", 2, False, 0) and n.usable


def test_a_kernel_multipath_route_decoded() -> None:
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 211, 0, 1, 0)
    body += nla(15, struct.pack("=I", 254))  # RTA_TABLE
    body += nla(1, socket.inet_aton("198.51.100.253"))  # RTA_DST
    body += nla(6, struct.pack("=I", 4211))  # RTA_PRIORITY
    # RTA_MULTIPATH: struct rtnexthop {len, flags, hops, ifindex}, the second one with a gateway
    gw = nla(5, socket.inet_aton("198.51.100.18"))
    hops = struct.pack("=HBBi", 8, 0, 0, 5) + struct.pack("=HBBi", 8 + len(gw), 0, 1, 7) + gw
    body += nla(9, hops)
    msg = nl.decode_message(nlmsg(24, body))  # RTM_NEWROUTE
    assert msg.get_attr("RTA_MULTIPATH")[1].get_attr("RTA_GATEWAY") == "198.51.100.18"
    assert rtnl.route_of(msg, NAMES) == Route(
        "unicast", "198.51.100.253", "", "main", 211, "", 4211, ("m1", "m2"), ("", "198.51.100.18")
    )


def test_a_kernel_address_message_decoded() -> None:
    # struct ifaddrmsg: family, prefixlen, flags, scope, index
    body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0x80, 0, 5)
    body += nla(1, socket.inet_pton(socket.AF_INET6, "2001:DB8:11::1"))  # IFA_ADDRESS
    body += nla(8, struct.pack("=I", 0x80))  # IFA_FLAGS
    msg = nl.decode_message(nlmsg(20, body))  # RTM_NEWADDR
    assert rtnl.address_of(msg, NAMES) == Address("2001:db8:11::1", 64, "m1")


# --------------------------------------------------------------------------- live calls


class FakeSocket:
    """What rtnl calls on a netlink socket: dump() answers RTM_GETLINK with `links`; every
    call raises `raise_` when set."""

    def __init__(self, raise_: BaseException | None = None, links: list[Any] | None = None):
        self.raise_ = raise_
        self.links = links if links is not None else [link()]
        self.sent: list[tuple[int, bytes, int]] = []

    def dump(self, msg_type: int, payload: bytes) -> list[Any]:
        if self.raise_:
            raise self.raise_
        return self.links if msg_type == nl.RTM_GETLINK else []

    def request(self, msg_type: int, payload: bytes, flags: int = 0) -> list[Any]:
        self.sent.append((msg_type, payload, flags))
        if self.raise_:
            raise self.raise_
        return []


def fake_iproute(monkeypatch: pytest.MonkeyPatch, sock: FakeSocket) -> None:
    @contextmanager
    def iproute() -> Iterator[FakeSocket]:
        yield sock

    monkeypatch.setattr(rtnl, "iproute", iproute)


@pytest.mark.parametrize(
    "exc, words",
    [
        (NetlinkError(errno.EPERM), "EPERM"),
        (NetlinkDecodeError("attribute 3 of length 900"), "undecodable"),
        (OSError(errno.EBADF, "Bad file descriptor"), "EBADF"),
        (ValueError("bad"), "malformed netlink data"),
    ],
)
def test_netlink_failures_are_kernel_errors(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, words: str
) -> None:
    fake_iproute(monkeypatch, FakeSocket(exc))
    with pytest.raises(KernelError, match="cannot list the interfaces") as got:
        rtnl.links()
    assert words in str(got.value)


def test_a_truncated_dump_is_a_kernel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes cut short, or an attribute longer than its message: the decoder's error,
    reported as KernelError."""
    header = struct.pack("=BxHiII", 0, 1, 7, 0x10003, 0)
    whole = nlmsg(16, header + nla(3, b"m2\0"))
    overlong = nlmsg(16, header + struct.pack("=HH", 900, 3) + b"m2\0\0")
    for data in (whole[:-6], overlong):
        with pytest.raises(NetlinkDecodeError):
            nl.decode_message(data)

        class Truncated(FakeSocket):
            def dump(self, msg_type: int, payload: bytes, data: bytes = data) -> list[Any]:
                return [nl.decode_message(data)]

        fake_iproute(monkeypatch, Truncated())
        with pytest.raises(KernelError, match="cannot list the interfaces: undecodable netlink"):
            rtnl.links()


def test_garbage_link_dump_is_a_kernel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_iproute(monkeypatch, FakeSocket(links=[link(IFLA_IFNAME=None)]))
    with pytest.raises(KernelError, match="malformed link message"):
        rtnl.links()


def test_route_get_returns_the_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_iproute(monkeypatch, FakeSocket(NetlinkError(errno.EXDEV)))
    assert rtnl.route_get_errno("203.0.113.2", "198.51.100.253", 5) == errno.EXDEV
    ok = FakeSocket()
    fake_iproute(monkeypatch, ok)
    assert rtnl.route_get_errno("203.0.113.2", "198.51.100.253", 5) is None
    [(msg_type, payload, _flags)] = ok.sent
    assert msg_type == nl.RTM_GETROUTE
    # rtmsg: AF_INET, dst_len 32, src_len 32; then RTA_DST, RTA_SRC, RTA_IIF 5
    assert payload[:3] == bytes([socket.AF_INET, 32, 32])
    assert payload[12:] == (
        nla(1, socket.inet_aton("203.0.113.2"))
        + nla(2, socket.inet_aton("198.51.100.253"))
        + nla(3, struct.pack("=I", 5))
    )


def test_gone_is_false_other_refusals_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    for code in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV):
        fake_iproute(monkeypatch, FakeSocket(NetlinkError(code)))
        assert rtnl.proxy_delete("198.51.100.253", 3, "up0") is False
        assert rtnl.route_delete("198.51.100.253/32", 211, 4211) is False
        assert rtnl.addr_delete(1, "lo", "198.51.100.253/32") is False
    fake_iproute(monkeypatch, FakeSocket(NetlinkError(errno.EPERM)))
    with pytest.raises(KernelError, match=r"cannot delete the route 198.51.100.253/32: .*EPERM"):
        rtnl.route_delete("198.51.100.253/32", 211, 4211)


def test_what_the_writes_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The requests as bytes built here from the header layouts (rtnetlink.h, neighbour.h,
    if_addr.h), not by netlink's encoders."""
    sock = FakeSocket()
    fake_iproute(monkeypatch, sock)
    v4 = socket.inet_aton("198.51.100.253")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8:f::253")
    create_replace = 0x400 | 0x100  # NLM_F_CREATE | NLM_F_REPLACE

    rtnl.multipath_replace("198.51.100.253/32", [5, 7], 211, 4211)
    # rtmsg: AF_INET, /32, table main, proto 211, scope universe, RTN_UNICAST
    hops = struct.pack("=HBBi", 8, 0, 0, 5) + struct.pack("=HBBi", 8, 0, 0, 7)
    assert sock.sent.pop() == (
        24,  # RTM_NEWROUTE
        struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 211, 0, 1, 0)
        + nla(1, v4)
        + nla(15, struct.pack("=I", 254))
        + nla(6, struct.pack("=I", 4211))
        + nla(9, hops),
        create_replace,
    )
    rtnl.route_delete("198.51.100.253/32", 211, 4211)
    assert sock.sent.pop() == (
        25,  # RTM_DELROUTE: scope RT_SCOPE_NOWHERE and type 0 match any
        struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 211, 255, 0, 0)
        + nla(1, v4)
        + nla(15, struct.pack("=I", 254))
        + nla(6, struct.pack("=I", 4211)),
        0,
    )
    rtnl.proxy_replace("2001:db8:f::253", 3, "up0", 211)
    assert sock.sent.pop() == (
        28,  # RTM_NEWNEIGH: ndmsg AF_INET6, ifindex 3, NUD_PERMANENT, NTF_PROXY
        struct.pack("=BxxxiHBB", 10, 3, 0x80, 0x08, 0) + nla(1, v6) + nla(12, bytes([211])),
        create_replace,
    )
    rtnl.proxy_delete("198.51.100.253", 3, "up0")
    assert sock.sent.pop() == (29, struct.pack("=BxxxiHBB", 2, 3, 0, 0x08, 0) + nla(1, v4), 0)
    rtnl.addr_replace(1, "lo", "2001:db8:f::253/128")
    assert sock.sent.pop() == (
        20,  # RTM_NEWADDR: ifaddrmsg AF_INET6 /128 IFA_F_NODAD, then IFA_LOCAL, IFA_ADDRESS
        struct.pack("=BBBBI", 10, 128, 0x02, 0, 1)
        + nla(2, v6)
        + nla(1, v6)
        + nla(8, struct.pack("=I", 0x02)),
        create_replace,
    )
    rtnl.addr_delete(1, "lo", "198.51.100.253/32")
    assert sock.sent.pop() == (
        21,  # RTM_DELADDR
        struct.pack("=BBBBI", 2, 32, 0, 0, 1) + nla(2, v4) + nla(1, v4),
        0,
    )
    rtnl.set_up(1, "lo")
    # RTM_NEWLINK: ifinfomsg index 1, flags IFF_UP, change IFF_UP
    assert sock.sent.pop() == (16, struct.pack("=BxHiII", 0, 0, 1, 1, 1), 0)
    assert sock.sent == []


# --------------------------------------------------------------------------- decisions

SPEC = """
cluster: web
vips: [198.51.100.253, "2001:db8:f::253"]
uplink: up0
members:
  - {name: web1, port: m1, address: 198.51.100.10}
  - {name: web2, port: m2, address: 198.51.100.18}
"""


def test_installed_is_vipctls_by_protocol_number(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_text(SPEC)
    monkeypatch.setattr(
        rtnl,
        "proxies",
        lambda: [
            Neigh("198.51.100.253", "up0", None, 0, True, 211),
            Neigh("2001:db8:f::253", "up0", None, 0, True, 0),  # an operator's entry
            Neigh("2001:db8:f::253", "m1", None, 0, True, 211),  # not on the uplink
        ],
    )
    routes = {
        4: [
            Route("unicast", "198.51.100.253", table="main", protocol=211, nexthops=("m1", "m2")),
            Route("unicast", "198.51.100.253", "lo", table="local", protocol=211),
            Route("unicast", "198.51.100.0/24", "up0", protocol=4),
        ],
        6: [Route("unicast", "2001:db8:f::253", "m1", protocol=3)],
    }
    monkeypatch.setattr(rtnl, "routes", lambda family: routes[family])
    assert announce.installed(spec) == {"proxies": ["198.51.100.253"], "routes": ["198.51.100.253"]}


def test_reverse_path_is_judged_by_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    host = doctor.LiveHost()
    host._links = {"m1": LinkInfo("m1", True, True, 1500, 5)}
    monkeypatch.setattr(doctor, "_client_like_address", lambda uplink: "203.0.113.2")
    for code, failed in (
        (errno.EINVAL, True),
        (errno.EXDEV, True),
        (errno.ENETUNREACH, False),  # forwarding off / no route: other checks name it
        (errno.EHOSTUNREACH, False),
        (None, False),
    ):
        monkeypatch.setattr(rtnl, "route_get_errno", lambda dst, src, iif, c=code: c)
        got = host.reverse_path("198.51.100.253", "m1", "up0")
        assert (got is not None) == failed, (code, got)
        if failed:
            assert got is not None and errno.errorcode[code] in got  # type: ignore[index]
    assert host.reverse_path("198.51.100.253", "m9", "up0") is None  # no such port


def test_client_like_address() -> None:
    routes = [
        Route("local", "203.0.113.1", "up0", table="local"),
        Route("unicast", "198.51.100.8/29", "m1"),
        Route("unicast", "203.0.113.0/24", "up0"),
    ]
    assert doctor.client_like_address("up0", routes, {"203.0.113.1"}) == "203.0.113.2"
    assert doctor.client_like_address("up0", routes, set()) == "203.0.113.1"
    gw = [Route("unicast", "default", "up0", gateway="203.0.113.254"), *routes]
    assert doctor.client_like_address("up0", gw, set()) == "203.0.113.254"
    assert doctor.client_like_address("up9", routes, set()) == "192.0.2.1"

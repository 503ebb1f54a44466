"""Netlink messages -> vipctl's host facts (fake and real pyroute2 messages, no kernel),
and the decisions taken on them: protocol 211 and errnos compared as numbers."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from vipctl.core.spec import load_text
from vipctl.errors import KernelError
from vipctl.host import announce, doctor, rtnl
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


def test_real_pyroute2_link_message_round_trip() -> None:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["flags"] = 0x10003
    msg["attrs"] = [("IFLA_IFNAME", "m2"), ("IFLA_MTU", 9000)]
    msg.encode()
    back = ifinfmsg(msg.data)
    back.decode()
    assert rtnl.link_info(back) == LinkInfo("m2", True, True, 9000, 7)


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


def test_real_pyroute2_proxy_message_round_trip() -> None:
    msg = ndmsg()
    msg["family"] = 10
    msg["ifindex"] = 3
    msg["flags"] = 8
    msg["attrs"] = [("NDA_DST", "2001:db8:f::253"), ("NDA_PROTOCOL", 211)]
    msg.encode()
    back = ndmsg(msg.data)
    back.decode()
    assert rtnl.neigh_of(back, NAMES) == Neigh("2001:db8:f::253", "up0", None, 0, True, 211)


# --------------------------------------------------------------------------- live calls


class FakeIPR:
    def __init__(self, raise_: BaseException | None = None, links: list[Msg] | None = None):
        self.raise_ = raise_
        self.links = links if links is not None else [link()]

    def get_links(self) -> list[Msg]:
        if self.raise_:
            raise self.raise_
        return self.links

    def route(self, command: str, **kw: Any) -> None:
        if self.raise_:
            raise self.raise_


def fake_iproute(monkeypatch: pytest.MonkeyPatch, ipr: FakeIPR) -> None:
    @contextmanager
    def iproute() -> Iterator[FakeIPR]:
        yield ipr

    monkeypatch.setattr(rtnl, "iproute", iproute)


@pytest.mark.parametrize(
    "exc, words",
    [
        (NetlinkError(errno.EPERM), "EPERM"),
        (NetlinkDecodeError(ValueError("short NLA")), "undecodable"),
        (OSError(errno.EBADF, "Bad file descriptor"), "EBADF"),
        (ValueError("bad"), "malformed netlink data"),
    ],
)
def test_netlink_failures_are_kernel_errors(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, words: str
) -> None:
    fake_iproute(monkeypatch, FakeIPR(exc))
    with pytest.raises(KernelError, match="cannot list the interfaces") as got:
        rtnl.links()
    assert words in str(got.value)


def test_garbage_link_dump_is_a_kernel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_iproute(monkeypatch, FakeIPR(links=[link(IFLA_IFNAME=None)]))
    with pytest.raises(KernelError, match="malformed link message"):
        rtnl.links()


def test_route_get_returns_the_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_iproute(monkeypatch, FakeIPR(NetlinkError(errno.EXDEV)))
    assert rtnl.route_get_errno("203.0.113.2", "198.51.100.253", 5) == errno.EXDEV
    fake_iproute(monkeypatch, FakeIPR())
    assert rtnl.route_get_errno("203.0.113.2", "198.51.100.253", 5) is None


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

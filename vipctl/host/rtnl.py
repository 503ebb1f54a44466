"""What vipctl reads from and changes in rtnetlink (vipctl.host.netlink), in the calling
thread's network namespace: links, addresses, routes, neighbours and proxy-neighbour
entries.

Numbers stay numbers. A route's protocol, a proxy entry's NDA_PROTOCOL and the errno of a
refused request are compared as the kernel sends them, never as iproute2 prints them:
``ip`` names protocol 211 once /etc/iproute2/rt_protos does, and its error text is not
an interface.

The converters (``link_info``, ``address_of``, ``route_of``, ``neigh_of``) are pure
functions of one message, so unit tests hand them fake messages. A message without what
vipctl needs raises KernelError naming the message and the field; a refused request
raises KernelError naming the request and the errno.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from socket import AF_INET, AF_INET6, AF_UNSPEC
from typing import Any, NamedTuple, Protocol

from vipctl.core.net import family
from vipctl.errors import KernelError
from vipctl.host import netlink as nl
from vipctl.host.netlink import (
    IFA_F_NODAD,
    IFF_LOWER_UP,
    IFF_UP,
    NTF_PROXY,
    RT_TABLE_MAIN,
    NetlinkDecodeError,
    NetlinkError,
    NetlinkSocket,
)

NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_NOARP = 0x40

ROUTE_TYPES = {
    0: "unspec",
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
    10: "nat",
    11: "xresolve",
}
TABLES = {253: "default", 254: "main", 255: "local"}


class Message(Protocol):
    """What the converters use of a message (netlink.Message): header fields by key,
    attributes by name."""

    def __getitem__(self, key: str) -> Any: ...
    def get_attr(self, attr: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class LinkInfo:
    name: str
    admin_up: bool
    carrier: bool
    mtu: int
    index: int = 0


class Address(NamedTuple):
    address: str  # canonical text (IPv6 compressed)
    prefixlen: int
    dev: str


@dataclass(frozen=True)
class Route:
    type: str  # unicast, local, blackhole, unreachable, prohibit, ...
    dst: str  # prefix ("198.51.100.8/29"; a host route without its /32), "default" for 0/0
    dev: str = ""
    table: str = "main"
    protocol: int = 0  # RTPROT_* number (2 kernel, 3 boot, 4 static, 211 vipctl)
    gateway: str = ""
    metric: int = 0
    nexthops: tuple[str, ...] = ()  # the devices of a multipath route
    hop_gateways: tuple[str, ...] = ()  # and their gateways ("" for none), in that order


@dataclass(frozen=True)
class Neigh:
    dst: str
    dev: str
    lladdr: str | None
    state: int  # NUD_* bits (0 for proxy entries)
    proxy: bool
    protocol: int = 0  # NDA_PROTOCOL, 0 when absent

    @property
    def usable(self) -> bool:
        """Resolved the way `ip neigh show` lists it: a MAC, not failed/incomplete/noarp."""
        bad = NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP
        return bool(self.lladdr) and not self.state & bad


# --------------------------------------------------------------------------------------
# Messages -> data (pure)
# --------------------------------------------------------------------------------------


def _malformed(kind: str, what: str) -> KernelError:
    return KernelError(f"malformed {kind} message from the kernel: {what}")


def _field(msg: Message, key: str, kind: str) -> int:
    try:
        value = msg[key]
    except (KeyError, IndexError, TypeError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed(kind, f"no {key}")
    return value


def _attr(msg: Message, name: str) -> Any:
    try:
        return msg.get_attr(name)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _int_attr(msg: Message, name: str, kind: str, default: int = 0) -> int:
    value = _attr(msg, name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed(kind, f"{name} is {value!r}, not a number")
    return value


def _ip(msg: Message, name: str, kind: str) -> str | None:
    """The IP address in NLA `name` in canonical text; None when absent."""
    value = _attr(msg, name)
    if value is None:
        return None
    try:
        return str(ip_address(str(value)))
    except ValueError:
        raise _malformed(kind, f"{name} {value!r} is not an IP address") from None


def _required_ip(msg: Message, name: str, kind: str) -> str:
    value = _ip(msg, name, kind)
    if value is None:
        raise _malformed(kind, f"no {name}")
    return value


def _dev(names: Mapping[int, str], index: int) -> str:
    return names.get(index, f"if{index}")


def link_info(msg: Message) -> LinkInfo:
    """An RTM_NEWLINK message as LinkInfo."""
    kind = "link"
    index = _field(msg, "index", kind)
    flags = _field(msg, "flags", kind)
    name = _attr(msg, "IFLA_IFNAME")
    if not isinstance(name, str) or not name:
        raise _malformed(kind, f"no IFLA_IFNAME for ifindex {index}")
    return LinkInfo(
        name=name,
        admin_up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        mtu=_int_attr(msg, "IFLA_MTU", kind),
        index=index,
    )


def address_of(msg: Message, names: Mapping[int, str]) -> Address:
    """An RTM_NEWADDR message: the local address (IFA_LOCAL, else IFA_ADDRESS) as `ip`
    shows it, its prefix length and its interface."""
    kind = "address"
    index = _field(msg, "index", kind)
    prefixlen = _field(msg, "prefixlen", kind)
    local = _ip(msg, "IFA_LOCAL", kind) or _required_ip(msg, "IFA_ADDRESS", kind)
    return Address(local, prefixlen, _dev(names, index))


def route_of(msg: Message, names: Mapping[int, str]) -> Route:
    """An RTM_NEWROUTE message as Route (protocol and table as the kernel numbers them;
    the table named as `ip` does for main, local and default)."""
    kind = "route"
    dst_len = _field(msg, "dst_len", kind)
    rtype = _field(msg, "type", kind)
    proto = _field(msg, "proto", kind)
    table = _int_attr(msg, "RTA_TABLE", kind, default=_field(msg, "table", kind))
    dst = _required_ip(msg, "RTA_DST", kind) if dst_len else _ip(msg, "RTA_DST", kind)
    if dst is None:
        text = "default"
    else:
        try:
            net = ip_network(f"{dst}/{dst_len}", strict=False)
        except ValueError:
            raise _malformed(kind, f"bad destination {dst}/{dst_len}") from None
        text = str(net.network_address) if dst_len == net.max_prefixlen else str(net)
    oif = _int_attr(msg, "RTA_OIF", kind, default=-1)
    hops: list[str] = []
    gateways: list[str] = []
    multipath = _attr(msg, "RTA_MULTIPATH")
    if multipath is not None:
        if not isinstance(multipath, (list, tuple)):
            raise _malformed(kind, f"RTA_MULTIPATH of {text} is not a list of nexthops")
        for hop in multipath:
            hops.append(_dev(names, _field(hop, "oif", "nexthop")))
            gateways.append(_ip(hop, "RTA_GATEWAY", "nexthop") or "")
    return Route(
        type=ROUTE_TYPES.get(rtype, str(rtype)),
        dst=text,
        dev=_dev(names, oif) if oif >= 0 else "",
        table=TABLES.get(table, str(table)),
        protocol=proto,
        gateway=_ip(msg, "RTA_GATEWAY", kind) or "",
        metric=_int_attr(msg, "RTA_PRIORITY", kind),
        nexthops=tuple(hops),
        hop_gateways=tuple(gateways),
    )


def neigh_of(msg: Message, names: Mapping[int, str]) -> Neigh:
    """An RTM_NEWNEIGH message (a neighbour, or a proxy entry with NTF_PROXY)."""
    kind = "neighbour"
    index = _field(msg, "ifindex", kind)
    flags = _field(msg, "flags", kind)
    proxy = bool(flags & NTF_PROXY)
    state = 0 if proxy else _field(msg, "state", kind)
    dst = _required_ip(msg, "NDA_DST", kind)
    mac = _attr(msg, "NDA_LLADDR")
    return Neigh(
        dst=dst,
        dev=_dev(names, index),
        lladdr=str(mac).lower() if isinstance(mac, str) and mac else None,
        state=state,
        proxy=proxy,
        protocol=_int_attr(msg, "NDA_PROTOCOL", kind),
    )


# --------------------------------------------------------------------------------------
# The live namespace
# --------------------------------------------------------------------------------------


def describe(code: int) -> str:
    """`Operation not permitted (EPERM)`: the text is for people, the name is stable."""
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


@contextmanager
def _kernel(what: str) -> Iterator[None]:
    """Turn what rtnetlink or its decoding may raise into KernelError naming `what`."""
    try:
        yield
    except NetlinkError as exc:
        raise KernelError(f"{what}: {describe(exc.code)}") from None
    except NetlinkDecodeError as exc:
        raise KernelError(f"{what}: undecodable netlink message ({exc})") from None
    except OSError as exc:
        raise KernelError(f"{what}: rtnetlink: {describe(exc.errno or 0)}") from None
    except (struct.error, ValueError) as exc:
        raise KernelError(f"{what}: malformed netlink data ({exc})") from None


def iproute() -> AbstractContextManager[NetlinkSocket]:
    """The cached rtnetlink socket of this namespace and thread (netlink.connection)."""
    return nl.connection(nl.NETLINK_ROUTE)


def _family(family: int) -> int:
    return {0: AF_UNSPEC, 4: AF_INET, 6: AF_INET6}[family]


def _links(sock: NetlinkSocket) -> list[LinkInfo]:
    return [link_info(m) for m in sock.dump(nl.RTM_GETLINK, nl.ifinfomsg())]


def _names(links: Iterable[LinkInfo]) -> dict[int, str]:
    return {link.index: link.name for link in links}


def links() -> dict[str, LinkInfo]:
    """Every interface of this namespace by name."""
    with _kernel("cannot list the interfaces"), iproute() as sock:
        return {link.name: link for link in _links(sock)}


def addresses(family: int = 0) -> list[Address]:
    """Every address of this namespace (family 4, 6, or 0 for both)."""
    with _kernel("cannot list the addresses"), iproute() as sock:
        names = _names(_links(sock))
        found = sock.dump(nl.RTM_GETADDR, nl.ifaddrmsg(_family(family)))
        return [address_of(m, names) for m in found]


def routes(family: int) -> list[Route]:
    """Every route of family 4 or 6, in every table (`ip route show table all`): a dump
    with rtm_table 0 (RT_TABLE_UNSPEC), which the kernel answers from every table."""
    with _kernel(f"cannot list the IPv{family} routes"), iproute() as sock:
        names = _names(_links(sock))
        found = sock.dump(nl.RTM_GETROUTE, nl.rtmsg(_family(family)))
        return [route_of(m, names) for m in found]


def neighbours(family: int = 0) -> list[Neigh]:
    """The neighbour table (no proxy entries)."""
    with _kernel("cannot list the neighbours"), iproute() as sock:
        names = _names(_links(sock))
        found = [neigh_of(m, names) for m in sock.dump(nl.RTM_GETNEIGH, nl.ndmsg(_family(family)))]
    return [n for n in found if not n.proxy]


def proxies(family: int = 0) -> list[Neigh]:
    """The proxy-neighbour entries (`ip neigh show proxy`): a dump with NTF_PROXY set in
    the request's ndm_flags, which selects the kernel's proxy table."""
    with _kernel("cannot list the proxy neighbour entries"), iproute() as sock:
        names = _names(_links(sock))
        request = nl.ndmsg(_family(family), flags=NTF_PROXY)
        found = [neigh_of(m, names) for m in sock.dump(nl.RTM_GETNEIGH, request)]
    return [n for n in found if n.proxy]


def _host(address: str) -> tuple[int, int, bytes]:
    """(AF_*, full prefix length, packed) of one address."""
    packed = nl.packed_ip(str(ip_address(address)))
    return (AF_INET, 32, packed) if len(packed) == 4 else (AF_INET6, 128, packed)


def route_get_errno(dst: str, src: str, iif: int) -> int | None:
    """`ip route get DST from SRC iif IIF`: None when the kernel routes it, else the errno
    it refused with (EINVAL/EXDEV: the reverse-path filter or a martian source)."""
    with _kernel(f"cannot look up the route to {dst} from {src}"), iproute() as sock:
        fam, plen, packed_dst = _host(dst)
        _fam, src_len, packed_src = _host(src)
        request = (
            nl.rtmsg(fam, dst_len=plen, src_len=src_len)
            + nl.attr(nl.RTA_DST, packed_dst)
            + nl.attr(nl.RTA_SRC, packed_src)
            + nl.attr_u32(nl.RTA_IIF, iif)
        )
        try:
            sock.request(nl.RTM_GETROUTE, request)
        except NetlinkError as exc:
            return int(exc.code)
    return None


_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)


def _proxy(dst: str, ifindex: int, state: int = 0) -> bytes:
    fam, _plen, packed = _host(dst)
    return nl.ndmsg(fam, ifindex, state=state, flags=NTF_PROXY) + nl.attr(nl.NDA_DST, packed)


def proxy_replace(dst: str, ifindex: int, dev: str, protocol: int) -> None:
    """`ip neigh replace proxy DST dev DEV protocol PROTOCOL`."""
    with _kernel(f"cannot add the proxy entry {dst} on {dev}"), iproute() as sock:
        request = _proxy(dst, ifindex, nl.NUD_PERMANENT) + nl.attr_u8(nl.NDA_PROTOCOL, protocol)
        sock.request(nl.RTM_NEWNEIGH, request, nl.NLM_F_CREATE | nl.NLM_F_REPLACE)


def proxy_delete(dst: str, ifindex: int, dev: str) -> bool:
    """`ip neigh del proxy DST dev DEV`; False when there was no such entry."""
    with _kernel(f"cannot delete the proxy entry {dst} on {dev}"), iproute() as sock:
        try:
            sock.request(nl.RTM_DELNEIGH, _proxy(dst, ifindex))
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise
    return True


def _route(dst: str, protocol: int, metric: int, scope: int, rtype: int) -> bytes:
    """rtmsg (table main) + RTA_DST, RTA_TABLE and RTA_PRIORITY of a route to `dst`."""
    address, plen = _split(dst)
    fam, _full, packed = _host(address)
    header = nl.rtmsg(
        fam, dst_len=plen, table=RT_TABLE_MAIN, proto=protocol, scope=scope, type=rtype
    )
    return (
        header
        + nl.attr(nl.RTA_DST, packed)
        + nl.attr_u32(nl.RTA_TABLE, RT_TABLE_MAIN)
        + nl.attr_u32(nl.RTA_PRIORITY, metric)
    )


def multipath_replace(dst: str, oifs: Sequence[int], protocol: int, metric: int) -> None:
    """`ip route replace DST proto P metric M nexthop dev A nexthop dev B ...` (no gateway,
    table main, scope global, each nexthop of weight 1)."""
    with _kernel(f"cannot install the route {dst}"), iproute() as sock:
        hops = b"".join(nl.rtnexthop(oif) for oif in oifs)
        request = _route(dst, protocol, metric, nl.RT_SCOPE_UNIVERSE, nl.RTN_UNICAST)
        request += nl.attr(nl.RTA_MULTIPATH, hops)
        sock.request(nl.RTM_NEWROUTE, request, nl.NLM_F_CREATE | nl.NLM_F_REPLACE)


def route_delete(dst: str, protocol: int, metric: int) -> bool:
    """`ip route del DST proto P metric M` (table main); False when there was none."""
    with _kernel(f"cannot delete the route {dst}"), iproute() as sock:
        # scope NOWHERE and type 0 match a route of any scope and type, as `ip route del`
        request = _route(dst, protocol, metric, nl.RT_SCOPE_NOWHERE, 0)
        try:
            sock.request(nl.RTM_DELROUTE, request)
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise
    return True


def set_up(index: int, dev: str) -> None:
    """`ip link set DEV up`."""
    with _kernel(f"cannot bring {dev} up"), iproute() as sock:
        sock.request(nl.RTM_NEWLINK, nl.ifinfomsg(index=index, flags=IFF_UP, change=IFF_UP))


def _split(prefix: str) -> tuple[str, int]:
    net = ip_network(prefix, strict=False)
    address, _, plen = prefix.partition("/")
    return str(ip_address(address)), int(plen) if plen else net.max_prefixlen


def _addr(index: int, address: str, plen: int, flags: int = 0) -> bytes:
    """ifaddrmsg + IFA_LOCAL and IFA_ADDRESS (the same address: no peer), and IFA_FLAGS
    when there are flags (the u32 the kernel prefers over ifa_flags)."""
    fam, _full, packed = _host(address)
    request = nl.ifaddrmsg(fam, plen, flags=flags & 0xFF, index=index)
    request += nl.attr(nl.IFA_LOCAL, packed) + nl.attr(nl.IFA_ADDRESS, packed)
    return request + (nl.attr_u32(nl.IFA_FLAGS, flags) if flags else b"")


def addr_replace(index: int, dev: str, prefix: str) -> None:
    """`ip addr replace PREFIX dev DEV` (IPv6 with nodad: no duplicate address detection)."""
    address, plen = _split(prefix)
    flags = IFA_F_NODAD if family(address) == 6 else 0
    with _kernel(f"cannot add {prefix} to {dev}"), iproute() as sock:
        request = _addr(index, address, plen, flags)
        sock.request(nl.RTM_NEWADDR, request, nl.NLM_F_CREATE | nl.NLM_F_REPLACE)


def addr_delete(index: int, dev: str, prefix: str) -> bool:
    """`ip addr del PREFIX dev DEV`; False when the address was not there."""
    address, plen = _split(prefix)
    with _kernel(f"cannot delete {prefix} from {dev}"), iproute() as sock:
        try:
            sock.request(nl.RTM_DELADDR, _addr(index, address, plen))
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise
    return True

"""Links, neighbours and network namespaces of this host, through rtnetlink (pyroute2).

Everything here works in the network namespace of the calling thread. One rtnetlink socket
is kept per namespace and thread (a new one costs 5-25 ms under load, which a failover
would wait for; pyroute2 sockets drive an asyncio loop of their own, so no sharing across
threads).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from vipctl.core.spec import Spec
from vipctl.errors import KernelError
from vipctl.render.wiring import NO_MAC, Wiring

# REACHABLE STALE DELAY PROBE NOARP PERMANENT
NUD_RESOLVED = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80

_IPR: dict[tuple[int, int], tuple[threading.Thread, Any]] = {}
_IPR_LOCK = threading.Lock()


def netns_inode() -> int:
    """Identifies the network namespace of the calling thread (for per-namespace caches)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextmanager
def iproute() -> Iterator[Any]:
    """The cached rtnetlink socket of this namespace and thread; calls are serialized."""
    me = threading.current_thread()
    key = (netns_inode(), threading.get_ident())
    with _IPR_LOCK:
        entry = _IPR.get(key)
        if entry is None or entry[0] is not me:
            from pyroute2 import IPRoute  # ~100 ms to import: only when a socket is needed

            _drop_ended_threads()
            entry = _IPR[key] = (me, IPRoute())
        ipr = entry[1]
        try:
            yield ipr
        except (OSError, RuntimeError):
            _IPR.pop(key, None)
            ipr.close()
            raise


def _drop_ended_threads() -> None:
    """Close the sockets of threads that have ended (the caller holds _IPR_LOCK). A thread
    that joins a namespace for one call (the lab's member setup) would otherwise leave its
    socket open, and the namespace alive with it; a new thread may also reuse the ident."""
    for key, (thread, ipr) in list(_IPR.items()):
        if not thread.is_alive():
            del _IPR[key]
            with contextlib.suppress(Exception):
                ipr.close()


def names() -> dict[str, int]:
    """Every interface of this namespace: name -> ifindex (one dump of every link)."""
    with iproute() as ipr:
        return {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in ipr.get_links()}


def ifindex(name: str) -> int:
    """The ifindex of interface `name`; KernelError when it does not exist."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise KernelError(f"interface {name} does not exist") from None


def port_ifindex(spec: Spec) -> dict[str, int]:
    """ifindex of the uplink and of every member port that exists."""
    out = {}
    for name in {spec.uplink, *(m.port for m in spec.members)}:
        try:
            out[name] = socket.if_nametoindex(name)  # an ioctl each: no netlink dump
        except OSError:
            continue
    return out


def poke_neighbour(address: IPv4Address | IPv6Address, port: str) -> None:
    """Make the kernel resolve a neighbour on `port`: one empty datagram to the discard
    port (9) of `address`, sent out of that interface."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, port.encode())
        s.sendto(b"", (str(address), 9))


def neighbour(ipr: Any, index: int, address: IPv4Address | IPv6Address) -> str | None:
    """The resolved MAC of `address` on interface `index`, None when not (yet) known."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    # filtered by the kernel (NDA_DST + ifindex): no dump of the whole neighbour table
    for msg in ipr.get_neighbours(family=family, ifindex=index, dst=str(address)):
        if msg.get_attr("NDA_DST") != str(address):
            continue
        mac = msg.get_attr("NDA_LLADDR")
        if mac and msg["state"] & NUD_RESOLVED and mac != NO_MAC:
            return str(mac).lower()
    return None


def wiring(
    spec: Spec,
    resolve_timeout: float = 1.5,
    optional: frozenset[str] | set[str] = frozenset(),
) -> Wiring:
    """Each port's ifindex and each member's MAC; KernelError naming what is missing.

    Members in `optional` (known to be down) are not waited for: a down member gets no
    packet (it owns no bucket and its pins are released), so its MAC may be unknown
    (NO_MAC) until it comes back, and its port may even be gone (then the ruleset leaves
    that port out).
    """
    index = port_ifindex(spec)
    missing = []
    if spec.uplink not in index:
        missing.append(f"uplink '{spec.uplink}' does not exist")
    for m in spec.members:
        if m.port not in index and m.name not in optional:
            missing.append(f"port '{m.port}' of member {m.name} does not exist")
    if missing:
        raise KernelError("; ".join(missing) + " (nothing changed)")
    macs: dict[str, str] = {}
    pending = []
    with iproute() as ipr:
        for m in spec.members:
            if m.port not in index:
                continue
            if m.mac:
                macs[m.name] = m.mac.lower()
            elif m.name in optional:
                macs[m.name] = neighbour(ipr, index[m.port], m.address) or NO_MAC
            else:
                mac = neighbour(ipr, index[m.port], m.address)
                if mac is None:
                    poke_neighbour(m.address, m.port)
                    pending.append(m)
                else:
                    macs[m.name] = mac
        deadline = time.monotonic() + resolve_timeout
        for m in pending:
            mac = neighbour(ipr, index[m.port], m.address)
            while mac is None and time.monotonic() < deadline:
                time.sleep(0.02)
                mac = neighbour(ipr, index[m.port], m.address)
            if mac is None:
                raise KernelError(
                    f"cannot resolve the MAC of member {m.name} ({m.address}) on port "
                    f"{m.port}: no neighbour answer within {resolve_timeout:g}s. Is the "
                    f"member up and on that port? (or set members[].mac) (nothing changed)"
                )
            macs[m.name] = mac
    return Wiring(ifindex=index, macs=macs)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block inside the existing network namespace `name` (the calling thread
    only; libnftables and netlink sockets bind to the namespace current at creation).
    A name that does not exist is an error, never a new namespace."""
    if not name:
        yield
        return
    from pyroute2 import netns

    if name not in netns.listnetns():
        raise KernelError(f"network namespace {name} does not exist")
    fd = open("/proc/thread-self/ns/net")  # noqa: SIM115
    try:
        netns.setns(name, flags=0)
        yield
    finally:
        netns.setns(fd)
        fd.close()

"""Links, neighbours and network namespaces of this host, through rtnetlink
(vipctl.host.netlink).

Everything here works in the network namespace of the calling thread, on the rtnetlink
socket netlink.connection() keeps per namespace and thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from vipctl.core.spec import Spec
from vipctl.errors import KernelError
from vipctl.host import netlink as nl
from vipctl.host.netlink import NetlinkDecodeError, NetlinkError, NetlinkSocket
from vipctl.host.netlink import netns_inode as netns_inode
from vipctl.render.wiring import NO_MAC, Wiring

# REACHABLE STALE DELAY PROBE NOARP PERMANENT
NUD_RESOLVED = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80
NETNS_DIR = "/run/netns"


@contextmanager
def _kernel(what: str) -> Iterator[None]:
    """What the netlink calls below may raise, as KernelError naming `what`."""
    try:
        yield
    except NetlinkError as exc:
        code = errno.errorcode.get(exc.code, exc.code)
        raise KernelError(f"{what}: {os.strerror(exc.code)} ({code})") from None
    except NetlinkDecodeError as exc:
        raise KernelError(f"{what}: undecodable netlink message ({exc})") from None
    except OSError as exc:
        raise KernelError(f"{what}: rtnetlink: {exc.strerror or exc}") from None


def names() -> dict[str, int]:
    """Every interface of this namespace: name -> ifindex (one dump of every link)."""
    with _kernel("cannot list the interfaces"), nl.connection() as sock:
        found = sock.dump(nl.RTM_GETLINK, nl.ifinfomsg())
    return {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in found}


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


SIOCGIFHWADDR = 0x8927


def hwaddr(name: str) -> str:
    """The MAC of interface `name` (one ioctl, in the calling thread's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()))
        except OSError as exc:
            raise KernelError(f"cannot read the MAC of {name}: {exc.strerror}") from None
    return ":".join(f"{b:02x}" for b in got[18:24])


def poke_neighbour(address: IPv4Address | IPv6Address, port: str) -> None:
    """Make the kernel resolve a neighbour on `port`: one empty datagram to the discard
    port (9) of `address`, sent out of that interface."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, port.encode())
        s.sendto(b"", (str(address), 9))


def neighbour(sock: NetlinkSocket, index: int, address: IPv4Address | IPv6Address) -> str | None:
    """The resolved MAC of `address` on interface `index`, None when not (yet) known: one
    RTM_GETNEIGH get with NDA_DST and ndm_ifindex, as `ip neigh get` (no dump of the whole
    neighbour table); ENOENT when the kernel has no entry."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    request = nl.ndmsg(family, index) + nl.attr(nl.NDA_DST, address.packed)
    try:
        found = sock.request(nl.RTM_GETNEIGH, request)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None
        raise
    for msg in found:
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
    with _kernel("cannot read the neighbour table"), nl.connection() as sock:
        for m in spec.members:
            if m.port not in index:
                continue
            if m.mac:
                macs[m.name] = m.mac.lower()
            elif m.name in optional:
                macs[m.name] = neighbour(sock, index[m.port], m.address) or NO_MAC
            else:
                mac = neighbour(sock, index[m.port], m.address)
                if mac is None:
                    poke_neighbour(m.address, m.port)
                    pending.append(m)
                else:
                    macs[m.name] = mac
        deadline = time.monotonic() + resolve_timeout
        for m in pending:
            mac = neighbour(sock, index[m.port], m.address)
            while mac is None and time.monotonic() < deadline:
                time.sleep(0.02)
                mac = neighbour(sock, index[m.port], m.address)
            if mac is None:
                raise KernelError(
                    f"cannot resolve the MAC of member {m.name} ({m.address}) on port "
                    f"{m.port}: no neighbour answer within {resolve_timeout:g}s. Is the "
                    f"member up and on that port? (or set members[].mac) (nothing changed)"
                )
            macs[m.name] = mac
    return Wiring(ifindex=index, macs=macs, uplink_mac=hwaddr(spec.uplink))


_LIBC: Any = None


def _setns(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread (Python 3.11 has no os.setns)."""
    global _LIBC
    import ctypes  # only here: entering a namespace is rare

    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.setns(fd, nl.CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def namespaces() -> list[str]:
    """The named network namespaces (`ip netns list`: the files in /run/netns)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block inside the existing network namespace `name` (the calling thread
    only; libnftables and netlink sockets bind to the namespace current at creation).
    A name that does not exist is an error, never a new namespace."""
    if not name:
        yield
        return
    if name not in namespaces():
        raise KernelError(f"network namespace {name} does not exist")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KernelError(f"network namespace {name} does not exist") from None
        try:
            _setns(target)
        except OSError as exc:
            raise KernelError(f"cannot enter network namespace {name}: {exc.strerror}") from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)  # an error here leaves the thread elsewhere: let it be raised
    finally:
        os.close(home)

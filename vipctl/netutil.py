"""Small socket helpers shared by the kernel shell and the doctor (no netlink here)."""

from __future__ import annotations

import contextlib
import socket
from ipaddress import IPv4Address, IPv6Address


def poke_neighbour(address: IPv4Address | IPv6Address, port: str) -> None:
    """Make the kernel resolve a neighbour on `port`: one empty datagram to the discard
    port (9) of `address`, sent out of that interface."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, port.encode())
        s.sendto(b"", (str(address), 9))

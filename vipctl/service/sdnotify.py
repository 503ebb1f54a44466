"""sd_notify(3) without libsystemd: one datagram on the AF_UNIX socket in $NOTIFY_SOCKET.

The protocol is newline-separated KEY=VALUE fields in one SOCK_DGRAM message. A leading
'@' in the socket name means the Linux abstract namespace (replaced by a NUL byte).
Abstract sockets belong to a network namespace; systemd's own /run/systemd/notify is a path,
so it is reachable from any namespace.
"""

from __future__ import annotations

import os
import socket

_sock: socket.socket | None = None
_sock_for: str | None = None


def _send(address: str, payload: bytes) -> None:
    """On the socket kept open from the last call: a daemon out of file descriptors must
    still be able to tell systemd so (STATUS=probes failing locally: too many open files)."""
    global _sock, _sock_for
    if _sock is None or _sock_for != address:
        if _sock is not None:
            _sock.close()
        _sock = None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(address)
        except OSError:
            s.close()
            raise
        _sock, _sock_for = s, address
    # MSG_DONTWAIT: a receiver that does not read (its queue holds only
    # net.unix.max_dgram_qlen = 10 datagrams) must never stall the daemon's loop.
    _sock.send(payload, socket.MSG_DONTWAIT)


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd; False when not under systemd
    (no $NOTIFY_SOCKET) or the socket is gone. Never raises: notification is best effort."""
    global _sock
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        _send(address, payload)
    except BlockingIOError:  # the receiver's queue is full: the message is dropped
        return False
    except OSError:  # e.g. systemd re-created its socket (ECONNREFUSED): connect again once
        if _sock is not None:
            _sock.close()
            _sock = None
        try:
            _send(address, payload)
        except OSError:
            return False
    return True


def watchdog_seconds() -> float | None:
    """The watchdog period systemd expects pings within (WatchdogSec=), or None.

    WATCHDOG_PID, when set, names the process the watchdog is meant for (a child started
    by the service must not ping on its parent's behalf).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None

"""Member-side echo service for the lab: ``python -m vipctl.lab.echo --name web1 --port 7000``.

UDP: every datagram to the port (any local address: VIPs or the member's own) is answered
with ``b"<name> " + payload``, sent FROM the address the datagram was sent TO (IP_PKTINFO /
IPV6_PKTINFO), so a client talking to the VIP gets its reply from the VIP.

TCP: every received line is answered with ``<name> <line>``; connections stay open until
the client closes them (long-lived connection tests).

Single process, one selector loop, non-blocking sockets; UDP sockets drain until EAGAIN.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field

IP_PKTINFO = 8  # linux/in.h; not exported by Python 3.11's socket module
SOL_IP = 0
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
BUF = 16 << 20


@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)


def _bigbuf(s: socket.socket) -> None:
    for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, BUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, fallback, BUF)


def udp_sockets(port: int, bind4: str = "0.0.0.0", bind6: str = "::") -> list[socket.socket]:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(SOL_IP, IP_PKTINFO, 1)
    _bigbuf(s4)
    s4.bind((bind4, port))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    _bigbuf(s6)
    s6.bind((bind6, port))
    for s in (s4, s6):
        s.setblocking(False)
    return [s4, s6]


def tcp_sockets(port: int) -> list[socket.socket]:
    out = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        s.listen(4096)
        s.setblocking(False)
        out.append(s)
    return out


def _udp_drain(s: socket.socket, prefix: bytes, limit: int = 4096) -> None:
    """Answer queued datagrams (at most ``limit`` per call, so TCP is not starved)."""
    v6 = s.family == socket.AF_INET6
    anc = socket.CMSG_SPACE(20 if v6 else 12)
    for _ in range(limit):
        try:
            data, cmsgs, _flags, peer = s.recvmsg(65535, anc)
        except (BlockingIOError, InterruptedError):
            return
        reply_anc = []
        for level, ctype, cdata in cmsgs:
            if v6 and level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO:
                # struct in6_pktinfo { in6_addr addr; int ifindex }: reply from addr.
                reply_anc = [(level, ctype, cdata[:16] + b"\0\0\0\0")]
            elif not v6 and level == SOL_IP and ctype == IP_PKTINFO:
                # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr }
                reply_anc = [(level, ctype, struct.pack("=i4s4s", 0, cdata[8:12], b"\0" * 4))]
        with contextlib.suppress(BlockingIOError, OSError):
            s.sendmsg([prefix, data], reply_anc, 0, peer)


def _raise_nofile() -> None:
    """Thousands of long-lived connections (bench/chaos) need more than the usual soft
    limit of 1024 open files: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(name: str, port: int, *, ready: bool = False) -> None:
    prefix = name.encode() + b" "
    _raise_nofile()
    sel = selectors.DefaultSelector()
    udps = udp_sockets(port)
    listeners = tcp_sockets(port)
    for s in udps:
        sel.register(s, selectors.EVENT_READ, "udp")
    for s in listeners:
        sel.register(s, selectors.EVENT_READ, "listen")
    conns: dict[int, _Conn] = {}

    def on_term(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if ready:
        os.write(1, b"ready\n")
        # Let go of the pipe: whoever waited for "ready" may close it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)

    try:
        _loop(sel, conns, prefix)
    finally:
        for c in list(conns.values()):
            c.sock.close()
        for s in udps + listeners:
            s.close()


def _loop(sel: selectors.BaseSelector, conns: dict[int, _Conn], prefix: bytes) -> None:
    def close(c: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        conns.pop(c.sock.fileno(), None)
        c.sock.close()

    def flush(c: _Conn) -> None:
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except BlockingIOError:
                break
            except OSError:
                close(c)
                return
            del c.outbuf[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0)
        sel.modify(c.sock, want, c)

    while True:
        events = sel.select(None)
        for key, mask in events:
            kind = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "udp":
                _udp_drain(sock, prefix)
            elif kind == "listen":
                for _ in range(256):
                    try:
                        cs, _addr = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    cs.setblocking(False)
                    c = _Conn(cs)
                    conns[cs.fileno()] = c
                    sel.register(cs, selectors.EVENT_READ, c)
            else:
                assert isinstance(kind, _Conn)
                c = kind
                if mask & selectors.EVENT_READ:
                    try:
                        data = c.sock.recv(65536)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        close(c)
                        continue
                    if data == b"":
                        close(c)
                        continue
                    if data:
                        c.inbuf += data
                        while True:
                            nl = c.inbuf.find(b"\n")
                            if nl < 0:
                                break
                            c.outbuf += prefix + c.inbuf[: nl + 1]
                            del c.inbuf[: nl + 1]
                if c.sock.fileno() >= 0 and (c.outbuf or mask & selectors.EVENT_WRITE):
                    flush(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vipctl.lab.echo", description=__doc__)
    ap.add_argument("--name", required=True, help="member name put in front of every reply")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--ready", action="store_true", help="print 'ready' once listening")
    args = ap.parse_args(argv)
    serve(args.name, args.port, ready=args.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The chaos run's load, run inside the lab's client namespace: long-lived TCP connections
or a numbered UDP stream, one selector loop per process (a few processes carry 10000
connections on 2 CPUs).

    ip netns exec PREFIX-client python -m bench.chaos.load tcp --vip V --first 0 --initial 2500 \
        --new-rate 1.5 --out FILE
    ip netns exec PREFIX-client python -m bench.chaos.load udp --vip V --flows 1024 --out FILE

TCP: each connection comes from its own source address (10.99.0.0/16 is local on the
client's lo), sends ``<seq> <id>\\n`` once a second and expects ``<member> <seq> <id>\\n``
back, from the member that answered its first message. A connection ends as ``kept`` (open
and answering when the run stops), or fails: ``reset`` (ECONNRESET), ``eof`` (closed by the
far end), ``moved`` (an echo from another member), ``stall`` (a message unanswered for
``--stall`` seconds), ``refused``/``connect-timeout``/``connect-error`` (never opened).
UDP: ``--flows`` sources each send ``U <flow> <seq>`` every ``--udp-interval`` seconds; each
datagram should be answered exactly once.

Protocol with the orchestrator: the process prints ``ready`` on stdout once its initial
connections are open (or failed), then runs until ``stop`` arrives on stdin; it then writes
its records (JSON lines) to ``--out`` and prints ``done``. Times are wall-clock
(``time.time()``), shared with the orchestrator.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

IP_PKTINFO = 8
IP_FREEBIND = 15
SOL_IP = 0
TCP_SOURCES = "10.99.0.0"  # connection k comes from TCP_SOURCES + k (below UDP_SOURCES)
UDP_SOURCES = "10.99.240.0"  # flow k comes from UDP_SOURCES + k (1024 flows: .240.0-.243.255)
MAX_TCP_SOURCES = 240 * 256


def tcp_source(k: int) -> str:
    if not 0 <= k < MAX_TCP_SOURCES:
        raise ValueError(f"TCP source index {k} out of 0..{MAX_TCP_SOURCES - 1}")
    return str(ipaddress.IPv4Address(TCP_SOURCES) + k)


def udp_source(k: int) -> str:
    return str(ipaddress.IPv4Address(UDP_SOURCES) + k)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- TCP


@dataclass
class Conn:
    id: int
    src: str
    sock: socket.socket
    t_start: float
    state: str = "connecting"  # connecting | open
    member: str | None = None
    t_open: float = 0.0  # connected
    t_first: float = 0.0  # first echo
    seq: int = 0  # last sent
    acked: int = 0  # last echoed
    pending: deque[tuple[int, float]] = field(default_factory=deque)  # (seq, sent) unanswered
    inbuf: bytes = b""
    phase: float = field(default_factory=random.random)

    @property
    def unanswered_since(self) -> float | None:
        """Send time of the oldest message not echoed yet."""
        return self.pending[0][1] if self.pending else None


class TcpLoad:
    def __init__(self, a: argparse.Namespace) -> None:
        self.vip = a.vip
        self.port = a.port
        self.interval = a.interval
        self.stall = a.stall
        self.connect_timeout = a.connect_timeout
        self.next_src = a.first
        self.last_src = a.first + a.pool
        self.initial = a.initial
        self.ramp = a.ramp
        self.new_rate = a.new_rate
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}  # by id
        self.timers: list[tuple[float, int, int]] = []  # (when, kind 0 send / 1 connect, id)
        self.records: list[dict[str, Any]] = []
        self.sent = 0
        self.echoed = 0

    # ----------------------------------------------------------------- life cycle
    def open_one(self, now: float) -> None:
        if self.next_src >= self.last_src:
            return
        k = self.next_src
        self.next_src += 1
        src = tcp_source(k)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(SOL_IP, IP_FREEBIND, 1)
            s.bind((src, 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((self.vip, self.port))
        except OSError as e:
            s.close()
            self.records.append(
                {
                    "id": k,
                    "src": src,
                    "end": "connect-error",
                    "t_start": now,
                    "t_end": now,
                    "why": str(e),
                }
            )
            return
        c = Conn(k, src, s, now)
        self.conns[k] = c
        self.sel.register(s, selectors.EVENT_WRITE, c)
        heapq.heappush(self.timers, (now + self.connect_timeout, 1, k))

    def fail(self, c: Conn, end: str, t: float, why: str = "") -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        with contextlib.suppress(OSError):
            # RST, not FIN: nothing lingers on a path that may be broken
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        self.conns.pop(c.id, None)
        self.records.append(self._record(c, end, t, why))

    def _record(self, c: Conn, end: str, t: float, why: str = "") -> dict[str, Any]:
        return {
            "id": c.id,
            "src": c.src,
            "member": c.member,
            "end": end,
            "why": why,
            "t_start": round(c.t_start, 3),
            "t_open": round(c.t_open, 3),
            "t_end": round(t, 3),
            "seq": c.seq,
            "acked": c.acked,
        }

    def connected(self, c: Conn, now: float) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            end = "refused" if err == 111 else "connect-error"
            self.fail(c, end, now, os.strerror(err))
            return
        c.state = "open"
        c.t_open = now
        self.sel.modify(c.sock, selectors.EVENT_READ, c)
        self.send(c, now)  # the first message at once: its echo names the member
        heapq.heappush(self.timers, (now + self.interval * (0.5 + c.phase), 0, c.id))

    def send(self, c: Conn, now: float) -> None:
        if c.unanswered_since is not None and now - c.unanswered_since > self.stall:
            self.fail(c, "stall", c.unanswered_since, f"no echo for {self.stall:g} s")
            return
        c.seq += 1
        try:
            c.sock.send(f"{c.seq} {c.id}\n".encode())
        except BlockingIOError:
            c.seq -= 1
            return
        except ConnectionResetError:
            self.fail(c, "reset", now, "send")
            return
        except OSError as e:
            self.fail(c, "reset" if e.errno == 32 else "error", now, f"send: {e}")
            return
        self.sent += 1
        c.pending.append((c.seq, now))

    def readable(self, c: Conn, now: float) -> None:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.fail(c, "reset", now, "recv")
            return
        except OSError as e:
            self.fail(c, "error", now, f"recv: {e}")
            return
        if not data:
            self.fail(c, "eof", now, "closed by the far end")
            return
        c.inbuf += data
        while b"\n" in c.inbuf:
            line, _, c.inbuf = c.inbuf.partition(b"\n")
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit():
                self.fail(c, "bad", now, f"bad echo {line[:60]!r}")
                return
            name, seq = parts[0].decode(errors="replace"), int(parts[1])
            if c.member is None:
                c.member = name
                c.t_first = now
            elif name != c.member:
                self.fail(c, "moved", now, f"echo from {name}, was {c.member}")
                return
            self.echoed += 1
            c.acked = seq
            while c.pending and c.pending[0][0] <= seq:
                c.pending.popleft()

    # ----------------------------------------------------------------- loop
    def timer(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, kind, cid = heapq.heappop(self.timers)
            c = self.conns.get(cid)
            if c is None:
                continue
            if kind == 1:
                if c.state == "connecting":
                    self.fail(c, "connect-timeout", now, f"{self.connect_timeout:g} s")
                continue
            self.send(c, now)
            if cid in self.conns:
                heapq.heappush(self.timers, (now + self.interval, 0, cid))

    def poll(self, until: float) -> bool:
        """Run the loop until ``until`` (wall clock); True if ``stop`` arrived."""
        while True:
            now = time.time()
            if now >= until:
                return False
            wait = until - now
            if self.timers:
                wait = min(wait, max(0.0, self.timers[0][0] - now))
            for key, mask in self.sel.select(min(wait, 0.05)):
                if key.data == "stdin":  # "stop", or EOF: the orchestrator is gone
                    os.read(key.fd, 1024)
                    return True
                c = key.data
                if c.state == "connecting":
                    self.connected(c, time.time())
                elif mask & selectors.EVENT_READ:
                    self.readable(c, time.time())
            self.timer(time.time())

    def run(self) -> None:
        stdin_fd = sys.stdin.fileno()
        # initial connections, at `ramp` per second
        start = time.time()
        for i in range(self.initial):
            self.open_one(time.time())
            if self.poll(start + (i + 1) / self.ramp):
                break
        # wait until every initial connection answered (or failed), at most 30 s
        deadline = time.time() + 30
        while time.time() < deadline and any(c.member is None for c in self.conns.values()):
            self.poll(time.time() + 0.1)
        print("ready", flush=True)
        self.sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        stopped = False
        gap = 1.0 / self.new_rate if self.new_rate > 0 else 3600.0
        while not stopped:
            stopped = self.poll(time.time() + gap)
            if not stopped:
                self.open_one(time.time())

    def finish(self) -> list[dict[str, Any]]:
        now = time.time()
        for c in list(self.conns.values()):
            if c.state != "open" and now - c.t_start < self.connect_timeout:
                self.fail(c, "unfinished", now, "still connecting at the end")
            elif c.state != "open":
                self.fail(c, "connect-timeout", now, "still connecting at the end")
            elif c.unanswered_since is not None and now - c.unanswered_since > self.stall:
                self.fail(c, "stall", c.unanswered_since, "unanswered at the end")
            else:
                self.records.append(self._record(c, "kept", now))
                c.sock.close()
        self.records.append({"summary": True, "sent": self.sent, "echoed": self.echoed})
        return self.records


# --------------------------------------------------------------------------- UDP


class UdpLoad:
    """``flows`` sources, each a numbered datagram every ``interval`` seconds."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.vip = a.vip
        self.port = a.port
        self.flows = a.flows
        self.interval = a.udp_interval
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (33, 32):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
        self.sock.setsockopt(SOL_IP, IP_FREEBIND, 1)
        self.sock.bind(("0.0.0.0", a.udp_port))
        self.sock.setblocking(False)
        self.srcs = [udp_source(k) for k in range(self.flows)]
        self.pkt = [struct.pack("=i4s4s", 0, socket.inet_aton(s), b"\0" * 4) for s in self.srcs]
        self.sent_t: list[list[float]] = [[] for _ in range(self.flows)]
        self.replies: list[bytearray] = [bytearray() for _ in range(self.flows)]
        self.member: list[str | None] = [None] * self.flows
        self.changes: list[dict[str, Any]] = []

    def send(self, k: int, now: float) -> None:
        seq = len(self.sent_t[k])
        # not sent: counted as lost (the send buffer is 16 MiB: not seen)
        with contextlib.suppress(OSError):
            self.sock.sendmsg(
                [f"U {k} {seq}\n".encode()],
                [(SOL_IP, IP_PKTINFO, self.pkt[k])],
                0,
                (self.vip, self.port),
            )
        self.sent_t[k].append(now)
        self.replies[k].append(0)

    def drain(self, now: float) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            parts = data.split()
            if len(parts) != 4 or parts[1] != b"U":
                continue
            k, seq = int(parts[2]), int(parts[3])
            if not (0 <= k < self.flows and 0 <= seq < len(self.replies[k])):
                continue
            r = self.replies[k]
            r[seq] = min(255, r[seq] + 1)
            name = parts[0].decode(errors="replace")
            if self.member[k] != name:
                if self.member[k] is not None:
                    self.changes.append(
                        {
                            "udp_flow": k,
                            "t": round(now, 3),
                            "from": self.member[k],
                            "to": name,
                            "seq": seq,
                        }
                    )
                self.member[k] = name

    def run(self) -> None:
        stdin_fd = sys.stdin.fileno()
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "udp")
        sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        print("ready", flush=True)
        slots = 50  # the flows are spread over the interval in 50 slots
        per = (self.flows + slots - 1) // slots
        t0 = time.time()
        n = 0
        while True:
            due = t0 + n * self.interval / slots
            while True:
                now = time.time()
                if now >= due:
                    break
                for key, _ in sel.select(due - now):
                    if key.data == "stdin":
                        os.read(stdin_fd, 1024)
                        return
                    self.drain(time.time())
            slot = n % slots
            for k in range(slot * per, min(self.flows, (slot + 1) * per)):
                self.send(k, now)
            n += 1

    def finish(self) -> list[dict[str, Any]]:
        end = time.time() + 2.0  # late replies
        while time.time() < end:
            self.drain(time.time())
            time.sleep(0.01)
        out: list[dict[str, Any]] = []
        sent = 0
        for k in range(self.flows):
            sent += len(self.sent_t[k])
            for seq, n in enumerate(self.replies[k]):
                if n != 1:
                    out.append(
                        {
                            "udp_flow": k,
                            "seq": seq,
                            "t": round(self.sent_t[k][seq], 3),
                            "replies": n,
                        }
                    )
        out.extend(self.changes)
        out.append({"summary": True, "udp_sent": sent})
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos.load", description=__doc__)
    ap.add_argument("kind", choices=["tcp", "udp"])
    ap.add_argument("--vip", required=True)
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0, help="index of the first TCP source")
    ap.add_argument("--pool", type=int, default=4096, help="TCP sources this process may use")
    ap.add_argument("--initial", type=int, default=100)
    ap.add_argument("--ramp", type=float, default=1000.0, help="initial connections per second")
    ap.add_argument("--new-rate", type=float, default=1.0, help="new connections per second")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--stall", type=float, default=10.0)
    ap.add_argument("--connect-timeout", type=float, default=8.0)
    ap.add_argument("--flows", type=int, default=1024)
    ap.add_argument("--udp-interval", type=float, default=0.5)
    ap.add_argument("--udp-port", type=int, default=9100)
    a = ap.parse_args(argv)
    random.seed(a.seed)
    _raise_nofile()
    load: TcpLoad | UdpLoad = TcpLoad(a) if a.kind == "tcp" else UdpLoad(a)
    load.run()
    records = load.finish()
    with open(a.out, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

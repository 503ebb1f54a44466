"""Client-side traffic tools for the lab: who answers, and did every packet arrive once.

Two layers:

* ``*_here`` functions do the socket work in the CURRENT network namespace (the lab's
  client namespace when run as ``ip netns exec {prefix}-client python -m vipctl.lab.traffic``).
* ``probe``, ``numbered``, ``numbered_spawn``, ``capture_start``/``capture_stop`` take a
  ``Lab`` and do the ``ip netns exec`` for the caller.

How it sends from thousands of source addresses without thousands of sockets: the client
namespace has ``local 10.99.0.0/16`` and ``local 2001:db8:99::/64`` routes on lo, so every
address in those ranges is local. One UDP socket per family picks the source of each
datagram with IP_PKTINFO / IPV6_PKTINFO (IPv6 needs IP_FREEBIND or
``net.ipv6.ip_nonlocal_bind=1`` for a source that is not configured on an interface; the lab
sets both), and the same wildcard-bound socket receives the replies to all of them.
``numbered`` writes prebuilt Ethernet frames on an AF_PACKET socket instead, which bypasses
the client's own stack and is several times faster.

CLI (inside the client namespace, or anywhere with ``--lab PREFIX``)::

    python -m vipctl.lab.traffic probe --vip 198.51.100.253 --sources 10.99.0.0/20 [--json]
    python -m vipctl.lab.traffic numbered --vip V --sources CIDR --count N --rate PPS \
        --dst-mac MAC [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import os
import resource
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from vipctl.core.net import family, mac_bytes
from vipctl.lab import topology as labmod
from vipctl.lab.topology import Lab

IP_PKTINFO = 8
IP_FREEBIND = 15
IPV6_FREEBIND = 78
SOL_IP = 0
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
NUMBERED_PORT = 9999
NUMBERED_MAGIC = b"VIPn"
_PY = sys.executable


# --------------------------------------------------------------------------- addresses


def expand(cidr: str, n: int | None = None) -> list[str]:
    """The first ``n`` addresses of ``cidr`` (all of them if ``n`` is None), network and
    broadcast addresses included: with local routes every one of them is a usable source."""
    net = ipaddress.ip_network(cidr, strict=False)
    if n is None:
        if net.num_addresses > 1 << 20:
            raise ValueError(f"{cidr} has {net.num_addresses} addresses: give n")
        n = net.num_addresses
    n = min(n, net.num_addresses)
    base = int(net.network_address)
    cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    return [str(cls(base + k)) for k in range(n)]


def _family(addr: str) -> int:
    return socket.AF_INET6 if family(addr) == 6 else socket.AF_INET


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _bigbuf(s: socket.socket, size: int = 32 << 20) -> None:
    for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, fallback, size)


# --------------------------------------------------------------------------- probe


def _pktinfo(src: str) -> tuple[int, int, bytes]:
    if family(src) == 6:
        return (
            socket.IPPROTO_IPV6,
            socket.IPV6_PKTINFO,
            socket.inet_pton(socket.AF_INET6, src) + b"\0\0\0\0",
        )
    return (SOL_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, socket.inet_aton(src), b"\0" * 4))


def probe_here(
    vip: str,
    sources: Sequence[str],
    port: int = labmod.ECHO_PORT,
    timeout: float = 1.0,
    *,
    settle: float = 0.1,
    window: int = 256,
    sport: int = 0,
) -> dict[str, list[str]]:
    """From each source send one UDP datagram to ``vip``:``port``; collect every reply.

    Runs in the current namespace. Returns ``{source: [member name, ...]}`` with one entry
    per reply, so a source that got none or two is visible. Waits until every source has
    answered and then ``settle`` seconds more for duplicates, or ``timeout`` seconds after
    the last send, whichever comes first. At most ``window`` datagrams are outstanding
    before the loop drains replies (keeps the echo servers' queues short).
    """
    fam = _family(vip)
    vip = _norm(vip)
    srcs = [_norm(s) for s in sources]
    if any(_family(s) != fam for s in srcs):
        raise ValueError("sources and VIP must be of the same address family")
    nonce = secrets.token_hex(4).encode()
    result: dict[str, list[str]] = {s: [] for s in srcs}
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        _bigbuf(s)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # IP_FREEBIND (SOL_IP) covers IPv6 sockets too; IPV6_FREEBIND is 4.15+.
            s.setsockopt(SOL_IP, IP_FREEBIND, 1)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            s.bind(("::", sport))
        else:
            s.setsockopt(SOL_IP, IP_FREEBIND, 1)
            s.bind(("0.0.0.0", sport))
        s.setblocking(False)
        dest = (vip, port)
        vip_peer = (vip, port)
        answered = 0
        replies = 0

        def read_all() -> None:
            nonlocal answered, replies
            while True:
                try:
                    data, peer = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                if (_norm(peer[0]), peer[1]) != vip_peer:
                    continue
                parts = data.split(b" ", 3)  # b"<member> P<nonce> <source>"
                if len(parts) != 3 or parts[1] != b"P" + nonce:
                    continue
                got = result.get(parts[2].decode(errors="replace"))
                if got is None:
                    continue
                if not got:
                    answered += 1
                replies += 1
                got.append(parts[0].decode(errors="replace"))

        def wait_for(seconds: float, done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + seconds
            read_all()
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or not _wait_readable(s, left):
                    return
                read_all()

        target = 0

        def caught_up() -> bool:
            return replies >= target

        for sent, src in enumerate(srcs, 1):
            payload = b"P" + nonce + b" " + src.encode()
            while True:
                try:
                    s.sendmsg([payload], [_pktinfo(src)], 0, dest)
                    break
                except (BlockingIOError, InterruptedError):
                    wait_for(0.001, lambda: False)
            if sent % window == 0:
                # Let the replies catch up (bounded, so lost replies cannot stall the loop).
                target = sent - window // 2
                wait_for(0.002, caught_up)
        wait_for(timeout, lambda: answered == len(srcs))
        if answered == len(srcs):
            wait_for(settle, lambda: False)
    finally:
        s.close()
    return result


def _wait_readable(s: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _python_argv(*args: str) -> list[str]:
    return [_PY, "-m", "vipctl.lab.traffic", *args]


def probe(
    lab: Lab,
    vip: str,
    sources: Sequence[str],
    port: int = labmod.ECHO_PORT,
    timeout: float = 1.0,
    *,
    settle: float = 0.1,
    sport: int = 0,
) -> dict[str, list[str]]:
    """``probe_here`` run in the lab's client namespace. ``{source: [member, ...]}``.

    A fixed ``sport`` makes repeated probes one UDP flow per source (pinning tests)."""
    out: dict[str, list[str]] = {}
    proc = labmod.run_in(
        lab.client_ns,
        _python_argv(
            "probe",
            "--vip",
            vip,
            "--port",
            str(port),
            "--timeout",
            str(timeout),
            "--settle",
            str(settle),
            "--sport",
            str(sport),
            "--sources-stdin",
            "--raw-json",
        ),
        input="\n".join(sources) + "\n",
        timeout=60 + timeout * (1 + len(sources) / 4096),
    )
    raw = json.loads(proc.stdout)
    for src in sources:
        out[src] = raw.get(_norm(src), [])
    return out


def summarize(result: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Per-member reply counts plus ``"<none>"`` (unanswered sources) and ``"<dup>"``
    (sources answered more than once)."""
    c: Counter[str] = Counter()
    for names in result.values():
        c.update(names)
        if not names:
            c["<none>"] += 1
        elif len(names) > 1:
            c["<dup>"] += 1
    return dict(sorted(c.items()))


# --------------------------------------------------------------------------- numbered


@dataclass(frozen=True)
class SendStats:
    sent: int
    seconds: float
    pps: float
    run_id: int
    port: int


def _csum_add(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def _ipv4_csum(hdr: bytes) -> int:
    return (~_fold(_csum_add(hdr))) & 0xFFFF


def numbered_here(
    vip: str,
    sources: Sequence[str],
    count: int,
    rate_pps: float,
    *,
    dst_mac: str,
    dev: str = "eth0",
    port: int = NUMBERED_PORT,
    sport: int = 40000,
    run_id: int | None = None,
) -> SendStats:
    """Send ``count`` numbered UDP datagrams to ``vip``:``port``, round-robin over
    ``sources`` (datagram k from sources[k % len]), at ``rate_pps`` (0 = as fast as
    possible), as prebuilt Ethernet frames to ``dst_mac`` on an AF_PACKET socket on ``dev``.

    Payload: ``b"VIPn" + run_id (4 bytes) + seq (4 bytes)``, big-endian.
    """
    if not sources:
        raise ValueError("no sources")
    run_id = secrets.randbits(32) if run_id is None else run_id
    fam = _family(vip)
    vipb = socket.inet_pton(fam, _norm(vip))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((dev, 0))
        _bigbuf(s, 8 << 20)
        src_mac = bytes.fromhex(s.getsockname()[4].hex())
        head = struct.pack("!4sI", NUMBERED_MAGIC, run_id)
        plen = len(head) + 4
        ulen = 8 + plen
        eth = mac_bytes(dst_mac) + src_mac
        pre: list[bytes] = []
        base: list[int] = []
        for src in sources:
            if _family(src) != fam:
                raise ValueError("sources and VIP must be of the same address family")
            sb = socket.inet_pton(fam, _norm(src))
            if fam == socket.AF_INET:
                ip = struct.pack(
                    "!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, sb, vipb
                )
                ip = ip[:10] + struct.pack("!H", _ipv4_csum(ip)) + ip[12:]
                # UDP checksum 0: "none" is legal for IPv4 and keeps frames constant per source.
                pre.append(eth + b"\x08\x00" + ip + struct.pack("!HHHH", sport, port, ulen, 0))
            else:
                ip6 = struct.pack("!IHBB16s16s", 6 << 28, ulen, 17, 64, sb, vipb)
                pre.append(eth + b"\x86\xdd" + ip6 + struct.pack("!HHH", sport, port, ulen))
                pseudo = sb + vipb + struct.pack("!IxxxB", ulen, 17)
                base.append(_csum_add(pseudo) + sport + port + ulen + _csum_add(head))
        n = len(pre)
        pack_seq = struct.Struct("!I").pack
        send = s.send
        batch = 64 if rate_pps <= 0 else max(1, min(256, int(rate_pps / 2000)))
        t0 = time.perf_counter()
        seq = 0
        v6 = fam == socket.AF_INET6
        while seq < count:
            end = min(count, seq + batch)
            if v6:
                for k in range(seq, end):
                    i = k % n
                    c = base[i] + (k >> 16) + (k & 0xFFFF)
                    c = (c & 0xFFFF) + (c >> 16)
                    c = (c & 0xFFFF) + (c >> 16)
                    c = (~c) & 0xFFFF or 0xFFFF
                    _send_retry(send, pre[i] + c.to_bytes(2, "big") + head + pack_seq(k))
            else:
                for k in range(seq, end):
                    _send_retry(send, pre[k % n] + head + pack_seq(k))
            seq = end
            if rate_pps > 0:
                ahead = t0 + seq / rate_pps - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
        secs = time.perf_counter() - t0
    finally:
        s.close()
    return SendStats(
        sent=count, seconds=secs, pps=count / secs if secs > 0 else 0.0, run_id=run_id, port=port
    )


def _send_retry(send: object, frame: bytes) -> None:
    assert callable(send)
    while True:
        try:
            send(frame)
            return
        except (BlockingIOError, InterruptedError):
            time.sleep(0.0001)
        except OSError as e:
            if e.errno != 105:  # ENOBUFS: queue full, retry
                raise
            time.sleep(0.0001)


@dataclass
class NumberedRun:
    """A ``numbered`` sender running in the background (see ``numbered_spawn``)."""

    proc: subprocess.Popen[str]
    run_id: int
    count: int
    _stats: SendStats | None = field(default=None, repr=False)

    def wait(self, timeout: float | None = None) -> SendStats:
        if self._stats is None:
            out, err = self.proc.communicate(timeout=timeout)
            if self.proc.returncode != 0:
                raise labmod.LabError(f"numbered sender failed: {err.strip()}")
            self._stats = SendStats(**json.loads(out))
        return self._stats

    def done(self) -> bool:
        return self.proc.poll() is not None


def numbered_spawn(
    lab: Lab,
    vip: str,
    sources: Sequence[str],
    count: int,
    rate_pps: float,
    *,
    port: int = NUMBERED_PORT,
    sport: int = 40000,
) -> NumberedRun:
    """Start ``numbered_here`` in the client namespace; returns at once (``.wait()``)."""
    run_id = secrets.randbits(32)
    proc = labmod.spawn_in(
        lab.client_ns,
        _python_argv(
            "numbered",
            "--vip",
            vip,
            "--count",
            str(count),
            "--rate",
            str(rate_pps),
            "--dst-mac",
            lab.uplink_mac,
            "--port",
            str(port),
            "--sport",
            str(sport),
            "--run-id",
            str(run_id),
            "--sources-stdin",
            "--raw-json",
        ),
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write("\n".join(sources) + "\n")
    proc.stdin.close()
    proc.stdin = None  # communicate() must not flush the closed pipe
    return NumberedRun(proc=proc, run_id=run_id, count=count)


def numbered(
    lab: Lab,
    vip: str,
    sources: Sequence[str],
    count: int,
    rate_pps: float,
    *,
    port: int = NUMBERED_PORT,
    sport: int = 40000,
) -> SendStats:
    """Send ``count`` numbered datagrams from the client namespace and wait until sent."""
    return numbered_spawn(lab, vip, sources, count, rate_pps, port=port, sport=sport).wait()


# --------------------------------------------------------------------------- TCP sessions


def _tcp_socket(src: str) -> socket.socket:
    fam = _family(src)
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.setsockopt(SOL_IP, IP_FREEBIND, 1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((src, 0))
    c.setblocking(False)
    return c


def hold_here(
    vip: str,
    sources: Sequence[str],
    port: int = labmod.ECHO_PORT,
    *,
    commands: IO[str],
    out: IO[str],
    timeout: float = 2.0,
) -> None:
    """Keep one TCP connection per source to ``vip``:``port`` open, driven by ``commands``.

    Prints one JSON object per line on ``out``: first ``{source: "ok" | error}`` once every
    connection is established or failed; then for every ``ping`` line read from
    ``commands`` a ``{source: member | "reset" | "closed" | "timeout" | error}`` after a
    line was sent on every open connection and its echo read. ``quit`` or EOF closes all.
    A connection that failed once stays failed (it is not reopened).
    """
    vip = _norm(vip)
    srcs = [_norm(x) for x in sources]
    conns: dict[str, socket.socket] = {}
    state: dict[str, str] = {}
    sel = selectors.DefaultSelector()
    for src in srcs:
        try:
            c = _tcp_socket(src)
            with contextlib.suppress(BlockingIOError):
                c.connect((vip, port))
        except OSError as e:
            state[src] = f"error: {e.strerror or e}"
            continue
        conns[src] = c
        sel.register(c, selectors.EVENT_WRITE, src)
    deadline = time.monotonic() + timeout
    waiting = set(conns)
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            src = key.data
            c = conns[src]
            err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sel.unregister(c)
            waiting.discard(src)
            state[src] = "ok" if err == 0 else f"error: {os.strerror(err)}"
    for src in waiting:
        sel.unregister(conns[src])
        state[src] = "timeout"
    for src, st in state.items():
        if st != "ok" and src in conns:
            conns.pop(src).close()
    out.write(json.dumps(state) + "\n")
    out.flush()

    seq = 0
    for line in commands:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "ping":
            out.write(json.dumps({"error": f"unknown command {cmd!r}"}) + "\n")
            out.flush()
            continue
        seq += 1
        result: dict[str, str] = {src: st for src, st in state.items() if st != "ok"}
        expect: dict[str, bytes] = {}
        bufs: dict[str, bytes] = {}
        for src, c in list(conns.items()):
            msg = f"{seq} {src}\n".encode()
            try:
                c.sendall(msg)
            except OSError as e:
                result[src] = "reset" if isinstance(e, ConnectionResetError) else f"error: {e}"
                continue
            expect[src] = msg
            bufs[src] = b""
            sel.register(c, selectors.EVENT_READ, src)
        deadline = time.monotonic() + timeout
        while expect and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                src = key.data
                c = conns[src]
                try:
                    data = c.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    result[src] = "reset" if isinstance(e, ConnectionResetError) else f"error: {e}"
                if not data:
                    result.setdefault(src, "closed")
                    sel.unregister(c)
                    del expect[src]
                    continue
                bufs[src] += data
                if bufs[src].endswith(b"\n"):
                    name, _, rest = bufs[src].partition(b" ")
                    result[src] = (
                        name.decode() if rest == expect[src] else f"bad reply {bufs[src]!r}"
                    )
                    sel.unregister(c)
                    del expect[src]
        for src in expect:
            sel.unregister(conns[src])
            result[src] = "timeout"
        for src, r in result.items():
            if src in conns and (r in ("reset", "closed") or r.startswith(("error", "bad"))):
                state[src] = r
                conns.pop(src).close()
        out.write(json.dumps(result) + "\n")
        out.flush()
    for c in conns.values():
        c.close()


class TcpSessions:
    """Long-lived TCP connections from the lab client to a VIP, one per source.

    ``opened`` is the result of connecting (``{source: "ok" | error}``); ``ping()`` sends
    one line on every connection and returns ``{source: member name | "reset" | ...}``.
    Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        lab: Lab,
        vip: str,
        sources: Sequence[str],
        port: int = labmod.ECHO_PORT,
        *,
        timeout: float = 2.0,
    ) -> None:
        self.timeout = timeout
        self._buf = b""
        argv = _python_argv(
            "hold",
            "--vip",
            vip,
            "--port",
            str(port),
            "--timeout",
            str(timeout),
            "--sources-stdin",
        )
        self.proc = labmod.spawn_in(lab.client_ns, argv, stdin=subprocess.PIPE)
        assert self.proc.stdin is not None
        # Sources first, then an empty line, then commands.
        self._send("\n".join(sources) + "\n\n")
        self.opened: dict[str, str] = self._reply(timeout + 30 + len(sources) / 1000)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def _reply(self, timeout: float) -> dict[str, str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not _fd_readable(fd, left):
                raise labmod.LabError("TCP session holder did not answer")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise labmod.LabError(f"TCP session holder exited: {err.strip()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, str] = json.loads(line)
        return reply

    def ping(self) -> dict[str, str]:
        self._send("ping\n")
        return self._reply(self.timeout + 30)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                self._send("quit\n")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    f.close()

    def __enter__(self) -> TcpSessions:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _fd_readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


# --------------------------------------------------------------------------- capture


@dataclass
class Capture:
    """tcpdump running on every member's eth0 (or on the router's member ports)."""

    lab: Lab
    port: int
    where: str
    procs: dict[str, subprocess.Popen[str]]
    files: dict[str, Path]
    kernel_drops: dict[str, int] = field(default_factory=dict)


def capture_start(
    lab: Lab,
    *,
    port: int = NUMBERED_PORT,
    where: str = "member",
    buffer_kib: int = 65536,
    timeout: float = 10.0,
    interfaces: Sequence[str] = ("eth0",),
) -> Capture:
    """Start ``tcpdump --immediate-mode`` for UDP to ``port`` on each member's eth0
    (``where="member"``) or on the router's member ports (``where="router"``, which sees
    what left the router after its egress hooks). Returns once every tcpdump listens.
    With several member ``interfaces`` (a member with one link per router) each one is
    captured on its own, keyed ``web1.eth1``; with one, keys are the member names."""
    if where not in ("member", "router"):
        raise ValueError("where must be 'member' or 'router'")
    lab.workdir.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    procs: dict[str, subprocess.Popen[str]] = {}
    files: dict[str, Path] = {}
    try:
        where_: list[tuple[str, str, str]] = []
        for m in lab.members:
            if where == "router":
                where_.append((m.name, lab.router_ns, m.port))
            else:
                for dev in interfaces:
                    key = m.name if len(interfaces) == 1 else f"{m.name}.{dev}"
                    where_.append((key, m.ns, dev))
        for key, ns, dev in where_:
            path = lab.workdir / f"cap-{tag}-{key}.pcap"
            files[key] = path
            procs[key] = labmod.spawn_in(
                ns,
                [
                    "tcpdump",
                    "-i",
                    dev,
                    "-n",
                    "-s",
                    "128",
                    "--immediate-mode",
                    "-B",
                    str(buffer_kib),
                    "-U",
                    "-Z",
                    "root",
                    "-w",
                    str(path),
                    f"udp and dst port {port}",
                ],
                stdout=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        for name, p in procs.items():
            assert p.stderr is not None
            line = ""
            while "listening on" not in line:
                line = labmod._readline_until(p.stderr.fileno(), deadline)
                if not line and (p.poll() is not None or time.monotonic() >= deadline):
                    raise labmod.LabError(f"tcpdump for {name} did not start")
    except BaseException:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        raise
    return Capture(lab=lab, port=port, where=where, procs=procs, files=files)


def capture_stop(
    cap: Capture, *, settle: float = 0.2, run_id: int | None = None
) -> dict[str, list[int]]:
    """Stop the capture ``settle`` seconds from now and return, per member, the sequence
    numbers it received, in arrival order (``run_id`` keeps only that sender's)."""
    time.sleep(settle)
    for p in cap.procs.values():
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)
    seen: dict[str, list[int]] = {}
    for name, p in cap.procs.items():
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        for line in (err or "").splitlines():
            if line.endswith("packets dropped by kernel"):
                cap.kernel_drops[name] = int(line.split()[0])
        path = cap.files[name]
        seen[name] = parse_pcap(path.read_bytes(), cap.port, run_id) if path.exists() else []
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return seen


def parse_pcap(data: bytes, port: int = NUMBERED_PORT, run_id: int | None = None) -> list[int]:
    """Sequence numbers of the numbered datagrams in a pcap (Ethernet link type)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    rec = struct.Struct(endian + "IIII")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"pcap link type {linktype}, want Ethernet (1)")
    out: list[int] = []
    off = 24
    size = len(data)
    while off + 16 <= size:
        _ts, _us, caplen, _len = rec.unpack_from(data, off)
        off += 16
        frame = data[off : off + caplen]
        off += caplen
        seq = _frame_seq(frame, port, run_id)
        if seq is not None:
            out.append(seq)
    return out


def _frame_seq(frame: bytes, port: int, run_id: int | None) -> int | None:
    if len(frame) < 14:
        return None
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 17:
            return None
        udp = 14 + ihl
    elif et == 0x86DD:
        if frame[20] != 17:
            return None
        udp = 14 + 40
    else:
        return None
    if len(frame) < udp + 8 + 12:
        return None
    if struct.unpack_from("!H", frame, udp + 2)[0] != port:
        return None
    pl = udp + 8
    if frame[pl : pl + 4] != NUMBERED_MAGIC:
        return None
    rid, seq = struct.unpack_from("!II", frame, pl + 4)
    if run_id is not None and rid != run_id:
        return None
    return int(seq)


class Delivery(NamedTuple):
    lost: list[int]  # sequence numbers no member received
    duplicated: list[int]  # one entry per extra copy (a number seen 3 times appears twice)


def check_exactly_once(sent: int, seen: Mapping[str, Iterable[int]]) -> Delivery:
    """Compare ``range(sent)`` with what the members received (all members together)."""
    c: Counter[int] = Counter(itertools.chain.from_iterable(seen.values()))
    lost = [k for k in range(sent) if k not in c]
    dup = sorted(itertools.chain.from_iterable([k] * (n - 1) for k, n in c.items() if n > 1))
    return Delivery(lost=lost, duplicated=dup)


# --------------------------------------------------------------------------- CLI


def _read_sources(args: argparse.Namespace, stdin: IO[str]) -> list[str]:
    out: list[str] = []
    if args.sources_stdin:
        out += [line.strip() for line in stdin if line.strip()]
    for spec in args.sources or []:
        out += expand(spec, args.limit)
    if not out:
        raise SystemExit("no sources: give --sources CIDR or --sources-stdin")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vipctl.lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("probe", "numbered", "hold"):
        p = sub.add_parser(name)
        p.add_argument("--vip", required=True)
        p.add_argument("--sources", action="append", help="CIDR; repeatable")
        p.add_argument("--limit", type=int, help="use only the first N addresses of each CIDR")
        p.add_argument("--sources-stdin", action="store_true", help="one address per line")
        p.add_argument("--lab", help="run in the client namespace of lab PREFIX")
        p.add_argument("--json", action="store_true", help="JSON summary")
        p.add_argument("--raw-json", action="store_true", help=argparse.SUPPRESS)
    pp = sub.choices["probe"]
    pp.add_argument("--port", type=int, default=labmod.ECHO_PORT)
    pp.add_argument("--timeout", type=float, default=1.0)
    pp.add_argument("--settle", type=float, default=0.1)
    pp.add_argument("--sport", type=int, default=0, help="source port (0 = any)")
    pn = sub.choices["numbered"]
    pn.add_argument("--count", type=int, required=True)
    pn.add_argument("--rate", type=float, default=0.0, help="packets per second; 0 = max")
    pn.add_argument("--dst-mac", help="router uplink MAC (default: the lab's)")
    pn.add_argument("--dev", default="eth0")
    pn.add_argument("--port", type=int, default=NUMBERED_PORT)
    pn.add_argument("--sport", type=int, default=40000)
    pn.add_argument("--run-id", type=int)
    ph = sub.choices["hold"]
    ph.add_argument("--port", type=int, default=labmod.ECHO_PORT)
    ph.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args(argv)
    _raise_nofile()
    if args.cmd == "hold":
        # Sources end at the first empty line; the rest of stdin are commands.
        srcs: list[str] = []
        for line in sys.stdin:
            if not line.strip():
                break
            srcs.append(line.strip())
        for spec in args.sources or []:
            srcs += expand(spec, args.limit)
        hold_here(
            args.vip, srcs, args.port, commands=sys.stdin, out=sys.stdout, timeout=args.timeout
        )
        return 0
    sources = _read_sources(args, sys.stdin)

    lab: Lab | None = None
    if args.lab:
        lab = labmod.discover(args.lab)
        if lab is None:
            raise SystemExit(f"no lab {args.lab!r}")

    if args.cmd == "probe":
        if lab is not None:
            result = probe(lab, args.vip, sources, args.port, args.timeout, settle=args.settle)
        else:
            result = probe_here(
                args.vip, sources, args.port, args.timeout, settle=args.settle, sport=args.sport
            )
        if args.raw_json:
            json.dump(result, sys.stdout)
            return 0
        counts = summarize(result)
        if args.json:
            json.dump({"vip": args.vip, "sources": len(result), "replies": counts}, sys.stdout)
            print()
        else:
            print(f"{len(result)} sources -> {args.vip}")
            for name, n in counts.items():
                print(f"  {name:10} {n}")
        bad = counts.get("<none>", 0) + counts.get("<dup>", 0)
        return 1 if bad else 0

    dst_mac = args.dst_mac or labmod.UPLINK_MAC
    if lab is not None:
        stats = numbered(
            lab, args.vip, sources, args.count, args.rate, port=args.port, sport=args.sport
        )
    else:
        stats = numbered_here(
            args.vip,
            sources,
            args.count,
            args.rate,
            dst_mac=dst_mac,
            dev=args.dev,
            port=args.port,
            sport=args.sport,
            run_id=args.run_id,
        )
    if args.raw_json or args.json:
        json.dump(asdict(stats), sys.stdout)
        print()
    else:
        print(
            f"sent {stats.sent} in {stats.seconds:.3f}s = {stats.pps:.0f} pps (run {stats.run_id})"
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
    os._exit(0)

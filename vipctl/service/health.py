"""Member health: probe results and link events -> up/down transitions. No rule logic here.

Two layers:

* PURE: `MemberHealth` and `observe()` / `link_lost()` / `link_restored()`: the rise/fall
  state machine with flap damping. Clock values are arguments, so unit tests drive it.
* SHELL: the probes (icmp echo, tcp connect, http status), run concurrently with asyncio for
  every member, and `Monitor`, which also listens to rtnetlink link events (RTM_NEWLINK /
  RTM_DELLINK): a member port that loses carrier or is set down marks its member down at
  once, without waiting for `fall` failed probes.

A probe has three outcomes: the member answered (success), the member did not or
answered wrong (refused, unreachable, timed out, a wrong status: a failure, counted
toward `fall`), or the prober itself could not probe (`LocalProbeError`: out of file
descriptors, buffers or memory, a local firewall's EPERM). The last says nothing about
the member: it is not counted, the member keeps its health, and the Monitor reports the
cause (`unprobed`, `local_errors`) so the daemon can say it cannot do its job.

The state machine (per member):

* up -> down after `fall` consecutive failed probes, or at once when its port loses link;
* down -> up after `required_rise()` consecutive successful probes while its port has link.
  `required_rise` is `rise`, doubled for every further down transition within the last
  FLAP_WINDOW_S seconds (at most FLAP_MAX_FACTOR times `rise`): a member that keeps
  failing has to prove itself for longer, so a flapping member cannot cause a swap storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

from vipctl.core.spec import HttpProbe, IcmpProbe, Member, NoProbe, Spec, TcpProbe
from vipctl.errors import KernelError

log = logging.getLogger("vipctl.health")

FLAP_WINDOW_S = 60.0
FLAP_MAX_FACTOR = 8
MAX_INFLIGHT = 8  # probes in flight per member, whatever the timeout and interval


# --------------------------------------------------------------------------------------
# PURE: the state machine
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    rise: int
    fall: int
    flap_window_s: float = FLAP_WINDOW_S
    flap_max_factor: int = FLAP_MAX_FACTOR


@dataclass(frozen=True)
class MemberHealth:
    """One member's health. `successes`/`failures` count the current run of equal results;
    `downs` holds the clock times of recent down transitions (flap damping); `link` is False
    while the member's router port has no carrier or is administratively down."""

    up: bool = True
    successes: int = 0
    failures: int = 0
    downs: tuple[float, ...] = ()
    link: bool = True
    reason: str = ""


@dataclass(frozen=True)
class Transition:
    """A member changed state; `reason` says why, in words for the log."""

    member: str
    up: bool
    reason: str
    at: float


def required_rise(h: MemberHealth, th: Thresholds, now: float) -> int:
    """Successes needed to come back: `rise`, doubled per extra recent down transition."""
    recent = sum(1 for t in h.downs if now - t <= th.flap_window_s)
    factor = min(1 << max(0, recent - 1), th.flap_max_factor)
    return th.rise * factor


def _went_down(h: MemberHealth, th: Thresholds, now: float, reason: str) -> MemberHealth:
    downs = (*(t for t in h.downs if now - t <= th.flap_window_s), now)
    return replace(h, up=False, successes=0, downs=downs, reason=reason)


def observe(
    h: MemberHealth, ok: bool, detail: str, th: Thresholds, now: float
) -> tuple[MemberHealth, bool]:
    """Feed one probe result. Returns the new health and whether `up` changed.

    While the port has no link, a success does not count (the reply cannot have come over
    the member's port, or the link came back and must be proven by fresh probes)."""
    if ok and not h.link:
        return replace(h, successes=0), False
    if ok:
        h = replace(h, successes=h.successes + 1, failures=0)
        need = required_rise(h, th, now)
        if not h.up and h.successes >= need:
            return replace(h, up=True, reason=f"{detail} ({h.successes} successes in a row)"), True
        return h, False
    h = replace(h, failures=h.failures + 1, successes=0)
    if h.up and h.failures >= th.fall:
        return _went_down(h, th, now, f"{detail} ({h.failures} failures in a row)"), True
    return h, False


def link_lost(
    h: MemberHealth, reason: str, th: Thresholds, now: float
) -> tuple[MemberHealth, bool]:
    """The member's port lost carrier or went down: down at once."""
    h = replace(h, link=False, successes=0)
    if h.up:
        return _went_down(h, th, now, reason), True
    return h, False


def link_restored(h: MemberHealth) -> MemberHealth:
    """Link is back: probes may count again (the member stays down until they rise)."""
    return replace(h, link=True, successes=0)


def carrier(flags: int) -> bool:
    """IFF_UP and IFF_LOWER_UP: administratively up and the lower layer has carrier."""
    iff_up, iff_lower_up = 0x1, 0x10000
    return bool(flags & iff_up) and bool(flags & iff_lower_up)


# --------------------------------------------------------------------------------------
# SHELL: probes
# --------------------------------------------------------------------------------------

ProbeResult = tuple[bool, str]

# errno values of the prober's own failures: this process or this router ran out of
# something, or refuses to send (a local firewall answers EPERM). They are no evidence
# about the member. Refused, reset, unreachable and timeouts are the member's (or its
# path's) and count toward `fall`.
LOCAL_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EPERM,
        errno.EACCES,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.EPROTONOSUPPORT,
    }
)


class LocalProbeError(Exception):
    """The prober could not probe: `cause` is the errno's name ("EMFILE") or "bug",
    `reason` the errno's text ("too many open files"), `detail` the probe in words."""

    def __init__(self, cause: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.reason = reason
        self.detail = detail


def local_error(exc: BaseException, what: str) -> LocalProbeError | None:
    """`exc` as a LocalProbeError when it is the prober's own failure, else None."""
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        reason = os.strerror(exc.errno).lower()
        return LocalProbeError(errno.errorcode[exc.errno], reason, f"{what}: {reason}")
    return None


def inflight_cap(interval: float, timeout: float, fall: int) -> int:
    """Probes of one member allowed in flight at once. Enough for a silent member to be
    detected after timeout + (fall-1) * interval (fall probes staggered by the interval),
    and never more than MAX_INFLIGHT: a 60 s timeout every 10 ms would otherwise hold
    6000 sockets per silent member, until the daemon runs out of file descriptors."""
    return max(1, min(int(timeout // interval) + 1, fall, MAX_INFLIGHT))


def _addr(member: Member) -> str:
    return str(member.address)


def _where(member: Member, port: int) -> str:
    a = _addr(member)
    return f"[{a}]:{port}" if member.address.version == 6 else f"{a}:{port}"


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        # asyncio's strerror is "Connect call failed (addr, port)": the errno says more
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def probe_tcp(member: Member, port: int, timeout: float) -> ProbeResult:
    what = f"tcp connect {_where(member, port)}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(_addr(member), port), timeout)
    except TimeoutError:
        return False, f"{what}: no answer within {timeout * 1000:.0f} ms"
    except OSError as exc:
        if (local := local_error(exc, what)) is not None:
            raise local from None
        return False, f"{what}: {_oserror(exc)}"
    writer.close()  # no data was written: the socket closes at once, nothing to wait for
    return True, f"{what}: ok"


async def probe_http(
    member: Member, port: int, path: str, expect: int, timeout: float
) -> ProbeResult:
    url = f"http://{_where(member, port)}{path}"
    what = f"http GET {url}"

    async def exchange() -> int:
        reader, writer = await asyncio.open_connection(_addr(member), port)
        try:
            host = _where(member, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vipctl-health\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP status line: {line[:60]!r}")
        status: int = int(parts[1])
        return status

    try:
        status = await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        return False, f"{what}: no answer within {timeout * 1000:.0f} ms"
    except (OSError, ValueError) as exc:
        if (local := local_error(exc, what)) is not None:
            raise local from None
        return False, f"{what}: {_oserror(exc)}"
    if status != expect:
        return False, f"{what}: status {status}, expected {expect}"
    return True, f"{what}: status {status}"


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmp_socket(version: int) -> tuple[socket.socket, bool]:
    """An ICMP socket: the unprivileged "ping" kind if net.ipv4.ping_group_range allows our
    group, else a raw one (CAP_NET_RAW). Returns (socket, raw)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
            raise
    return socket.socket(family, socket.SOCK_RAW, proto), True


_icmp_seq = 0


async def probe_icmp(member: Member, timeout: float) -> ProbeResult:
    global _icmp_seq
    address = member.address
    what = f"icmp echo {address}"
    v4 = isinstance(address, IPv4Address)
    request, reply = (8, 0) if v4 else (128, 129)
    _icmp_seq = (_icmp_seq + 1) & 0xFFFF
    seq = _icmp_seq
    ident = os.getpid() & 0xFFFF
    payload = b"vipctl-health" + struct.pack("!d", time.monotonic())
    loop = asyncio.get_running_loop()
    try:
        sock, raw = _icmp_socket(address.version)
    except OSError as exc:  # always ours: no socket says nothing about the member
        reason = _oserror(exc)
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        raise LocalProbeError(
            name, reason, f"{what}: cannot open an ICMP socket: {reason}"
        ) from None
    with sock:
        sock.setblocking(False)
        header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
        # IPv4 needs our checksum; the kernel fills ICMPv6's (RFC 3542) and rewrites the
        # identifier of unprivileged ping sockets (so match on seq and payload then).
        csum = _icmp_checksum(header + payload) if v4 else 0
        packet = struct.pack("!BBHHH", request, 0, csum, ident, seq) + payload

        async def exchange() -> None:
            await loop.sock_sendto(sock, packet, (str(address), 0))
            while True:
                data, peer = await loop.sock_recvfrom(sock, 2048)
                if peer[0] != str(address):
                    continue
                if raw and v4:
                    data = data[(data[0] & 0x0F) * 4 :]
                if len(data) < 8:
                    continue
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if kind != reply or rseq != seq or data[8:] != payload:
                    continue
                if raw and rid != ident:
                    continue
                return

        try:
            await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            return False, f"{what}: no reply within {timeout * 1000:.0f} ms"
        except OSError as exc:
            if (local := local_error(exc, what)) is not None:
                raise local from None
            return False, f"{what}: {_oserror(exc)}"
    return True, f"{what}: reply"


def prober(spec: Spec, member: Member) -> Callable[[], Awaitable[ProbeResult]]:
    """The probe the spec asks for, bound to one member."""
    probe = spec.health.probe
    timeout = spec.health.timeout_ms / 1000
    if isinstance(probe, TcpProbe):
        port = probe.port
        return lambda: probe_tcp(member, port, timeout)
    if isinstance(probe, HttpProbe):
        hp = probe
        return lambda: probe_http(member, hp.port, hp.path, hp.expect, timeout)
    if isinstance(probe, IcmpProbe):
        return lambda: probe_icmp(member, timeout)
    assert isinstance(probe, NoProbe)

    async def none() -> ProbeResult:
        return True, "no probe configured (probe kind none)"

    return none


# --------------------------------------------------------------------------------------
# SHELL: the monitor (probes of every member + link events)
# --------------------------------------------------------------------------------------

OnTransition = Callable[[Transition], None]


def trouble(unprobed: dict[str, LocalProbeError]) -> str | None:
    """`probes failing locally: too many open files (web1, web2)`, or None."""
    if not unprobed:
        return None
    by_reason: dict[str, list[str]] = {}
    for member, exc in sorted(unprobed.items()):
        by_reason.setdefault(exc.reason, []).append(member)
    return "probes failing locally: " + "; ".join(
        f"{reason} ({', '.join(members)})" for reason, members in sorted(by_reason.items())
    )


class Monitor:
    """Keeps every member's `MemberHealth` current; calls `on_transition` for each change.

    Start with `await monitor.start()`; `update(spec)` after a reload keeps the health of
    members that stay; `await monitor.stop()` at the end.

    `clock` is read for every probe result and link event (the flap window, the time of a
    transition) and for probe latency; the probe schedule itself runs on the event loop's
    clock. Tests pass a fake one.
    """

    def __init__(
        self,
        spec: Spec,
        on_transition: OnTransition,
        initial_down: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        on_trouble: Callable[[str | None], None] | None = None,
        probers: Callable[[Spec, Member], Callable[[], Awaitable[ProbeResult]]] | None = None,
        on_port: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.on_transition = on_transition
        self.on_trouble = on_trouble  # called with trouble(self.unprobed) when it changes
        self.prober = probers if probers is not None else prober
        self.clock = clock
        down = set(initial_down)
        self.health: dict[str, MemberHealth] = {
            m.name: MemberHealth(up=m.name not in down) for m in spec.members
        }
        self.latency: dict[str, float] = {}  # member -> seconds of its last successful probe
        # members whose latest probe failed locally (their health is frozen), and the
        # count of such failures by cause (errno name)
        self.unprobed: dict[str, LocalProbeError] = {}
        self.local_errors: dict[str, int] = {}
        self.inflight: dict[str, int] = {}  # member -> probes in flight now
        self._probe_tasks: dict[str, asyncio.Task[None]] = {}
        self._link_task: asyncio.Task[None] | None = None
        # a member port was removed or re-created (its ifindex changed): (port, what)
        self.on_port = on_port
        self.ifindex: dict[str, int | None] = {}  # port -> ifindex as last seen

    # -- state ------------------------------------------------------------------------
    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(rise=self.spec.health.rise, fall=self.spec.health.fall)

    def down(self) -> set[str]:
        return {name for name, h in self.health.items() if not h.up}

    def _set(self, name: str, new: MemberHealth, changed: bool, now: float) -> None:
        self.health[name] = new
        if changed:
            self.on_transition(Transition(name, new.up, new.reason, now))

    def feed(self, name: str, ok: bool, detail: str) -> None:
        h = self.health.get(name)
        if h is None:  # member left the spec while its probe ran
            return
        log.debug("%s: %s", name, detail)
        now = self.clock()
        new, changed = observe(h, ok, detail, self.thresholds, now)
        self._set(name, new, changed, now)

    def local_failure(self, name: str, exc: LocalProbeError) -> None:
        """The prober could not probe `name`: no evidence, the health stays as it is."""
        if name not in self.health:
            return
        self.local_errors[exc.cause] = self.local_errors.get(exc.cause, 0) + 1
        before = self.unprobed.get(name)
        if before is not None and before.reason == exc.reason:
            return
        if exc.reason not in {e.reason for e in self.unprobed.values()}:
            # once per cause, not once per probe (10 ms probes would flood the journal)
            log.error(
                "cannot probe: %s; health is kept as it is, no member is failed over for this (%s)",
                exc.detail,
                exc.cause,
            )
        self.unprobed[name] = exc
        self._trouble_changed()

    def _probed(self, name: str) -> None:
        if self.unprobed.pop(name, None) is not None:
            if not self.unprobed:
                log.warning("probes work again: every member is probed")
            self._trouble_changed()

    def _trouble_changed(self) -> None:
        if self.on_trouble is not None:
            self.on_trouble(trouble(self.unprobed))

    def link_event(self, ifname: str, up: bool, why: str) -> None:
        for m in self.spec.members:
            if m.port != ifname:
                continue
            h = self.health[m.name]
            now = self.clock()
            if not up and h.link:
                new, changed = link_lost(h, f"port {ifname} {why}", self.thresholds, now)
                self._set(m.name, new, changed, now)
            elif up and not h.link:
                log.info("%s: port %s has link again; waiting for probes", m.name, ifname)
                self._set(m.name, link_restored(h), False, now)

    # -- tasks ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._start_link_watch()
        self._start_probes()

    def update(self, spec: Spec) -> None:
        """A reloaded spec: members that stay keep their health, new ones start up (as
        `vipctl apply` assumes), removed ones are forgotten. Probes restart."""
        for task in self._probe_tasks.values():
            task.cancel()
        self._probe_tasks.clear()
        self.health = {m.name: self.health.get(m.name, MemberHealth(up=True)) for m in spec.members}
        self.spec = spec
        if any(self.unprobed.pop(n) for n in list(self.unprobed) if n not in self.health):
            self._trouble_changed()
        self._start_probes()

    async def stop(self) -> None:
        tasks = [*self._probe_tasks.values()]
        if self._link_task is not None:
            tasks.append(self._link_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probe_tasks.clear()
        self._link_task = None

    def _start_probes(self) -> None:
        for m in self.spec.members:
            self._probe_tasks[m.name] = asyncio.create_task(
                self._probe_loop(m), name=f"probe-{m.name}"
            )

    async def _probe_loop(self, member: Member) -> None:
        """A probe every interval, each with its own timeout; several may be in flight when
        timeout > interval (a silent member is then detected after timeout + (fall-1) *
        interval, not fall * timeout), at most `inflight_cap()`: while that many are
        waiting, the next probe is skipped."""
        run = self.prober(self.spec, member)
        interval = self.spec.health.interval_ms / 1000
        timeout = self.spec.health.timeout_ms / 1000
        max_inflight = inflight_cap(interval, timeout, self.spec.health.fall)
        inflight: set[asyncio.Task[None]] = set()
        sent = 0
        newest_fed = -1

        async def one(seq: int) -> None:
            nonlocal newest_fed
            started = self.clock()
            try:
                ok, detail = await run()
            except LocalProbeError as exc:
                self.local_failure(member.name, exc)
                return
            except Exception as exc:  # a probe bug: must not stop probing, nor fail members
                self.local_failure(
                    member.name, LocalProbeError("bug", f"probe error {exc!r}", repr(exc))
                )
                return
            self._probed(member.name)
            if ok:
                self.latency[member.name] = self.clock() - started
            # A probe that finishes after a later one carries older news: drop it, so the
            # rise/fall counts follow the order in which the member was asked.
            if seq > newest_fed:
                newest_fed = seq
                self.feed(member.name, ok, detail)

        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                if len(inflight) < max_inflight:
                    task = asyncio.create_task(one(sent))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    sent += 1
                self.inflight[member.name] = len(inflight)
                next_at += interval
                now = loop.time()
                if next_at < now:  # we were starved (CPU): do not burst to catch up
                    next_at = now
                await asyncio.sleep(next_at - now)
        finally:
            for task in inflight:
                task.cancel()

    async def _start_link_watch(self) -> None:
        ipr = await self._subscribe_links()
        self._link_task = asyncio.create_task(self._link_loop(ipr), name="links")

    async def _subscribe_links(self) -> Any:
        """Join RTMGRP_LINK, then dump the ports' current state. Subscribing first means a
        change between the two is seen as an event, never lost. Over vipctl's own netlink
        client (host/netlink.py): pyroute2 would add ~10 MB to the daemon's RSS."""
        from vipctl.host import netlink, rtnl

        events = netlink.Subscription(netlink.RTMGRP_LINK)
        try:
            ports = {m.port for m in self.spec.members}
            found = rtnl.links()
            for name in sorted(ports):
                link = found.get(name)
                self._port_index(name, link.index if link is not None else None)
                if link is None:
                    self.link_event(name, False, "does not exist")
                else:
                    self._on_link_state(name, link.admin_up, link.admin_up and link.carrier)
        except BaseException:
            events.close()
            raise
        return events

    async def _link_loop(self, events: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    readable = loop.create_future()
                    loop.add_reader(events.fileno(), readable.set_result, None)
                    try:
                        await readable
                    finally:
                        loop.remove_reader(events.fileno())
                    for msg in events.messages():
                        self._on_link_message(msg)
                except (OSError, RuntimeError, ValueError, KernelError) as exc:
                    # e.g. ENOBUFS: the kernel dropped events for us. Start over from a
                    # fresh dump rather than trust a state we may have missed changes of.
                    log.warning("link events interrupted (%s); subscribing again", exc)
                    events.close()
                    events = await self._resubscribe()
        finally:
            events.close()

    async def _resubscribe(self) -> Any:
        """Subscribe again until it works (EMFILE, ENOBUFS: the prober's own trouble must
        not end link watching for good)."""
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._subscribe_links()
            except (OSError, KernelError) as exc:
                log.error("cannot watch links: %s; retrying in %.1f s", _oserror(exc), delay)
                delay = min(delay * 2, 5.0)

    def _on_link_message(self, msg: Any) -> None:
        """One rtnetlink link message (host/netlink.py Message: type, fields, attributes)."""
        from vipctl.host import netlink

        name = msg.get_attr("IFLA_IFNAME")
        if name is None or name not in {m.port for m in self.spec.members}:
            return
        if msg.type == netlink.RTM_DELLINK:
            self._port_index(name, None)
            self.link_event(name, False, "was removed")
            return
        self._port_index(name, int(msg["index"]))
        flags = int(msg["flags"])
        self._on_link_state(name, bool(flags & 0x1), carrier(flags))

    def _port_index(self, name: str, index: int | None) -> None:
        """Track each port's ifindex; tell the daemon when a known one changes."""
        known = name in self.ifindex
        before = self.ifindex.get(name)
        self.ifindex[name] = index
        if not known or before == index or self.on_port is None:
            return
        if index is None:
            self.on_port(name, "was removed")
        elif before is None:
            self.on_port(name, f"appeared (ifindex {index})")
        else:
            self.on_port(name, f"was re-created (ifindex {before} -> {index})")

    def _on_link_state(self, name: str, admin_up: bool, has_carrier: bool) -> None:
        if has_carrier:
            self.link_event(name, True, "is up")
        elif not admin_up:
            self.link_event(name, False, "was set down")
        else:
            self.link_event(name, False, "lost carrier")


def describe(spec: Spec) -> str:
    """The probe in words, for the startup log."""
    p = spec.health.probe
    h = spec.health
    what = {"icmp": "icmp echo", "tcp": "tcp connect", "http": "http GET", "none": "no probe"}[
        p.kind
    ]
    if isinstance(p, TcpProbe):
        what += f" port {p.port}"
    elif isinstance(p, HttpProbe):
        what += f" port {p.port} {p.path} expect {p.expect}"
    return (
        f"{what} every {h.interval_ms} ms (timeout {h.timeout_ms} ms, rise {h.rise}, fall {h.fall})"
    )

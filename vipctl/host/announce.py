"""VIP reachability on the uplink for an on-link upstream (spec ``announce_vips: true``).

The router answers ARP requests and neighbour solicitations for the VIPs on the uplink
only, with the kernel's proxy-neighbour machinery; data packets are still taken by
vipctl's netdev ingress table on the uplink before the IP stack sees them.

Measured on kernel 6.18 (tests/kernel/test_deploy.py repeats it with real ARP/ND):

- IPv4, ``ip neigh add proxy VIP dev UPLINK``: net/ipv4/arp.c answers for a proxy entry
  only if forwarding is on for the uplink AND the VIP has an RTN_UNICAST route whose
  device is not the uplink. Without that route the client's ARP stays INCOMPLETE. vipctl
  adds a host route for each IPv4 VIP as one multipath route over the member ports (no
  gateway), tagged ``proto 211``: a member port going down only marks its nexthop dead,
  the route and the ARP answers stay. The route carries no client traffic (the ingress
  table consumes it); packets the router itself sends to the VIP would ARP on a member
  port, and members never answer that.
- IPv6, ``ip -6 neigh add proxy VIP dev UPLINK`` plus ``proxy_ndp=1`` on the uplink (and
  forwarding on): net/ipv6/ndisc.c answers; no route is needed, and creating the entry
  joins the VIP's solicited-node multicast group on the uplink.
- ``proxy_delay`` (default 80 jiffies) delays every proxied answer to a broadcast or
  multicast request by a random time up to 0.8 s; vipctl sets it to 0 on the uplink.

Entries are tagged ``protocol 211`` so ``sync(spec, False)`` removes only what vipctl
added. Everything is read and changed through rtnetlink (vipctl.host.rtnl), where the tag
is the number 211 whatever /etc/iproute2/rt_protos calls it; ``commands`` is the same
setup as shell text for operators. The uplink sysctls (proxy_ndp, proxy_delay) are left as
set on removal: without proxy entries they change nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import ip_network

from vipctl.core.net import family
from vipctl.core.spec import Spec
from vipctl.errors import KernelError
from vipctl.host import rtnl
from vipctl.host.sysctl import read_sysctl, sysctl, write_sysctl

PROTO = 211  # rt_protos number tagging vipctl's routes and proxy entries
METRIC = 4211  # a metric of its own, so `replace` never overwrites an operator's route


@dataclass(frozen=True)
class Announcement:
    """What the uplink needs for the spec's VIPs: pure data built from the spec."""

    uplink: str
    proxies: tuple[str, ...]  # VIPs to answer for on the uplink
    routes: tuple[tuple[str, tuple[str, ...]], ...]  # (VIP/32, member ports) for IPv4
    sysctls: tuple[tuple[str, int], ...]  # dotted key -> value


def build(spec: Spec) -> Announcement:
    ports = tuple(dict.fromkeys(m.port for m in spec.members))
    v4 = [str(v) for v in spec.vips if v.version == 4]
    v6 = [str(v) for v in spec.vips if v.version == 6]
    sysctls: list[tuple[str, int]] = []
    if v4:
        sysctls.append((f"net.ipv4.neigh.{spec.uplink}.proxy_delay", 0))
    if v6:
        sysctls.append((f"net.ipv6.conf.{spec.uplink}.proxy_ndp", 1))
        sysctls.append((f"net.ipv6.neigh.{spec.uplink}.proxy_delay", 0))
    return Announcement(
        uplink=spec.uplink,
        proxies=tuple(str(v) for v in spec.vips),
        routes=tuple((f"{vip}/32", ports) for vip in v4),
        sysctls=tuple(sysctls),
    )


def commands(spec: Spec) -> list[str]:
    """The same setup as shell commands (for docs and `doctor` fixes)."""
    a = build(spec)
    out = [f"sysctl -w {sysctl(k, v).key}={v}" for k, v in a.sysctls]
    for vip in a.proxies:
        fam = "-6 " if family(vip) == 6 else ""
        out.append(f"ip {fam}neigh replace proxy {vip} dev {a.uplink} protocol {PROTO}")
    for dst, ports in a.routes:
        hops = " ".join(f"nexthop dev {p}" for p in ports)
        out.append(f"ip route replace {dst} proto {PROTO} metric {METRIC} {hops}")
    return out


def _ours(routes: list[rtnl.Route]) -> list[rtnl.Route]:
    """vipctl's routes among `routes`: protocol 211 in the main table."""
    return [r for r in routes if r.protocol == PROTO and r.table == "main"]


def installed(spec: Spec) -> dict[str, list[str]]:
    """vipctl's proxy entries and VIP routes that are live now, for the spec's uplink."""
    proxies = [n.dst for n in rtnl.proxies() if n.dev == spec.uplink and n.protocol == PROTO]
    routes = [r.dst for family in (4, 6) for r in _ours(rtnl.routes(family))]
    vips = {str(v) for v in spec.vips}
    return {
        "proxies": [p for p in proxies if p in vips],
        "routes": [r for r in routes if _host(r) in vips],
    }


def _host(dst: str) -> str:
    try:
        return str(ip_network(dst, strict=False).network_address)
    except ValueError:
        return dst


def _index(names: dict[str, int], dev: str) -> int:
    if dev not in names:
        raise KernelError(f"interface {dev} does not exist")
    return names[dev]


def check(spec: Spec) -> None:
    """Refuse, before anything is committed, an announcement that `sync` could not make:
    a uplink sysctl it must change under a read-only /proc/sys (systemd's
    ProtectKernelTunables=yes). Otherwise apply would commit the ruleset and then fail."""
    if not spec.announce_vips:
        return
    for key, value in build(spec).sysctls:
        s = sysctl(key, value)
        current = read_sysctl(s.path)
        if current is not None and current != str(value) and not os.access(s.proc, os.W_OK):
            raise KernelError(
                f"cannot announce the VIPs: {s.proc} is {current}, needs {value}, and is "
                "read-only here (ProtectKernelTunables?); set it before vipctl runs, e.g. "
                f"in /etc/sysctl.d (nothing changed)"
            )


def sync(spec: Spec, enabled: bool | None = None) -> list[str]:
    """Make the uplink answer (or stop answering) ARP/ND for the spec's VIPs.

    ``enabled`` defaults to ``spec.announce_vips``. Idempotent; returns what changed.
    Raises KernelError when the uplink or a member port is missing.
    """
    on = spec.announce_vips if enabled is None else enabled
    have = installed(spec) if _exists(spec.uplink) else {"proxies": [], "routes": []}
    changes: list[str] = []
    if not on:
        if have["proxies"]:
            uplink = _index({n: i.index for n, i in rtnl.links().items()}, spec.uplink)
            for vip in have["proxies"]:
                if rtnl.proxy_delete(vip, uplink, spec.uplink):
                    changes.append(f"ip neigh del proxy {vip} dev {spec.uplink}")
        for dst in have["routes"]:
            if rtnl.route_delete(dst, PROTO, METRIC):
                changes.append(f"ip route del {dst} proto {PROTO}")
        return changes
    a = build(spec)
    missing = [d for d in (a.uplink, *(p for _, ps in a.routes for p in ps)) if not _exists(d)]
    if missing:
        raise KernelError(
            f"cannot announce the VIPs: interface(s) {', '.join(sorted(set(missing)))} "
            "do not exist (nothing changed)"
        )
    for key, value in a.sysctls:
        s = sysctl(key, value)
        current = read_sysctl(s.path)
        if current is None:
            raise KernelError(f"sysctl {s.key} does not exist")
        if current != str(value):
            write_sysctl(s.path, value)
            changes.append(f"sysctl -w {s.key}={value}")
    names = {n: i.index for n, i in rtnl.links().items()}
    for vip in a.proxies:
        if vip in have["proxies"]:
            continue
        rtnl.proxy_replace(vip, _index(names, a.uplink), a.uplink, PROTO)
        changes.append(f"ip neigh replace proxy {vip} dev {a.uplink} protocol {PROTO}")
    live = {_host(r.dst): r for r in _ours(rtnl.routes(4))}
    for dst, ports in a.routes:
        current_ports = _route_ports(live.get(_host(dst)))
        if current_ports == set(ports):
            continue
        rtnl.multipath_replace(dst, [_index(names, p) for p in ports], PROTO, METRIC)
        changes.append(f"ip route replace {dst} proto {PROTO} via {', '.join(ports)}")
    return changes


def _route_ports(route: rtnl.Route | None) -> set[str] | None:
    if route is None:
        return None
    if route.nexthops:
        return set(route.nexthops)
    return {route.dev}


def _exists(dev: str) -> bool:
    return read_sysctl(("net", "ipv4", "conf", dev, "forwarding")) is not None

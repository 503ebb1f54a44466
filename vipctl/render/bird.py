"""BIRD 2 configuration for a cluster's `bgp` section (pure).

The VIPs come from a static protocol exported to BGP only: no kernel protocol, so no route
lands in the router's own table (the netdev rules take VIP packets before routing). While
the router does not serve (`serving` False: no member up, or `vipctl down` under way) the
static protocol holds no route, so `birdc configure` with that text withdraws every VIP
and keeps the sessions up. Timers as measured with BIRD 2.0.12 on these machines: BFD
100 ms x 3 removes a dead router upstream in 216-298 ms; the short hold, connect and error
timers bring a session back in 1-4 s instead of 30 s or more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3


def static_name(cluster: str, family: int) -> str:
    return f"vips{family}_{cluster.replace('-', '_')}"


def render(spec: Spec, serving: bool, log_path: str) -> str:
    bgp = spec.bgp
    if bgp is None:
        raise ValueError(f"cluster {spec.cluster} has no bgp section")
    lines = [
        f"# written by vipctl for cluster {spec.cluster}; vipctl rewrites it on every change",
        f'log "{log_path}" {{ info, remote, warning, error, auth, fatal, bug }};',
    ]
    if bgp.router_id is not None:
        lines.append(f"router id {bgp.router_id};")
    lines.append("protocol device { scan time 10; }")
    for family in (4, 6):
        vips = [v for v in spec.vips if v.version == family]
        if not vips:
            continue
        plen = 32 if family == 4 else 128
        routes = "".join(f" route {v}/{plen} blackhole;" for v in vips) if serving else ""
        lines.append(
            f"protocol static {static_name(spec.cluster, family)} {{ ipv{family};{routes} }}"
        )
    if bgp.bfd:
        lines.append(
            f'protocol bfd {{ interface "*" {{ min rx interval {BFD_INTERVAL_MS} ms; '
            f"min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}"
        )
    for i, peer in enumerate(bgp.peers):
        family = peer.address.version
        lines.append(
            f"protocol bgp peer{i} {{ local as {bgp.asn}; neighbor {peer.address} as {peer.asn};\n"
            f"  ipv{family} {{ import none; export where proto = "
            f'"{static_name(spec.cluster, family)}"; }};\n'
            f"  bfd {'on' if bgp.bfd else 'off'}; hold time 3; keepalive time 1;\n"
            "  connect delay time 1; connect retry time 2; error wait time 1, 4; "
            "error forget time 10; }"
        )
    return "\n".join(lines) + "\n"

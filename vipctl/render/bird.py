"""BIRD 2 configuration for the clusters' `bgp` sections (pure). One BGP speaker per
router, whatever the number of clusters:

* `routes(spec, serving)`: a cluster's VIPs, one static protocol per family. The file
  vipctl writes for that cluster, in both speaker modes (`speaker: external`: the file the
  operator's bird.conf includes; `speaker: vipctl`: included by the shared configuration).
* `shared(clusters, log_path)`: the configuration of the one BIRD vipctl runs for every
  cluster with `speaker: vipctl`: one session per peer (two clusters that name the same
  upstream share its session), each exporting the statics of the clusters that name it,
  one BFD protocol, and an include of every cluster's routes file. Clusters that disagree
  about what one BIRD can hold once (this router's AS towards a peer, the router id, the
  BFD timers) are refused with both names (`Conflict`).

The VIPs come from static protocols exported to BGP only: no kernel protocol, so no route
lands in the router's own table (the netdev rules take VIP packets before routing). While
a cluster does not serve (no member up, or `vipctl down` under way) its statics hold no
route, so `birdc configure` withdraws its VIPs and keeps the sessions up. Timers as
measured with BIRD 2.0.12 on these machines: BFD 100 ms x 3 removes a dead router upstream
in 216-298 ms; the short hold, connect and error timers bring a session back in 1-4 s
instead of 30 s or more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from vipctl.core.spec import Bgp, Spec


T = TypeVar("T")


class Conflict(ValueError):
    """Two clusters' `bgp` sections ask one BIRD for different things."""


def static_name(cluster: str, family: int) -> str:
    return f"vips{family}_{cluster.replace('-', '_')}"


def peer_name(address: IPv4Address | IPv6Address) -> str:
    """The session's protocol name: one per peer address, whichever clusters name it."""
    return "peer_" + str(address).replace(".", "_").replace(":", "_")


def routes(spec: Spec, serving: bool) -> str:
    """The cluster's static protocols: every VIP as a host route while `serving`, none
    otherwise (the protocols stay, so a peer's export filter always names them)."""
    lines = [
        f"# written by vipctl for cluster {spec.cluster}; vipctl rewrites it on every change",
        f"# ({'serving: every VIP announced' if serving else 'not serving: nothing announced'})",
    ]
    for family in spec.vip_families:
        plen = 32 if family == 4 else 128
        vips = [v for v in spec.vips if v.version == family]
        body = "".join(f" route {v}/{plen} blackhole;" for v in vips) if serving else ""
        lines.append(
            f"protocol static {static_name(spec.cluster, family)} {{ ipv{family};{body} }}"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Member:
    """A cluster as the shared BIRD sees it: its `bgp` section, its VIP families and the
    path of its routes file."""

    bgp: Bgp
    families: tuple[int, ...]
    include: str


def _one(what: str, values: Mapping[str, T]) -> T:
    """The value every cluster agrees on, else Conflict naming two that differ."""
    distinct = {repr(v): (c, v) for c, v in sorted(values.items())}
    if len(distinct) > 1:
        (c1, v1), (c2, v2) = list(distinct.values())[:2]
        raise Conflict(
            f"{what}: cluster {c1} has {v1} and cluster {c2} has {v2}, but the clusters "
            "share one BGP speaker on this router: make them equal"
        )
    return next(iter(values.values()))


def shared(clusters: Mapping[str, Member], log_path: str) -> str:
    """The one BIRD's configuration for `clusters` (name -> Member), at least one."""
    if not clusters:
        raise ValueError("no cluster for the shared BIRD")
    names = sorted(clusters)
    ids = {c: clusters[c].bgp.router_id for c in names if clusters[c].bgp.router_id is not None}
    router_id = _one("bgp.router_id", ids) if ids else None
    with_bfd = {c: clusters[c].bgp for c in names if clusters[c].bgp.bfd}
    timers = (
        _one(
            "bgp.bfd_interval_ms/bfd_multiplier",
            {c: (b.bfd_interval_ms, b.bfd_multiplier) for c, b in with_bfd.items()},
        )
        if with_bfd
        else None
    )
    # one session per peer address: the clusters naming it, and what they ask of it
    peers: dict[IPv4Address | IPv6Address, dict[str, tuple[int | None, int, bool]]] = {}
    for c in names:
        b = clusters[c].bgp
        for p in b.peers:
            peers.setdefault(p.address, {})[c] = (b.asn, p.asn, b.bfd)
    lines = [
        "# written by vipctl: the one BIRD of this router's clusters; rewritten on every change",
        f'log "{log_path}" {{ info, remote, warning, error, auth, fatal, bug }};',
    ]
    if router_id is not None:
        lines.append(f"router id {router_id};")
    lines.append("protocol device { scan time 10; }")
    if timers is not None:
        interval, multiplier = timers
        lines.append(
            f'protocol bfd {{ interface "*" {{ min rx interval {interval} ms; '
            f"min tx interval {interval} ms; multiplier {multiplier}; }}; }}"
        )
    for c in names:
        lines.append(f'include "{clusters[c].include}";')
    for address in sorted(peers, key=lambda a: (a.version, int(a))):
        asked = peers[address]
        local_as, peer_as, bfd = _one(f"bgp.peers {address} (asn, peer asn, bfd)", asked)
        family = address.version
        statics = [
            f'proto = "{static_name(c, family)}"'
            for c in sorted(asked)
            if family in clusters[c].families
        ]
        export = f"export where {' || '.join(statics)}" if statics else "export none"
        lines.append(
            f"protocol bgp {peer_name(address)} {{ local as {local_as}; "
            f"neighbor {address} as {peer_as};\n"
            f"  ipv{family} {{ import none; {export}; }};\n"
            f"  bfd {'on' if bfd else 'off'}; hold time 3; keepalive time 1;\n"
            "  connect delay time 1; connect retry time 2; error wait time 1, 4; "
            "error forget time 10; }"
        )
    return "\n".join(lines) + "\n"

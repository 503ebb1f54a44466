"""Preflight checks: is this box ready to serve the spec's VIPs?

Each check has a stable name (``link:m1``, ``rp_filter:m1``...), a status (ok, warning,
error) and, when not ok, the exact fix. ``vipctl doctor SPEC`` prints them; ``apply`` runs
``preflight(spec)`` first and refuses on errors.

The checks are pure functions of a ``Host`` (what the kernel says), so unit tests hand
them a fake one; ``LiveHost`` asks the kernel of the current network namespace: rtnetlink,
``/proc/sys``, and the nftables backend's check mode, handed in as ``nft_check`` (the
batch goes to the kernel, which validates it, and is never committed).
"""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Literal, Protocol

from vipctl.core.spec import Spec
from vipctl.errors import KernelError
from vipctl.host import netlink as nl
from vipctl.host import rtnl
from vipctl.host.links import poke_neighbour
from vipctl.host.rtnl import LinkInfo as LinkInfo  # re-exported: checks and tests use them
from vipctl.host.rtnl import Route as Route
from vipctl.host.sysctl import read_sysctl, sysctl

Status = Literal["ok", "warning", "error"]
PROBE_TABLE = "vipctl_doctor"


@dataclass(frozen=True)
class Finding:
    check: str  # stable name: kernel, link:up0, neighbour:web1, rp_filter:m1, ...
    status: Status
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


# --------------------------------------------------------------------------------------
# What a check may ask the host
# --------------------------------------------------------------------------------------


# LinkInfo (name, admin_up, carrier, mtu) and Route (type, dst, dev, table, protocol as
# the kernel's number) come from vipctl.host.rtnl, which builds them from netlink messages.

# `ip route get` refusals that mean "this source is not accepted on this interface": the
# reverse-path filter or a martian source (EINVAL; EXDEV on older kernels). Judged by
# errno, never by text (which follows the locale).
RP_ERRNOS = frozenset({errno.EINVAL, errno.EXDEV})


@dataclass(frozen=True)
class Neighbour:
    mac: str | None  # resolved on the member's port
    elsewhere: str | None = None  # another interface where the address answered


class Host(Protocol):
    def links(self) -> Mapping[str, LinkInfo]: ...
    def sysctl(self, key: str) -> str | None: ...
    def addresses(self) -> Sequence[tuple[str, int, str]]: ...  # address, prefixlen, dev
    def routes(self, family: int) -> Sequence[Route]: ...
    def neighbours(self, spec: Spec, ports: set[str]) -> Mapping[str, Neighbour]: ...
    def reverse_path(self, vip: str, port: str, uplink: str) -> str | None: ...
    def nft_check(self, batch: str) -> str | None: ...
    def tc_check(self) -> str | None: ...
    # XDP_ACT_* bits per interface (host/netlink.py); None: the kernel cannot say
    def xdp_features(self, devs: Sequence[str]) -> Mapping[str, int] | None: ...
    def proxies(self, uplink: str) -> Sequence[str]: ...


# --------------------------------------------------------------------------------------
# The checks (pure)
# --------------------------------------------------------------------------------------

# feature -> (nft statements added to the probe table, kernel options that provide it)
_FEATURES: dict[str, tuple[str, str]] = {
    "netdev ingress hook": ("", "CONFIG_NF_TABLES_NETDEV, CONFIG_NETFILTER_INGRESS"),
    "netdev egress hook": (
        'add chain netdev {t} e {{ type filter hook egress device "lo" priority 0; }}\n'
        "add rule netdev {t} e meta mark 3 ether daddr set 02:00:00:00:00:01\n",
        "CONFIG_NETFILTER_EGRESS (Linux >= 5.16)",
    ),
    "dup": ('add rule netdev {t} i meta mark 1 dup to "lo" drop\n', "CONFIG_NFT_DUP_NETDEV"),
    "fwd": ('add rule netdev {t} i meta mark 2 fwd to "lo"\n', "CONFIG_NFT_FWD_NETDEV"),
    "jhash": (
        "add rule netdev {t} i meta mark set jhash ip saddr mod 16 seed 0x5eed\n",
        "CONFIG_NFT_HASH",
    ),
    "dynamic sets with timeouts": (
        "add set netdev {t} p { type ipv4_addr . inet_service; size 16; "
        "flags dynamic,timeout; timeout 10m; }\n"
        "add rule netdev {t} i meta l4proto { tcp, udp } update @p { ip saddr . th sport }\n",
        "CONFIG_NF_TABLES_SET (hash sets) with timeouts",
    ),
}


def needed_features(spec: Spec) -> list[str]:
    out = ["netdev ingress hook"]
    # steer rewrites the MAC at ingress; broadcast filters its copies on each port's egress
    out += ["netdev egress hook", "dup"] if spec.mode == "broadcast" else ["fwd"]
    if spec.partition.key == "hash":
        out.append("jhash")
    if spec.pinning.enabled:
        out.append("dynamic sets with timeouts")
    return out


def probe_batch(*features: str) -> str:
    """A throw-away table that uses ``features`` on lo (sent in check mode only)."""
    t = PROBE_TABLE
    base = (
        f"add table netdev {t}\n"
        f'add chain netdev {t} i {{ type filter hook ingress device "lo" priority 0; }}\n'
    )
    extra = "".join(
        _FEATURES[f][0].replace("{t}", t).replace("{{", "{").replace("}}", "}") for f in features
    )
    return base + extra


def check_kernel(spec: Spec, host: Host) -> list[Finding]:
    if spec.backend == "xdp":
        return check_xdp(spec, host)
    if spec.backend == "tc":
        err = host.tc_check()
        if err is None:
            return [Finding("kernel", "ok", "tc flower, pedit, gact and mirred work")]
        return [
            Finding(
                "kernel",
                "error",
                f"backend tc needs tc flower + pedit + gact + mirred, which this kernel "
                f"refused: {err}",
                "use a kernel with CONFIG_NET_CLS_FLOWER, CONFIG_NET_ACT_PEDIT, "
                "CONFIG_NET_ACT_GACT and CONFIG_NET_ACT_MIRRED (modules are autoloaded), "
                "or set `backend: nftables` in the spec",
            )
        ]
    missing: dict[str, str] = {}
    features = needed_features(spec)
    # one check of every feature together (each check is a libnftables run, ~12 ms); only
    # a refusal asks feature by feature, to name what is missing
    if host.nft_check(probe_batch(*features)) is not None:
        for feature in features:
            err = host.nft_check(probe_batch(feature))
            if err is not None:
                missing[feature] = err
    if not missing:
        return [
            Finding(
                "kernel",
                "ok",
                f"nftables accepts what mode {spec.mode} needs: "
                + ", ".join(needed_features(spec)),
            )
        ]
    options = "; ".join(f"{f}: {_FEATURES[f][1]}" for f in missing)
    detail = "; ".join(f"{f}: {e}" for f, e in missing.items())
    return [
        Finding(
            "kernel",
            "error",
            f"the kernel refuses what mode {spec.mode} needs ({detail})",
            f"build or boot a kernel with {options} (or modprobe the matching nft_* "
            "modules); or pick the other mode",
        )
    ]


def check_xdp(spec: Spec, host: Host) -> list[Finding]:
    """backend: xdp needs native XDP with redirect on the uplink, and every member port
    must transmit what XDP redirects to it (NETDEV_XDP_ACT_NDO_XMIT): a port without it drops
    every redirected frame silently (a veth: until its peer runs an XDP program)."""
    ports = [m.port for m in spec.members if m.port in host.links()]
    features = host.xdp_features([spec.uplink, *ports]) if spec.uplink in host.links() else {}
    if features is None:
        return [
            Finding(
                "kernel",
                "error",
                "this kernel cannot say which devices run native XDP (no netdev generic "
                "netlink family: before Linux 6.3)",
                "use backend: nftables, or a kernel >= 6.3",
            )
        ]
    out: list[Finding] = []
    need = nl.NETDEV_XDP_ACT_BASIC | nl.NETDEV_XDP_ACT_REDIRECT
    up = features.get(spec.uplink, 0)
    if spec.uplink in features and up & need != need:
        out.append(
            Finding(
                "kernel",
                "error",
                f"the driver of {spec.uplink} has no native XDP with redirect (xdp_features "
                f"0x{up:x}); the XDP fast path cannot run there",
                "use backend: nftables (every driver), or a NIC whose driver has native XDP",
            )
        )
    for port in ports:
        bits = features.get(port, 0)
        if not bits & nl.NETDEV_XDP_ACT_NDO_XMIT:
            out.append(
                Finding(
                    f"link:{port}",
                    "error",
                    f"{port} cannot transmit frames XDP redirects to it (xdp_features "
                    f"0x{bits:x}): every packet steered there would be dropped",
                    f"use backend: nftables; on a veth, attach an XDP program (XDP_PASS) to "
                    f"the peer of {port}",
                )
            )
    if not out:
        out.append(
            Finding(
                "kernel",
                "ok",
                f"{spec.uplink} runs native XDP with redirect; every member port takes "
                "redirected frames",
            )
        )
    return out


def check_links(spec: Spec, host: Host) -> list[Finding]:
    links = host.links()
    out: list[Finding] = []
    wanted = [(spec.uplink, "uplink", "uplink")]
    wanted += [
        (m.port, f"port of member {m.name}", f"members[{i}].port")
        for i, m in enumerate(spec.members)
    ]
    for dev, role, field_path in wanted:
        name = f"link:{dev}"
        link = links.get(dev)
        if link is None:
            out.append(
                Finding(
                    name,
                    "error",
                    f"{role} '{dev}' does not exist",
                    f"create interface {dev}, or correct `{field_path}` in the spec",
                )
            )
        elif not link.admin_up:
            out.append(
                Finding(name, "error", f"{role} '{dev}' is down", f"ip link set dev {dev} up")
            )
        elif not link.carrier:
            out.append(
                Finding(
                    name,
                    "error",
                    f"{role} '{dev}' is up but has no carrier (link partner down or "
                    "cable unplugged)",
                    f"connect {dev} and bring its far end up (check: ip link show dev {dev})",
                )
            )
        else:
            out.append(Finding(name, "ok", f"{role} '{dev}' is up (mtu {link.mtu})"))
    return out


def check_neighbours(spec: Spec, host: Host) -> list[Finding]:
    links = host.links()
    ports = {m.port for m in spec.members if m.port in links and links[m.port].admin_up}
    found = host.neighbours(spec, ports)
    out: list[Finding] = []
    for i, m in enumerate(spec.members):
        name = f"neighbour:{m.name}"
        if m.mac:
            out.append(Finding(name, "ok", f"MAC {m.mac} given in the spec (not resolved)"))
            continue
        if m.port not in ports:
            out.append(
                Finding(
                    name,
                    "error",
                    f"cannot resolve {m.address}: port {m.port} is not up",
                    f"fix link:{m.port} first",
                )
            )
            continue
        n = found.get(m.name, Neighbour(None))
        if n.mac:
            out.append(Finding(name, "ok", f"{m.address} is at {n.mac} on {m.port}"))
        elif n.elsewhere:
            out.append(
                Finding(
                    name,
                    "error",
                    f"{m.address} answers on {n.elsewhere}, not on its port {m.port}",
                    f"plug member {m.name} into {m.port}, or set `members[{i}].port: "
                    f"{n.elsewhere}` in the spec",
                )
            )
        else:
            out.append(
                Finding(
                    name,
                    "error",
                    f"{m.address} does not answer ARP/ND on {m.port}",
                    f"on member {m.name}: configure {m.address} on the interface facing "
                    f"{m.port} and bring it up; or set `members[{i}].mac` in the spec",
                )
            )
    return out


def _sysctl_fix(*pairs: tuple[str, object]) -> str:
    return "sysctl -w " + " ".join(f"{sysctl(k, 0).key}={v}" for k, v in pairs)


def check_forwarding(spec: Spec, host: Host) -> list[Finding]:
    out: list[Finding] = []
    devs = [spec.uplink, *(m.port for m in spec.members)]
    for family in spec.vip_families:
        name = f"forwarding:ipv{family}"
        proto = f"ipv{family}"
        off: list[tuple[str, object]] = []
        glob = host.sysctl(f"net.{proto}.conf.all.forwarding")
        if glob != "1":
            off.append((f"net.{proto}.conf.all.forwarding", 1))
        for dev in devs:
            value = host.sysctl(f"net.{proto}.conf.{dev}.forwarding")
            if value is not None and value != "1":
                off.append((f"net.{proto}.conf.{dev}.forwarding", 1))
        if not off:
            out.append(Finding(name, "ok", f"IPv{family} forwarding is on"))
            continue
        where = ", ".join(sysctl(k, 0).key for k, _ in off)
        out.append(
            Finding(
                name,
                "error",
                f"IPv{family} forwarding is off ({where}): members' replies would not be "
                "routed back to clients"
                + (
                    " and the uplink would not answer ARP/ND for the VIPs"
                    if spec.announce_vips
                    else ""
                ),
                _sysctl_fix(*off) + "  (persist it in /etc/sysctl.d/90-vipctl.conf)",
            )
        )
    return out


def check_rp_filter(spec: Spec, host: Host) -> list[Finding]:
    """Members answer from the VIP: the router must accept that source on every port."""
    out: list[Finding] = []
    vips4 = [str(v) for v in spec.vips if v.version == 4]
    if not vips4:
        return out
    links = host.links()
    all_rp = host.sysctl("net.ipv4.conf.all.rp_filter") or "0"
    for m in spec.members:
        name = f"rp_filter:{m.port}"
        if m.port not in links or not links[m.port].admin_up:
            continue
        port_rp = host.sysctl(f"net.ipv4.conf.{m.port}.rp_filter") or "0"
        effective = max(int(all_rp), int(port_rp))
        failures = []
        for vip in vips4:
            err = host.reverse_path(vip, m.port, spec.uplink)
            if err is not None:
                failures.append(f"{vip}: {err}")
        if not failures:
            mode = {0: "off", 1: "strict", 2: "loose"}.get(effective, str(effective))
            out.append(Finding(name, "ok", f"replies from the VIP pass on {m.port} ({mode})"))
            continue
        fixes: list[tuple[str, object]] = []
        if all_rp != "0":
            fixes.append(("net.ipv4.conf.all.rp_filter", 0))
        if port_rp != "0":
            fixes.append((f"net.ipv4.conf.{m.port}.rp_filter", 0))
        fix = (
            _sysctl_fix(*fixes)
            if fixes
            else f"check `ip route get 192.0.2.1 from {vips4[0]} iif {m.port}`"
        )
        if all_rp != "0":
            fix += (
                " (then set rp_filter per interface where you want it, e.g. "
                f"{sysctl(f'net.ipv4.conf.{spec.uplink}.rp_filter', 0).key}=1)"
            )
        fix += "; or keep loose mode (2) and give the VIP a route (announce_vips adds one)"
        out.append(
            Finding(
                name,
                "error",
                f"reverse-path filter (rp_filter={effective}) drops members' replies sourced "
                f"from the VIP on {m.port}: " + "; ".join(failures),
                fix,
            )
        )
    return out


def check_mtu(spec: Spec, host: Host) -> list[Finding]:
    links = host.links()
    up = links.get(spec.uplink)
    if up is None:
        return []
    out: list[Finding] = []
    for m in spec.members:
        port = links.get(m.port)
        if port is None:
            continue
        name = f"mtu:{m.port}"
        if port.mtu == up.mtu:
            out.append(Finding(name, "ok", f"{m.port} and {spec.uplink} both have mtu {up.mtu}"))
        elif port.mtu < up.mtu:
            out.append(
                Finding(
                    name,
                    "error",
                    f"{m.port} has mtu {port.mtu} < uplink {spec.uplink} mtu {up.mtu}: frames "
                    "copied or forwarded from the uplink at layer 2 are dropped, not "
                    "fragmented",
                    f"ip link set dev {m.port} mtu {up.mtu}  (and the same mtu on member "
                    f"{m.name}'s interface)",
                )
            )
        else:
            out.append(
                Finding(
                    name,
                    "warning",
                    f"{m.port} has mtu {port.mtu} > uplink {spec.uplink} mtu {up.mtu}: large "
                    "replies are fragmented or need path-MTU discovery",
                    f"ip link set dev {m.port} mtu {up.mtu}  (and on member {m.name})",
                )
            )
    return out


def _covers(dst: str, vip: IPv4Address | IPv6Address) -> bool:
    if dst == "default":
        return False  # a default route is not a claim on the VIP
    try:
        net = ip_network(dst, strict=False)
    except ValueError:
        return False
    return net.version == vip.version and vip in net


def check_vip_claims(spec: Spec, host: Host) -> list[Finding]:
    from vipctl.host.announce import PROTO

    addrs = host.addresses()
    routes = {f: host.routes(f) for f in spec.vip_families}
    out: list[Finding] = []
    for vip in spec.vips:
        name = f"vip:{vip}"
        problems: list[tuple[Status, str, str]] = []
        for address, plen, dev in addrs:
            if ip_address(address) == vip:
                problems.append(
                    (
                        "error",
                        f"{vip} is a local address of this box (on {dev}): it would answer "
                        "for the VIP itself and drop members' replies as martians",
                        f"ip addr del {address}/{plen} dev {dev}",
                    )
                )
        for r in routes[vip.version]:
            if r.protocol == PROTO or not _covers(r.dst, vip):
                continue
            fam = "-6 " if vip.version == 6 else ""
            where = f"{r.type} {r.dst}" + (f" dev {r.dev}" if r.dev else "") + (f" table {r.table}")
            if r.type == "local" and not any(ip_address(a) == vip for a, _, _ in addrs):
                problems.append(
                    (
                        "error",
                        f"route `{where}` makes {vip} local to this box",
                        f"ip {fam}route del {where}",
                    )
                )
            elif r.type in ("blackhole", "unreachable", "prohibit"):
                problems.append(
                    (
                        "warning",
                        f"route `{where}` swallows {vip} for anything that is routed "
                        "(the router's own traffic, reverse-path checks)",
                        f"ip {fam}route del {where}",
                    )
                )
        if not problems:
            out.append(Finding(name, "ok", f"nothing else on this box claims {vip}"))
        for status, message, fix in problems:
            out.append(Finding(name, status, message, fix))
    return out


def check_announce(spec: Spec, host: Host) -> list[Finding]:
    from vipctl.host.announce import commands

    present = set(host.proxies(spec.uplink))
    vips = [str(v) for v in spec.vips]
    if spec.announce_vips:
        if all(v in present for v in vips):
            return [Finding("announce", "ok", f"{spec.uplink} answers ARP/ND for the VIPs")]
        return [
            Finding(
                "announce",
                "warning",
                f"announce_vips is on but {spec.uplink} does not answer ARP/ND for "
                + ", ".join(v for v in vips if v not in present)
                + " yet (vipctl apply installs it)",
                "vipctl apply SPEC, or: " + "; ".join(commands(spec)),
            )
        ]
    stale = [v for v in vips if v in present]
    if stale:
        fixes = "; ".join(
            f"ip {'-6 ' if ':' in v else ''}neigh del proxy {v} dev {spec.uplink}" for v in stale
        )
        return [
            Finding(
                "announce",
                "warning",
                f"announce_vips is off but {spec.uplink} still answers ARP/ND for "
                + ", ".join(stale),
                f"vipctl apply SPEC removes vipctl's entries; others: {fixes}",
            )
        ]
    return [
        Finding(
            "announce",
            "ok",
            "announce_vips is off: route the VIPs to this router's uplink address upstream",
        )
    ]


CHECKS = (
    check_kernel,
    check_links,
    check_neighbours,
    check_forwarding,
    check_rp_filter,
    check_mtu,
    check_vip_claims,
    check_announce,
)


def run_checks(spec: Spec, host: Host, down: Collection[str] = ()) -> list[Finding]:
    """Every check. Members in ``down`` (declared down, as by the daemon) may be
    unreachable: their neighbour and carrier problems are warnings, not errors."""
    out: list[Finding] = []
    for check in CHECKS:
        out.extend(check(spec, host))
    if down:
        relaxed = {f"neighbour:{n}" for n in down}
        relaxed |= {f"link:{m.port}" for m in spec.members if m.name in down}
        out = [
            replace(f, status="warning", message=f"(member declared down) {f.message}")
            if f.check in relaxed and f.status == "error" and "does not exist" not in f.message
            else f
            for f in out
        ]
    return out


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "error"]


# --------------------------------------------------------------------------------------
# The live host (the current network namespace)
# --------------------------------------------------------------------------------------


@dataclass
class LiveHost:
    check_batch: Callable[[str], None] | None = None  # raises KernelError when refused
    resolve_timeout: float = 1.5
    _links: dict[str, LinkInfo] | None = field(default=None, repr=False)
    _client_like: dict[str, str] = field(default_factory=dict, repr=False)  # by uplink

    def links(self) -> Mapping[str, LinkInfo]:
        if self._links is None:
            self._links = rtnl.links()
        return self._links

    def sysctl(self, key: str) -> str | None:
        return read_sysctl(key)

    def addresses(self) -> Sequence[tuple[str, int, str]]:
        return rtnl.addresses()

    def routes(self, family: int) -> Sequence[Route]:
        return rtnl.routes(family)

    def neighbours(self, spec: Spec, ports: set[str]) -> Mapping[str, Neighbour]:
        wanted = {m.name: m for m in spec.members if not m.mac and m.port in ports}
        found: dict[str, Neighbour] = {}

        def look() -> None:
            table = [n for n in rtnl.neighbours() if n.usable]
            for name, m in wanted.items():
                if name in found and found[name].mac:
                    continue
                for n in table:
                    if n.dst != str(m.address):
                        continue
                    if n.dev == m.port:
                        found[name] = Neighbour(n.lladdr)
                        break
                    found[name] = Neighbour(None, elsewhere=n.dev)

        look()
        pending = [m for n, m in wanted.items() if n not in found or not found[n].mac]
        for m in pending:
            poke_neighbour(m.address, m.port)
        deadline = time.monotonic() + self.resolve_timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.05)
            look()
            pending = [m for n, m in wanted.items() if n not in found or not found[n].mac]
        return found

    def reverse_path(self, vip: str, port: str, uplink: str) -> str | None:
        link = self.links().get(port)
        if link is None:
            return None  # check_links names it
        if uplink not in self._client_like:  # one address for every member and VIP
            self._client_like[uplink] = _client_like_address(uplink)
        dst = self._client_like[uplink]
        code = rtnl.route_get_errno(dst, vip, link.index)
        if code in RP_ERRNOS:
            return f"`ip route get {dst} from {vip} iif {port}` fails: {rtnl.describe(code)}"
        return None  # routed, or another reason (forwarding off, no route): others name it

    def nft_check(self, batch: str) -> str | None:
        if self.check_batch is None:
            return "no nftables check available (the nftables bindings are not installed)"
        try:
            self.check_batch(batch)
        except KernelError as exc:
            return str(exc).removeprefix("the kernel would refuse the ruleset: ").split("\n")[0]
        return None

    def tc_check(self) -> str | None:
        # A throw-away network namespace (unshare -n) so nothing on this box changes.
        script = (
            "ip link set lo up && tc qdisc add dev lo clsact && "
            "tc filter add dev lo egress protocol ip pref 1 flower dst_ip 192.0.2.1 "
            "action pedit ex munge eth dst set 02:00:00:00:00:01 pipe "
            "action mirred egress mirror dev lo pipe action gact ok"
        )
        try:
            proc = subprocess.run(
                ["unshare", "--net", "sh", "-c", script],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError:
            return "unshare (util-linux) is not installed, cannot probe tc"
        if proc.returncode == 0:
            return None
        return " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"

    def xdp_features(self, devs: Sequence[str]) -> Mapping[str, int] | None:
        index = {name: link.index for name, link in self.links().items()}
        found = nl.xdp_features([index[d] for d in devs if d in index])
        if found is None:
            return None
        return {d: found.get(index[d], 0) for d in devs if d in index}

    def proxies(self, uplink: str) -> Sequence[str]:
        if uplink not in self.links():
            return []
        return [n.dst for n in rtnl.proxies() if n.dev == uplink]


def _client_like_address(uplink: str) -> str:
    """An IPv4 destination routed out of the uplink (the reply path a client would use)."""
    mine = {a.address for a in rtnl.addresses(4)}
    return client_like_address(uplink, rtnl.routes(4), mine)


def client_like_address(uplink: str, routes: Sequence[Route], mine: Collection[str]) -> str:
    """The gateway of the first main-table route out of the uplink, else the first or
    second host of its prefix that is not an address of this box; 192.0.2.1 if none."""
    for r in routes:
        if r.table != "main" or r.dev != uplink:
            continue
        if r.gateway:
            return r.gateway
        if r.dst and r.dst != "default":
            net = ip_network(r.dst, strict=False)
            for host in (net.network_address + 1, net.network_address + 2):
                if str(host) not in mine and host in net:
                    return str(host)
    return "192.0.2.1"


# --------------------------------------------------------------------------------------
# `vipctl doctor` (registered in cli.py)
# --------------------------------------------------------------------------------------


def format_findings(findings: Sequence[Finding], *, verbose: bool = True) -> str:
    label = {"ok": "ok", "warning": "WARNING", "error": "ERROR"}
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        if f.status == "ok" and not verbose:
            continue
        lines.append(f"{label[f.status]:<8} {f.check:<{width}}  {f.message}")
        if f.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {f.fix}")
    n_err = sum(f.status == "error" for f in findings)
    n_warn = sum(f.status == "warning" for f in findings)
    lines.append(f"{len(findings)} checks: {n_err} error(s), {n_warn} warning(s)")
    return "\n".join(lines) + "\n"

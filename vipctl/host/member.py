"""Member-side setup: what each member server needs so the draft's scheme works.

Every member holds every VIP as a host address on its loopback, so it accepts the packets
the router hands it, but it must never claim the VIP on the link to the router:

- IPv4: ``arp_ignore=1`` (answer ARP only for addresses on the receiving interface; the
  VIP is on lo) and ``arp_announce=2`` (never use the VIP as the sender address of its own
  ARP requests on the router link).
- IPv6: Linux answers neighbour solicitations only for addresses on the interface that
  received them, and a loopback address never runs DAD (``nodad`` says so explicitly), so
  a VIP on lo is never announced on the router link. Nothing else is needed (and the
  kernel test captures ND on the member links to prove it).
- Reverse-path filtering at most loose (``rp_filter`` 0 or 2): strict mode drops traffic
  whose reverse route does not leave by the receiving interface, which breaks members
  with a management interface or a default route elsewhere.

``build_setup`` is pure (spec -> MemberSetup); ``render`` turns it into shell commands or
persistent configuration; ``apply_setup``/``remove_setup`` change the host they run on
(run them inside the member, e.g. ``ip netns exec``) and record what they changed, so that
``--remove`` restores the previous sysctl values.

"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vipctl.core.net import family
from vipctl.core.spec import Spec
from vipctl.errors import KernelError, UsageError
from vipctl.host import rtnl
from vipctl.host.sysctl import Sysctl, read_sysctl, sysctl, write_sysctl
from vipctl.render.nft import SECOND_CHANCE_TTL
from vipctl.statefile import write_json

Format = Literal["commands", "networkd", "ifupdown", "netplan"]
FORMATS: tuple[Format, ...] = ("commands", "networkd", "ifupdown", "netplan")

# --------------------------------------------------------------------------------------
# The pure part
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSetup:
    cluster: str
    member: str
    interface: str  # the member's interface facing its router port
    addresses: tuple[str, ...]  # VIPs as host prefixes for lo: 198.51.100.253/32
    sysctls: tuple[Sysctl, ...]


def build_setup(spec: Spec, name: str, interface: str) -> MemberSetup:
    """What member ``name`` needs, given its interface towards the router."""
    try:
        spec.member(name)
    except KeyError:
        raise UsageError(
            f"no member '{name}' in cluster {spec.cluster} "
            f"(members: {', '.join(spec.member_names)})"
        ) from None
    if not interface or "/" in interface or interface in (".", ".."):
        raise UsageError(f"bad interface name {interface!r}")
    addresses = tuple(f"{vip}/{32 if vip.version == 4 else 128}" for vip in spec.vips)
    wanted: list[Sysctl] = []
    if 4 in spec.vip_families:
        for dev in ("all", interface):
            wanted.append(
                sysctl(
                    f"net.ipv4.conf.{dev}.arp_ignore",
                    1,
                    {1, 2, 8},
                    "answer ARP only for addresses on the receiving interface",
                )
            )
        for dev in ("all", interface):
            wanted.append(
                sysctl(
                    f"net.ipv4.conf.{dev}.arp_announce",
                    2,
                    {2},
                    "never use the VIP as the source of ARP requests",
                )
            )
    # rp_filter: the effective value is max(all, dev); {0, 2} keeps it at most loose.
    for dev in ("all", interface):
        wanted.append(
            sysctl(f"net.ipv4.conf.{dev}.rp_filter", 2, {0, 2}, "loose reverse-path filter")
        )
    return MemberSetup(
        cluster=spec.cluster,
        member=name,
        interface=interface,
        addresses=addresses,
        sysctls=tuple(wanted),
    )


def _ip_addr_cmd(verb: str, prefix: str) -> str:
    nodad = " nodad" if family(prefix) == 6 and verb != "del" else ""
    return f"ip addr {verb} {prefix} dev lo{nodad}"


def _sysctl_conf(setup: MemberSetup) -> str:
    lines = [
        f"# /etc/sysctl.d/90-vipctl-{setup.cluster}.conf: vipctl member {setup.member}",
        "# (apply now with: sysctl --system)",
    ]
    for s in setup.sysctls:
        lines.append(f"{s.key} = {s.value}")
    return "\n".join(lines) + "\n"


def render(setup: MemberSetup, fmt: Format) -> str:
    """The setup as shell commands or as persistent configuration files."""
    head = f"vipctl cluster {setup.cluster}, member {setup.member}, router link {setup.interface}"
    v4 = [a for a in setup.addresses if ":" not in a]
    v6 = [a for a in setup.addresses if family(a) == 6]
    if fmt == "commands":
        lines = [f"# {head}", "ip link set lo up"]
        lines += [_ip_addr_cmd("replace", a) for a in setup.addresses]
        lines += [f"sysctl -w {s.key}={s.value}  # {s.why}" for s in setup.sysctls]
        return "\n".join(lines) + "\n"
    if fmt == "networkd":
        body = [
            f"# /etc/systemd/network/10-vipctl-{setup.cluster}-lo.network: {head}",
            "[Match]",
            "Name=lo",
            "",
            "[Network]",
            "# the loopback keeps its own addresses",
            "Address=127.0.0.1/8",
            "Address=::1/128",
        ]
        for a in v4:
            body += ["", "[Address]", f"Address={a}"]
        for a in v6:
            body += ["", "[Address]", f"Address={a}", "DuplicateAddressDetection=none"]
        return "\n".join(body) + "\n\n" + _sysctl_conf(setup)
    if fmt == "ifupdown":
        body = [f"# /etc/network/interfaces.d/vipctl-{setup.cluster}: {head}"]
        for a in v4:
            body += ["iface lo inet static", f"    address {a}"]
        for a in v6:
            body += ["iface lo inet6 static", f"    address {a}", "    dad-attempts 0"]
        return "\n".join(body) + "\n\n" + _sysctl_conf(setup)
    if fmt == "netplan":
        quoted = ", ".join(json.dumps(a) for a in setup.addresses)
        body = [
            f"# /etc/netplan/90-vipctl-{setup.cluster}.yaml: {head}",
            "# (loopback addresses never run DAD, so IPv6 VIPs need no extra option)",
            "network:",
            "  version: 2",
            "  renderer: networkd",
            "  ethernets:",
            "    lo:",
            "      match: {name: lo}",
            f'      addresses: ["127.0.0.1/8", "::1/128", {quoted}]',
        ]
        return "\n".join(body) + "\n\n" + _sysctl_conf(setup)
    raise UsageError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def second_chance_table(setup: MemberSetup) -> str:
    """The member's nftables table for the router's second chance (render/nft.py
    `_second_chance`), one per cluster and interface."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", setup.interface)
    return f"vipctl_{setup.cluster.replace('-', '_')}_{safe}"


def second_chance_batch(setup: MemberSetup, gateways: Mapping[int, str]) -> str:
    """The second chance, as one nftables transaction: a TCP packet for a VIP that does
    not start a connection (SYN without ACK) and that no connection of this member holds
    goes back to the router it came from (`dup to` the interface's gateway), still
    addressed to the VIP, and is dropped here; the router hands it to the bucket's new
    owner. That is a connection opened after a change on a router that died: the router
    that took over sent it to the old owner.

    Only packets the router marked (render/nft.py SECOND_CHANCE_TTL: packets of a bucket
    in transition) are handed back: the clients of a member that died get their reset from
    the new owner at once (invariant 5).

    "No connection holds it": the socket lookup (established, SYN_RECV and TIME_WAIT
    entries first, then listeners) finds the listener, bound to the wildcard address
    (`socket wildcard 1`). A SYN_RECV or TIME_WAIT entry is not a full socket: the
    expression does not match and the packet stays (the handshake's last ACK must).
    Servers must listen on the wildcard address (0.0.0.0, ::), as most do; a packet for
    a port nobody listens on stays too.

    `gateways`: family -> the router's address on this interface (families without one
    get no rule: nothing can be handed back there)."""
    lines: list[str] = []
    for fam, ip in ((4, "ip"), (6, "ip6")):
        vips = [a.split("/")[0] for a in setup.addresses if family(a) == fam]
        gw = gateways.get(fam)
        table = f"{ip} {second_chance_table(setup)}"
        lines += [f"add table {table}", f"delete table {table}"]
        if not vips or not gw:
            continue
        ttl = f"ip ttl {SECOND_CHANCE_TTL}" if fam == 4 else f"ip6 hoplimit {SECOND_CHANCE_TTL}"
        match = (
            f'iifname "{setup.interface}" {ip} daddr {{ {", ".join(vips)} }} {ttl} '
            "tcp flags & (syn | ack) != syn"
        )
        lines += [
            f"add table {table}",
            f"add chain {table} pre {{ type filter hook prerouting priority -150; "
            "policy accept; }",
            f'add rule {table} pre {match} socket wildcard 1 dup to {gw} device '
            f'"{setup.interface}" drop',
        ]
    return "\n".join(lines) + "\n"


def second_chance_removal(setup: MemberSetup) -> str:
    lines: list[str] = []
    for ip in ("ip", "ip6"):
        table = f"{ip} {second_chance_table(setup)}"
        lines += [f"add table {table}", f"delete table {table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# The shell: apply / remove on this host
# --------------------------------------------------------------------------------------


def gateways(interface: str) -> dict[int, str]:
    """The router's address on `interface` per family: the gateway of the default route
    through it (a multipath default route's nexthop on it)."""
    out: dict[int, str] = {}
    for fam in (4, 6):
        for r in rtnl.routes(fam):
            if r.dst != "default" or r.table != "main":
                continue
            if r.dev == interface and r.gateway:
                out.setdefault(fam, r.gateway)
            for dev, gw in zip(r.nexthops, r.hop_gateways, strict=False):
                if dev == interface and gw:
                    out.setdefault(fam, gw)
    return out


def detect_interface(spec: Spec, name: str) -> str | None:
    """The interface of this host that carries member ``name``'s own address."""
    address = str(spec.member(name).address)
    for a in rtnl.addresses():
        if a.address == address:
            return a.dev
    return None


def _record_path(state_dir: Path, setup: MemberSetup) -> Path:
    return state_dir / f"member-{setup.cluster}-{setup.member}.json"


def _lo_addresses() -> set[str]:
    return {f"{a.address}/{a.prefixlen}" for a in rtnl.addresses() if a.dev == "lo"}


def _lo() -> rtnl.LinkInfo:
    lo = rtnl.links().get("lo")
    if lo is None:
        raise KernelError("this host has no loopback interface 'lo'")
    return lo


def apply_setup(setup: MemberSetup, state_dir: Path) -> list[str]:
    """Make this host match ``setup``; returns what changed (empty when already right).

    Idempotent. The first apply records the previous value of every sysctl it changes and
    which VIP addresses it added, so ``remove_setup`` can put them back.
    """
    if read_sysctl(("net", "ipv4", "conf", setup.interface, "rp_filter")) is None:
        raise KernelError(f"interface '{setup.interface}' does not exist on this host")
    record_path = _record_path(state_dir, setup)
    record: dict[str, Any] = {"sysctls": {}, "addresses": []}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
    changes: list[str] = []
    lo = _lo()
    if not lo.admin_up:
        rtnl.set_up(lo.index, "lo")
        changes.append("ip link set lo up")
    present = _lo_addresses()
    for prefix in setup.addresses:
        if prefix in present:
            continue
        rtnl.addr_replace(lo.index, "lo", prefix)  # IPv6 with nodad, as the text says
        changes.append(_ip_addr_cmd("replace", prefix))
        if prefix not in record["addresses"]:
            record["addresses"].append(prefix)
    for s in setup.sysctls:
        current = read_sysctl(s.path)
        if current is None:
            raise KernelError(f"sysctl {s.key} does not exist on this host")
        if current.isdigit() and int(current) in s.ok:
            continue
        record["sysctls"].setdefault("/".join(s.path), current)
        write_sysctl(s.path, s.value)
        changes.append(f"sysctl -w {s.key}={s.value} (was {current})")
    if changes:
        write_json(record_path, record)
    return changes


def remove_setup(setup: MemberSetup, state_dir: Path) -> list[str]:
    """Undo ``apply_setup``: delete the VIPs from lo, restore the recorded sysctls."""
    record_path = _record_path(state_dir, setup)
    record: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
    changes: list[str] = []
    present = _lo_addresses()
    ours = set(record["addresses"]) if record else set(setup.addresses)
    for prefix in setup.addresses:
        if prefix in present and prefix in ours and rtnl.addr_delete(_lo().index, "lo", prefix):
            changes.append(_ip_addr_cmd("del", prefix))
    for key, value in (record or {}).get("sysctls", {}).items():
        path = tuple(key.split("/"))
        if read_sysctl(path) is None:
            continue
        write_sysctl(path, value)
        changes.append(f"sysctl -w {'/'.join(path)}={value} (restored)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path)
    return changes

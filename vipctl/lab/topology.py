"""A throw-away test topology in network namespaces: one client, one router, N members.

Layout (i = 1..N, at most 29 members)::

    {prefix}-client  eth0 203.0.113.2/24, 2001:db8:c::2/64, default via the router;
                     local routes 10.99.0.0/16 and 2001:db8:99::/64 on lo, so the client
                     can send from (and receive on) 65k IPv4 and 2**64 IPv6 source addresses
    {prefix}-router  up0 203.0.113.1/24, 2001:db8:c::1/64 (uplink, towards the client)
                     m{i} 198.51.100.(8i+1)/29, 2001:db8:(10+i)::1/64 (member ports)
                     forwarding on, rp_filter 0, routes back to the client's source ranges,
                     NO route to the VIPs: vipctl's netdev ingress rules on up0 deliver them
    {prefix}-m{i}    eth0 198.51.100.(8i+2)/29, 2001:db8:(10+i)::2/64, default via the router,
                     then `vipctl member --apply` (vipctl.member): both VIPs on lo,
                     arp_ignore=1, arp_announce=2, rp_filter stays 0

Nothing here touches the machine's own network namespace: every link, address, route and
sysctl is created inside a namespace this module made. Sysctls are written from a short-lived
thread that has ``setns()``-ed into the namespace; the thread checks that it really is in the
target namespace before it writes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vipctl.host import links
from vipctl.host.sysctl import read_sysctl, sysctl, write_sysctl

NETNS_DIR = Path("/run/netns")
WORK_ROOT = Path("/tmp/vipctl-lab")

VIP4 = "198.51.100.253"
VIP6 = "2001:db8:f::253"
CLIENT4 = "203.0.113.2"
CLIENT6 = "2001:db8:c::2"
ROUTER4 = "203.0.113.1"
ROUTER6 = "2001:db8:c::1"
SOURCES4 = "10.99.0.0/16"
SOURCES6 = "2001:db8:99::/64"
UPLINK = "up0"
UPLINK_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:02"
ECHO_PORT = 7000
MAX_MEMBERS = 29


class LabError(RuntimeError):
    """A lab command failed."""


@dataclass(frozen=True)
class Member:
    """One member server of the lab; ``index`` counts from 1."""

    index: int
    name: str  # web{i}
    ns: str  # {prefix}-m{i}
    port: str  # m{i}: the router-side interface
    address: str  # 198.51.100.(8i+2): the member's own IPv4 address (on its eth0)
    address6: str  # 2001:db8:(10+i)::2
    gateway: str  # 198.51.100.(8i+1): the router's address on port m{i}
    gateway6: str  # 2001:db8:(10+i)::1
    mac: str  # MAC of the member's eth0 (fixed at creation: 02:00:00:00:{i:02x}:02)
    port_mac: str  # MAC of the router's port m{i} (02:00:00:00:{i:02x}:01)


@dataclass(frozen=True)
class Lab:
    """Names and addresses of a lab. Pure data: ``describe`` makes one without the kernel."""

    prefix: str
    n_members: int
    client_ns: str
    router_ns: str
    uplink: str
    members: tuple[Member, ...]
    vip4: str = VIP4
    vip6: str = VIP6
    client4: str = CLIENT4
    client6: str = CLIENT6
    router4: str = ROUTER4
    router6: str = ROUTER6
    sources4: str = SOURCES4  # client source range (IPv4)
    sources6: str = SOURCES6  # client source range (IPv6)
    client_mac: str = CLIENT_MAC
    uplink_mac: str = UPLINK_MAC
    echo_port: int = ECHO_PORT

    @property
    def vips(self) -> tuple[str, str]:
        return (self.vip4, self.vip6)

    @property
    def member_ns(self) -> tuple[str, ...]:
        return tuple(m.ns for m in self.members)

    @property
    def ports(self) -> tuple[str, ...]:
        return tuple(m.port for m in self.members)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.client_ns, self.router_ns, *self.member_ns)

    @property
    def workdir(self) -> Path:
        """Scratch directory for logs and captures; removed by ``destroy``."""
        return WORK_ROOT / self.prefix

    def member(self, i: int) -> Member:
        """Member ``i``, counting from 1 (web1 is ``member(1)``)."""
        if not 1 <= i <= self.n_members:
            raise IndexError(f"member index {i} not in 1..{self.n_members}")
        return self.members[i - 1]

    def by_name(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def spec(
        self,
        cluster: str = "lab",
        *,
        mode: str = "steer",
        key: str = "mask",
        bits: int = 8,
        vips: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """A vipctl spec (the spec file's content, as a dict) that serves this lab's VIPs."""
        return {
            "cluster": cluster,
            "vips": list(vips if vips is not None else self.vips),
            "uplink": self.uplink,
            "mode": mode,
            "partition": {"key": key, "bits": bits, "seed": 0x5EED},
            "members": [
                {"name": m.name, "port": m.port, "address": m.address, "weight": 1}
                for m in self.members
            ],
            "health": {"probe": {"kind": "tcp", "port": self.echo_port}},
        }


def _check_prefix(prefix: str) -> None:
    if not prefix or len(prefix) > 40 or not all(c.isalnum() or c in "_." for c in prefix):
        raise ValueError(f"bad lab prefix {prefix!r}: use 1-40 letters, digits, '_' or '.'")


def describe(prefix: str, members: int = 3) -> Lab:
    """The Lab that ``build(prefix, members)`` makes, without touching the kernel."""
    _check_prefix(prefix)
    if not 1 <= members <= MAX_MEMBERS:
        raise ValueError(f"members must be 1..{MAX_MEMBERS}, not {members}")
    ms = tuple(
        Member(
            index=i,
            name=f"web{i}",
            ns=f"{prefix}-m{i}",
            port=f"m{i}",
            address=f"198.51.100.{8 * i + 2}",
            address6=f"2001:db8:{10 + i}::2",
            gateway=f"198.51.100.{8 * i + 1}",
            gateway6=f"2001:db8:{10 + i}::1",
            mac=f"02:00:00:00:{i:02x}:02",
            port_mac=f"02:00:00:00:{i:02x}:01",
        )
        for i in range(1, members + 1)
    )
    return Lab(
        prefix=prefix,
        n_members=members,
        client_ns=f"{prefix}-client",
        router_ns=f"{prefix}-router",
        uplink=UPLINK,
        members=ms,
    )


def namespaces(prefix: str) -> list[str]:
    """Existing namespaces that belong to the lab ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def discover(prefix: str) -> Lab | None:
    """The Lab built earlier under ``prefix`` (by any process), or None if there is none."""
    _check_prefix(prefix)
    present = set(namespaces(prefix))
    if f"{prefix}-router" not in present or f"{prefix}-client" not in present:
        return None
    n = 0
    while f"{prefix}-m{n + 1}" in present:
        n += 1
    return describe(prefix, n) if n else None


# --------------------------------------------------------------------------- commands


def run_in(
    ns: str | None,
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``) and capture its output.

    ``ns=None`` runs in the caller's namespace. With ``check`` a non-zero exit raises
    LabError carrying stderr.
    """
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        full,
        input=data,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(full)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def spawn_in(
    ns: str,
    argv: Sequence[str],
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``argv`` inside namespace ``ns``; the caller owns the returned Popen.

    ``destroy`` kills every process left in the lab's namespaces, so a forgotten Popen
    does not outlive the lab.
    """
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        env=dict(env) if env is not None else None,
    )


def _ip_batch(ns: str | None, lines: Sequence[str]) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def ip_json(ns: str, args: Sequence[str]) -> Any:
    """``ip -j -n NS ARGS`` parsed."""
    proc = subprocess.run(["ip", "-j", "-n", ns, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")


# --------------------------------------------------------------------------- sysctls


def _in_netns(ns: str, fn: Any) -> None:
    """Run ``fn()`` in a fresh thread that has joined namespace ``ns``; re-raise its error."""
    target = NETNS_DIR / ns
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with links.in_netns(ns):
                # Never write a sysctl unless this thread provably sits in the lab namespace.
                if links.netns_inode() != os.stat(target).st_ino:
                    raise LabError(f"setns into {ns} did not take effect")
                fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker, name=f"netns-{ns}")
    t.start()
    t.join()
    if errors:
        raise errors[0]


def set_sysctls(ns: str, values: Mapping[str, str | int]) -> None:
    """Write ``net.*`` sysctls inside namespace ``ns`` (keys in dotted sysctl form)."""
    for key in values:
        if not key.startswith("net."):
            raise ValueError(f"only net.* sysctls are namespaced: {key}")

    def write() -> None:
        for key, value in values.items():
            write_sysctl(sysctl(key, 0).path, value)

    _in_netns(ns, write)


def get_sysctl(ns: str, key: str) -> str:
    out: list[str | None] = []
    _in_netns(ns, lambda: out.append(read_sysctl(key)))
    if out[0] is None:
        raise LabError(f"sysctl {key} does not exist in {ns}")
    return out[0]


# --------------------------------------------------------------------------- build


def _common_sysctls() -> dict[str, str | int]:
    return {
        "net.ipv6.conf.all.accept_dad": 0,
        "net.ipv6.conf.default.accept_dad": 0,
        "net.ipv6.conf.all.accept_ra": 0,
        "net.ipv6.conf.default.accept_ra": 0,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
    }


def build(prefix: str, members: int = 3, *, echo: bool = True) -> Lab:
    """Create the lab's namespaces, links, addresses, routes and sysctls.

    Any earlier lab with the same prefix is destroyed first. With ``echo`` every member
    runs ``python -m vipctl.lab.echo`` (UDP and TCP echo on port 7000); build returns once all
    of them listen. On failure the half-built lab is destroyed and the error re-raised.
    """
    lab = describe(prefix, members)
    destroy(prefix)
    try:
        _build(lab)
        if echo:
            start_echo(lab)
    except BaseException:
        destroy(prefix)
        raise
    return lab


def _build(lab: Lab) -> None:
    lab.workdir.mkdir(parents=True, exist_ok=True)
    _ip_batch(None, [f"netns add {ns}" for ns in lab.namespaces])

    # Defaults first: links created afterwards inherit them (no DAD, no rp_filter).
    for ns in lab.namespaces:
        set_sysctls(ns, _common_sysctls())
    set_sysctls(
        lab.client_ns,
        {"net.ipv4.ip_nonlocal_bind": 1, "net.ipv6.ip_nonlocal_bind": 1},
    )
    set_sysctls(
        lab.router_ns,
        {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 1,
            "net.ipv6.conf.default.forwarding": 1,
        },
    )

    # Router: veth pairs with the far ends created directly in the peer namespaces.
    r = [
        "link set lo up",
        f"link add {lab.uplink} address {lab.uplink_mac} type veth "
        f"peer name eth0 address {lab.client_mac} netns {lab.client_ns}",
    ]
    for m in lab.members:
        r.append(
            f"link add {m.port} address {m.port_mac} type veth "
            f"peer name eth0 address {m.mac} netns {m.ns}"
        )
    r += [
        f"addr add {lab.router4}/24 dev {lab.uplink}",
        f"addr add {lab.router6}/64 dev {lab.uplink} nodad",
        f"link set {lab.uplink} up",
    ]
    for m in lab.members:
        r += [
            f"addr add {m.gateway}/29 dev {m.port}",
            f"addr add {m.gateway6}/64 dev {m.port} nodad",
            f"link set {m.port} up",
        ]
    _ip_batch(lab.router_ns, r)

    _ip_batch(
        lab.client_ns,
        [
            "link set lo up",
            f"addr add {lab.client4}/24 dev eth0",
            f"addr add {lab.client6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {lab.router4} dev eth0",
            f"route add ::/0 via {lab.router6} dev eth0",
            f"route add local {lab.sources4} dev lo",
            f"route add local {lab.sources6} dev lo",
        ],
    )
    for m in lab.members:
        _ip_batch(
            m.ns,
            [
                "link set lo up",
                f"addr add {m.address}/29 dev eth0",
                f"addr add {m.address6}/64 dev eth0 nodad",
                "link set eth0 up",
                f"route add default via {m.gateway} dev eth0",
                f"route add ::/0 via {m.gateway6} dev eth0",
            ],
        )

    _setup_members(lab)

    _ip_batch(
        lab.router_ns,
        [
            f"route add {lab.sources4} via {lab.client4} dev {lab.uplink}",
            f"route add {lab.sources6} via {lab.client6} dev {lab.uplink}",
        ],
    )
    set_sysctls(
        lab.router_ns,
        {f"net.ipv4.conf.{p}.rp_filter": 0 for p in (lab.uplink, *lab.ports)},
    )


def recreate_port(lab: Lab, name: str) -> None:
    """Re-create a member's port after `ip link del` (both ends of the veth went): the same
    names, MACs and addresses as `build` made them, and a new ifindex."""
    m = lab.by_name(name)
    _ip_batch(
        lab.router_ns,
        [
            f"link add {m.port} address {m.port_mac} type veth "
            f"peer name eth0 address {m.mac} netns {m.ns}",
            f"addr add {m.gateway}/29 dev {m.port}",
            f"addr add {m.gateway6}/64 dev {m.port} nodad",
            f"link set {m.port} up",
        ],
    )
    _ip_batch(
        m.ns,
        [
            f"addr add {m.address}/29 dev eth0",
            f"addr add {m.address6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route replace default via {m.gateway} dev eth0",
            f"route replace ::/0 via {m.gateway6} dev eth0",
        ],
    )


def _setup_members(lab: Lab, interfaces: Sequence[str] = ("eth0",)) -> None:
    """The member side as an operator does it with `vipctl member SPEC NAME --apply`:
    the same code (vipctl.member), run in a thread that has joined each member's
    namespace; a Python process per member would cost about 0.4 s each. VIPs on lo,
    arp_ignore=1, arp_announce=2, rp_filter at most loose (the lab's 0 is kept)."""
    from vipctl.backends import nft
    from vipctl.core.spec import parse_spec
    from vipctl.host import member as membermod

    spec = parse_spec(lab.spec(), "lab")
    state = lab.workdir / "member-state"

    def setup_one(setup: membermod.MemberSetup) -> None:
        membermod.apply_setup(setup, state)
        gateways = membermod.gateways(setup.interface)
        batch = membermod.second_chance_batch(setup, gateways)
        name = membermod.second_chance_table(setup)
        nft.replace_tables(batch, [("ip", name), ("ip6", name)])

    for m in lab.members:
        for interface in interfaces:
            setup = membermod.build_setup(spec, m.name, interface)
            _in_netns(m.ns, lambda setup=setup: setup_one(setup))


def start_echo(
    lab: Lab,
    *,
    port: int | None = None,
    timeout: float = 10.0,
    members: Sequence[str] | None = None,
) -> None:
    """Start ``vipctl.echo`` in every member namespace (or those of ``members``, by name)
    and wait until all listen."""
    port = lab.echo_port if port is None else port
    lab.workdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[Member, subprocess.Popen[str]]] = []
    for m in lab.members:
        if members is not None and m.name not in members:
            continue
        log = open(lab.workdir / f"echo-{m.name}.log", "a")  # noqa: SIM115
        try:
            # setsid -f: the echo server detaches (destroy() finds it by namespace); its
            # stdout pipe only carries the "ready" line.
            p = spawn_in(
                m.ns,
                [
                    "setsid",
                    "-f",
                    sys.executable,
                    "-m",
                    "vipctl.lab.echo",
                    "--name",
                    m.name,
                    "--port",
                    str(port),
                    "--ready",
                ],
                stdout=subprocess.PIPE,
                stderr=log.fileno(),
            )
        finally:
            log.close()
        procs.append((m, p))
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    for m, p in procs:
        assert p.stdout is not None
        line = _readline_until(p.stdout.fileno(), deadline)
        p.stdout.close()
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if line.strip() != "ready":
            failed.append(m.name)
    if failed:
        logs = {n: (lab.workdir / f"echo-{n}.log").read_text()[-500:] for n in failed}
        raise LabError(f"echo did not start on {failed}: {logs}")


def _readline_until(fd: int, deadline: float) -> str:
    import select

    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0]


def member_mac(lab: Lab, i: int) -> str:
    """MAC address of member ``i``'s eth0 (i counts from 1), read from the kernel."""
    m = lab.member(i)
    links = ip_json(m.ns, ["link", "show", "dev", "eth0"])
    return str(links[0]["address"])


# --------------------------------------------------------------------------- destroy


def _pids(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    me = os.getpid()
    return [int(x) for x in proc.stdout.split() if x.isdigit() and int(x) != me]


def kill_ns_processes(nss: str | Sequence[str], *, grace: float = 1.0) -> None:
    """SIGTERM every process in the namespace(s), then SIGKILL what is left after ``grace``."""
    names = [nss] if isinstance(nss, str) else list(nss)
    pids = [pid for ns in names for pid in _pids(ns)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.005)
        pids = [p for p in pids if pid_alive(p)]
    if pids:
        for pid in [pid for ns in names for pid in _pids(ns)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def destroy(prefix: str) -> None:
    """Kill the lab's processes and delete every namespace named ``{prefix}-*``.

    Idempotent; never raises because something is already gone.
    """
    _check_prefix(prefix)
    nss = namespaces(prefix)
    if nss:
        kill_ns_processes(nss)
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {ns}\n" for ns in nss),
            capture_output=True,
            text=True,
            check=False,
        )
    shutil.rmtree(WORK_ROOT / prefix, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Two routers behind an upstream that spreads the VIP over both by ECMP (BGP + BFD)
# --------------------------------------------------------------------------------------

UPSTREAM_ASN = 65000
ROUTER_ASN = 65001
UPSTREAM_LINK4 = "203.0.113.126"  # the upstream's address on the routers' shared segment
ROUTER_LINK4 = ("203.0.113.65", "203.0.113.66")  # router 1, router 2 on that segment
UPSTREAM_LINK6 = "2001:db8:ff::7e"  # the same segment in IPv6 (IPv6 VIPs, ipv6 sessions)
ROUTER_LINK6 = ("2001:db8:ff::41", "2001:db8:ff::42")
# A member's /29 per port holds the member (.2) and one address per router: at most 5 routers.
_ROUTER_HOST = (1, 3, 4, 5, 6)
MAX_ROUTERS = len(_ROUTER_HOST)


def router_links(n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The IPv4 and IPv6 addresses of routers 1..n on the upstream segment (203.0.113.65,
    .66, ...; 2001:db8:ff::41, ::42, ...)."""
    if not 2 <= n <= MAX_ROUTERS:
        raise ValueError(f"routers must be 2..{MAX_ROUTERS}, not {n}")
    return (
        tuple(f"203.0.113.{65 + i}" for i in range(n)),
        tuple(f"2001:db8:ff::{0x41 + i:x}" for i in range(n)),
    )


def router_port_address(member: Member, ri: int) -> str:
    """Router ``ri``'s (1-based) address on its port to ``member``."""
    return f"198.51.100.{8 * member.index + _ROUTER_HOST[ri - 1]}"


@dataclass(frozen=True)
class TwoRouters:
    """client - upstream (BIRD: ECMP + BFD) - router1, router2 - members. Every member
    has one link to each router (eth1 to router 1, eth2 to router 2), its address on
    both, and a multipath default route whose nexthop dies with its link
    (ignore_routes_with_linkdown), so a dead router takes no return traffic either."""

    lab: Lab  # client and members; lab.router_ns is router 1
    upstream_ns: str
    routers: tuple[str, ...]  # two, or N (build_routers): member link eth{i} goes to router i
    links: tuple[str, ...] = ROUTER_LINK4  # each router's address on the upstream segment
    links6: tuple[str, ...] = ROUTER_LINK6

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.lab.client_ns, self.upstream_ns, *self.routers, *self.lab.member_ns)

    def spec(self, cluster: str = "lab", **kw: Any) -> dict[str, Any]:
        """The spec both routers run (identical on both)."""
        data = self.lab.spec(cluster, vips=[self.lab.vip4], **kw)
        data["bgp"] = {
            "asn": ROUTER_ASN,
            "peers": [{"address": UPSTREAM_LINK4, "asn": UPSTREAM_ASN}],
            "bfd": True,
        }
        return data

    @property
    def bird_ctl(self) -> Path:
        return self.lab.workdir / "upstream-bird.ctl"


def upstream_bird_conf(
    log: str,
    bfd_ms: int = 100,
    bfd_multiplier: int = 3,
    links: Sequence[str] = ROUTER_LINK4,
    links6: Sequence[str] = ROUTER_LINK6,
) -> str:
    """The upstream edge as an operator runs it: every router's route merged into one
    multipath kernel route, BFD on each session (`bfd_ms` x `bfd_multiplier`), short
    timers (a session is back within seconds after a failure). `links`, `links6`: the
    routers' addresses on the shared segment."""
    sessions = "".join(
        f"protocol bgp router{i + 1}{tag} {{ local {local} as {UPSTREAM_ASN}; "
        f"neighbor {addr} as {ROUTER_ASN};\n  ipv{v} {{ import all; export none; }}; bfd on; "
        "hold time 3; keepalive time 1;\n  connect delay time 1; connect retry time 2; "
        "error wait time 1, 4; error forget time 10; }\n"
        for v, tag, local, addrs in (
            (4, "", UPSTREAM_LINK4, links),
            (6, "v6", UPSTREAM_LINK6, links6),
        )
        for i, addr in enumerate(addrs)
    )
    return (
        f'log "{log}" all;\nrouter id {UPSTREAM_LINK4};\nprotocol device {{ scan time 10; }}\n'
        "protocol kernel { ipv4 { export where source = RTS_BGP; }; merge paths on; }\n"
        "protocol kernel { ipv6 { export where source = RTS_BGP; }; merge paths on; }\n"
        f'protocol bfd {{ interface "*" {{ min rx interval {bfd_ms} ms; '
        f"min tx interval {bfd_ms} ms; multiplier {bfd_multiplier}; }}; }}\n" + sessions
    )


def describe_two(prefix: str, members: int = 3) -> TwoRouters:
    """The TwoRouters that ``build_two_routers(prefix, members)`` makes (pure)."""
    return describe_routers(prefix, members, 2)


def describe_routers(prefix: str, members: int = 3, routers: int = 2) -> TwoRouters:
    """The lab that ``build_routers(prefix, members, routers)`` makes (pure): the two-router
    lab with routers r1..rN, each member linked to every router."""
    lab = dataclasses.replace(describe(prefix, members), router_ns=f"{prefix}-r1")
    links, links6 = router_links(routers)
    return TwoRouters(
        lab=lab,
        upstream_ns=f"{prefix}-upstream",
        routers=tuple(f"{prefix}-r{i}" for i in range(1, routers + 1)),
        links=links,
        links6=links6,
    )


def discover_two(prefix: str) -> TwoRouters | None:
    """The two-router lab built earlier under ``prefix``, or None if there is none."""
    _check_prefix(prefix)
    present = set(namespaces(prefix))
    want = {f"{prefix}-{n}" for n in ("client", "upstream", "r1", "r2")}
    if not want <= present:
        return None
    n = 0
    while f"{prefix}-m{n + 1}" in present:
        n += 1
    return describe_two(prefix, n) if n else None


def build_two_routers(
    prefix: str, members: int = 3, *, echo: bool = True, bfd: tuple[int, int] = (100, 3)
) -> TwoRouters:
    """`bfd`: the upstream's BFD interval (ms) and multiplier."""
    return build_routers(prefix, members, 2, echo=echo, bfd=bfd)


def build_routers(
    prefix: str,
    members: int = 3,
    routers: int = 2,
    *,
    echo: bool = True,
    bfd: tuple[int, int] = (100, 3),
) -> TwoRouters:
    """Client, upstream BIRD (ECMP + BFD over every router), ``routers`` routers, members
    linked to every router. No vipctl runs yet: start a daemon with a ``bgp`` spec in each
    router (``TwoRouters.spec``)."""
    two = describe_routers(prefix, members, routers)
    lab = two.lab
    destroy(prefix)
    try:
        _build_two(two, bfd)
        if echo:
            start_echo(lab)
    except BaseException:
        destroy(prefix)
        raise
    return two


def _build_two(two: TwoRouters, bfd: tuple[int, int] = (100, 3)) -> None:
    lab = two.lab
    lab.workdir.mkdir(parents=True, exist_ok=True)
    _ip_batch(None, [f"netns add {ns}" for ns in two.namespaces])
    linkdown = {
        "net.ipv4.conf.all.ignore_routes_with_linkdown": 1,
        "net.ipv4.conf.default.ignore_routes_with_linkdown": 1,
        "net.ipv4.fib_multipath_hash_policy": 1,
    }
    for ns in two.namespaces:
        set_sysctls(ns, {**_common_sysctls(), **linkdown})
    set_sysctls(lab.client_ns, {"net.ipv4.ip_nonlocal_bind": 1})
    for ns in (two.upstream_ns, *two.routers):
        set_sysctls(ns, {"net.ipv4.ip_forward": 1})
    up = two.upstream_ns
    _ip_batch(
        up,
        [
            "link set lo up",
            # c0 takes the single-router lab's uplink MAC, so the raw numbered sender
            # (traffic.numbered_spawn, frames to lab.uplink_mac) works here too
            f"link add c0 address {lab.uplink_mac} type veth peer name eth0 "
            f"address {lab.client_mac} netns {lab.client_ns}",
            f"addr add {lab.router4}/24 dev c0",
            "link set c0 up",
            "link add br0 type bridge",
            f"addr add {UPSTREAM_LINK4}/26 dev br0",
            f"addr add {UPSTREAM_LINK6}/64 dev br0 nodad",
            "link set br0 up",
        ]
        + [
            f"link add r{i} master br0 type veth peer name {lab.uplink} netns {r}"
            for i, r in enumerate(two.routers, 1)
        ]
        + [f"link set r{i} up" for i in range(1, len(two.routers) + 1)],
    )
    for ri, r in enumerate(two.routers, 1):
        lines = [
            "link set lo up",
            f"addr add {two.links[ri - 1]}/26 dev {lab.uplink}",
            f"addr add {two.links6[ri - 1]}/64 dev {lab.uplink} nodad",
            f"link set {lab.uplink} up",
        ]
        for m in lab.members:
            lines += [
                f"link add {m.port} type veth peer name eth{ri} netns {m.ns}",
                f"addr add {router_port_address(m, ri)}/29 dev {m.port}",
                f"link set {m.port} up",
            ]
        lines.append(f"route add {lab.sources4} via {UPSTREAM_LINK4} dev {lab.uplink}")
        _ip_batch(r, lines)
        set_sysctls(r, {f"net.ipv4.conf.{p}.rp_filter": 0 for p in (lab.uplink, *lab.ports)})
    _ip_batch(
        lab.client_ns,
        [
            "link set lo up",
            f"addr add {lab.client4}/24 dev eth0",
            "link set eth0 up",
            f"route add default via {lab.router4} dev eth0",
            f"route add local {lab.sources4} dev lo",
        ],
    )
    _ip_batch(up, [f"route add {lab.sources4} via {lab.client4} dev c0"])
    ris = range(1, len(two.routers) + 1)
    for m in lab.members:
        gws = {ri: router_port_address(m, ri) for ri in ris}
        _ip_batch(
            m.ns,
            ["link set lo up"]
            + [f"addr add {m.address}/32 dev eth{ri}" for ri in ris]
            + [f"link set eth{ri} up" for ri in ris]
            + [f"route add {gws[ri]}/32 dev eth{ri}" for ri in ris]
            + ["route add default " + " ".join(f"nexthop via {gws[ri]} dev eth{ri}" for ri in ris)],
        )
    _setup_members(lab, tuple(f"eth{ri}" for ri in ris))
    log = lab.workdir / "upstream-bird.log"
    conf = lab.workdir / "upstream-bird.conf"
    conf.write_text(upstream_bird_conf(str(log), *bfd, links=two.links, links6=two.links6))
    pid = lab.workdir / "upstream-bird.pid"
    run_in(up, ["bird", "-c", str(conf), "-s", str(two.bird_ctl), "-P", str(pid)])


def set_router_links(two: TwoRouters, router: str, up: bool) -> None:
    """Take a whole router off the network (its uplink and every member port down) or put
    it back. The kernel flushes the route to the client sources with the uplink, so it is
    restored on the way up (a router that comes back must also carry return traffic: the
    members' multipath default route uses it again as soon as its link is up)."""
    lab = two.lab
    state = "up" if up else "down"
    lines = [f"link set {p} {state}" for p in (lab.uplink, *lab.ports)]
    if up:
        lines.append(f"route replace {lab.sources4} via {UPSTREAM_LINK4} dev {lab.uplink}")
    _ip_batch(router, lines)


def upstream_paths(two: TwoRouters, vip: str) -> list[str]:
    """The nexthops (router addresses) of the upstream's kernel route to `vip`."""
    if ":" in vip:
        routes = ip_json(two.upstream_ns, ["-6", "route", "show", f"{vip}/128"])
    else:
        routes = ip_json(two.upstream_ns, ["route", "show", f"{vip}/32"])
    hops: list[str] = []
    for r in routes:
        if "gateway" in r:
            hops.append(r["gateway"])
        for nh in r.get("nexthops", []):
            if "gateway" in nh and "dead" not in nh.get("flags", []):
                hops.append(nh["gateway"])
    return sorted(hops)

"""Two vipctl routers behind an upstream BIRD doing ECMP + BFD, with real BGP sessions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vipctl.lab import topology as labmod
from vipctl.lab import traffic

PREFIX = f"vx18.{os.getpid()}"


@pytest.fixture
def two() -> Iterator[labmod.TwoRouters]:
    t = labmod.build_two_routers(PREFIX, 3)
    try:
        yield t
    finally:
        labmod.destroy(PREFIX)


def vipctl(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return labmod.run_in(ns, [sys.executable, "-m", "vipctl.cli", *args], check=check)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_daemons(
    two: labmod.TwoRouters, tmp_path: Path, wrapper: tuple[str, ...] = (), **extra: Any
) -> list[subprocess.Popen[str]]:
    spec = tmp_path / "lab.json"
    spec.write_text(json.dumps({**two.spec(), **extra}))
    procs = []
    for r in two.routers:
        log = open(tmp_path / f"{r}.log", "w")  # noqa: SIM115
        procs.append(
            labmod.spawn_in(
                r,
                [
                    *wrapper,
                    sys.executable,
                    "-m",
                    "vipctl.cli",
                    "daemon",
                    str(spec),
                    "--state-dir",
                    str(tmp_path / r),
                ],
                stdout=log.fileno(),
                stderr=log.fileno(),
            )
        )
    return procs


def stop_daemons(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def status(r: str, tmp_path: Path) -> dict[str, Any]:
    out = vipctl(r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)).stdout
    data = json.loads(out)
    return dict(data[0] if isinstance(data, list) else data)


def fingerprint(two: labmod.TwoRouters, r: str, tmp_path: Path) -> str:
    return str(status(r, tmp_path)["fingerprint"])


def healthy(r: str, tmp_path: Path) -> dict[str, bool]:
    return {m["name"]: bool(m["healthy"]) for m in status(r, tmp_path)["members"]}


def packets(r: str, tmp_path: Path) -> int:
    return sum(int(m["packets"]) for m in status(r, tmp_path)["members"])


def both_paths(two: labmod.TwoRouters) -> bool:
    return labmod.upstream_paths(two, two.lab.vip4) == sorted(labmod.ROUTER_LINK4)


def only_router2(two: labmod.TwoRouters) -> bool:
    return labmod.upstream_paths(two, two.lab.vip4) == [labmod.ROUTER_LINK4[1]]


@pytest.fixture
def serving(two: labmod.TwoRouters, tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Both daemons running, both routers announcing (two ECMP paths upstream). Teardown
    stops the daemons; the `two` fixture then kills what is left in the namespaces
    (both routers' BIRD, the upstream's) and deletes them."""
    procs = start_daemons(two, tmp_path)
    try:
        wait_for("two ECMP paths upstream", lambda: both_paths(two))
        yield procs
    finally:
        stop_daemons(procs)


def test_two_routers_ecmp_exactly_once_failover(two: labmod.TwoRouters, tmp_path: Path) -> None:
    procs = start_daemons(two, tmp_path)
    try:
        wait_for(
            "two ECMP paths upstream",
            lambda: labmod.upstream_paths(two, two.lab.vip4) == sorted(labmod.ROUTER_LINK4),
        )
        fps = {fingerprint(two, r, tmp_path) for r in two.routers}
        assert len(fps) == 1
        sources = traffic.expand(two.lab.sources4, 4096)
        got = traffic.probe(two.lab, two.lab.vip4, sources, timeout=3.0)
        assert all(len(v) == 1 for v in got.values()), traffic.summarize(got)
        # through both routers: each router's uplink counted VIP packets
        per_router = [
            sum(
                m["packets"]
                for m in json.loads(
                    vipctl(r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)).stdout
                )["members"]
            )
            for r in two.routers
        ]
        assert all(p > 0 for p in per_router), per_router

        # a member fails on both routers (probes see it) -> fingerprints still equal
        web2 = two.lab.member(2)
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth1", "down"])
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth2", "down"])
        wait_for(
            "web2 down on both",
            lambda: all(
                not next(
                    m
                    for m in json.loads(
                        vipctl(
                            r, "status", "lab", "--json", "--state-dir", str(tmp_path / r)
                        ).stdout
                    )["members"]
                    if m["name"] == "web2"
                )["healthy"]
                for r in two.routers
            ),
        )
        assert len({fingerprint(two, r, tmp_path) for r in two.routers}) == 1
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth1", "up"])
        labmod.run_in(web2.ns, ["ip", "link", "set", "eth2", "up"])

        # router 1 dies (its links go down): the upstream keeps router 2 only (BFD)
        with traffic.TcpSessions(two.lab, two.lab.vip4, sources[:64]) as tcp:
            assert all(v == "ok" for v in tcp.opened.values()), tcp.opened
            before = tcp.ping()
            died = time.monotonic()
            r1 = two.routers[0]
            labmod.run_in(r1, ["ip", "link", "set", two.lab.uplink, "down"])
            for m in two.lab.members:
                labmod.run_in(r1, ["ip", "link", "set", m.port, "down"])
            wait_for(
                "one path upstream",
                lambda: labmod.upstream_paths(two, two.lab.vip4) == [labmod.ROUTER_LINK4[1]],
                timeout=10,
            )
            moved_s = time.monotonic() - died
            after = tcp.ping()
            assert after == before, {
                s: (before[s], after[s]) for s in before if before[s] != after[s]
            }
        (tmp_path / "failover.txt").write_text(f"{moved_s:.3f}\n")
        print(f"upstream route moved to router 2 {1000 * moved_s:.0f} ms after router 1 died")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


BLOCK_PROBES = """table inet vx18_block {
  chain out { type filter hook output priority 0; policy accept; tcp dport %d drop; }
}
"""


def test_router_with_no_member_up_withdraws(
    two: labmod.TwoRouters, serving: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Router 1's probes fail (dropped on their way out of router 1; router 2 still reaches
    every member): router 1 withdraws, the upstream keeps router 2's path only and sends
    everything there; 4096 sources are answered exactly once, none through router 1."""
    r1, r2 = two.routers
    labmod.run_in(r1, ["nft", "-f", "-"], input=BLOCK_PROBES % two.lab.echo_port)
    wait_for("router 1 sees every member down", lambda: not any(healthy(r1, tmp_path).values()))
    wait_for("only router 2's path upstream", lambda: only_router2(two), timeout=10)
    assert all(healthy(r2, tmp_path).values())
    before = (packets(r1, tmp_path), packets(r2, tmp_path))
    sources = traffic.expand(two.lab.sources4, 4096)
    got = traffic.probe(two.lab, two.lab.vip4, sources, timeout=3.0)
    assert len(got) == 4096 and all(len(v) == 1 for v in got.values()), traffic.summarize(got)
    after = (packets(r1, tmp_path), packets(r2, tmp_path))
    assert after[0] == before[0], (before, after)  # nothing through router 1
    assert after[1] - before[1] >= 4096, (before, after)

    # its members come back: router 1 announces again
    labmod.run_in(r1, ["nft", "delete", "table", "inet", "vx18_block"])
    wait_for("router 1 sees every member up", lambda: all(healthy(r1, tmp_path).values()))
    wait_for("two paths upstream again", lambda: both_paths(two))


def rx_packets(ns: str, dev: str) -> int:
    (link,) = labmod.ip_json(ns, ["-s", "link", "show", "dev", dev])
    return int(link["stats64"]["rx"]["packets"])


@pytest.mark.parametrize(
    "extra",
    [{}, {"pinning": {"mode": "always"}}],
    ids=["nftables", "nftables-pinning-always"],
)
def test_flooded_frames_are_forwarded_once(
    two: labmod.TwoRouters, tmp_path: Path, extra: dict[str, Any]
) -> None:
    """Invariant 11: the routers' switch floods (ageing 0 and learning off: every frame is
    unknown unicast), so each frame the upstream sends to one router reaches both. Only
    the router it is addressed to forwards it: 4096 sources, each answered exactly once
    (without the check, every datagram was answered twice). The tc backend (this host's
    kernel has no flower/pedit/gact) is checked in tests/vm."""
    procs = start_daemons(two, tmp_path, **extra)
    try:
        wait_for("two ECMP paths upstream", lambda: both_paths(two))
        flood_and_probe(two)
    finally:
        stop_daemons(procs)


def flood_and_probe(two: labmod.TwoRouters) -> None:
    up = two.upstream_ns
    labmod.run_in(up, ["ip", "link", "set", "br0", "type", "bridge", "ageing_time", "0"])
    for port in ("r1", "r2"):
        labmod.run_in(up, ["bridge", "link", "set", "dev", port, "learning", "off"])
    uplink = two.lab.uplink
    before = [rx_packets(r, uplink) for r in two.routers]
    sources = traffic.expand(two.lab.sources4, 4096)
    got = traffic.probe(two.lab, two.lab.vip4, sources, timeout=3.0)
    flooded = [rx_packets(r, uplink) - b for r, b in zip(two.routers, before, strict=True)]
    # the bridge did flood: each router's uplink received (nearly) every datagram
    assert all(n >= 4096 for n in flooded), flooded
    counts = traffic.summarize(got)
    assert len(got) == 4096 and "<dup>" not in counts and "<none>" not in counts, counts


def test_down_on_router1_loses_nothing(
    two: labmod.TwoRouters, serving: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """`vipctl down` on router 1 while router 2 serves: it withdraws, lets the upstream
    move, then removes its rules; numbered datagrams through the upstream, captured on
    both links of every member: each arrives exactly once, none is lost."""
    r1 = two.routers[0]
    stop_daemons(serving[:1])  # as `systemctl stop`: router 1's rules and BIRD stay
    assert both_paths(two)
    sources = traffic.expand(two.lab.sources4, 256)
    cap = traffic.capture_start(two.lab, interfaces=("eth1", "eth2"), buffer_kib=8192)
    sender: traffic.NumberedRun | None = None
    try:
        sender = traffic.numbered_spawn(two.lab, two.lab.vip4, sources, 10**7, rate_pps=5000)
        time.sleep(1.5)
        vipctl(r1, "down", "lab", "--state-dir", str(tmp_path / r1))
        assert only_router2(two)
        time.sleep(1.5)
        sender.proc.terminate()
        sender.proc.wait(timeout=30)
    finally:
        if sender is not None and sender.proc.poll() is None:
            sender.proc.kill()
            sender.proc.wait()
        seen = traffic.capture_stop(cap, run_id=sender.run_id if sender else None)
    via1 = [k for name, v in seen.items() if name.endswith(".eth1") for k in v]
    via2 = [k for name, v in seen.items() if name.endswith(".eth2") for k in v]
    sent = max(via1 + via2, default=-1) + 1
    assert via1 and via2, (len(via1), len(via2))
    assert sent - max(via1) > 2500, "too little traffic after router 1 went"
    lost, duplicated = traffic.check_exactly_once(sent, seen)
    assert (len(lost), len(duplicated)) == (0, 0), (sent, lost[:10], duplicated[:10])
    print(f"{sent} datagrams, {len(via1)} through router 1 before it went: 0 lost")


def test_lab_cli_two_routers() -> None:
    """`vipctl lab up --routers 2`: both routers announce, `lab probe` through the upstream
    gets one right answer per source, through both routers; `lab down` leaves nothing."""
    prefix = f"vx18.cli{os.getpid()}"
    try:
        up = subprocess.run(
            [
                sys.executable,
                "-m",
                "vipctl.cli",
                "lab",
                "up",
                "--routers",
                "2",
                "--mode",
                "steer",
                *("--prefix", prefix),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert up.returncode == 0, up.stderr
        two = labmod.discover_two(prefix)
        assert two is not None and both_paths(two)
        probe = subprocess.run(
            [sys.executable, "-m", "vipctl.cli", "lab", "probe", "--prefix", prefix],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert "no reply: 0  two or more replies: 0  wrong member: 0" in probe.stdout
        work = two.lab.workdir
        for r in two.routers:
            out = vipctl(r, "status", "lab", "--json", "--state-dir", str(work / r)).stdout
            assert sum(m["packets"] for m in json.loads(out)["members"]) > 0, r
        down = subprocess.run(
            [sys.executable, "-m", "vipctl.cli", "lab", "down", "--prefix", prefix],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert down.returncode == 0, down.stderr
        assert labmod.namespaces(prefix) == [] and not work.exists()
    finally:
        labmod.destroy(prefix)


def block_probes(two: labmod.TwoRouters, r: str, names: set[str]) -> None:
    """Drop router `r`'s health probes to the members `names` (replaces the previous set):
    those members are down as `r` sees them, up for the other router."""
    addrs = ", ".join(two.lab.by_name(n).address for n in sorted(names))
    rule = f"ip daddr {{ {addrs} }} tcp dport {two.lab.echo_port} drop;" if names else ""
    labmod.run_in(
        r,
        ["nft", "-f", "-"],
        input="table inet vx18_fp {}\ndelete table inet vx18_fp\n"
        "table inet vx18_fp {\n chain out {\n  type filter hook output priority 0; "
        f"policy accept;\n  {rule}\n }}\n}}\n",
    )


def test_fingerprints_equal_after_every_step(
    two: labmod.TwoRouters, serving: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """A failure/recovery sequence seen in different orders by the two routers: whenever
    both see the same set of members down, their fingerprints are equal (the table is a
    function of that set, not of the order), and all up again gives the first table."""
    r1, r2 = two.routers
    members = set(two.lab.member_names)

    def step(down1: set[str], down2: set[str]) -> tuple[str, str]:
        block_probes(two, r1, down1)
        block_probes(two, r2, down2)

        def settled(r: str, d: set[str]) -> bool:
            st = status(r, tmp_path)
            down = {m["name"] for m in st["members"] if not m["healthy"]}
            return down == d and bool(st["in_sync"])  # recorded, and the kernel has it

        for r, d in ((r1, down1), (r2, down2)):
            wait_for(f"{r} sees {sorted(d)} down, kernel in sync", lambda r=r, d=d: settled(r, d))
        return fingerprint(two, r1, tmp_path), fingerprint(two, r2, tmp_path)

    f1, f2 = step(set(), set())
    assert f1 == f2
    first = f1
    seen = {first}
    # router 1 loses web2 first, router 2 loses web3 first: they disagree, rightly
    f1, f2 = step({"web2"}, {"web3"})
    assert f1 != f2 and first not in (f1, f2)
    # then each loses the other one: the same set, reached in different orders
    for down in ({"web2", "web3"}, {"web3"}, {"web1"}, set()):
        f1, f2 = step(down, down)
        assert f1 == f2, (down, f1, f2)
        if down:
            assert f1 not in seen, down
            seen.add(f1)
    assert f1 == first  # all up: exactly the first table
    assert set(healthy(r1, tmp_path)) == members


def bird_protocols(ctl: Path, ns: str) -> dict[str, tuple[str, str]]:
    """`birdc show protocols` of the BIRD at `ctl`: name -> (protocol kind, state/info)."""
    out = labmod.run_in(ns, ["birdc", "-s", str(ctl), "show", "protocols"]).stdout
    rows: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[1] in ("BGP", "Static", "BFD", "Device"):
            rows[cols[0]] = (cols[1], cols[-1])
    return rows


def test_two_clusters_share_one_bgp_speaker_ipv4_and_ipv6(
    two: labmod.TwoRouters, tmp_path: Path
) -> None:
    """Two clusters with `bgp` on the same two routers, IPv4 and IPv6 VIPs: every VIP is
    announced by both routers (two ECMP paths upstream each), by ONE BIRD per router with
    one session per peer (one IPv4, one IPv6); `vipctl down` of one cluster withdraws its
    VIPs only and keeps the sessions; the last cluster's down ends the BIRD."""
    peers = [
        {"address": labmod.UPSTREAM_LINK4, "asn": labmod.UPSTREAM_ASN},
        {"address": labmod.UPSTREAM_LINK6, "asn": labmod.UPSTREAM_ASN},
    ]
    bgp = {"asn": labmod.ROUTER_ASN, "peers": peers, "bfd_interval_ms": 100}
    vips = {
        "lab": ["198.51.100.253", "2001:db8:f::253"],
        "api": ["198.51.100.252", "2001:db8:f::252"],
    }
    procs = []
    try:
        for cluster, cvips in vips.items():
            spec = tmp_path / f"{cluster}.json"
            spec.write_text(json.dumps({**two.lab.spec(cluster, vips=cvips), "bgp": bgp}))
            for r in two.routers:
                log = open(tmp_path / f"{r}-{cluster}.log", "w")  # noqa: SIM115
                cmd = ["daemon", str(spec), "--state-dir", str(tmp_path / r)]
                procs.append(
                    labmod.spawn_in(
                        r,
                        [sys.executable, "-m", "vipctl.cli", *cmd],
                        stdout=log.fileno(),
                        stderr=log.fileno(),
                    )
                )
        every = [v for cvips in vips.values() for v in cvips]

        def announced(vip: str) -> list[str]:
            return labmod.upstream_paths(two, vip)

        both = {4: sorted(labmod.ROUTER_LINK4), 6: sorted(labmod.ROUTER_LINK6)}
        wait_for(
            "every VIP with two paths upstream",
            lambda: all(announced(v) == both[6 if ":" in v else 4] for v in every),
            timeout=60,
        )
        for r in two.routers:
            ctl = tmp_path / r / "bird" / "bird.ctl"
            rows = bird_protocols(ctl, r)
            sessions = {n: st for n, (kind, st) in rows.items() if kind == "BGP"}
            # one session per peer, for both clusters
            assert sessions == {
                "peer_203_0_113_126": "Established",
                "peer_2001_db8_ff__7e": "Established",
            }, rows
            # one BIRD on the router: its pid file, one process listening on port 179
            listen = labmod.run_in(r, ["ss", "-Htlnp", "sport", "= :179"]).stdout
            assert len({line.split("pid=")[1].split(",")[0] for line in listen.splitlines()}) == 1
        up = bird_protocols(two.bird_ctl, two.upstream_ns)
        assert all(
            up[f"router{i}{t}"] == ("BGP", "Established") for i in (1, 2) for t in ("", "v6")
        )

        # `down api` on router 1: its VIPs leave router 1 only, lab's stay on both
        r1 = two.routers[0]
        for p in procs[2:]:
            p.terminate()
            p.wait(timeout=10)
        vipctl(r1, "down", "api", "--state-dir", str(tmp_path / r1))
        for v in vips["api"]:
            assert announced(v) == [both[6 if ":" in v else 4][1]], v
        for v in vips["lab"]:
            assert announced(v) == both[6 if ":" in v else 4], v
        rows = bird_protocols(tmp_path / r1 / "bird" / "bird.ctl", r1)
        assert {n for n, (k, st) in rows.items() if k == "BGP" and st == "Established"} == {
            "peer_203_0_113_126",
            "peer_2001_db8_ff__7e",
        }
        assert not any(n.endswith("_api") for n in rows), rows
        # the last cluster: BIRD ends with it
        for p in procs[:2]:
            p.terminate()
            p.wait(timeout=10)
        vipctl(r1, "down", "lab", "--state-dir", str(tmp_path / r1))
        assert not labmod.run_in(r1, ["ss", "-Htln", "sport", "= :179"]).stdout.strip()
    finally:
        stop_daemons(procs)


def operator_bird_conf(r: int, include_dir: Path, log: Path) -> str:
    """A router's own BIRD as an operator runs it: its session to the upstream, and an
    include of whatever vipctl writes, exported by the statics' names."""
    return (
        f'log "{log}" all;\nrouter id {labmod.ROUTER_LINK4[r]};\nprotocol device {{ }}\n'
        f'include "{include_dir}/*.conf";\n'
        f"protocol bgp upstream {{ local as {labmod.ROUTER_ASN}; "
        f"neighbor {labmod.UPSTREAM_LINK4} as {labmod.UPSTREAM_ASN};\n"
        '  ipv4 { import none; export where proto ~ "vips4_*"; }; bfd off;\n'
        "  hold time 3; keepalive time 1; connect delay time 1; connect retry time 2; }\n"
    )


def test_external_speaker_gets_an_include_file_and_a_reload(
    two: labmod.TwoRouters, tmp_path: Path
) -> None:
    """`speaker: external`: each router already runs its own BIRD; vipctl writes the
    cluster's statics into the include file and reloads that BIRD (no BIRD of its own):
    the VIP is announced by both routers, and `vipctl down` on router 1 withdraws it there
    while the operator's BIRD keeps running."""
    for i, r in enumerate(two.routers):
        d = tmp_path / r
        (d / "vipctl.d").mkdir(parents=True)
        conf = d / "op-bird.conf"
        conf.write_text(operator_bird_conf(i, d / "vipctl.d", d / "op-bird.log"))
        labmod.run_in(
            r, ["bird", "-c", str(conf), "-s", str(d / "op.ctl"), "-P", str(d / "op.pid")]
        )
    procs = []
    try:
        for r in two.routers:
            d = tmp_path / r
            data = two.spec()
            data["bgp"] = {
                "speaker": "external",
                "include": str(d / "vipctl.d" / "lab.conf"),
                "control": str(d / "op.ctl"),
            }
            spec = d / "lab.json"
            spec.write_text(json.dumps(data))
            log = open(d / "daemon.log", "w")  # noqa: SIM115
            cmd = ["daemon", str(spec), "--state-dir", str(d / "state")]
            procs.append(
                labmod.spawn_in(
                    r,
                    [sys.executable, "-m", "vipctl.cli", *cmd],
                    stdout=log.fileno(),
                    stderr=log.fileno(),
                )
            )
        wait_for("two ECMP paths upstream", lambda: both_paths(two))
        for r in two.routers:
            assert not (tmp_path / r / "state" / "bird").exists()  # no BIRD of vipctl's
            rows = bird_protocols(tmp_path / r / "op.ctl", r)
            assert rows["upstream"] == ("BGP", "Established") and "vips4_lab" in rows
        r1 = two.routers[0]
        stop_daemons(procs[:1])
        vipctl(r1, "down", "lab", "--state-dir", str(tmp_path / r1 / "state"))
        assert only_router2(two)
        assert "route " not in (tmp_path / r1 / "vipctl.d" / "lab.conf").read_text()
        assert bird_protocols(tmp_path / r1 / "op.ctl", r1)["upstream"][1] == "Established"
    finally:
        stop_daemons(procs)


UNIT = Path(__file__).resolve().parents[2] / "systemd" / "vipctl@.service"
CAP_BITS = {"net_bind_service": 10, "net_admin": 12, "net_raw": 13}


def unit_capabilities() -> list[str]:
    """The shipped unit's CapabilityBoundingSet, as setpriv names (net_admin, ...)."""
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return [c.removeprefix("CAP_").lower() for c in line.split("=", 1)[1].split()]
    raise AssertionError(f"{UNIT} sets no CapabilityBoundingSet")


def test_bgp_under_the_units_capabilities(two: labmod.TwoRouters, tmp_path: Path) -> None:
    """Both daemons run as the shipped unit runs them (its capability bounding set, read
    from systemd/vipctl@.service, no new privileges): the BIRD they start inherits that
    set, binds port 179 and announces (two paths upstream). With the unit's former set
    (CAP_NET_ADMIN CAP_NET_RAW) BIRD logged "bind: Permission denied" and nothing was
    announced."""
    caps = unit_capabilities()
    wrapper = ("setpriv", "--bounding-set", ",".join(["-all", *(f"+{c}" for c in caps)]))
    procs = start_daemons(two, tmp_path, (*wrapper, "--inh-caps", "-all", "--nnp"))
    try:
        wait_for("two ECMP paths upstream", lambda: both_paths(two), timeout=30)
        for r in two.routers:
            pid = int((tmp_path / r / "bird" / "bird.pid").read_text())
            status = Path(f"/proc/{pid}/status").read_text()
            bnd = int(re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
            assert bnd == sum(1 << CAP_BITS[c] for c in caps), (r, hex(bnd))
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    finally:
        stop_daemons(procs)

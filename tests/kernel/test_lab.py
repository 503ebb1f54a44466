"""The lab itself: topology, echo service and traffic tools, checked with hand-written
nftables rulesets (no vipctl code), so later kernel tests can trust what they measure."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest

from vipctl.lab import topology as labmod
from vipctl.lab import traffic
from vipctl.lab.topology import Lab

LabFactory = Callable[..., Lab]

needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")


def nft(lab: Lab, text: str) -> None:
    labmod.run_in(lab.router_ns, ["nft", "-f", "-"], input=text)


def steer_to(lab: Lab, i: int) -> str:
    """Every VIP packet (v4 and v6) to member i; one table, replaced atomically."""
    mac = labmod.member_mac(lab, i)
    port = lab.member(i).port
    return f"""
table netdev t
delete table netdev t
table netdev t {{
  chain c {{ type filter hook ingress device "{lab.uplink}" priority 0; policy accept;
    ip daddr {lab.vip4} fwd to "{port}"
    ip6 daddr {lab.vip6} fwd to "{port}"
  }}
  chain e {{ type filter hook egress device "{port}" priority 0; policy accept;
    ip daddr {lab.vip4} ether daddr set {mac}
    ip6 daddr {lab.vip6} ether daddr set {mac}
  }}
}}
"""


def dup_to_all(lab: Lab) -> str:
    """Broadcast without a filter: every member gets every VIP packet (so: duplicates)."""
    dups = " ".join(f'dup to "{m.port}"' for m in lab.members)
    egress = "\n".join(
        f"""  chain e{m.index} {{ type filter hook egress device "{m.port}" priority 0;
    policy accept;
    ip daddr {lab.vip4} ether daddr set {m.mac}
    ip6 daddr {lab.vip6} ether daddr set {m.mac}
  }}"""
        for m in lab.members
    )
    return f"""
table netdev t
delete table netdev t
table netdev t {{
  chain c {{ type filter hook ingress device "{lab.uplink}" priority 0; policy accept;
    ip daddr {lab.vip4} {dups} drop
    ip6 daddr {lab.vip6} {dups} drop
  }}
{egress}
}}
"""


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


# --------------------------------------------------------------------------- topology


def test_build_and_destroy(lab: LabFactory) -> None:
    lb = lab(4)
    assert labmod.namespaces(lb.prefix) == sorted(lb.namespaces)
    assert labmod.discover(lb.prefix) == lb
    echo_pids = [p for ns in lb.member_ns for p in ns_pids(ns)]
    assert len(echo_pids) == 4, "one echo server per member"

    links = labmod.ip_json(lb.router_ns, ["-br", "link"])
    assert {link["ifname"].split("@")[0] for link in links} >= {"up0", "m1", "m2", "m3", "m4"}
    for i in range(1, 5):
        m = lb.member(i)
        assert labmod.member_mac(lb, i) == m.mac
        addrs = labmod.ip_json(m.ns, ["addr", "show", "dev", "lo"])[0]["addr_info"]
        assert {a["local"] for a in addrs} >= {lb.vip4, lb.vip6}
        assert labmod.get_sysctl(m.ns, "net.ipv4.conf.eth0.arp_ignore") == "1"
        assert labmod.get_sysctl(m.ns, "net.ipv4.conf.all.arp_announce") == "2"
        assert labmod.get_sysctl(m.ns, "net.ipv4.conf.eth0.rp_filter") == "0"
    assert labmod.get_sysctl(lb.router_ns, "net.ipv4.ip_forward") == "1"
    assert labmod.get_sysctl(lb.router_ns, "net.ipv6.conf.all.forwarding") == "1"
    assert labmod.get_sysctl(lb.client_ns, "net.ipv6.ip_nonlocal_bind") == "1"

    labmod.destroy(lb.prefix)
    assert labmod.namespaces(lb.prefix) == []
    assert labmod.discover(lb.prefix) is None
    assert not [p for p in echo_pids if labmod.pid_alive(p)], "echo servers survived"
    assert not lb.workdir.exists()
    labmod.destroy(lb.prefix)  # idempotent
    labmod.destroy("vtneverbuilt")


def test_member_numbering_and_limits() -> None:
    lb = labmod.describe("vtx", 29)
    m = lb.member(29)
    assert (m.name, m.port, m.ns) == ("web29", "m29", "vtx-m29")
    assert (m.address, m.gateway, m.address6) == (
        "198.51.100.234",
        "198.51.100.233",
        "2001:db8:39::2",
    )
    with pytest.raises(ValueError):
        labmod.describe("vtx", 30)
    with pytest.raises(ValueError):
        labmod.describe("bad-prefix", 2)


def test_router_has_no_route_to_the_vips(lab: LabFactory) -> None:
    lb = lab(2, echo=False)
    for vip in lb.vips:
        r = labmod.run_in(lb.router_ns, ["ip", "route", "get", vip], check=False)
        assert r.returncode != 0, f"router routes {vip} by itself: {r.stdout}"
    # ...but it does route replies back to every client source range.
    for src in ("10.99.200.7", "2001:db8:99::abcd"):
        r = labmod.run_in(lb.router_ns, ["ip", "route", "get", src])
        assert "dev up0" in r.stdout


def test_members_do_not_answer_arp_or_nd_for_the_vip(lab: LabFactory) -> None:
    """With a (temporary) on-link route to the VIP the router asks for its MAC on m1:
    member 1 must stay silent for both VIPs but answer for its own addresses."""
    lb = lab(1, echo=False)
    m = lb.member(1)
    r = lb.router_ns
    labmod.run_in(r, ["ip", "route", "add", f"{lb.vip4}/32", "dev", m.port])
    labmod.run_in(r, ["ip", "-6", "route", "add", f"{lb.vip6}/128", "dev", m.port])
    for addr in (lb.vip4, lb.vip6, m.address, m.address6):
        labmod.run_in(r, ["ping", "-c", "1", "-W", "1", addr], check=False)
    neigh = {n["dst"]: n for n in labmod.ip_json(r, ["neigh", "show", "dev", m.port])}
    for addr in (m.address, m.address6):
        assert neigh[addr].get("lladdr") == m.mac
    for vip in lb.vips:
        assert "lladdr" not in neigh.get(vip, {}), f"member answered for {vip}: {neigh[vip]}"


# --------------------------------------------------------------------------- probe


@needs_nft
def test_steer_probe_exactly_one_reply_each(lab: LabFactory) -> None:
    lb = lab(3)
    nft(lb, steer_to(lb, 1))
    src4 = traffic.expand(lb.sources4, 1024)
    src6 = traffic.expand(lb.sources6, 256)
    r4 = traffic.probe(lb, lb.vip4, src4)
    r6 = traffic.probe(lb, lb.vip6, src6)
    assert r4 == {s: ["web1"] for s in src4}
    assert r6 == {s: ["web1"] for s in src6}

    nft(lb, steer_to(lb, 3))
    assert traffic.summarize(traffic.probe(lb, lb.vip4, src4[:64])) == {"web3": 64}


@needs_nft
def test_probe_shows_missing_and_duplicate_replies(lab: LabFactory) -> None:
    lb = lab(2)
    src = traffic.expand(lb.sources4, 32)
    none = traffic.probe(lb, lb.vip4, src, timeout=0.3)
    assert none == {s: [] for s in src}
    assert traffic.summarize(none) == {"<none>": 32}

    nft(lb, dup_to_all(lb))
    both = traffic.probe(lb, lb.vip4, src)
    assert {s: sorted(v) for s, v in both.items()} == {s: ["web1", "web2"] for s in src}
    assert traffic.summarize(both) == {"<dup>": 32, "web1": 32, "web2": 32}


def test_probe_cli_summary(lab: LabFactory) -> None:
    """`probe --json`: the whole summary, exit 0 when every source got exactly one reply,
    and exit 1 with the sources counted under <none> when nothing answers."""
    lb = lab(1)
    argv = traffic._python_argv(
        "probe", "--lab", lb.prefix, "--vip", lb.vip4, "--sources", "10.99.0.0/28", "--json"
    )
    silent = labmod.run_in(None, [*argv, "--timeout", "0.3"], check=False)
    assert silent.returncode == 1
    assert json.loads(silent.stdout) == {"vip": lb.vip4, "sources": 16, "replies": {"<none>": 16}}
    nft(lb, steer_to(lb, 1))
    served = labmod.run_in(None, argv, check=False)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout) == {"vip": lb.vip4, "sources": 16, "replies": {"web1": 16}}


# --------------------------------------------------------------------------- numbered


@needs_nft
@needs_tcpdump
@pytest.mark.parametrize("family", [4, 6])
def test_numbered_capture_exactly_once(lab: LabFactory, family: int) -> None:
    lb = lab(3)
    nft(lb, steer_to(lb, 1))
    vip, sources = (
        (lb.vip4, traffic.expand(lb.sources4, 4096))
        if family == 4
        else (lb.vip6, traffic.expand(lb.sources6, 1024))
    )
    cap = traffic.capture_start(lb)
    stats = traffic.numbered(lb, vip, sources, 50_000, 0)
    seen = traffic.capture_stop(cap, run_id=stats.run_id)
    assert stats.sent == 50_000
    assert traffic.check_exactly_once(stats.sent, seen) == ([], [])
    assert {k: len(v) for k, v in seen.items()} == {"web1": 50_000, "web2": 0, "web3": 0}
    assert cap.kernel_drops == {"web1": 0, "web2": 0, "web3": 0}


@needs_nft
@needs_tcpdump
def test_numbered_capture_sees_duplicates(lab: LabFactory) -> None:
    lb = lab(2)
    nft(lb, dup_to_all(lb))
    cap = traffic.capture_start(lb)
    stats = traffic.numbered(lb, lb.vip4, traffic.expand(lb.sources4, 16), 1000, 20_000)
    seen = traffic.capture_stop(cap, run_id=stats.run_id)
    lost, dup = traffic.check_exactly_once(stats.sent, seen)
    assert lost == []
    assert dup == list(range(1000))
    assert stats.pps < 40_000  # rate limit honoured (roughly)


def test_check_exactly_once() -> None:
    seen = {"a": [0, 1, 3, 3], "b": [3, 4]}
    assert traffic.check_exactly_once(6, seen) == ([2, 5], [3, 3])
    assert traffic.check_exactly_once(2, {"a": [1, 0]}) == ([], [])


# --------------------------------------------------------------------------- TCP


@needs_nft
def test_tcp_sessions_stay_open_and_break_on_member_change(lab: LabFactory) -> None:
    lb = lab(2)
    nft(lb, steer_to(lb, 1))
    src4 = traffic.expand(lb.sources4, 200)
    src6 = traffic.expand(lb.sources6, 50)
    with (
        traffic.TcpSessions(lb, lb.vip4, src4) as s4,
        traffic.TcpSessions(lb, lb.vip6, src6) as s6,
    ):
        assert set(s4.opened.values()) == {"ok"} and set(s6.opened.values()) == {"ok"}
        for _ in range(3):
            assert set(s4.ping().values()) == {"web1"}
            assert set(s6.ping().values()) == {"web1"}
        # Without flow pinning a new owner knows nothing of the flows: it resets them.
        nft(lb, steer_to(lb, 2))
        assert set(s4.ping().values()) == {"reset"}
        assert set(s6.ping().values()) == {"reset"}

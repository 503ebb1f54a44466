"""vipctl's own netlink client against the kernel, in a lab's namespaces: what it reads
equals what `ip -j` and `nft -j` report in the same namespace, and what it writes is what
`ip -j` then shows.

Every read is compared in the same namespace, under `links.in_netns` (the test's thread
joins the namespace and leaves it; netlink sockets are per namespace and thread). Dynamic
state (neighbour entries age) is read twice around `ip`, and either read must match.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import sh, vipctl, write_spec
from vipctl.backends import nft
from vipctl.host import links, rtnl
from vipctl.host import netlink as nl
from vipctl.lab import topology
from vipctl.lab.topology import Lab

TABLE_NUMBERS = {"default": 253, "main": 254, "local": 255}
NUD = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}


def ip(ns: str, *args: str) -> Any:
    """`ip -N -d -j ARGS` in `ns`: numbers (protocol, table, type) as the kernel sent them."""
    out = sh(ns, "ip -N -d -j " + " ".join(args))
    return json.loads(out or "[]")


def same(ours: Callable[[], Any], theirs: Callable[[], Any]) -> tuple[Any, Any]:
    """(ours, theirs) where ours is one of two reads taken around theirs: equal unless the
    state really differs (a neighbour entry that changed state in between)."""
    before = ours()
    got = theirs()
    after = ours()
    return (before if before == got else after), got


@pytest.fixture(scope="module")
def router(topo: Lab) -> Iterator[str]:
    """The lab router with more to read: routes in tables 100 and 200, a multipath route,
    a gateway route, permanent neighbours and proxy entries (all inside the namespace)."""
    ns = topo.router_ns
    sh(
        ns,
        "ip route add 192.0.2.0/25 dev m1 table 100 proto static metric 7 && "
        "ip route add 192.0.2.128/25 via 198.51.100.10 table 200 && "
        "ip route add 192.0.2.200/32 proto 211 metric 4211 nexthop dev m1 nexthop dev m2 && "
        "ip route add blackhole 192.0.2.201/32 && "
        "ip -6 route add 2001:db8:77::/64 dev m2 table 100 proto 99 && "
        "ip -6 route add 2001:db8:78::/64 via 2001:db8:11::2 dev m1 metric 99 && "
        "ip neigh add 198.51.100.13 lladdr 02:AA:BB:CC:DD:0E dev m1 nud permanent && "
        "ip -6 neigh add 2001:db8:12::9 lladdr 02:aa:bb:cc:dd:0f dev m2 nud permanent && "
        "ip neigh add proxy 198.51.100.77 dev up0 && "
        "ip -6 neigh add proxy 2001:db8:f::77 dev up0 protocol 211",
    )
    yield ns


def test_links_and_addresses_are_what_ip_shows(router: str) -> None:
    with links.in_netns(router):
        found = rtnl.links()
        names = links.names()
        addresses = rtnl.addresses()
        v6 = rtnl.addresses(6)
    shown = ip(router, "link show")
    assert {n: (i.index, i.mtu, i.admin_up, i.carrier) for n, i in found.items()} == {
        x["ifname"]: (x["ifindex"], x["mtu"], "UP" in x["flags"], "LOWER_UP" in x["flags"])
        for x in shown
    }
    assert names == {x["ifname"]: x["ifindex"] for x in shown}
    assert {"lo", "up0", "m1", "m2", "m3"} <= set(found)
    expected = sorted(
        (a["local"], a["prefixlen"], x["ifname"])
        for x in ip(router, "addr show")
        for a in x["addr_info"]
    )
    assert sorted(addresses) == expected
    assert sorted(v6) == [a for a in expected if ":" in a[0]]
    assert ("203.0.113.1", 24, "up0") in addresses


def _route_as_ip(r: rtnl.Route) -> tuple[Any, ...]:
    table = TABLE_NUMBERS.get(r.table) or int(r.table)
    return (r.type, r.dst, r.dev, table, r.protocol, r.gateway, r.metric, r.nexthops)


def _ip_route(x: dict[str, Any], family: int) -> tuple[Any, ...]:
    types = {v: k for k, v in rtnl.ROUTE_TYPES.items()}
    rtype = rtnl.ROUTE_TYPES[int(x["type"])] if x["type"].isdigit() else x["type"]
    assert rtype in types
    default_metric = 1024 if family == 6 and rtype == "unicast" else 0
    return (
        rtype,
        x["dst"],
        x.get("dev", ""),
        int(x["table"]),
        int(x["protocol"]),
        x.get("gateway", ""),
        x.get("metric", 0 if family == 4 else default_metric),
        tuple(h["dev"] for h in x.get("nexthops", [])),
    )


@pytest.mark.parametrize("family", [4, 6])
def test_routes_of_every_table_are_what_ip_shows(router: str, family: int) -> None:
    with links.in_netns(router):
        found = sorted(_route_as_ip(r) for r in rtnl.routes(family))
    shown = ip(router, f"-{family} route show table all")
    # ip leaves the metric out when it is 0 (IPv4); for IPv6 it is always printed
    assert found == sorted(_ip_route(x, family) for x in shown)
    tables = {r[3] for r in found}
    assert {100, 254, 255} <= tables
    if family == 4:
        assert ("unicast", "192.0.2.200", "", 254, 211, "", 4211, ("m1", "m2")) in found
        assert ("unicast", "192.0.2.0/25", "m1", 100, 4, "", 7, ()) in found
        assert ("unicast", "192.0.2.128/25", "m1", 200, 3, "198.51.100.10", 0, ()) in found
        assert ("blackhole", "192.0.2.201", "", 254, 3, "", 0, ()) in found
        assert any(r[0] == "local" and r[1] == "203.0.113.1" for r in found)
    else:
        assert ("unicast", "2001:db8:77::/64", "m2", 100, 99, "", 1024, ()) in found
        assert ("unicast", "2001:db8:78::/64", "m1", 254, 3, "2001:db8:11::2", 99, ()) in found


def _neigh(n: rtnl.Neigh) -> tuple[Any, ...]:
    states = {name for bit, name in NUD.items() if n.state & bit} or {"NONE"}
    return (n.dst, n.dev, n.lladdr, frozenset(states))


def test_neighbours_are_what_ip_shows(router: str, topo: Lab) -> None:
    def ours() -> list[tuple[Any, ...]]:
        with links.in_netns(router):
            return sorted(_neigh(n) for n in rtnl.neighbours())

    def theirs() -> list[tuple[Any, ...]]:
        return sorted(
            (x["dst"], x["dev"], x.get("lladdr"), frozenset(x["state"]))
            for x in ip(router, "neigh show nud all")
        )

    found, shown = same(ours, theirs)
    assert found == shown
    assert ("198.51.100.13", "m1", "02:aa:bb:cc:dd:0e", frozenset({"PERMANENT"})) in found
    assert ("2001:db8:12::9", "m2", "02:aa:bb:cc:dd:0f", frozenset({"PERMANENT"})) in found
    with links.in_netns(router):
        v4 = rtnl.neighbours(4)
        assert all(":" not in n.dst for n in v4) and v4
        assert not any(n.proxy for n in rtnl.neighbours())


def test_proxy_entries_are_what_ip_shows(router: str) -> None:
    with links.in_netns(router):
        found = sorted((n.dst, n.dev, n.protocol, n.proxy) for n in rtnl.proxies())
        v6 = rtnl.proxies(6)
    shown = sorted(
        (x["dst"], x["dev"], int(x.get("protocol", 0)), True)
        for x in ip(router, "neigh show proxy")
    )
    assert found == shown
    assert ("198.51.100.77", "up0", 0, True) in found
    assert ("2001:db8:f::77", "up0", 211, True) in found
    assert [n.dst for n in v6] == ["2001:db8:f::77"]


def test_one_neighbour_is_looked_up_by_the_kernel(router: str, topo: Lab) -> None:
    """links.neighbour: an RTM_GETNEIGH get (NDA_DST + ifindex); ENOENT is None."""
    from ipaddress import ip_address

    m1 = topo.member(1)
    sh(topo.router_ns, f"ping -c1 -W1 {m1.address} >/dev/null")
    with links.in_netns(router), nl.connection() as sock:
        index = links.ifindex("m1")
        assert links.neighbour(sock, index, ip_address(m1.address)) == m1.mac
        assert links.neighbour(sock, index, ip_address("198.51.100.13")) == "02:aa:bb:cc:dd:0e"
        assert links.neighbour(sock, index, ip_address("198.51.100.14")) is None  # no entry
        assert links.neighbour(sock, links.ifindex("m2"), ip_address(m1.address)) is None
        m2 = links.ifindex("m2")
        assert links.neighbour(sock, m2, ip_address("2001:db8:12::9")) == "02:aa:bb:cc:dd:0f"


def test_writes_are_what_ip_then_shows(router: str) -> None:
    """Each write function, then `ip -j` in the same namespace."""
    vip4, vip6 = "192.0.2.250", "2001:db8:f::250"
    sh(router, "ip link add nlt0 type veth peer name nlt1")
    try:
        with links.in_netns(router):
            idx = {n: i.index for n, i in rtnl.links().items()}
            # proxy entries, tagged with a protocol number
            for vip in (vip4, vip6):
                rtnl.proxy_replace(vip, idx["up0"], "up0", 211)
                rtnl.proxy_replace(vip, idx["up0"], "up0", 211)  # replace: no error
            shown = {
                (x["dst"], x["dev"], x.get("protocol")) for x in ip(router, "neigh show proxy")
            }
            assert {(vip4, "up0", "211"), (vip6, "up0", "211")} <= shown
            assert rtnl.proxy_delete(vip4, idx["up0"], "up0") is True
            assert rtnl.proxy_delete(vip4, idx["up0"], "up0") is False
            assert rtnl.proxy_delete(vip6, idx["up0"], "up0") is True
            assert not {x["dst"] for x in ip(router, "neigh show proxy")} & {vip4, vip6}

            # a multipath route in table main, replaced, deleted
            rtnl.multipath_replace(f"{vip4}/32", [idx["m1"], idx["m2"], idx["m3"]], 211, 4211)
            [r] = ip(router, f"route show table all {vip4}/32")
            assert (r["protocol"], r["metric"], r["table"], r["type"]) == ("211", 4211, "254", "1")
            assert [h["dev"] for h in r["nexthops"]] == ["m1", "m2", "m3"]
            assert [h["weight"] for h in r["nexthops"]] == [1, 1, 1]
            rtnl.multipath_replace(f"{vip4}/32", [idx["m2"]], 211, 4211)
            [r] = ip(router, f"route show table all {vip4}/32")
            assert r.get("dev") == "m2" and "nexthops" not in r
            sh(router, f"ip route add {vip4}/32 dev m3 metric 5")  # an operator's: kept
            assert rtnl.route_delete(f"{vip4}/32", 211, 4211) is True
            assert rtnl.route_delete(f"{vip4}/32", 211, 4211) is False
            assert [(r["dev"], r["metric"]) for r in ip(router, f"route show {vip4}/32")] == [
                ("m3", 5)
            ]
            sh(router, f"ip route del {vip4}/32 dev m3 metric 5")

            # a link brought up
            assert "UP" not in ip(router, "link show nlt0")[0]["flags"]
            rtnl.set_up(idx["nlt0"], "nlt0")
            assert "UP" in ip(router, "link show nlt0")[0]["flags"]

            # addresses on lo, IPv6 without duplicate address detection
            for prefix in (f"{vip4}/32", f"{vip6}/128"):
                rtnl.addr_replace(idx["lo"], "lo", prefix)
                rtnl.addr_replace(idx["lo"], "lo", prefix)  # replace: no error
            lo = {
                (a["local"], a["prefixlen"]): a
                for a in ip(router, "addr show dev lo")[0]["addr_info"]
            }
            assert (vip4, 32) in lo and lo[(vip6, 128)].get("nodad") is True
            assert "tentative" not in lo[(vip6, 128)]
            assert (vip4, 32, "lo") in rtnl.addresses(4)
            for prefix in (f"{vip4}/32", f"{vip6}/128"):
                assert rtnl.addr_delete(idx["lo"], "lo", prefix) is True
                assert rtnl.addr_delete(idx["lo"], "lo", prefix) is False
            lo_after = {a["local"] for a in ip(router, "addr show dev lo")[0]["addr_info"]}
            assert not lo_after & {vip4, vip6}

            # refusals name the request and the errno
            with pytest.raises(rtnl.KernelError, match=r"cannot bring if999 up: .*\(ENODEV\)"):
                rtnl.set_up(999, "if999")
    finally:
        sh(router, "ip link del nlt0")


def _route_get(ns: str, dst: str, src: str, iif: str) -> str:
    """`ip route get`'s refusal text ("" when it routes)."""
    cmd = ["ip", "-n", ns, "route", "get", dst, "from", src, "iif", iif]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return "" if proc.returncode == 0 else proc.stderr.strip()


def test_route_get_errno_with_the_reverse_path_filter(router: str, topo: Lab) -> None:
    """A source that routes back through up0 arriving on m1 is refused with the reverse
    path filter on (EXDEV before 6.x, EINVAL on 6.18: doctor takes either), and routed
    with it off; the member's own source is routed either way."""
    m1 = topo.member(1)
    spoof = "203.0.113.99"
    rp = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.m1.rp_filter")

    def lookups() -> tuple[int | None, ...]:
        with links.in_netns(router):
            m1_index = links.ifindex("m1")
            return (
                rtnl.route_get_errno(topo.client4, spoof, m1_index),
                rtnl.route_get_errno(topo.client4, m1.address, m1_index),
                rtnl.route_get_errno(topo.client6, m1.address6, m1_index),
                rtnl.route_get_errno(topo.client4, "127.0.0.1", m1_index),  # martian
            )

    assert lookups()[:3] == (None, None, None)
    topology.set_sysctls(router, dict.fromkeys(rp, 1))
    try:
        spoofed, routed, routed6, martian = lookups()
        assert spoofed in (errno.EXDEV, errno.EINVAL)
        assert routed is None and routed6 is None
        assert martian in (errno.EXDEV, errno.EINVAL)
        assert _route_get(router, topo.client4, spoof, "m1") == (
            f"RTNETLINK answers: {os.strerror(spoofed)}"
        )
        assert _route_get(router, topo.client4, m1.address, "m1") == ""
    finally:
        topology.set_sysctls(router, dict.fromkeys(rp, 0))


def test_sockets_are_per_namespace_and_thread(router: str, topo: Lab) -> None:
    with links.in_netns(topo.client_ns):
        client = set(rtnl.links())
        with nl.connection() as a:
            pass
    with links.in_netns(router):
        assert set(rtnl.links()) != client and "up0" in rtnl.links()
        with nl.connection() as b:
            assert b is not a
    assert "eth0" in client and "up0" not in client
    before = nl.cached_sockets(nl.NETLINK_ROUTE)

    def worker() -> None:
        with links.in_netns(router):
            rtnl.links()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert nl.cached_sockets(nl.NETLINK_ROUTE) == before + 1
    with links.in_netns(topo.member(1).ns):
        rtnl.links()  # opens one more: the ended thread's socket is closed
    assert nl.cached_sockets(nl.NETLINK_ROUTE) == before + 1


# --------------------------------------------------------------------------- nftables


def _nft_structure(ns: str, table: str) -> dict[str, Any]:
    """Chains, sets, maps and the generation comment as `nft -j` lists the table."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-t", "-j", "list", "table", "netdev", table],
        capture_output=True,
        text=True,
        check=True,
    )
    items = json.loads(proc.stdout)["nftables"]
    comments = [i["rule"]["comment"] for i in items if "rule" in i and "comment" in i["rule"]]
    return {
        "chains": {i["chain"]["name"] for i in items if "chain" in i},
        "sets": {i["set"]["name"] for i in items if "set" in i},
        "maps": {i["map"]["name"] for i in items if "map" in i},
        "comments": comments,
    }


def _observed(ns: str, cluster: str) -> dict[str, Any] | None:
    with links.in_netns(ns):
        live = nft.observe_structure(cluster)
    if live is None:
        return None
    return {
        "chains": set(live.observed.chains),
        "sets": set(live.observed.sets),
        "maps": set(live.observed.maps),
        "generation": live.generation,
    }


def test_observe_structure_is_what_nft_lists(router: str, topo: Lab, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    spec = topo.spec("nlt", mode="steer", key="hash")
    spec["pinning"] = {"mode": "always"}
    path = write_spec(tmp_path / "nlt.json", spec)
    other = topo.spec("nlu", mode="broadcast", vips=[topo.vip6])
    for m, member in zip(other["members"], topo.members, strict=True):
        m["address"] = member.address6  # an IPv6-only cluster
    other_path = write_spec(tmp_path / "nlu.json", other)
    assert _observed(router, "nlt") is None
    try:
        vipctl(router, "apply", str(path), "--state-dir", state, check=True)
        vipctl(router, "apply", str(other_path), "--state-dir", state, check=True)
        # besides vipctl's own: a plain set, an interval set, a timeout set, a counter map
        # (an object map), and a rule with an anonymous set; a same-named chain elsewhere
        sh(
            router,
            "nft add set netdev vipctl_nlt extra4 '{ type ipv4_addr; }' && "
            "nft add set netdev vipctl_nlt ranges '{ type ipv4_addr; flags interval; }' && "
            "nft add set netdev vipctl_nlt seen '{ type ipv4_addr; timeout 60s; }' && "
            "nft add map netdev vipctl_nlt cmap '{ type ipv4_addr : counter; }' && "
            "nft add chain netdev vipctl_nlt extra && "
            "nft add rule netdev vipctl_nlt extra meta l4proto '{ tcp, udp }' accept && "
            "nft add table inet nlt_other && nft add chain inet nlt_other extra && "
            "nft add set inet nlt_other extra4 '{ type ipv4_addr; }'",
        )
        for cluster, table in (("nlt", "vipctl_nlt"), ("nlu", "vipctl_nlu")):
            listed = _nft_structure(router, table)
            observed = _observed(router, cluster)
            assert observed is not None
            assert observed["chains"] == listed["chains"]
            assert observed["sets"] == listed["sets"]
            assert observed["maps"] == listed["maps"]
            [comment] = [c for c in listed["comments"] if c.startswith("vipctl generation")]
            assert observed["generation"] == int(comment.split()[-1])
        nlt = _observed(router, "nlt")
        assert nlt is not None
        assert {"extra4", "ranges", "seen"} <= nlt["sets"] and "cmap" in nlt["maps"]
        assert {"pin4_t600_n1048576_k12", "buckets4_h8_5eed", "deliver4"} <= nlt["maps"]
        assert not any(s.startswith("__set") for s in nlt["sets"] | nlt["maps"])

        generation = nlt["generation"]
        vipctl(
            router, "rebalance", str(path), "--weights", "web1=3", "--state-dir", state, check=True
        )
        after = _observed(router, "nlt")
        assert after is not None and after["generation"] == generation + 1
        listed = _nft_structure(router, "vipctl_nlt")
        assert f"vipctl generation {generation + 1}" in listed["comments"]
    finally:
        vipctl(router, "down", "nlt", "--state-dir", state)
        vipctl(router, "down", "nlu", "--state-dir", state)
        sh(router, "nft delete table inet nlt_other || true")
    assert _observed(router, "nlt") is None
    assert _observed(router, "nlu") is None


def test_link_events_arrive_on_a_subscription(topo: Lab) -> None:
    """The daemon's link watch (service/health.py): a port set down and up again is seen
    as RTM_NEWLINK events with the flags `ip` set, in the namespace the socket was made in."""
    port = topo.members[0].port
    with links.in_netns(topo.router_ns):
        events = nl.Subscription(nl.RTMGRP_LINK)
    try:
        assert events.messages() == []  # nothing queued yet, and no blocking
        sh(topo.router_ns, f"ip link set dev {port} down")
        sh(topo.router_ns, f"ip link set dev {port} up")
        seen: list[tuple[int, bool]] = []
        for _ in range(100):
            seen += [
                (m.type, bool(m["flags"] & 0x1))
                for m in events.messages()
                if m.get_attr("IFLA_IFNAME") == port
            ]
            if (nl.RTM_NEWLINK, True) in seen[1:]:
                break
            threading.Event().wait(0.02)
        assert (nl.RTM_NEWLINK, False) in seen and seen[-1] == (nl.RTM_NEWLINK, True), seen
    finally:
        events.close()
        sh(topo.router_ns, f"ip link set dev {port} up")

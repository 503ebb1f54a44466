"""doctor's checks as pure functions of what the host reports (a fake host, no root)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vipctl.core.spec import Spec, load_text
from vipctl.host import announce, doctor
from vipctl.host.doctor import (
    Finding,
    LinkInfo,
    Neighbour,
    Route,
    errors,
    format_findings,
    needed_features,
    probe_batch,
    run_checks,
)

SPEC = """
cluster: web
vips: [198.51.100.253, "2001:db8:f::253"]
uplink: up0
mode: steer
members:
  - {name: web1, port: m1, address: 198.51.100.10}
  - {name: web2, port: m2, address: 198.51.100.18}
"""


@dataclass
class FakeHost:
    links_: dict[str, LinkInfo] = field(
        default_factory=lambda: {
            n: LinkInfo(n, True, True, 1500) for n in ("lo", "up0", "m1", "m2")
        }
    )
    sysctls: dict[str, str] = field(default_factory=dict)
    addrs: list[tuple[str, int, str]] = field(default_factory=list)
    routes_: list[Route] = field(default_factory=list)
    neigh: dict[str, Neighbour] = field(
        default_factory=lambda: {
            "web1": Neighbour("02:00:00:00:01:02"),
            "web2": Neighbour("02:00:00:00:02:02"),
        }
    )
    rp_fail: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # nft statements the "kernel" refuses
    batches: list[str] = field(default_factory=list)  # every batch checked
    tc_error: str | None = 'Error: Unknown filter "flower"'
    proxy: list[str] = field(default_factory=list)
    xdp: dict[str, int] | None = field(default_factory=dict)  # XDP_ACT_* bits per device

    def links(self) -> Mapping[str, LinkInfo]:
        return self.links_

    def sysctl(self, key: str) -> str | None:
        if key in self.sysctls:
            return self.sysctls[key]
        if key.endswith(".forwarding"):
            return "1"
        if key.endswith(".rp_filter"):
            return "0"
        return None

    def addresses(self) -> Sequence[tuple[str, int, str]]:
        return self.addrs

    def routes(self, family: int) -> Sequence[Route]:
        return [r for r in self.routes_ if (":" in r.dst) == (family == 6)]

    def neighbours(self, spec: Spec, ports: set[str]) -> Mapping[str, Neighbour]:
        return self.neigh

    def reverse_path(self, vip: str, port: str, uplink: str) -> str | None:
        return "Invalid argument" if port in self.rp_fail else None

    def nft_check(self, batch: str) -> str | None:
        self.batches.append(batch)
        for stmt in self.refused:
            if stmt in batch:
                return f"Error: Could not process rule: No such file or directory ({stmt})"
        return None

    def tc_check(self) -> str | None:
        return self.tc_error

    def xdp_features(self, devs: Sequence[str]) -> Mapping[str, int] | None:
        return {d: self.xdp.get(d, 0) for d in devs} if self.xdp is not None else None

    def proxies(self, uplink: str) -> Sequence[str]:
        return self.proxy


def spec(**extra: object) -> Spec:
    text = SPEC + "".join(f"{k}: {v}\n" for k, v in extra.items())
    return load_text(text)


def by_name(findings: list[Finding], name: str) -> list[Finding]:
    return [f for f in findings if f.check == name]


def the_problem(findings: list[Finding], name: str) -> Finding:
    bad = [f for f in by_name(findings, name) if f.status != "ok"]
    assert len(bad) == 1, findings
    return bad[0]


def test_a_good_host_has_no_problems() -> None:
    findings = run_checks(spec(), FakeHost())
    assert errors(findings) == []
    assert all(f.status == "ok" for f in findings), findings
    assert {f.check for f in findings} >= {
        "kernel",
        "link:up0",
        "link:m1",
        "link:m2",
        "neighbour:web1",
        "neighbour:web2",
        "forwarding:ipv4",
        "forwarding:ipv6",
        "rp_filter:m1",
        "rp_filter:m2",
        "mtu:m1",
        "mtu:m2",
        "vip:198.51.100.253",
        "vip:2001:db8:f::253",
        "announce",
    }
    assert format_findings(findings).endswith("0 error(s), 0 warning(s)\n")


def test_features_follow_the_mode() -> None:
    assert "dup" in needed_features(load_text(SPEC.replace("mode: steer", "mode: broadcast")))
    assert "fwd" in needed_features(load_text(SPEC))
    assert "jhash" in needed_features(load_text(SPEC + "partition: {key: hash}\n"))
    assert "dynamic sets" not in " ".join(
        needed_features(load_text(SPEC + "pinning: {enabled: false}\n"))
    )
    assert 'dup to "lo"' in probe_batch("dup") and 'device "lo"' in probe_batch("dup")


def test_missing_kernel_feature_is_named_with_its_kernel_option() -> None:
    f = the_problem(run_checks(spec(), FakeHost(refused={"fwd to"})), "kernel")
    assert f.status == "error" and "fwd" in f.message and "CONFIG_NFT_FWD_NETDEV" in f.fix


def test_kernel_features_are_checked_in_one_batch_unless_refused() -> None:
    host = FakeHost()
    f = by_name(run_checks(spec(partition="{key: hash}"), host), "kernel")[0]
    assert f.status == "ok" and len(host.batches) == 1
    assert all(s in host.batches[0] for s in ("fwd to", "jhash", "update @p"))
    host = FakeHost(refused={"jhash"})
    f = the_problem(run_checks(spec(partition="{key: hash}"), host), "kernel")
    # then one batch per feature: only the refused one is named
    assert len(host.batches) == 1 + len(needed_features(spec(partition="{key: hash}")))
    assert "(jhash:" in f.message and "fwd:" not in f.message and "CONFIG_NFT_HASH" in f.fix


def test_tc_backend_needs_flower() -> None:
    f = the_problem(run_checks(spec(backend="tc"), FakeHost()), "kernel")
    assert "flower" in f.message and "CONFIG_NET_CLS_FLOWER" in f.fix
    ok = run_checks(spec(backend="tc"), FakeHost(tc_error=None))
    assert by_name(ok, "kernel")[0].status == "ok"


def test_links_missing_down_and_without_carrier() -> None:
    host = FakeHost()
    del host.links_["m2"]
    host.links_["m1"] = LinkInfo("m1", False, False, 1500)
    host.links_["up0"] = LinkInfo("up0", True, False, 1500)
    findings = run_checks(spec(), host)
    assert the_problem(findings, "link:m1").fix == "ip link set dev m1 up"
    assert "members[1].port" in the_problem(findings, "link:m2").fix
    assert "no carrier" in the_problem(findings, "link:up0").message
    assert "link:m1" in the_problem(findings, "neighbour:web1").fix


def test_neighbours_unresolved_or_on_the_wrong_port() -> None:
    host = FakeHost(neigh={"web1": Neighbour(None), "web2": Neighbour(None, elsewhere="m1")})
    findings = run_checks(spec(), host)
    assert "members[0].mac" in the_problem(findings, "neighbour:web1").fix
    f = the_problem(findings, "neighbour:web2")
    assert "answers on m1" in f.message and "members[1].port: m1" in f.fix


def test_forwarding_off_names_the_exact_sysctls() -> None:
    host = FakeHost(
        sysctls={
            "net.ipv4.conf.all.forwarding": "0",
            "net.ipv4.conf.m2.forwarding": "0",
            "net.ipv6.conf.up0.forwarding": "0",
        }
    )
    findings = run_checks(spec(), host)
    assert the_problem(findings, "forwarding:ipv4").fix.startswith(
        "sysctl -w net.ipv4.conf.all.forwarding=1 net.ipv4.conf.m2.forwarding=1"
    )
    assert the_problem(findings, "forwarding:ipv6").fix.startswith(
        "sysctl -w net.ipv6.conf.up0.forwarding=1"
    )


def test_forwarding_for_dotted_interface_names_uses_slashes() -> None:
    s = load_text(SPEC.replace("port: m1", "port: eth0.100"))
    host = FakeHost(sysctls={"net.ipv4.conf.eth0.100.forwarding": "0"})
    host.links_["eth0.100"] = LinkInfo("eth0.100", True, True, 1500)
    f = the_problem(run_checks(s, host), "forwarding:ipv4")
    assert "net/ipv4/conf/eth0.100/forwarding=1" in f.fix


def test_strict_rp_filter_on_a_port() -> None:
    host = FakeHost(sysctls={"net.ipv4.conf.m2.rp_filter": "1"}, rp_fail={"m2"})
    f = the_problem(run_checks(spec(), host), "rp_filter:m2")
    assert "rp_filter=1" in f.message
    assert f.fix.startswith("sysctl -w net.ipv4.conf.m2.rp_filter=0")
    host = FakeHost(sysctls={"net.ipv4.conf.all.rp_filter": "2"}, rp_fail={"m1", "m2"})
    f = the_problem(run_checks(spec(), host), "rp_filter:m1")
    assert "net.ipv4.conf.all.rp_filter=0" in f.fix


def test_mtu_smaller_port_is_an_error_larger_a_warning() -> None:
    host = FakeHost()
    host.links_["m1"] = LinkInfo("m1", True, True, 1400)
    host.links_["m2"] = LinkInfo("m2", True, True, 9000)
    findings = run_checks(spec(), host)
    small = the_problem(findings, "mtu:m1")
    assert small.status == "error" and small.fix.startswith("ip link set dev m1 mtu 1500")
    assert the_problem(findings, "mtu:m2").status == "warning"


def test_vip_claimed_by_local_address_or_routes() -> None:
    host = FakeHost(
        addrs=[("198.51.100.253", 32, "lo")],
        routes_=[
            Route("local", "198.51.100.253", "lo", "local", 2),  # RTPROT_KERNEL
            Route("local", "2001:db8:f::/64", "lo", "local", 3),  # RTPROT_BOOT
            Route("unicast", "198.51.100.253", "", "main", announce.PROTO),  # vipctl's own
            Route("unicast", "default", "up0"),
        ],
    )
    findings = run_checks(spec(), host)
    assert the_problem(findings, "vip:198.51.100.253").fix == "ip addr del 198.51.100.253/32 dev lo"
    assert the_problem(findings, "vip:2001:db8:f::253").fix == (
        "ip -6 route del local 2001:db8:f::/64 dev lo table local"
    )
    host = FakeHost(routes_=[Route("blackhole", "198.51.100.0/24", "", "main", 3)])
    f = the_problem(run_checks(spec(), host), "vip:198.51.100.253")
    assert f.status == "warning" and f.fix == "ip route del blackhole 198.51.100.0/24 table main"


def test_announce_state() -> None:
    on = spec(announce_vips="true")
    f = the_problem(run_checks(on, FakeHost()), "announce")
    assert f.status == "warning" and "proxy 198.51.100.253 dev up0" in f.fix
    ok = run_checks(on, FakeHost(proxy=["198.51.100.253", "2001:db8:f::253"]))
    assert by_name(ok, "announce")[0].status == "ok"
    stale = the_problem(run_checks(spec(), FakeHost(proxy=["198.51.100.253"])), "announce")
    assert stale.status == "warning" and "neigh del proxy 198.51.100.253 dev up0" in stale.fix


def test_announce_commands() -> None:
    cmds = announce.commands(spec(announce_vips="true"))
    assert "sysctl -w net.ipv6.conf.up0.proxy_ndp=1" in cmds
    assert "ip -6 neigh replace proxy 2001:db8:f::253 dev up0 protocol 211" in cmds
    assert (
        "ip route replace 198.51.100.253/32 proto 211 metric 4211 nexthop dev m1 nexthop dev m2"
        in cmds
    )


def test_members_declared_down_only_warn() -> None:
    host = FakeHost(neigh={"web1": Neighbour(None), "web2": Neighbour("02:00:00:00:02:02")})
    host.links_["m1"] = LinkInfo("m1", True, False, 1500)
    findings = run_checks(spec(), host, down={"web1"})
    assert errors(findings) == []
    assert the_problem(findings, "neighbour:web1").status == "warning"
    assert the_problem(findings, "link:m1").message.startswith("(member declared down)")
    assert errors(run_checks(spec(), host))  # not declared down: errors


def test_xdp_needs_native_xdp_on_the_uplink_and_redirect_targets_on_every_port() -> None:
    s = spec(backend="xdp")
    good = {"up0": 0x23, "m1": 0x67, "m2": 0x67}  # veth with XDP on the members' side
    host = FakeHost(xdp=good)
    assert [(f.check, f.status) for f in doctor.check_kernel(s, host)] == [("kernel", "ok")]
    # a member port that does not transmit redirected frames would drop them all
    host = FakeHost(xdp={**good, "m2": 0x23})
    found = doctor.check_kernel(s, host)
    assert [(f.check, f.status) for f in found] == [("link:m2", "error")]
    assert "m2 cannot transmit" in found[0].message and "backend: nftables" in found[0].fix
    # an uplink driver without native XDP
    host = FakeHost(xdp={**good, "up0": 0})
    found = doctor.check_kernel(s, host)
    assert [(f.check, f.status) for f in found] == [("kernel", "error")]
    assert "no native XDP" in found[0].message and "backend: nftables" in found[0].fix
    # a kernel without the netdev family cannot say: refused, not guessed
    found = doctor.check_kernel(s, FakeHost(xdp=None))
    assert [f.status for f in found] == ["error"] and "6.3" in found[0].fix
    # the nftables backend never asks
    assert doctor.check_kernel(spec(), FakeHost(xdp=None))[0].status == "ok"

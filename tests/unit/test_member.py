"""vipctl member: the pure setup builder and its renderings."""

from __future__ import annotations

import pytest

from vipctl.core.spec import load_text
from vipctl.errors import UsageError
from vipctl.host.member import build_setup, render
from vipctl.host.sysctl import sysctl

SPEC = """
cluster: web
vips: [198.51.100.253, "2001:db8:f::253"]
uplink: up0
members:
  - {name: web1, port: m1, address: 198.51.100.10}
  - {name: web2, port: m2, address: "2001:db8:12::2"}
"""


def test_setup_for_a_dual_stack_cluster() -> None:
    s = build_setup(load_text(SPEC), "web1", "eth0")
    assert s.addresses == ("198.51.100.253/32", "2001:db8:f::253/128")
    keys = {x.key: (x.value, set(x.ok)) for x in s.sysctls}
    assert keys["net.ipv4.conf.all.arp_ignore"] == (1, {1, 2, 8})
    assert keys["net.ipv4.conf.eth0.arp_announce"] == (2, {2})
    assert keys["net.ipv4.conf.eth0.rp_filter"] == (2, {0, 2})


def test_ipv6_only_cluster_needs_no_arp_sysctls() -> None:
    spec = load_text(
        SPEC.replace("198.51.100.253, ", "").replace(
            "{name: web1, port: m1, address: 198.51.100.10}",
            '{name: web1, port: m1, address: "2001:db8:11::2"}',
        )
    )
    s = build_setup(spec, "web1", "eth0")
    assert s.addresses == ("2001:db8:f::253/128",)
    assert not any("arp_" in x.key for x in s.sysctls)


def test_unknown_member_and_bad_interface() -> None:
    with pytest.raises(UsageError, match="no member 'web9'"):
        build_setup(load_text(SPEC), "web9", "eth0")
    with pytest.raises(UsageError, match="bad interface"):
        build_setup(load_text(SPEC), "web1", "../etc")


def test_sysctl_keys_with_dotted_interfaces() -> None:
    s = sysctl("net.ipv4.conf.eth0.100.rp_filter", 2)
    assert s.path == ("net", "ipv4", "conf", "eth0.100", "rp_filter")
    assert s.key == "net/ipv4/conf/eth0.100/rp_filter"
    assert str(s.proc) == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl("net.ipv4.ip_forward", 1).key == "net.ipv4.ip_forward"


def test_commands() -> None:
    text = render(build_setup(load_text(SPEC), "web1", "eth0"), "commands")
    assert "ip addr replace 198.51.100.253/32 dev lo\n" in text
    assert "ip addr replace 2001:db8:f::253/128 dev lo nodad\n" in text
    assert "sysctl -w net.ipv4.conf.eth0.arp_ignore=1" in text
    assert "sysctl -w net.ipv4.conf.all.arp_announce=2" in text


@pytest.mark.parametrize(
    ("fmt", "needles"),
    [
        (
            "networkd",
            [
                "Name=lo",
                "Address=198.51.100.253/32",
                "DuplicateAddressDetection=none",
                "Address=127.0.0.1/8",
            ],
        ),
        (
            "ifupdown",
            [
                "iface lo inet static",
                "address 198.51.100.253/32",
                "iface lo inet6 static",
                "dad-attempts 0",
            ],
        ),
        ("netplan", ["match: {name: lo}", '"198.51.100.253/32"', '"2001:db8:f::253/128"']),
    ],
)
def test_persistent_formats(fmt: str, needles: list[str]) -> None:
    text = render(build_setup(load_text(SPEC), "web1", "eth0"), fmt)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in text, (fmt, needle, text)
    # each persistent format comes with the sysctl.d file
    assert "/etc/sysctl.d/90-vipctl-web.conf" in text
    assert "net.ipv4.conf.eth0.arp_ignore = 1" in text


def test_netplan_is_valid_yaml() -> None:
    import yaml

    text = render(build_setup(load_text(SPEC), "web1", "eth0"), "netplan")
    doc = yaml.safe_load(text.split("\n\n")[0])
    assert doc["network"]["ethernets"]["lo"]["addresses"][-1] == "2001:db8:f::253/128"


def test_the_second_chance_hands_back_only_unknown_non_syn_tcp() -> None:
    from vipctl.core.spec import parse_spec
    from vipctl.host.member import build_setup, second_chance_batch, second_chance_removal

    spec = parse_spec(
        {
            "cluster": "web-a",
            "vips": ["198.51.100.253", "2001:db8:f::253"],
            "uplink": "up0",
            "members": [
                {"name": "web1", "port": "m1", "address": "198.51.100.10"},
                {"name": "web2", "port": "m2", "address": "2001:db8:11::2"},
            ],
        }
    )
    setup = build_setup(spec, "web1", "eth1.7")
    batch = second_chance_batch(setup, {4: "198.51.100.9"})
    assert batch.splitlines() == [
        "add table ip vipctl_web_a_eth1_7",
        "delete table ip vipctl_web_a_eth1_7",
        "add table ip vipctl_web_a_eth1_7",
        "add chain ip vipctl_web_a_eth1_7 pre { type filter hook prerouting priority -150; "
        "policy accept; }",
        'add rule ip vipctl_web_a_eth1_7 pre iifname "eth1.7" ip daddr { 198.51.100.253 } '
        "ip ttl 1 tcp flags & (syn | ack) != syn socket wildcard 1 dup to 198.51.100.9 "
        'device "eth1.7" drop',
        # no IPv6 gateway on this interface: nothing can be handed back there
        "add table ip6 vipctl_web_a_eth1_7",
        "delete table ip6 vipctl_web_a_eth1_7",
    ]
    assert second_chance_removal(setup).splitlines() == [
        "add table ip vipctl_web_a_eth1_7",
        "delete table ip vipctl_web_a_eth1_7",
        "add table ip6 vipctl_web_a_eth1_7",
        "delete table ip6 vipctl_web_a_eth1_7",
    ]

"""The BIRD configuration of `bgp` specs (one speaker for every cluster), and the spec's
checks of that section."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import SpecError
from vipctl.render import bird


def spec(cluster: str = "web-1", vips: tuple[str, ...] = (), **bgp: Any) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "vips": list(vips or ("198.51.100.253", "2001:db8::253")),
        "uplink": "up0",
        "members": [{"name": "a", "port": "m1", "address": "198.51.100.10"}],
        "bgp": {
            "asn": 65001,
            "peers": [
                {"address": "203.0.113.254", "asn": 65000},
                {"address": "2001:db8:1::fe", "asn": 65000},
            ],
            **bgp,
        },
    }


def member(s: Spec, directory: str = "/x") -> bird.Member:
    assert s.bgp is not None
    return bird.Member(s.bgp, s.vip_families, f"{directory}/{s.cluster}.conf")


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    return err.value.problems


def test_serving_announces_every_vip_as_a_host_route() -> None:
    text = bird.routes(parse_spec(spec()), serving=True)
    assert "protocol static vips4_web_1 { ipv4; route 198.51.100.253/32 blackhole; }" in text
    assert "protocol static vips6_web_1 { ipv6; route 2001:db8::253/128 blackhole; }" in text
    assert "protocol kernel" not in text  # nothing lands in the router's own table


def test_not_serving_keeps_the_statics_and_announces_nothing() -> None:
    text = bird.routes(parse_spec(spec()), serving=False)
    assert "route " not in text and "protocol static vips4_web_1 { ipv4; }" in text


def test_one_session_per_peer_for_every_cluster() -> None:
    """Two clusters naming the same upstreams: one session per peer address, exporting
    both clusters' statics of its family; a peer only one cluster names exports only it."""
    web = parse_spec(spec("web"))
    api = parse_spec(
        spec(
            "api",
            vips=("198.51.100.252",),
            peers=[
                {"address": "203.0.113.254", "asn": 65000},
                {"address": "203.0.113.253", "asn": 65002},
            ],
        )
    )
    text = bird.shared({"web": member(web), "api": member(api)}, "/x/bird.log")
    assert text.count("protocol bgp ") == 3
    assert text.count("protocol bfd ") == 1
    assert 'include "/x/web.conf";' in text and 'include "/x/api.conf";' in text
    four = next(line for line in text.splitlines() if "neighbor 203.0.113.254 " in line)
    assert four.startswith("protocol bgp peer_203_0_113_254 { local as 65001;")
    assert 'export where proto = "vips4_api" || proto = "vips4_web";' in text
    assert 'export where proto = "vips4_api";' in text  # 203.0.113.253: api only
    assert 'ipv6 { import none; export where proto = "vips6_web"; };' in text
    assert "protocol bgp peer_2001_db8_1__fe { local as 65001;" in text


def test_bfd_timers_and_router_id_are_rendered() -> None:
    s = parse_spec(spec(bfd_interval_ms=30, bfd_multiplier=4, router_id="203.0.113.1"))
    text = bird.shared({"web-1": member(s)}, "/x/bird.log")
    assert "router id 203.0.113.1;" in text
    assert "min rx interval 30 ms; min tx interval 30 ms; multiplier 4;" in text
    assert text.count("bfd on;") == 2
    off = bird.shared({"web-1": member(parse_spec(spec(bfd=False)))}, "/x/bird.log")
    assert "protocol bfd" not in off and off.count("bfd off;") == 2


@pytest.mark.parametrize(
    ("other", "what"),
    [
        ({"asn": 65009}, "bgp.peers 203.0.113.254 (asn, peer asn, bfd)"),
        ({"router_id": "203.0.113.9"}, "bgp.router_id"),
        ({"bfd_interval_ms": 30}, "bgp.bfd_interval_ms/bfd_multiplier"),
    ],
)
def test_clusters_that_one_bird_cannot_hold_both_are_refused(
    other: dict[str, Any], what: str
) -> None:
    base = {"router_id": "203.0.113.1"} if "router_id" in other else {}
    web = parse_spec(spec("web", **base))
    api = parse_spec(spec("api", vips=("198.51.100.252", "2001:db8::252"), **other))
    with pytest.raises(bird.Conflict) as err:
        bird.shared({"web": member(web), "api": member(api)}, "/x/bird.log")
    assert str(err.value).startswith(f"{what}: cluster api has ")
    assert "cluster web has" in str(err.value)


def test_router_id_is_a_string_like_every_address() -> None:
    s = parse_spec(spec(router_id="203.0.113.1"))
    assert s.bgp is not None and str(s.bgp.router_id) == "203.0.113.1"
    assert parse_spec(s.model_dump(mode="json")) == s  # a recorded spec loads again
    assert problems(spec(router_id="2001:db8::1")) == [
        "bgp.router_id: a router id is written as an IPv4 address (32 bits)"
    ]
    assert problems(spec(router_id="0.0.0.0"))[0].startswith("bgp.router_id: 0.0.0.0 is not")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("224.0.0.5", "224.0.0.5 is not a unicast address"),
        ("255.255.255.255", "255.255.255.255 is not a unicast address"),
        ("0.0.0.0", "0.0.0.0 is not the address of an upstream router"),
        ("127.0.0.1", "127.0.0.1 is not the address of an upstream router"),
        ("ff02::2", "ff02::2 is not a unicast address"),
        ("::1", "::1 is not the address of an upstream router"),
        ("240.0.0.1", "240.0.0.1 is in the reserved 240.0.0.0/4"),
        ("fe80::1", "fe80::1 is link-local"),
        ("198.51.100.253", "198.51.100.253 is a VIP"),
    ],
)
def test_peer_addresses_are_checked(address: str, why: str) -> None:
    data = spec()
    data["bgp"]["peers"][0]["address"] = address
    found = problems(data)
    assert any(p.startswith(f"bgp.peers.0.address: {why}") for p in found), found


def test_bfd_settings_are_bounded() -> None:
    s = parse_spec(spec())
    assert s.bgp is not None and (s.bgp.bfd_interval_ms, s.bgp.bfd_multiplier) == (100, 3)
    assert problems(spec(bfd_interval_ms=5)) == [
        "bgp.bfd_interval_ms: Input should be greater than or equal to 10"
    ]
    assert problems(spec(bfd_multiplier=0)) == [
        "bgp.bfd_multiplier: Input should be greater than or equal to 1"
    ]
    assert problems(spec(bfd_interval_ms=10001))[0].startswith("bgp.bfd_interval_ms:")


def test_speaker_fields() -> None:
    ext = spec(speaker="external")
    del ext["bgp"]["asn"], ext["bgp"]["peers"]
    s = parse_spec(ext)
    assert s.bgp is not None and s.bgp.speaker == "external"
    assert parse_spec(s.model_dump(mode="json")) == s
    assert problems({**ext, "bgp": {**ext["bgp"], "asn": 1, "bfd_multiplier": 4}}) == [
        "bgp.asn: speaker: external leaves the sessions to the operator's BIRD "
        "(set it in its configuration)",
        "bgp.bfd_multiplier: speaker: external leaves the sessions to the operator's BIRD "
        "(set it in its configuration)",
    ]
    assert problems(spec(include="/etc/bird/vipctl.d/web.conf")) == [
        "bgp.include: only for speaker: external"
    ]
    bare = spec()
    del bare["bgp"]["asn"], bare["bgp"]["peers"]
    assert problems(bare)[:2] == [
        "bgp.asn: required (this router's AS number)",
        "bgp.peers: at least one peer is required",
    ]
    assert problems({**ext, "bgp": {**ext["bgp"], "include": "etc/x y"}})[0].startswith(
        "bgp.include: String should match pattern"
    )


def test_a_vip_family_without_a_peer_is_refused() -> None:
    data = spec()
    data["bgp"]["peers"] = data["bgp"]["peers"][:1]
    assert any("bgp.peers: no IPv6 peer" in p for p in problems(data))
    assert any(p.startswith("bgp.extra") for p in problems(spec(extra=1)))


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")
def test_bird_parses_the_rendered_configuration(tmp_path: Path) -> None:
    web = parse_spec(spec("web", bfd_interval_ms=30, router_id="203.0.113.1"))
    api = parse_spec(spec("api", vips=("198.51.100.252", "2001:db8::252")))
    api = api.model_copy(update={"bgp": web.bgp})
    for serving in (True, False):
        for s in (web, api):
            (tmp_path / f"{s.cluster}.conf").write_text(bird.routes(s, serving))
        conf = tmp_path / "bird.conf"
        members = {s.cluster: member(s, str(tmp_path)) for s in (web, api)}
        conf.write_text(bird.shared(members, str(tmp_path / "b.log")))
        done = subprocess.run(
            ["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

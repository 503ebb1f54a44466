"""The BIRD configuration of a `bgp` spec, and the spec's checks of that section."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vipctl.core.spec import parse_spec
from vipctl.errors import SpecError
from vipctl.render import bird


def spec(**bgp: Any) -> dict[str, Any]:
    return {
        "cluster": "web-1",
        "vips": ["198.51.100.253", "2001:db8::253"],
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


def test_serving_announces_every_vip_as_a_host_route_and_bfd_is_on() -> None:
    text = bird.render(parse_spec(spec()), serving=True, log_path="/tmp/x.log")
    assert "route 198.51.100.253/32 blackhole;" in text
    assert "route 2001:db8::253/128 blackhole;" in text
    assert text.count("bfd on;") == 2 and "protocol bfd" in text
    assert 'export where proto = "vips4_web_1"' in text
    assert 'export where proto = "vips6_web_1"' in text
    assert "protocol kernel" not in text  # nothing lands in the router's own table


def test_not_serving_keeps_the_sessions_and_announces_nothing() -> None:
    text = bird.render(parse_spec(spec(bfd=False)), serving=False, log_path="/tmp/x.log")
    assert "route " not in text and "protocol bgp peer0" in text
    assert "bfd off;" in text and "protocol bfd" not in text


def test_a_vip_family_without_a_peer_is_refused() -> None:
    data = spec()
    data["bgp"]["peers"] = data["bgp"]["peers"][:1]
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any("bgp.peers: no IPv6 peer" in p for p in err.value.problems)
    data = spec(extra=1)
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(p.startswith("bgp.extra") for p in err.value.problems)


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")
def test_bird_parses_the_rendered_configuration(tmp_path: Path) -> None:
    for serving in (True, False):
        conf = tmp_path / "b.conf"
        conf.write_text(bird.render(parse_spec(spec()), serving, str(tmp_path / "b.log")))
        done = subprocess.run(
            ["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

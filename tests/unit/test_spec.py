"""The spec: defaults, and one named `field.path: message` per problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vipctl.core.spec import MAX_SPEC_BYTES, load_spec, load_text, read_spec_file
from vipctl.errors import SpecError

GOOD = """
cluster: web
vips: [198.51.100.253]
uplink: up0
members:
  - {name: web1, port: m1, address: 198.51.100.10}
  - {name: web2, port: m2, address: 198.51.100.18, weight: 2}
"""


def problems(text: str, source: str = "spec.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_text(text, source)
    assert info.value.exit_code == 78
    return info.value.problems


def test_defaults_are_sensible() -> None:
    spec = load_text(GOOD)
    assert spec.mode == "broadcast"
    assert (spec.partition.key, spec.partition.bits, spec.partition.seed) == ("mask", 8, 0x5EED)
    assert spec.health.probe.kind == "icmp"
    assert (spec.health.interval_ms, spec.health.timeout_ms) == (100, 300)
    assert (spec.health.rise, spec.health.fall) == (2, 3)
    assert spec.pinning.idle_timeout_s == 600
    assert spec.members[0].weight == 1
    assert spec.member("web2").exact_weight == 2


def test_full_spec_from_product_md() -> None:
    spec = load_text(
        """
cluster: web
vips: [198.51.100.253, "2001:db8:f::253"]
uplink: up0
mode: steer
partition: {key: hash, bits: 12, seed: 0x5eed}
members:
  - {name: web1, port: m1, address: 198.51.100.10, weight: 1}
  - {name: web2, port: m2, address: "2001:db8:11::2", weight: 0.5}
health:
  probe: {kind: http, port: 8080, path: /healthz, expect: 204}
  interval_ms: 100
  timeout_ms: 300
  rise: 2
  fall: 3
pinning: {idle_timeout_s: 60, max_flows: 4096}
"""
    )
    assert spec.partition.seed == 0x5EED
    assert spec.health.probe.kind == "http"
    assert spec.vip_families == (4, 6)


def test_json_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    path.write_text(
        '{"cluster": "web", "vips": ["198.51.100.253"], "uplink": "up0", "partition":'
        ' {"seed": "0x10"}, "members": [{"name": "a", "port": "m1", "address": "198.51.100.2"}]}'
    )
    assert load_spec(path).partition.seed == 16


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ("cluster: Web", "cluster: "),
        ("cluster: a-very-long-cluster-name-beyond", "cluster: "),
        ("vips: []", "vips: "),
        ("vips: [300.1.1.1]", "vips.0: "),
        ("vips: [198.51.100.253, 198.51.100.253]", "vips: 198.51.100.253 is listed twice"),
        ("uplink: 'has space'", "uplink: "),
        ("mode: flood", "mode: "),
        ("partition: {bits: 0}", "partition.bits: "),
        ("partition: {bits: 17}", "partition.bits: "),
        ("partition: {key: crc}", "partition.key: "),
        ("partition: {seed: banana}", "partition.seed: "),
        ("health: {probe: {kind: tcp}}", "health.probe.port: Field required"),
        ("health: {probe: {kind: smtp}}", "health.probe"),
        ("health: {rise: 0}", "health.rise: "),
        ("pinning: {max_flows: 0}", "pinning.max_flows: "),
        ("colour: blue", "colour: Extra inputs are not permitted"),
    ],
)
def test_each_bad_field_is_named(patch: str, expected: str) -> None:
    key = patch.split(":", 1)[0]
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith(f"{key}:")]
    found = problems("\n".join([*lines, patch]))
    assert any(p.startswith(expected) for p in found), found


def test_member_problems_are_named_with_their_index() -> None:
    found = problems(
        """
cluster: web
vips: [198.51.100.253]
uplink: m1
members:
  - {name: web1, port: m1, address: 198.51.100.10}
  - {name: web1, port: m1, address: "2001:db8::1"}
  - {name: web3, port: m3, address: 198.51.100.26, weight: 0, extra: 1}
"""
    )
    assert "members.2.extra: Extra inputs are not permitted" in found


def test_cross_field_problems_each_on_a_line() -> None:
    found = problems(
        """
cluster: web
vips: [198.51.100.253]
uplink: m1
members:
  - {name: web1, port: m1, address: 198.51.100.10, weight: 0}
  - {name: web1, port: m1, address: "2001:db8::1", weight: 0}
"""
    )
    assert "members.0.port: 'm1' is the uplink" in found
    assert "members.1.name: 'web1' is also member 0" in found
    assert "members.1.port: 'm1' is also the port of member 0" in found
    assert "members.1.address: IPv6 address but no IPv6 VIP" in found
    assert "members: at least one member needs a weight > 0" in found


def test_negative_weight_and_bool_weight() -> None:
    assert any(
        p.startswith("members.0.weight") for p in problems(GOOD.replace("m1,", "m1, weight: -1,"))
    )
    assert any(
        p.startswith("members.0.weight") for p in problems(GOOD.replace("m1,", "m1, weight: yes,"))
    )


def test_duplicate_yaml_keys_are_errors() -> None:
    found = problems(GOOD + "uplink: up1\n")
    assert any("duplicate key 'uplink'" in p for p in found)


def test_not_yaml_and_not_a_mapping() -> None:
    assert problems("cluster: [")[0].startswith("spec: not valid YAML/JSON")
    assert problems("- 1\n- 2\n") == ["spec: must be a mapping of fields"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "absent.yaml")
    assert "cannot read" in info.value.problems[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "web.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError) as info:
        load_spec(fifo)  # a plain open() would wait for a writer forever
    assert info.value.problems == [f"spec: {fifo} is not a regular file"]


def test_a_directory_and_a_device_are_refused(tmp_path: Path) -> None:
    for path in (tmp_path, Path("/dev/zero")):
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert (
            "not a regular file" in info.value.problems[0]
            or "cannot read" in (info.value.problems[0])
        )


def test_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_bytes(b"cluster: web\n# caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems == ["spec: not UTF-8 text (byte 0xe9 at offset 18)"]
    assert info.value.exit_code == 78


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text("#" * 100)
    assert read_spec_file(path, limit=100) == "#" * 100
    with pytest.raises(SpecError) as info:
        read_spec_file(path, limit=99)
    assert "larger than 99 bytes" in info.value.problems[0]
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(MAX_SPEC_BYTES + 1)  # sparse: the size check comes before any read
    with pytest.raises(SpecError):
        load_spec(big)


def test_deep_nesting_is_a_spec_error() -> None:
    assert problems("[" * 100_000)[0] == "spec: nested deeper than 32 levels"
    with pytest.raises(SpecError):
        load_text("[" * 100_000, "web.json")

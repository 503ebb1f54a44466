"""A strict spec. One test per defect the probe found (each failed on the code
before the fix): lax coercion, YAML 1.1 readings, duplicate keys, files the loader must
refuse with one line and exit 78, and addresses that make no sense for their role."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_spec import GOOD
from vipctl.core.spec import load_spec, load_text
from vipctl.errors import SpecError


def problems(text: str, source: str = "spec.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_text(text, source)
    assert info.value.exit_code == 78
    assert info.value.problems
    return info.value.problems


def with_line(line: str) -> str:
    key = line.split(":", 1)[0]
    kept = [ln for ln in GOOD.splitlines() if not ln.startswith(f"{key}:")]
    return "\n".join([*kept, line]) + "\n"


# -- lax coercion -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("vips: [true]", "vips.0"),  # was VIP 0.0.0.1
        ("vips: [7]", "vips.0"),  # was 0.0.0.7
        ("vips: [3325256957]", "vips.0"),
        ("partition: {bits: true}", "partition.bits"),  # was 1 bit
        ("partition: {bits: ' 8 '}", "partition.bits"),
        ("partition: {bits: '8'}", "partition.bits"),
        ("partition: {bits: '\u0668'}", "partition.bits"),  # ARABIC-INDIC DIGIT EIGHT
        ("partition: {bits: !!str 8}", "partition.bits"),
        ("partition: {bits: !!float 8}", "partition.bits"),
        ("partition: {bits: 8.0}", "partition.bits"),
        ("partition: {seed: ' 0x10'}", "partition.seed"),
        ("partition: {seed: '1_0'}", "partition.seed"),
        ("partition: {seed: true}", "partition.seed"),
        ("pinning: {max_flows: true}", "pinning.max_flows"),  # was 1
        ("pinning: {idle_timeout_s: '60'}", "pinning.idle_timeout_s"),
        ("pinning: {enabled: 1}", "pinning"),  # "pinning: enabled: must be true or false"
        ("health: {rise: 2.0}", "health.rise"),
        ("health: {probe: {kind: tcp, port: '80'}}", "health.probe.port"),
        ("announce_vips: 'true'", "announce_vips"),
        ("uplink: 5", "uplink"),
        ("cluster: !!binary d2Vi", "cluster"),
    ],
)
def test_no_lax_coercion(line: str, path: str) -> None:
    found = problems(with_line(line))
    # the field named, or (a tag the 1.2 core schema does not know) the spec as a whole
    assert any(p.startswith((f"{path}:", "spec: ")) for p in found), found


@pytest.mark.parametrize("weight", ["' 2 '", "'2'", "true", ".nan", ".inf", "'\u0662'"])
def test_weight_is_a_plain_number(weight: str) -> None:
    found = problems(GOOD.replace("weight: 2}", f"weight: {weight}}}"))
    assert any(p.startswith("members.1.weight:") for p in found), found


def test_numbers_that_are_numbers_still_work() -> None:
    spec = load_text(
        GOOD.replace("weight: 2}", "weight: 1.5e0}")
        + "partition: {bits: 010, seed: 0x5eed}\npinning: {max_flows: 0o10}\n"
    )
    # YAML 1.2: 010 is decimal ten (not octal 8), 0o10 is octal
    assert (spec.partition.bits, spec.partition.seed, spec.pinning.max_flows) == (10, 0x5EED, 8)
    assert spec.member("web2").exact_weight == 1.5


def test_weight_that_underflows_to_zero_is_refused() -> None:
    # 1e-400 is not zero, but as a float it is: the member would be drained silently
    found = problems(GOOD.replace("weight: 2}", "weight: 1e-400}"))
    assert any(p.startswith("members.1.weight: ") and "1e-400" in p for p in found), found


# -- YAML 1.2 core schema -------------------------------------------------------------------


def test_unquoted_ipv6_is_an_address_not_a_base60_number() -> None:
    spec = load_text(
        GOOD.replace("vips: [198.51.100.253]", "vips: [198.51.100.253, 1:2:3:4:5:6:7:8]")
        + "  - {name: web3, port: m3, address: 1:2:3:4:5:6:7:9}\n"
    )
    assert str(spec.vips[1]) == "1:2:3:4:5:6:7:8"  # was ::2a2:ee3:68cc
    assert str(spec.member("web3").address) == "1:2:3:4:5:6:7:9"


def test_unquoted_mac_is_a_string() -> None:
    spec = load_text(
        GOOD.replace("address: 198.51.100.10}", "address: 198.51.100.10, mac: 52:54:00:12:34:56}")
    )
    assert spec.member("web1").mac == "52:54:00:12:34:56"
    spec = load_text(
        GOOD.replace("address: 198.51.100.10}", "address: 198.51.100.10, mac: 12:34:56:12:34:56}")
    )  # all digits: base 60 in 1.1
    assert spec.member("web1").mac == "12:34:56:12:34:56"


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "ON"])
def test_only_true_and_false_are_booleans(word: str) -> None:
    found = problems(with_line(f"announce_vips: {word}"))
    assert any(p.startswith("announce_vips:") for p in found), found
    assert load_text(with_line("announce_vips: true")).announce_vips is True
    assert load_text(with_line("announce_vips: False")).announce_vips is False


def test_yaml_merge_keys_and_timestamps_are_not_special() -> None:
    found = problems(GOOD + "health: {<<: {rise: 3}}\n")
    assert any(p.startswith("health.'<<':") for p in found), found
    found = problems(with_line("cluster: 2001-12-14"))
    assert any(p.startswith("cluster:") for p in found), found


# -- duplicate keys ----------------------------------------------------------------------------


def test_json_duplicate_key_is_refused() -> None:
    text = (
        '{"cluster": "web", "cluster": "evil", "vips": ["198.51.100.253"], "uplink": "up0",'
        ' "members": [{"name": "a", "port": "m1", "address": "198.51.100.2"}]}'
    )
    found = problems(text, "spec.json")
    assert found == ["cluster: duplicate key 'cluster'"], found
    # nested too
    nested = text.replace('"cluster": "evil", ', "")
    nested = nested.replace('"name": "a"', '"name": "a", "name": "b"')
    assert problems(nested, "spec.json") == ["members.0.name: duplicate key 'name'"]


def test_yaml_duplicate_key_is_refused_at_every_level() -> None:
    found = problems(GOOD + "partition: {bits: 4, bits: 5}\n")
    assert len(found) == 1 and "duplicate key 'bits'" in found[0], found


# -- files the loader refuses in one line --------------------------------------------------------


def one_problem(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.problems) == 1, info.value.problems
    assert "\n" not in info.value.problems[0]
    return info.value.problems[0]


def test_invalid_utf8_and_binary(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(GOOD.encode().replace(b"web1", b"web\xff1"))
    assert "not UTF-8" in one_problem(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    one_problem(binary)
    nul = tmp_path / "nul.json"
    nul.write_bytes(b'{"cluster": "w\x00eb"}')
    one_problem(nul)


def test_huge_integer(tmp_path: Path) -> None:
    for name in ("big.yaml", "big.json"):
        path = tmp_path / name
        path.write_text('{"partition": {"bits": ' + "9" * 5000 + "}}")
        assert "too long" in one_problem(path)


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json"])
def test_deep_nesting(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"cluster": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nested" in one_problem(path)
    block = tmp_path / "block.yaml"
    block.write_text("".join(" " * i + "-\n" for i in range(200)))
    assert "nested" in one_problem(block)


def test_complex_and_non_string_keys(tmp_path: Path) -> None:
    path = tmp_path / "complex.yaml"
    path.write_text(GOOD + "? [a, b]\n: 1\n")
    assert "key" in one_problem(path)
    path.write_text(GOOD + "? {a: 1}\n: 1\n")
    assert "key" in one_problem(path)


def test_devices_are_not_specs(tmp_path: Path) -> None:
    assert "not a regular file" in one_problem(Path("/dev/zero"))
    assert "not a regular file" in one_problem(tmp_path)


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(one_problem(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "w"):
            pass
        pytest.fail("loading a FIFO blocked")
    assert "not a regular file" in out[0]


def test_huge_file_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as fh:
        fh.write(GOOD)
        fh.write(("# " + "x" * 1000 + "\n") * 50_000)  # 50 MB
    started = time.monotonic()
    assert "larger than" in one_problem(path)
    assert time.monotonic() - started < 1


def test_billion_laughs(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("cluster: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.process_time()
    assert "aliases" in one_problem(path)
    assert time.process_time() - started < 1


def test_a_few_aliases_are_fine() -> None:
    spec = load_text(GOOD + "partition: {bits: &b 4, seed: *b}\n")
    assert (spec.partition.bits, spec.partition.seed) == (4, 4)


# -- addresses that make sense for their role --------------------------------------------------


@pytest.mark.parametrize(
    ("vip", "path"),
    [
        ('"fe80::1%eth0"', "vips.0"),
        ("'fe80::1%\"; flush ruleset; \"'", "vips.0"),
        ("'fe80::1%{x}'", "vips.0"),
        ("'fe80::1%a\\nb'", "vips.0"),
        ("'255.255.255.255'", "vips.0"),
    ],
)
def test_vip_without_scope_id(vip: str, path: str) -> None:
    text = GOOD.replace("vips: [198.51.100.253]", f"vips: [198.51.100.253, {vip}]")
    found = problems(text)
    assert any(p.startswith("vips.1:") or p.startswith("vips:") for p in found), found


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("address: 0.0.0.0", "members.0.address:"),
        ("address: 224.0.0.5", "members.0.address:"),
        ("address: 255.255.255.255", "members.0.address:"),
        ("address: 198.51.100.253", "members.0.address: 198.51.100.253 is a VIP"),
        ("address: 'fe80::1%m1'", "members.0.address:"),
        ("address: 198.51.100.10, mac: 'ff:ff:ff:ff:ff:ff'", "members.0.mac:"),
        ("address: 198.51.100.10, mac: '01:00:5e:00:00:01'", "members.0.mac:"),
        ("address: 198.51.100.10, mac: '00:00:00:00:00:00'", "members.0.mac:"),
    ],
)
def test_member_address_for_its_role(member: str, expected: str) -> None:
    found = problems(GOOD.replace("address: 198.51.100.10", member))
    assert any(p.startswith(expected) for p in found), found


def test_port_lo_is_refused() -> None:
    found = problems(GOOD.replace("port: m1", "port: lo"))
    assert any(p.startswith("members.0.port:") for p in found), found
    found = problems(with_line("uplink: lo"))
    assert any(p.startswith("uplink:") for p in found), found
    for name in ("all", "default"):  # the kernel refuses these interface names
        found = problems(GOOD.replace("port: m1", f"port: {name}"))
        assert any(p.startswith("members.0.port:") for p in found), found


@pytest.mark.parametrize("path", ["'/x\\r\\nHost: evil'", "'/a b'", "'/\\u00e9'", "'/x\\0'"])
def test_http_path_is_one_clean_request_target(path: str) -> None:
    found = problems(GOOD + f'health: {{probe: {{kind: http, path: "{path[1:-1]}"}}}}\n')
    assert any(p.startswith("health.probe.path:") for p in found), found


def test_broadcast_member_limit_is_the_kernels() -> None:
    def spec(n: int, mode: str) -> str:
        rows = [
            f"  - {{name: w{i}, port: m{i}, address: 10.0.{i // 250}.{i % 250 + 1}}}"
            for i in range(n)
        ]
        return f"cluster: web\nvips: [198.51.100.253]\nuplink: up0\nmode: {mode}\nmembers:\n" + (
            "\n".join(rows) + "\n"
        )

    assert len(load_text(spec(62, "broadcast")).members) == 62
    found = problems(spec(63, "broadcast"))  # validated, and the kernel refused it
    assert any(p.startswith("members:") and "at most 62" in p for p in found), found
    assert len(load_text(spec(200, "steer")).members) == 200


@pytest.mark.parametrize(
    "bad", ['/a"b', "/{}", "/a\\\\b", "/`id`", "/a<b>", "/a^b", "/a|b", "/a#frag", "/%zz", "/%4"]
)
def test_http_path_is_rfc3986_characters(bad: str) -> None:
    """`"{}\\` and a backtick were accepted (printable ASCII was the rule)."""
    found = problems(GOOD + f"health: {{probe: {{kind: http, path: '{bad}'}}}}\n")
    assert len(found) == 1 and found[0].startswith("health.probe.path: "), found
    assert "RFC 3986" in found[0] and "pattern" not in found[0], found


@pytest.mark.parametrize(
    "good", ["/", "/healthz", "/a/b?x=1&y=%22q%22", "/~u/a-b_c.d!$'()*+,;=:@", "/" + "a" * 1023]
)
def test_http_paths_that_are_fine(good: str) -> None:
    spec = load_text(GOOD + f'health: {{probe: {{kind: http, path: "{good}"}}}}\n')
    assert spec.health.probe.path == good  # type: ignore[union-attr]


def test_an_http_path_has_at_most_1024_characters() -> None:
    found = problems(GOOD + f"health: {{probe: {{kind: http, path: '/{'a' * 1024}'}}}}\n")
    assert found and "1024" in found[0], found


JSON_GOOD = (
    '{"cluster": "web", "vips": ["198.51.100.253"], "uplink": "up0", "members": '
    '[{"name": "web1", "port": "m1", "address": "198.51.100.10", "weight": W}], '
    '"partition": {"bits": B}}'
)


@pytest.mark.parametrize(
    ("text", "source", "line"),
    [
        # issue 28: `spec: NaN is not a JSON number` and 59 more named no field
        (JSON_GOOD.replace("W", "NaN").replace("B", "8"), "s.json",
         "members.0.weight: NaN is not a JSON number"),
        (JSON_GOOD.replace("W", "-Infinity").replace("B", "8"), "s.json",
         "members.0.weight: -Infinity is not a JSON number"),
        (JSON_GOOD.replace("W", "1").replace("B", "9" * 80), "s.json",
         "partition.bits: a number 80 characters long is too long"),
        (JSON_GOOD.replace("W", "1e-400").replace("B", "8"), "s.json",
         "members.0.weight: 1e-400 is too small to be told apart from 0"),
        (JSON_GOOD.replace("W", "1").replace("B", '8, "bits": 9'), "s.json",
         "partition.bits: duplicate key 'bits'"),
        (GOOD + "partition: {bits: !!int x}\n", "s.yaml", "partition.bits: 'x' is not an integer"),
        (GOOD + "announce_vips: !!bool yes\n", "s.yaml",
         "announce_vips: 'yes' is not true or false"),
        (GOOD + "partition: {bits: 8, bits: 9}\n", "s.yaml",
         "partition.bits: duplicate key 'bits' (line 8)"),
        (GOOD + "health: {7: x}\n", "s.yaml", "health.7: a mapping key must be a string, not 7"),
        (GOOD.replace("weight: 2", "weight: 1e-999"), "s.yaml",
         "members.1.weight: 1e-999 is too small to be told apart from 0"),
    ],
)  # fmt: skip
def test_loader_messages_name_their_field(text: str, source: str, line: str) -> None:
    assert problems(text, source) == [line]


def test_every_loader_problem_is_reported_with_its_path() -> None:
    text = JSON_GOOD.replace("W", "NaN").replace("B", "Infinity")
    assert problems(text, "s.json") == [
        "members.0.weight: NaN is not a JSON number",
        "partition.bits: Infinity is not a JSON number",
    ]


BGP = "bgp: {asn: 65001, peers: [{address: 203.0.113.254, asn: 65000}], router_id: RID}\n"


def test_bgp_router_id_is_an_ipv4_address_as_text() -> None:
    """Found by the spec fuzz (issue 28): every router_id was refused ('Input should be
    an instance of IPv4Address'), the strict model took no string."""
    spec = load_text(GOOD + BGP.replace("RID", "192.0.2.1"))
    assert spec.bgp is not None and str(spec.bgp.router_id) == "192.0.2.1"
    assert spec.model_dump(mode="json")["bgp"]["router_id"] == "192.0.2.1"
    for bad, why in [("'2001:db8::1'", "IPv4 address"), ("7", "string"), ("'1.2.3.4%x'", "scope")]:
        found = problems(GOOD + BGP.replace("RID", bad))
        assert len(found) == 1 and found[0].startswith("bgp.router_id: ") and why in found[0]


@pytest.mark.parametrize("tag", ["!!binary AAAA", "!custom x", "!!timestamp 2001-01-01"])
def test_a_yaml_tag_is_refused_with_its_path(tag: str) -> None:
    found = problems(GOOD + f"partition: {{bits: {tag}}}\n")
    assert len(found) == 1 and found[0].startswith("partition.bits: the tag "), found

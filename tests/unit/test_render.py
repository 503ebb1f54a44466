"""Golden rulesets: examples/*.yaml rendered with fixed wiring, compared exactly.

Regenerate after a reviewed change with `VIPCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`
and read the diff of rulesets/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vipctl.plan import desired
from vipctl.render.nft import Observed, Wiring, build_table, render_table, transaction
from vipctl.spec import Spec, load_spec, load_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def fake_wiring(spec: Spec) -> Wiring:
    ifindex = {spec.uplink: 2}
    ifindex.update({m.port: 10 + i for i, m in enumerate(spec.members)})
    macs = {m.name: f"02:00:00:00:{i + 1:02x}:02" for i, m in enumerate(spec.members)}
    return Wiring(ifindex=ifindex, macs=macs)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_ruleset(example: Path) -> None:
    spec = load_spec(example)
    text = render_table(build_table(spec, desired(spec, None), fake_wiring(spec), 1))
    golden = ROOT / "rulesets" / f"{example.stem}.nft"
    if os.environ.get("VIPCTL_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with VIPCTL_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 4


SPEC = """
cluster: t
vips: [198.51.100.253, "2001:db8:f::253"]
uplink: up0
mode: {mode}
partition: {{key: {key}, bits: 3}}
members:
  - {{name: a, port: m1, address: 198.51.100.10}}
  - {{name: b, port: m2, address: 198.51.100.18, weight: 3}}
"""


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
@pytest.mark.parametrize("key", ["mask", "hash"])
@pytest.mark.parametrize("pinning", [True, False])
def test_one_decision_per_packet_at_ingress(mode: str, key: str, pinning: bool) -> None:
    text = SPEC.format(mode=mode, key=key) + f"pinning: {{enabled: {str(pinning).lower()}}}\n"
    spec = load_text(text)
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 7)
    ingress = table.chains[0]
    assert ingress.hook is not None and 'hook ingress device "up0"' in ingress.hook
    assert ingress.rules == (
        'ip daddr @vips4 jump vip4 comment "vipctl generation 7"',
        "ip6 daddr @vips6 jump vip6",
    )
    for family in (4, 6):
        chain = next(c for c in table.chains if c.name == f"vip{family}")
        # exactly one bucket-table lookup per packet, in one rule
        lookups = [r for r in chain.rules if "map @buckets" in r]
        assert len(lookups) == 1  # exactly one bucket-table decision per packet
        if key == "mask":
            ip, mask = ("ip", "0.0.0.7") if family == 4 else ("ip6", "::7")
            assert lookups[0] == f"meta mark set {ip} saddr & {mask} map @buckets{family}_m3"
        deliver = chain.rules[-2]
        if mode == "broadcast":
            assert deliver == 'meta mark != 0 dup to "m1" dup to "m2" drop'
        else:
            assert deliver == "meta mark != 0 fwd to meta mark map @ports"
        # a bucket with no owner is dropped, never routed
        assert chain.rules[-1] == "drop"
        pins = [r for r in chain.rules if "@pin" in r]
        assert len(pins) == (3 if pinning else 0)
        if pinning:
            # fast path: a pin of a live member refreshes and delivers in one rule
            fast = next(r for r in chain.rules if r.startswith("meta mark @alive update @pin"))
            assert fast.endswith(deliver.removeprefix("meta mark != 0 "))
            # the mark is cleared before the bucket lookup: a stale pin never delivers
            i = chain.rules.index(lookups[0])
            assert chain.rules[i - 1] == "meta mark set 0"
            # the new-flow pin update is its own rule: a full pin map cannot stop delivery
            update = chain.rules[i + 1]
            assert " update @pin" in update and "fwd" not in update and "dup" not in update
    owners = [s for s in table.sets if s.name.startswith("buckets")]
    # interval maps of runs: a (2 buckets) and b (6 buckets) are one run each
    assert [len(s.elements) for s in owners] == [2, 2]
    assert "flags interval" in owners[0].decl
    pin_maps = [s for s in table.sets if s.name.startswith("pin")]
    assert len(pin_maps) == (2 if pinning else 0)
    assert all(s.dynamic and not s.elements for s in pin_maps)


def test_alive_set_holds_ports_of_members_up() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    table = build_table(spec, desired(spec, None, down={"a"}), fake_wiring(spec), 1)
    alive = next(s for s in table.sets if s.name == "alive")
    assert alive.elements == ("11",)
    ports = next(s for s in table.sets if s.name == "ports")
    assert ports.elements == ('10 : "m1"', '11 : "m2"')


def test_pin_maps_are_never_flushed_by_a_swap() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 2)
    observed = Observed(
        sets=frozenset({"vips4", "vips6", "alive"}),
        maps=frozenset(
            {"buckets4_m3", "buckets6_m3", "ports", "pin4_t600_n1048576", "pin6_t600_n1048576"}
        ),
        chains=frozenset({"in_up0", "vip4", "vip6", "out_m1", "out_m2"}),
        exists=True,
    )
    batch = transaction(table, observed)
    assert "pin4" in batch and "flush map netdev vipctl_t pin4" not in batch
    assert "delete map netdev vipctl_t pin" not in batch


def test_egress_filters_by_port_ifindex_and_rewrites_mac() -> None:
    spec = load_text(SPEC.format(mode="broadcast", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 1)
    out_m2 = next(c for c in table.chains if c.name == "out_m2")
    assert "ip daddr @vips4 meta mark != 11 drop" in out_m2.rules
    assert 'ip daddr @vips4 counter name "c_b" ether daddr set 02:00:00:00:02:02' in out_m2.rules


def test_nobody_up_means_empty_maps_and_drop() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    layout = desired(spec, None, down={"a", "b"})
    table = build_table(spec, layout, fake_wiring(spec), 1)
    assert all(not s.elements for s in table.sets if s.name.startswith(("buckets", "alive")))


def test_transaction_flushes_instead_of_recreating_and_deletes_stale() -> None:
    spec = load_text(SPEC.format(mode="broadcast", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 2)
    observed = Observed(
        sets=frozenset({"vips4", "vips6"}),
        maps=frozenset({"buckets4_h3_5eed", "buckets4_m3"}),
        counters=frozenset({"c_a", "c_gone"}),
        chains=frozenset({"in_up0", "out_m1", "out_m9"}),
        exists=True,
    )
    batch = transaction(table, observed).splitlines()
    assert batch[0] == "add table netdev vipctl_t"
    assert "flush chain netdev vipctl_t in_up0" in batch
    assert "delete map netdev vipctl_t buckets4_m3" not in batch
    assert not any(line.startswith("delete chain netdev vipctl_t in_up0") for line in batch)
    assert "delete chain netdev vipctl_t out_m9" in batch
    assert "delete map netdev vipctl_t buckets4_h3_5eed" in batch
    assert "delete counter netdev vipctl_t c_gone" in batch
    assert "flush map netdev vipctl_t buckets4_m3" in batch  # interval maps: replaced whole
    # rules are added after every flush, deletions of stale objects come last
    last_rule = max(i for i, line in enumerate(batch) if line.startswith("add rule"))
    first_flush = min(i for i, line in enumerate(batch) if line.startswith("flush"))
    first_delete = min(i for i, line in enumerate(batch) if line.startswith("delete"))
    assert first_flush < last_rule < first_delete

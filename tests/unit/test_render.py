"""Golden rulesets: examples/*.yaml rendered with fixed wiring, compared exactly.

Per example, four files in rulesets/:
- <example>.nft: the table (`render_table`, what `apply --dry-run` prints);
- <example>.moving.nft: the same table while one bucket records and one moves;
- <example>.batch.nft: the batch sent to libnftables for the first install
  (`transaction(table, Observed())`);
- <example>.update.batch.nft: the batch that replaces that first table (generation 1) when
  the spec's last member has been removed (generation 2, the layout rebalanced from the
  first one): flush and refill of every chain and of the bucket and deliver maps, pin maps
  untouched, deletes of the removed member's chains and counter at the end.

Regenerate after a reviewed change with `VIPCTL_UPDATE_GOLDEN=1 pytest tests/unit` (see
tests/unit/goldens.py) and read the diff of rulesets/.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.unit import goldens
from vipctl.core.plan import desired
from vipctl.core.spec import Spec, load_spec, load_text, parse_spec
from vipctl.core.transition import Move
from vipctl.render.nft import NftTable, Observed, build_table, render_table, transaction
from vipctl.render.wiring import Wiring

ROOT = goldens.ROOT
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def fake_wiring(spec: Spec) -> Wiring:
    ifindex = {spec.uplink: 2}
    ifindex.update({m.port: 10 + i for i, m in enumerate(spec.members)})
    macs = {m.name: f"02:00:00:00:{i + 1:02x}:02" for i, m in enumerate(spec.members)}
    return Wiring(ifindex=ifindex, macs=macs)


def observed_of(table: NftTable) -> Observed:
    """What vipctl observes of `table` once it is live (names only, as the backend reads)."""
    return Observed(
        sets=frozenset(s.name for s in table.sets if s.kind == "set"),
        maps=frozenset(s.name for s in table.sets if s.kind == "map"),
        counters=frozenset(table.counters),
        chains=frozenset(c.name for c in table.chains),
        exists=True,
    )


def first_table(example: Path) -> NftTable:
    spec = load_spec(example)
    return build_table(spec, desired(spec, None), fake_wiring(spec), 1)


def update_batch(example: Path) -> str:
    """Generation 1 (every member) is live; generation 2 is the spec without its last
    member, the layout computed from generation 1's (least movement)."""
    spec = load_spec(example)
    layout = desired(spec, None)
    old = build_table(spec, layout, fake_wiring(spec), 1)
    data = spec.model_dump(mode="json")
    data["members"] = data["members"][:-1]
    smaller = parse_spec(data)
    new = build_table(smaller, desired(smaller, layout), fake_wiring(smaller), 2)
    return transaction(new, observed_of(old))


def table_text(example: Path) -> str:
    return render_table(first_table(example))


def moving_text(example: Path) -> str:
    """The table while the first member's first bucket records (the record step) and the
    last member's last bucket moves to the first member."""
    spec = load_spec(example)
    layout = desired(spec, None)
    first, last = spec.members[0].name, spec.members[-1].name
    table = layout.table
    lo = table.index(first)
    hi = len(table) - 1 - table[::-1].index(last)
    moving = {lo: Move(first, last, 0.0, "record"), hi: Move(last, first, 0.0, "move")}
    return render_table(build_table(spec, layout, fake_wiring(spec), 3, moving))


def install_batch(example: Path) -> str:
    """The first install: nothing of the table is live yet."""
    return transaction(first_table(example), Observed())


GOLDENS: goldens.Goldens = {}
for _example in EXAMPLES:
    GOLDENS[f"{_example.stem}.nft"] = partial(table_text, _example)
    GOLDENS[f"{_example.stem}.moving.nft"] = partial(moving_text, _example)
    GOLDENS[f"{_example.stem}.batch.nft"] = partial(install_batch, _example)
    GOLDENS[f"{_example.stem}.update.batch.nft"] = partial(update_batch, _example)


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden(name: str) -> None:
    goldens.check(name, GOLDENS[name]())


def test_update_batch_keeps_pins_and_hooks_and_deletes_the_removed_member() -> None:
    """What the reviewed update goldens show, asserted for every example."""
    for example in EXAMPLES:
        spec = load_spec(example)
        old = first_table(example)
        batch = update_batch(example).splitlines()
        ref = old.ref
        gone = spec.members[-1]
        # base chains are flushed and refilled, never deleted: their hooks stay registered
        for chain in old.chains:
            if chain.hook and chain.name != f"out_{gone.port}":
                assert f"flush chain {ref} {chain.name}" in batch
                assert not any(
                    line.startswith(f"delete chain {ref} {chain.name}") for line in batch
                )
        # pin maps: declared (a no-op for a live map), never flushed, never deleted
        pins = [s.name for s in old.sets if s.dynamic]
        assert pins  # pinning (moving) is on by default: its flow maps are declared
        for name in pins:
            assert f"flush map {ref} {name}" not in batch
            assert f"delete map {ref} {name}" not in batch
            assert not any(line.startswith(f"add element {ref} {name} ") for line in batch)
        deletes = [line for line in batch if line.startswith("delete")]
        want = {f"delete chain {ref} to{f}_{gone.name}" for f in spec.vip_families}
        want.add(f"delete counter {ref} c_{gone.name}")
        if spec.mode == "broadcast":
            want.add(f"delete chain {ref} out_{gone.port}")
        assert set(deletes) == want
        # every deletion comes after the last rule that could refer to the object
        last_add = max(i for i, line in enumerate(batch) if line.startswith("add"))
        assert all(batch.index(line) > last_add for line in deletes)


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


def build(
    spec: Spec, *, down: set[str] | None = None, moving: Any = None, gen: int = 7
) -> NftTable:
    return build_table(spec, desired(spec, None, down=down), fake_wiring(spec), gen, moving)


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
@pytest.mark.parametrize("key", ["mask", "hash"])
@pytest.mark.parametrize("pinning", ["moving", "off"])
def test_one_lookup_per_packet_in_steady_state(mode: str, key: str, pinning: str) -> None:
    """No per-flow state is read or written in steady state: one lookup in the uplink's
    base chain, bucket -> `goto` the owner's chain, which catches ICMP errors and delivers."""
    spec = load_text(SPEC.format(mode=mode, key=key) + f'pinning: {{mode: "{pinning}"}}\n')
    table = build(spec)
    ingress = table.chains[0]
    assert ingress.hook is not None and 'hook ingress device "up0"' in ingress.hook
    if key == "mask":
        k4, k6 = "ip saddr & 0.0.0.7 vmap @owners4_m3", "ip6 saddr & ::7 vmap @owners6_m3"
    else:
        k4 = "jhash ip saddr mod 8 seed 0x5eed vmap @owners4_h3_5eed"
        k6 = "jhash ip6 saddr mod 8 seed 0x5eed vmap @owners6_h3_5eed"
    # only frames addressed to this router (invariant 11): a flooded frame is not taken
    assert ingress.rules == (
        f'meta pkttype host ip daddr 198.51.100.253 {k4} comment "vipctl generation 7"',
        # a bucket with no owner is dropped, never routed
        "meta pkttype host ip daddr 198.51.100.253 drop",
        f"meta pkttype host ip6 daddr 2001:db8:f::253 {k6}",
        "meta pkttype host ip6 daddr 2001:db8:f::253 drop",
    )
    assert not [c for c in table.chains if c.name.startswith("vip")]  # no jump
    for family in (4, 6):
        for member, port, mark in (("a", "m1", 10), ("b", "m2", 11)):
            to = next(c for c in table.chains if c.name == f"to{family}_{member}")
            assert len(to.rules) == 2 and not any("@flows" in r for r in to.rules)
            # ICMP errors about a flow: copied to every member (one protocol compare)
            assert to.rules[0].endswith(f"goto icmp{family}")
            if mode == "broadcast":
                assert to.rules[1] == f'meta mark set {mark} dup to "m1" dup to "m2" drop'
            else:
                assert to.rules[1].endswith(f'fwd to "{port}"')
                assert 'counter name "c_' in to.rules[1] and "ether daddr set" in to.rules[1]
    owners = [s for s in table.sets if s.name.startswith("owners")]
    # up to 2**12 buckets: one element per bucket (a hash lookup), a: 2 buckets, b: 6
    assert [len(s.elements) for s in owners] == [8, 8]
    assert all(e.split(" : ")[1].startswith("goto to") for s in owners for e in s.elements)
    assert owners[0].decl == ("typeof ip saddr : verdict",) or key == "hash"
    flows = [s for s in table.sets if s.name.startswith("flows")]
    assert len(flows) == (2 if pinning == "moving" else 0)
    assert all(s.dynamic and not s.elements for s in flows)
    assert not [c for c in table.chains if c.name.startswith(("mv", "rec"))]
    # steer needs no egress hook; broadcast filters its copies there
    egress = [c for c in table.chains if c.hook and "hook egress" in c.hook]
    assert len(egress) == (2 if mode == "broadcast" else 0)


def test_large_tables_are_interval_maps_of_runs() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask").replace("bits: 3", "bits: 16"))
    owners = next(s for s in build(spec).sets if s.name == "owners4_m16")
    assert "flags interval" in owners.decl and len(owners.elements) == 2


def test_buckets_in_transition_get_chains_of_their_own() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    table = build(spec, moving={0: Move("b", "a", 0.0, "move"), 1: Move("a", "b", 0.0, "record")})
    owners = next(s for s in table.sets if s.name == "owners4_m3")
    assert owners.elements[:2] == ("0.0.0.0 : goto mv4_11_10", "0.0.0.1 : goto rec4_a")
    rec = next(c for c in table.chains if c.name == "rec4_a")
    assert rec.rules == (
        "icmp type destination-unreachable goto icmp4",
        "meta l4proto udp update @flows4_t600_n1048576_k12 { ip saddr . ip daddr . @th,0,32 : 10 }",
        "goto to4_a",
    )
    mv = next(c for c in table.chains if c.name == "mv4_11_10").rules
    flows = "@flows4_t600_n1048576_k12"
    key = "ip saddr . ip daddr . @th,0,32"
    assert mv == (
        "icmp type destination-unreachable goto icmp4",
        "ip ttl set 1",  # the second chance's marker
        f"meta mark set {key} map {flows}",
        f"meta mark != 0 update {flows} {{ {key} : meta mark }}",
        "meta mark vmap @deliver4",
        f"meta mark != 0 delete {flows} {{ {key} : 0 }}",
        f"tcp flags & (syn | ack) == syn update {flows} {{ {key} : 10 }}",
        "tcp flags & (syn | ack) == syn goto to4_a",
        f"meta l4proto tcp update {flows} {{ {key} : 11 }} goto to4_b",
        "goto to4_a",
    )
    deliver = next(s for s in table.sets if s.name == "deliver4")
    assert deliver.elements == ("10 : goto to4_a", "11 : goto to4_b")


def test_icmp_errors_are_copied_to_every_member_up() -> None:
    for mode, want in (
        ("steer", ('ether daddr set 02:00:00:00:02:02 fwd to "m2"',)),
        ("broadcast", ('meta mark set 11 dup to "m2" drop',)),
    ):
        spec = load_text(SPEC.format(mode=mode, key="mask"))
        icmp4 = next(c for c in build(spec, down={"a"}).chains if c.name == "icmp4")
        assert icmp4.rules == want
        both = next(c for c in build(spec).chains if c.name == "icmp6")
        assert len(both.rules) == 2 and "m1" in both.rules[0] and "m2" in both.rules[1]
        to6 = next(c for c in build(spec).chains if c.name == "to6_a")
        assert to6.rules[0] == (
            "icmpv6 type { destination-unreachable, packet-too-big } goto icmp6"
        )


def test_pinning_always_pins_every_flow() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask") + "pinning: {mode: always}\n")
    table = build(spec)
    vip4 = next(c for c in table.chains if c.name == "vip4")
    assert vip4.rules[1].startswith("meta mark set ") and " map @pin4" in vip4.rules[1]
    assert vip4.rules[1].endswith("meta mark vmap @deliver4")
    assert vip4.rules[2].startswith("meta mark != 0 delete @pin4")
    assert "map @buckets4_m3 meta mark vmap @deliver4" in vip4.rules[3]
    to = next(c for c in table.chains if c.name == "to4_a")
    # the refresh is its own rule: a full pin map cannot stop delivery
    assert " update @pin4" in to.rules[0] and "fwd" not in to.rules[0]
    # the jump takes only frames addressed to this router (invariant 11)
    assert table.chains[0].rules == (
        'meta pkttype host ip daddr 198.51.100.253 jump vip4 comment "vipctl generation 7"',
        "meta pkttype host ip6 daddr 2001:db8:f::253 jump vip6",
    )


def test_deliver_maps_hold_members_up_only() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask") + "pinning: {mode: always}\n")
    table = build(spec, down={"a"})
    for family in (4, 6):
        deliver = next(s for s in table.sets if s.name == f"deliver{family}")
        assert deliver.elements == (f"11 : goto to{family}_b",)
    # the member that is down keeps its chain (its pins stay until they are met)
    assert {c.name for c in table.chains} >= {"to4_a", "to4_b", "to6_a", "to6_b"}


def test_flow_maps_are_never_flushed_by_a_swap() -> None:
    for pinning, name in (("always", "pin"), ("moving", "flows")):
        spec = load_text(SPEC.format(mode="steer", key="mask") + f"pinning: {{mode: {pinning}}}\n")
        table = build(spec, gen=2)
        f4, f6 = f"{name}4_t600_n1048576_k12", f"{name}6_t600_n1048576_k12"
        observed = Observed(
            maps=frozenset({"owners4_m3", "owners6_m3", f4, f6}),
            chains=frozenset({"in_up0", "vip4", "vip6", "to4_a", "to4_b", "to6_a", "to6_b"}),
            exists=True,
        )
        batch = transaction(table, observed)
        assert f4 in batch and f"flush map netdev vipctl_t {f4}" not in batch
        assert f"delete map netdev vipctl_t {name}" not in batch


def test_upgrade_from_the_mark_map_layout_deletes_the_old_objects() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 2)
    observed = Observed(
        sets=frozenset({"vips4", "vips6", "alive"}),
        maps=frozenset({"buckets4_m3", "deliver4", "ports", "pin4_t600_n1048576"}),
        chains=frozenset({"in_up0", "vip4", "vip6", "out_m1", "out_m2"}),
        exists=True,
    )
    batch = transaction(table, observed).splitlines()
    for line in (
        "delete set netdev vipctl_t alive",
        "delete set netdev vipctl_t vips4",
        "delete map netdev vipctl_t ports",
        "delete map netdev vipctl_t pin4_t600_n1048576",
        "delete map netdev vipctl_t buckets4_m3",  # the mark map of pinning: always
        "delete map netdev vipctl_t deliver4",
        "delete chain netdev vipctl_t out_m1",
    ):
        assert line in batch


def test_egress_filters_by_port_ifindex_and_rewrites_mac() -> None:
    spec = load_text(SPEC.format(mode="broadcast", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 1)
    out_m2 = next(c for c in table.chains if c.name == "out_m2")
    assert "ip daddr 198.51.100.253 meta mark != 11 drop" in out_m2.rules
    assert (
        'ip daddr 198.51.100.253 counter name "c_b" ether daddr set 02:00:00:00:02:02'
        in out_m2.rules
    )


def test_several_vips_make_an_anonymous_set() -> None:
    spec = load_text(
        SPEC.format(mode="steer", key="mask").replace(
            "vips: [198.51.100.253,", "vips: [198.51.100.254, 198.51.100.253,"
        )
    )
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 1)
    assert (
        table.chains[0]
        .rules[0]
        .startswith("meta pkttype host ip daddr { 198.51.100.253, 198.51.100.254 } ")
    )
    assert not [s for s in table.sets if s.kind == "set"]  # no named VIP sets any more


def test_nobody_up_means_empty_maps_and_drop() -> None:
    spec = load_text(SPEC.format(mode="steer", key="mask"))
    layout = desired(spec, None, down={"a", "b"})
    table = build_table(spec, layout, fake_wiring(spec), 1)
    assert all(not s.elements for s in table.sets if s.name.startswith(("owners", "deliver")))
    assert all(c.rules == ("drop",) for c in table.chains if c.name.startswith("icmp"))


def test_transaction_flushes_instead_of_recreating_and_deletes_stale() -> None:
    spec = load_text(SPEC.format(mode="broadcast", key="mask"))
    table = build_table(spec, desired(spec, None), fake_wiring(spec), 2)
    observed = Observed(
        sets=frozenset({"vips4", "vips6"}),
        maps=frozenset({"owners4_h3_5eed", "owners4_m3"}),
        counters=frozenset({"c_a", "c_gone"}),
        chains=frozenset({"in_up0", "out_m1", "out_m9"}),
        exists=True,
    )
    batch = transaction(table, observed).splitlines()
    assert batch[0] == "add table netdev vipctl_t"
    assert "flush chain netdev vipctl_t in_up0" in batch
    assert "delete map netdev vipctl_t owners4_m3" not in batch
    assert not any(line.startswith("delete chain netdev vipctl_t in_up0") for line in batch)
    assert "delete chain netdev vipctl_t out_m9" in batch
    assert "delete map netdev vipctl_t owners4_h3_5eed" in batch
    assert "delete counter netdev vipctl_t c_gone" in batch
    assert "flush map netdev vipctl_t owners4_m3" in batch  # interval maps: replaced whole
    # rules are added after every flush, deletions of stale objects come last
    last_rule = max(i for i, line in enumerate(batch) if line.startswith("add rule"))
    first_flush = min(i for i, line in enumerate(batch) if line.startswith("flush"))
    first_delete = min(i for i, line in enumerate(batch) if line.startswith("delete"))
    assert first_flush < last_rule < first_delete

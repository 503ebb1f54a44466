"""The re-tuning solver against an exhaustive search on small instances."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from vipctl.core import retune
from vipctl.core.partition import Table, fresh_table

W3 = (("a", Fraction(1)), ("b", Fraction(1)), ("c", Fraction(1)))


def _instance(rng: random.Random, n: int, weights: retune.Weights) -> tuple[Table, list[float]]:
    table = fresh_table(n, weights)
    kind = rng.choice(["hot", "zipf", "uniform"])
    if kind == "hot":
        load = [rng.uniform(1, 3) for _ in range(n)]
        for b in rng.sample(range(n), 2):
            load[b] *= rng.uniform(3, 8)
    elif kind == "zipf":
        ranks = list(range(1, n + 1))
        rng.shuffle(ranks)
        load = [100.0 / r for r in ranks]
    else:
        load = [float(rng.randint(0, 10)) for _ in range(n)]
    return table, load


@pytest.mark.parametrize("seed", range(150))
def test_moves_at_most_one_and_a_half_times_the_exact_minimum(seed: int) -> None:
    rng = random.Random(seed)
    weights = W3 if seed % 3 else (("a", Fraction(2)), ("b", Fraction(1)), ("c", Fraction(1)))
    n = 8 if seed % 2 else 9
    table, load = _instance(rng, n, weights)
    tol = rng.choice([1.05, 1.1, 1.25])
    caps = retune.caps_for(weights, load, tol)
    best = retune.exact(table, load, caps)
    # the heuristic alone (no exhaustive search): what runs on real tables
    got = retune.solve(table, load, weights, tol, exhaustive=0)
    if best is None:
        assert not got.reachable and got.moved == () and got.reason
        return
    assert got.reachable, got.reason
    assert got.after <= tol + 1e-9
    assert retune.feasible(got.table, load, caps)
    assert len(got.moved) <= 1.5 * best, (best, got.moved)


def test_breaking_the_solver_is_caught() -> None:
    """The exact check has teeth: a feasible table with twice the minimal moves fails it."""
    table = ("a",) * 4 + ("b",) * 4 + ("c",) * 4
    load = [4.0, 1, 1, 1] + [1.0] * 8  # a: 7, b: 4, c: 4; cap 5.5
    caps = retune.caps_for(W3, load, 1.1)
    best = retune.exact(table, load, caps)
    assert best == 2
    wasteful = ("a", "b", "c", "a", "c", "b", "b", "b", "b", "c", "c", "c")  # also swaps 4, 5
    assert retune.feasible(wasteful, load, caps)
    assert not sum(x != y for x, y in zip(table, wasteful, strict=True)) <= 1.5 * best
    assert len(retune.solve(table, load, W3, 1.1).moved) == 2


def test_nothing_moves_within_tolerance_and_a_second_run_moves_nothing() -> None:
    table = fresh_table(256, W3)
    rng = random.Random(7)
    load = [rng.uniform(90, 110) for _ in range(256)]
    for b in (1, 2, 3, 4):
        load[b] = 0.25 * sum(load) / 4  # ~20% of the packets from 4 buckets
    first = retune.solve(table, load, W3, 1.1, aim=1.08)
    assert first.before > 1.3 and first.reachable
    assert first.after <= 1.08 + 1e-9
    assert 0 < len(first.moved) <= 4
    again = retune.solve(first.table, load, W3, 1.1, aim=1.08)
    assert again.moved == () and again.table == first.table


def test_an_unsplittable_bucket_says_what_would_help() -> None:
    table = fresh_table(16, W3)
    load = [1.0] * 16
    load[0] = 20.0  # 20 / 35 of the traffic in one bucket: above 1.1 / 3
    got = retune.solve(table, load, W3, 1.1)
    assert not got.reachable and got.moved == () and got.table == table
    assert "bucket 0" in got.reason and "bits" in got.reason and "hash" in got.reason


def test_no_traffic_moves_nothing() -> None:
    table = fresh_table(16, W3)
    got = retune.solve(table, [0.0] * 16, W3, 1.1)
    assert got.reachable and got.moved == () and got.before == 1.0


def test_drained_and_down_members_get_no_load() -> None:
    table = fresh_table(12, W3)
    load = [1.0] * 12
    weights = (("a", Fraction(1)), ("b", Fraction(1)), ("c", Fraction(0)))
    got = retune.solve(table, load, weights, 1.1)
    assert got.reachable and "c" not in set(got.table)
    assert got.targets == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_weighted_shares_and_fewest_moves_among_least_traffic() -> None:
    table = ("a",) * 4 + ("b",) * 4
    load = [5.0, 1, 1, 1, 1, 1, 1, 1]  # a: 8, b: 4; share 6 each, cap 6.6
    got = retune.solve(table, load, (("a", Fraction(1)), ("b", Fraction(1))), 1.1)
    # one light bucket leaves a at 7 > 6.6; the heavy one makes b 9 > 6.6: two light ones
    assert got.reachable and len(got.moved) == 2 and got.moved_load == pytest.approx(2 / 12)


def test_max_moves_caps_a_step() -> None:
    table = fresh_table(48, W3)
    load = [1.0] * 48
    for b in range(10):
        load[b] = 3.0
    full = retune.solve(table, load, W3, 1.05)
    step = retune.solve(table, load, W3, 1.05, max_moves=1)
    assert len(full.moved) > 1 and len(step.moved) == 1
    assert step.after < step.before


def test_measure_batches_switch_counting_on_and_off_in_a_chain_of_their_own() -> None:
    from vipctl.core.spec import parse_spec
    from vipctl.render.nft import measure_batches

    base = {
        "cluster": "web",
        "vips": ["198.51.100.253", "2001:db8::1"],
        "uplink": "up0",
        "members": [{"name": "a", "port": "m1", "address": "198.51.100.10"}],
        "partition": {"bits": 2},
    }
    start, stop = measure_batches(parse_spec(base))
    assert 'add chain netdev vipctl_web load_up0 { type filter hook ingress device "up0" ' in start
    assert "counter name ip saddr & 0.0.0.3 map @loadmap4" in start
    assert "counter name ip6 saddr & ::3 map @loadmap6" in start
    assert start.count("add counter netdev vipctl_web load") == 8
    assert stop.splitlines()[0] == "delete chain netdev vipctl_web load_up0"
    assert stop.count("delete counter") == 8 and "in_up0" not in start + stop
    hashed = parse_spec({**base, "partition": {"bits": 2, "key": "hash"}})
    start, stop = measure_batches(hashed)
    assert "update @load4 { jhash ip saddr mod 4 seed 0x5eed }" in start
    assert "delete set netdev vipctl_web load4" in stop


def test_a_measuring_table_counts_in_the_clusters_own_rule_and_the_next_apply_removes_it() -> None:
    from vipctl.core.partition import Layout
    from vipctl.core.spec import parse_spec
    from vipctl.render.nft import Observed, build_table, render_table, transaction
    from vipctl.render.wiring import Wiring

    spec = parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253", "2001:db8::1"],
            "uplink": "up0",
            "mode": "steer",
            "members": [{"name": "a", "port": "m1", "address": "198.51.100.10"}],
            "partition": {"bits": 2},
        }
    )
    layout = Layout.initial(2, (("a", Fraction(1)),))
    wiring = Wiring({"up0": 1, "m1": 2}, {"a": "02:00:00:00:00:10"})
    plain = build_table(spec, layout, wiring, 1)
    counting = build_table(spec, layout, wiring, 2, measuring=True)
    text = render_table(counting)
    assert "ip daddr 198.51.100.253 counter name ip saddr & 0.0.0.3 map @loadmap4 ip saddr" in text
    assert "counter name ip6 saddr & ::3 map @loadmap6 ip6 saddr" in text
    assert len(counting.counters) == len(plain.counters) + 8
    assert "load" not in render_table(plain)  # zero cost when not measuring
    assert len(counting.chains) == len(plain.chains)  # no chain of its own
    live = Observed(
        maps=frozenset(s.name for s in counting.sets if s.kind == "map"),
        counters=frozenset(counting.counters),
        chains=frozenset(c.name for c in counting.chains),
        exists=True,
    )
    off = transaction(plain, live)
    assert off.count("delete counter netdev vipctl_web load") == 8
    assert off.index("delete map netdev vipctl_web loadmap4") < off.index("delete counter")
    hashed = parse_spec({**spec.model_dump(mode="json"), "partition": {"bits": 2, "key": "hash"}})
    text = render_table(build_table(hashed, layout, wiring, 2, measuring=True))
    assert "update @load4 { jhash ip saddr mod 4 seed 0x5eed } jhash ip saddr" in text

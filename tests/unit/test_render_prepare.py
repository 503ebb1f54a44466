"""No transaction on a live table adds a regular chain that it also makes reachable
(render/nft.py Preparation): new chains go in one transaction earlier, unreferenced, and
that first transaction changes nothing a packet can reach. The kernel side of it is
tests/kernel/test_dataplane.py::test_no_packet_falls_through_a_new_chain."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.unit.test_render import EXAMPLES, fake_wiring, observed_of
from vipctl.backends import nft as backend
from vipctl.backends.base import Live
from vipctl.core.plan import desired
from vipctl.core.spec import Spec, load_spec, parse_spec
from vipctl.core.transition import Move
from vipctl.errors import KernelError
from vipctl.render.nft import (
    NftTable,
    Observed,
    build_table,
    preparation,
    prepared,
    transaction,
)


def _moves(spec: Spec, phase: str) -> dict[int, Move]:
    """The first member's first bucket and the last member's last bucket in transition."""
    table = desired(spec, None).table
    first, last = spec.members[0].name, spec.members[-1].name
    lo, hi = table.index(first), len(table) - 1 - table[::-1].index(last)
    return {lo: Move(first, last, 0.0, phase), hi: Move(last, first, 0.0, phase)}


def _steps(spec: Spec) -> list[NftTable]:
    """Steady -> record -> move -> the moves reversed -> steady; then a member more."""
    layout = desired(spec, None)
    w = fake_wiring(spec)
    reverse = {b: Move(m.new, m.old, 0.0, "move") for b, m in _moves(spec, "move").items()}
    tables = [
        build_table(spec, layout, w, 1),
        build_table(spec, layout, w, 2, _moves(spec, "record")),
        build_table(spec, layout, w, 3, _moves(spec, "move")),
        build_table(spec, layout, w, 4, reverse),
        build_table(spec, layout, w, 5),
    ]
    data = spec.model_dump(mode="json")
    data["members"].append({**data["members"][-1], "name": "extra", "port": "m9"})
    bigger = parse_spec(data)
    tables.append(build_table(bigger, desired(bigger, layout), fake_wiring(bigger), 6))
    return tables


def _added_chains(batch: str) -> set[str]:
    return {ln.split()[4] for ln in batch.splitlines() if ln.startswith("add chain")}


def _reachable_from(batch: str, chain: str) -> list[str]:
    """Lines of `batch` that make `chain` reachable: a goto/jump to it anywhere but in
    its own rules."""
    return [
        ln
        for ln in batch.splitlines()
        if re.search(rf"\b(goto|jump) {re.escape(chain)}\b", ln) and ln.split()[4:5] != [chain]
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_no_transaction_adds_a_chain_it_makes_reachable(example: Path) -> None:
    spec = load_spec(example)
    tables = _steps(spec)
    prepared_some = 0
    for old, new in itertools.pairwise(tables):
        live = observed_of(old)
        prep = preparation(new, live)
        main = transaction(new, prepared(live, prep))
        regular = {c.name for c in new.chains if c.hook is None}
        fresh = regular - live.chains
        assert (prep is None) == (not fresh)
        if prep is None:
            continue
        prepared_some += 1
        # the main transaction adds no regular chain that is not live by then
        assert not (_added_chains(main) & regular) - live.chains - prep.chains
        assert prep.chains == fresh
        # the preparation touches only what it creates: nothing live changes
        for ln in prep.batch.splitlines():
            verb, kind, _family, _table, name = ln.split()[:5]
            assert verb == "add", ln
            if kind in ("rule", "element"):
                assert name in prep.chains | prep.sets | prep.maps, ln
            else:
                assert name not in live.chains | live.sets | live.maps | live.counters, ln
        for chain in prep.chains:  # reachable only from what the preparation creates
            for ln in _reachable_from(prep.batch, chain):
                assert ln.split()[4] in prep.chains | prep.maps, ln
        # and the undo removes exactly what it added
        undone = {ln.split()[-1] for ln in prep.undo.splitlines() if ln.startswith("delete")}
        assert undone == prep.chains | prep.sets | prep.maps | prep.counters
    assert prepared_some >= 3  # record, move, reverse move (and the new member's chains)


def test_a_first_install_and_a_failover_need_no_preparation() -> None:
    spec = load_spec(EXAMPLES[0])
    layout = desired(spec, None)
    table = build_table(spec, layout, fake_wiring(spec), 1)
    assert preparation(table, Observed()) is None
    down = desired(spec, layout, down={spec.members[0].name})
    failed_over = build_table(spec, down, fake_wiring(spec), 2)
    assert preparation(failed_over, observed_of(table)) is None


def _plan_with_prep(spec: Spec) -> backend.Plan:
    tables = _steps(spec)
    be = backend.NftBackend()
    live = Live(be.name, 2, backend.LiveTable("t", observed_of(tables[1]), 2))
    plan = be.plan(
        spec, desired(spec, None), fake_wiring(spec), 3, live, spec, _moves(spec, "move")
    )
    assert plan.payload.prep is not None
    return plan


def test_commit_sends_the_preparation_first_and_takes_it_back_on_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = load_spec(EXAMPLES[0])
    plan = _plan_with_prep(spec)
    sent: list[str] = []

    def fake_commit(batch: str) -> None:
        sent.append(batch)

    monkeypatch.setattr(backend, "commit", fake_commit)
    backend.NftBackend().commit(plan)
    assert sent == [plan.payload.prep.batch, plan.payload.batch]

    sent.clear()

    def refuse_main(batch: str) -> None:
        sent.append(batch)
        if batch == plan.payload.batch:
            raise KernelError("the kernel refused the ruleset, nothing changed: test")

    monkeypatch.setattr(backend, "commit", refuse_main)
    with pytest.raises(KernelError):
        backend.NftBackend().commit(plan)
    assert sent == [plan.payload.prep.batch, plan.payload.batch, plan.payload.prep.undo]

"""Orchestration shell: spec -> layout -> ruleset -> kernel -> state. No printing here."""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from vipctl import announce, doctor, kernel
from vipctl import plan as planning
from vipctl import state as statefile
from vipctl.errors import KernelError, StateError
from vipctl.partition import Layout, bucket_of, count, shares
from vipctl.render.nft import (
    Observed,
    Wiring,
    build_table,
    counter_name,
    digest,
    render_table,
    table_name,
    transaction,
)
from vipctl.spec import Spec, parse_spec


@dataclass(frozen=True)
class ApplyResult:
    generation: int
    changed: bool
    dry_run: bool
    ruleset: str
    diff: str
    moved: int
    lower_bound: int
    seconds: float
    layout: Layout


def _previous(
    spec: Spec, st: statefile.ClusterState | None, live: kernel.LiveTable | None
) -> tuple[Layout | None, int]:
    """What was live: the state file's layout, else the kernel's own table (adopt)."""
    live_gen = live.generation if live is not None else None
    kernel_ahead = st is not None and live_gen is not None and live_gen > st.generation
    if st is not None and st.layout.bits == spec.partition.bits and not kernel_ahead:
        # (state ahead of the kernel: a crash between the state write and the commit; the
        # state holds what was meant to be live, so converge to it)
        return st.layout, max(st.generation, live_gen or 0)
    if live is not None:
        found = kernel.live_table(spec)  # reads the owner maps' elements (slow path)
        if found is not None:
            table, _ = found
            weights = planning.spec_weights(spec)
            adopted = Layout(bits=spec.partition.bits, weights=weights, base=table, table=table)
            return adopted, live_gen or 0
    return None, (st.generation if st else live_gen or 0)


def apply(
    spec: Spec,
    directory: Path,
    *,
    dry_run: bool = False,
    down: set[str] | None = None,
    want_diff: bool = True,
    preflight: bool = False,
    host: bool = True,
    reasons: Mapping[str, str] | None = None,
) -> ApplyResult:
    """Compute and install the cluster's table in one transaction (idempotent).

    `preflight` runs the doctor's checks first (the CLI does; the daemon's failovers do
    not: they take 0.3-0.5 s) and refuses, changing nothing, on any error. `host` also
    converges the uplink's ARP/ND answering for the VIPs (spec.announce_vips); it depends
    only on the spec, so a failover can skip it."""
    started = time.perf_counter()
    if spec.backend == "tc":
        return _apply_tc(spec, directory, dry_run=dry_run, down=down, started=started)
    with statefile.locked(directory, spec.cluster):
        live = kernel.observe_structure(spec.cluster)
        st = statefile.load(directory, spec.cluster)
        if live is not None and (st is None or live.generation != st.generation):
            # the state does not describe the kernel: read the table the slow, full way
            live = kernel.observe(spec.cluster, with_elements=False)
        previous, generation = _previous(spec, st, live)
        layout = planning.desired(spec, previous, down=down)
        wiring = kernel.wiring(spec, optional=set(layout.down))
        if preflight and not dry_run:
            _preflight(spec, layout.down)
        new_table = build_table(spec, layout, wiring, generation + 1)
        # The state describes the kernel exactly when the live generation is the one we
        # recorded, on the same ports (ifindex) as now: then nothing needs reading back.
        trusted = (
            previous is not None
            and live is not None
            and st is not None
            and st.spec is not None
            and live.generation == st.generation
            and st.ifindex == dict(wiring.ifindex)
        )
        old_table = None
        observed = live.observed if live is not None else Observed()
        if trusted and st is not None and st.spec is not None and previous is not None:
            old_spec = parse_spec(st.spec)
            # netlink gives no counter names: the last committed spec says which exist
            observed = dataclasses.replace(
                observed, counters=frozenset(counter_name(m.name) for m in old_spec.members)
            )
            if want_diff or dry_run:
                old_wiring = Wiring(ifindex=wiring.ifindex, macs={**wiring.macs, **st.macs})
                try:
                    old_table = build_table(old_spec, previous, old_wiring, generation)
                except KeyError:
                    old_table = None
        elif live is not None and not observed.counters:
            full = kernel.observe(spec.cluster, with_elements=False)
            observed = full.observed if full is not None else observed
        change = planning.Change(previous, layout)
        if trusted and st is not None and st.digest == digest(new_table):
            if host and not dry_run:
                announce.sync(spec)  # not part of the ruleset digest
            return ApplyResult(
                generation=generation,
                changed=False,
                dry_run=dry_run,
                ruleset=render_table(new_table) if want_diff or dry_run else "",
                diff="",
                moved=0,
                lower_bound=0,
                seconds=time.perf_counter() - started,
                layout=layout,
            )
        text = render_table(new_table) if (want_diff or dry_run) else ""
        diff = ""
        if want_diff:
            old_text = render_table(old_table) if old_table is not None else ""
            diff = "".join(
                difflib.unified_diff(
                    old_text.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    "live",
                    "new",
                    n=1,
                )
            )
        batch = transaction(new_table, observed)
        if dry_run:
            kernel.check(batch)
        else:
            # The state is written first: a crash between the two leaves a state that is
            # ahead of the kernel, which the next apply converges to. The other order would
            # leave the kernel ahead with stale health in the state.
            saved = statefile.read_raw(directory, spec.cluster)
            statefile.save(
                directory,
                statefile.ClusterState(
                    cluster=spec.cluster,
                    generation=generation + 1,
                    layout=layout,
                    digest=digest(new_table),
                    spec=spec.model_dump(mode="json"),
                    ifindex=dict(wiring.ifindex),
                    macs=dict(wiring.macs),
                    reasons={**(st.reasons if st else {}), **(reasons or {})},
                ),
            )
            try:
                kernel.commit(batch)
            except BaseException:
                statefile.restore_raw(directory, spec.cluster, saved)
                raise
            kernel.verify(new_table, generation + 1, whole=not trusted)
            if host:
                announce.sync(spec)
        return ApplyResult(
            generation=generation + (0 if dry_run else 1),
            changed=True,
            dry_run=dry_run,
            ruleset=text,
            diff=diff,
            moved=len(change.moved),
            lower_bound=change.lower_bound,
            seconds=time.perf_counter() - started,
            layout=layout,
        )


def _apply_tc(
    spec: Spec, directory: Path, *, dry_run: bool, down: set[str] | None, started: float
) -> ApplyResult:
    """The tc backend (flower, or u32 where it can say the same): make-before-break chain
    flip, see vipctl/tc_backend.py. No pinning there (tc has no dynamic sets)."""
    from vipctl import tc_backend
    from vipctl.render.tc import build_ruleset, render_text

    with statefile.locked(directory, spec.cluster):
        st = statefile.load(directory, spec.cluster)
        previous = st.layout if st is not None and st.layout.bits == spec.partition.bits else None
        live = tc_backend.observe(spec)
        generation = max(st.generation if st else 0, live.generation if live else 0)
        layout = planning.desired(spec, previous, down=down)
        wiring = kernel.wiring(spec, optional=set(layout.down))
        change = planning.Change(previous, layout)
        if dry_run:
            text = render_text(build_ruleset(spec, layout, wiring, generation + 1, slot=1))
            return ApplyResult(
                generation=generation,
                changed=True,
                dry_run=True,
                ruleset=text,
                diff="",
                moved=len(change.moved),
                lower_bound=change.lower_bound,
                seconds=time.perf_counter() - started,
                layout=layout,
            )
        if (
            live is not None
            and st is not None
            and previous == layout
            and (live.generation == st.generation)
        ):
            return ApplyResult(
                generation=generation,
                changed=False,
                dry_run=False,
                ruleset="",
                diff="",
                moved=0,
                lower_bound=0,
                seconds=time.perf_counter() - started,
                layout=layout,
            )
        result = tc_backend.apply(spec, layout, wiring, generation + 1)
        statefile.save(
            directory,
            statefile.ClusterState(
                cluster=spec.cluster,
                generation=result.generation,
                layout=layout,
                digest="tc",
                spec=spec.model_dump(mode="json"),
                ifindex=dict(wiring.ifindex),
                macs=dict(wiring.macs),
            ),
        )
        return ApplyResult(
            generation=result.generation,
            changed=True,
            dry_run=False,
            ruleset=result.text,
            diff="",
            moved=len(change.moved),
            lower_bound=change.lower_bound,
            seconds=time.perf_counter() - started,
            layout=layout,
        )


def _preflight(spec: Spec, down: tuple[str, ...]) -> None:
    found = doctor.errors(doctor.preflight(spec, down=down))
    if found:
        raise KernelError(
            "preflight check failed, nothing changed: "
            + "; ".join(f"{f.check}: {f.message} (fix: {f.fix})" for f in found)
        )


def spec_with_weights(spec: Spec, weights: Mapping[str, Fraction]) -> Spec:
    """The spec as it stands after `rebalance --weights` (what the state remembers)."""
    data = spec.model_dump(mode="json")
    for m in data["members"]:
        if m["name"] in weights:
            m["weight"] = float(weights[m["name"]])
    return parse_spec(data)


def down(cluster: str, directory: Path) -> bool:
    """Remove the cluster's table and state; touches nothing else."""
    with statefile.locked(directory, cluster):
        st = statefile.load(directory, cluster)
        removed = False
        if st is not None and st.spec is not None:
            spec = parse_spec(st.spec)
            announce.sync(spec, False)  # stop answering ARP/ND for its VIPs
            if spec.backend == "tc":
                from vipctl import tc_backend

                removed = tc_backend.delete(spec)
        removed = kernel.delete_table(cluster) or removed
        statefile.remove(directory, cluster)
        return removed


def clusters(directory: Path) -> list[str]:
    names = {n.removeprefix("vipctl_").replace("_", "-") for n in kernel.list_tables()}
    return sorted(names)


def status(cluster: str, directory: Path) -> dict[str, Any]:
    """What the kernel says is live, joined with the state (weights, health)."""
    live = kernel.observe(cluster)
    st = statefile.load(directory, cluster)
    if live is None:
        raise KernelError(f"cluster {cluster} is not installed (no table {table_name(cluster)})")
    if st is None or not st.spec:
        raise StateError(
            f"cluster {cluster} is live but has no state in {directory}; run vipctl apply"
        )
    spec = parse_spec(st.spec)
    found = kernel.live_table(spec, live)
    live_counts = count(found[0]) if found else {}
    layout = st.layout
    targets = {s.name: s for s in shares(layout, with_entries=False)}
    pinned, _ = pinned_flows(spec) if spec.pinning.enabled else ({}, [])
    members = []
    total = spec.partition.buckets
    for m in spec.members:
        packets, nbytes = live.counters.get(counter_name(m.name), (0, 0))
        share = targets.get(m.name)
        members.append(
            {
                "name": m.name,
                "port": m.port,
                "address": str(m.address),
                "healthy": m.name not in layout.down,
                "reason": st.reasons.get(m.name, ""),
                "weight": planning.fmt_weight(dict(layout.weights).get(m.name, Fraction(0))),
                "buckets": live_counts.get(m.name, 0),
                "share": round(live_counts.get(m.name, 0) / total, 6),
                "target": round(share.target, 6) if share else 0.0,
                "packets": packets,
                "bytes": nbytes,
                "pinned": pinned.get(m.name, 0),
            }
        )
    return {
        "cluster": cluster,
        "generation": live.generation,
        "mode": spec.mode,
        "key": spec.partition.key,
        "bits": spec.partition.bits,
        "vips": [str(v) for v in spec.vips],
        "uplink": spec.uplink,
        "in_sync": live.generation == st.generation
        and found is not None
        and found[0] == layout.table,
        "members": members,
    }


def _pin_bucket(spec: Spec, pin: kernel.Pin) -> int | None:
    """The bucket of a pinned flow's source, when the pin key carries enough of it."""
    p = spec.partition
    if pin.family == 4:
        return bucket_of(str(pin.key[0]), p.key, p.bits, p.seed)
    if p.key == "mask":  # the IPv6 key keeps the low 64 source bits: enough for <= 16 bits
        return int(pin.key[0]) & ((1 << p.bits) - 1)
    return None


def pinned_flows(spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
    """Pinned flows per member, and (bucket, member) of each pin (bucket None: unknown)."""
    found = kernel.pins(spec.cluster)
    ifindex = kernel.port_ifindex(spec)
    by_index = {ifindex[m.port]: m.name for m in spec.members if m.port in ifindex}
    per: dict[str, int] = {m.name: 0 for m in spec.members}
    flows: list[tuple[int | None, str | None]] = []
    for pin in found:
        owner = by_index.get(pin.mark)
        if owner is not None:
            per[owner] += 1
        flows.append((_pin_bucket(spec, pin), owner))
    return per, flows


def pins_in_moved_buckets(spec: Spec, moved_buckets: list[int]) -> tuple[int, int]:
    """(pinned flows whose source bucket moves, pinned flows whose bucket is unknown)."""
    moving = set(moved_buckets)
    _, flows = pinned_flows(spec)
    inside = sum(1 for b, _ in flows if b is not None and b in moving)
    unknown = sum(1 for b, _ in flows if b is None)
    return inside, unknown

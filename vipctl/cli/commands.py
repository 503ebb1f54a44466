"""The bodies of the commands an operator runs most (validate, which, plan, status, apply,
rebalance), without typer: cli/app.py declares their arguments for typer and calls these;
cli/fast.py parses the common command lines itself and calls the same functions.

Each body takes exactly the parameters of its typer command and no defaults: typer's
are the only ones, and the fast path passes them from cli/fastgrammar.py, generated from
the typer app (tests/unit/test_cli_fast.py checks both). A body prints through
cli/output.py and ends with SystemExit on an error.
"""

from __future__ import annotations

import json
from fractions import Fraction
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from vipctl import statefile
from vipctl.cli.output import echo, fail, load, usage
from vipctl.core import plan as planning
from vipctl.core.partition import Layout, bucket_of
from vipctl.errors import KernelError, StateError, VipctlError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec


def _previous(spec: Spec, state_dir: str | None) -> Layout | None:
    st = statefile.load(statefile.state_dir(state_dir), spec.cluster)
    return st.layout if st is not None else None


def _desired(
    spec: Spec,
    state_dir: str | None,
    weights: dict[str, Fraction] | None = None,
    down: set[str] | None = None,
) -> tuple[Layout | None, Layout]:
    """(the layout the state says is live, the one an apply would install): the weights in
    force (those `rebalance` set, core/reconcile.py), or `weights` over them."""
    from vipctl.core import reconcile

    st = statefile.load(statefile.state_dir(state_dir), spec.cluster)
    own = planning.spec_weights(spec)
    in_force = dict(reconcile.weights_in_force(own, st.intent if st else None))
    previous = st.layout if st is not None else None
    layout = planning.desired(spec, previous, weights={**in_force, **(weights or {})}, down=down)
    return previous, layout


def validate(spec_path: Path) -> None:
    spec = load(spec_path)
    echo(f"{spec_path}: ok (cluster {spec.cluster}, {len(spec.members)} members)")


def plan(
    spec_path: Path,
    weights: str | None,
    down: str | None,
    auto: bool,
    window: float,
    tolerance: float,
    metric: str,
    png: Path | None,
    as_json: bool,
    state_dir: str | None,
) -> None:
    spec = load(spec_path)
    if auto:
        if weights is not None or down is not None:
            usage("plan --auto re-tunes the live table: it takes no --weights or --down")
        from vipctl.cli import retune as _rt

        _rt.run_auto(
            spec,
            state_dir,
            window=window,
            tolerance=tolerance,
            metric=metric,
            dry_run=True,
            as_json=as_json,
            png=png,
        )
        return
    try:
        overrides = planning.parse_weights(weights, spec) if weights is not None else None
        down_set = planning.parse_names(down, spec) if down is not None else None
        previous, layout = _desired(spec, state_dir, overrides, down_set)
    except VipctlError as exc:
        fail(exc)
    change = planning.Change(previous, layout)
    data = planning.report(spec, change)
    pins = _pins_moving(spec, change.moved) if previous is not None else None
    if pins is not None:
        data["pinned_in_moved_buckets"], data["pinned_unknown_bucket"] = pins
    if as_json:
        echo(json.dumps(data, indent=2))
    else:
        echo(planning.render_report(data))
        _print_pins_moving(spec, change.moved, pins)


def which(
    spec_path: Path,
    source: str,
    state_dir: str | None,
    as_json: bool,
    source_table: str,
) -> None:
    spec = load(spec_path)
    try:
        addr = ip_address(source)
    except ValueError:
        usage(f"'{source}' is not an IP address")
    if addr.version not in spec.vip_families:
        usage(f"{source} is IPv{addr.version} but no VIP is")
    if source_table not in ("auto", "live", "state", "spec"):
        usage("--from is auto, live, state or spec")
    try:
        layout, origin = _live_layout(spec, state_dir, source_table)
    except VipctlError as exc:
        fail(exc)
    p = spec.partition
    bucket = bucket_of(addr, p.key, p.bits, p.seed)
    owner = layout.table[bucket]
    if as_json:
        echo(json.dumps({"source": str(addr), "bucket": bucket, "member": owner, "table": origin}))
    else:
        echo(f"{addr} -> bucket {bucket} -> {owner or 'nobody (no member up)'} ({origin})")


def _pins_moving(spec: Spec, moved: list[int]) -> tuple[int, int] | None:
    """Live pinned flows in the buckets that move (None: not installed here)."""
    if not spec.pinning.enabled:
        return None
    try:
        from vipctl import controller

        if controller.backend_for(spec).observe(spec) is None:
            return None
        return controller.pins_in_moved_buckets(spec, moved)
    except (ImportError, VipctlError, OSError):
        return None


def _print_pins_moving(spec: Spec, moved: list[int], pins: tuple[int, int] | None = None) -> None:
    pins = pins if pins is not None else _pins_moving(spec, moved)
    if pins is None:
        return
    inside, unknown = pins
    line = f"live pinned flows in the moving buckets: {inside} (they stay on their member)"
    if unknown:
        line += f"; {unknown} IPv6 pins with the hash key cannot be placed in a bucket"
    echo(line)


def _live_layout(spec: Spec, state_dir: str | None, source: str = "auto") -> tuple[Layout, str]:
    """The table packets meet now: the kernel's when the cluster is installed."""
    if source in ("auto", "live"):
        live = _kernel_table(spec)
        if live is not None:
            return live, "live"
        if source == "live":
            raise KernelError(f"cluster {spec.cluster} is not installed here")
    if source in ("auto", "state"):
        previous, layout = _desired(spec, state_dir)
    else:
        previous, layout = None, planning.desired(spec, None)
    if source == "state" and previous is None:
        raise StateError(f"no state for cluster {spec.cluster}")
    return layout, ("state" if previous else "spec")


def _kernel_table(spec: Spec) -> Layout | None:
    try:
        from vipctl import controller
    except ImportError:  # bindings absent: only the spec can answer
        return None
    return controller.live_layout(spec)


# --------------------------------------------------------------------------------------
# Commands that change the kernel
# --------------------------------------------------------------------------------------


def apply(
    spec_path: Path,
    dry_run: bool,
    diff: bool,
    down: str | None,
    skip_checks: bool,
    layout_path: Path | None,
    state_dir: str | None,
) -> None:
    from vipctl import controller

    spec = load(spec_path)
    imported = None
    try:
        if layout_path is not None:
            from vipctl.core import layoutfile

            imported = layoutfile.read(layout_path, spec)
        down_set = planning.parse_names(down, spec) if down is not None else None
        result = controller.apply(
            spec,
            statefile.state_dir(state_dir),
            controller.ApplyOptions(
                dry_run=dry_run,
                down=down_set,
                want_diff=diff or dry_run,
                preflight=not skip_checks,
                layout=imported,
                # the peer's weights become this router's weights in force
                weights=dict(imported.weights) if imported is not None else None,
                intent_source="layout",
            ),
        )
    except VipctlError as exc:
        fail(exc)
    _print_apply(spec, result, dry_run=dry_run, diff=diff)


def _print_apply(spec: Spec, result: object, *, dry_run: bool, diff: bool) -> None:
    from vipctl.controller import ApplyResult

    assert isinstance(result, ApplyResult)
    if dry_run and not diff:
        echo(result.ruleset, nl=False)
    if diff:
        echo(result.diff or "(no change)\n", nl=False)
    if dry_run:
        echo(
            f"dry run: checked by the kernel, nothing changed ({result.moved} buckets would move)",
            err=True,
        )
        return
    if not result.changed:
        echo(f"{spec.cluster}: up to date (generation {result.generation})")
        return
    steps = "one transaction"
    if result.recorded_s:
        steps = (
            f"two transactions (UDP flows of the moving buckets recorded for "
            f"{result.recorded_s:g} s, then the move)"
        )
    moving = f"; {result.moving} buckets in transition" if result.moving else ""
    echo(
        f"{spec.cluster}: generation {result.generation} applied in {steps} "
        f"({result.moved} buckets moved, lower bound {result.lower_bound}{moving}; "
        f"{1000 * result.seconds:.1f} ms)"
    )


def rebalance(
    spec_path: Path,
    weights: str | None,
    auto: bool,
    window: float,
    tolerance: float,
    metric: str,
    dry_run: bool,
    as_json: bool,
    state_dir: str | None,
) -> None:
    from vipctl import controller

    if (weights is None) == (not auto):
        usage("rebalance takes one of --weights NAME=W,... or --auto")
    spec = load(spec_path)
    if auto:
        from vipctl.cli import retune as _rt

        _rt.run_auto(
            spec,
            state_dir,
            window=window,
            tolerance=tolerance,
            metric=metric,
            dry_run=dry_run,
            as_json=as_json,
        )
        return
    assert weights is not None
    try:
        new_weights = planning.parse_weights(weights, spec)
        directory = statefile.state_dir(state_dir)
        in_force = controller.weights_in_force(spec, statefile.load(directory, spec.cluster))
        options = controller.ApplyOptions(dry_run=dry_run, weights={**in_force, **new_weights})
        if spec.store is not None:  # once, in the store: every router converges to it
            result = controller.rebalance_shared(spec, directory, new_weights, options)
        else:
            result = controller.apply(spec, directory, options)
    except VipctlError as exc:
        fail(exc)
    if dry_run:
        previous = _previous(spec, state_dir)
        change = planning.Change(previous, result.layout)
        data = planning.report(spec, change)
        echo(planning.render_report(data))
        _print_pins_moving(spec, change.moved)
        echo("dry run: nothing changed", err=True)
        return
    _print_apply(spec, result, dry_run=False, diff=False)


def status(
    cluster: str | None,
    as_json: bool,
    watch: float | None,
    load_: bool,
    window: float,
    metric: str,
    png: Path | None,
    state_dir: str | None,
) -> None:
    import sys
    import time

    from vipctl import controller

    if load_:
        if watch is not None:
            usage("--load and --watch do not combine")
        from vipctl.cli import retune as _rt

        _rt.status_load(cluster, state_dir, window=window, metric=metric, as_json=as_json, png=png)
        return
    while True:
        try:
            directory = statefile.state_dir(state_dir)
            names = [cluster] if cluster else controller.clusters(directory)
            reports = [controller.status(name, directory) for name in names]
        except VipctlError as exc:
            fail(exc)
        if watch is None:
            break
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        echo(clear + time.strftime("%H:%M:%S"))
        for report in reports:
            echo(json.dumps(report) if as_json else _status_text(report))
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            raise SystemExit(0) from None
    if as_json:
        if cluster:
            echo(json.dumps(reports[0], indent=2))
        else:
            echo(json.dumps({"clusters": reports}, indent=2))
        return
    if not reports:
        echo("no vipctl cluster is installed")
        return
    for report in reports:
        echo(_status_text(report))
        for m in report["members"]:
            if m.get("reason"):
                echo(f"  {m['name']}: {m['reason']}")


def _status_text(r: dict[str, object]) -> str:
    members = r["members"]
    assert isinstance(members, list)
    offload = r.get("offload")
    hw = ""
    if isinstance(offload, dict):
        hw = f"  offload {offload['in_hw']}/{offload['rules']} rules in hardware"
    lines = [
        f"cluster {r['cluster']}  backend {r.get('backend', 'nftables')}  "
        f"generation {r['generation']}  mode {r['mode']}  "
        f"key {r['key']}/{r['bits']}  vips {', '.join(r['vips'])}  "  # type: ignore[arg-type]
        f"fingerprint {r.get('fingerprint') or '-'}  "
        f"{'in sync' if r['in_sync'] else 'STATE DIFFERS FROM KERNEL'}{hw}"
    ]
    rows = [
        (
            "member",
            "port",
            "health",
            "weight",
            "buckets",
            "share",
            "target",
            "",
            "pinned",
            "packets",
            "bytes",
        )
    ]
    for m in members:
        bar = "#" * round(20 * m["share"])
        rows.append(
            (
                m["name"],
                m["port"],
                {True: "up", False: "DOWN"}.get(m["healthy"], "?"),
                planning.fmt_weight(m["weight"]),
                str(m["buckets"]),
                f"{100 * m['share']:.1f}%",
                f"{100 * m['target']:.1f}%",
                bar.ljust(20, "."),
                str(m.get("pinned", "-")),
                str(m["packets"]),
                str(m["bytes"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if r.get("weights_from") not in (None, "spec"):
        lines.append(f"weights in force set by {r['weights_from']} (the spec's differ)")
    lines.extend(_routers_text(r))
    return "\n".join(lines)


def _routers_text(r: dict[str, object]) -> list[str]:
    """With a store: one line per router, and whether they agree."""
    if "store_error" in r:
        return [f"routers: unknown ({r['store_error']})"]
    routers = r.get("routers")
    if not isinstance(routers, list):
        return []
    agree = "all routers agree" if r.get("routers_agree") else "ROUTERS DIFFER"
    out = [f"routers ({agree}):"]
    for x in routers:
        out.append(
            f"  {x['name']}  fingerprint {x['fingerprint'] or '-'}  generation "
            f"{x['generation']}  desired {x['desired_generation']}  ({x['age_s']:g} s ago)"
        )
    return out

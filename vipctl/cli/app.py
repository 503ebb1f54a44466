"""The command line (thin shell): parse, call the core, print, map errors to exit codes.

Exit codes: 0 ok; 2 usage; 78 invalid spec (nothing changed); 1 kernel refused, interface
missing, cluster not installed or state unusable (the previous rules stay in place);
75 busy (another command held the cluster's lock past the wait limit; nothing changed).
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vipctl import __version__, statefile
from vipctl.cli import retune as _rt
from vipctl.cli.common import JsonOpt, SpecArg, StateDirOpt, fail, load, usage
from vipctl.core import plan as planning
from vipctl.core.partition import Layout, bucket_of
from vipctl.errors import KernelError, SpecError, StateError, VipctlError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

app = typer.Typer(
    name="vipctl",
    help="One Virtual IP served by many members, partitioned by source address in the kernel.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _previous(spec: Spec, state_dir: str | None) -> Layout | None:
    st = statefile.load(statefile.state_dir(state_dir), spec.cluster)
    return st.layout if st is not None else None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vipctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print version")
    ] = False,
) -> None:
    pass


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Check a spec: exit 0, or 78 with one `field.path: message` line per problem."""
    spec = load(spec_path)
    typer.echo(f"{spec_path}: ok (cluster {spec.cluster}, {len(spec.members)} members)")


@app.command()
def schema(
    output: Annotated[
        str,
        typer.Option(
            "--output", help="whose schema: spec (the input), status or plan (--json output)"
        ),
    ] = "spec",
) -> None:
    """Print a JSON Schema: the spec's (for editors), or that of `status --json` or
    `plan --json` (for programs that read them)."""
    from vipctl.core import schemas

    if output not in schemas.NAMES:
        typer.echo(f"vipctl: --output is one of {', '.join(schemas.NAMES)}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(schemas.schema(output), indent=2))


@app.command()
def plan(
    spec_path: SpecArg,
    weights: Annotated[
        str | None, typer.Option("--weights", help="override weights: NAME=W,...")
    ] = None,
    down: Annotated[
        str | None, typer.Option("--down", help="plan as if these members were down: NAME,...")
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto",
            help="preview `rebalance --auto`: measure each bucket's load for --window seconds",
        ),
    ] = False,
    window: _rt.WindowOpt = 10.0,
    tolerance: _rt.ToleranceOpt = 1.1,
    metric: _rt.MetricOpt = "packets",
    png: _rt.PngOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The partition vipctl would apply, and what moves compared with what is live."""
    spec = load(spec_path)
    if auto:
        if weights is not None or down is not None:
            usage("plan --auto re-tunes the live table: it takes no --weights or --down")
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
        previous = _previous(spec, state_dir)
        layout = planning.desired(spec, previous, weights=overrides, down=down_set)
    except VipctlError as exc:
        fail(exc)
    change = planning.Change(previous, layout)
    data = planning.report(spec, change)
    pins = _pins_moving(spec, change.moved) if previous is not None else None
    if pins is not None:
        data["pinned_in_moved_buckets"], data["pinned_unknown_bucket"] = pins
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(planning.render_report(data))
        _print_pins_moving(spec, change.moved, pins)


@app.command()
def which(
    spec_path: SpecArg,
    source: Annotated[str, typer.Argument(help="client source address", show_default=False)],
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
    source_table: Annotated[
        str,
        typer.Option(
            "--from",
            help="auto: the kernel's live table if installed, else the state's, else the "
            "spec's; live | state | spec: only that one",
        ),
    ] = "auto",
) -> None:
    """The member that packets from SOURCE reach (live table if any, else the spec's)."""
    spec = load(spec_path)
    try:
        addr = ip_address(source)
    except ValueError:
        typer.echo(f"vipctl: '{source}' is not an IP address", err=True)
        raise typer.Exit(2) from None
    if addr.version not in spec.vip_families:
        typer.echo(f"vipctl: {source} is IPv{addr.version} but no VIP is", err=True)
        raise typer.Exit(2)
    if source_table not in ("auto", "live", "state", "spec"):
        typer.echo("vipctl: --from is auto, live, state or spec", err=True)
        raise typer.Exit(2)
    try:
        layout, origin = _live_layout(spec, state_dir, source_table)
    except VipctlError as exc:
        fail(exc)
    p = spec.partition
    bucket = bucket_of(addr, p.key, p.bits, p.seed)
    owner = layout.table[bucket]
    if as_json:
        typer.echo(
            json.dumps({"source": str(addr), "bucket": bucket, "member": owner, "table": origin})
        )
    else:
        typer.echo(f"{addr} -> bucket {bucket} -> {owner or 'nobody (no member up)'} ({origin})")


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
    typer.echo(line)


def _live_layout(spec: Spec, state_dir: str | None, source: str = "auto") -> tuple[Layout, str]:
    """The table packets meet now: the kernel's when the cluster is installed."""
    if source in ("auto", "live"):
        live = _kernel_table(spec)
        if live is not None:
            return live, "live"
        if source == "live":
            raise KernelError(f"cluster {spec.cluster} is not installed here")
    previous = _previous(spec, state_dir) if source in ("auto", "state") else None
    if source == "state" and previous is None:
        raise StateError(f"no state for cluster {spec.cluster}")
    return planning.desired(spec, previous), ("state" if previous else "spec")


def _kernel_table(spec: Spec) -> Layout | None:
    try:
        from vipctl import controller
    except ImportError:  # bindings absent: only the spec can answer
        return None
    return controller.live_layout(spec)


def _command_name(info: typer.models.CommandInfo) -> str:
    callback = info.callback
    return info.name or typer.main.get_command_name(callback.__name__ if callback else "")


def app_for(args: list[str]) -> typer.Typer:
    """The application with only the command that `args` starts with, when it names one.

    typer turns every registered command's signature into click parameters at each start
    (~1 ms a command); running one command needs only that one. Anything else (no command,
    an option first, a mistyped name) gets the whole application, so the help and "No such
    command" list every command."""
    name = args[0] if args else ""
    commands = [c for c in app.registered_commands if _command_name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    only = copy.copy(app)  # the same settings and --version callback
    only.registered_commands = commands
    only.registered_groups = groups
    return only


def main() -> None:
    try:
        # One name in usage lines and completion scripts, however it was started
        # (/usr/bin/vipctl runs `python3 -I -m vipctl.cli`; click would say "python -m ...")
        app_for(sys.argv[1:])(prog_name="vipctl")
    except VipctlError as exc:  # pragma: no cover - commands catch their own
        typer.echo(f"vipctl: {exc}", err=True)
        sys.exit(exc.exit_code)


# --------------------------------------------------------------------------------------
# Commands that touch the kernel
# --------------------------------------------------------------------------------------


@app.command()
def apply(
    spec_path: SpecArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the ruleset, check it, change nothing")
    ] = False,
    diff: Annotated[bool, typer.Option("--diff", help="print what changes in the ruleset")] = False,
    down: Annotated[
        str | None,
        typer.Option(
            "--down",
            help="declare exactly these members down (NAME,...; '' = none), as the daemon "
            "does; default: keep the health recorded in the state",
        ),
    ] = None,
    skip_checks: Annotated[
        bool, typer.Option("--skip-checks", help="do not run the doctor's checks first")
    ] = False,
    layout_path: Annotated[
        Path | None,
        typer.Option(
            "--layout",
            help="install exactly this table (JSON from `vipctl layout export` on a peer)",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Compute and install the cluster's rules in one atomic step (idempotent)."""
    from vipctl import controller

    spec = load(spec_path)
    imported = None
    try:
        if layout_path is not None:
            from vipctl.core import layoutfile

            try:
                text = layout_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(str(layout_path), [f"cannot read: {exc}"]) from None
            imported = layoutfile.parse(text, str(layout_path), spec)
            # the peer's weights become this router's (as `rebalance --weights` records)
            spec = controller.spec_with_weights(spec, layoutfile.weights_of(imported))
        down_set = planning.parse_names(down, spec) if down is not None else None
        result = controller.apply(
            spec,
            statefile.state_dir(state_dir),
            dry_run=dry_run,
            down=down_set,
            want_diff=diff or dry_run,
            preflight=not skip_checks,
            layout=imported,
        )
    except VipctlError as exc:
        fail(exc)
    _print_apply(spec, result, dry_run=dry_run, diff=diff)


def _print_apply(spec: Spec, result: object, *, dry_run: bool, diff: bool) -> None:
    from vipctl.controller import ApplyResult

    assert isinstance(result, ApplyResult)
    if dry_run and not diff:
        typer.echo(result.ruleset, nl=False)
    if diff:
        typer.echo(result.diff or "(no change)\n", nl=False)
    if dry_run:
        typer.echo(
            f"dry run: checked by the kernel, nothing changed ({result.moved} buckets would move)",
            err=True,
        )
        return
    if not result.changed:
        typer.echo(f"{spec.cluster}: up to date (generation {result.generation})")
        return
    steps = "one transaction"
    if result.recorded_s:
        steps = (
            f"two transactions (UDP flows of the moving buckets recorded for "
            f"{result.recorded_s:g} s, then the move)"
        )
    moving = f"; {result.moving} buckets in transition" if result.moving else ""
    typer.echo(
        f"{spec.cluster}: generation {result.generation} applied in {steps} "
        f"({result.moved} buckets moved, lower bound {result.lower_bound}{moving}; "
        f"{1000 * result.seconds:.1f} ms)"
    )


@app.command()
def rebalance(
    spec_path: SpecArg,
    weights: Annotated[
        str | None, typer.Option("--weights", help="new weights: NAME=W,... (0 drains a member)")
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto", help="re-tune from each bucket's load measured in the kernel (--window)"
        ),
    ] = False,
    window: _rt.WindowOpt = 10.0,
    tolerance: _rt.ToleranceOpt = 1.1,
    metric: _rt.MetricOpt = "packets",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the moves only")] = False,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Change weights moving the fewest possible buckets (--weights), or move the fewest
    buckets that bring every member's measured load within --tolerance of its weighted
    share (--auto). Live flows stay where they are."""
    from vipctl import controller

    if (weights is None) == (not auto):
        usage("rebalance takes one of --weights NAME=W,... or --auto")
    spec = load(spec_path)
    if auto:
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
        planning.spec_weights(spec, new_weights)
        new_spec = controller.spec_with_weights(spec, new_weights)
        result = controller.apply(new_spec, statefile.state_dir(state_dir), dry_run=dry_run)
    except VipctlError as exc:
        fail(exc)
    if dry_run:
        previous = _previous(spec, state_dir)
        change = planning.Change(previous, result.layout)
        data = planning.report(new_spec, change)
        typer.echo(planning.render_report(data))
        _print_pins_moving(new_spec, change.moved)
        typer.echo("dry run: nothing changed", err=True)
        return
    _print_apply(new_spec, result, dry_run=False, diff=False)


@app.command()
def status(
    cluster: Annotated[
        str | None, typer.Argument(help="cluster name (default: every cluster)")
    ] = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        float | None,
        typer.Option("--watch", min=0.2, help="refresh every SECONDS until interrupted"),
    ] = None,
    load_: Annotated[
        bool,
        typer.Option(
            "--load", help="measure each member's load for --window seconds against its target"
        ),
    ] = False,
    window: _rt.WindowOpt = 5.0,
    metric: _rt.MetricOpt = "packets",
    png: _rt.PngOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Members, health, buckets, share against target, packets and bytes, from the kernel."""
    import time

    from vipctl import controller

    if load_:
        if watch is not None:
            usage("--load and --watch do not combine")
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
        typer.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S"), nl=True)
        for report in reports:
            typer.echo(json.dumps(report) if as_json else _status_text(report))
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    if as_json:
        if cluster:
            typer.echo(json.dumps(reports[0], indent=2))
        else:
            typer.echo(json.dumps({"clusters": reports}, indent=2))
        return
    if not reports:
        typer.echo("no vipctl cluster is installed")
        return
    for report in reports:
        typer.echo(_status_text(report))
        for m in report["members"]:
            if m.get("reason"):
                typer.echo(f"  {m['name']}: {m['reason']}")


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
    return "\n".join(lines)


layout_app = typer.Typer(help="The bucket table as a file: another router takes it exactly.")
app.add_typer(layout_app, name="layout")


@layout_app.command("export")
def layout_export(
    cluster: Annotated[str, typer.Argument(help="cluster name", show_default=False)],
    state_dir: StateDirOpt = None,
) -> None:
    """Print the live bucket table as JSON (base, weights, members down, fingerprint);
    `vipctl apply SPEC --layout FILE` on another router installs exactly that table."""
    from vipctl import controller
    from vipctl.core import layoutfile

    try:
        spec, layout = controller.exportable(cluster, statefile.state_dir(state_dir))
    except VipctlError as exc:
        fail(exc)
    typer.echo(layoutfile.dumps(layoutfile.export(spec, layout)), nl=False)


@app.command("down")
def down_cmd(
    cluster: Annotated[str, typer.Argument(help="cluster name", show_default=False)],
    state_dir: StateDirOpt = None,
) -> None:
    """Remove everything vipctl installed for CLUSTER, nothing else."""
    from vipctl import controller

    try:
        removed = controller.down(cluster, statefile.state_dir(state_dir))
    except VipctlError as exc:
        fail(exc)
    typer.echo(f"{cluster}: removed" if removed else f"{cluster}: nothing installed")


@app.command()
def metrics(
    clusters: Annotated[
        list[str] | None, typer.Argument(help="clusters to export (default: every one)")
    ] = None,
    listen: Annotated[
        str, typer.Option("--listen", help="ADDR:PORT for the Prometheus endpoint")
    ] = "127.0.0.1:9477",
    pins_max_age: Annotated[
        float,
        typer.Option(
            "--pins-max-age",
            min=0,
            help="count pinned flows at most once per SECONDS (a listing of every pin map)",
        ),
    ] = 15.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Serve Prometheus metrics read from the kernel at every scrape (until SIGTERM)."""
    import signal
    import threading

    from vipctl.service import metrics as exporter

    try:
        server = exporter.serve(
            listen, statefile.state_dir(state_dir), clusters or None, pin_max_age=pins_max_age
        )
    except VipctlError as exc:
        fail(exc)
    except OSError as exc:
        typer.echo(f"vipctl: cannot listen on {listen}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"serving metrics on http://{listen}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


# --------------------------------------------------------------------------------------
# Commands that live in their own modules
# --------------------------------------------------------------------------------------

from vipctl.cli import daemon as _daemon  # noqa: E402
from vipctl.cli import doctor as _doctor  # noqa: E402
from vipctl.cli import lab as _lab  # noqa: E402
from vipctl.cli import member as _member  # noqa: E402

app.command("daemon")(_daemon.command)
app.command("doctor")(_doctor.command)
app.command("member")(_member.command)
app.add_typer(_lab.app, name="lab")

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
from pathlib import Path
from typing import Annotated

import typer

from vipctl import __version__, statefile
from vipctl.cli import commands
from vipctl.cli import retune as _rt
from vipctl.cli.common import JsonOpt, SpecArg, StateDirOpt, fail
from vipctl.core.spec import RETUNE_METRIC, RETUNE_TOLERANCE, RETUNE_WINDOW_S
from vipctl.errors import VipctlError
from vipctl.service.stats import PIN_MAX_AGE_S

app = typer.Typer(
    name="vipctl",
    help="One Virtual IP served by many members, partitioned by source address in the kernel.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


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
    commands.validate(**locals())


@app.command()
def schema(
    output: Annotated[
        str,
        typer.Option(
            "--output",
            help="whose schema: spec (the input), status or plan (--json output), layout "
            "(layout export)",
        ),
    ] = "spec",
) -> None:
    """Print a JSON Schema: the spec's (for editors), or that of `status --json`,
    `plan --json` or `layout export` (for programs that read them)."""
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
    window: _rt.WindowOpt = RETUNE_WINDOW_S,
    tolerance: _rt.ToleranceOpt = RETUNE_TOLERANCE,
    metric: _rt.MetricOpt = RETUNE_METRIC,
    png: _rt.PngOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The partition vipctl would apply, and what moves compared with what is live."""
    commands.plan(**locals())


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
    commands.which(**locals())


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
    named = [c for c in app.registered_commands if _command_name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not named and not groups:
        return app
    only = copy.copy(app)  # the same settings and --version callback
    only.registered_commands = named
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
    commands.apply(**locals())


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
    window: _rt.WindowOpt = RETUNE_WINDOW_S,
    tolerance: _rt.ToleranceOpt = RETUNE_TOLERANCE,
    metric: _rt.MetricOpt = RETUNE_METRIC,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the moves only")] = False,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Change weights moving the fewest possible buckets (--weights), or move the fewest
    buckets that bring every member's measured load within --tolerance of its weighted
    share (--auto). Live flows stay where they are."""
    commands.rebalance(**locals())


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
    metric: _rt.MetricOpt = RETUNE_METRIC,
    png: _rt.PngOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Members, health, buckets, share against target, packets and bytes, from the kernel."""
    commands.status(**locals())


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
    ] = PIN_MAX_AGE_S,
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

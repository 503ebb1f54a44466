"""The command line (thin shell): parse, call the core, print, map errors to exit codes.

Exit codes: 0 ok; 2 usage; 78 invalid spec (nothing changed); 1 kernel refused, interface
missing or state unusable (the previous rules stay in place).
"""

from __future__ import annotations

import json
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from vipctl import __version__
from vipctl import plan as planning
from vipctl import state as statefile
from vipctl.errors import SpecError, VipctlError
from vipctl.partition import Layout, bucket_of
from vipctl.spec import Spec, json_schema, load_spec

app = typer.Typer(
    name="vipctl",
    help="One Virtual IP served by many members, partitioned by source address in the kernel.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[Path, typer.Argument(help="cluster spec (YAML or JSON)", show_default=False)]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        envvar="VIPCTL_STATE_DIR",
        help="state directory [default: /var/lib/vipctl]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def fail(exc: VipctlError) -> NoReturn:
    if isinstance(exc, SpecError):
        for line in exc.problems:
            typer.echo(f"{exc.source}: {line}", err=True)
    else:
        typer.echo(f"vipctl: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _load(path: Path) -> Spec:
    try:
        return load_spec(path)
    except VipctlError as exc:
        fail(exc)


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
    spec = _load(spec_path)
    typer.echo(f"{spec_path}: ok (cluster {spec.cluster}, {len(spec.members)} members)")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors)."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def plan(
    spec_path: SpecArg,
    weights: Annotated[
        str | None, typer.Option("--weights", help="override weights: NAME=W,...")
    ] = None,
    down: Annotated[
        str | None, typer.Option("--down", help="plan as if these members were down: NAME,...")
    ] = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The partition vipctl would apply, and what moves compared with what is live."""
    spec = _load(spec_path)
    try:
        overrides = planning.parse_weights(weights, spec) if weights is not None else None
        down_set = planning.parse_names(down, spec) if down is not None else None
        previous = _previous(spec, state_dir)
        layout = planning.desired(spec, previous, weights=overrides, down=down_set)
    except VipctlError as exc:
        fail(exc)
    data = planning.report(spec, planning.Change(previous, layout))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(planning.render_report(data))


@app.command()
def which(
    spec_path: SpecArg,
    source: Annotated[str, typer.Argument(help="client source address", show_default=False)],
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The member that packets from SOURCE reach (live table if any, else the spec's)."""
    spec = _load(spec_path)
    try:
        addr = ip_address(source)
    except ValueError:
        typer.echo(f"vipctl: '{source}' is not an IP address", err=True)
        raise typer.Exit(2) from None
    if addr.version not in spec.vip_families:
        typer.echo(f"vipctl: {source} is IPv{addr.version} but no VIP is", err=True)
        raise typer.Exit(2)
    try:
        layout, origin = _live_layout(spec, state_dir)
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


def _live_layout(spec: Spec, state_dir: str | None) -> tuple[Layout, str]:
    """The table packets meet now: the kernel's when the cluster is installed."""
    live = _kernel_table(spec)
    if live is not None:
        return live, "live"
    previous = _previous(spec, state_dir)
    return planning.desired(spec, previous), ("state" if previous else "spec")


def _kernel_table(spec: Spec) -> Layout | None:
    try:
        from vipctl import kernel
    except ImportError:  # bindings absent: only the spec can answer
        return None
    return kernel.live_layout(spec)


def main() -> None:
    try:
        app()
    except VipctlError as exc:  # pragma: no cover - commands catch their own
        typer.echo(f"vipctl: {exc}", err=True)
        sys.exit(exc.exit_code)

"""What every command shares: argument types, loading a spec, and the one place where a
VipctlError becomes a message on stderr and an exit code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from vipctl.errors import SpecError, VipctlError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

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
    """Print the error (one `field.path: message` line per spec problem) and exit."""
    if isinstance(exc, SpecError):
        for line in exc.problems:
            typer.echo(f"{exc.source}: {line}", err=True)
    else:
        typer.echo(f"vipctl: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def usage(message: str) -> NoReturn:
    """A malformed argument: exit 2."""
    typer.echo(f"vipctl: {message}", err=True)
    raise typer.Exit(2)


def load(path: Path) -> Spec:
    from vipctl.core.spec import load_spec  # pydantic + PyYAML: only commands that read a spec

    try:
        return load_spec(path)
    except VipctlError as exc:
        fail(exc)

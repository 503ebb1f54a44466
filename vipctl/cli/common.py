"""The argument types every typer command shares; printing, errors and loading a spec are
in cli/output.py (no typer) and re-exported here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vipctl.cli.output import echo, fail, load, usage
from vipctl.statefile import DEFAULT_STATE_DIR

__all__ = ["JsonOpt", "SpecArg", "StateDirOpt", "echo", "fail", "load", "usage"]

SpecArg = Annotated[Path, typer.Argument(help="cluster spec (YAML or JSON)", show_default=False)]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        envvar="VIPCTL_STATE_DIR",
        help=f"state directory [default: {DEFAULT_STATE_DIR}]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

"""Command-line argument types shared by every module that defines a command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

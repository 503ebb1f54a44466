"""What every command body shares, without typer: printing, and the one place where a
VipctlError becomes a message on stderr and an exit code.

Command bodies (cli/commands.py) use only this, so `vipctl.cli.fast` can run them without
importing typer; a body ends a command with SystemExit, which typer passes through.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from vipctl.errors import SpecError, VipctlError

if TYPE_CHECKING:
    from vipctl.core.spec import Spec


def echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(message + ("\n" if nl else ""))
    stream.flush()


def fail(exc: VipctlError) -> NoReturn:
    """Print the error (one `field.path: message` line per spec problem) and exit."""
    if isinstance(exc, SpecError):
        for line in exc.problems:
            echo(f"{exc.source}: {line}", err=True)
    else:
        echo(f"vipctl: {exc}", err=True)
    raise SystemExit(exc.exit_code)


def usage(message: str) -> NoReturn:
    """A malformed argument: exit 2."""
    echo(f"vipctl: {message}", err=True)
    raise SystemExit(2)


def bounded(option: str, value: float, low: float, high: float, unit: str = "") -> float:
    """A number from the command line, refused (exit 2) unless finite and in [low, high].

    typer has parsed it already (click's float(), which takes any length of digits and
    gives inf for 1e400; its ranges let nan through): the bodies check again so that the
    typer path and cli/fast.py refuse the same values, before anything is committed."""
    if not math.isfinite(value):
        usage(f"{option} must be a finite number, not {value}")
    if not low <= value <= high:
        usage(f"{option} must be between {low:g} and {high:g}{unit}, not {value:g}")
    return value


def load(path: Path) -> Spec:
    from vipctl.core.spec import load_spec  # pydantic: only commands that read a spec

    try:
        return load_spec(path)
    except VipctlError as exc:
        fail(exc)

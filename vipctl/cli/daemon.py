"""`vipctl daemon SPEC` (the service itself lives in vipctl/service/daemon.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from vipctl import statefile
from vipctl.cli.common import SpecArg, StateDirOpt


def command(
    spec_path: SpecArg,
    state_dir: StateDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every probe")] = False,
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="serve Prometheus metrics on ADDR:PORT (off by default)"),
    ] = None,
) -> None:
    """The service: apply, probe members, fail over and restore, reload on SIGHUP, notify
    systemd. SIGTERM leaves the rules in place."""
    from vipctl.cli.common import fail
    from vipctl.errors import VipctlError
    from vipctl.service import daemon

    try:
        directory = statefile.state_dir(state_dir)
    except VipctlError as exc:
        fail(exc)
    code = daemon.main(spec_path, directory, verbose=verbose, metrics=metrics)
    raise typer.Exit(code)

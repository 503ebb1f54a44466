"""`vipctl doctor SPEC`: the preflight checks of vipctl/host/doctor.py, printed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from vipctl.cli.common import JsonOpt, SpecArg, fail, load
from vipctl.errors import VipctlError


def command(
    spec_path: SpecArg,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="show problems only")] = False,
) -> None:
    """Check that this box can serve the spec: kernel, links, neighbours, forwarding,
    rp_filter, MTUs, VIP claims, ARP/ND announcement. Exit 1 on any error."""
    from vipctl import controller
    from vipctl.host import doctor

    spec = load(spec_path)
    try:
        findings = controller.preflight(spec)
    except VipctlError as exc:
        fail(exc)
    if as_json:
        typer.echo(
            json.dumps(
                {"cluster": spec.cluster, "checks": [f.to_json() for f in findings]}, indent=2
            )
        )
    else:
        typer.echo(doctor.format_findings(findings, verbose=not quiet), nl=False)
    if doctor.errors(findings):
        raise typer.Exit(1)

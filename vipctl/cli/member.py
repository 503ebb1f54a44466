"""`vipctl member SPEC NAME`: member-side setup (vipctl/host/member.py), printed or applied."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from vipctl import statefile
from vipctl.cli.common import SpecArg, StateDirOpt, fail, load, usage
from vipctl.errors import UsageError, VipctlError


def command(
    spec_path: SpecArg,
    name: Annotated[str, typer.Argument(help="member name in the spec", show_default=False)],
    apply: Annotated[
        bool, typer.Option("--apply", help="configure this host now (idempotent)")
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="undo --apply on this host")] = False,
    fmt: Annotated[
        str,
        typer.Option("--format", help="commands | networkd | ifupdown | netplan"),
    ] = "commands",
    interface: Annotated[
        str | None,
        typer.Option(
            "--interface",
            help="this member's interface towards the router "
            "[default: the one holding the member's address]",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Member-side setup: VIPs on lo, no ARP/ND for them, loose rp_filter.

    Prints the setup as commands or persistent configuration, or applies it to this host
    (run it on the member) with --apply; --remove undoes it (what --apply changed is
    recorded in the state directory).
    """
    from vipctl.host import member as setup_mod

    if apply and remove:
        usage("--apply and --remove exclude each other")
    if fmt not in setup_mod.FORMATS:  # narrows str to Format for mypy
        usage(f"--format is one of {', '.join(setup_mod.FORMATS)}")
    spec = load(spec_path)
    try:
        if name not in spec.member_names:
            raise UsageError(
                f"no member '{name}' in {spec_path} (members: {', '.join(spec.member_names)})"
            )
        changing = apply or remove
        iface = interface or (setup_mod.detect_interface(spec, name) if changing else None)
        if iface is None:
            if changing:
                raise UsageError(
                    f"member {name}'s address {spec.member(name).address} is not on this "
                    f"host: run this on the member, or pass --interface"
                )
            with contextlib.suppress(VipctlError):
                iface = setup_mod.detect_interface(spec, name)
        if iface is None:
            iface = "eth0"
            typer.echo(
                f"# note: {spec.member(name).address} is not on this host; assuming the "
                f"member's router link is eth0 (use --interface)",
                err=True,
            )
        setup = setup_mod.build_setup(spec, name, iface)
        if not changing:
            typer.echo(setup_mod.render(setup, fmt), nl=False)
            return
        directory = statefile.state_dir(state_dir)
        if apply:
            changes = setup_mod.apply_setup(setup, directory)
        else:
            changes = setup_mod.remove_setup(setup, directory)
        changes += second_chance(setup, apply)
    except VipctlError as exc:
        fail(exc)
    for line in changes:
        typer.echo(line)
    verb = "configured" if apply else "removed"
    typer.echo(f"{spec.cluster}/{name}: {verb}" + ("" if changes else " (nothing to change)"))


def second_chance(setup: Any, apply: bool) -> list[str]:
    """The member's half of the router's second chance (host/member.py): its nftables
    table installed (or removed), one transaction; what changed, as a line."""
    from vipctl.backends import nft
    from vipctl.host import member as setup_mod

    name = setup_mod.second_chance_table(setup)
    tables = [("ip", name), ("ip6", name)]
    if apply:
        gateways = setup_mod.gateways(setup.interface)
        batch = setup_mod.second_chance_batch(setup, gateways)
        via = ", ".join(gateways[f] for f in sorted(gateways)) or "no gateway found"
        what = f"nft: table {name} (second chance via {via})"
    else:
        batch = setup_mod.second_chance_removal(setup)
        what = f"nft: table {name} removed"
    return [what] if nft.replace_tables(batch, tables) else []

"""`vipctl lab up | probe | down`: the demo topology of vipctl/lab/ in network namespaces.

vipctl/lab is demo and test tooling: it runs from a source checkout (tests, bench and this
command use it there) and is left out of the Debian package (scripts/build-deb), where
`vipctl lab` says so instead of failing on an import.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated

import typer

from vipctl.cli.common import load
from vipctl.core.partition import bucket_of

app = typer.Typer(help="A demo cluster (router, members, client) in network namespaces.")

LAB_MISSING = (
    "vipctl: the lab tooling (vipctl.lab: topology, traffic, echo) is not installed. It is "
    "demo and test tooling that the Debian package leaves out; run `vipctl lab` from a "
    "source checkout (./scripts/install-deps, then .venv/bin/vipctl lab ...)"
)


def lab_installed() -> bool:
    return importlib.util.find_spec("vipctl.lab") is not None


@app.callback()
def _require_lab() -> None:
    # runs before every `vipctl lab` subcommand (not for --help)
    if not lab_installed():
        typer.echo(LAB_MISSING, err=True)
        raise typer.Exit(1)


LabPrefix = Annotated[
    str, typer.Option("--prefix", help="namespace name prefix", show_default=True)
]


def _vipctl() -> list[str]:
    return [sys.executable, "-m", "vipctl.cli"]


def _vipctl_in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *_vipctl(), *args]


@app.command("up")
def lab_up(
    members: Annotated[int, typer.Option("--members", min=1, max=29, help="member count")] = 3,
    mode: Annotated[str, typer.Option("--mode", help="broadcast | steer")] = "broadcast",
    key: Annotated[str, typer.Option("--key", help="mask | hash")] = "mask",
    bits: Annotated[int, typer.Option("--bits", min=1, max=16)] = 8,
    routers: Annotated[
        int,
        typer.Option(
            "--routers",
            min=1,
            max=2,
            help="2: an upstream BGP edge (ECMP, BFD) before two routers, each running "
            "`vipctl daemon` with BIRD",
        ),
    ] = 1,
    prefix: LabPrefix = "vlab",
) -> None:
    """Build the draft's topology and apply a cluster spec in its router."""
    import subprocess

    import yaml

    from vipctl.lab import topology as lab

    if mode not in ("broadcast", "steer") or key not in ("mask", "hash"):
        typer.echo("vipctl: --mode is broadcast|steer and --key is mask|hash", err=True)
        raise typer.Exit(2)
    if routers == 2:
        _lab_up_two(members, mode, key, bits, prefix)
        return
    typer.echo(f"building lab {prefix}: client, router, {members} members ...")
    topo = lab.build(prefix, members)
    spec_path = topo.workdir / "lab.yaml"
    spec_path.write_text(yaml.safe_dump(topo.spec("lab", mode=mode, key=key, bits=bits)))
    typer.echo(f"spec: {spec_path}")
    done = subprocess.run(
        _vipctl_in(
            topo.router_ns, "apply", str(spec_path), "--state-dir", str(topo.workdir / "state")
        ),
        check=False,
    )
    if done.returncode != 0:
        raise typer.Exit(done.returncode)
    typer.echo(
        f"lab {prefix} is up. Try: vipctl lab probe --prefix {prefix}; "
        f"ip netns exec {topo.router_ns} vipctl status --state-dir {topo.workdir / 'state'}"
    )


def _lab_up_two(members: int, mode: str, key: str, bits: int, prefix: str) -> None:
    import subprocess
    import time

    import yaml

    from vipctl.lab import topology as lab

    typer.echo(f"building lab {prefix}: client, upstream, 2 routers, {members} members ...")
    two = lab.build_two_routers(prefix, members)
    work = two.lab.workdir
    spec_path = work / "lab.yaml"
    spec_path.write_text(yaml.safe_dump(two.spec("lab", mode=mode, key=key, bits=bits)))
    typer.echo(f"spec: {spec_path}")
    for r in two.routers:
        daemon = ["daemon", str(spec_path), "--state-dir", str(work / r)]
        with open(work / f"daemon-{r}.log", "ab") as log:
            # detached (setsid -f); `lab down` ends it with the namespace's other processes
            subprocess.run(
                ["ip", "netns", "exec", r, "setsid", "-f", *_vipctl(), *daemon],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
            )
    deadline = time.monotonic() + 60
    while lab.upstream_paths(two, two.lab.vip4) != sorted(lab.ROUTER_LINK4):
        if time.monotonic() > deadline:
            typer.echo(
                f"vipctl: the routers did not both announce {two.lab.vip4} within 60 s; "
                f"logs: {work}/daemon-*.log (remove the lab with vipctl lab down --prefix "
                f"{prefix})",
                err=True,
            )
            raise typer.Exit(1)
        time.sleep(0.2)
    typer.echo(
        f"lab {prefix} is up: the upstream {two.upstream_ns} routes {two.lab.vip4} over both "
        f"routers. Try: vipctl lab probe --prefix {prefix}; "
        f"ip netns exec {two.routers[0]} vipctl status --state-dir {work / two.routers[0]}"
    )


@app.command("probe")
def lab_probe(
    sources: Annotated[int, typer.Option("--sources", min=1, max=16384)] = 4096,
    ipv6: Annotated[bool, typer.Option("--ipv6", help="probe the IPv6 VIP")] = False,
    prefix: LabPrefix = "vlab",
) -> None:
    """Send one UDP datagram from each of many sources; show who answered each share."""
    from vipctl import controller
    from vipctl.host import links
    from vipctl.lab import topology as lab
    from vipctl.lab import traffic

    topo = lab.discover(prefix)
    if topo is None:
        two = lab.discover_two(prefix)
        topo = two.lab if two is not None else None  # probed through the upstream
    if topo is None:
        typer.echo(f"vipctl: no lab '{prefix}' (run vipctl lab up)", err=True)
        raise typer.Exit(1)
    spec = load(topo.workdir / "lab.yaml")
    addrs = traffic.expand(topo.sources6 if ipv6 else topo.sources4, sources)
    with links.in_netns(topo.router_ns):
        found = controller.live_table(spec)
    if found is None:
        typer.echo("vipctl: the lab's cluster is not applied", err=True)
        raise typer.Exit(1)
    table = found[1][6 if ipv6 else 4]
    p = spec.partition
    expected = {a: table[bucket_of(a, p.key, p.bits, p.seed)] for a in addrs}
    replies = traffic.probe(topo, topo.vip6 if ipv6 else topo.vip4, addrs)
    per: dict[str, list[int]] = {m.name: [0, 0, 0] for m in spec.members}
    none = dup = wrong = 0
    for a in addrs:
        got = replies.get(a, [])
        owner = expected[a]
        if owner is not None:
            per[owner][0] += 1
        if not got:
            none += 1
        elif len(got) > 1:
            dup += 1
        elif got[0] != owner:
            wrong += 1
        else:
            per[got[0]][1] += 1
    typer.echo(
        f"{len(addrs)} sources -> {topo.vip6 if ipv6 else topo.vip4} "
        f"(mode {spec.mode}, key {p.key}, {p.buckets} buckets)"
    )
    typer.echo(f"{'member':8} {'expected':>8} {'answered':>8}  share")
    for name, (exp, ok, _) in per.items():
        bar = "#" * round(40 * ok / len(addrs))
        typer.echo(f"{name:8} {exp:8d} {ok:8d}  {bar}")
    typer.echo(f"no reply: {none}  two or more replies: {dup}  wrong member: {wrong}")
    if none or dup or wrong:
        raise typer.Exit(1)


@app.command("down")
def lab_down(prefix: LabPrefix = "vlab") -> None:
    """Remove the lab's namespaces and processes."""
    from vipctl.lab import topology as lab

    lab.destroy(prefix)
    typer.echo(f"lab {prefix} removed")

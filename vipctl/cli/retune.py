"""`rebalance --auto`, `plan --auto`, `status --load`: per-bucket load measured in the
kernel, the re-tuned table, and the heat strip picture (matplotlib, optional)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vipctl import statefile
from vipctl.cli.common import fail, usage
from vipctl.errors import VipctlError

if TYPE_CHECKING:
    from vipctl.controller import RetuneResult
    from vipctl.core.partition import Table
    from vipctl.core.spec import Spec

WindowOpt = Annotated[
    float, typer.Option("--window", min=0.1, help="measure each bucket's traffic for SECONDS")
]
ToleranceOpt = Annotated[
    float,
    typer.Option(
        "--tolerance", min=1.0, help="largest allowed load / weighted share of any member"
    ),
]
MetricOpt = Annotated[str, typer.Option("--metric", help="what load means: packets or bytes")]
PngOpt = Annotated[
    Path | None, typer.Option("--png", help="also draw the per-bucket load as a PNG heat strip")
]
METRICS = ("packets", "bytes")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        usage(f"--metric is packets or bytes, not '{metric}'")


def run_auto(
    spec: Spec,
    state_dir: str | None,
    *,
    window: float,
    tolerance: float,
    metric: str,
    dry_run: bool,
    as_json: bool = False,
    png: Path | None = None,
) -> None:
    """Measure, solve, apply (unless dry_run), print the report."""
    from vipctl import controller

    check_metric(metric)
    typer.echo(f"{spec.cluster}: measuring per-bucket {metric} for {window:g} s ...", err=True)
    try:
        result = controller.retune(
            spec,
            statefile.state_dir(state_dir),
            controller.Tuning(window=window, tolerance=tolerance, metric=metric, dry_run=dry_run),
        )
    except VipctlError as exc:
        fail(exc)
    data = report(spec, result, tolerance, dry_run)
    if png is not None:
        heat_strip(spec, result.solved.table, _values(result), png, metric)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(render(data))
    if not result.solved.reachable:
        typer.echo(f"vipctl: {result.solved.reason}", err=True)
        raise typer.Exit(1)


def _values(result: RetuneResult) -> list[float]:
    return [float(p if result.metric == "packets" else b) for p, b in result.load]


def report(spec: Spec, result: RetuneResult, tolerance: float, dry_run: bool) -> dict[str, Any]:
    s = result.solved
    applied = result.applied
    members = [
        {
            "name": m.name,
            "target": round(s.targets.get(m.name, 0.0), 6),
            "load_before": round(s.load_before.get(m.name, 0.0), 6),
            "load_after": round(s.load_after.get(m.name, 0.0), 6),
        }
        for m in spec.members
    ]
    return {
        "cluster": spec.cluster,
        "metric": result.metric,
        "window_s": result.window,
        "measured": int(s.total),
        "tolerance": tolerance,
        "imbalance_before": round(s.before, 4),
        "imbalance_after": round(s.after, 4),
        "reachable": s.reachable,
        "reason": s.reason,
        "moved": len(s.moved),
        "moved_buckets": list(s.moved),
        "moved_traffic": round(s.moved_load, 6),
        "dry_run": dry_run,
        "generation": applied.generation if applied is not None else result.generation,
        "members": members,
    }


def render(d: dict[str, Any]) -> str:
    lines = [
        f"cluster {d['cluster']}: {d['measured']} {d['metric']} in {d['window_s']:g} s; "
        f"imbalance (max load / weighted share) {d['imbalance_before']:.3f} -> "
        f"{d['imbalance_after']:.3f} (tolerance {d['tolerance']:g})"
    ]
    rows = [("member", "target", "load before", "load after")]
    for m in d["members"]:
        rows.append(
            (
                m["name"],
                f"{100 * m['target']:.1f}%",
                f"{100 * m['load_before']:.1f}%",
                f"{100 * m['load_after']:.1f}%",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if d["measured"] == 0:
        lines.append("no traffic to the VIPs during the window: nothing to re-tune")
    elif not d["reachable"]:
        lines.append("tolerance out of reach: nothing moved")
    elif d["moved"] == 0:
        lines.append("within tolerance: nothing moved")
    else:
        verb = "would move" if d["dry_run"] else "moved"
        buckets = ", ".join(str(b) for b in d["moved_buckets"][:16])
        more = " ..." if d["moved"] > 16 else ""
        lines.append(
            f"{verb} {d['moved']} buckets ({buckets}{more}), "
            f"{100 * d['moved_traffic']:.1f}% of the traffic"
            + ("" if d["dry_run"] else f"; generation {d['generation']}, live flows stay")
        )
    return "\n".join(lines)


def status_load(
    cluster: str | None,
    state_dir: str | None,
    *,
    window: float,
    metric: str,
    as_json: bool,
    png: Path | None,
) -> None:
    """`status --load`: each member's measured load against its target."""
    from vipctl import controller
    from vipctl.core import retune

    check_metric(metric)
    directory = statefile.state_dir(state_dir)
    try:
        names = [cluster] if cluster else controller.clusters(directory)
        if len(names) != 1:
            usage("--load measures one cluster: name it (vipctl status CLUSTER --load)")
        spec = controller.installed_spec(names[0], directory)
        typer.echo(f"{spec.cluster}: measuring per-bucket {metric} for {window:g} s ...", err=True)
        st, load = controller.measure(spec, directory, window)
    except VipctlError as exc:
        fail(exc)
    values = [float(p if metric == "packets" else b) for p, b in load]
    layout = st.layout
    targets = retune.targets(layout.weights, layout.down)
    loads = retune.member_loads(layout.table, values)
    total = sum(values)
    members: list[dict[str, Any]] = [
        {
            "name": m.name,
            "target": round(targets.get(m.name, 0.0), 6),
            "load": round(loads.get(m.name, 0.0) / total, 6) if total else 0.0,
            metric: int(loads.get(m.name, 0.0)),
        }
        for m in spec.members
    ]
    imbalance = retune.imbalance(layout.table, values, targets)
    if png is not None:
        heat_strip(spec, layout.table, values, png, metric)
    data = {
        "cluster": spec.cluster,
        "metric": metric,
        "window_s": window,
        "measured": int(total),
        "imbalance": round(imbalance, 4),
        "members": members,
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    lines = [
        f"cluster {spec.cluster}: {int(total)} {metric} in {window:g} s; imbalance "
        f"(max load / weighted share) {imbalance:.3f}"
    ]
    rows = [("member", "target", "load", "", metric)]
    for m in members:
        bar = "#" * round(40 * m["load"])
        rows.append(
            (
                m["name"],
                f"{100 * m['target']:.1f}%",
                f"{100 * m['load']:.1f}%",
                bar.ljust(40, "."),
                str(m[metric]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    typer.echo("\n".join(lines))


def heat_strip(spec: Spec, table: Table, values: list[float], path: Path, metric: str) -> None:
    """One cell per bucket: its load (top) and its owner (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        typer.echo(
            "vipctl: --png needs matplotlib (pip install matplotlib, or apt-get install "
            "python3-matplotlib); the report above is complete without it",
            err=True,
        )
        raise typer.Exit(1) from None
    names = [m.name for m in spec.members]
    owners = [[names.index(o) if o is not None else -1 for o in table]]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 2.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    image = top.imshow([values], aspect="auto", cmap="inferno", interpolation="nearest")
    top.set_yticks([])
    top.set_title(f"{spec.cluster}: {metric} per bucket ({len(table)} buckets)")
    fig.colorbar(image, ax=[top, bottom], label=metric, pad=0.01)
    palette = plt.get_cmap("tab10", max(len(names), 1))
    bottom.imshow(
        owners,
        aspect="auto",
        cmap=ListedColormap([palette(i) for i in range(len(names))]),
        interpolation="nearest",
        vmin=0,
        vmax=max(len(names) - 1, 1),
    )
    bottom.set_yticks([0], ["owner"])
    bottom.set_xlabel("bucket")
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        typer.echo(f"vipctl: cannot write {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    finally:
        plt.close(fig)
    typer.echo(f"heat strip written to {path}", err=True)

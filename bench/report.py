"""Results JSON -> PNG plots and docs/benchmarks.md (no kernel access)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import ROOT

DOCS = ROOT / "docs"
DOC_IMG = DOCS / "benchmarks"

LABELS = {
    "plain": "plain routing",
    "nftlb": "nftlb-style jhash map",
    "ctmark": "ct mark + policy routing",
}


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    mode, key, pin, bits = name.split("-")
    return f"vipctl {mode} {key}{'' if pin == 'pin' else ' no-pin'} (2**{bits[1:]})"


def _fmt(s: dict[str, Any] | None, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:g}{unit} ({s['min']:g}-{s['max']:g})"


# --------------------------------------------------------------------------- plots


def plots(res: dict[str, Any], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    dp = res.get("dataplane")
    if dp and dp.get("by_members"):
        by = dp["by_members"]
        ns = sorted(int(n) for n in by)
        names = [v for v in by[str(ns[0])] if all(v in by[str(n)] for n in ns)]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for v in names:
            med = [by[str(n)][v]["ratio"]["median"] for n in ns]
            lo = [m - by[str(n)][v]["ratio"]["min"] for m, n in zip(med, ns, strict=True)]
            hi = [by[str(n)][v]["ratio"]["max"] - m for m, n in zip(med, ns, strict=True)]
            ax1.errorbar(ns, med, yerr=[lo, hi], marker="o", capsize=3, label=label(v))
            raw = [by[str(n)][v]["raw"]["median"] / 1e6 for n in ns]
            ax2.plot(ns, raw, marker="o", label=label(v))
        ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax1.set(
            xscale="log",
            xticks=ns,
            xticklabels=[str(n) for n in ns],
            xlabel="members",
            ylabel="delivered pps / plain routing (same round)",
            title="Throughput vs members (ratio, median with min-max)",
        )
        ax2.set(
            xscale="log",
            xticks=ns,
            xticklabels=[str(n) for n in ns],
            xlabel="members",
            ylabel="delivered Mpps (median)",
            title="Absolute rate (noisy, shared CPU)",
        )
        ax1.legend(fontsize=7)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-members.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    if dp and dp.get("by_bits"):
        bb = dp["by_bits"]
        series: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for name, row in bb.items():
            if name == "plain":
                continue
            mode, key, _pin, b = name.split("-")
            series.setdefault(f"{mode}-{key}", []).append((int(b[1:]), row["ratio"]))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s, pts in sorted(series.items()):
            pts.sort()
            xs = [b for b, _ in pts]
            med = [r["median"] for _, r in pts]
            lo = [m - r["min"] for m, (_, r) in zip(med, pts, strict=True)]
            hi = [r["max"] - m for m, (_, r) in zip(med, pts, strict=True)]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=f"vipctl {s}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set(
            xlabel="partition bits (2**bits buckets)",
            ylabel="delivered pps / plain routing (same round)",
            title="Throughput vs bucket count (4 members, pinning on)",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-bits.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    cp = res.get("controlplane", {}).get("commit_grid")
    if cp:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n in sorted({r["members"] for r in cp}):
            rows = sorted((r for r in cp if r["members"] == n), key=lambda r: r["bits"])
            ax.plot(
                [2 ** r["bits"] for r in rows],
                [r["total_ms"]["median"] for r in rows],
                marker="o",
                label=f"{n} members",
            )
        ax.axhline(100, color="grey", lw=0.8, ls="--", label="goal 100 ms")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="buckets",
            ylabel="compute + render + commit, ms (median)",
            title="Control plane: one swap into the kernel",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-controlplane.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


# --------------------------------------------------------------------------- goals


def goals(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, status) for every goal of issue 7 plus the brief's partition goal."""
    out: list[tuple[str, str, str]] = []

    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    dp = res.get("dataplane", {})
    four = dp.get("by_members", {}).get("4", {})
    for name, goal, what in (
        ("steer-mask-pin-b8", 1.0, "steer with pinning >= 1.0x plain forwarding (4 members)"),
        ("steer-hash-pin-b8", 1.0, "  same, hash key"),
        ("broadcast-mask-pin-b8", 0.6, "broadcast with pinning >= 0.6x (4 members, issue 4)"),
        ("broadcast-mask-pin-b8", 0.75, "broadcast, 4 members >= 0.75x (pinning on, default)"),
        ("broadcast-mask-nopin-b8", 0.75, "  same, pinning off"),
    ):
        r = four.get(name, {}).get("ratio")
        med = r["median"] if r else None
        out.append((what, _fmt(r, "x"), status(None if med is None else med >= goal)))
    for mk, r in dp.get("bits_16_over_4", {}).items():
        out.append(
            (f"throughput at 2**16 >= 0.95x 2**4 ({mk})", _fmt(r, "x"), status(r["median"] >= 0.95))
        )
    part = res.get("partition", {}).get("entries")
    if part:
        r = part["fresh_ms"]
        out.append(
            (
                "compute + per-port entries, 64 x 65536 <= 50 ms (brief)",
                _fmt(r, " ms"),
                status(r["median"] <= 50),
            )
        )
    cp = res.get("controlplane", {})
    row = next(
        (r for r in cp.get("commit_grid", []) if r["members"] == 64 and r["bits"] == 16), None
    )
    out.append(
        (
            "compute + render + commit, 64 x 65536 <= 100 ms",
            _fmt(row["total_ms"], " ms") if row else "n/a",
            status(None if row is None else row["total_ms"]["median"] <= 100),
        )
    )
    for bits in ("bits8", "bits16"):
        sw = cp.get("swap", {}).get(bits)
        out.append(
            (
                f"one swap <= 5 ms (controller.apply, weight change, 2**{bits[4:]})",
                _fmt(sw["apply_swap_ms"], " ms") if sw else "n/a",
                status(None if sw is None else sw["apply_swap_ms"]["median"] <= 5),
            )
        )
    fo = res.get("failover", {})
    for kind, goal in (("probe", 400), ("link", 100)):
        what = f"failover p95 <= {goal} ms ({'probe failure' if kind == 'probe' else 'link loss'})"
        r = fo.get(kind)
        if r is None:
            out.append((what, str(fo.get("pending", fo.get("error", "n/a")))[:120], "pending"))
            continue
        ok = r["p95_ms"] is not None and r["p95_ms"] <= goal and not r["timeouts"]
        note = "" if r["trials"] >= 20 else f", only {r['trials']} trials (quick run)"
        out.append(
            (
                what,
                f"p95 {r['p95_ms']} ms; {_fmt(r['failover_ms'], ' ms')}, "
                f"{r['trials']} trials, {r['timeouts']} timeouts{note}",
                status(ok),
            )
        )
    # the daemon's RSS is bench/cli.py's figure (its own section, kept across runs): one
    # figure, one place
    return out


# --------------------------------------------------------------------------- markdown


def markdown(res: dict[str, Any], images: list[str]) -> str:
    m = res["machine"]
    L: list[str] = []
    a = L.append
    a("# Benchmarks\n")
    a(
        "Generated by `bench/run` from "
        f"`{res['results_file']}`; do not edit by hand, re-run the command instead.\n"
    )
    a("## How these figures were made\n")
    a("```sh")
    a(res["command"])
    a("```\n")
    a(
        f"- Date: {res['started']} (took {res['duration_s']:.0f} s; "
        f"{'quick subset' if res['quick'] else 'full run'})"
    )
    a(
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gb']} GB; kernel {m['kernel']}; "
        f"{m['os']}; Python {m['python']}"
    )
    a(f"- Tools: {m['nft']}; {m['trafgen']}; {m['iperf3']}")
    a(
        f"- Load average at start: {m['loadavg_at_start']}. The 2 CPUs were SHARED with other "
        "jobs: absolute rates move from run to run, so every data-plane figure is a ratio to "
        "plain routed forwarding measured in the same round (rounds interleave all variants in "
        "rotated order), given as median (min-max) over rounds."
    )
    a(
        "- Topology: `vipctl.lab` (client -> router -> N members, veth, one namespace each). "
        "trafgen, one CPU, in the client namespace sends 60-byte UDP frames to the VIP from "
        f"{res.get('dataplane', {}).get('flows', 4096)} sources spread evenly over every "
        "bucket width; packets are counted as handed to the members at the router's member "
        "ports. Generator and forwarding share the CPU, so pps measures the router's per-packet "
        "cost end to end."
    )
    a(
        "- Plain routing: no vipctl table, `ip route VIP/32 via member1`. nftlb-style: netdev "
        "ingress `meta mark set jhash ip saddr mod N seed S`, then `ether daddr set` and "
        "`fwd to` through anonymous maps keyed by the mark. ct mark: `ct mark set jhash ... "
        "offset 1` for new flows, `meta mark set ct mark`, one `ip rule fwmark` + table per "
        "member.\n"
    )
    a("## Goals (issue 7)\n")
    a("| goal | measured: median (min-max) | status |")
    a("|---|---|---|")
    for g, v, s in goals(res):
        a(f"| {g} | {v} | {s} |")
    a("")
    a(
        "The data-plane rows are this run's, with "
        f"{res.get('dataplane', {}).get('flows', 4096)} sources: they compare variants and "
        "show how throughput scales with members and buckets. The default ruleset's cost "
        'with 65536 sources (where per-flow state shows) is in "Flow affinity\'s cost" '
        "below (`python -m bench.affinity`), and the command-line times and the daemon's "
        'RSS in "Command line" (`python -m bench.cli`): each figure in one place, with '
        "the command that measured it.\n"
    )
    dp = res.get("dataplane")
    if dp:
        a("## Data plane: packets/s delivered, ratio to plain routing\n")
        for img in images:
            if img.endswith("-members.png") or img.endswith("members.png"):
                a(f"![throughput vs members]({img})\n")
        by = dp["by_members"]
        ns = sorted(by, key=int)
        names: list[str] = []
        for n in ns:
            names += [v for v in by[n] if v not in names]
        a("| variant | " + " | ".join(f"{n} members" for n in ns) + " |")
        a("|---|" + "---|" * len(ns))
        for v in names:
            a(
                f"| {label(v)} | "
                + " | ".join(_fmt(by[n][v]["ratio"], "x") if v in by[n] else "" for n in ns)
                + " |"
            )
        a("")
        a(
            "Plain routing, absolute delivered pps (median, min-max): "
            + "; ".join(f"{n} members {_fmt(by[n]['plain']['raw'])}" for n in ns)
            + ".\n"
        )
        if dp.get("by_bits"):
            a("### Bucket count (4 members, pinning on)\n")
            for img in images:
                if img.endswith("bits.png"):
                    a(f"![throughput vs bits]({img})\n")
            a("| variant | ratio to plain | raw pps |")
            a("|---|---|---|")
            for v, row in dp["by_bits"].items():
                a(f"| {label(v)} | {_fmt(row['ratio'], 'x')} | {_fmt(row['raw'])} |")
            a("")
            a(
                "2**16 over 2**4, same round: "
                + "; ".join(f"{k} {_fmt(r, 'x')}" for k, r in dp["bits_16_over_4"].items())
                + ".\n"
            )
        if dp.get("tcp_gbps"):
            a("### iperf3 TCP, one stream (4 members)\n")
            a("| variant | Gbit/s | ratio to plain |")
            a("|---|---|---|")
            for v, row in dp["tcp_gbps"].items():
                a(f"| {label(v)} | {_fmt(row['raw'])} | {_fmt(row['ratio'], 'x')} |")
            a("")
    pin = _pinpath()
    if pin:
        a("### Where the pinning cost goes (steer, 4 members, 4096 flows)\n")
        a(
            f"`{pin['command']}`, {pin['date']}, {pin['rounds']} interleaved rounds. "
            "`ring` = trafgen's TX_RING frames (headers past Ethernet in page fragments: every "
            "transport-header read at netdev ingress copies); `linear` = its sendto path "
            "(linear frames, as NIC drivers build them). The lean rows are hand-written "
            "rulesets (bench/pinpath.py), measured here for reference.\n"
        )
        frames = list(pin["frames"])
        a("| variant | " + " | ".join(f"{f}: ratio to plain" for f in frames) + " |")
        a("|---|" + "---|" * len(frames))
        for name in pin["frames"][frames[0]]:
            cells = [_fmt(pin["frames"][f][name]["ratio"], "x") for f in frames]
            a(f"| {name} | " + " | ".join(cells) + " |")
        a("")
    cp = res.get("controlplane")
    if cp:
        a("## Control plane\n")
        ap = cp["apply_process"]
        a(
            "`vipctl apply` as a process (`ip netns exec ROUTER python -m vipctl.cli apply`), "
            "4 members, steer, ms:\n"
        )
        a("| buckets | first install | unchanged (no-op) | weight change |")
        a("|---|---|---|---|")
        for bits in ("bits8", "bits16"):
            r = ap[bits]
            a(
                f"| 2**{bits[4:]} | {_fmt(r['first_install_ms'])} | {_fmt(r['unchanged_ms'])} | "
                f"{_fmt(r['weight_change_ms'])} |"
            )
        a(f"\nStarting Python and importing vipctl.cli alone: {_fmt(ap['python_import_ms'])} ms.\n")
        a(
            "In-process swap (`controller.apply`, weight change), and the same swap taken "
            "apart, ms:\n"
        )
        a(
            "| buckets | controller.apply | observe (list table) | build + render | "
            "commit (libnftables) | verify (list again) |"
        )
        a("|---|---|---|---|---|---|")
        for bits in ("bits8", "bits16"):
            s = cp["swap"].get(bits)
            if not s:
                continue
            ph = s["phases_ms"]
            a(
                f"| 2**{bits[4:]} | {_fmt(s['apply_swap_ms'])} | {_fmt(ph['observe'])} | "
                f"{_fmt(ph['build_render'])} | {_fmt(ph['commit'])} | {_fmt(ph['verify'])} |"
            )
        a("")
        a(
            "compute + render + commit of a weight-change swap (steer, mask, pinning on; table "
            "names already live, so no observe/verify), ms:\n"
        )
        for img in images:
            if img.endswith("controlplane.png"):
                a(f"![control plane]({img})\n")
        a("| members | buckets | compute | render | commit | total |")
        a("|---|---|---|---|---|---|")
        for r in cp["commit_grid"]:
            a(
                f"| {r['members']} | 2**{r['bits']} | {_fmt(r['compute_ms'])} | "
                f"{_fmt(r['render_ms'])} | {_fmt(r['commit_ms'])} | {_fmt(r['total_ms'])} |"
            )
        a("")
    part = res.get("partition")
    if part:
        e = part["entries"]
        a("### Partition engine (pure Python, no kernel)\n")
        a(
            f"compute + per-port value/mask entries, 64 members x 65536 buckets: fresh "
            f"{_fmt(e['fresh_ms'], ' ms')}, after one failure {_fmt(e['failover_ms'], ' ms')} "
            f"({e['entries_total']} entries in all; goal 50 ms).\n"
        )
        a("| members | buckets | compute | render (build_table + transaction) | total |")
        a("|---|---|---|---|---|")
        for r in part["grid"]:
            a(
                f"| {r['members']} | 2**{r['bits']} | {_fmt(r['compute_ms'])} | "
                f"{_fmt(r['render_ms'])} | {_fmt(r['total_ms'])} |"
            )
        a("")
    fo = res.get("failover", {})
    if "probe" in fo:
        a("## Failover (vipctl daemon, 4 members, steer, TCP probes)\n")
        a(
            "Time from the failure being in place to the daemon's new table being live (the "
            "member owns no bucket in the live owners map), and from undoing it to the member "
            f"being back; health: {fo['health']}.\n"
        )
        a("| failure | trials | timeouts | failover ms | p95 | restore ms |")
        a("|---|---|---|---|---|---|")
        for kind in ("probe", "link"):
            r = fo[kind]
            a(
                f"| {kind} | {r['trials']} | {r['timeouts']} | {_fmt(r['failover_ms'])} | "
                f"{r['p95_ms']} | {_fmt(r['restore_ms'])} |"
            )
        a("")
    errs = res.get("controlplane", {}).get("errors", []) + res.get("dataplane", {}).get(
        "errors", []
    )
    if errs:
        a("## Errors seen during the run\n")
        for e in sorted(set(errs)):
            a(f"- `{e}`")
        a("")
    notes = res.get("notes", [])
    if notes:
        a("## Notes\n")
        for n in notes:
            a(f"- {n}")
        a("")
    return "\n".join(L)


def _pinpath() -> dict[str, Any] | None:
    """bench/pinpath.py's last results, if it was run."""
    path = Path(__file__).resolve().parent / "results" / "pinpath.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write(res: dict[str, Any], json_path: Path) -> list[Path]:
    stem = json_path.with_suffix("")
    pngs = plots(res, stem)
    DOC_IMG.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    for p in pngs:
        dest = DOC_IMG / p.name.rsplit("-", 1)[1]  # stable name: members.png, bits.png
        shutil.copyfile(p, dest)
        images.append(f"benchmarks/{dest.name}")
    doc = DOCS / "benchmarks.md"
    # sections written by their own runs (bench/cli.py, bench/affinity.py,
    # bench/routerfailover.py, bench/routercost.py, bench/chaos): keep them
    kept = ""
    old = doc.read_text() if doc.exists() else ""
    tags = ("router-failover-bench", "affinity-bench", "cli-bench", "routercost-bench")
    for tag in (*tags, "chaos-bench"):
        begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
        if begin in old and end in old:
            kept += "\n" + old[old.index(begin) : old.index(end)] + end + "\n"
    doc.write_text(markdown(res, images) + kept)
    return [*pngs, DOCS / "benchmarks.md"]

"""Flow affinity's cost: vipctl's data plane against a hand-written stateless reference.

One command, as root, from the repository root:

    .venv/bin/python -m bench.affinity [--rounds 5] [--seconds 2] [--out FILE]

Lab: `vipctl.lab.topology`, 4 members, mask key, 8 bits, trafgen 60-byte UDP frames from
65536 sources (10.99.0.0/16, random), one CPU; packets/s handed to the members (router
member-port tx counters). Every variant is measured in the SAME round as plain routing and
the reference; rounds interleave all variants in a rotated order; the figures are the
per-round ratios' median (min-max).

Variants:
- plain: routed forwarding, `ip route VIP/32 via member 1` (no table);
- reference: the hand-written stateless ruleset (`REFERENCE` below): `ip saddr & 0.0.0.255
  vmap` with 256 elements -> a per-member chain that counts, rewrites the MAC and `fwd`s;
- steer / broadcast: vipctl with pinning moving (the default), steady state;
- steer-25pct-moving: vipctl steer right after a rebalance that moved 25% of the buckets
  (weights 3:1:1:1), trafgen running through the change, so its flows in the moving
  buckets are recorded and every one of their packets takes the transition path;
- steer-measuring: vipctl steer with the per-bucket load counting of `rebalance --auto`
  switched on (controller.measure_start: a counter per bucket in the cluster's own rule);
- steer-measuring-chain: the earlier design, the counting in an ingress chain of its own
  (render.nft.measure_batches);
- steer-always / steer-off: pinning always (every flow pinned on every packet) and off.
TCP: iperf3 -P 8 for 3 s, plain vs vipctl steer and broadcast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import dataplane
from bench.common import PY, ROOT, netns, nft, replace_section, run, summary
from bench.dataplane import measure_pps, prepare, start_iperf_servers, stop
from vipctl.core.spec import parse_spec
from vipctl.lab import topology as labmod
from vipctl.render.nft import measure_batches

CLUSTER = "aff"
MEMBERS = 4
UDP_PORT = 9


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str = "steer"
    pinning: str = "moving"
    moving: bool = False  # measure right after a rebalance that moves 25% of the buckets
    # per-bucket load counting on: "inline" (what rebalance --auto does), "chain" (the
    # earlier design: a base chain of its own, render.nft.measure_batches)
    measuring: str = ""


PLAIN = Variant("plain")
REF = Variant("reference")
VARIANTS = [
    PLAIN,
    REF,
    Variant("steer"),
    Variant("broadcast", mode="broadcast"),
    Variant("steer-25pct-moving", moving=True),
    Variant("steer-measuring", measuring="inline"),
    Variant("steer-measuring-chain", measuring="chain"),
    Variant("steer-always", pinning="always"),
    Variant("steer-off", pinning="off"),
]


def trafgen_conf(lab: labmod.Lab) -> str:
    """60-byte UDP frames to the VIP from 10.99.R.R (both bytes random: 65536 sources)."""
    return dataplane.trafgen_conf(lab, "drnd(), drnd()")


def reference(lab: labmod.Lab) -> str:
    """The hand-written stateless steer: one vmap of 256 buckets to per-member chains."""
    chains = []
    elems = []
    for m in lab.members:
        chains.append(
            f"  chain m{m.index} {{ counter name c{m.index} ether daddr set {m.mac} "
            f'fwd to "{m.port}"; }}'
        )
    for b in range(256):
        elems.append(f"0.0.0.{b} : goto m{1 + b % MEMBERS}")
    counters = "\n".join(f"  counter c{m.index} {{ }}" for m in lab.members)
    return (
        "table netdev ref {\n"
        f"{counters}\n" + "\n".join(chains) + "\n"
        f"  map b {{ type ipv4_addr : verdict; elements = {{ {', '.join(elems)} }}; }}\n"
        f'  chain in {{ type filter hook ingress device "{lab.uplink}" priority 0; '
        "policy accept;\n"
        f"    ip daddr {lab.vip4} ip saddr & 0.0.0.255 vmap @b\n  }}\n}}\n"
    )


def spec_path(lab: labmod.Lab, v: Variant, work: Path) -> Path:
    spec = lab.spec(CLUSTER, mode=v.mode, key="mask", bits=8, vips=[lab.vip4])
    spec["pinning"] = {"mode": v.pinning}
    path = work / f"{v.name}.json"
    path.write_text(json.dumps(spec))
    return path


def vipctl(lab: labmod.Lab, work: Path, *args: str) -> None:
    netns(lab.router_ns, [PY, "-m", "vipctl.cli", *args, "--state-dir", str(work / "st")])


def install(lab: labmod.Lab, v: Variant, work: Path, conf: Path) -> None:
    r = lab.router_ns
    if v is PLAIN:
        m1 = lab.member(1)
        run(["ip", "-n", r, "route", "add", f"{lab.vip4}/32", "via", m1.address, "dev", m1.port])
        return
    if v is REF:
        nft(r, reference(lab))
        return
    path = spec_path(lab, v, work)
    vipctl(lab, work, "apply", str(path), "--skip-checks")
    if v.measuring == "chain":
        start, _stop = measure_batches(parse_spec(json.loads(path.read_text())))
        nft(r, start)
    elif v.measuring:
        _start_counting(lab, path, work)
    if v.moving:
        gen = _trafgen(lab, conf)
        try:
            time.sleep(0.5)
            vipctl(lab, work, "rebalance", str(path), "--weights", "web1=3")
        finally:
            _kill(gen)


def _start_counting(lab: labmod.Lab, path: Path, work: Path) -> None:
    """What `rebalance --auto` does at the start of its window (controller.measure_start:
    one apply of the table with the per-bucket counters in the cluster's own rule)."""
    code = (
        "import sys; from pathlib import Path; from vipctl import controller; "
        "from vipctl.core.spec import load_spec; "
        "controller.measure_start(load_spec(Path(sys.argv[1])), Path(sys.argv[2]))"
    )
    netns(lab.router_ns, [PY, "-c", code, str(path), str(work / "st")])


def uninstall(lab: labmod.Lab, v: Variant, work: Path) -> None:
    r = lab.router_ns
    if v is PLAIN:
        run(["ip", "-n", r, "route", "del", f"{lab.vip4}/32"])
    elif v is REF:
        nft(r, "delete table netdev ref\n")
    else:
        nft(r, f"delete table netdev vipctl_{CLUSTER}\n")
        subprocess.run(["rm", "-rf", str(work / "st")], check=False)


def _trafgen(lab: labmod.Lab, conf: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *("ip", "netns", "exec", lab.client_ns, "trafgen", "-o", "eth0", "-c", str(conf)),
            *("-P", "1", "--no-sock-mem", "--notouch-irq"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def transition_state(lab: labmod.Lab) -> dict[str, int]:
    """Buckets in transition and recorded flows, read back from the kernel."""
    out = netns(lab.router_ns, ["nft", "-j", "list", "table", "netdev", f"vipctl_{CLUSTER}"])
    items = json.loads(out.stdout)["nftables"]
    moving = 0
    flows = 0
    for i in items:
        m = i.get("map")
        if not m:
            continue
        if m["name"].startswith("owners4"):
            for key, verdict in m.get("elem", []):
                if str(verdict.get("goto", {}).get("target", "")).startswith("mv4_"):
                    lo, hi = (
                        key["range"] if isinstance(key, dict) and "range" in key else (key, key)
                    )
                    moving += int(hi.split(".")[-1]) - int(lo.split(".")[-1]) + 1
        if m["name"].startswith("flows4"):
            flows += len(m.get("elem", []))
    return {"moving_buckets": moving, "recorded_flows": flows}


def measure_tcp8(lab: labmod.Lab, seconds: float) -> float:
    proc = netns(
        lab.client_ns,
        [
            *("iperf3", "-c", lab.vip4, "-B", "10.99.3.7", "-P", "8", "-t", str(seconds)),
            *("-J", "--connect-timeout", "3000"),
        ],
        check=False,
        timeout=seconds + 20,
    )
    data = json.loads(proc.stdout or "{}")
    if "error" in data or proc.returncode != 0:
        raise RuntimeError(f"iperf3: {data.get('error', proc.stderr.strip())}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def ratios(values: dict[str, list[float]], base: str) -> dict[str, Any]:
    return {
        n: summary([a / b for a, b in zip(v, values[base], strict=True) if b > 0], 3)
        for n, v in values.items()
    }


BEGIN, END = "<!-- affinity-bench -->", "<!-- /affinity-bench -->"
LABELS = {
    "plain": "plain routing (no table)",
    "reference": "hand-written stateless steer (`REFERENCE`: 256-element vmap)",
    "steer": "vipctl steer, pinning moving (default), steady state",
    "broadcast": "vipctl broadcast, pinning moving (default), steady state",
    "steer-25pct-moving": "vipctl steer, 25% of buckets in transition, flows recorded",
    "steer-measuring": "vipctl steer while `rebalance --auto` measures (counters in its rule)",
    "steer-measuring-chain": "per-bucket counters in a base chain of their own (earlier)",
    "steer-always": "vipctl steer, pinning always (every flow pinned)",
    "steer-off": "vipctl steer, pinning off",
}


def _cell(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def markdown(res: dict[str, Any]) -> str:
    """The docs section: ratios to plain and to the reference, TCP, the plot."""
    rows = [
        "| ruleset | pps (median) | ratio to plain | ratio to reference |",
        "|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        pps = res["pps"].get(name, {})
        if name not in res["ratio_to_plain"]:
            continue  # a variant this run did not measure (--variants)
        rows.append(
            f"| {label} | {pps.get('median', 0):,.0f} | {_cell(res['ratio_to_plain'][name])} "
            f"| {_cell(res['ratio_to_reference'][name])} |"
        )
    moving = res.get("transition") or [{}]
    tcp = [
        f"| {n} | {s['median']:.2f} | {_cell(res['tcp_ratio_to_plain'][n])} |"
        for n, s in res["tcp_gbps"].items()
        if s.get("n")
    ]
    return "\n".join(
        [
            BEGIN,
            "## Flow affinity's cost (pinning moving)",
            "",
            f"`{res['command']}` ({res['when']}): {res['members']} members, mask key, 8 bits, "
            f"trafgen 60-byte UDP frames from {res['flows']} sources, one CPU; packets/s "
            "handed to the members; every variant measured in the same interleaved rounds; "
            "median (min-max) of the per-round ratios. The transition variant: right after "
            f"a rebalance that moved {moving[0].get('moving_buckets', '?')} of 256 buckets "
            f"with trafgen running, {moving[0].get('recorded_flows', '?')} flows recorded.",
            "",
            "![ratios](benchmarks/affinity.png)",
            "",
            *rows,
            "",
            "TCP, `iperf3 -P 8` for 3 s from the client to the VIP (members' own stacks):",
            "",
            "| ruleset | Gbit/s (median) | ratio to plain |",
            "|---|---|---|",
            *tcp,
            *_swap_lines(),
            END,
            "",
        ]
    )


def _swap_lines() -> list[str]:
    """The daemon's failover swap, from bench/swap.py's last run (if any)."""
    path = ROOT / "bench" / "results" / "swap.json"
    if not path.exists():
        return []
    s = json.loads(path.read_text())
    c, u = s["cached"], s["uncached"]
    return [
        "",
        f"The daemon's failover swap in-process (`{s['command'].strip()}`: 3 members, steer, "
        f"8 bits, {c['n']} failovers each): {c['median_ms']} ms median "
        f"({c['min_ms']}-{c['max_ms']}) with the daemon's cache of its last commit, "
        f"{u['median_ms']} ms ({u['min_ms']}-{u['max_ms']}) reading the kernel first.",
    ]


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in LABELS if n != "plain" and n in res["ratio_to_plain"]]
    med = [res["ratio_to_plain"][n]["median"] for n in names]
    lo = [m - res["ratio_to_plain"][n]["min"] for m, n in zip(med, names, strict=True)]
    hi = [res["ratio_to_plain"][n]["max"] - m for m, n in zip(med, names, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(names, med, xerr=[lo, hi], color="#4a7ab5", capsize=3)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("packets/s relative to plain routing (same round)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(section: str, doc: Path = ROOT / "docs" / "benchmarks.md") -> None:
    result = ROOT / "bench" / "results" / "affinity.json"
    if result.exists():
        try:
            plot(json.loads(result.read_text()), ROOT / "docs" / "benchmarks" / "affinity.png")
        except ImportError:
            print("matplotlib missing: no plot (pip install matplotlib)", file=sys.stderr)
    replace_section(doc, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.affinity")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tcp-rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "affinity.json"))
    ap.add_argument(
        "--write-docs", action="store_true", help="replace the section in docs/benchmarks.md"
    )
    ap.add_argument("--report", help="only render the docs section from this JSON file")
    ap.add_argument(
        "--variants", help="only these (comma-separated; plain and reference always run)"
    )
    a = ap.parse_args(argv)
    variants = VARIANTS
    if a.variants:
        wanted = {"plain", "reference", *a.variants.split(",")}
        variants = [v for v in VARIANTS if v.name in wanted]
    if a.report:
        write_docs(markdown(json.loads(Path(a.report).read_text())))
        return 0
    prefix = f"baff{os.getpid() % 10000}"
    lab = labmod.build(prefix, MEMBERS, echo=False)
    work = Path(f"/tmp/{prefix}")
    work.mkdir(parents=True, exist_ok=True)
    pps: dict[str, list[float]] = {v.name: [] for v in variants}
    seen: list[dict[str, int]] = []
    try:
        prepare(lab)
        conf = work / "udp.trafgen"
        conf.write_text(trafgen_conf(lab))
        for r in range(a.rounds):
            k = (r * 3) % len(variants)
            for v in variants[k:] + variants[:k]:
                install(lab, v, work, conf)
                try:
                    if v.moving:
                        seen.append(transition_state(lab))
                    pps[v.name].append(measure_pps(lab, conf, a.seconds, 0.5)["delivered_pps"])
                finally:
                    uninstall(lab, v, work)
            print(
                f"round {r + 1}: " + ", ".join(f"{n}={x[-1]:.0f}" for n, x in pps.items()),
                file=sys.stderr,
            )
        tcp: dict[str, list[float]] = {"plain": [], "steer": [], "broadcast": []}
        tvars = [PLAIN, Variant("steer"), Variant("broadcast", mode="broadcast")]
        for m in lab.members:  # the members' own stacks take TCP
            nft(m.ns, "delete table netdev bench_sink\n")
        servers = start_iperf_servers(lab)
        try:
            for r in range(a.tcp_rounds):
                for v in tvars[r % 3 :] + tvars[: r % 3]:
                    install(lab, v, work, conf)
                    try:
                        tcp[v.name].append(measure_tcp8(lab, 3.0))
                    finally:
                        uninstall(lab, v, work)
        finally:
            stop(servers)
    finally:
        labmod.destroy(prefix)
    result = {
        "command": "python -m bench.affinity " + " ".join(argv or sys.argv[1:]),
        "flows": 65536,
        "members": MEMBERS,
        "pps": {n: summary(v, 0) for n, v in pps.items()},
        "pps_rounds": pps,
        "ratio_to_plain": ratios(pps, "plain"),
        "ratio_to_reference": ratios(pps, "reference"),
        "transition": seen,
        "tcp_gbps": {n: summary(v, 3) for n, v in tcp.items()},
        "tcp_ratio_to_plain": ratios(tcp, "plain"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    if a.write_docs:
        write_docs(markdown(result))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "ratio_to_plain",
                    "ratio_to_reference",
                    "transition",
                    "tcp_ratio_to_plain",
                )
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

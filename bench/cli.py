"""The command line as an operator meets it: each vipctl command as a whole process.

    .venv/bin/python -m bench.cli [--rounds 15] [--write-docs]

Builds a 4-member lab (vipctl.lab.topology, namespaces prefixed bcli<pid>), writes the
cluster's spec as YAML, compiles vipctl's bytecode (as an installed package has it), applies
the cluster in its router, then runs every command as `ip netns exec ROUTER python -m
vipctl.cli ...` once per round, in an order rotated every round and interleaved with
`python -c pass` (the floor: the interpreter and `ip netns exec` alone), and reports the
median wall time of each. Then the RSS of `vipctl daemon` (4 members, probes running),
with the lab's 2**8-bucket spec and with a 2**16-bucket one.
Writes bench/results/cli-<UTC>.json; --write-docs replaces the section between the
`cli-bench` markers in docs/benchmarks.md (bench/report.py keeps that section).
Nothing outside the lab's namespaces is touched; the lab is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.common import PY, ROOT, machine, replace_section

GOALS_MS = {
    "--version": 150,
    "validate": 150,
    "which": 150,
    "plan": 150,
    "status": 250,
    "apply": 250,
    "rebalance": 250,
}
RSS_GOAL_MB = 60.0
BEGIN, END = "<!-- cli-bench -->", "<!-- /cli-bench -->"


def _commands(spec: Path, state: Path) -> dict[str, list[str]]:
    sd = ["--state-dir", str(state)]
    return {
        "python -c pass": [PY, "-c", "pass"],
        "--version": ["--version"],
        "validate": ["validate", str(spec)],
        "which": ["which", str(spec), "10.99.0.7", *sd],
        "plan": ["plan", str(spec), *sd],
        "status": ["status", *sd],
        "apply": ["apply", str(spec), *sd],
        # alternating weights: every run moves buckets and commits
        "rebalance": ["rebalance", str(spec), "--weights", "web1=WEIGHT", *sd],
    }


def _run(ns: str, argv: list[str]) -> float:
    full = argv if argv[0] == PY else [PY, "-m", "vipctl.cli", *argv]
    t0 = time.perf_counter()
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *full], capture_output=True, text=True, check=False
    )
    took = (time.perf_counter() - t0) * 1000.0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} -> {done.returncode}: {done.stderr.strip()}")
    return took


def _daemon_rss(ns: str, spec: Path, state: Path, settle_s: float = 5.0) -> dict[str, float]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, PY, "-m", "vipctl.cli", "daemon", str(spec),
         "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(settle_s)  # the first apply done, every member probed many times
        status = Path(f"/proc/{proc.pid}/status").read_text()  # ip netns exec execs PY
        kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in status.splitlines())
              if k in ("VmRSS", "VmHWM")}  # fmt: skip
        assert proc.poll() is None, "the daemon exited"
        return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_mb": round(kb["VmHWM"] / 1024, 1)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def measure(rounds: int) -> dict[str, Any]:
    from vipctl.lab import topology

    prefix = f"bcli{os.getpid()}"
    started = time.time()
    facts = machine()
    topo = topology.build(prefix, 4)
    try:
        ns = topo.router_ns
        # YAML, as operators write specs (examples/); PyYAML is part of what they wait for
        spec = topo.workdir / "bench.yaml"
        state = topo.workdir / "state"
        spec.write_text(yaml.safe_dump(topo.spec("bench", mode="steer", key="mask", bits=8)))
        # the bytecode an installed package carries (pip and Debian compile it; a checkout
        # writes it on the first run unless PYTHONDONTWRITEBYTECODE is set, as it is on
        # some machines): every command would otherwise compile its modules at each start
        subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "vipctl")], check=True)
        cmds = _commands(spec, state)
        _run(ns, cmds["apply"])
        names = list(cmds)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds + 1):  # round 0 warms the page cache, not counted
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                argv = [a.replace("WEIGHT", str(1 + r % 2)) for a in cmds[name]]
                took = _run(ns, argv)
                if r:
                    times[name].append(took)
                if name != "python -c pass":  # the floor next to every command
                    floor = _run(ns, cmds["python -c pass"])
                    if r:
                        times["python -c pass"].append(floor)
        rss = _daemon_rss(ns, spec, state)
        # the same daemon with a 2**16-bucket table (bench/controlplane.py measures it so)
        big = topo.workdir / "bench16.yaml"
        big.write_text(yaml.safe_dump(topo.spec("bench16", mode="steer", key="mask", bits=16)))
        rss16 = _daemon_rss(ns, big, topo.workdir / "state16")
    finally:
        topology.destroy(prefix)
    return {
        "command": f".venv/bin/python -m bench.cli --rounds {rounds}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "machine": facts,
        "rounds": rounds,
        "median_ms": {n: round(statistics.median(v), 1) for n, v in times.items()},
        "min_ms": {n: round(min(v), 1) for n, v in times.items()},
        "max_ms": {n: round(max(v), 1) for n, v in times.items()},
        "daemon": rss,
        "daemon_bits16": rss16,
    }


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        BEGIN,
        "## Command line: whole-process times (issue 16)",
        "",
        "```sh",
        res["command"] + " --write-docs",
        "```",
        "",
        f"- Date: {res['date']} (took {res['seconds']} s); {m['cpu']}, {m['cpus']} CPUs; "
        f"kernel {m['kernel']}; Python {m['python']}; load average at start "
        f"{m['loadavg_at_start']}",
        "- A 4-member lab (steer, mask, 2**8 buckets, 2 VIPs), every command as "
        "`ip netns exec ROUTER python -m vipctl.cli ...`, wall time of the whole process; "
        f"{res['rounds']} rounds, order rotated each round, `python -c pass` run after every "
        "command (the floor: interpreter + `ip netns exec`). The spec is YAML; vipctl's "
        "bytecode is compiled first, as an installed package has it. `rebalance` alternates "
        "web1's weight 1/2, so each run moves buckets and commits; the first move (in the "
        "uncounted warm-up round) records UDP flows for `pinning.record_ms` (1 s) by design, "
        "the later ones move the same buckets back and forth within their transition (one "
        "transaction).",
        "",
        "| command | median ms (min-max) | goal | status |",
        "|---|---|---|---|",
    ]
    for name, med in res["median_ms"].items():
        goal = GOALS_MS.get(name)
        status = "" if goal is None else ("met" if med <= goal else "MISSED")
        rng = f"{res['min_ms'][name]}-{res['max_ms'][name]}"
        lines.append(
            f"| `{name}` | {med} ({rng}) | {f'<= {goal} ms' if goal else 'floor'} | {status} |"
        )
    d = res["daemon"]
    rss_ok = "met" if d["rss_mb"] <= RSS_GOAL_MB else "MISSED"
    lines += [
        f"| daemon RSS after 5 s (peak) | {d['rss_mb']} MB ({d['peak_mb']} MB) "
        f"| <= {RSS_GOAL_MB:g} MB | {rss_ok} |",
    ]
    d16 = res.get("daemon_bits16")
    if d16:
        ok16 = "met" if d16["peak_mb"] <= RSS_GOAL_MB else "MISSED"
        lines.append(
            f"| same, 2**16 buckets (peak) | {d16['rss_mb']} MB ({d16['peak_mb']} MB) "
            f"| <= {RSS_GOAL_MB:g} MB | {ok16} |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_docs(section: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    replace_section(path, BEGIN, END, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    res = measure(args.rounds)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"cli-{stamp}.json").write_text(json.dumps(res, indent=2))
    section = markdown(res)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()

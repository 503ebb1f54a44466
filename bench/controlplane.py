"""Control-plane benchmarks that need the kernel, each in a namespace of its own.

* ``apply_process``: ``vipctl apply`` as an operator runs it (a process under
  ``ip netns exec ROUTER``): first install, unchanged re-apply, weight change; bits 8 and 16.
* ``swap``: in-process ``controller.apply`` with a weight change at 2**8 and 2**16 buckets,
  plus the phases it is made of (observe, build+render, commit, verify) timed one by one.
* ``commit_grid``: compute + render + commit of a swap for members x bits, in a namespace
  with 64 veth ports (the lab tops out at 29 members).
* ``daemon_rss``: RSS of ``vipctl daemon``.

The ``inner-*`` subcommands run INSIDE a benchmark namespace (``ip netns exec NS python -m
bench.controlplane inner-... ``) and print JSON; the outer functions start them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import PY, netns, run, summary
from vipctl.lab import topology as labmod

CLUSTER = "bench"


def _spec(lab: labmod.Lab, bits: int, bump: int = 0, mode: str = "steer") -> dict[str, Any]:
    spec = lab.spec(CLUSTER, mode=mode, key="mask", bits=bits, vips=[lab.vip4])
    if bump:
        spec["members"][0]["weight"] = 1 + bump
    return spec


ERRORS: list[str] = []


def _vipctl(lab: labmod.Lab, *args: str) -> float:
    """Milliseconds of one ``vipctl ARGS`` process in the router namespace.

    A failure is recorded in ERRORS (reported in the docs, not hidden) and timed anyway."""
    t0 = time.perf_counter()
    proc = netns(lab.router_ns, [PY, "-m", "vipctl.cli", *args], check=False)
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        err = proc.stderr.strip().replace("\n", " | ")[-300:]
        ERRORS.append(f"vipctl {args[0]} exited {proc.returncode}: {err}")
    return ms


def apply_process(lab: labmod.Lab, work: Path, repeats: int) -> dict[str, Any]:
    state = work / "state-cli"
    out: dict[str, Any] = {}
    for bits in (8, 16):
        specs = []
        for bump in (0, 1):
            p = work / f"cli-{bits}-{bump}.json"
            p.write_text(json.dumps(_spec(lab, bits, bump)))
            specs.append(str(p))
        fresh: list[float] = []
        same: list[float] = []
        change: list[float] = []
        for _ in range(repeats):
            _vipctl(lab, "down", CLUSTER, "--state-dir", str(state))
            fresh.append(_vipctl(lab, "apply", specs[0], "--state-dir", str(state)))
            same.append(_vipctl(lab, "apply", specs[0], "--state-dir", str(state)))
            change.append(_vipctl(lab, "apply", specs[1], "--state-dir", str(state)))
        _vipctl(lab, "down", CLUSTER, "--state-dir", str(state))
        out[f"bits{bits}"] = {
            "first_install_ms": summary(fresh, 1),
            "unchanged_ms": summary(same, 1),
            "weight_change_ms": summary(change, 1),
        }
    # The floor under every figure above: starting Python and importing vipctl.
    start = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        netns(lab.router_ns, [PY, "-c", "import vipctl.cli"])
        start.append((time.perf_counter() - t0) * 1000)
    out["python_import_ms"] = summary(start, 1)
    return out


def swap(lab: labmod.Lab, work: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bits in (8, 16):
        spec_paths = []
        for bump in (0, 1):
            p = work / f"swap-{bits}-{bump}.json"
            p.write_text(json.dumps(_spec(lab, bits, bump)))
            spec_paths.append(str(p))
        proc = netns(
            lab.router_ns,
            [
                PY,
                "-m",
                "bench.controlplane",
                "inner-swap",
                *spec_paths,
                "--state-dir",
                str(work / f"state-swap-{bits}"),
                "--repeats",
                str(repeats),
            ],
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            ERRORS.append(f"in-process swap at 2**{bits}: {proc.stderr.strip()[-300:]}")
            continue
        out[f"bits{bits}"] = json.loads(proc.stdout)
    return out


def inner_swap(spec_paths: list[str], state_dir: Path, repeats: int) -> dict[str, Any]:
    from vipctl import controller
    from vipctl.backends import nft as kernel
    from vipctl.core.spec import load_spec
    from vipctl.host import links
    from vipctl.render.nft import build_table, transaction

    specs = [load_spec(p) for p in spec_paths]
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    controller.apply(specs[0], state_dir)
    first = (time.perf_counter() - t0) * 1000
    apply_ms: list[float] = []
    for r in range(repeats):
        t0 = time.perf_counter()
        res = controller.apply(
            specs[(r + 1) % 2], state_dir, controller.ApplyOptions(want_diff=False)
        )
        apply_ms.append((time.perf_counter() - t0) * 1000)
        assert res.changed
    # The same swap taken apart, to show where the time goes.
    phases: dict[str, list[float]] = {
        k: [] for k in ("observe", "build_render", "commit", "verify")
    }
    layouts = [
        controller.apply(s, state_dir, controller.ApplyOptions(dry_run=True)).layout
        for s in specs
    ]
    wiring = links.wiring(specs[0])
    for r in range(repeats):
        i = r % 2
        t0 = time.perf_counter()
        live = kernel.observe_structure(specs[i].cluster)
        t1 = time.perf_counter()
        assert live is not None
        table = build_table(specs[i], layouts[i], wiring, 1000 + r)
        batch = transaction(table, live.observed)
        t2 = time.perf_counter()
        kernel.commit(batch)
        t3 = time.perf_counter()
        kernel.verify(table, 1000 + r, whole=False)
        t4 = time.perf_counter()
        for k, a, b in (
            ("observe", t0, t1),
            ("build_render", t1, t2),
            ("commit", t2, t3),
            ("verify", t3, t4),
        ):
            phases[k].append((b - a) * 1000)
    kernel.delete_table(specs[0].cluster)
    return {
        "first_install_ms": round(first, 2),
        "apply_swap_ms": summary(apply_ms, 2),
        "phases_ms": {k: summary(v, 2) for k, v in phases.items()},
        "goal_ms": 5,
    }


def commit_grid(prefix: str, members: list[int], bits: list[int], repeats: int) -> list[Any]:
    """compute + render + commit in a namespace with max(members) veth ports."""
    ns = f"{prefix}-cp"
    n = max(members)
    run(["ip", "netns", "add", ns])
    try:
        lines = [
            "link set lo up",
            "link add u0 type veth peer name u0p",
            "link set u0 up",
            "link set u0p up",
        ]
        for i in range(1, n + 1):
            lines += [
                f"link add p{i} type veth peer name q{i}",
                f"link set p{i} up",
                f"link set q{i} up",
            ]
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")
        proc = netns(
            ns,
            [
                PY,
                "-m",
                "bench.controlplane",
                "inner-grid",
                "--members",
                ",".join(map(str, members)),
                "--bits",
                ",".join(map(str, bits)),
                "--repeats",
                str(repeats),
            ],
            timeout=900,
        )
        return list(json.loads(proc.stdout))
    finally:
        run(["ip", "netns", "del", ns], check=False)


def inner_grid(members: list[int], bits_list: list[int], repeats: int) -> list[dict[str, Any]]:
    from pyroute2 import IPRoute

    from bench.partition import fake_wiring, observed_for, spec_for, weights
    from vipctl.backends import nft as kernel
    from vipctl.core.partition import compute
    from vipctl.render.nft import Observed, build_table, transaction
    from vipctl.render.wiring import Wiring

    with IPRoute() as ipr:
        index = {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in ipr.get_links()}
    rows: list[dict[str, Any]] = []
    for n in members:
        wiring = Wiring(
            ifindex={"u0": index["u0"], **{f"p{i}": index[f"p{i}"] for i in range(1, n + 1)}},
            macs=fake_wiring(n).macs,
        )
        for bits in bits_list:
            spec = spec_for(n, bits)
            layout = compute(bits, weights(n))
            kernel.commit(transaction(build_table(spec, layout, wiring, 1), Observed()))
            observed = observed_for(spec, n)
            parts: dict[str, list[float]] = {"compute": [], "render": [], "commit": [], "total": []}
            for r in range(repeats):
                t0 = time.perf_counter()
                new = compute(bits, weights(n, bump=1 + r % 2), previous=layout)
                t1 = time.perf_counter()
                batch = transaction(build_table(spec, new, wiring, 2 + r), observed)
                t2 = time.perf_counter()
                kernel.commit(batch)
                t3 = time.perf_counter()
                layout = new
                parts["compute"].append((t1 - t0) * 1000)
                parts["render"].append((t2 - t1) * 1000)
                parts["commit"].append((t3 - t2) * 1000)
                parts["total"].append((t3 - t0) * 1000)
            kernel.delete_table(spec.cluster)
            rows.append(
                {"members": n, "bits": bits, **{f"{k}_ms": summary(v, 2) for k, v in parts.items()}}
            )
    return rows


def daemon_rss(lab: labmod.Lab, work: Path) -> dict[str, Any]:
    spec = work / "daemon.json"
    spec.write_text(json.dumps(_spec(lab, 16)))
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.router_ns,
            PY,
            "-m",
            "vipctl.cli",
            "daemon",
            str(spec),
            "--state-dir",
            str(work / "state-daemon"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    samples: list[float] = []
    try:
        for _ in range(10):
            time.sleep(0.5)
            if proc.poll() is not None:
                break
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]) / 1024)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not samples:
        err = proc.stderr.read() if proc.stderr else ""
        return {"error": f"daemon exited early ({proc.returncode}): {err[-400:]}", "goal_mb": 60}
    return {
        "bits": 16,
        "rss_mb": summary(samples, 1),
        "peak_mb": round(max(samples), 1),
        "goal_mb": 60,
    }


def run_all(prefix: str, work: Path, quick: bool) -> dict[str, Any]:
    """Everything above; builds and removes its own lab (4 members)."""
    repeats = 3 if quick else 7
    lab = labmod.build(f"{prefix}c", 4, echo=False)
    try:
        work.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {
            "apply_process": apply_process(lab, work, repeats),
            "swap": swap(lab, work, repeats if quick else 11),
            "daemon": daemon_rss(lab, work),
            "errors": ERRORS,
        }
    finally:
        labmod.destroy(f"{prefix}c")
    if quick:
        out["commit_grid"] = commit_grid(prefix, [4, 64], [8, 12, 16], 3)
    else:
        out["commit_grid"] = commit_grid(prefix, [4, 16, 64], [8, 10, 12, 14, 16], 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inner-swap")
    s.add_argument("specs", nargs=2)
    s.add_argument("--state-dir", type=Path, required=True)
    s.add_argument("--repeats", type=int, default=5)
    g = sub.add_parser("inner-grid")
    g.add_argument("--members", required=True)
    g.add_argument("--bits", required=True)
    g.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "inner-swap":
        result: Any = inner_swap(args.specs, args.state_dir, args.repeats)
    else:
        result = inner_grid(
            [int(x) for x in args.members.split(",")],
            [int(x) for x in args.bits.split(",")],
            args.repeats,
        )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

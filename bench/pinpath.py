"""Where the pinning cost goes: the shipped steer ruleset with pinning off and on, and the
pin map sized for different `max_flows`, ratio to plain routing.

Run as root from the repository root: `.venv/bin/python -m bench.pinpath` (about 3 min).
Builds its own 4-member lab (prefix `pinpath`), applies vipctl (steer, mask, 2**8) with each
variant's spec and measures delivered packets/s with trafgen (4096 flows), interleaved over
`--rounds` rounds. Prints median (min-max) ratios per frame layout:

- ring: trafgen's default TX_RING path. Its frames reach the router with only the
  Ethernet header in the skb's linear area and the rest in page fragments, so every rule
  that reads the transport header pays `skb_copy_bits` (plain routing never reads it).
- linear: trafgen's sendto path (`-b RATE`, rate above what the CPU can send), whose frames
  are linear like those a NIC driver builds. Same packets, same flows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
from pathlib import Path

from bench import dataplane as dp
from bench.common import PY, netns, nft
from vipctl import lab as labmod

# name -> pinning settings (None: plain routing)
VARIANTS: dict[str, dict[str, object] | None] = {
    "plain routing": None,
    "pinning off": {"enabled": False},
    "pinning on, max_flows 1048576 (default)": {"enabled": True},
    "pinning on, max_flows 65536": {"enabled": True, "max_flows": 65536},
    "pinning on, max_flows 4096 (= flows sent)": {"enabled": True, "max_flows": 4096},
}
FRAMES: dict[str, list[str]] = {"ring": [], "linear": ["-b", "5000000pps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", choices=["ring", "linear", "both"], default="both")
    args = ap.parse_args()
    frames = list(FRAMES) if args.frames == "both" else [args.frames]
    work = Path("/tmp/vipctl-bench-pinpath")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lab = labmod.build("pinpath", 4, echo=False)
    try:
        dp.prepare(lab)
        conf = work / "trafgen.cfg"
        conf.write_text(dp.trafgen_conf(lab))
        router = lab.router_ns
        m1 = lab.member(1)
        results: dict[tuple[str, str], list[float]] = {(f, n): [] for f in frames for n in VARIANTS}
        for rnd in range(args.rounds):
            names = list(VARIANTS)
            for name in names[rnd:] + names[:rnd]:
                pinning = VARIANTS[name]
                if pinning is None:
                    route = [f"{lab.vip4}/32", "via", m1.address, "dev", m1.port]
                    subprocess.run(["ip", "-n", router, "route", "add", *route], check=True)
                else:
                    spec = lab.spec("bench", mode="steer", key="mask", bits=8, vips=[lab.vip4])
                    spec["pinning"] = pinning
                    (work / "spec.json").write_text(json.dumps(spec))
                    argv = [PY, "-m", "vipctl.cli", "apply", str(work / "spec.json")]
                    netns(router, [*argv, "--state-dir", str(work / "state"), "--skip-checks"])
                for f in frames:
                    pps = dp.measure_pps(lab, conf, 2.0, 1.0, FRAMES[f])["delivered_pps"]
                    results[(f, name)].append(pps)
                if pinning is None:
                    subprocess.run(
                        ["ip", "-n", router, "route", "del", f"{lab.vip4}/32"], check=True
                    )
                else:
                    nft(router, "delete table netdev vipctl_bench\n")
                    shutil.rmtree(work / "state", ignore_errors=True)
        for f in frames:
            print(f"frames: {f}")
            base = results[(f, "plain routing")]
            for name in VARIANTS:
                values = results[(f, name)]
                ratios = [v / b for v, b in zip(values, base, strict=True)]
                kpps = statistics.median(values) / 1e3
                print(
                    f"  {name:42s} {statistics.median(ratios):.3f}x "
                    f"({min(ratios):.3f}-{max(ratios):.3f})  {kpps:.0f} kpps"
                )
    finally:
        labmod.destroy("pinpath")


if __name__ == "__main__":
    main()

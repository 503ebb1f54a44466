"""Where the pinning cost goes: variants of the steer pin path, ratio to plain routing.

Run as root from the repository root: `.venv/bin/python -m bench.pinpath` (about 2 min).
Builds its own 4-member lab (prefix `pinpath`), applies vipctl (steer, mask, 2**8), then
replaces the vip4 chain's rules with each variant and measures delivered packets/s with
trafgen (4096 flows), interleaved over 3 rounds. Prints median (min-max) ratios.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from pathlib import Path

from bench import dataplane as dp
from bench.common import PY, netns, nft
from vipctl import lab as labmod

PIN = "pin4_t600_n1048576"
FLOW = "ip saddr . th sport . ip daddr . th dport"
BUCKET = "meta mark set ip saddr & 0.0.0.255 map @buckets4_m8"
DELIVER = "fwd to meta mark map @ports"
VARIANTS: dict[str, list[str] | str | None] = {
    "plain routing": None,
    "vipctl, pinning off": "nopin",
    "vipctl, pinning on (as shipped)": [],
    "pin lookup + alive, no refresh": [
        "meta mark set 0",
        f"meta mark set {FLOW} map @{PIN}",
        f"meta mark @alive {DELIVER}",
        "meta mark set 0",
        BUCKET,
        f"meta l4proto {{ tcp, udp }} update @{PIN} {{ {FLOW} : meta mark }}",
        f"meta mark != 0 {DELIVER}",
        "drop",
    ],
    "pin lookup only (always misses)": [
        f"meta mark set {FLOW} map @{PIN}",
        BUCKET,
        f"meta mark != 0 {DELIVER}",
        "drop",
    ],
}


def main() -> None:
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
        results: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for rnd in range(3):
            names = list(VARIANTS)
            for name in names[rnd:] + names[:rnd]:
                variant = VARIANTS[name]
                if variant is None:
                    route = [f"{lab.vip4}/32", "via", m1.address, "dev", m1.port]
                    subprocess.run(["ip", "-n", router, "route", "add", *route], check=True)
                else:
                    spec = lab.spec("bench", mode="steer", key="mask", bits=8, vips=[lab.vip4])
                    spec["pinning"] = {"enabled": variant != "nopin"}
                    (work / "spec.json").write_text(json.dumps(spec))
                    netns(
                        router,
                        [
                            PY,
                            "-m",
                            "vipctl.cli",
                            "apply",
                            str(work / "spec.json"),
                            "--state-dir",
                            str(work / "state"),
                            "--skip-checks",
                        ],
                    )
                    if isinstance(variant, list) and variant:
                        nft(
                            router,
                            "flush chain netdev vipctl_bench vip4\n"
                            + "".join(
                                f"add rule netdev vipctl_bench vip4 {rule}\n" for rule in variant
                            ),
                        )
                pps = dp.measure_pps(lab, conf, 2.0, 1.0)["delivered_pps"]
                results[name].append(pps)
                if variant is None:
                    subprocess.run(
                        ["ip", "-n", router, "route", "del", f"{lab.vip4}/32"], check=True
                    )
                else:
                    nft(router, "delete table netdev vipctl_bench\n")
                    shutil.rmtree(work / "state", ignore_errors=True)
        base = results["plain routing"]
        for name, values in results.items():
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            print(
                f"{name:36s} {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
            )
    finally:
        labmod.destroy("pinpath")


if __name__ == "__main__":
    main()

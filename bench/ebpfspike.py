"""Spike: what flow pinning costs in eBPF, on the same bench as the nftables data plane.

Not part of vipctl. Run as root from the repository root after
`apt-get install -y clang libbpf-dev`: `.venv/bin/python -m bench.ebpfspike` (about 3 min).
Builds its own 4-member lab (prefix `ebpfspike`), compiles bench/ebpf/steer.c for it and
attaches it to the uplink's tc ingress (clsact, direct action), and measures delivered
packets/s with trafgen (4096 flows), interleaved with plain routing and vipctl's steer
(mask, 2**8, pinning on) over `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench import dataplane as dp
from bench.common import PY, ROOT, netns, nft, run
from bench.report import _fmt
from vipctl.lab import topology as labmod

SRC = ROOT / "bench" / "ebpf" / "steer.c"
# name -> clang defines (None: plain routing; "vipctl": vipctl steer with pinning)
VARIANTS: dict[str, list[str] | str | None] = {
    "plain routing": None,
    "eBPF steer, no pinning": ["-DNOPIN", "-DPIN_MAX=1048576"],
    "eBPF steer + LRU pin map (1048576)": ["-DPIN_MAX=1048576"],
    "eBPF steer + LRU pin map (8192)": ["-DPIN_MAX=8192"],
    "eBPF steer + LRU pin map, no timestamp": ["-DNOTS", "-DPIN_MAX=1048576"],
    "vipctl steer + pinning (nftables)": "vipctl",
}


def compile_variant(lab: labmod.Lab, defines: list[str], out: Path) -> None:
    links = json.loads(run(["ip", "-n", lab.router_ns, "-j", "link"]).stdout)
    ifindex = {link["ifname"]: link["ifindex"] for link in links}
    macs = {m.port: ", ".join("0x" + b for b in m.mac.split(":")) for m in lab.members}
    init = ", ".join(f"{{ {ifindex[m.port]}, {{ {macs[m.port]} }}, 1, 0 }}" for m in lab.members)
    vip = "".join(f"{int(x):02x}" for x in lab.vip4.split("."))
    run(
        [
            "clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
            f"-DMEMBER_INIT={init}", f"-DVIP=bpf_htonl(0x{vip})", *defines,
            "-c", str(SRC), "-o", str(out),
        ]
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    work = Path("/tmp/vipctl-bench-ebpfspike")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lab = labmod.build("ebpfspike", 4, echo=False)
    r, up, m1 = lab.router_ns, lab.uplink, lab.member(1)
    try:
        dp.prepare(lab)
        conf = work / "trafgen.cfg"
        conf.write_text(dp.trafgen_conf(lab))
        objs: dict[str, Path] = {}
        for i, (name, v) in enumerate(VARIANTS.items()):
            if isinstance(v, list):
                objs[name] = work / f"v{i}.o"
                compile_variant(lab, v, objs[name])
        results: dict[str, list[float]] = {n: [] for n in VARIANTS}
        names = list(VARIANTS)
        for rnd in range(args.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                v = VARIANTS[name]
                if v is None:
                    run(["ip", "-n", r, "route", "add", f"{lab.vip4}/32", "via", m1.address])
                elif v == "vipctl":
                    spec = lab.spec("bench", mode="steer", key="mask", bits=8, vips=[lab.vip4])
                    (work / "spec.json").write_text(json.dumps(spec))
                    argv = [PY, "-m", "vipctl.cli", "apply", str(work / "spec.json")]
                    netns(r, [*argv, "--state-dir", str(work / "state"), "--skip-checks"])
                else:
                    netns(r, ["tc", "qdisc", "add", "dev", up, "clsact"])
                    netns(r, ["tc", "filter", "add", "dev", up, "ingress", "bpf", "da", "obj",
                              str(objs[name]), "sec", "tc"])  # fmt: skip
                results[name].append(dp.measure_pps(lab, conf, 2.0, 0.7)["delivered_pps"])
                if v is None:
                    run(["ip", "-n", r, "route", "del", f"{lab.vip4}/32"])
                elif v == "vipctl":
                    nft(r, "delete table netdev vipctl_bench\n")
                    shutil.rmtree(work / "state", ignore_errors=True)
                else:
                    netns(r, ["tc", "qdisc", "del", "dev", up, "clsact"])
        for name, row in dp.ratios(results, "plain routing").items():
            print(f"{name:40s} {_fmt(row['ratio'], 'x')}")
    finally:
        labmod.destroy("ebpfspike")


if __name__ == "__main__":
    main()

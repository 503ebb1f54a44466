"""Where the pinning cost goes: the shipped steer ruleset with pinning off and on, and the
pin map sized for different `max_flows`, ratio to plain routing.

Run as root from the repository root: `.venv/bin/python -m bench.pinpath` (about 5 min).
Builds its own 4-member lab (prefix `pinpath`), applies vipctl (steer, mask, 2**8) with each
variant's spec (or installs lean hand-written steer rulesets, for reference)
and measures delivered packets/s with trafgen (4096 flows), interleaved over `--rounds`
rounds. Prints median (min-max) ratios per frame layout:

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
import subprocess
import sys
import time
from pathlib import Path

from bench import dataplane as dp
from bench.common import PY, ROOT, netns, nft
from bench.report import _fmt
from vipctl.lab import topology as labmod

RESULT = ROOT / "bench" / "results" / "pinpath.json"
# name -> pinning settings (None: plain routing; a str: a hand-written ruleset below)
VARIANTS: dict[str, dict[str, object] | str | None] = {
    "plain routing": None,
    "lean steer, no pinning (hand-written)": "lean",
    "lean steer + per-member pin sets (hand-written)": "leanpin",
    "pinning off": {"enabled": False},
    "pinning on, max_flows 1048576 (default)": {"enabled": True},
    "pinning on, max_flows 65536": {"enabled": True, "max_flows": 65536},
    "pinning on, max_flows 4096 (= flows sent)": {"enabled": True, "max_flows": 4096},
}


def lean_ruleset(lab: labmod.Lab, pin: bool) -> str:
    """A hand-written steer: one map lookup and `fwd` (+ the egress MAC
    rewrite); with `pin`, per-member dynamic sets looked up before the bucket map (key:
    source address and port, size 65536, as measured there). No counters, one VIP."""
    n = lab.n_members
    owner = [lab.members[min(b * n // 256, n - 1)] for b in range(256)]
    out = ["table netdev lean {"]
    if pin:
        for m in lab.members:
            out.append(
                f"  set pin_m{m.index} {{ type ipv4_addr . inet_service; size 65536; "
                "flags dynamic,timeout; timeout 10m; }"
            )
        elems = ", ".join(f"0.0.0.{b} : jump to{o.index}" for b, o in enumerate(owner))
        out.append(f"  map owner {{ type ipv4_addr : verdict; elements = {{ {elems} }} }}")
        rules = [
            f"ip daddr {lab.vip4} ip saddr . th sport @pin_m{m.index} "
            f'update @pin_m{m.index} {{ ip saddr . th sport }} fwd to "{m.port}"'
            for m in lab.members
        ]
        rules.append(f"ip daddr {lab.vip4} ip saddr & 0.0.0.255 vmap @owner")
        for m in lab.members:
            out.append(
                f"  chain to{m.index} {{ meta l4proto {{ tcp, udp }} update @pin_m{m.index} "
                f'{{ ip saddr . th sport }}; fwd to "{m.port}"; }}'
            )
    else:
        elems = ", ".join(f'0.0.0.{b} : "{o.port}"' for b, o in enumerate(owner))
        out.append(f"  map port_of {{ type ipv4_addr : iface_index; elements = {{ {elems} }} }}")
        rules = [f"ip daddr {lab.vip4} fwd to ip saddr & 0.0.0.255 map @port_of"]
    out.append(
        f'  chain in {{ type filter hook ingress device "{lab.uplink}" priority 0; '
        "policy accept;\n    " + "\n    ".join(rules) + "\n  }"
    )
    for m in lab.members:
        out.append(
            f'  chain out{m.index} {{ type filter hook egress device "{m.port}" priority 0; '
            f"policy accept; ip daddr {lab.vip4} ether daddr set {m.mac}; }}"
        )
    return "\n".join(out) + "\n}\n"


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
                elif isinstance(pinning, str):
                    nft(router, lean_ruleset(lab, pinning == "leanpin"))
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
                elif isinstance(pinning, str):
                    nft(router, "delete table netdev lean\n")
                else:
                    nft(router, "delete table netdev vipctl_bench\n")
                    shutil.rmtree(work / "state", ignore_errors=True)
        out: dict[str, object] = {
            "command": ".venv/bin/python -m bench.pinpath " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rounds": args.rounds,
            "frames": {},
        }
        for f in frames:
            print(f"frames: {f}")
            rows = dp.ratios({n: results[(f, n)] for n in VARIANTS}, "plain routing")
            for name, row in rows.items():
                print(f"  {name:48s} {_fmt(row['ratio'], 'x')}  pps {_fmt(row['raw'])}")
            out["frames"][f] = rows  # type: ignore[index]
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {RESULT.relative_to(ROOT)} (docs/benchmarks.md shows it on its next run)")
    finally:
        labmod.destroy("pinpath")


if __name__ == "__main__":
    main()

"""The router's own cost per packet, beside packets/s (issue 30).

One command, as root, from the repository root (after ./scripts/install-deps):

    .venv/bin/python -m bench.routercost [--rounds 30] [--seconds 1] [--write-docs]

Lab: `vipctl.lab.topology`, 4 members, trafgen 60-byte UDP frames from 65536 sources
(10.99.0.0/16, random) in the client namespace; packets/s handed to the members (router
member-port tx counters). Each variant has a lab of its own, installed once; a round
measures every lab back to back (one trafgen at a time). On these VMs trafgen and the
router's softirq share one CPU, so packets/s is generator-bound; the router's own cost is
taken against the generator's ceiling measured IN THE SAME ROUND: the router drops every
VIP packet at its first hook (the higher of an nftables ingress drop and an XDP drop), and

    router microseconds per packet = 1/pps - 1/ceiling

Every variant runs with XDP_PASS on the members' eth0 (a veth delivers XDP-redirected
frames only then, vipctl/lab/xdp.py), so all of them meet the same members. Rounds
interleave every variant in a rotated order; figures are median (min-max) over rounds of
the per-round values and ratios. Speed ratios are cost(reference) / cost(variant): above 1
means the variant costs the router less.

Variants: plain routing (`ip route VIP/32 via member 1`); vipctl steer on nftables, and its
hand-written reference (bench/affinity.py: a 256-element `ip saddr & 0.0.0.255 vmap`);
vipctl broadcast on nftables, and a hand-written broadcast (mark once at ingress, `dup` to
every port and drop, each port's egress `meta mark != i drop` + MAC rewrite); vipctl steer
on XDP (backend: xdp), and a minimal hand-written XDP steer (bench/ebpf/xdpref.c: 256
buckets in an array map, MAC rewrite, bpf_redirect).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import affinity, dataplane
from bench.common import PY, ROOT, machine, netns, nft, replace_section, run, summary
from vipctl.backends import xdp
from vipctl.backends.bpfmap import Map
from vipctl.host import links
from vipctl.lab import topology as labmod
from vipctl.lab import xdp as labxdp

MEMBERS = 4
CLUSTER = "rc"
REF_SRC = ROOT / "bench" / "ebpf" / "xdpref.c"
BEGIN, END = "<!-- routercost-bench -->", "<!-- /routercost-bench -->"


@dataclass(frozen=True)
class Variant:
    name: str
    label: str


VARIANTS = [
    Variant("ceiling-nft", "generator's ceiling: nftables ingress drop of every VIP packet"),
    Variant("ceiling-xdp", "generator's ceiling: XDP drop of every VIP packet"),
    Variant("plain", "plain routing (no table)"),
    Variant("nft-steer", "vipctl steer, nftables (mask, 2**8, pinning moving)"),
    Variant("ref-nft-steer", "hand-written nftables steer (256-element vmap)"),
    Variant("nft-broadcast", "vipctl broadcast, nftables (mask, 2**8, pinning moving)"),
    Variant("ref-nft-broadcast", "hand-written nftables broadcast (dup + egress mark filter)"),
    Variant("xdp-steer", "vipctl steer, XDP (backend: xdp, mask, 2**8, pinning moving)"),
    Variant("ref-xdp-steer", "hand-written minimal XDP steer (array map, bpf_redirect)"),
]
# variant -> its reference (speed ratios)
REFERENCES = {
    "nft-steer": "ref-nft-steer",
    "nft-broadcast": "ref-nft-broadcast",
    "xdp-steer": "ref-xdp-steer",
}


def ref_broadcast(lab: labmod.Lab) -> str:
    """KERNEL-NOTES' hand-written broadcast: the owner's mark stamped once at ingress from a
    256-element map, a `dup` to every port, the original dropped; each port's egress keeps
    only copies marked for it and rewrites the MAC."""
    idx = {m.index: m for m in lab.members}
    elems = ", ".join(f"0.0.0.{b} : {1 + b % MEMBERS}" for b in range(256))
    dups = " ".join(f'dup to "{m.port}"' for m in lab.members)
    out = [
        "table netdev refb {",
        f"  map owner {{ type ipv4_addr : mark; elements = {{ {elems} }}; }}",
        f'  chain in {{ type filter hook ingress device "{lab.uplink}" priority 0; policy accept;',
        f"    ip daddr {lab.vip4} meta mark set ip saddr & 0.0.0.255 map @owner {dups} drop",
        "  }",
    ]
    for i, m in idx.items():
        out += [
            f'  chain out{i} {{ type filter hook egress device "{m.port}" priority 0; '
            "policy accept;",
            f"    ip daddr {lab.vip4} meta mark != {i} drop",
            f"    ip daddr {lab.vip4} ether daddr set {m.mac}",
            "  }",
        ]
    return "\n".join([*out, "}"]) + "\n"


class Refs:
    """The hand-written XDP programs, built and pinned once per lab."""

    def __init__(self, lab: labmod.Lab, work: Path, bpffs: Path) -> None:
        self.lab = lab
        vip = "".join(f"{int(x):02x}" for x in lab.vip4.split("."))
        obj = work / "xdpref.o"
        run(
            [
                *("clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"),
                *(f"-DVIP=bpf_htonl(0x{vip})", "-c", str(REF_SRC), "-o", str(obj)),
            ]
        )
        self.pins = bpffs / "bench" / lab.prefix
        shutil.rmtree(self.pins, ignore_errors=True)
        self.pins.mkdir(parents=True, exist_ok=True)
        netns(
            lab.router_ns,
            [
                *("bpftool", "prog", "loadall", str(obj), str(self.pins / "prog")),
                *("pinmaps", str(self.pins / "maps")),
            ],
        )
        links = json.loads(run(["ip", "-n", lab.router_ns, "-j", "link"]).stdout)
        ifindex = {link["ifname"]: link["ifindex"] for link in links}
        keys, values = b"", b""
        for b in range(256):
            m = lab.member(1 + b % MEMBERS)
            mac = bytes(int(x, 16) for x in m.mac.split(":"))
            keys += b.to_bytes(4, "little")
            values += ifindex[m.port].to_bytes(4, "little") + mac + b"\0\0"
        with Map(str(self.pins / "maps" / "table"), 4, 12) as table:
            table.update_batch(keys, values, 256)

    def attach(self, prog: str) -> None:
        netns(
            self.lab.router_ns,
            [
                *("bpftool", "net", "attach", "xdpdrv", "pinned", str(self.pins / "prog" / prog)),
                *("dev", self.lab.uplink),
            ],
        )

    def detach(self) -> None:
        netns(self.lab.router_ns, ["bpftool", "net", "detach", "xdpdrv", "dev", self.lab.uplink])

    def remove(self) -> None:
        shutil.rmtree(self.pins, ignore_errors=True)


def _vipctl(lab: labmod.Lab, work: Path, backend: str, mode: str) -> None:
    spec = lab.spec(CLUSTER, mode=mode, key="mask", bits=8, vips=[lab.vip4])
    spec["backend"] = backend
    path = work / f"{backend}-{mode}.json"
    path.write_text(json.dumps(spec))
    argv = [PY, "-m", "vipctl.cli", "apply", str(path), "--state-dir", str(work / "st")]
    netns(lab.router_ns, [*argv, "--skip-checks"] if backend == "nftables" else argv)


def install(lab: labmod.Lab, v: Variant, work: Path, refs: Refs) -> None:
    r = lab.router_ns
    if v.name == "ceiling-nft":
        nft(
            r,
            f'table netdev ceil {{ chain in {{ type filter hook ingress device "{lab.uplink}" '
            f"priority 0; policy accept; ip daddr {lab.vip4} drop; }}; }}\n",
        )
    elif v.name == "ceiling-xdp":
        refs.attach("ref_drop")
    elif v.name == "plain":
        m1 = lab.member(1)
        run(["ip", "-n", r, "route", "add", f"{lab.vip4}/32", "via", m1.address, "dev", m1.port])
    elif v.name == "nft-steer":
        _vipctl(lab, work, "nftables", "steer")
    elif v.name == "nft-broadcast":
        _vipctl(lab, work, "nftables", "broadcast")
    elif v.name == "xdp-steer":
        _vipctl(lab, work, "xdp", "steer")
    elif v.name == "ref-nft-steer":
        nft(r, affinity.reference(lab))
    elif v.name == "ref-nft-broadcast":
        nft(r, ref_broadcast(lab))
    elif v.name == "ref-xdp-steer":
        refs.attach("ref_steer")
    else:
        raise ValueError(v.name)


def uninstall(lab: labmod.Lab, v: Variant, work: Path, refs: Refs) -> None:
    r = lab.router_ns
    if v.name == "ceiling-nft":
        nft(r, "delete table netdev ceil\n")
    elif v.name in ("ceiling-xdp", "ref-xdp-steer"):
        refs.detach()
    elif v.name == "plain":
        run(["ip", "-n", r, "route", "del", f"{lab.vip4}/32"])
    elif v.name in ("nft-steer", "nft-broadcast", "xdp-steer"):
        netns(r, [PY, "-m", "vipctl.cli", "down", CLUSTER, "--state-dir", str(work / "st")])
    elif v.name == "ref-nft-steer":
        nft(r, "delete table netdev ref\n")
    elif v.name == "ref-nft-broadcast":
        nft(r, "delete table netdev refb\n")


def test_frame(lab: labmod.Lab) -> bytes:
    """One of trafgen's frames: 60-byte UDP from 10.99.3.7 to the VIP."""

    def mac(text: str) -> bytes:
        return bytes(int(x, 16) for x in text.split(":"))

    vip = bytes(int(x) for x in lab.vip4.split("."))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0x4000, 64, 17, 0, bytes([10, 99, 3, 7]), vip)
    udp = struct.pack("!HHHH", 4000, 9, 26, 0) + bytes(18)
    return mac(lab.uplink_mac) + mac(lab.client_mac) + b"\x08\x00" + ip + udp


def program_ns(
    progs: dict[str, Path], frame: Path, runs: int, repeat: int = 2_000_000
) -> dict[str, Any]:
    """The programs alone: `bpftool prog run` (BPF_PROG_TEST_RUN) of each on one frame,
    `repeat` times in the kernel, ns per run (test-run overhead included, no redirect
    done); min and median of `runs` interleaved runs. Nothing else on the machine can make
    one program look slower than another for long here: each run takes a few ms."""
    got: dict[str, list[float]] = {n: [] for n in progs}
    for _ in range(runs):
        for name, pinned in progs.items():
            out = run(
                [
                    *("bpftool", "-j", "prog", "run", "pinned", str(pinned)),
                    *("data_in", str(frame), "repeat", str(repeat)),
                ]
            )
            got[name].append(float(json.loads(out.stdout)["duration"]))
    return {n: summary(v, 1) for n, v in got.items()}


def analyse(pps: dict[str, list[float]]) -> dict[str, Any]:
    """Per round: the ceiling (higher of the two drops), each variant's cost in us and its
    ratios; then median (min-max) over rounds."""
    rounds = len(pps["plain"])
    ceiling = [max(pps["ceiling-nft"][i], pps["ceiling-xdp"][i]) for i in range(rounds)]
    cost = {
        n: [1e6 * (1 / v[i] - 1 / ceiling[i]) for i in range(rounds)]
        for n, v in pps.items()
        if not n.startswith("ceiling")
    }
    out: dict[str, Any] = {
        "ceiling_pps": summary(ceiling, 0),
        "pps": {n: summary(v, 0) for n, v in pps.items()},
        "cost_us": {n: summary(c, 3) for n, c in cost.items()},
        "pps_ratio_to_plain": {
            n: summary([pps[n][i] / pps["plain"][i] for i in range(rounds)], 3) for n in cost
        },
        "speed_ratio_to_plain": {
            n: summary([cost["plain"][i] / c[i] for i, _ in enumerate(c)], 3)
            for n, c in cost.items()
        },
        "speed_ratio_to_reference": {
            n: summary([cost[ref][i] / cost[n][i] for i in range(rounds)], 3)
            for n, ref in REFERENCES.items()
        },
        "pps_ratio_to_reference": {
            n: summary([pps[n][i] / pps[ref][i] for i in range(rounds)], 3)
            for n, ref in REFERENCES.items()
        },
    }
    # Best of the rounds: other jobs on the machine only ever slow a measurement down, so
    # each variant's highest rate is the least disturbed estimate of what it can do.
    best = {n: max(v) for n, v in pps.items()}
    top = max(best["ceiling-nft"], best["ceiling-xdp"])
    best_cost = {n: 1e6 * (1 / best[n] - 1 / top) for n in cost}
    out["best"] = {
        "ceiling_pps": round(top),
        "pps": {n: round(best[n]) for n in cost},
        "cost_us": {n: round(c, 3) for n, c in best_cost.items()},
        "speed_ratio_to_plain": {n: round(best_cost["plain"] / c, 3) for n, c in best_cost.items()},
        "speed_ratio_to_reference": {
            n: round(best_cost[ref] / best_cost[n], 3) for n, ref in REFERENCES.items()
        },
    }
    return out


def _cell(s: dict[str, Any] | None, fmt: str = ".3f") -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def markdown(res: dict[str, Any]) -> str:
    a = res["analysis"]
    rows = [
        "| variant | pps | router us/packet | pps / plain | router speed / plain "
        "| router speed / its reference |",
        "|---|---|---|---|---|---|",
    ]
    best = a["best"]
    brows = [
        "| variant | best pps | router us/packet | router speed / plain "
        "| router speed / its reference |",
        "|---|---|---|---|---|",
        f"| generator's ceiling (higher drop) | {best['ceiling_pps']:,} | - | - | - |",
    ]
    for v in VARIANTS:
        if v.name.startswith("ceiling"):
            continue
        ref = best["speed_ratio_to_reference"].get(v.name)
        brows.append(
            f"| {v.label} | {best['pps'][v.name]:,} | {best['cost_us'][v.name]:.3f} "
            f"| {best['speed_ratio_to_plain'][v.name]:.3f} | {'-' if ref is None else ref} |"
        )
    for v in VARIANTS:
        if v.name.startswith("ceiling"):
            rows.append(f"| {v.label} | {_cell(a['pps'][v.name], ',.0f')} | - | - | - | - |")
            continue
        rows.append(
            f"| {v.label} | {_cell(a['pps'][v.name], ',.0f')} | {_cell(a['cost_us'][v.name])} "
            f"| {_cell(a['pps_ratio_to_plain'][v.name])} "
            f"| {_cell(a['speed_ratio_to_plain'][v.name])} "
            f"| {_cell(a['speed_ratio_to_reference'].get(v.name))} |"
        )
    return "\n".join(
        [
            BEGIN,
            "## The router's own cost (issue 30)",
            "",
            "```sh",
            res["command"],
            "```",
            "",
            f"{res['when']}, {res['rounds']} interleaved rounds of {res['seconds']} s, "
            f"{res['members']} members, trafgen 60-byte UDP frames from {res['flows']} "
            "sources, one CPU shared by generator and router (the machine was shared with "
            f"other jobs: load average at start {res['machine']['loadavg_at_start']}). "
            "The router's cost per packet is 1/pps - 1/ceiling, the ceiling being the higher "
            "of the two drop variants in the same round "
            f"({_cell(a['ceiling_pps'], ',.0f')} pps). Router speed ratios are "
            "cost(reference) / cost(variant), per round. Every variant runs with XDP_PASS on "
            "the members' eth0 (veth needs it to deliver XDP-redirected frames).",
            "",
            *rows,
            "",
            "Best of the rounds (other jobs only ever slow a measurement down: each "
            "variant's highest rate is its least disturbed figure; cost against the highest "
            "ceiling):",
            "",
            *brows,
            "",
            *_program_lines(res),
            *_goal_lines(a),
            *_earlier_lines(res),
            END,
            "",
        ]
    )


GOALS = {
    "xdp-steer": "XDP steer >= 0.95x the minimal hand-written XDP steer",
    "nft-steer": "nftables steer >= 0.95x its hand-written 256-element reference",
    "nft-broadcast": "broadcast >= 0.95x the hand-written broadcast",
}


def goal_medians(res: dict[str, Any]) -> dict[str, Any]:
    """One run's goal figures, kept by the next runs (the machine's noise is seen across
    runs, not within one)."""
    a = analyse(res["pps_rounds"])
    return {
        "when": res["when"],
        "loadavg": res["machine"]["loadavg_at_start"],
        **{n: a["speed_ratio_to_reference"][n]["median"] for n in GOALS},
    }


def earlier(path: Path) -> list[dict[str, Any]]:
    """The goal figures of the runs before this one (from the results file it replaces)."""
    if not path.exists():
        return []
    prev = json.loads(path.read_text())
    return [*prev.get("earlier", []), goal_medians(prev)][-5:]


def _goal_lines(a: dict[str, Any]) -> list[str]:
    """Issue 30's goals on the router's own speed (median of the per-round ratios)."""
    rows = ["| goal (router's own speed) | median (min-max) | status |", "|---|---|---|"]
    for name, goal in GOALS.items():
        s = a["speed_ratio_to_reference"][name]
        status = "met" if s["median"] >= 0.95 else "MISSED"
        rows.append(f"| {goal} | {_cell(s)} | {status} |")
    return [*rows, ""]


def _earlier_lines(res: dict[str, Any]) -> list[str]:
    runs = res.get("earlier") or []
    if not runs:
        return []
    lines = [
        "Earlier runs of the same command (medians; the spread between runs is the "
        "machine's noise):",
        "",
    ]
    for r in runs:
        lines.append(
            f"- {r['when']} (load {r['loadavg'][0]}): XDP steer {r['xdp-steer']:.3f}, "
            f"nftables steer {r['nft-steer']:.3f}, broadcast {r['nft-broadcast']:.3f}"
        )
    return [*lines, ""]


def _program_lines(res: dict[str, Any]) -> list[str]:
    prog = res.get("program_ns")
    if not prog:
        return []
    cell = {n: f"{v['min']:.0f} ns (median {v['median']:.0f})" for n, v in prog.items()}
    return [
        "The XDP programs alone, without the redirect (`bpftool prog run` of one trafgen frame, "
        "2,000,000 repeats in the kernel, min of 9 interleaved runs, test-run overhead "
        f"included): vipctl's `vipctl_xdp` {cell['vipctl_xdp']}, the minimal steer "
        f"{cell['ref_steer']}, a drop {cell['ref_drop']}. The difference between the two "
        "steers is what vipctl's program adds per packet (VIP list, double-buffered "
        "config, member slot, per-member counters); the rest of a packet's cost above is "
        "the redirect and the veth transmit, the same for both.",
        "",
    ]


def write_docs(section: str, doc: Path = ROOT / "docs" / "benchmarks.md") -> None:
    replace_section(doc, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routercost")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "routercost.json"))
    ap.add_argument("--write-docs", action="store_true", help="replace the docs section")
    ap.add_argument("--report", help="only render the docs section from this JSON file")
    a = ap.parse_args(argv)
    if a.report:  # the analysis is recomputed from the raw rates
        res = json.loads(Path(a.report).read_text())
        res["analysis"] = analyse(res["pps_rounds"])
        write_docs(markdown(res))
        return 0
    facts = machine()
    bpffs = labxdp.mount_bpffs()
    base = f"brc{os.getpid() % 10000}"
    work = Path(f"/tmp/{base}")
    work.mkdir(parents=True, exist_ok=True)
    pps: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    programs: dict[str, Any] = {}
    # one lab per variant, each installed once: a round measures them back to back, so
    # the load other jobs put on the machine changes little between a variant and the
    # ones it is compared with (installing a variant between measurements took seconds)
    labs: dict[str, tuple[labmod.Lab, Path, Refs]] = {}
    pins: list[Path] = []
    try:
        for i, v in enumerate(VARIANTS):
            prefix = f"{base}v{i}"
            lab = labmod.build(prefix, MEMBERS, echo=False)
            pins += labxdp.pins_of(lab, bpffs)
            lw = work / v.name
            lw.mkdir(parents=True, exist_ok=True)
            labxdp.members_pass(lab, bpffs)
            dataplane.prepare(lab)
            conf = lw / "udp.trafgen"
            conf.write_text(affinity.trafgen_conf(lab))
            refs = Refs(lab, lw, bpffs)
            labs[v.name] = (lab, conf, refs)
            install(lab, v, lw, refs)
        xlab, _c, xrefs = labs["xdp-steer"]
        frame = work / "frame.bin"
        frame.write_bytes(test_frame(xlab))
        with links.in_netns(xlab.router_ns):
            ours = xdp.pin_dir(CLUSTER) / "prog" / xdp.XDP_PROG
        programs = program_ns(
            {
                "vipctl_xdp": ours,
                "ref_steer": xrefs.pins / "prog" / "ref_steer",
                "ref_drop": xrefs.pins / "prog" / "ref_drop",
            },
            frame,
            runs=9,
        )
        for r in range(a.rounds):
            k = (r * 3) % len(VARIANTS)
            for v in VARIANTS[k:] + VARIANTS[:k]:
                lab, conf, _refs = labs[v.name]
                got = dataplane.measure_pps(lab, conf, a.seconds, 0.3)
                # the drop variants deliver nothing: their figure is what was offered
                key = "offered_pps" if v.name.startswith("ceiling") else "delivered_pps"
                pps[v.name].append(got[key])
            print(
                f"round {r + 1}: " + ", ".join(f"{n}={x[-1]:.0f}" for n, x in pps.items()),
                file=sys.stderr,
            )
    finally:
        for v in VARIANTS:
            if v.name in labs:
                lab, _conf, refs = labs[v.name]
                if v.name in ("nft-steer", "nft-broadcast", "xdp-steer"):
                    uninstall(lab, v, work / v.name, refs)  # the XDP cluster's pins
                refs.remove()
        for i in range(len(VARIANTS)):
            labmod.destroy(f"{base}v{i}")
        labxdp.cleanup(pins)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "sudo .venv/bin/python -m bench.routercost " + " ".join(argv or sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": facts,
        "rounds": a.rounds,
        "seconds": a.seconds,
        "members": MEMBERS,
        "flows": 65536,
        "pps_rounds": pps,
        "program_ns": programs,
        "analysis": analyse(pps),
    }
    out = Path(a.out)
    result["earlier"] = earlier(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if a.write_docs:
        write_docs(markdown(result))
    print(json.dumps(result["analysis"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Data-plane benchmarks: packets/s and TCP throughput through the lab router.

Topology: ``vipctl.lab`` (client -> router -> N members, veth). The generator is trafgen
(netsniff-ng) in the client namespace: 60-byte UDP frames to the VIP from 4096 sources
(10.99.{0,16,..,240}.{0..255}, so every bucket width and every member count sees an even
spread), one CPU. Delivered packets are counted at the router's member ports (veth tx =
handed to the member); each member drops them at its own netdev ingress so the member's
stack costs nothing.

Every variant is measured against plain routed forwarding on the same lab (no vipctl
table, ``ip route VIP/32 via member 1``) IN THE SAME ROUND; rounds interleave all variants
in a rotated order, and ratios are reported per round as min/median/max.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import PY, netns, nft, run, summary
from vipctl.lab import topology as labmod

CLUSTER = "bench"
UDP_PORT = 9
SEED = 0x5EED


@dataclass(frozen=True)
class Variant:
    kind: str  # plain | vipctl | nftlb | ctmark
    mode: str = ""  # steer | broadcast (vipctl)
    key: str = "mask"
    bits: int = 8
    pinning: bool = True

    @property
    def name(self) -> str:
        if self.kind != "vipctl":
            return self.kind
        pin = "pin" if self.pinning else "nopin"
        return f"{self.mode}-{self.key}-{pin}-b{self.bits}"


PLAIN = Variant("plain")
NFTLB = Variant("nftlb")
CTMARK = Variant("ctmark")


def vip(mode: str, key: str = "mask", bits: int = 8, pinning: bool = True) -> Variant:
    return Variant("vipctl", mode, key, bits, pinning)


ALL_AT_8 = [
    PLAIN,
    *(
        vip(m, k, 8, p)
        for m in ("steer", "broadcast")
        for k in ("mask", "hash")
        for p in (True, False)
    ),
    NFTLB,
    CTMARK,
]
CORE_AT_8 = [PLAIN, vip("steer"), vip("broadcast"), NFTLB, CTMARK]


# --------------------------------------------------------------------------- topology


def trafgen_conf(lab: labmod.Lab, sources: str = "dinc(0, 240, 16), drnd()") -> str:
    """60-byte UDP frames to the VIP; source 10.99.(16*k).r for k in 0..15, r random
    (`sources`: trafgen's expressions for the last two bytes of the source address)."""
    mac = lambda s: ", ".join(f"0x{b}" for b in s.split(":"))  # noqa: E731
    vip4 = ", ".join(lab.vip4.split("."))
    return f"""{{
  {mac(lab.uplink_mac)},
  {mac(lab.client_mac)},
  c16(0x0800),
  0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33),
  10, 99, {sources},
  {vip4},
  c16(4000), c16({UDP_PORT}), c16(26), c16(0),
  fill(0x00, 18),
}}
"""


def prepare(lab: labmod.Lab) -> None:
    """Members drop the benchmark's UDP at netdev ingress (their stack stays idle)."""
    for m in lab.members:
        nft(
            m.ns,
            f'table netdev bench_sink {{ chain in {{ type filter hook ingress device "eth0" '
            f"priority 0; policy accept; udp dport {UDP_PORT} drop; }}; }}\n",
        )
    # Resolve every member's MAC on the router before anything is measured.
    for m in lab.members:
        netns(lab.router_ns, ["ping", "-c1", "-W1", m.address], check=False)


def install(lab: labmod.Lab, v: Variant, work: Path) -> None:
    r = lab.router_ns
    if v.kind == "plain":
        m1 = lab.member(1)
        run(["ip", "-n", r, "route", "add", f"{lab.vip4}/32", "via", m1.address, "dev", m1.port])
    elif v.kind == "vipctl":
        spec = lab.spec(CLUSTER, mode=v.mode, key=v.key, bits=v.bits, vips=[lab.vip4])
        if not v.pinning:
            spec["pinning"] = {"enabled": False}
        path = work / f"{v.name}.json"
        path.write_text(json.dumps(spec))
        netns(r, [PY, "-m", "vipctl.cli", "apply", str(path), "--state-dir", str(work / "st")])
    elif v.kind == "nftlb":
        nft(r, nftlb_ruleset(lab))
    elif v.kind == "ctmark":
        nft(r, ctmark_ruleset(lab))
        lines = []
        for m in lab.members:
            lines += [
                f"rule add fwmark {m.index} lookup {100 + m.index} pref {1000 + m.index}",
                f"route add {lab.vip4}/32 via {m.address} dev {m.port} table {100 + m.index}",
            ]
        run(["ip", "-n", r, "-batch", "-"], input="\n".join(lines) + "\n")
    else:
        raise ValueError(v.kind)


def uninstall(lab: labmod.Lab, v: Variant, work: Path) -> None:
    r = lab.router_ns
    if v.kind == "plain":
        run(["ip", "-n", r, "route", "del", f"{lab.vip4}/32"])
    elif v.kind == "vipctl":
        nft(r, f"delete table netdev vipctl_{CLUSTER}\n")
        shutil.rmtree(work / "st", ignore_errors=True)
    elif v.kind == "nftlb":
        nft(r, "delete table netdev peer_lb\n")
    elif v.kind == "ctmark":
        nft(r, "delete table ip peer_ct\n")
        lines = []
        for m in lab.members:
            lines += [f"rule del pref {1000 + m.index}", f"route flush table {100 + m.index}"]
        run(["ip", "-n", r, "-batch", "-"], input="\n".join(lines) + "\n")


def nftlb_ruleset(lab: labmod.Lab) -> str:
    """What nftlb renders for a stateless DSR farm: jhash of the source mod N picks the
    backend's MAC and port at netdev ingress (one hash, kept in the mark)."""
    n = lab.n_members
    macs = ", ".join(f"{m.index - 1} : {m.mac}" for m in lab.members)
    ports = ", ".join(f'{m.index - 1} : "{m.port}"' for m in lab.members)
    return (
        "table netdev peer_lb {\n"
        f'  chain in_up0 {{ type filter hook ingress device "{lab.uplink}" priority 0; '
        "policy accept;\n"
        f"    ip daddr {lab.vip4} meta mark set jhash ip saddr mod {n} seed 0x{SEED:x} "
        f"ether daddr set meta mark map {{ {macs} }} fwd to meta mark map {{ {ports} }}\n"
        "  }\n}\n"
    )


def ctmark_ruleset(lab: labmod.Lab) -> str:
    """Conntrack mark from a hash for new flows, copied to the packet mark, one policy
    routing rule and table per member."""
    n = lab.n_members
    return (
        "table ip peer_ct {\n"
        "  chain pre { type filter hook prerouting priority mangle; policy accept;\n"
        f"    ip daddr {lab.vip4} ct mark 0 ct mark set jhash ip saddr mod {n} "
        f"seed 0x{SEED:x} offset 1\n"
        f"    ip daddr {lab.vip4} meta mark set ct mark\n"
        "  }\n}\n"
    )


# --------------------------------------------------------------------------- measuring


def _stats(lab: labmod.Lab) -> dict[str, tuple[int, int]]:
    """ifname -> (rx packets, tx packets) on the router."""
    links = labmod.ip_json(lab.router_ns, ["-s", "link", "show"])
    out: dict[str, tuple[int, int]] = {}
    for link in links:
        s = link.get("stats64", {})
        out[link["ifname"]] = (int(s["rx"]["packets"]), int(s["tx"]["packets"]))
    return out


def measure_pps(
    lab: labmod.Lab, conf: Path, seconds: float, warmup: float, extra: Sequence[str] = ()
) -> dict[str, float]:
    """Offered (router uplink rx) and delivered (sum of member-port tx) packets/s.

    ``extra``: more trafgen arguments (``-b RATE`` selects its sendto path: linear frames)."""
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.client_ns,
            "trafgen",
            "-o",
            "eth0",
            "-c",
            str(conf),
            "-P",
            "1",
            "--no-sock-mem",  # never tune the machine-wide socket memory sysctls
            "--notouch-irq",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"trafgen exited {proc.returncode}: {err.strip()[-400:]}")
        s0, t0 = _stats(lab), time.perf_counter()
        time.sleep(seconds)
        s1, t1 = _stats(lab), time.perf_counter()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    dt = t1 - t0
    delivered = sum(s1[p][1] - s0[p][1] for p in lab.ports)
    offered = s1[lab.uplink][0] - s0[lab.uplink][0]
    return {"delivered_pps": delivered / dt, "offered_pps": offered / dt}


def start_iperf_servers(lab: labmod.Lab) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", m.ns, "iperf3", "-s", "-B", lab.vip4],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        for m in lab.members
    ]
    time.sleep(0.3)
    return procs


def stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure_tcp(lab: labmod.Lab, seconds: float, source: str) -> float:
    """Gbit/s of one iperf3 TCP stream from ``source`` to the VIP (receiver's view)."""
    proc = netns(
        lab.client_ns,
        [
            "iperf3",
            "-c",
            lab.vip4,
            "-B",
            source,
            "-t",
            str(seconds),
            "-J",
            "--connect-timeout",
            "3000",
        ],
        check=False,
        timeout=seconds + 20,
    )
    data = json.loads(proc.stdout or "{}")
    if "error" in data or proc.returncode != 0:
        raise RuntimeError(f"iperf3: {data.get('error', proc.stderr.strip())}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


# --------------------------------------------------------------------------- rounds


Measure = Callable[[Variant, int], float]


def interleave(
    lab: labmod.Lab,
    variants: Sequence[Variant],
    rounds: int,
    work: Path,
    measure: Measure,
    log: Callable[[str], None],
) -> dict[str, list[float]]:
    """rounds x variants, each round in a rotated order; raw values per variant name."""
    values: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        k = (r * 3) % len(variants)
        order = list(variants[k:]) + list(variants[:k])
        for v in order:
            try:
                install(lab, v, work)
            except RuntimeError as exc:  # recorded and reported, the run goes on
                ERRORS.append(f"{v.name}: {str(exc).replace(chr(10), ' | ')[-300:]}")
                log(f"  {v.name}: install failed: {str(exc)[-200:]}")
                values[v.name].append(float("nan"))
                uninstall_quietly(lab, v, work)
                continue
            try:
                values[v.name].append(measure(v, r))
            finally:
                uninstall(lab, v, work)
        log(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{n}={vals[-1]:.3g}" for n, vals in values.items())
        )
    return values


ERRORS: list[str] = []


def uninstall_quietly(lab: labmod.Lab, v: Variant, work: Path) -> None:
    with contextlib.suppress(RuntimeError):
        uninstall(lab, v, work)


def ratios(values: dict[str, list[float]], base: str) -> dict[str, dict[str, Any]]:
    """Per variant: raw summary and the summary of (value / base) taken round by round."""
    out: dict[str, dict[str, Any]] = {}
    for name, vals in values.items():
        per_round = [v / b for v, b in zip(vals, values[base], strict=True) if b > 0 and v == v]
        out[name] = {
            "raw": summary([v for v in vals if v == v], 1),
            "ratio": summary(per_round, 3),
            "ratio_rounds": [round(x, 3) for x in per_round],
        }
    return out


@dataclass(frozen=True)
class Plan:
    members: tuple[int, ...]
    bits: tuple[int, ...]
    rounds: int
    seconds: float
    warmup: float
    tcp_seconds: float
    tcp_rounds: int
    quick: bool


def plan(quick: bool) -> Plan:
    if quick:
        return Plan((2, 4, 8, 16), (4, 8, 16), 3, 1.0, 0.3, 1.0, 2, True)
    return Plan((2, 4, 8, 16), (4, 8, 12, 16), 3, 2.0, 0.5, 2.0, 3, False)


def run_all(prefix: str, work: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    p = plan(quick)
    out: dict[str, Any] = {"plan": asdict(p), "by_members": {}, "flows": 4096, "frame_bytes": 60}
    for n in p.members:
        name = f"{prefix}d{n}"
        lab = labmod.build(name, n, echo=False)
        lw = work / f"m{n}"
        lw.mkdir(parents=True, exist_ok=True)
        try:
            prepare(lab)
            conf = lw / "udp.trafgen"
            conf.write_text(trafgen_conf(lab))

            def pps(_v: Variant, _r: int, lab: labmod.Lab = lab, conf: Path = conf) -> float:
                return measure_pps(lab, conf, p.seconds, p.warmup)["delivered_pps"]

            variants = ALL_AT_8 if (n == 4 or not quick) else CORE_AT_8
            log(f"members={n}: {len(variants)} variants x {p.rounds} rounds")
            vals = interleave(lab, variants, p.rounds, lw, pps, log)
            out["by_members"][str(n)] = ratios(vals, PLAIN.name)
            if n == 4:
                bvars = [PLAIN] + [
                    vip(m, k, b)
                    for b in p.bits
                    for m in ("steer", "broadcast")
                    for k in (("mask",) if quick else ("mask", "hash"))
                ]
                log(f"bits sweep (members=4): {len(bvars)} variants x {p.rounds} rounds")
                bvals = interleave(lab, bvars, p.rounds, lw, pps, log)
                out["by_bits"] = ratios(bvals, PLAIN.name)
                out["bits_16_over_4"] = {}
                for m in ("steer", "broadcast"):
                    for k in ("mask",) if quick else ("mask", "hash"):
                        lo, hi = bvals[vip(m, k, min(p.bits)).name], bvals[vip(m, k, 16).name]
                        out["bits_16_over_4"][f"{m}-{k}"] = summary(
                            [h / lo_ for h, lo_ in zip(hi, lo, strict=True)], 3
                        )
                tvars = (
                    [PLAIN, vip("steer"), vip("broadcast"), NFTLB, CTMARK]
                    if quick
                    else [
                        PLAIN,
                        vip("steer"),
                        vip("steer", pinning=False),
                        vip("broadcast"),
                        vip("broadcast", pinning=False),
                        NFTLB,
                        CTMARK,
                    ]
                )
                servers = start_iperf_servers(lab)
                try:

                    def tcp(_v: Variant, r: int, lab: labmod.Lab = lab) -> float:
                        return measure_tcp(lab, p.tcp_seconds, f"10.99.{r + 1}.{7 + r}")

                    log(f"iperf3 TCP (members=4): {len(tvars)} variants x {p.tcp_rounds}")
                    tvals = interleave(lab, tvars, p.tcp_rounds, lw, tcp, log)
                finally:
                    stop(servers)
                out["tcp_gbps"] = ratios(tvals, PLAIN.name)
        finally:
            labmod.destroy(name)
    out["errors"] = ERRORS
    return out

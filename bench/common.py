"""Shared helpers for the benchmarks: summaries, timers, machine facts, namespace commands.

Everything that touches the kernel runs inside a namespace the benchmark created
(``ip netns exec`` / ``ip -n``); nothing here reads or writes the machine's own namespace
except to list facts (kernel version, CPU model, tool versions).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """min / median / max (and n) of a sample; None fields when it is empty."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn``."""
    out: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def run(
    argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def netns(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """``argv`` inside namespace ``ns`` (never the machine's own)."""
    if not ns:
        raise ValueError("refusing to run a benchmark command outside a lab namespace")
    return run(["ip", "netns", "exec", ns, *argv], **kw)


def nft(ns: str, script: str) -> None:
    netns(ns, ["nft", "-f", "-"], input=script)


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "absent"


def machine() -> dict[str, Any]:
    """Facts a reader needs to judge the figures."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    os_name = "unknown"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "os": os_name,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "nft": _first_line(["nft", "--version"]),
        "trafgen": _first_line(["trafgen", "--version"]),
        "iperf3": _first_line(["iperf3", "--version"]),
    }


def replace_section(doc: Path, begin: str, end: str, section: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) in place of the one
    between those markers in `doc`, or append it."""
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)

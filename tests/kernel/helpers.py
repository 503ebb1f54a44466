"""Helpers for kernel tests: run vipctl inside a lab namespace, snapshot kernel state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vipctl.backends import nft as kernel
from vipctl.core.partition import bucket_of
from vipctl.core.spec import parse_spec
from vipctl.host import links
from vipctl.lab import traffic
from vipctl.lab.topology import Lab


def vipctl(ns: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """`vipctl ARGS` as a process inside namespace `ns` (like an operator would run it)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "vipctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vipctl {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc


def vipctl_spawn(ns: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`vipctl ARGS` started in the background inside namespace `ns`."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "vipctl.cli", *args],
        text=True,
        **popen,
    )


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec))
    return path


def sh(ns: str, cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "sh", "-c", cmd],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def ruleset(ns: str) -> str:
    return sh(ns, "nft list ruleset")


def expected_owners(lab: Lab, spec: dict[str, Any], sources: list[str]) -> dict[str, str | None]:
    """Owner of each source according to the live table read from the router's kernel."""
    model = parse_spec(spec)
    with links.in_netns(lab.router_ns):
        found = kernel.live_table(model)
    assert found is not None, "cluster not installed"
    p = model.partition
    out = {}
    for src in sources:
        family = 6 if ":" in src else 4
        out[src] = found[1][family][bucket_of(src, p.key, p.bits, p.seed)]
    return out


def swaps_under_traffic(
    lab: Lab, spec_path: Path, state: str, here: Path, count: int = 200
) -> tuple[dict[str, Any], int, list[int], list[int]]:
    """`count` applies with alternating weights (swaploop.py in the router) while numbered
    UDP packets from 1024 sources flow and every member captures: (the loop's report,
    numbers sent, numbers lost, numbers delivered more than once)."""
    sources = traffic.expand(lab.sources4, 1024)
    cap = traffic.capture_start(lab)
    try:
        sender = traffic.numbered_spawn(lab, lab.vip4, sources, count=2_000_000, rate_pps=20000)
        loop = subprocess.run(
            [
                *("ip", "netns", "exec", lab.router_ns, sys.executable),
                *(str(here / "swaploop.py"), str(spec_path), state, str(count)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        sender.proc.terminate()
        if sender.proc.returncode == 0:
            sender.wait(timeout=30)
    finally:
        seen = traffic.capture_stop(cap)
    sent = max((max(v) for v in seen.values() if v), default=-1) + 1
    lost, duplicated = traffic.check_exactly_once(sent, seen)
    return json.loads(loop.stdout), sent, list(lost), list(duplicated)

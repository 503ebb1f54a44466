"""iproute2 (`ip`), for what rtnetlink through pyroute2 does not cover (the member's own
setup commands, which operators also read as shell)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from vipctl.errors import KernelError


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` in the current network namespace."""
    try:
        proc = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise KernelError("iproute2 ('ip') is not installed") from None
    if check and proc.returncode != 0:
        raise KernelError(f"ip {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc


def ip_json(*args: str) -> list[dict[str, Any]]:
    """``ip -j ARGS`` parsed; an empty list when iproute2 prints nothing."""
    proc = ip("-j", *args)
    data = json.loads(proc.stdout or "[]")
    return data if isinstance(data, list) else []

"""The BGP speaker (BIRD 2) of a cluster with a `bgp` section: one BIRD per network
namespace and cluster, its files under the state directory (`bird/<cluster>.conf`,
`.ctl` socket, `.pid`, `.log`).

* `sync(spec, dir, serving)` writes the configuration (render/bird.py) atomically and
  starts BIRD, or reloads the running one with `birdc configure` (BIRD parses the new file
  first and keeps the old one on an error: atomic, sessions stay up).
* Announcing is the configuration itself: while not serving, the static protocol holds no
  route, so the same reload withdraws every VIP.
* `stop` ends BIRD (its sessions close; the upstream drops this router's paths).

BIRD daemonizes and stays when `vipctl daemon` stops (the data plane and the announcement
do not need the controller; a restarted daemon reloads the running BIRD). Under systemd it
lives in the service's cgroup, so `systemctl stop` ends it with the service.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vipctl.errors import KernelError
from vipctl.render import bird

if TYPE_CHECKING:
    from vipctl.core.spec import Spec

# after a withdraw, before the rules go: the upstream has to receive the UPDATE and change
# its route (measured 4-8 ms on veth); a wide margin for a loaded router
WITHDRAW_DRAIN_S = 0.5


@dataclass(frozen=True)
class Paths:
    conf: Path
    ctl: Path
    pid: Path
    log: Path


def paths(directory: Path, cluster: str) -> Paths:
    d = directory / "bird"
    return Paths(
        d / f"{cluster}.conf", d / f"{cluster}.ctl", d / f"{cluster}.pid", d / f"{cluster}.log"
    )


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise KernelError(f"{name} not found: the bgp section needs BIRD 2 (apt-get install bird2)")
    return found


def birdc(p: Paths, *args: str, timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(
            [_tool("birdc"), "-s", str(p.ctl), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"birdc {' '.join(args)}: no answer in {timeout:g} s") from None
    out = done.stdout + done.stderr
    if done.returncode != 0 or "Unable to connect" in out:
        raise KernelError(f"birdc {' '.join(args)}: {out.strip()}")
    return out


def running(p: Paths) -> bool:
    if not p.ctl.exists():
        return False
    try:
        birdc(p, "show", "status", timeout=3.0)
    except KernelError:
        return False
    return True


def sync(spec: Spec, directory: Path, serving: bool) -> str:
    """Make BIRD run this spec's configuration, announcing the VIPs iff `serving`.
    Returns what was done (for the log)."""
    from vipctl.statefile import write_atomic

    p = paths(directory, spec.cluster)
    text = bird.render(spec, serving, str(p.log))
    p.conf.parent.mkdir(parents=True, exist_ok=True)
    old = p.conf.read_text() if p.conf.exists() else None
    if running(p):
        if old == text:
            return "unchanged"
        write_atomic(p.conf, text.encode())
        out = birdc(p, "configure", f'"{p.conf}"')
        if "Reconfigured" not in out and "in progress" not in out:
            if old is not None:
                write_atomic(p.conf, old.encode())
            raise KernelError(f"BIRD refused the configuration: {out.strip()}")
        return "reconfigured"
    write_atomic(p.conf, text.encode())
    done = subprocess.run(
        [_tool("bird"), "-c", str(p.conf), "-s", str(p.ctl), "-P", str(p.pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise KernelError(f"bird did not start: {(done.stdout + done.stderr).strip()}")
    deadline = time.monotonic() + 10
    while not running(p):
        if time.monotonic() > deadline:
            raise KernelError(f"bird started but {p.ctl} does not answer")
        time.sleep(0.05)
    return "started"


def withdraw(spec: Spec, directory: Path, drain: float = WITHDRAW_DRAIN_S) -> bool:
    """Withdraw every VIP (if BIRD runs) and give the upstream `drain` seconds to move."""
    p = paths(directory, spec.cluster)
    if not running(p):
        return False
    sync(spec, directory, serving=False)
    time.sleep(drain)
    return True


def stop(cluster: str, directory: Path) -> bool:
    p = paths(directory, cluster)
    if not running(p):
        return False
    birdc(p, "down")
    deadline = time.monotonic() + 10
    while running(p) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def sessions(spec: Spec, directory: Path) -> dict[str, str]:
    """peer address -> BGP state (`Established`, ...), from `birdc show protocols`."""
    if spec.bgp is None:
        return {}
    p = paths(directory, spec.cluster)
    out = birdc(p, "show", "protocols")
    states: dict[str, str] = {}
    for i, peer in enumerate(spec.bgp.peers):
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == f"peer{i}":
                states[str(peer.address)] = cols[-1]
    return states

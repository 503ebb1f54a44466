"""What a running daemon says about itself, for `vipctl status`.

The command line cannot ask the daemon; it reads what the daemon writes. Every time the
daemon computes its STATUS= line (service/daemon.py `Daemon.status`), `write` replaces a
small JSON file, atomically (statefile.write_atomic): the line itself, the trouble that
keeps the daemon from doing its job (probes failing locally, the state not written, a
refused reload), the members it cannot probe, the members down, its pid and the time.
The last failover (when members went down, which ones) is carried over from the file's
previous content, so it survives a daemon restart.

Where: `.CLUSTER.daemon.json` in the state directory (hidden: statefile.clusters skips it).
When that cannot be written (a read-only or full state directory: exactly when the daemon
has something to say), a copy goes to the runtime directory (/run/vipctl, tmpfs), named
after the state directory; `read` takes whichever is newer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vipctl import statefile

log = logging.getLogger("vipctl.daemon")

VERSION = 1
RUNTIME_DIR = Path("/run/vipctl")  # tmpfs: writable when the state directory is not


def path(directory: Path, cluster: str) -> Path:
    return directory / f".{statefile.checked(cluster)}.daemon.json"


def runtime_path(directory: Path, cluster: str, runtime: Path | None = None) -> Path:
    runtime = runtime if runtime is not None else RUNTIME_DIR
    key = hashlib.sha256(str(directory.absolute()).encode()).hexdigest()[:16]
    return runtime / f"{statefile.checked(cluster)}.{key}.daemon.json"


def _load(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_bytes()[: 1 << 20])
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    if not isinstance(data.get("updated"), int | float):
        return None
    return data


@dataclass(frozen=True)
class Facts:
    """What the daemon knows when it computes its STATUS= line. `down` None: not applied
    yet (the members down are then the previous file's: a start is not a failover)."""

    generation: int | None
    down: Iterable[str] | None
    problems: list[str]
    unprobed: Iterable[str]
    state_error: str | None


def report(
    previous: dict[str, Any] | None, cluster: str, status: str, facts: Facts, now: float, pid: int
) -> dict[str, Any]:
    """The file's content (pure)."""
    before = set(previous.get("down", ())) if previous else set()
    down_now = sorted(facts.down) if facts.down is not None else sorted(before)
    last = previous.get("last_failover") if previous else None
    newly = sorted(set(down_now) - before)
    if newly:
        last = {"at": now, "members": newly}
    return {
        "version": VERSION,
        "cluster": cluster,
        "pid": pid,
        "updated": now,
        "status": status,
        "generation": facts.generation,
        "degraded": bool(facts.problems),
        "problems": list(facts.problems),
        "down": down_now,
        "unprobed": sorted(facts.unprobed),
        "state_write_failing": facts.state_error is not None,
        "state_error": facts.state_error,
        "last_failover": last,
    }


def write(
    directory: Path,
    cluster: str,
    status: str,
    facts: Facts,
    *,
    clock: Callable[[], float] = time.time,
    runtime: Path | None = None,
) -> None:
    """Replace the daemon's status file; never raises (the daemon's job comes first) and
    never creates the state directory (the first apply does)."""
    try:
        previous = read(directory, cluster, runtime=runtime, raw=True)
        data = report(previous, cluster, status, facts, clock(), os.getpid())
        text = json.dumps(data, separators=(",", ":")).encode()
    except Exception:
        log.exception("cannot describe the daemon's status")
        return
    if directory.is_dir():
        try:
            statefile.write_atomic(path(directory, cluster), text)
            return
        except OSError as exc:
            log.debug("daemon status not written in %s: %s", directory, exc)
    runtime = runtime if runtime is not None else RUNTIME_DIR
    try:
        runtime.mkdir(mode=0o755, parents=True, exist_ok=True)
        statefile.write_atomic(runtime_path(directory, cluster, runtime), text)
    except OSError as exc:
        log.debug("daemon status not written in %s either: %s", runtime, exc)


def remove(directory: Path, cluster: str) -> None:
    """`vipctl down`: what the daemon wrote goes with the state."""
    for file in (path(directory, cluster), runtime_path(directory, cluster)):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()


def _running(pid: object) -> bool:
    """The pid is a live vipctl daemon (not a reused pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"vipctl" in cmdline and b"daemon" in cmdline


def read(
    directory: Path, cluster: str, *, runtime: Path | None = None, raw: bool = False
) -> dict[str, Any] | None:
    """The newest of the daemon's status files, with `running` (its pid is a live vipctl
    daemon); None when no daemon ever wrote one."""
    found = [
        d
        for d in (_load(path(directory, cluster)), _load(runtime_path(directory, cluster, runtime)))
        if d is not None
    ]
    if not found:
        return None
    newest = max(found, key=lambda d: float(d["updated"]))
    if raw:
        return newest
    out = {k: newest.get(k) for k in SHOWN}
    out["running"] = _running(newest.get("pid"))
    return out


SHOWN = (
    "pid",
    "updated",
    "status",
    "generation",
    "degraded",
    "problems",
    "unprobed",
    "state_write_failing",
    "state_error",
    "last_failover",
)


def describe(d: dict[str, Any], now: float) -> list[str]:
    """The daemon's lines of `vipctl status` (text)."""

    def ago(t: float) -> str:
        s = max(0, int(now - t))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        return f"{when} ({s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s ago)"

    if not d.get("running"):
        head = f"daemon: NOT RUNNING (pid {d.get('pid')} last wrote at {ago(d['updated'])})"
    elif d.get("degraded"):
        head = f"daemon: pid {d.get('pid')}, DEGRADED: " + "; ".join(d.get("problems") or [])
    else:
        head = f"daemon: pid {d.get('pid')}, running, no trouble"
    lines = [head]
    if d.get("unprobed"):
        lines.append(
            "  members it cannot probe (their health is kept as it is): " + ", ".join(d["unprobed"])
        )
    if d.get("state_write_failing"):
        lines.append(f"  STATE WRITE FAILING: {d.get('state_error')}")
    last = d.get("last_failover")
    if isinstance(last, dict) and isinstance(last.get("at"), int | float):
        members = ", ".join(last.get("members") or [])
        lines.append(f"  last failover: {members} at {ago(last['at'])}")
    else:
        lines.append("  last failover: none seen")
    return lines


__all__ = ["Facts", "describe", "path", "read", "remove", "report", "runtime_path", "write"]

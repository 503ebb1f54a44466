"""The BGP speaker of the clusters with a `bgp` section: ONE per router and network
namespace, whatever the number of clusters (render/bird.py writes the text).

`speaker: vipctl` (default): one BIRD that vipctl starts and every cluster shares, its
files under the state directory's `bird/`: `bird.conf` (one session per peer, BFD, an
include of every cluster's routes), `clusters/<cluster>.conf` (the cluster's statics),
`clusters/<cluster>.json` (its `bgp` section, what bird.conf is rendered from), `bird.ctl`,
`bird.pid`, `bird.log`, and `lock` (the clusters' daemons are separate processes: each
rewrite of the shared files holds it).

`speaker: external`: the BIRD the operator already runs. vipctl writes the cluster's
statics into `bgp.include` (default /etc/bird/vipctl.d/<cluster>.conf), which the
operator's bird.conf includes and exports, and reloads that BIRD through `bgp.control`
(default /run/bird/bird.ctl). Sessions, BFD and policy are the operator's.

* `sync(spec, dir, serving)` writes the files atomically and starts the shared BIRD, or
  reloads the running one with `birdc configure` (BIRD parses the new files first and
  keeps the old configuration on an error: atomic, sessions stay up).
* Announcing is the configuration itself: while a cluster does not serve, its statics
  hold no route, so the same reload withdraws its VIPs (the other clusters' stay).
* `stop(cluster, dir)` takes the cluster out: the shared BIRD ends with its last cluster
  (its sessions close; the upstream drops this router's paths); an external BIRD keeps
  running with the cluster's file emptied.

The shared BIRD daemonizes and stays when `vipctl daemon` stops (the data plane and the
announcement do not need the controller; a restarted daemon reloads the running BIRD).
Under systemd it lives in the cgroup of the service that started it; the unit grants
what BIRD needs (CAP_NET_BIND_SERVICE for port 179, systemd/vipctl@.service).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
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
    """The shared BIRD's files."""

    conf: Path
    ctl: Path
    pid: Path
    log: Path
    lock: Path
    clusters: Path  # <cluster>.conf (routes) and <cluster>.json (its bgp section)


def paths(directory: Path) -> Paths:
    d = directory / "bird"
    return Paths(
        d / "bird.conf", d / "bird.ctl", d / "bird.pid", d / "bird.log", d / "lock", d / "clusters"
    )


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise KernelError(f"{name} not found: the bgp section needs BIRD 2 (apt-get install bird2)")
    return found


def birdc(ctl: Path, *args: str, timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(
            [_tool("birdc"), "-s", str(ctl), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"birdc {' '.join(args)}: no answer in {timeout:g} s") from None
    out = done.stdout + done.stderr
    if done.returncode != 0 or "Unable to connect" in out:
        raise KernelError(f"birdc -s {ctl} {' '.join(args)}: {out.strip()}")
    return out


def running(ctl: Path) -> bool:
    if not ctl.exists():
        return False
    try:
        birdc(ctl, "show", "status", timeout=3.0)
    except KernelError:
        return False
    return True


@contextlib.contextmanager
def _locked(p: Paths) -> Iterator[None]:
    p.clusters.mkdir(parents=True, exist_ok=True)
    with open(p.lock, "a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _configure(ctl: Path, conf: Path | None) -> None:
    """`birdc configure` (of `conf`, or of the file BIRD was started with)."""
    out = birdc(ctl, "configure", *([f'"{conf}"'] if conf is not None else []))
    if "Reconfigured" not in out and "in progress" not in out:
        raise KernelError(f"BIRD refused the configuration: {out.strip()}")


def _write_all(files: dict[Path, str | None]) -> None:
    """Write (text) or remove (None) each file, atomically each."""
    from vipctl.statefile import write_atomic

    for path, text in files.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, text.encode())


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _members(p: Paths) -> dict[str, bird.Member]:
    """Every cluster of the shared BIRD, from its recorded bgp section."""
    from pydantic import ValidationError

    from vipctl.core.spec import Bgp

    out: dict[str, bird.Member] = {}
    for record in sorted(p.clusters.glob("*.json")):
        cluster = record.stem
        try:
            data = json.loads(record.read_text())
            section = Bgp.model_validate(data["bgp"])
            families = tuple(int(f) for f in data["families"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise KernelError(f"unreadable BGP record {record}: {exc}") from None
        out[cluster] = bird.Member(section, families, str(p.clusters / f"{cluster}.conf"))
    return out


def _shared_text(p: Paths, members: dict[str, bird.Member]) -> str:
    try:
        return bird.shared(members, str(p.log))
    except bird.Conflict as exc:
        raise KernelError(f"BGP: {exc} (nothing changed)") from None


def _stop_legacy(directory: Path, cluster: str) -> None:
    """A BIRD of this cluster alone, started by an older vipctl, holds port 179 and the
    sessions: end it before the shared one starts."""
    ctl = directory / "bird" / f"{cluster}.ctl"
    if running(ctl):
        birdc(ctl, "down")
        deadline = time.monotonic() + 10
        while running(ctl) and time.monotonic() < deadline:
            time.sleep(0.05)


def _start(p: Paths) -> None:
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
    while not running(p.ctl):
        if time.monotonic() > deadline:
            raise KernelError(f"bird started but {p.ctl} does not answer")
        time.sleep(0.05)


def _apply_shared(p: Paths, files: dict[Path, str | None]) -> str:
    """Make the shared BIRD run `files` (the old contents come back on a refusal)."""
    old = {path: _read(path) for path in files}
    is_running = running(p.ctl)
    if is_running and old == files:
        return "unchanged"
    _write_all(files)
    try:
        if is_running:
            _configure(p.ctl, p.conf)
            return "reconfigured"
        _start(p)
        return "started"
    except KernelError:
        _write_all(old)
        raise


def _record(spec: Spec) -> str:
    assert spec.bgp is not None
    return json.dumps(
        {"bgp": spec.bgp.model_dump(mode="json"), "families": list(spec.vip_families)},
        sort_keys=True,
    )


def sync(spec: Spec, directory: Path, serving: bool) -> str:
    """Make the router's BGP speaker announce this cluster's VIPs iff `serving`.
    Returns what was done (for the log)."""
    if spec.bgp is None:
        raise KernelError(f"cluster {spec.cluster} has no bgp section")
    if spec.bgp.speaker == "external":
        if (paths(directory).clusters / f"{spec.cluster}.json").exists():
            stop(spec.cluster, directory)  # it was on the shared BIRD: not any more
        return _sync_external(spec, serving)
    p = paths(directory)
    with _locked(p):
        _stop_legacy(directory, spec.cluster)
        members = _members(p)
        members[spec.cluster] = bird.Member(
            spec.bgp, spec.vip_families, str(p.clusters / f"{spec.cluster}.conf")
        )
        files: dict[Path, str | None] = {
            p.clusters / f"{spec.cluster}.conf": bird.routes(spec, serving),
            p.clusters / f"{spec.cluster}.json": _record(spec),
            p.conf: _shared_text(p, members),
        }
        return _apply_shared(p, files)


def withdraw(spec: Spec, directory: Path, drain: float = WITHDRAW_DRAIN_S) -> bool:
    """Withdraw this cluster's VIPs (if its speaker runs) and give the upstream `drain`
    seconds to move."""
    if spec.bgp is None:
        return False
    ctl = external_paths(spec)[1] if spec.bgp.speaker == "external" else paths(directory).ctl
    if not running(ctl):
        return False
    sync(spec, directory, serving=False)
    time.sleep(drain)
    return True


def stop(cluster: str, directory: Path, spec: Spec | None = None) -> bool:
    """Take `cluster` out of the speaker: the shared BIRD is reconfigured without it, and
    ends with its last cluster; an external BIRD gets the cluster's file emptied."""
    if spec is not None and spec.bgp is not None and spec.bgp.speaker == "external":
        return _stop_external(spec)
    _stop_legacy(directory, cluster)
    p = paths(directory)
    if not p.clusters.exists():
        return False
    with _locked(p):
        members = _members(p)
        if cluster not in members:
            return False
        del members[cluster]
        gone: dict[Path, str | None] = {
            p.clusters / f"{cluster}.conf": None,
            p.clusters / f"{cluster}.json": None,
        }
        if members:
            files = {**gone, p.conf: _shared_text(p, members)}
            if running(p.ctl):
                _apply_shared(p, files)
            else:  # the other clusters' daemons start it when they announce
                _write_all(files)
            return True
        if running(p.ctl):
            birdc(p.ctl, "down")
            deadline = time.monotonic() + 10
            while running(p.ctl) and time.monotonic() < deadline:
                time.sleep(0.05)
        _write_all({**gone, p.conf: None})
        return True


def sessions(directory: Path) -> dict[str, str]:
    """The shared BIRD's sessions: protocol name -> BGP state (`Established`, ...)."""
    out = birdc(paths(directory).ctl, "show", "protocols")
    states: dict[str, str] = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 2 and cols[1] == "BGP":
            states[cols[0]] = cols[-1]
    return states


# -- the operator's BIRD ------------------------------------------------------------------


def external_paths(spec: Spec) -> tuple[Path, Path]:
    """(the cluster's include file, the operator's BIRD control socket)."""
    from vipctl.core.spec import BIRD_CONTROL, BIRD_INCLUDE_DIR

    assert spec.bgp is not None
    include = spec.bgp.include or f"{BIRD_INCLUDE_DIR}/{spec.cluster}.conf"
    return Path(include), Path(spec.bgp.control or BIRD_CONTROL)


def _write_external(include: Path, ctl: Path, text: str) -> None:
    old = _read(include)
    try:
        include.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelError(f"cannot create {include.parent}: {exc.strerror}") from None
    _write_all({include: text})
    try:
        _configure(ctl, None)
    except KernelError:
        _write_all({include: old})
        raise


def _sync_external(spec: Spec, serving: bool) -> str:
    include, ctl = external_paths(spec)
    text = bird.routes(spec, serving)
    if _read(include) == text:
        return "unchanged"
    if not running(ctl):
        raise KernelError(
            f"the operator's BIRD does not answer on {ctl} (bgp.speaker: external; "
            "start it, or set bgp.control)"
        )
    _write_external(include, ctl, text)
    return f"reconfigured (routes in {include})"


def _stop_external(spec: Spec) -> bool:
    include, ctl = external_paths(spec)
    if not include.exists():
        return False
    text = f"# cluster {spec.cluster}: taken down by vipctl; no routes\n"
    if running(ctl):
        _write_external(include, ctl, text)
    else:
        _write_all({include: text})
    return True

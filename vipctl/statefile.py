"""State files under the state directory: JSON, written atomically (temp file + rename).

The kernel is the truth about what is live; the state file keeps what the kernel cannot
(the base table and the set of members down, from which the live table follows).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vipctl.core.partition import Layout
from vipctl.core.reconcile import Intent
from vipctl.core.spec import CLUSTER_NAME, is_cluster_name
from vipctl.core.transition import Move, moving_from_json, moving_to_json
from vipctl.errors import BusyError, StateError, UsageError

DEFAULT_STATE_DIR = "/var/lib/vipctl"
# How long a command waits for another one's lock on the same cluster before it says busy
# (exit 75). An apply takes well under a second; the daemon holds the lock only per apply.
LOCK_WAIT_S = 30.0


def state_dir(explicit: str | None = None) -> Path:
    if explicit == "":  # `--state-dir ''` is a mistake, not a request for the default
        raise UsageError("--state-dir: an empty path is not a state directory")
    return Path(explicit or os.environ.get("VIPCTL_STATE_DIR") or DEFAULT_STATE_DIR)


def checked(cluster: str) -> str:
    """A cluster name as the spec allows it: file names under the state directory are made
    of it, so `../x`, `/abs` or a newline never reach a path."""
    if not is_cluster_name(cluster):
        raise UsageError(f"{cluster[:40]!r} is not a cluster name ({CLUSTER_NAME})")
    return cluster


def ensure_dir(directory: Path) -> None:
    """The state directory, created 0700 whatever the umask (it holds the lock files)."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask


@dataclass(frozen=True)
class ClusterState:
    cluster: str
    generation: int
    layout: Layout
    digest: str  # of the rendered ruleset that was committed
    spec: dict[str, Any] | None = None  # the spec as applied (status needs names and ports)
    ifindex: dict[str, int] = field(default_factory=dict)  # port -> ifindex when committed
    macs: dict[str, str] = field(default_factory=dict)  # member -> MAC when committed
    reasons: dict[str, str] = field(default_factory=dict)  # member -> last health transition
    moving: dict[int, Move] = field(default_factory=dict)  # buckets in transition
    # weights in force that differ from the spec's (rebalance, layout import): the part of
    # the desired state the spec file does not hold (core/reconcile.py)
    intent: Intent | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "version": 1,
            "cluster": self.cluster,
            "generation": self.generation,
            "digest": self.digest,
            "layout": self.layout.to_json(),
            "spec": self.spec,
            "ifindex": self.ifindex,
            "macs": self.macs,
            "reasons": self.reasons,
            "moving": moving_to_json(self.moving),
        }
        if self.intent is not None:
            out["intent"] = self.intent.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        return cls(
            cluster=str(data["cluster"]),
            generation=int(data["generation"]),
            digest=str(data.get("digest", "")),
            layout=Layout.from_json(data["layout"]),
            spec=data.get("spec"),
            ifindex={str(k): int(v) for k, v in data.get("ifindex", {}).items()},
            macs={str(k): str(v) for k, v in data.get("macs", {}).items()},
            reasons={str(k): str(v) for k, v in data.get("reasons", {}).items()},
            moving=moving_from_json(data.get("moving")),
            intent=Intent.from_json(data["intent"]) if data.get("intent") else None,
        )


def _path(directory: Path, cluster: str) -> Path:
    return directory / f"{checked(cluster)}.json"


def clusters(directory: Path) -> list[str]:
    """The clusters that have a state file in `directory`."""
    try:
        names = sorted(p.stem for p in directory.glob("*.json"))
    except OSError:
        return []
    return [n for n in names if not n.startswith(("member-", "."))]


def load(directory: Path, cluster: str) -> ClusterState | None:
    path = _path(directory, cluster)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return ClusterState.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateError(f"{path} is corrupt ({exc}); move it away to start afresh") from None


def save(directory: Path, state: ClusterState) -> None:
    write_json(_path(directory, state.cluster), state.to_json())


def remove(directory: Path, cluster: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(directory, cluster).unlink()


def write_json(path: Path, data: object) -> None:
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename: a reader sees the old or the new file.
    (mkstemp creates the file 0600.)"""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(
    directory: Path, cluster: str, *, timeout: float | None = None, required: bool = True
) -> Iterator[None]:
    """Serialize changes to one cluster (two applies at once take turns). Waits at most
    `timeout` (default LOCK_WAIT_S) seconds, then raises BusyError. The lock file is
    created 0600 and never through a symlink (O_NOFOLLOW).

    flock() needs no write access: in a directory that became read-only (a remount, EROFS)
    the existing lock file is opened read-only. `required=False` (the daemon) goes on
    without the lock when even that is impossible: failing over matters more, and no other
    vipctl command can change the cluster then anyway (each needs to write its state)."""
    name = f".{checked(cluster)}.lock"
    wait = LOCK_WAIT_S if timeout is None else timeout
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        ensure_dir(directory)
        fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as exc:
        why = "its lock file is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        try:
            if exc.errno == errno.ELOOP:
                raise
            fd = os.open(directory / name, os.O_RDONLY | flags)
        except OSError:
            if required:
                raise StateError(f"cannot use state directory {directory}: {why}") from None
            yield
            return
    try:
        with contextlib.suppress(OSError):  # read-only: keep the mode it has
            os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"cluster {cluster} is busy: another vipctl command has held its "
                        f"lock for {wait:g} s; nothing changed, try again"
                    ) from None
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_raw(directory: Path, cluster: str) -> bytes | None:
    """The state file's bytes (to put back if a commit fails), None if there is none."""
    try:
        return _path(directory, cluster).read_bytes()
    except FileNotFoundError:
        return None


def restore_raw(directory: Path, cluster: str, data: bytes | None) -> None:
    if data is None:
        remove(directory, cluster)
        return
    write_atomic(_path(directory, cluster), data)

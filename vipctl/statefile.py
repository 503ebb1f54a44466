"""State files under the state directory: JSON, written atomically (temp file + rename).

The kernel is the truth about what is live; the state file keeps what the kernel cannot
(the base table and the set of members down, from which the live table follows).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vipctl.core.partition import Layout
from vipctl.core.transition import Move, moving_from_json, moving_to_json
from vipctl.errors import StateError

DEFAULT_STATE_DIR = "/var/lib/vipctl"


def state_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("VIPCTL_STATE_DIR") or DEFAULT_STATE_DIR)


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

    def to_json(self) -> dict[str, Any]:
        return {
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
        )


def _path(directory: Path, cluster: str) -> Path:
    return directory / f"{cluster}.json"


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
    """Replace `path` with `data` in one rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
def locked(directory: Path, cluster: str) -> Iterator[None]:
    """Serialize changes to one cluster (two applies at once take turns)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / f".{cluster}.lock", "a+")  # noqa: SIM115
    except OSError as exc:
        raise StateError(f"cannot use state directory {directory}: {exc.strerror}") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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

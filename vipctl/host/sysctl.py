"""/proc/sys of the calling thread's network namespace: one helper to read and one to write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vipctl.errors import KernelError


@dataclass(frozen=True)
class Sysctl:
    """One ``/proc/sys`` entry. ``path`` keeps the segments apart because interface names
    may contain dots (eth0.100), which the dotted ``sysctl`` form cannot express.

    ``ok`` lists the values that already satisfy the requirement (``--apply`` leaves
    those alone); otherwise ``value`` is written.
    """

    path: tuple[str, ...]
    value: int
    ok: frozenset[int]
    why: str = ""

    @property
    def key(self) -> str:
        """The name ``sysctl`` accepts: dotted, or slashed when a segment has a dot."""
        if any("." in part for part in self.path):
            return "/".join(self.path)
        return ".".join(self.path)

    @property
    def proc(self) -> Path:
        return Path("/proc/sys", *self.path)


def sysctl(key: str, value: int, ok: set[int] | None = None, why: str = "") -> Sysctl:
    """A Sysctl from a dotted key whose 4th segment may be an interface name (net.ipv4.
    conf.IFACE.x): the last segment is the leaf, the first three fixed, the rest the name."""
    parts = key.split(".")
    if len(parts) > 5 and parts[2] in ("conf", "neigh"):
        parts = [*parts[:3], ".".join(parts[3:-1]), parts[-1]]
    return Sysctl(tuple(parts), value, frozenset(ok if ok is not None else {value}), why)


def read_sysctl(path: tuple[str, ...] | str) -> str | None:
    """The value of a sysctl (dotted key or path segments); None if it does not exist."""
    p = sysctl(path, 0).proc if isinstance(path, str) else Path("/proc/sys", *path)
    try:
        return p.read_text().strip()
    except OSError:
        return None


def write_sysctl(path: tuple[str, ...], value: int | str) -> None:
    p = Path("/proc/sys", *path)
    try:
        p.write_text(f"{value}\n")
    except OSError as exc:
        raise KernelError(f"cannot set {'/'.join(path)} = {value}: {exc.strerror}") from None

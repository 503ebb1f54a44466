"""Kernel tests: real namespaces, real nftables, real packets. Root only.

Every test here is marked ``kernel`` and skipped unless running as root with ``ip``
available. The ``lab`` fixture is a factory: ``lab(members=3, echo=True) -> Lab``; every
lab it built is destroyed at teardown, also when the test failed.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vipctl.lab import topology as labmod
from vipctl.lab.topology import Lab

HERE = Path(__file__).parent
PREFIX_RE = re.compile(r"^vt(\d+)x\d+-")
_counter = itertools.count(1)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if shutil.which("ip") is None:
        return "kernel tests need iproute2 (ip)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kernel: needs root and network namespaces (real nftables, real packets)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _unavailable()
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _reap_stale_labs() -> None:
    """Remove labs left behind by test processes that no longer exist (killed runs)."""
    seen: set[str] = set()
    try:
        names = sorted(os.listdir(labmod.NETNS_DIR))
    except FileNotFoundError:
        return
    for ns in names:
        m = PREFIX_RE.match(ns)
        if not m:
            continue
        pid = int(m.group(1))
        prefix = ns.split("-", 1)[0]
        if prefix in seen or pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        seen.add(prefix)
        labmod.destroy(prefix)


@pytest.fixture(scope="session", autouse=True)
def _stale_labs() -> None:
    if _unavailable() is None:
        _reap_stale_labs()


def unique_prefix() -> str:
    """Short and unique per process and call: ``vt{pid}x{n}``."""
    return f"vt{os.getpid()}x{next(_counter)}"


@pytest.fixture
def lab() -> Iterator[Callable[..., Lab]]:
    built: list[str] = []

    def make(members: int = 3, *, echo: bool = True) -> Lab:
        prefix = unique_prefix()
        built.append(prefix)
        return labmod.build(prefix, members, echo=echo)

    try:
        yield make
    finally:
        for prefix in built:
            labmod.destroy(prefix)


@pytest.fixture(scope="module")
def topo() -> Iterator[Lab]:
    """One 3-member lab shared by the tests of a module (each applies what it needs)."""
    prefix = unique_prefix()
    try:
        yield labmod.build(prefix, 3)
    finally:
        labmod.destroy(prefix)

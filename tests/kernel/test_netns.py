"""links.in_netns refuses a namespace that does not exist (pyroute2's setns, with its
default flags, would create it: a mistyped name would run vipctl in an empty namespace)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vipctl.errors import KernelError
from vipctl.host import links


def test_a_mistyped_namespace_is_an_error_not_a_new_namespace() -> None:
    name = f"vx16-typo-{os.getpid()}"
    before = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        with (
            pytest.raises(KernelError, match=f"network namespace {name} does not exist"),
            links.in_netns(name),
        ):
            pass  # pragma: no cover - must not be reached
        assert not Path("/run/netns", name).exists()
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
    finally:
        if Path("/run/netns", name).exists():  # only if the guard is broken
            os.system(f"ip netns del {name}")


def test_an_existing_namespace_is_entered_and_left(topo: object) -> None:
    ns = topo.router_ns  # type: ignore[attr-defined]
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with links.in_netns(ns):
        inside = os.stat("/proc/thread-self/ns/net").st_ino
        assert inside != before
        assert inside == os.stat(f"/run/netns/{ns}").st_ino
    assert os.stat("/proc/thread-self/ns/net").st_ino == before

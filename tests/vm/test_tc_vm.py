"""Runs tests/vm/run: the tc backend's kernel tests inside a QEMU guest with Debian's stock
6.1 kernel (cls_flower, act_pedit, act_gact; the development kernel has none of them).

The guest is booted once (a module fixture) and runs every test of tests/vm/guest; each
guest test is reported here as its own test, passed only when the guest's pytest reported
it PASSED (a guest test that failed, errored, was skipped or never ran fails its twin
here, with the guest's output). The guest tests are listed by collecting tests/vm/guest on
the host, where they collect but are skipped.

Skipped, with the reason, when QEMU, a static busybox or the unpacked kernel is missing:
`scripts/install-vm-deps` installs all three (CI runs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
VMDIR = Path(os.environ.get("VIPCTL_VM_DIR", "/var/cache/vipctl/vm"))
# `pytest -rA` in the guest: one short-summary line per test, "PASSED <node id>" ...
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (tests/vm/guest/\S+)")


def _missing() -> str | None:
    if os.environ.get("VIPCTL_IN_VM") == "1":
        return "already inside the guest"
    if os.geteuid() != 0:
        return "the VM test shares / read-only into the guest: run as root"
    if shutil.which(os.environ.get("QEMU", "qemu-system-x86_64")) is None:
        return "qemu-system-x86_64 is not installed (run scripts/install-vm-deps)"
    if not Path(os.environ.get("BUSYBOX", "/bin/busybox")).exists():
        return "busybox-static is not installed (run scripts/install-vm-deps)"
    if not (VMDIR / "current" / "lib" / "modules").is_dir():
        return f"no unpacked Debian kernel in {VMDIR}/current (run scripts/install-vm-deps)"
    return None


def guest_tests() -> list[str]:
    """The node ids of tests/vm/guest (collected on the host; empty when the VM cannot run,
    so nothing is collected for nothing)."""
    if _missing() is not None:
        return []
    pytest_args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, str(HERE / "guest")],
        capture_output=True, text=True, check=True, timeout=120, cwd=HERE.parent.parent,
    )  # fmt: skip
    return [line for line in proc.stdout.splitlines() if line.startswith("tests/vm/guest/")]


def outcomes(console: str) -> dict[str, str]:
    """{node id: PASSED/FAILED/...} from the guest pytest's -rA summary."""
    found = {}
    for line in console.splitlines():
        m = OUTCOME.match(line.strip())
        if m:
            found[m.group(2)] = m.group(1)
    return found


def report_of(console: str, node: str) -> str:
    """The guest pytest's report section of `node` (its ____ name ____ block), or the
    console's last 80 lines when there is none."""
    lines = console.splitlines()
    title = re.compile(r"^_{3,} (.+?) _{3,}$")
    name = node.split("::", 1)[1]
    for i, line in enumerate(lines):
        m = title.match(line.strip())
        if m and m.group(1) == name:
            end = next(
                (j for j in range(i + 1, len(lines))
                 if title.match(lines[j].strip()) or lines[j].startswith("=====")),
                len(lines),
            )  # fmt: skip
            return "\n".join(lines[i:end])
    return "\n".join(lines[-80:])


def test_outcomes_are_read_per_test() -> None:
    """The summary parser (pure): each id gets its own outcome, a failure's message is not
    part of the id, and an id the guest never reported is absent."""
    console = (
        "=== short test summary info ===\n"
        "PASSED tests/vm/guest/test_tc_guest.py::test_a[broadcast-flower]\n"
        "FAILED tests/vm/guest/test_tc_guest.py::test_b[steer] - AssertionError: 3 lost\n"
        "[   12.3] random kernel line\n"
        "ERROR tests/vm/guest/test_tc_guest.py::test_c - RuntimeError\n"
    )
    report = "=== FAILURES ===\n___ test_b[steer] ___\nE  3 lost\n___ test_d ___\nE  other\n"
    assert report_of(report + console, "tests/vm/guest/x.py::test_b[steer]") == (
        "___ test_b[steer] ___\nE  3 lost"
    )
    assert outcomes(console) == {
        "tests/vm/guest/test_tc_guest.py::test_a[broadcast-flower]": "PASSED",
        "tests/vm/guest/test_tc_guest.py::test_b[steer]": "FAILED",
        "tests/vm/guest/test_tc_guest.py::test_c": "ERROR",
    }


@pytest.fixture(scope="module")
def guest_run() -> tuple[int, str]:
    """One boot of the guest running every guest test: (exit code, console output)."""
    proc = subprocess.run(
        [str(HERE / "run"), "-rA"], capture_output=True, text=True, timeout=1200, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


GUEST_TESTS = guest_tests()


@pytest.mark.vm
@pytest.mark.parametrize(
    "node", GUEST_TESTS or [None], ids=[n.split("::", 1)[1] for n in GUEST_TESTS] or ["vm"]
)
def test_tc_backend_in_qemu_guest(node: str | None, guest_run: tuple[int, str]) -> None:
    reason = _missing()
    if reason or node is None:
        pytest.skip(reason or "no guest tests were collected")
    rc, console = guest_run
    got = outcomes(console).get(node)
    assert got == "PASSED", (
        f"{node}: guest reported {got or 'nothing'} (run exit {rc}):\n{report_of(console, node)}"
    )

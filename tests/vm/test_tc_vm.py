"""Runs tests/vm/run: the tc backend's kernel tests inside a QEMU guest with Debian's stock
6.1 kernel (cls_flower, act_pedit, act_gact; the development kernel has none of them).

Skipped, with the reason, when QEMU, a static busybox or the unpacked kernel is missing:
`scripts/install-vm-deps` installs all three (CI runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
VMDIR = Path(os.environ.get("VIPCTL_VM_DIR", "/var/cache/vipctl/vm"))


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


@pytest.mark.vm
def test_tc_backend_in_qemu_guest() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        [str(HERE / "run")], capture_output=True, text=True, timeout=900, check=False
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"tests/vm/run exited {proc.returncode}:\n{tail}"

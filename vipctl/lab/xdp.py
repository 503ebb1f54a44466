"""XDP in the lab (tests and benchmarks of `backend: xdp`).

- A bpffs mounted under /tmp: `ip netns exec` remounts /sys, so the backend's pins must
  live on a bpffs it does not hide (VIPCTL_BPFFS points vipctl at it).
- veth delivers an XDP_REDIRECTed frame only when the receiving end runs an XDP program
  (kernel 6.18, drivers/net/veth.c: no NDO_XMIT otherwise): every member's eth0 gets the
  object's `vipctl_pass` (XDP_PASS). Routed and nftables traffic is unaffected by it.
- A veth sender leaves TCP/UDP checksums to the receiver (CHECKSUM_PARTIAL); a frame that
  XDP redirects loses that mark and the member drops it as a bad checksum. Real NICs
  deliver complete checksums; the lab's client gets `ethtool -K eth0 tx off` (its kernel
  then completes every checksum before sending, as a NIC's sender would).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vipctl.backends import xdp
from vipctl.lab.topology import Lab

BPFFS = Path("/tmp/vipctl-bpffs")


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def mount_bpffs(path: Path = BPFFS) -> Path:
    """A bpffs at `path` (mounted once, shared by every lab), exported as VIPCTL_BPFFS for
    this process and the vipctl processes it starts."""
    path.mkdir(parents=True, exist_ok=True)
    if str(path) not in xdp._bpffs_mounts():
        _run(["mount", "-t", "bpf", "bpf", str(path)])
    os.environ["VIPCTL_BPFFS"] = str(path)
    return path


def members_pass(lab: Lab, root: Path = BPFFS) -> None:
    """XDP_PASS on every member's eth0 (pinned under root/lab/<prefix>)."""
    pins = root / "lab" / lab.prefix
    shutil.rmtree(pins, ignore_errors=True)
    pins.parent.mkdir(parents=True, exist_ok=True)
    _run(["bpftool", "prog", "loadall", str(xdp.object_path()), str(pins)])
    for m in lab.members:
        _run(
            ["ip", "netns", "exec", m.ns, "bpftool", "net", "attach", "xdpdrv", "pinned",
             str(pins / xdp.PASS_PROG), "dev", "eth0", "overwrite"]
        )  # fmt: skip


def prepare(lab: Lab, root: Path = BPFFS) -> None:
    """What a lab needs before XDP steers in it: XDP_PASS on the members, full checksums
    from the client."""
    members_pass(lab, root)
    _run(["ip", "netns", "exec", lab.client_ns, "ethtool", "-K", "eth0", "tx", "off"])


def pins_of(lab: Lab, root: Path = BPFFS) -> list[Path]:
    """Where vipctl and members_pass pin for this lab (backends/xdp.py: pin_dir)."""
    router = os.stat(f"/run/netns/{lab.router_ns}").st_ino  # the namespace's nsfs inode
    return [root / "vipctl" / str(router), root / "lab" / lab.prefix]


def cleanup(pins: list[Path]) -> None:
    """Remove the lab's pins (the programs went with its namespaces; a cluster a test did
    not take down would keep its maps, and their memory, pinned)."""
    for path in pins:
        shutil.rmtree(path, ignore_errors=True)

"""The shipped systemd unit: what the daemon and the BIRD it starts need, checked with
systemd-analyze (offline: systemd is not PID 1 here). That BIRD really works with the
unit's capability set is tests/kernel/test_two_routers.py::test_bgp_under_the_units_capabilities."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "vipctl@.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_grants_what_bird_needs() -> None:
    s = settings()
    # port 179 (BGP) is below 1024; nftables/rtnetlink; ICMP probes
    assert set(s["CapabilityBoundingSet"][0].split()) == {
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",
    }
    # BIRD's sockets: BGP/BFD (inet, inet6), the kernel (netlink), birdc (unix)
    assert set(s["RestrictAddressFamilies"][0].split()) >= {
        "AF_UNIX",
        "AF_NETLINK",
        "AF_INET",
        "AF_INET6",
    }
    # the one BIRD of every cluster outlives the instance that started it
    assert s["KillMode"] == ["process"]
    # its files live in the state directory; the external speaker's routes file
    assert s["StateDirectory"] == ["vipctl"] and s["ReadWritePaths"] == ["-/etc/bird/vipctl.d"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "vipctl@web.service"
    vipctl = Path(sys.executable).with_name("vipctl")
    unit.write_text(UNIT.read_text().replace("/usr/bin/vipctl", str(vipctl)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr

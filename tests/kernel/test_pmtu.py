"""Path MTU discovery through vipctl: ICMP errors about a flow reach its member.

A far client sits behind a link with MTU 1280 that is not its own (so it advertises a full
MSS): far (1500) -- mid -- (1280) -- client ns (a router here) -- router (vipctl) -- members.
A member's large replies (DF set) meet the 1280 link at the client namespace, which sends
ICMP fragmentation-needed (IPv6: packet too big) to the VIP. Its source is that router, not
the client: bucketed by source it would reach an arbitrary member. The far address is
chosen so that the ICMP source's bucket belongs to another member than the far client's:
without vipctl's handling of ICMP errors the download stalls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kernel.helpers import vipctl, write_spec
from vipctl.lab import topology as labmod
from vipctl.lab.topology import Lab

LabFactory = Callable[..., Lab]
FAR4, FAR6 = "10.99.200.200", "2001:db8:200::c8"  # bucket 200 (mask, 8 bits)

DOWNLOAD = """
import socket, sys
vip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
line = b"x" * 1023 + b"\\n"
lines = size // len(line)
s = socket.create_connection((vip, port), timeout=10)
s.settimeout(10)
s.sendall(line * lines)
got = bytearray()
try:
    while got.count(b"\\n") < lines:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except TimeoutError:
    pass
answers = got.split(b"\\n")[:-1]
member = answers[0].split(b" ")[0].decode() if answers else "-"
ok = len(answers) == lines and all(a == member.encode() + b" " + line[:-1] for a in answers)
print(("ok " + member) if ok else f"got {len(got)} bytes, {len(answers)} of {lines} lines")
"""


def bottleneck(lab: Lab) -> tuple[str, str]:
    """Add the far client and the 1280 link; returns (mid ns, far ns)."""
    prefix = lab.router_ns.removesuffix("-router")
    mid, far = f"{prefix}-mid", f"{prefix}-far"
    labmod._ip_batch(None, [f"netns add {mid}", f"netns add {far}"])
    for ns in (mid, far):
        labmod.set_sysctls(ns, labmod._common_sysctls())
    for ns in (mid, lab.client_ns):
        labmod.set_sysctls(ns, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
    c = lab.client_ns
    labmod._ip_batch(
        c,
        [
            # the client's sources stay local except the far client's /24
            f"route del local {lab.sources4} dev lo table local",
            "route add local 10.99.0.0/17 dev lo",
            f"link add l2 mtu 1280 type veth peer name l2 mtu 1280 netns {mid}",
            "addr add 10.99.201.1/30 dev l2",
            "addr add 2001:db8:201::1/64 dev l2 nodad",
            "link set l2 up",
            "route add 10.99.200.0/24 via 10.99.201.2 dev l2",
            "route add 2001:db8:200::/64 via 2001:db8:201::2 dev l2",
        ],
    )
    labmod._ip_batch(
        mid,
        [
            "link set lo up",
            "addr add 10.99.201.2/30 dev l2",
            "addr add 2001:db8:201::2/64 dev l2 nodad",
            "link set l2 up",
            f"link add l1 type veth peer name eth0 netns {far}",
            "addr add 10.99.200.1/24 dev l1",
            "addr add 2001:db8:200::1/64 dev l1 nodad",
            "link set l1 up",
            "route add default via 10.99.201.1 dev l2",
            "route add ::/0 via 2001:db8:201::1 dev l2",
        ],
    )
    labmod._ip_batch(
        far,
        [
            "link set lo up",
            f"addr add {FAR4}/24 dev eth0",
            f"addr add {FAR6}/64 dev eth0 nodad",
            "link set eth0 up",
            "route add default via 10.99.200.1 dev eth0",
            "route add ::/0 via 2001:db8:200::1 dev eth0",
        ],
    )
    labmod._ip_batch(
        lab.router_ns, [f"route add 2001:db8:200::/64 via {lab.client6} dev {lab.uplink}"]
    )
    return mid, far


def downloads_complete(lab: Lab, far: str) -> None:
    """100 kB down from each VIP to the far client, complete and from one member."""
    for vip in (lab.vip4, lab.vip6):
        proc = labmod.run_in(
            far,
            [sys.executable, "-c", DOWNLOAD, vip, str(lab.echo_port), str(100 * 1024)],
            check=False,
        )
        # the echo answers each line prefixed with the member's name: 100 kB back
        assert proc.stdout.startswith("ok "), (vip, proc.stdout, proc.stderr[-500:])


@pytest.mark.parametrize("mode", ["steer", "broadcast"])
def test_a_large_download_completes_through_a_smaller_mtu(
    lab: LabFactory, tmp_path: Path, mode: str
) -> None:
    lb = lab(3)
    _mid, far = bottleneck(lb)
    spec = lb.spec("web", mode=mode, key="mask", bits=8)
    path = write_spec(tmp_path / "web.json", spec)
    state = str(tmp_path / "state")
    vipctl(lb.router_ns, "apply", str(path), "--state-dir", state, check=True)
    try:
        downloads_complete(lb, far)
    finally:
        vipctl(lb.router_ns, "down", "web", "--state-dir", state)

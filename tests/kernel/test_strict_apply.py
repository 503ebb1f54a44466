"""On a real kernel: whatever validates applies, in one transaction, and whatever
does not validate changes nothing (ruleset and state byte-identical, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import ruleset, sh, vipctl, write_spec
from vipctl.lab import traffic
from vipctl.lab.topology import Lab


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def _snapshot(topo: Lab, state: str) -> tuple[str, dict[str, bytes]]:
    files = {p.name: p.read_bytes() for p in sorted(Path(state).iterdir())}
    return ruleset(topo.router_ns), files


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_dual_stack_to_ipv4_only_and_back_exactly_once(
    topo: Lab, tmp_path: Path, state: str, mode: str
) -> None:
    """Dropping a family used to be EBUSY (its chains deleted while the deliver map still
    pointed at them): only `down` + `apply`, an outage, got there. Now each change is one
    apply, and numbered IPv4 packets sent throughout each reach exactly one member."""
    dual = topo.spec("web", mode=mode, key="mask", bits=8)
    v4 = {**dual, "vips": [topo.vip4]}
    dual_path = write_spec(tmp_path / "dual.json", dual)
    v4_path = write_spec(tmp_path / "v4.json", v4)
    vipctl(topo.router_ns, "apply", str(dual_path), "--state-dir", state, check=True)
    sources = traffic.expand(topo.sources4, 256)
    try:
        cap = traffic.capture_start(topo)
        sender = None
        try:
            sender = traffic.numbered_spawn(topo, topo.vip4, sources, count=10**6, rate_pps=5000)
            time.sleep(0.5)
            for path in (v4_path, dual_path, v4_path, dual_path):
                proc = vipctl(topo.router_ns, "apply", str(path), "--state-dir", state)
                assert proc.returncode == 0, proc.stderr
                has_v6 = "owners6" in ruleset(topo.router_ns)
                assert has_v6 == (path == dual_path)
                time.sleep(0.3)
        finally:
            if sender is not None:  # also on a failure: the next test needs a quiet lab
                sender.proc.terminate()
                sender.proc.wait(30)
            seen = traffic.capture_stop(cap)
        sent = max((max(v) for v in seen.values() if v), default=-1) + 1
        assert sent > 1000, f"too little traffic ({sent})"
        lost, duplicated = traffic.check_exactly_once(sent, seen)
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated[:10])
        # IPv6 is served again, exactly once per source
        v6 = traffic.expand(topo.sources6, 256)
        got = traffic.probe(topo, topo.vip6, v6)
        assert all(len(got[s]) == 1 for s in v6), got
    finally:
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)


def _bad_files(tmp_path: Path, good: dict[str, Any]) -> list[Path]:
    out: list[Path] = []

    def put(name: str, data: bytes | str) -> None:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        out.append(path)

    put("binary.yaml", bytes(range(256)) * 8)
    put("latin1.yaml", json.dumps(good).replace("web", "w\xe9b").encode("latin-1"))
    put(
        "bigint.json",
        json.dumps({**good, "partition": {"bits": 1}}).replace(
            '"bits": 1', '"bits": ' + "9" * 5000
        ),
    )
    put("deep.json", '{"cluster": ' + "[" * 50_000 + "]" * 50_000 + "}")
    put("deep.yaml", "cluster: " + "[" * 50_000 + "]" * 50_000 + "\n")
    put("complex.yaml", "? [a, b]\n: 1\n")
    put("huge.yaml", ("# " + "x" * 1000 + "\n") * 3000)
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        bomb.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    put("bomb.yaml", "\n".join(bomb) + "\n")
    put("dup.json", json.dumps(good)[:-1] + ', "cluster": "evil"}')
    put("true-vip.json", json.dumps({**good, "vips": [True]}))
    put("int-vip.json", json.dumps({**good, "vips": [7]}))
    put("bits-true.json", json.dumps({**good, "partition": {"bits": True}}))
    put("scope.json", json.dumps({**good, "vips": [*good["vips"], 'fe80::1%x"; flush ruleset']}))
    put(
        "crlf.json",
        json.dumps({**good, "health": {"probe": {"kind": "http", "path": "/\r\nX: y"}}}),
    )
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    out.append(fifo)
    out.append(Path("/dev/zero"))
    return out


def test_rejected_specs_change_nothing(topo: Lab, tmp_path: Path, state: str) -> None:
    good = topo.spec("web", mode="broadcast", key="mask")
    good_path = write_spec(tmp_path / "web.json", good)
    vipctl(topo.router_ns, "apply", str(good_path), "--state-dir", state, check=True)
    try:
        before = _snapshot(topo, state)
        for path in _bad_files(tmp_path, good):
            for command in ("validate", "apply"):
                started = time.monotonic()
                extra = ("--state-dir", state) if command == "apply" else ()
                proc = vipctl(topo.router_ns, command, str(path), *extra)
                assert proc.returncode == 78, (path.name, command, proc.returncode, proc.stderr)
                assert "Traceback" not in proc.stderr, (path.name, proc.stderr)
                assert len(proc.stderr.strip().splitlines()) == 1, (path.name, proc.stderr)
                assert time.monotonic() - started < 10, path.name
                assert _snapshot(topo, state) == before, f"{path.name} changed the kernel or state"
        for args, code in [
            (("down", "/../../x"), 2),
            (("status", "web\nx"), 2),
            (("rebalance", str(good_path), "--weights", "web1=1e400"), 2),
            (("rebalance", str(good_path), "--weights", "web1=1,web1=2"), 2),
            (("rebalance", str(good_path), "--weights", "web1=1e-400"), 2),
            (("down", "nosuch"), 1),
        ]:
            proc = vipctl(topo.router_ns, *args, "--state-dir", state)
            assert proc.returncode == code, (args, proc.returncode, proc.stderr)
            assert "Traceback" not in proc.stderr
            assert _snapshot(topo, state) == before, f"{args} changed the kernel or state"
    finally:
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)


def test_a_kernel_refusal_names_the_batch_line(topo: Lab) -> None:
    """nft 1.0.6 quoted an EBUSY from `delete chain` as line 1 (`add table ...`)."""
    batch = (
        "add table netdev vx15_probe\n"
        "add chain netdev vx15_probe x1\n"
        "add map netdev vx15_probe vm { type mark : verdict; }\n"
        "add element netdev vx15_probe vm { 1 : goto x1 }\n"
        "delete chain netdev vx15_probe x1\n"
        "add chain netdev vx15_probe x2\n"
    )
    code = (
        "import sys\nfrom vipctl.backends import nft\n"
        "for f in (nft.check, nft.commit):\n"
        "    try:\n        f(sys.stdin.read() if False else BATCH)\n"
        "    except Exception as e:\n        print(e)\n"
    ).replace("BATCH", repr(batch))
    proc = subprocess.run(
        ["ip", "netns", "exec", topo.router_ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc
    for line in lines:
        assert "busy" in line and "batch line 5: delete chain netdev vx15_probe x1" in line, line
    assert "vx15_probe" not in sh(topo.router_ns, "nft list tables")


def test_announce_under_read_only_sysctls_refuses_before_the_commit(
    topo: Lab, tmp_path: Path, state: str
) -> None:
    """The unit's ProtectKernelTunables makes /proc/sys read-only: apply used to commit the
    ruleset, then exit 1 on the uplink's proxy_delay write."""
    spec = topo.spec("web", mode="steer", key="mask", vips=[topo.vip4])
    path = write_spec(tmp_path / "web.json", spec)
    vipctl(topo.router_ns, "apply", str(path), "--state-dir", state, check=True)
    try:
        sh(topo.router_ns, f"sysctl -qw net.ipv4.neigh.{topo.uplink}.proxy_delay=80")
        before = _snapshot(topo, state)
        announced = write_spec(
            tmp_path / "announce.json", {**spec, "announce_vips": True, "mode": "broadcast"}
        )
        cmd = (
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
            f"{sys.executable} -m vipctl.cli apply {announced} --state-dir {state}"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", topo.router_ns, "unshare", "-m", "sh", "-c", cmd],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "read-only" in proc.stderr and "nothing changed" in proc.stderr, proc.stderr
        assert _snapshot(topo, state) == before
    finally:
        vipctl(topo.router_ns, "down", "web", "--state-dir", state)

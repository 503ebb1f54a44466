"""The daemon fails over whatever else goes wrong: a huge or broken spec on
SIGHUP, a read-only state directory, probes that cannot be sent (a silent member with a
long timeout, the daemon out of file descriptors).

Same lab and helpers as test_daemon.py (router, 3 members with echo servers, tcp probes
every 100 ms, timeout 300, rise 2, fall 3; a probe of 1024 sources checks exactly-once).
Waits are functional with a deadline: the usual failover bound interval*fall+200 ms plus
the shared-CPU noise allowance. Figures are printed as `MEASURED ...` lines (`pytest -s`)
and recorded in bench/README.md ("Faults").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kernel import test_daemon as base
from tests.kernel.helpers import write_spec
from tests.kernel.test_daemon import (
    EVENT_WAIT_S,
    Cluster,
    Daemon,
    block_tcp,
    check_exactly_once,
    gone,
    stop_echo,
    wait_for,
)
from vipctl import statefile

# a deadline to wait for the failover, not a timing assertion (bench/failover.py measures):
# a reload that blocked the loop took 50 s, far past it
BOUND_S = EVENT_WAIT_S
topo = base.topo  # the module's lab and the per-test cluster, as in test_daemon.py
cluster = base.cluster


def watch_pings(d: Daemon, seconds: float) -> list[float]:
    """Arrival times of WATCHDOG=1 for `seconds` (polling the notify socket)."""
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = d.notes.count("WATCHDOG=1")
        d.read_notes(0.02)
        times.extend([time.monotonic()] * (d.notes.count("WATCHDOG=1") - before))
    return times


def no_traceback(d: Daemon) -> None:
    assert "Traceback" not in d.text(), d.text()[-3000:]


def test_a_50mb_spec_on_sighup_then_a_member_killed(cluster: Cluster) -> None:
    """SIGHUP with a 50 MB spec (YAML), then web2's server killed 0.5 s later: failed over
    within the usual bound, watchdog pings (every 0.5 s) never more than 1 s apart, the
    last good spec still in force (was: 50 s of parsing on the loop, no probe, no ping)."""
    c = cluster
    c.path = c.tmp / "web.yaml"
    write_spec(c.path, c.spec)  # JSON is YAML: the YAML parser reads it
    d = c.daemon(wrap=("env", "WATCHDOG_USEC=1000000"))
    d.wait_note("READY=1")
    _, table = c.live()
    with c.path.open("a") as fh:
        fh.write("# " + "x" * (50 << 20) + "\n")
    mark = len(d.read_notes())
    d.proc.send_signal(signal.SIGHUP)
    pings = watch_pings(d, 0.5)
    t0 = time.monotonic()
    stop_echo(c.topo, "web2")
    assert wait_for(gone(c, "web2"), BOUND_S, 0.01), d.text()[-2000:]
    took = time.monotonic() - t0
    pings += watch_pings(d, 1.5)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    print(f"\nMEASURED 50 MB reload + failover: {took * 1000:.0f} ms; ping gaps {gaps}")
    assert len(pings) >= 3 and max(gaps) <= 1.0, gaps
    assert "READY=1" in d.notes[mark:]
    assert re.search(r"reload rejected: .*web\.yaml is larger than", d.text())
    no_traceback(d)
    _, after = c.live()
    assert all(after[i] == table[i] for i in range(len(table)) if table[i] != "web2")
    check_exactly_once(c, c.owners(after))


@pytest.mark.parametrize("kind", ["invalid-utf8", "garbage", "fifo"])
def test_a_broken_spec_on_sighup_keeps_the_last_good_one(cluster: Cluster, kind: str) -> None:
    c = cluster
    d = c.daemon()
    d.wait_note("READY=1")
    gen, table = c.live()
    good = c.path.read_bytes()
    if kind == "invalid-utf8":
        c.path.write_bytes(good.replace(b'"web"', b'"w\xe9b"'))
    elif kind == "garbage":
        c.path.write_bytes(os.urandom(4096))
    else:
        c.path.unlink()
        os.mkfifo(c.path)
    mark = len(d.read_notes())
    d.proc.send_signal(signal.SIGHUP)
    d.wait_note("READY=1", timeout=5, after=mark)
    status = [n for n in d.notes[mark:] if n.startswith("STATUS=")]
    assert status and "running the last good spec" in status[-1], status
    d.wait_log(r"reload rejected: keeping the last good spec")
    no_traceback(d)
    assert d.proc.poll() is None and c.live() == (gen, table)
    # the last good spec is in force: a failure is still handled
    stop_echo(c.topo, "web1")
    assert wait_for(gone(c, "web1"), BOUND_S, 0.01)
    if kind == "fifo":
        c.path.unlink()
    c.path.write_bytes(good)


def test_a_non_utf8_spec_at_start_exits_78(cluster: Cluster) -> None:
    """78 (EX_CONFIG): the unit's RestartPreventExitStatus=78 stops the restart loop."""
    c = cluster
    c.path.write_bytes(c.path.read_bytes().replace(b'"web"', b'"w\xe9b"'))
    d = c.daemon()
    assert d.proc.wait(timeout=20) == 78, d.text()
    assert "not UTF-8" in d.text()
    no_traceback(d)


@contextlib.contextmanager
def read_only(c: Cluster, d: Daemon, how: str) -> Iterator[None]:
    """The state directory read-only for the daemon: a read-only bind mount inside its own
    mount namespace (`ip netns exec` gave it a private one: nothing shows outside), or
    chattr +i on the temp directory."""
    state = str(c.state)
    if how == "bind":
        ns = ["nsenter", "-t", str(d.proc.pid), "-m"]
        subprocess.run([*ns, "mount", "--bind", state, state], check=True)
        subprocess.run([*ns, "mount", "-o", "remount,bind,ro", state], check=True)
        probe = subprocess.run([*ns, "touch", f"{state}/probe"], capture_output=True)
        assert probe.returncode != 0, "the bind mount is not read-only"
        try:
            yield
        finally:
            subprocess.run([*ns, "umount", state], check=True)
    else:
        subprocess.run(["chattr", "+i", state], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", state], check=True)


@pytest.mark.parametrize("how", ["bind", "chattr"])
def test_a_read_only_state_directory_does_not_stop_a_failover(cluster: Cluster, how: str) -> None:
    c = cluster
    d = c.daemon()
    d.wait_note("READY=1")
    gen, _ = c.live()
    with read_only(c, d, how):
        t0 = time.monotonic()
        stop_echo(c.topo, "web2")
        assert wait_for(gone(c, "web2"), BOUND_S, 0.01), d.text()[-3000:]
        took = time.monotonic() - t0
        _, table = c.live()
        check_exactly_once(c, c.owners(table))  # 0 unanswered sources
        d.wait_log(r"STATE NOT WRITTEN: cannot write the state of web in .*: (Read-only|Op)")
        st = statefile.load(c.state, "web")
        assert st is not None and st.generation == gen  # the file is behind the kernel
        d.read_notes()
        assert any(n.startswith("STATUS=DEGRADED: state not written") for n in d.notes)
    d.wait_log(r"state written again: .* has caught up with the kernel", timeout=15)
    live_gen, table = c.live()
    st = statefile.load(c.state, "web")
    assert st is not None and st.generation == live_gen and st.layout.table == table
    no_traceback(d)
    print(f"\nMEASURED failover with a read-only state directory ({how}): {took * 1000:.0f} ms")
    # a restart after the disk came back adopts the live table: no bucket moves
    d.kill(signal.SIGKILL)
    d2 = c.daemon()
    d2.wait_note("READY=1")
    assert "already matches, nothing written" in d2.text(), d2.text()
    time.sleep(0.5)
    assert c.live() == (live_gen, table)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


SILENT_S = 60.0


def test_a_silent_member_with_a_long_timeout_holds_few_sockets(cluster: Cluster) -> None:
    """Probes every 10 ms with a 60 s timeout, web2 silent (SYNs dropped) for a minute:
    the daemon's open files stay bounded (was: 6002 sockets per silent member, until
    EMFILE failed every member) and no other member is declared down."""
    c = cluster
    c.spec["health"].update(interval_ms=10, timeout_ms=60_000)
    write_spec(c.path, c.spec)
    d = c.daemon()
    d.wait_note("READY=1")
    _, table = c.live()
    first = open_fds(d.proc.pid)
    block_tcp(c.topo, "web2", True, "tcp dport 7000 drop")
    most = first
    deadline = time.monotonic() + SILENT_S
    while time.monotonic() < deadline:
        most = max(most, open_fds(d.proc.pid))
        time.sleep(0.5)
    print(f"\nMEASURED silent member, 10 ms / 60 s: open files {first} -> at most {most}")
    assert most <= first + 16, (first, most)
    assert not re.search(r"web[13] DOWN", d.text()), d.text()[-2000:]
    assert d.proc.poll() is None
    _, now = c.live()
    assert all(now[i] == table[i] for i in range(len(table)) if table[i] != "web2")


def metrics_text(ns: str, url: str) -> str:
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_out_of_file_descriptors_fails_no_member(cluster: Cluster) -> None:
    """prlimit lowers the daemon's file limit below what it has open: every probe fails
    with EMFILE for 3 s. No member is declared down, the cause is logged and counted, the
    STATUS line says so; with the limit back the daemon carries on and fails over."""
    c = cluster
    d = c.daemon(extra=("--metrics", "127.0.0.1:9479"))
    d.wait_note("READY=1")
    gen, table = c.live()
    pid = str(d.proc.pid)
    soft, hard = (
        int(x)
        for x in subprocess.run(
            ["prlimit", "--pid", pid, "--nofile", "--raw", "--noheadings", "-o", "SOFT,HARD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    low = open_fds(d.proc.pid) - 4
    subprocess.run(["prlimit", "--pid", pid, f"--nofile={low}:{hard}"], check=True)
    try:
        d.wait_log(r"cannot probe: tcp connect .*: too many open files", timeout=5)
        time.sleep(3)
        assert d.proc.poll() is None
        assert c.live() == (gen, table), "the table changed while probes could not be sent"
    finally:
        subprocess.run(["prlimit", "--pid", pid, f"--nofile={soft}:{hard}"], check=True)
    d.wait_log(r"probes work again", timeout=5)
    assert not re.search(r"web\d DOWN", d.text()), d.text()[-3000:]
    d.read_notes()
    assert any("STATUS=DEGRADED: probes failing locally: too many open files" in n for n in d.notes)
    text = metrics_text(c.topo.router_ns, "http://127.0.0.1:9479/metrics")
    found = re.search(r'vipctl_daemon_probe_local_errors_total\{.*cause="EMFILE".*\} (\S+)', text)
    assert found and float(found.group(1)) > 0, text
    assert re.search(r"vipctl_daemon_members_unprobed\{.*\} 0\.0", text), text
    no_traceback(d)
    stop_echo(c.topo, "web3")  # and it still does its job
    assert wait_for(gone(c, "web3"), BOUND_S, 0.01)


def cli_status(c: Cluster) -> tuple[dict[str, Any], str]:
    """`vipctl status web` as an operator runs it (JSON and text)."""
    from tests.kernel.helpers import vipctl

    args = ("status", "web", "--state-dir", str(c.state))
    got = vipctl(c.topo.router_ns, *args, "--json", check=True)
    text = vipctl(c.topo.router_ns, *args, check=True).stdout
    return json.loads(got.stdout), text


def test_status_shows_what_the_daemon_knows(cluster: Cluster) -> None:
    """`vipctl status` said only "STATE DIFFERS FROM KERNEL" (issue 28); now it shows the
    daemon's own report: running, degraded and why, state write failing, the last
    failover; and NOT RUNNING once it died."""
    from vipctl.service import daemonstatus

    c = cluster
    d = c.daemon()
    d.wait_note("READY=1")
    request_cleanup = daemonstatus.runtime_path(c.state, "web")  # written while read-only
    report, text = cli_status(c)
    assert report["daemon"]["running"] and not report["daemon"]["degraded"], report
    assert report["daemon"]["last_failover"] is None
    assert "daemon: pid" in text and "no trouble" in text, text
    with read_only(c, d, "chattr"):
        stop_echo(c.topo, "web2")
        assert wait_for(gone(c, "web2"), BOUND_S, 0.01), d.text()[-3000:]
        d.wait_log(r"STATE NOT WRITTEN")
        report, text = cli_status(c)
        daemon = report["daemon"]
        assert daemon["state_write_failing"] and daemon["degraded"], daemon
        assert daemon["last_failover"]["members"] == ["web2"], daemon
        assert "STATE WRITE FAILING" in text and "DEGRADED" in text, text
        assert re.search(r"last failover: web2 at ", text), text
    d.wait_log(r"state written again", timeout=15)
    report, text = cli_status(c)
    assert not report["daemon"]["state_write_failing"] and report["in_sync"], report
    assert report["daemon"]["last_failover"]["members"] == ["web2"]
    from tests.schemacheck import errors
    from vipctl.core import schemas

    assert errors(report, schemas.STATUS) == []
    d.kill(signal.SIGKILL)
    report, text = cli_status(c)
    assert report["daemon"]["running"] is False and "daemon: NOT RUNNING" in text, text
    no_traceback(d)
    # `vipctl down` removes what the daemon wrote, with the state
    from tests.kernel.helpers import vipctl

    vipctl(c.topo.router_ns, "down", "web", "--state-dir", str(c.state), check=True)
    assert not daemonstatus.path(c.state, "web").exists()
    assert not request_cleanup.exists()


def test_the_daemon_switches_off_a_killed_measurement(cluster: Cluster) -> None:
    """With a daemon running: `rebalance --auto` measures undisturbed (the measurement's
    lease in the state directory tells the daemon's convergence check that the counting
    table is no drift), and SIGKILLed during its window its counters do not stay: the
    daemon finds the lease abandoned (its process gone) and converges, which switches the
    counting off."""
    from tests.kernel.helpers import vipctl, vipctl_spawn
    from tests.kernel.test_retune import _load_objects

    c = cluster
    c.spec["pinning"] = {"idle_timeout_s": 10}  # the daemon looks every idle/10 = 1 s
    write_spec(c.path, c.spec)
    d = c.daemon()
    d.wait_note("READY=1")
    # a measurement that runs its course is not taken for drift by the daemon's
    # convergence check (it switched the counting off within 0.1 s: "interrupted")
    whole = vipctl(
        c.topo.router_ns, "rebalance", str(c.path), "--auto", "--window", "2", "--dry-run",
        "--state-dir", str(c.state),
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr + d.text()[-2000:]
    assert not _load_objects(c.topo.router_ns, "web"), d.text()
    auto = vipctl_spawn(
        c.topo.router_ns, "rebalance", str(c.path), "--auto", "--window", "30",
        "--state-dir", str(c.state),
    )  # fmt: skip
    if not wait_for(lambda: bool(_load_objects(c.topo.router_ns, "web")), 10, 0.05):
        auto.kill()
        raise AssertionError(f"counting never on: {auto.communicate(timeout=30)}\n{d.text()}")
    auto.kill()
    auto.communicate(timeout=30)
    t0 = time.monotonic()
    assert wait_for(lambda: not _load_objects(c.topo.router_ns, "web"), 10, 0.1), d.text()
    print(f"\nMEASURED killed measurement switched off by the daemon in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    d.wait_log(r"abandoned")
    _, table = c.live()
    st = statefile.load(c.state, "web")
    assert st is not None and st.layout.table == table
    no_traceback(d)

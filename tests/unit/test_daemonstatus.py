"""The daemon's status file (service/daemonstatus.py) and what `vipctl status` makes of it:
a failover is recorded when members go down (not at a start that finds them down), the
file falls back to the runtime directory when the state directory cannot be written, the
newest copy wins, and a dead daemon is shown as not running."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.schemacheck import errors
from tests.unit.test_daemon import make_spec
from vipctl.core import schemas
from vipctl.core.partition import Layout
from vipctl.service import daemonstatus
from vipctl.service.daemon import Daemon


@pytest.fixture(autouse=True)
def this_process_is_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live pid is a daemon when its command line says `vipctl ... daemon`; here the
    daemon is this test process."""
    real = daemonstatus._running
    assert real(os.getpid()) is False  # pytest's command line is not a daemon's
    monkeypatch.setattr(daemonstatus, "_running", lambda pid: pid == os.getpid())


def write(directory: Path, down: list[str] | None, now: float, **kw: Any) -> None:
    args: dict[str, Any] = {
        "generation": 3 if down is not None else None,
        "down": down,
        "problems": [],
        "unprobed": [],
        "state_error": None,
        **kw,
    }
    facts = daemonstatus.Facts(**args)
    daemonstatus.write(directory, "web", "STATUS", facts, clock=lambda: now)


def test_a_failover_is_when_members_go_down(tmp_path: Path) -> None:
    write(tmp_path, None, 100.0)  # started, not applied yet
    write(tmp_path, ["web2"], 101.0)  # the state said web2 was down: is that a failover?
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["running"] and got["pid"] == os.getpid()
    # a first file with web2 down from the start counts it (nothing said it was up)
    assert got["last_failover"] == {"at": 101.0, "members": ["web2"]}
    write(tmp_path, [], 102.0)  # restored
    write(tmp_path, ["web3"], 103.0)
    write(tmp_path, ["web3"], 104.0)  # still down: the same failover
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["last_failover"] == {"at": 103.0, "members": ["web3"]}
    write(tmp_path, None, 105.0)  # a restart that has not applied yet keeps it all
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["last_failover"]["at"] == 103.0


def test_it_falls_back_to_the_runtime_dir_and_the_newest_wins(tmp_path: Path) -> None:
    state = tmp_path / "nope"
    write(state, ["web1"], 100.0, state_error="cannot write: Read-only file system")
    assert not state.exists()
    got = daemonstatus.read(state, "web")
    assert got is not None and got["state_write_failing"] and got["degraded"] is False
    assert daemonstatus.runtime_path(state, "web").exists()
    # the state dir back: its newer copy wins over the runtime one
    state.mkdir()
    write(state, ["web1"], 200.0)
    got = daemonstatus.read(state, "web")
    assert got is not None and not got["state_write_failing"] and got["updated"] == 200.0
    daemonstatus.remove(state, "web")
    assert daemonstatus.read(state, "web") is None


def test_a_dead_daemon_is_not_running_and_the_text_says_so(tmp_path: Path) -> None:
    write(tmp_path, ["web2"], 100.0, problems=["probes failing locally"], unprobed=["web3"])
    file = daemonstatus.path(tmp_path, "web")
    data = json.loads(file.read_text())
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None
    lines = daemonstatus.describe(got, 160.0)
    assert lines[0].startswith(f"daemon: pid {os.getpid()}, DEGRADED: probes failing locally")
    assert any("cannot probe" in ln and "web3" in ln for ln in lines)
    assert any(ln.startswith("  last failover: web2 at ") and "0h01m00s ago" in ln for ln in lines)
    data["pid"] = 2**22 + 1  # above pid_max: no such process
    file.write_text(json.dumps(data))
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["running"] is False
    assert daemonstatus.describe(got, 160.0)[0].startswith("daemon: NOT RUNNING")
    status = {
        "cluster": "web", "backend": "nftables", "generation": 3, "mode": "steer",
        "fingerprint": None, "key": "mask", "bits": 4, "vips": ["198.51.100.253"],
        "uplink": "up0", "in_sync": True, "members": [], "daemon": got,
        "weights_from": "spec",
    }  # fmt: skip
    assert errors(status, schemas.STATUS) == []


def test_garbage_is_no_status(tmp_path: Path) -> None:
    daemonstatus.path(tmp_path, "web").write_text("{not json")
    assert daemonstatus.read(tmp_path, "web") is None
    daemonstatus.path(tmp_path, "web").write_text('{"version": 99, "updated": 1}')
    assert daemonstatus.read(tmp_path, "web") is None


def test_the_daemon_writes_it_with_its_status_line(tmp_path: Path) -> None:
    """Daemon.status() (the STATUS= line) is where the file is written: the line, the
    state write error and the members down."""
    d = Daemon(Path("/etc/vipctl/web.yaml"), tmp_path, make_spec(), loader=lambda p: make_spec())
    d.status()
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["status"] == "cluster web: not applied yet"
    d.layout = Layout(
        bits=2,
        weights=(("web1", 1), ("web2", 1), ("web3", 1)),  # type: ignore[arg-type]
        down=("web2",),
        table=("web1", "web3", "web1", "web3"),
        base=("web1", "web2", "web3", "web1"),
    )
    d.generation = 7
    d._state_error = "cannot write the state of web: Read-only file system"
    line = d.status()
    got = daemonstatus.read(tmp_path, "web")
    assert got is not None and got["status"] == line and line.startswith("DEGRADED: state")
    assert got["generation"] == 7 and got["state_write_failing"] and got["degraded"]
    assert got["last_failover"]["members"] == ["web2"]

"""strict arguments and a state directory that cannot be walked out of.

Each test failed on the code before the fix. The commands that would reach the kernel
are guarded: `controller.backend_for` and `LiveBox` raise, so a regression fails here
instead of touching this machine's nftables.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.clirunner import cli_runner
from vipctl import controller, statefile
from vipctl.cli.app import app
from vipctl.core import plan as planning
from vipctl.core.spec import load_text
from vipctl.errors import BusyError, StateError, UsageError

ROOT = Path(__file__).resolve().parents[2]
runner = cli_runner()


class _NoKernel:
    def __init__(self, *_: object, **__: object) -> None:
        raise AssertionError("reached the kernel")


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "backend_for", _NoKernel)
    monkeypatch.setattr(controller, "LiveBox", _NoKernel)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    return path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, AssertionError), result.exception
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


# -- cluster names ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["down", "status"])
def test_a_cluster_name_cannot_walk_out_of_the_state_dir(tmp_path: Path, command: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text("{}")
    state = tmp_path / "state"
    code, err = run(command, f"/../../{outside}/x", "--state-dir", str(state))
    assert code == 2 and "cluster name" in err
    assert (outside / "x.json").exists()  # was deleted by down
    assert sorted(os.listdir(outside)) == ["x.json"]  # and x.lock was created beside it


@pytest.mark.parametrize("name", ["web\nx", "Web", "-web", "a" * 25, "", ".web", "web/x"])
def test_bad_cluster_names_leave_no_lock(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    code, _ = run("down", name, "--state-dir", str(state))
    assert code == 2
    assert not state.exists() or os.listdir(state) == []


def test_statefile_refuses_bad_names_itself(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        statefile.remove(tmp_path, "../x")
    with pytest.raises(UsageError), statefile.locked(tmp_path, "a/../../b"):
        pass


def test_empty_state_dir_is_a_usage_error(spec_file: Path) -> None:
    code, err = run("status", "--state-dir", "")
    assert code == 2 and "--state-dir" in err
    code, err = run("plan", str(spec_file), "--state-dir", "")
    assert code == 2 and "--state-dir" in err


# -- modes, symlinks, the lock's wait -------------------------------------------------------


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_state_dir_and_lock_modes_do_not_follow_the_umask(tmp_path: Path, umask_000: None) -> None:
    directory = tmp_path / "state"
    with statefile.locked(directory, "web"):
        pass
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / ".web.lock").stat().st_mode) == 0o600


def test_a_symlinked_lock_is_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    target = tmp_path / "victim"
    (directory / ".web.lock").symlink_to(target)
    with pytest.raises(StateError, match="symlink"), statefile.locked(directory, "web"):
        pass
    assert not target.exists()


def test_a_held_lock_ends_in_busy(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with statefile.locked(directory, "web"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(5)
    started = time.monotonic()
    try:
        with pytest.raises(BusyError) as info, statefile.locked(directory, "web", timeout=0.3):
            pass
    finally:
        release.set()
        t.join(5)
    assert info.value.exit_code == 75
    assert "busy" in str(info.value)
    assert 0.25 < time.monotonic() - started < 3
    with statefile.locked(directory, "web", timeout=0.3):  # free again
        pass


# -- --weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("small=1e400", "at most 1000000"),  # was a traceback
        ("small=inf", "not a finite"),
        ("small=nan", "not a finite"),
        ("small=1e7", "at most 1000000"),  # plan took it, rebalance said 78
        ("small=1,small=2", "given twice"),  # the last one won
        ("small=1e-400", "too small"),  # drained the member
        ("small=0x10", "not a number"),
        ("small=\u0661", "not a number"),
        ("small=1_0", "not a number"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "rebalance"])
def test_weights_are_strict(
    spec_file: Path, tmp_path: Path, command: str, weights: str, message: str
) -> None:
    code, err = run(command, str(spec_file), "--weights", weights, "--state-dir", str(tmp_path))
    assert code == 2, err
    assert message in err


def test_weights_that_are_fine() -> None:
    spec = load_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    got = planning.parse_weights("small=2.5, big=0,spare=1e3", spec)
    assert {k: float(v) for k, v in got.items()} == {"small": 2.5, "big": 0, "spare": 1000}


# -- every number on the command line is bounded before it is parsed (issue 28) -----------

NINES = "9" * 5000  # int()/Fraction() of 4300+ digits raised ValueError: a traceback


@pytest.mark.parametrize("command", ["plan", "rebalance"])
def test_a_weight_of_5000_digits_is_refused_by_its_length(
    spec_file: Path, tmp_path: Path, command: str
) -> None:
    code, err = run(
        command, str(spec_file), "--weights", f"small={NINES}", "--state-dir", str(tmp_path)
    )
    assert code == 2, err
    assert "--weights" in err and "too long" in err and NINES not in err
    with pytest.raises(UsageError, match="too long"):
        planning.parse_weights(f"small=0.{NINES}", load_text(spec_file.read_text()))


BAD_SECONDS = ["inf", "-inf", "nan", "1e400", "3601", f"{NINES}"]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize(
    "argv",
    [
        ["rebalance", "SPEC", "--auto", "--window"],
        ["plan", "SPEC", "--auto", "--window"],
        ["status", "web", "--load", "--window"],
    ],
)
def test_a_window_is_finite_and_at_most_an_hour(
    spec_file: Path, tmp_path: Path, argv: list[str], value: str
) -> None:
    """`rebalance --auto --window inf` committed the counting table (a new generation),
    then died in sleep() with an OverflowError traceback; 3601 s ran."""
    args = [str(spec_file) if a == "SPEC" else a for a in argv]
    code, err = run(*args, value, "--state-dir", str(tmp_path / "state"))
    assert code == 2, err
    assert "--window" in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "11", "1e400", "0.5"])
@pytest.mark.parametrize("command", ["rebalance", "plan"])
def test_a_tolerance_is_finite_and_bounded(
    spec_file: Path, tmp_path: Path, command: str, value: str
) -> None:
    code, err = run(
        command, str(spec_file), "--auto", "--tolerance", value, "--state-dir", str(tmp_path / "s")
    )
    assert code == 2, err
    assert "--tolerance" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "86401"])
def test_watch_and_pins_max_age_are_finite_and_bounded(tmp_path: Path, value: str) -> None:
    code, err = run("status", "--watch", value, "--state-dir", str(tmp_path / "s"))
    assert code == 2 and "--watch" in err, err
    code, err = run("metrics", "--pins-max-age", value, "--listen", "127.0.0.1:0")
    assert code == 2 and "--pins-max-age" in err, err


@pytest.mark.parametrize(
    ("body", "kwargs", "option"),
    [
        ("rebalance", {"auto": True, "window": float("inf")}, "--window"),
        ("rebalance", {"auto": True, "window": float("nan")}, "--window"),
        ("rebalance", {"auto": True, "tolerance": float("inf")}, "--tolerance"),
        ("plan", {"auto": True, "window": 3601.0}, "--window"),
        ("status", {"load_": True, "window": float("nan")}, "--window"),
        ("status", {"watch": float("inf")}, "--watch"),
    ],
)
def test_the_bounds_are_in_the_command_bodies(
    spec_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    body: str,
    kwargs: dict[str, object],
    option: str,
) -> None:
    """The bodies run for typer and for cli/fast.py alike: the bounds hold on either path."""
    import inspect

    from vipctl.cli import app as typer_app
    from vipctl.cli import commands

    # the bodies take typer's defaults from the caller (cli/app.py or the fast path)
    params = inspect.signature(getattr(typer_app, body)).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    first = {"cluster": "web"} if body == "status" else {"spec_path": spec_file}
    args = {**defaults, **first, **kwargs, "state_dir": str(tmp_path / "s")}
    with pytest.raises(SystemExit) as info:
        getattr(commands, body)(**args)
    assert info.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("port", [NINES, "\u00b2", "\u0661", "0", "65536", "", "8o"])
def test_a_listen_port_is_ascii_digits_in_range(port: str) -> None:
    """`vipctl metrics --listen 127.0.0.1:<5000 nines>` and `:²` were ValueError tracebacks
    (str.isdigit() takes superscripts and other scripts' digits; int() does not)."""
    from vipctl.service.metrics import parse_listen

    with pytest.raises(UsageError, match="--listen"):
        parse_listen(f"127.0.0.1:{port}", "--listen")
    code, err = run("metrics", "--listen", f"127.0.0.1:{port}")
    assert code == 2 and "--listen" in err and NINES not in err, err


def test_a_listen_address_that_is_fine() -> None:
    from vipctl.service.metrics import parse_listen

    assert parse_listen("[::1]:9477") == ("::1", 9477)
    assert parse_listen(":80") == ("0.0.0.0", 80)


def test_the_daemon_refuses_a_bad_metrics_port_before_it_starts(
    spec_file: Path, tmp_path: Path
) -> None:
    code, err = run(
        "daemon", str(spec_file), "--metrics", f":{NINES}", "--state-dir", str(tmp_path / "s")
    )
    assert code == 2 and "--metrics" in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("fe80::1%up0", "scope id"),  # answered, exit 0: specs refuse scope ids
        ("2001:db8::1%1", "scope id"),
        ("10.99.0.1%x", "scope id"),
        (" 10.99.0.1", "not an IPv4 or IPv6 address"),
        ("010.99.0.1", "not an IPv4 or IPv6 address"),
        ("9" * 5000, "not an IPv4 or IPv6 address"),
    ],
)
def test_which_takes_addresses_by_the_specs_rules(
    tmp_path: Path, source: str, message: str
) -> None:
    spec = tmp_path / "v6.yaml"
    spec.write_text(
        "cluster: web\nvips: [198.51.100.253, '2001:db8:f::253']\nuplink: up0\nmembers:\n"
        "  - {name: a, port: m1, address: 198.51.100.10}\n"
    )
    code, err = run("which", str(spec), source, "--from", "spec", "--state-dir", str(tmp_path))
    assert code == 2, err
    assert message in err and "SOURCE" in err and len(err) < 300, err
    code, _ = run("which", str(spec), "fe80::1", "--from", "spec", "--state-dir", str(tmp_path))
    assert code == 0


def test_a_measurement_lease_is_abandoned_when_its_process_is_gone(tmp_path: Path) -> None:
    """statefile.measuring_*: the daemon switches counting off when a measurement's lease
    is abandoned (its process gone, its time up, or unreadable), never while it runs."""
    import json

    assert not statefile.measuring_abandoned(tmp_path, "web")  # no lease
    statefile.measuring_begin(tmp_path, "web", 5)
    lease = tmp_path / ".web.measuring"
    data = json.loads(lease.read_text())
    assert data["pid"] == os.getpid()
    # this process is pytest, not vipctl: a reused pid does not hold a lease
    assert statefile.measuring_abandoned(tmp_path, "web") == (
        b"vipctl" not in Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
    )
    assert statefile.measuring_abandoned(tmp_path, "web", now=data["until"] + 1)
    lease.write_text(json.dumps({"pid": 2**22 + 1, "until": data["until"]}))
    assert statefile.measuring_abandoned(tmp_path, "web")  # no such process
    lease.write_text("{")
    assert statefile.measuring_abandoned(tmp_path, "web")
    statefile.measuring_end(tmp_path, "web")
    assert not lease.exists() and not statefile.measuring_abandoned(tmp_path, "web")
    statefile.measuring_end(tmp_path, "web")  # twice: fine

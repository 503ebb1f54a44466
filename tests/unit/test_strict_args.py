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

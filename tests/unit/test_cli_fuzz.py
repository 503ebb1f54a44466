"""Every command line option of every command, over values that have broken parsers: the
exit code is one of the documented ones (0, 1, 2, 75, 78), never a traceback, and a
refusal leaves the state directory byte-identical.

The commands are read from the typer app (a command or option added later is fuzzed too).
Whatever passes the command line's own checks stops at a guard instead of touching this
machine: the kernel backends, the host box, the member setup, the metrics server and the
daemon's loop raise `ReachedTheHost`, which counts as "accepted". `lab` builds network
namespaces with real processes and is left out (its options are click-typed, bounded
integers and fixed names, checked by click before any code runs).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.unit.test_strict_args import NINES
from vipctl import controller
from vipctl.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
LEFT_OUT = {"lab"}
CODES = {0, 1, 2, 75, 78}


class ReachedTheHost(Exception):
    """The command line was accepted: the next step would touch this machine."""


def _reached(*_: object, **__: object) -> Any:
    raise ReachedTheHost


@pytest.fixture(autouse=True)
def guards(monkeypatch: pytest.MonkeyPatch) -> None:
    from vipctl.host import member as member_setup
    from vipctl.service import daemon, metrics

    monkeypatch.setattr(controller, "backend_for", _reached)
    monkeypatch.setattr(controller, "LiveBox", _reached)
    monkeypatch.setattr(member_setup, "apply_setup", _reached)
    monkeypatch.setattr(member_setup, "remove_setup", _reached)
    monkeypatch.setattr(metrics, "serve", _reached)
    monkeypatch.setattr(daemon, "main", _reached)


# typer carries its own copy of click (typer._click): its classes are not click's, so
# commands and parameters are told apart by what they have
Command = Any


def _leaves(
    group: Command, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Command]]:
    for name, cmd in sorted(group.commands.items()):
        if name in LEFT_OUT:
            continue
        if hasattr(cmd, "commands"):
            yield from _leaves(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


COMMANDS = dict(_leaves(typer.main.get_command(app)))

# what has broken a parser: numbers past every range and limit, non-ASCII digits, names,
# addresses with scope ids, paths that walk out
NUMBERS = [
    "0", "1", "-1", "0.05", "0.1", "0.3", "1.1", "3600", "3601", "86401", "1e400", "-1e400",
    "inf", "-inf", "nan", "NaN", NINES, "0." + NINES, "1" + "0" * 70, "1e-400", "\u00b2",
    "\u0661", "1_0", "0x10", " 5", "", "1e999999999",
]  # fmt: skip
NASTY = [
    *NUMBERS, " ", "web", "web1", "small", "Web", "-web", "../x", "a" * 300, "web\nx",
    "10.99.0.1", "198.51.100.10", "fe80::1%up0", "2001:db8::1", "010.1.1.1", "127.0.0.1:0",
    f"127.0.0.1:{NINES}", ":\u00b2", "[::1]:9477", "packets", "bytes", "frames", "auto",
    "live", "state", "spec", "commands", "netplan", "eth0", "json", "status", "layout",
]  # fmt: skip
MEMBERS = ["small", "big", "spare", "nope", "", "small "]
texts = st.text(max_size=12).filter(lambda t: "\x00" not in t)
values = st.one_of(st.sampled_from(NASTY), texts)
# texts longer than any number needs: int()/Fraction() of 4300+ digits raised
LONG = st.sampled_from([NINES, "0." + NINES, "1" + "0" * 70, "1e999999999", "9" * 4301])
numbers = st.one_of(LONG, st.sampled_from(NUMBERS), st.floats().map(repr), texts)
member = st.one_of(st.sampled_from(["small", "big", "spare"]), st.sampled_from(MEMBERS))
weights = st.lists(
    st.tuples(member, st.one_of(LONG, st.sampled_from(NUMBERS))), min_size=1, max_size=4
).map(lambda items: ",".join(f"{n}={w}" for n, w in items))
names = st.lists(st.sampled_from(MEMBERS), max_size=3).map(",".join)
listen = st.tuples(st.sampled_from(["127.0.0.1", "[::1]", "", "x y"]), values).map(":".join)


def _strategy(param: Any) -> st.SearchStrategy[str]:
    # typer 0.29's parameters name their type with bare_type(); click's with type.name
    kind = str(param.bare_type()) if hasattr(param, "bare_type") else param.type.name
    kind = kind.lower()
    if param.name == "weights":
        return st.one_of(weights, values)
    if param.name == "down":
        return st.one_of(names, values)
    if param.name in ("listen", "metrics"):
        return st.one_of(listen, values)
    if any(k in kind for k in ("float", "int")):
        return numbers
    return values


def _spec_files(tmp: Path) -> list[str]:
    good = tmp / "shop.yaml"
    good.write_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    bad = tmp / "bad.yaml"
    bad.write_text("cluster: shop\nvips: [nan]\n")
    return [str(good), str(bad), str(tmp / "missing.yaml"), str(tmp)]


@st.composite
def command_lines(draw: st.DrawFn, path: tuple[str, ...], specs: list[str]) -> list[str]:
    cmd = COMMANDS[path]
    argv = list(path)
    for param in cmd.params:
        if param.param_type_name == "argument":
            if param.name == "spec_path":
                good, *others = specs
                argv.append(good if draw(st.integers(0, 3)) else draw(st.sampled_from(others)))
            elif param.required or draw(st.booleans()):
                argv.append(draw(_strategy(param)))
            continue
        if param.name in ("state_dir", "help") or not draw(st.booleans()):
            continue
        name = param.opts[0]
        if param.is_flag:
            argv.append(name)
        else:
            argv += [name, draw(_strategy(param))]
    if any(p.name == "state_dir" for p in cmd.params):
        argv += ["--state-dir", "state"]
    return argv


def _snapshot(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_every_command_is_fuzzed() -> None:
    assert {" ".join(c) for c in COMMANDS} >= {
        "validate", "schema", "plan", "which", "apply", "rebalance", "status", "down",
        "metrics", "daemon", "doctor", "member", "layout export",
    }  # fmt: skip


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_every_option_exits_with_a_documented_code(
    path: tuple[str, ...], data: st.DataObject
) -> None:
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a relative path drawn for any option lands here
        try:
            state = Path(tmp) / "state"
            state.mkdir(mode=0o700)
            (state / "shop.json").write_text('{"cluster": "shop"}')  # a (corrupt) state
            specs = _spec_files(Path(tmp))
            argv = data.draw(command_lines(path, specs), label="argv")
            before = _snapshot(state)
            result = runner.invoke(app, argv)
        finally:
            os.chdir(old)
        if isinstance(result.exception, ReachedTheHost):
            return  # accepted: the rest is the kernel tests' business
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback: the defect itself
        assert result.exit_code in CODES, (argv, result.exit_code, result.output)
        assert "Traceback" not in result.output
        if result.exit_code != 0:
            assert _snapshot(state) == before, argv

"""How the command line starts: `--version` before any import, and one command's click
parameters built from its signature instead of every command's (cli.app.app_for)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer

from tests.unit.clirunner import cli_runner
from vipctl import __version__
from vipctl.cli.app import _command_name, app, app_for

runner = cli_runner()


def _names() -> list[str]:
    return [_command_name(c) for c in app.registered_commands] + [
        str(g.name) for g in app.registered_groups
    ]


def _describe(cmd: Any) -> Any:
    """Everything a user meets of a command: its parameters, help and subcommands."""
    params = [
        (p.name, tuple(p.opts), tuple(p.secondary_opts), p.required, p.default, p.envvar)
        for p in cmd.params
    ]
    subs = {n: _describe(c) for n, c in getattr(cmd, "commands", {}).items()}
    return (cmd.name, cmd.help, params, subs)


def test_every_command_is_named() -> None:
    names = _names()
    assert {"apply", "validate", "which", "plan", "status", "down", "layout", "lab"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", _names())
def test_one_command_app_builds_that_command_exactly(name: str) -> None:
    whole = typer.main.get_command(app)
    only = typer.main.get_command(app_for([name, "--help"]))
    assert list(only.commands) == [name]  # type: ignore[attr-defined]  # the others are not built
    assert _describe(only.commands[name]) == _describe(whole.commands[name])  # type: ignore[attr-defined]
    assert _describe(only)[2] == _describe(whole)[2]  # the group's own options (--version)
    subs = list(getattr(whole.commands[name], "commands", {}))  # type: ignore[attr-defined]
    for argv in [[name, "--help"], *([name, sub, "--help"] for sub in subs)]:
        want = runner.invoke(app, argv)
        got = runner.invoke(app_for(argv), argv)
        assert (got.exit_code, got.output) == (want.exit_code, want.output)


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["nosuch"], ["Apply"]])
def test_anything_else_gets_the_whole_app(args: list[str]) -> None:
    assert app_for(args) is app
    result = runner.invoke(app_for(["nosuch"]), ["nosuch"])
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_version_answers_before_any_import() -> None:
    code = (
        "import sys; sys.argv = ['vipctl', '--version']; from vipctl.cli import main; main(); "
        "heavy = [m for m in ('typer', 'pydantic', 'yaml', 'vipctl.cli.app') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"vipctl {__version__}", "[]"]
    # the same answer as the application's own --version option
    assert runner.invoke(app, ["--version"]).stdout == f"vipctl {__version__}\n"

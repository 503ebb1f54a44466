"""Writes vipctl/cli/fastgrammar.py, the fast path's grammar, from the typer application.

    .venv/bin/python -m vipctl.cli.fastgen          # rewrite the file
    .venv/bin/python -m vipctl.cli.fastgen --check  # exit 1 when it differs

typer's app (cli/app.py) is the one definition of every command's arguments, options,
defaults and environment variables. The fast path (cli/fast.py) must not import typer
(~25 ms), so what it needs is rendered from the app into a plain module and checked in;
tests/unit/test_cli_fast.py renders it again and fails on any difference, so a changed
option cannot leave the fast path behind.

Which command lines the fast path takes is policy, decided here: the commands in FAST, and
of their parameters those typed bool (a flag), str or Path (with or without None). A float
(--window, --tolerance, --watch) is left to typer, which checks its bounds; so are the
options in TYPER_ONLY, whose code needs typer itself (the re-tune and load reports).
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path

import typer
from typer.utils import get_params_from_function

from vipctl.cli.app import app

FAST = ("validate", "which", "plan", "status", "apply", "rebalance")
TYPER_ONLY = frozenset({"--auto", "--load", "--watch"})
TARGET = Path(__file__).with_name("fastgrammar.py")

HEADER = '''"""The plain command lines of {commands},
as cli/fast.py parses them without typer.

GENERATED from the typer application (vipctl/cli/app.py) by
`.venv/bin/python -m vipctl.cli.fastgen`: do not edit. tests/unit/test_cli_fast.py renders
it again and fails on any difference.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["flag", "str", "path"]
'''


def _kind(annotation: object) -> str | None:
    """flag, str or path for the types the fast path parses; None for any other."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        annotation = rest[0]
    if annotation is bool:
        return "flag"
    if annotation is str:
        return "str"
    if annotation is Path:
        return "path"
    return None


def _literal(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    raise TypeError(f"default {value!r} is not a literal the generated module can hold")


def grammar() -> dict[str, dict[str, object]]:
    """Per command: positional, options, envvars and defaults, from the typer app."""
    commands: dict[str, typing.Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    callbacks = {}
    for info in app.registered_commands:
        callback = info.callback
        assert callback is not None
        callbacks[info.name or typer.main.get_command_name(callback.__name__)] = callback
    out: dict[str, dict[str, object]] = {}
    for name in FAST:
        command = commands[name]
        meta = get_params_from_function(callbacks[name])
        positional: list[tuple[str, str, bool]] = []
        options: dict[str, tuple[str, str]] = {}
        envvars: dict[str, str] = {}
        defaults: dict[str, object] = {}
        for param in command.params:
            pname = param.name
            assert pname is not None
            kind = _kind(meta[pname].annotation)
            if param.param_type_name == "argument":
                if kind not in ("str", "path") or param.nargs != 1:
                    raise TypeError(f"{name} {pname}: the fast path cannot parse this argument")
                positional.append((pname, kind, param.required))
            longs = [o for o in param.opts if o.startswith("--") and o not in TYPER_ONLY]
            simple = (
                not param.multiple
                and param.nargs == 1
                and param.callback is None
                and not getattr(param, "secondary_opts", [])
            )
            if param.param_type_name == "option" and kind is not None and simple:
                for opt in longs:
                    options[opt] = (pname, kind)
            if isinstance(param.envvar, str):
                envvars[pname] = param.envvar
            if not param.required:
                defaults[pname] = param.default
        out[name] = {
            "positional": positional,
            "options": options,
            "envvars": envvars,
            "defaults": defaults,
        }
    return out


def render() -> str:
    data = grammar()
    lines = [HEADER.format(commands=", ".join(FAST[:-1]) + " and " + FAST[-1])]

    def table(
        title: str, comment: str, key: str, line: typing.Callable[[object], list[str]]
    ) -> None:
        lines.append(f"# {comment}")
        lines.append(f"{title} = {{")
        for name in FAST:
            body = line(data[name][key])
            if not body:
                lines.append(f"    {_literal(name)}: {{}},")
                continue
            if key == "positional" and len(body) == 1:  # as ruff format writes it
                lines.append(f"    {_literal(name)}: ({body[0]},),")
                continue
            open_, close = ("(", ")") if key == "positional" else ("{", "}")
            lines.append(f"    {_literal(name)}: {open_}")
            lines.extend(f"        {entry}," for entry in body)
            lines.append(f"    {close},")
        lines.append("}")
        lines.append("")

    def positional(value: object) -> list[str]:
        assert isinstance(value, list)
        return ["(" + ", ".join(_literal(v) for v in entry) + ")" for entry in value]

    def mapping(value: object) -> list[str]:
        assert isinstance(value, dict)
        return [f"{_literal(k)}: {_pair(v)}" for k, v in value.items()]

    lines.append("")
    table(
        "POSITIONAL: dict[str, tuple[tuple[str, Kind, bool], ...]]",
        "command -> its arguments in order: (parameter, kind, required)",
        "positional",
        positional,
    )
    table(
        "OPTIONS: dict[str, dict[str, tuple[str, Kind]]]",
        "command -> long option -> (parameter, kind); any other option is typer's",
        "options",
        mapping,
    )
    table(
        "ENVVARS: dict[str, dict[str, str]]",
        "command -> parameter -> environment variable read when the option is absent",
        "envvars",
        mapping,
    )
    table(
        "DEFAULTS: dict[str, dict[str, object]]",
        "command -> parameter -> its default (every parameter but required arguments)",
        "defaults",
        mapping,
    )
    return "\n".join(lines).rstrip("\n") + "\n"


def _pair(value: object) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    return _literal(value)


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if TARGET.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{TARGET} is out of date: run python -m vipctl.cli.fastgen\n")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

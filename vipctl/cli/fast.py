"""The command lines an operator types most, parsed without typer.

typer costs ~25 ms to import and builds a pydantic TypeAdapter for every parameter of the
command it runs (~1 ms each): about a third of what `vipctl which` or `vipctl plan` take
as a whole process. `run` parses the plain forms of validate, which, plan, status, apply
and rebalance itself (positional arguments, long options as `--opt VALUE` or
`--opt=VALUE`, flags, `--`, VIPCTL_STATE_DIR) and calls the same bodies typer would
(cli/commands.py). Anything else (help, a short option, an option given twice, a value
that starts with "-", an option left to typer such as --watch or --auto, a wrong count of
arguments) is not parsed here: typer gets the command line and answers as it always did.
tests/unit/test_cli_fast.py checks GRAMMAR against the typer commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["flag", "str", "path"]


@dataclass(frozen=True)
class Grammar:
    positional: tuple[tuple[str, Kind, bool], ...]  # (parameter, kind, required), in order
    options: Mapping[str, tuple[str, Kind]]  # "--json" -> ("as_json", "flag")


STATE_DIR: Mapping[str, tuple[str, Kind]] = {"--state-dir": ("state_dir", "str")}
JSON: Mapping[str, tuple[str, Kind]] = {"--json": ("as_json", "flag")}
SPEC: tuple[str, Kind, bool] = ("spec_path", "path", True)
ENVVARS = {"state_dir": "VIPCTL_STATE_DIR"}

GRAMMAR: Mapping[str, Grammar] = {
    "validate": Grammar((SPEC,), {}),
    "which": Grammar(
        (SPEC, ("source", "str", True)),
        {**STATE_DIR, **JSON, "--from": ("source_table", "str")},
    ),
    "plan": Grammar(
        (SPEC,),
        {"--weights": ("weights", "str"), "--down": ("down", "str"), **JSON, **STATE_DIR},
    ),
    "status": Grammar((("cluster", "str", False),), {**JSON, **STATE_DIR}),
    "apply": Grammar(
        (SPEC,),
        {
            "--dry-run": ("dry_run", "flag"),
            "--diff": ("diff", "flag"),
            "--down": ("down", "str"),
            "--skip-checks": ("skip_checks", "flag"),
            "--layout": ("layout_path", "path"),
            **STATE_DIR,
        },
    ),
    "rebalance": Grammar(
        (SPEC,),
        {"--weights": ("weights", "str"), "--dry-run": ("dry_run", "flag"), **JSON, **STATE_DIR},
    ),
}


def parse(argv: list[str]) -> tuple[str, dict[str, object]] | None:
    """(command, keyword arguments of its body), or None: typer parses this one."""
    if not argv or argv[0] not in GRAMMAR:
        return None
    name, grammar = argv[0], GRAMMAR[argv[0]]
    kwargs: dict[str, object] = {}
    positional: list[str] = []
    rest = argv[1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":
            positional.extend(rest[i:])
            break
        if not token.startswith("-") or token == "-":
            positional.append(token)
            continue
        option, eq, value = token.partition("=")
        found = grammar.options.get(option) if option.startswith("--") else None
        if found is None:
            return None
        param, kind = found
        if param in kwargs:
            return None
        if kind == "flag":
            if eq:
                return None
            kwargs[param] = True
            continue
        if not eq:
            if i >= len(rest) or rest[i].startswith("-"):
                return None
            value = rest[i]
            i += 1
        if kind == "path" and not value:
            return None
        kwargs[param] = Path(value) if kind == "path" else value
    required = sum(1 for _, _, req in grammar.positional if req)
    if not required <= len(positional) <= len(grammar.positional):
        return None
    for (param, kind, _), value in zip(grammar.positional, positional, strict=False):
        if kind == "path" and not value:
            return None
        kwargs[param] = Path(value) if kind == "path" else value
    for param, envvar in ENVVARS.items():
        if param not in kwargs and any(p == param for p, _ in grammar.options.values()):
            from_env = os.environ.get(envvar)
            if from_env:  # click: an empty variable is no value
                kwargs[param] = from_env
    return name, kwargs


def run(argv: list[str]) -> bool:
    """Run the command line if it is one of GRAMMAR's (then exits); False: typer's."""
    parsed = parse(argv)
    if parsed is None:
        return False
    name, kwargs = parsed
    from vipctl.cli import commands
    from vipctl.cli.output import echo
    from vipctl.errors import VipctlError

    body = getattr(commands, name)
    try:
        body(**kwargs)
    except VipctlError as exc:  # the bodies catch their own; as cli.app.main does
        echo(f"vipctl: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    except (KeyboardInterrupt, EOFError):  # as click does
        echo("\nAborted!", err=True)
        raise SystemExit(1) from None
    except BrokenPipeError:  # `vipctl status | head -1`: quiet, as click is
        # the interpreter flushes stdout at exit: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    raise SystemExit(0)

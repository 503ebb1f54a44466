"""The command lines an operator types most, parsed without typer.

typer costs ~25 ms to import and builds a pydantic TypeAdapter for every parameter of the
command it runs (~1 ms each): about a third of what `vipctl which` or `vipctl plan` take
as a whole process. `run` parses the plain forms of validate, which, plan, status, apply
and rebalance itself (positional arguments, long options as `--opt VALUE` or
`--opt=VALUE`, flags, `--`, VIPCTL_STATE_DIR) and calls the same bodies typer would
(cli/commands.py) with every parameter, the absent ones at their typer defaults. Anything
else (help, a short option, an option given twice, a value that starts with "-", an
option left to typer such as --window, --watch or --auto, a wrong count of arguments) is
not parsed here: typer gets the command line and answers as it always did.

The grammar is not written here: cli/fastgrammar.py is generated from the typer app
(`python -m vipctl.cli.fastgen`), and tests/unit/test_cli_fast.py fails when it differs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vipctl.cli.fastgrammar import DEFAULTS, ENVVARS, OPTIONS, POSITIONAL


def parse(argv: list[str]) -> tuple[str, dict[str, object]] | None:
    """(command, keyword arguments of its body), or None: typer parses this one."""
    if not argv or argv[0] not in POSITIONAL:
        return None
    name, arguments, options = argv[0], POSITIONAL[argv[0]], OPTIONS[argv[0]]
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
        found = options.get(option) if option.startswith("--") else None
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
    required = sum(1 for _, _, req in arguments if req)
    if not required <= len(positional) <= len(arguments):
        return None
    for (param, kind, _), value in zip(arguments, positional, strict=False):
        if kind == "path" and not value:
            return None
        kwargs[param] = Path(value) if kind == "path" else value
    for param, envvar in ENVVARS[name].items():
        if param not in kwargs:
            from_env = os.environ.get(envvar)
            if from_env:  # click: an empty variable is no value
                kwargs[param] = from_env
    return name, kwargs


def run(argv: list[str]) -> bool:
    """Run the command line if the fast path parses it (then exits); False: typer's."""
    parsed = parse(argv)
    if parsed is None:
        return False
    name, kwargs = parsed
    from vipctl.cli import commands
    from vipctl.cli.output import echo
    from vipctl.errors import VipctlError

    body = getattr(commands, name)
    try:
        body(**{**DEFAULTS[name], **kwargs})
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

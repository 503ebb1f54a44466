"""vipctl(1) rendered from the command line's own help: every command, argument and option,
so the man page cannot drift from `vipctl --help`.

`python -m vipctl.cli.manpage [--date YYYY-MM-DD]` prints the roff source (scripts/build-deb
gzips it into the package). help2man would read only the top-level `--help`, not the
commands under it, and would parse typer's boxed rich output; walking click's command tree
gives each command its own section. typer 0.29 carries its own copy of click
(typer._click), so the tree is read by duck typing (`param_type_name`, `commands`), not by
isinstance against the click package.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import Any

import typer

from vipctl import __version__, statefile

# Options every typer app gets: meaningless in a man page (completion has its own files).
_SKIP = {"install_completion", "show_completion"}

EXIT_STATUS = (
    ("0", "success"),
    ("1", "the kernel refused or an interface is missing (the previous rules stay in place)"),
    ("2", "usage error"),
    ("75", "busy: another vipctl command held the cluster's lock past the wait limit"),
    ("78", "invalid spec (nothing changed)"),
)


def _esc(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line starting with a control
    character, markdown backticks dropped."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace("`", "")
    return "\n".join(("\\&" + line) if line[:1] in ".'" else line for line in text.splitlines())


def _para(text: str) -> str:
    # the docstrings are wrapped for the source file: rejoin them into one paragraph
    return _esc(re.sub(r"\s*\n\s*", " ", text.strip()))


def _is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def _usage(path: str, cmd: Any) -> str:
    pieces = [f"\\fB{_esc(path)}\\fR"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = (p.metavar or p.name or "").upper()
            pieces.append(f"\\fI{_esc(name)}\\fR" if p.required else f"[\\fI{_esc(name)}\\fR]")
    if any(p.param_type_name == "option" and p.name not in _SKIP for p in cmd.params):
        pieces.append("[\\fIOPTIONS\\fR]")
    if _is_group(cmd):
        pieces.append("\\fICOMMAND\\fR")
    return " ".join(pieces)


def _options(cmd: Any) -> list[str]:
    out: list[str] = []
    for p in cmd.params:
        if p.param_type_name != "option" or p.name in _SKIP or p.hidden:
            continue
        flag = getattr(p, "is_flag", False) or getattr(p, "count", False)
        names = ", ".join(f"\\fB{_esc(n)}\\fR" for n in [*p.opts, *p.secondary_opts])
        if not flag:
            names += f" \\fI{_esc(str(p.metavar or p.name).upper())}\\fR"
        out += [".TP", names]
        help_text = p.help or ""
        if p.default not in (None, False, "", ()) and not flag and p.show_default is not False:
            help_text += f" (default: {p.default})"
        out.append(_para(help_text) if help_text else "")
    return out


def _commands(prefix: str, group: Any) -> list[tuple[str, Any]]:
    """Every command under `group`, depth first, with its full path (`vipctl lab up`)."""
    found: list[tuple[str, Any]] = []
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        path = f"{prefix} {name}"
        found.append((path, cmd))
        if _is_group(cmd):
            found += _commands(path, cmd)
    return found


def render(root: Any, date: str, version: str = __version__) -> str:
    """The roff source of vipctl(1) for the command tree `root`."""
    lines = [
        f'.TH VIPCTL 1 "{date}" "vipctl {_esc(version)}" "User Commands"',
        ".SH NAME",
        "vipctl \\- " + _para(root.help or ""),
        ".SH SYNOPSIS",
        _usage("vipctl", root),
        ".SH DESCRIPTION",
        _para(
            "vipctl makes a Linux router serve one Virtual IP from many member servers: the "
            "source-address space is cut into buckets, each bucket belongs to one member, "
            "and the kernel (nftables or tc) sends every packet for the VIP to exactly one "
            "member. The cluster is described by a spec file (YAML or JSON); an annotated "
            "example is /etc/vipctl/example.yaml. The service is the systemd unit "
            "vipctl@CLUSTER, which runs vipctl daemon /etc/vipctl/CLUSTER.yaml."
        ),
        ".SH OPTIONS",
        *_options(root),
        ".SH COMMANDS",
    ]
    if _is_group(root):
        for path, cmd in _commands("vipctl", root):
            lines += [".SS " + _esc(path), _usage(path, cmd), ".PP"]
            lines.append(_para(cmd.help or cmd.short_help or ""))
            opts = _options(cmd)
            if opts:
                lines += [".PP", "Options:", ".RS", *opts, ".RE"]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", _para(meaning)]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/vipctl/CLUSTER.yaml\\fR",
        "the spec the unit vipctl@CLUSTER serves",
        ".TP",
        f"\\fI{statefile.DEFAULT_STATE_DIR}\\fR",
        _para(
            "state (overridable with --state-dir or VIPCTL_STATE_DIR); the kernel is the "
            "truth about what is live"
        ),
        ".SH SEE ALSO",
        "\\fBnft\\fR(8), \\fBtc\\fR(8), \\fBsystemctl\\fR(1), /usr/share/doc/vipctl/",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from vipctl.cli.app import app

    parser = argparse.ArgumentParser(prog="python -m vipctl.cli.manpage")
    parser.add_argument("--date", help="date on the page (default: today, UTC)")
    args = parser.parse_args(argv)
    date = args.date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    sys.stdout.write(render(typer.main.get_command(app), date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The command line: the only package that imports typer or prints.

`main` answers `vipctl --version` before importing anything else (typer, pydantic and the
commands cost ~100 ms), runs the plain forms of the commands operators type most without
typer (cli/fast.py), and hands every other command line to typer (`vipctl.cli.app`).
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from vipctl import __version__

        sys.stdout.write(f"vipctl {__version__}\n")
        return
    from vipctl.cli import fast

    if fast.run(sys.argv[1:]):
        return
    from vipctl.cli.app import main as run

    run()


__all__ = ["main"]

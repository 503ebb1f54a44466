"""vipctl(1) is rendered from the command tree itself: every command and option is in it,
and man(1) reads it without a warning."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import typer

from vipctl.cli.app import app
from vipctl.cli.manpage import render


def _page() -> str:
    return render(typer.main.get_command(app), "2026-12-01", "9.9.9")


def test_every_command_and_option_is_on_the_page() -> None:
    page = _page()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        assert f".SS vipctl {name}\n" in page
        for p in cmd.params:
            if p.param_type_name == "option":
                assert f"\\fB{p.opts[0].replace('-', chr(92) + '-')}\\fR" in page, (name, p.opts)
    assert ".SS vipctl lab up\n" in page  # commands of sub-groups too
    assert '.TH VIPCTL 1 "2026-12-01" "vipctl 9.9.9"' in page
    assert "install\\-completion" not in page  # typer's own options stay out


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man-db")
def test_man_reads_it_without_warnings(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "vipctl.1"
    path.write_text(_page())
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(path)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "vipctl rebalance" in proc.stdout

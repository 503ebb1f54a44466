"""typer's CliRunner with standard error kept apart from standard output, on every click
the floors allow: click >= 8.2 always keeps it apart (and dropped the mix_stderr keyword),
older click only when asked (scripts/test-floors runs the suite on typer's floor)."""

from __future__ import annotations

from typer.testing import CliRunner


def cli_runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()

"""The command line: the only package that imports typer or prints."""

from vipctl.cli.app import app, main

__all__ = ["app", "main"]

"""cli/fast.py parses the plain command lines itself: its grammar (cli/fastgrammar.py) is
generated from the typer commands and must equal what the generator renders now, its
bodies take the typer commands' parameters and types with no defaults of their own, it
gives up on anything else, and its answers equal typer's."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner
from typer.utils import get_params_from_function

from vipctl.cli import app as cli_app
from vipctl.cli import commands, fast, fastgen, fastgrammar
from vipctl.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
TYPER = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _params(name: str) -> dict[str, Any]:
    return {p.name: p for p in TYPER[name].params if p.name != "help"}


def test_the_grammar_is_generated_from_the_typer_app() -> None:
    """Change an option, an argument, a default or an environment variable in cli/app.py
    and this fails until `python -m vipctl.cli.fastgen` is run again."""
    assert fastgen.TARGET.read_text(encoding="utf-8") == fastgen.render(), (
        "cli/fastgrammar.py is out of date: run .venv/bin/python -m vipctl.cli.fastgen"
    )
    assert fastgen.main(["--check"]) == 0


@pytest.mark.parametrize("name", fastgen.FAST)
def test_grammar_is_the_typer_commands(name: str) -> None:
    params = _params(name)
    arguments = [p for p in params.values() if p.param_type_name == "argument"]
    assert [(p.name, p.required) for p in arguments] == [
        (param, required) for param, _, required in fastgrammar.POSITIONAL[name]
    ]
    for option, (param, kind) in fastgrammar.OPTIONS[name].items():
        p = params[param]
        assert p.param_type_name == "option" and option in p.opts, (name, option)
        assert bool(getattr(p, "is_flag", False)) == (kind == "flag"), (name, option)
    assert fastgrammar.DEFAULTS[name] == {
        p.name: p.default for p in params.values() if not p.required
    }


@pytest.mark.parametrize("name", fastgen.FAST)
def test_bodies_take_the_typer_parameters_and_no_defaults(name: str) -> None:
    """One definition per parameter: the typer command's. The body has the same names (the
    typer command passes **locals() on) and types, and no default to drift from typer's."""
    body = getattr(commands, name)
    signature = inspect.signature(body).parameters
    typer_callback = getattr(cli_app, name)
    meta = get_params_from_function(typer_callback)
    assert list(signature) == list(meta) == list(_params(name))
    hints = typing.get_type_hints(body)
    for param, p in signature.items():
        assert p.default is inspect.Parameter.empty, (name, param, p.default)
        assert hints[param] == meta[param].annotation, (name, param)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nosuch"],
        ["--help"],
        ["validate"],
        ["validate", "a.yaml", "b.yaml"],
        ["validate", "--help"],
        ["validate", "-h", "a.yaml"],
        ["validate", ""],
        ["which", "a.yaml"],
        ["which", "a.yaml", "10.0.0.1", "--json=1"],
        ["which", "a.yaml", "10.0.0.1", "--from"],
        ["which", "a.yaml", "10.0.0.1", "--from", "--json"],
        ["plan", "a.yaml", "--auto"],
        ["plan", "a.yaml", "--weights", "a=1", "--weights", "a=2"],
        ["status", "--watch", "1"],
        ["status", "--load"],
        ["status", "a", "b"],
        ["apply", "a.yaml", "--layout="],
        ["apply", "a.yaml", "-n"],
        ["rebalance", "a.yaml", "--auto"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert fast.parse(argv) is None
    assert fast.run(argv) is False


def test_what_it_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIPCTL_STATE_DIR", raising=False)
    assert fast.parse(["validate", "a.yaml"]) == ("validate", {"spec_path": Path("a.yaml")})
    assert fast.parse(["which", "--json", "a.yaml", "--from=state", "10.0.0.1"]) == (
        "which",
        {
            "as_json": True,
            "spec_path": Path("a.yaml"),
            "source": "10.0.0.1",
            "source_table": "state",
        },
    )
    assert fast.parse(["plan", "a.yaml", "--down", ""]) == (
        "plan",
        {"spec_path": Path("a.yaml"), "down": ""},
    )
    assert fast.parse(["status", "--", "-odd"]) == ("status", {"cluster": "-odd"})
    assert fast.parse(["status"]) == ("status", {})
    monkeypatch.setenv("VIPCTL_STATE_DIR", "/tmp/x")
    assert fast.parse(["status"]) == ("status", {"state_dir": "/tmp/x"})
    assert fast.parse(["status", "--state-dir", "/y"]) == ("status", {"state_dir": "/y"})
    assert fast.parse(["validate", "a.yaml"]) == ("validate", {"spec_path": Path("a.yaml")})
    monkeypatch.setenv("VIPCTL_STATE_DIR", "")
    assert fast.parse(["status"]) == ("status", {})


def _fast(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        fast.run(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def _typer(argv: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, argv)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    good = tmp_path / "web.yaml"
    good.write_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: Shop\nvips: []\nuplink: up0\nmembers: []\nextra: 1\n")
    return {"GOOD": str(good), "BAD": str(bad), "MISSING": str(tmp_path / "nope.yaml")}


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "GOOD"],
        ["validate", "BAD"],
        ["validate", "MISSING"],
        ["which", "GOOD", "10.99.0.7", "--from", "spec"],
        ["which", "GOOD", "10.99.0.7", "--from", "spec", "--json"],
        ["which", "GOOD", "not-an-ip", "--from", "spec"],
        ["which", "GOOD", "2001:db8::1", "--from", "spec"],
        ["which", "GOOD", "10.99.0.7", "--from", "kernel"],
        ["which", "GOOD", "10.99.0.7", "--from", "state", "--state-dir", "STATE"],
        ["which", "BAD", "10.99.0.7"],
        ["plan", "GOOD", "--state-dir", "STATE"],
        ["plan", "GOOD", "--state-dir", "STATE", "--json"],
        ["plan", "GOOD", "--state-dir", "STATE", "--weights", "web1=3"],
        ["plan", "GOOD", "--state-dir", "STATE", "--weights", "web9=3"],
        ["plan", "GOOD", "--state-dir", "STATE", "--weights", "web1=-1"],
        ["plan", "GOOD", "--state-dir", "STATE", "--down", "web1,web2"],
        ["plan", "GOOD", "--state-dir", "STATE", "--down", "nobody"],
        ["plan", "GOOD", "--state-dir", "STATE", "--metric", "bytes", "--json"],
        ["rebalance", "GOOD", "--state-dir", "STATE"],
        ["status", "Not A Name", "--state-dir", "STATE"],
    ],
)
def test_answers_equal_typers(
    argv: list[str], files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files["STATE"] = str(tmp_path / "state")
    argv = [files.get(a, a) for a in argv]
    assert fast.parse(argv) is not None
    want = _typer(argv)
    got = _fast(argv, capsys)
    assert got == want


def test_the_plain_forms_import_no_typer(files: dict[str, str]) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom vipctl.cli import main\n"
        f"sys.argv = ['vipctl', 'validate', {files['GOOD']!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, [m for m in ('typer', 'vipctl.cli.app', 'yaml') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "0 ['yaml']"  # a YAML spec: PyYAML, not typer

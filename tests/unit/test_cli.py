"""The command line without root: exit codes and output of validate, schema, plan, which."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.unit.clirunner import cli_runner
from vipctl.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = cli_runner()


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_ok_and_invalid(spec_file: Path, tmp_path: Path) -> None:
    code, out, _ = run("validate", str(spec_file))
    assert code == 0 and "ok (cluster shop, 3 members)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: Shop\nvips: []\nuplink: up0\nmembers: []\nextra: 1\n")
    code, _, err = run("validate", str(bad))
    assert code == 78
    lines = err.strip().splitlines()
    assert all(line.startswith(f"{bad}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} >= {"cluster", "vips", "members", "extra"}


def test_schema_is_json_schema() -> None:
    code, out, _ = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "Spec" and "members" in schema["required"]


def test_plan_json_and_text(spec_file: Path, tmp_path: Path) -> None:
    code, out, _ = run("plan", str(spec_file), "--json", "--state-dir", str(tmp_path / "s"))
    assert code == 0
    data = json.loads(out)
    assert [m["buckets"] for m in data["members"]] == [64, 128, 64]
    assert data["compared_with"] is None
    code, out, _ = run(
        "plan",
        str(spec_file),
        "--down",
        "big",
        "--weights",
        "small=3",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert code == 0
    assert "big     m2    2       DOWN  0" in out
    assert "small   m1    3       yes   192" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--weights", "ghost=1"), "'ghost' is not a member"),
        (("--weights", "small"), "is not NAME=WEIGHT"),
        (("--weights", "small=-2"), "must be >= 0"),
        (("--down", "ghost"), "'ghost' is not a member"),
    ],
)
def test_plan_usage_errors_exit_2(spec_file: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = run("plan", str(spec_file), *args)
    assert code == 2 and message in err


def test_which_from_the_spec(spec_file: Path) -> None:
    code, out, _ = run("which", str(spec_file), "10.99.0.70", "--json", "--from", "spec")
    assert code == 0
    assert json.loads(out)["bucket"] == 70
    assert json.loads(out)["member"] == "big"  # buckets 64..191 are big's
    code, _, err = run("which", str(spec_file), "not-an-ip", "--from", "spec")
    assert code == 2 and "not an IPv4 or IPv6 address" in err
    code, _, err = run("which", str(spec_file), "2001:db8::1", "--from", "spec")
    assert code == 2 and "no VIP is" in err


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("vipctl ")


@pytest.mark.parametrize("command", [["lab", "down"], ["lab", "probe"], ["lab", "up"]])
def test_lab_says_it_is_not_installed_when_vipctl_lab_is_missing(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """The Debian package leaves vipctl/lab out (scripts/build-deb): `vipctl lab` then says
    so, exit 1, no traceback. sys.modules[...] = None is how Python marks a module that
    cannot be imported (find_spec answers None, import raises)."""
    monkeypatch.setitem(sys.modules, "vipctl.lab", None)
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    assert "the lab tooling (vipctl.lab" in result.stderr
    assert "not installed" in result.stderr and "source checkout" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)

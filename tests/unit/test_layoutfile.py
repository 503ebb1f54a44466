"""The layout file: export -> parse round trip, and every way a file can be refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.clirunner import cli_runner
from vipctl.cli.app import app
from vipctl.core import layoutfile
from vipctl.core import plan as planning
from vipctl.core.partition import Layout, compute
from vipctl.core.spec import load_spec
from vipctl.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "weighted-steer.yaml"


def exported(down: set[str]) -> tuple[dict[str, Any], Layout]:
    spec = load_spec(SPEC)
    layout = compute(spec.partition.bits, planning.spec_weights(spec), down)
    return layoutfile.export(spec, layout), layout


def test_round_trip_keeps_the_exact_table() -> None:
    spec = load_spec(SPEC)
    name = spec.member_names[1]
    data, layout = exported({name})
    got = layoutfile.parse(layoutfile.dumps(data), "f.json", spec)
    assert got == layout and got.down == (name,)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(bits=d["bits"] + 1), "bits:"),
        (lambda d: d.update(cluster="other"), "cluster:"),
        (lambda d: d.update(key="hash" if d["key"] == "mask" else "mask"), "key:"),
        (lambda d: d.update(version=2), "version:"),
        (lambda d: d["layout"].update(members=list(reversed(d["layout"]["members"]))), "members"),
        (lambda d: d["layout"]["table"].reverse(), "layout.table"),
        (lambda d: d.update(fingerprint="0" * 16), "fingerprint:"),
        (lambda d: d["layout"].update(base=[[0, 1]]), "malformed"),
        (lambda d: d["layout"].update(down=["nobody"]), "malformed"),
        (lambda d: d.pop("layout"), "malformed"),
    ],
)
def test_a_bad_file_is_refused_with_its_field(edit: object, message: str) -> None:
    spec = load_spec(SPEC)
    data, _ = exported({spec.member_names[0]})
    data = json.loads(json.dumps(data))
    edit(data)  # type: ignore[operator]
    with pytest.raises(SpecError) as err:
        layoutfile.parse(json.dumps(data), "f.json", spec)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_apply_with_a_bad_layout_exits_78_and_writes_no_state(tmp_path: Path) -> None:
    bad = tmp_path / "layout.json"
    for text in ("not json", "[]", json.dumps({"version": 1})):
        bad.write_text(text)
        state = tmp_path / "state"
        result = cli_runner().invoke(
            app, ["apply", str(SPEC), "--layout", str(bad), "--state-dir", str(state)]
        )
        assert result.exit_code == 78, result.output
        assert result.stderr.startswith(f"{bad}: ")
        assert "Traceback" not in result.stdout + result.stderr
        assert not state.exists() or not list(state.glob("*.json"))
    missing = cli_runner().invoke(
        app, ["apply", str(SPEC), "--layout", str(tmp_path / "nope.json")]
    )
    assert missing.exit_code == 78 and "cannot read" in missing.stderr

"""The layout file: export -> parse round trip, and every way a file can be refused."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

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
        (lambda d: d.pop("layout"), "layout: missing"),
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
        result = CliRunner().invoke(
            app, ["apply", str(SPEC), "--layout", str(bad), "--state-dir", str(state)]
        )
        assert result.exit_code == 78, result.output
        assert result.stderr.startswith(f"{bad}: ")
        assert "Traceback" not in result.output
        assert not state.exists() or not list(state.glob("*.json"))
    missing = CliRunner().invoke(app, ["apply", str(SPEC), "--layout", str(tmp_path / "nope.json")])
    assert missing.exit_code == 78 and "cannot read" in missing.stderr


# -- the corpus: nothing in a layout file is trusted because it parses ---------------------


def _good() -> tuple[dict[str, Any], Any]:
    spec = load_spec(SPEC)
    data, _ = exported(set())
    return json.loads(json.dumps(data)), spec


def _refit(data: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Recompute the fingerprint of an edited table, as anyone can: it must not help."""
    from vipctl.core.partition import fingerprint

    layout = Layout.from_json(data["layout"])
    p = spec.partition
    data["fingerprint"] = fingerprint(layout.table, p.key, p.bits, p.seed)
    return data


def _ownerless(d: dict[str, Any]) -> None:
    n = 1 << d["bits"]
    d["layout"]["base"] = [[-1, n]]
    d["layout"]["table"] = [[-1, n]]


def _all_to_first(d: dict[str, Any]) -> None:  # 256/0/0 while the weights say otherwise
    n = 1 << d["bits"]
    d["layout"]["base"] = [[0, n]]
    d["layout"]["table"] = [[0, n]]


def _partial(d: dict[str, Any]) -> None:  # the last run's buckets have no owner
    for key in ("base", "table"):
        runs = d["layout"][key]
        runs[-1][0] = -1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_ownerless, "have no owner"),
        (_all_to_first, "owns"),
        (_partial, "have no owner"),
        (lambda d: d.update(version=True), "version: true is not 1"),
        (lambda d: d.update(bits=float(d["bits"])), "bits:"),
        (lambda d: d.update(extra=1), "extra: unknown field"),
        (lambda d: d["layout"].update(weights=[1] * len(d["layout"]["weights"])), "exact fraction"),
        (lambda d: d["layout"].update(weights=["9" * 70] * len(d["layout"]["weights"])), "at most"),
        (lambda d: d["layout"].update(weights=["2000000"] * len(d["layout"]["weights"])), "above"),
        (lambda d: d["layout"]["base"][0].__setitem__(1, True), "integers"),
    ],
)
def test_a_crafted_table_is_refused_even_with_its_fingerprint(edit: Any, message: str) -> None:
    data, spec = _good()
    edit(data)
    # not even a layout: the fingerprint cannot be recomputed
    with contextlib.suppress(ValueError, TypeError, KeyError):
        data = _refit(data, spec)
    with pytest.raises(SpecError) as err:
        layoutfile.parse(json.dumps(data), "f.json", spec)
    assert any(message in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": 1, "version": 1}', "duplicate key 'version'"),
        ('{"version": 1e309}', "version:"),
        ('{"version": NaN}', "NaN is not a JSON number"),
        ("[" * 5000 + "]" * 5000, "nested deeper"),
        ('{"version": ' + "1" * 5000 + "}", "layout:"),
    ],
)
def test_hostile_json_is_refused_without_a_traceback(text: str, message: str) -> None:
    spec = load_spec(SPEC)
    with pytest.raises(SpecError) as err:
        layoutfile.parse(text, "f.json", spec)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_files_that_are_not_layouts_are_refused_before_reading(tmp_path: Path) -> None:
    import os

    spec = load_spec(SPEC)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (layoutfile.MAX_LAYOUT_BYTES + 1))
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"cluster": "caf\xe9"}')
    for path, message in (
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (big, "larger than"),
        (latin, "not UTF-8"),
        (tmp_path / "missing.json", "cannot read"),
    ):
        with pytest.raises(SpecError) as err:
            layoutfile.read(path, spec)
        assert any(message in p for p in err.value.problems), (path, err.value.problems)
        assert err.value.problems[0].startswith("layout: ")

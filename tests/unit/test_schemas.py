"""The published JSON Schemas (schemas/*.json) and the output that must follow them: real
`status` reports (controller over the fake backend of test_controller) and real `plan
--json` output; and the fingerprint of a bucket table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.schemacheck import errors
from tests.unit.clirunner import cli_runner
from tests.unit.test_controller import Rig, make_spec
from vipctl import controller
from vipctl.cli.app import app
from vipctl.core import schemas
from vipctl.core.partition import fingerprint

ROOT = Path(__file__).resolve().parents[2]
runner = cli_runner()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


@pytest.mark.parametrize("name", schemas.NAMES)
def test_published_schema_files_are_what_the_command_prints(name: str) -> None:
    result = runner.invoke(app, ["schema", "--output", name])
    assert result.exit_code == 0
    published = (ROOT / "schemas" / f"{name}.schema.json").read_text()
    assert json.loads(result.stdout) == json.loads(published), (
        f"schemas/{name}.schema.json is stale: vipctl schema --output {name} > it"
    )


def test_schema_of_an_unknown_output_is_a_usage_error() -> None:
    result = runner.invoke(app, ["schema", "--output", "nope"])
    assert result.exit_code == 2


@pytest.mark.parametrize("backend", ["nftables", "tc"])
def test_status_reports_follow_the_schema(rig: Rig, backend: str) -> None:
    rig.apply(
        make_spec(
            backend,
            members=[
                {"name": "web1", "port": "m1", "address": "198.51.100.10", "weight": 1},
                {"name": "web2", "port": "m2", "address": "198.51.100.18", "weight": 0.5},
                {"name": "web3", "port": "m3", "address": "198.51.100.26", "weight": 0},
            ],
        )
    )
    report = json.loads(json.dumps(controller.status("web", rig.dir, backends=rig.pick)))
    assert errors(report, schemas.STATUS["$defs"]["cluster"], schemas.STATUS) == []
    assert errors(report, schemas.STATUS) == []
    assert errors({"clusters": [report]}, schemas.STATUS) == []
    weights = [m["weight"] for m in report["members"]]
    assert weights == [1, 0.5, 0] and isinstance(weights[0], int)
    assert report["fingerprint"] == fingerprint(rig.kernel.tables[backend].table, "mask", 4, 0x5EED)


def test_the_schema_rejects_a_weight_given_as_a_string(rig: Rig) -> None:
    """The check above can fail: the report as vipctl printed it before (a string weight,
    no fingerprint)."""
    rig.apply(make_spec())
    report: dict[str, Any] = controller.status("web", rig.dir, backends=rig.pick)
    report["members"][0]["weight"] = "1"
    assert errors(report, schemas.STATUS)
    cluster = schemas.STATUS["$defs"]["cluster"]
    assert errors(report, cluster, schemas.STATUS) == [
        "$.members[0].weight: '1' is not of type number"
    ]
    del report["fingerprint"]
    assert "$: missing 'fingerprint'" in errors(report, cluster, schemas.STATUS)


def test_plan_json_follows_the_schema(tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text((ROOT / "examples" / "weighted-steer.yaml").read_text())
    for extra in ([], ["--down", "big", "--weights", "small=0.5"]):
        result = runner.invoke(
            app, ["plan", str(spec), "--json", "--state-dir", str(tmp_path / "s"), *extra]
        )
        assert result.exit_code == 0, result.stderr
        data = json.loads(result.stdout)
        assert errors(data, schemas.PLAN) == []
        assert all(isinstance(e["value"], int) for m in data["members"] for e in m["entries"])
    assert [m["weight"] for m in data["members"] if m["name"] == "small"] == [0.5]


def test_fingerprint_is_canonical_and_sensitive() -> None:
    table = ("a", "b", "a", None)
    fp = fingerprint(table, "mask", 2, 1)
    assert len(fp) == 16 and int(fp, 16) >= 0
    # a reviewed value: another implementation of the canonical encoding must agree
    assert fp == "2c4288295eb31a2b"
    assert fp == fingerprint(("a", "b", "a", None), "mask", 2, 0x5EED)  # mask ignores seed
    assert fp != fingerprint(("a", "b", "b", None), "mask", 2, 1)
    assert fp != fingerprint(table, "hash", 2, 1)
    assert fingerprint(table, "hash", 2, 1) != fingerprint(table, "hash", 2, 2)
    with pytest.raises(ValueError):
        fingerprint(table, "mask", 3, 0)


def test_layout_export_follows_the_schema(rig: Rig) -> None:
    from vipctl.core import layoutfile

    rig.apply(
        make_spec(
            members=[
                {"name": "web1", "port": "m1", "address": "198.51.100.10", "weight": 1},
                {"name": "web2", "port": "m2", "address": "198.51.100.18", "weight": 0.5},
                {"name": "web3", "port": "m3", "address": "198.51.100.26", "weight": 1},
            ],
        ),
        down={"web3"},
    )
    spec, layout = controller.exportable("web", rig.dir, backends=rig.pick)
    data = json.loads(layoutfile.dumps(layoutfile.export(spec, layout)))
    assert errors(data, schemas.LAYOUT) == []
    assert data["layout"]["weights"] == ["1", "1/2", "1"] and data["layout"]["down"] == ["web3"]
    # the check can fail: a weight as a float, a run that is not a pair of integers
    data["layout"]["weights"][1] = 0.5
    data["layout"]["table"][0] = ["0", 3]
    assert len(errors(data, schemas.LAYOUT)) == 2


def test_an_infinite_imbalance_is_null_not_infinity() -> None:
    """retune.imbalance is inf when a member with no share carries load; json.dumps wrote
    `Infinity`, which no JSON reader takes."""
    from vipctl.cli.retune import ratio

    assert ratio(float("inf")) is None and ratio(1.23456) == 1.2346
    load = {"cluster": "web", "metric": "packets", "window_s": 1, "measured": 5}
    report = {**load, "imbalance": ratio(float("inf")), "members": []}
    assert json.loads(json.dumps(report))["imbalance"] is None
    assert errors(report, schemas.STATUS) == []

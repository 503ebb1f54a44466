"""`vipctl validate` over generated specs exits 0 or 78, never a traceback; a
78 is one `SOURCE: field.path: message` line per problem; a spec that validates loads
back to the same model from its JSON dump (what the state records)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.specfuzz import YAML_SNIPPETS, dump, mutated_specs, valid_specs
from tests.unit.clirunner import cli_runner
from vipctl.cli.app import app
from vipctl.core.spec import load_spec, parse_spec

runner = cli_runner()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validate(text: str | bytes, suffix: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"spec{suffix}"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        result = runner.invoke(app, ["validate", str(path)])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback: the defect itself
        assert result.exit_code in (0, 78), (result.exit_code, result.stderr)
        if result.exit_code == 78:
            lines = result.stderr.splitlines()
            assert lines and all(ln.startswith(f"{path}: ") for ln in lines), result.stderr
        else:
            load_spec(path)
        return result.exit_code, result.stderr


@FUZZ
@given(spec=valid_specs(), kind=st.sampled_from(["json", "yaml"]))
def test_valid_specs_validate_and_round_trip(spec: dict[str, Any], kind: str) -> None:
    code, err = validate(dump(spec, kind), f".{kind}")
    assert code == 0, err
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"spec.{kind}"
        path.write_text(dump(spec, kind))
        model = load_spec(path)
    assert parse_spec(model.model_dump(mode="json")) == model


@FUZZ
@given(spec=mutated_specs(), kind=st.sampled_from(["json", "yaml"]))
def test_mutated_specs_exit_0_or_78(spec: dict[str, Any], kind: str) -> None:
    try:
        text = dump(spec, kind)
    except (ValueError, yaml_errors()):  # not representable in that format: nothing to test
        return
    validate(text, f".{kind}")


def yaml_errors() -> type[Exception]:
    import yaml

    return yaml.YAMLError


@FUZZ
@given(
    spec=valid_specs(max_members=2),
    field=st.sampled_from(["cluster", "uplink", "mode", "vips", "members"]),
    snippet=st.sampled_from(YAML_SNIPPETS),
)
def test_yaml_features_exit_0_or_78(spec: dict[str, Any], field: str, snippet: str) -> None:
    spec = {k: v for k, v in spec.items() if k != field}
    text = dump(spec, "yaml") + f"{field}: {snippet}\n"
    validate(text, ".yaml")


@FUZZ
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"cluster: ", b'{"a": ']))
def test_arbitrary_bytes_exit_0_or_78(data: bytes, prefix: bytes) -> None:
    validate(prefix + data, ".yaml")
    validate(prefix + data, ".json")

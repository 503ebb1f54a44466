"""docs/spec.md documents every field of the spec, and its tables cannot drift from the
models in vipctl/core/spec.py: each row's type, default and limits are derived here from
the pydantic models and must equal what the page says; a field missing from the page, or
a row for a field that no longer exists, fails."""

from __future__ import annotations

import re
import types
import typing
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vipctl.core import spec as specmod

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "spec.md"
ROW = re.compile(
    r"^\| `(?P<path>[a-z_.\[\]]+)` \| (?P<type>[^|]*) \| (?P<default>[^|]*) "
    r"\| (?P<limits>[^|]*) \|"
)


def _union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _plain(annotation: Any) -> tuple[Any, list[Any]]:
    """(the type, its Annotated metadata), with `X | None` reduced to X."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    args = typing.get_args(annotation)
    if _union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner, more = _plain(rest[0])
            return inner, metadata + more
    return annotation, metadata


def _type(annotation: Any) -> str:
    annotation, _ = _plain(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list of " + _type(typing.get_args(annotation)[0]).removesuffix(" (section)")
    if origin is Literal:
        return "choice"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if annotation is str:
        return "text"
    if annotation is IPv4Address:
        return "IPv4 address"
    if set(typing.get_args(annotation)) == {IPv4Address, IPv6Address}:
        return "IP address"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if _is_probe(annotation):
        return "section"
    raise AssertionError(f"no documented type for {annotation!r}")


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if value >= 1 else str(value)
    if isinstance(value, BaseModel):
        fields = value.model_dump(exclude_defaults=False)
        if set(fields) == {"kind"}:
            return f"{{kind: {fields['kind']}}}"
        return "(section)"
    return str(value)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return _value(info.default_factory())  # type: ignore[call-arg]
    return _value(info.default)


def _limits(info: FieldInfo) -> str:
    annotation, extra = _plain(info.annotation)
    found: dict[str, Any] = {}
    for item in [*info.metadata, *extra]:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
        if isinstance(item, FieldInfo):
            for sub in item.metadata:
                for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
                    value = getattr(sub, attr, None)
                    if value is not None:
                        found[attr] = value
            pattern = getattr(item, "pattern", None)
            if pattern:
                found["pattern"] = pattern
    parts = []
    if typing.get_origin(annotation) is Literal:
        parts.append(", ".join(f"`{a}`" for a in typing.get_args(annotation)))
    low = None
    if "ge" in found:
        low = (">= ", found["ge"])
    elif "gt" in found:
        low = ("> ", found["gt"])
    high = found.get("le")
    if low and high is not None and low[0] == ">= ":
        parts.append(f"{_value(low[1])}..{_value(high)}")
    else:
        if low:
            parts.append(f"{low[0]}{_value(low[1])}")
        if high is not None:
            parts.append(f"<= {_value(high)}")
    if "min_length" in found or "max_length" in found:
        parts.append(f"{found.get('min_length', 0)}..{found.get('max_length', 'any')} items")
    if "pattern" in found:
        parts.append(f"`{found['pattern']}`")
    return "; ".join(parts) or "-"


def _is_probe(annotation: Any) -> bool:
    """The probe: a union of models, one per kind."""
    args = typing.get_args(annotation)
    return _union(annotation) and all(
        isinstance(a, type) and issubclass(a, BaseModel) for a in args
    )


def _rows(model: type[BaseModel], prefix: str) -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        rows[path] = (_type(info.annotation), _default(info), _limits(info))
        annotation, _ = _plain(info.annotation)
        sub = f"{path}."
        if typing.get_origin(annotation) is list:
            annotation, _ = _plain(typing.get_args(annotation)[0])
            sub = f"{path}[]."
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows |= _rows(annotation, sub)
        elif _is_probe(annotation):
            for kind_model in typing.get_args(annotation):
                kind = typing.get_args(kind_model.model_fields["kind"].annotation)[0]
                rows |= {
                    p: r
                    for p, r in _rows(kind_model, f"{path}[{kind}].").items()
                    if not p.endswith(".kind")
                }
    return rows


def expected() -> dict[str, tuple[str, str, str]]:
    return _rows(specmod.Spec, "")


def documented() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            assert m["path"] not in rows, f"{m['path']} is documented twice"
            rows[m["path"]] = (m["type"].strip(), m["default"].strip(), m["limits"].strip())
    return rows


def test_every_field_is_documented_once() -> None:
    page, models = set(documented()), set(expected())
    assert not models - page, f"fields missing from docs/spec.md: {sorted(models - page)}"
    assert not page - models, f"docs/spec.md documents no such field: {sorted(page - models)}"


def test_types_defaults_and_limits_are_the_models() -> None:
    want = expected()
    for path, row in documented().items():
        assert row == want.get(path), (
            f"docs/spec.md, `{path}`: {row} but the model says {want.get(path)}"
        )


if __name__ == "__main__":  # print the rows the page must hold (for writing it)
    for path, (kind, default, limits) in expected().items():
        print(f"| `{path}` | {kind} | {default} | {limits} | |")

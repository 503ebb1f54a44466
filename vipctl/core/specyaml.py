"""The spec's YAML reader: PyYAML's SafeLoader with the YAML 1.2 core schema and the
spec's limits (imported only when a YAML spec is read: PyYAML costs ~8 ms to import)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from vipctl.core.scalars import (
    CORE_FLOAT,
    CORE_INT,
    MAX_DEPTH,
    MAX_NODES,
    Bad,
    Refused,
    core_float,
    core_int,
    or_bad,
)


class YamlError(ValueError):
    """Not valid YAML (PyYAML's message)."""


def load(text: str) -> object:
    """The one document in `text`; Refused for a limit or rule, YamlError for bad YAML."""
    try:
        loader = _Yaml12Loader(text)  # the reader refuses some characters at once
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the YAML 1.2 core schema and the limits above.

    PyYAML implements YAML 1.1, where `1:2:3:4:5:6:7:8` and an all-digit MAC are base-60
    integers, `on/off/yes/no/y/n` are booleans, `010` is octal, `2001-12-14` a date and `<<`
    merges. Operators write IPv6 addresses and MACs unquoted, so the implicit resolvers are
    replaced by the 1.2 core schema's (null, true/false, decimal/0o/0x ints, floats); any
    other plain scalar is a string. Duplicate keys are refused, keys must be strings, and
    nesting depth and the size after alias expansion are bounded while composing.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class registry

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise Refused(f"nested deeper than {MAX_DEPTH} levels")
        try:
            node: Any = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) in self._sizes:  # an alias: the anchored node, measured already
            return node
        if isinstance(node, yaml.ScalarNode):
            size, depth = 1, 1
        else:
            children = (
                [c for pair in node.value for c in pair]
                if isinstance(node, yaml.MappingNode)
                else list(node.value)
            )
            measured = [self._sizes[id(c)] for c in children]
            size = 1 + sum(m[0] for m in measured)
            depth = 1 + max((m[1] for m in measured), default=0)
        if size > MAX_NODES:
            raise Refused(f"more than {MAX_NODES} values once aliases are expanded")
        if depth > MAX_DEPTH:
            raise Refused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        self._sizes[id(node)] = (size, depth)
        return node


_CORE_RESOLVERS = [
    ("tag:yaml.org,2002:null", r"null|Null|NULL|~|", "nN~"),
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", CORE_INT.pattern, "-+0123456789"),
    ("tag:yaml.org,2002:float", CORE_FLOAT.pattern, "-+.0123456789"),
]
for _tag, _pattern, _first in _CORE_RESOLVERS:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
# an empty plain scalar is null too (the resolver is looked up by first character)
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])


# A refused value becomes a Bad in its place (core/scalars.py): the spec's loader reports
# it with its field path, as pydantic does for the rest.


def _construct_int(loader: _Yaml12Loader, node: yaml.ScalarNode) -> object:
    return or_bad(core_int, loader.construct_scalar(node))


def _construct_float(loader: _Yaml12Loader, node: yaml.ScalarNode) -> object:
    return or_bad(core_float, loader.construct_scalar(node))


def _construct_bool(loader: _Yaml12Loader, node: yaml.ScalarNode) -> object:
    text = loader.construct_scalar(node)
    if text.lower() not in ("true", "false"):
        return Bad(f"{text[:32]!r} is not true or false")
    return text.lower() == "true"


def _construct_mapping(loader: _Yaml12Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"(line {line})"
            shown = key.message if isinstance(key, Bad) else repr(key)[:32]
            mapping[str(name)] = Bad(f"a mapping key must be a string, not {shown}")
            continue
        if key in mapping:
            mapping[key] = Bad(f"duplicate key {key!r} (line {line})")
            continue
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Yaml12Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# 1.1-only types: a tagged value of these is refused instead of becoming bytes, a date,
# a set (keys of null) or an ordered list of pairs
for _tag in ("binary", "timestamp", "set", "omap", "pairs", "merge", "value", "yaml"):
    _Yaml12Loader.yaml_constructors.pop(f"tag:yaml.org,2002:{_tag}", None)


def _construct_undefined(loader: _Yaml12Loader, node: yaml.Node) -> object:
    """Any other tag (`!custom`, `!!binary`): refused where it stands, with its path."""
    return Bad(f"the tag {node.tag[:40]!r} is not accepted (plain YAML values only)")


_Yaml12Loader.add_constructor(None, _construct_undefined)

"""JSON Schemas of what vipctl prints for programs (pure data).

`vipctl schema --output status|plan|layout|spec` prints them; the files under schemas/ are
these, checked in and compared exactly by tests/unit/test_schemas.py, which also validates
real `status --json`, `plan --json` and `layout export` output against them. Numbers are
JSON numbers: a weight of 1 is `1`; `healthy` is true, false or null (docs/operations.md,
"Read status and metrics"); the layout file's weights are exact fractions in text ("1/3").

A field added to a report must be added here (the objects forbid unknown properties, so
the tests catch a report that drifts from its schema).
"""

from __future__ import annotations

from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE = "https://vipctl.invalid/schemas/"  # a stable id, not a URL to fetch

_INT = {"type": "integer", "minimum": 0}
_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
_WEIGHT = {"type": "number", "minimum": 0, "description": "int when whole, else a float"}
_NAME = {"type": "string", "minLength": 1}
_FINGERPRINT = {
    "type": ["string", "null"],
    "pattern": "^[0-9a-f]{16}$",
    "description": "first 16 hex digits of sha256 over the live bucket table, key, bits "
    "and seed (vipctl.core.partition.fingerprint); null when the table cannot be read",
}


def _object(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props) if required is None else required,
        "additionalProperties": False,
    }


_STATUS_MEMBER = _object(
    {
        "name": _NAME,
        "port": _NAME,
        "address": {"type": "string"},
        "healthy": {"type": ["boolean", "null"]},
        "reason": {"type": "string"},
        "weight": {**_WEIGHT, "description": "in force: set by rebalance, else the spec's"},
        "spec_weight": {**_WEIGHT, "description": "the spec's own weight"},
        "buckets": _INT,
        "share": _SHARE,
        "target": _SHARE,
        "packets": _INT,
        "bytes": _INT,
        "pinned": _INT,
    }
)

_STATUS_CLUSTER = _object(
    {
        "cluster": _NAME,
        "backend": {"enum": ["nftables", "tc", "xdp"]},
        "generation": {"type": ["integer", "null"], "minimum": 0},
        "mode": {"enum": ["broadcast", "steer"]},
        "fingerprint": _FINGERPRINT,
        "key": {"enum": ["mask", "hash"]},
        "bits": {"type": "integer", "minimum": 1, "maximum": 16},
        "vips": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "uplink": _NAME,
        "in_sync": {"type": "boolean"},
        "weights_from": {
            "enum": ["spec", "rebalance", "layout"],
            "description": "where the weights in force come from",
        },
        "members": {"type": "array", "items": {"$ref": "#/$defs/member"}},
        "offload": _object({"rules": _INT, "in_hw": _INT}),
        "routers": {
            "type": "array",
            "description": "with a store: what each router's daemon published",
            "items": _object(
                {
                    "name": _NAME,
                    "fingerprint": _FINGERPRINT,
                    "generation": {"type": ["integer", "null"], "minimum": 0},
                    "desired_generation": {"type": ["integer", "null"], "minimum": 0},
                    "age_s": {"type": "number", "minimum": 0},
                }
            ),
        },
        "routers_agree": {"type": "boolean"},
        "store_error": {"type": "string"},
    },
    required=[
        "bits",
        "cluster",
        "fingerprint",
        "generation",
        "in_sync",
        "key",
        "members",
        "mode",
        "uplink",
        "vips",
        "backend",
        "weights_from",
    ],
)

STATUS: dict[str, Any] = {
    "$schema": DRAFT,
    "$id": BASE + "status.json",
    "title": "vipctl status --json",
    "description": "`status CLUSTER --json`: one cluster; `status --json`: {clusters: [...]}",
    "oneOf": [
        {"$ref": "#/$defs/cluster"},
        _object({"clusters": {"type": "array", "items": {"$ref": "#/$defs/cluster"}}}),
    ],
    "$defs": {"cluster": _STATUS_CLUSTER, "member": _STATUS_MEMBER},
}

_PLAN_MEMBER = _object(
    {
        "name": _NAME,
        "port": _NAME,
        "address": {"type": "string"},
        "weight": _WEIGHT,
        "up": {"type": "boolean"},
        "buckets": _INT,
        "share": _SHARE,
        "target": _SHARE,
        "moved_in": _INT,
        "moved_out": _INT,
        "entries": {
            "type": "array",
            "description": "value/mask pairs over the bucket number (the draft's wildcards)",
            "items": _object({"value": _INT, "mask": _INT}),
        },
    }
)

PLAN: dict[str, Any] = {
    "$schema": DRAFT,
    "$id": BASE + "plan.json",
    "title": "vipctl plan --json",
    **_object(
        {
            "cluster": _NAME,
            "mode": {"enum": ["broadcast", "steer"]},
            "key": {"enum": ["mask", "hash"]},
            "bits": {"type": "integer", "minimum": 1, "maximum": 16},
            "buckets": {"type": "integer", "minimum": 2},
            "down": {"type": "array", "items": _NAME},
            "members": {"type": "array", "items": _PLAN_MEMBER},
            "moved": _INT,
            "lower_bound": _INT,
            "compared_with": {"enum": ["live", None]},
            "pinned_in_moved_buckets": _INT,
            "pinned_unknown_bucket": _INT,
        },
        required=[
            "bits",
            "buckets",
            "cluster",
            "compared_with",
            "down",
            "key",
            "lower_bound",
            "members",
            "mode",
            "moved",
        ],
    ),
}


_RUNS = {
    "type": "array",
    "description": "the bucket table run-length encoded: [member index into `members` "
    "(-1: nobody, no member up), run length], in bucket order",
    "items": {"type": "array", "items": {"type": "integer", "minimum": -1}, "minItems": 2},
}

LAYOUT: dict[str, Any] = {
    "$schema": DRAFT,
    "$id": BASE + "layout.json",
    "title": "vipctl layout export",
    **_object(
        {
            "version": {"enum": [1]},
            "cluster": _NAME,
            "key": {"enum": ["mask", "hash"]},
            "bits": {"type": "integer", "minimum": 1, "maximum": 16},
            "seed": {"type": "integer", "minimum": 0},
            "fingerprint": {**_FINGERPRINT, "type": "string"},
            "layout": _object(
                {
                    "bits": {"type": "integer", "minimum": 1, "maximum": 16},
                    "members": {"type": "array", "items": _NAME},
                    "weights": {
                        "type": "array",
                        "description": "each member's weight as an exact fraction in text "
                        "('1', '1/3'): the file reproduces the table exactly, which a float "
                        "could not promise",
                        "items": {"type": "string", "pattern": "^[0-9]+(/[0-9]+)?$"},
                    },
                    "base": _RUNS,
                    "down": {"type": "array", "items": _NAME},
                    "table": _RUNS,
                }
            ),
        }
    ),
}


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one output: spec (input), status, plan, layout."""
    if name == "status":
        return STATUS
    if name == "plan":
        return PLAN
    if name == "layout":
        return LAYOUT
    if name == "spec":
        from vipctl.core.spec import json_schema

        return json_schema()
    raise KeyError(name)


NAMES = ("spec", "status", "plan", "layout")

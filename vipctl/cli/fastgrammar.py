"""The plain command lines of validate, which, plan, status, apply and rebalance,
as cli/fast.py parses them without typer.

GENERATED from the typer application (vipctl/cli/app.py) by
`.venv/bin/python -m vipctl.cli.fastgen`: do not edit. tests/unit/test_cli_fast.py renders
it again and fails on any difference.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["flag", "str", "path"]


# command -> its arguments in order: (parameter, kind, required)
POSITIONAL: dict[str, tuple[tuple[str, Kind, bool], ...]] = {
    "validate": (("spec_path", "path", True),),
    "which": (
        ("spec_path", "path", True),
        ("source", "str", True),
    ),
    "plan": (("spec_path", "path", True),),
    "status": (("cluster", "str", False),),
    "apply": (("spec_path", "path", True),),
    "rebalance": (("spec_path", "path", True),),
}

# command -> long option -> (parameter, kind); any other option is typer's
OPTIONS: dict[str, dict[str, tuple[str, Kind]]] = {
    "validate": {},
    "which": {
        "--state-dir": ("state_dir", "str"),
        "--json": ("as_json", "flag"),
        "--from": ("source_table", "str"),
    },
    "plan": {
        "--weights": ("weights", "str"),
        "--down": ("down", "str"),
        "--metric": ("metric", "str"),
        "--png": ("png", "path"),
        "--json": ("as_json", "flag"),
        "--state-dir": ("state_dir", "str"),
    },
    "status": {
        "--json": ("as_json", "flag"),
        "--metric": ("metric", "str"),
        "--png": ("png", "path"),
        "--state-dir": ("state_dir", "str"),
    },
    "apply": {
        "--dry-run": ("dry_run", "flag"),
        "--diff": ("diff", "flag"),
        "--down": ("down", "str"),
        "--skip-checks": ("skip_checks", "flag"),
        "--layout": ("layout_path", "path"),
        "--state-dir": ("state_dir", "str"),
    },
    "rebalance": {
        "--weights": ("weights", "str"),
        "--metric": ("metric", "str"),
        "--dry-run": ("dry_run", "flag"),
        "--json": ("as_json", "flag"),
        "--state-dir": ("state_dir", "str"),
    },
}

# command -> parameter -> environment variable read when the option is absent
ENVVARS: dict[str, dict[str, str]] = {
    "validate": {},
    "which": {
        "state_dir": "VIPCTL_STATE_DIR",
    },
    "plan": {
        "state_dir": "VIPCTL_STATE_DIR",
    },
    "status": {
        "state_dir": "VIPCTL_STATE_DIR",
    },
    "apply": {
        "state_dir": "VIPCTL_STATE_DIR",
    },
    "rebalance": {
        "state_dir": "VIPCTL_STATE_DIR",
    },
}

# command -> parameter -> its default (every parameter but required arguments)
DEFAULTS: dict[str, dict[str, object]] = {
    "validate": {},
    "which": {
        "state_dir": None,
        "as_json": False,
        "source_table": "auto",
    },
    "plan": {
        "weights": None,
        "down": None,
        "auto": False,
        "window": 10.0,
        "tolerance": 1.1,
        "metric": "packets",
        "png": None,
        "as_json": False,
        "state_dir": None,
    },
    "status": {
        "cluster": None,
        "as_json": False,
        "watch": None,
        "load_": False,
        "window": 5.0,
        "metric": "packets",
        "png": None,
        "state_dir": None,
    },
    "apply": {
        "dry_run": False,
        "diff": False,
        "down": None,
        "skip_checks": False,
        "layout_path": None,
        "state_dir": None,
    },
    "rebalance": {
        "weights": None,
        "auto": False,
        "window": 10.0,
        "tolerance": 1.1,
        "metric": "packets",
        "dry_run": False,
        "as_json": False,
        "state_dir": None,
    },
}

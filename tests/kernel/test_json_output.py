"""Every command and option that prints JSON, run for real in a lab, validated against
its published schema (vipctl/core/schemas.py, schemas/*.json).

`plan --auto --json` and `status --load --json` printed reports their schemas did not
describe (issue 28); `rebalance --weights --json` printed text; `status --watch --json`
mixed a clock line into the JSON. The list below is checked against the typer app: a
command that gains `--json` and is not run here fails the first test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import vipctl, vipctl_spawn, write_spec
from tests.schemacheck import errors
from vipctl.core import schemas
from vipctl.lab.topology import Lab

# (arguments, schema, exit codes allowed); SPEC and STATE are filled in
RUNS: list[tuple[list[str], str, tuple[int, ...]]] = [
    (["which", "SPEC", "10.99.0.7", "--json"], "which", (0,)),
    (["which", "SPEC", "10.99.0.7", "--json", "--from", "state"], "which", (0,)),
    (["which", "SPEC", "10.99.0.7", "--json", "--from", "spec"], "which", (0,)),
    (["plan", "SPEC", "--json"], "plan", (0,)),
    (["plan", "SPEC", "--json", "--weights", "web1=2", "--down", "web2"], "plan", (0,)),
    (["plan", "SPEC", "--json", "--auto", "--window", "0.3"], "plan", (0,)),
    (["plan", "SPEC", "--json", "--auto", "--window", "0.3", "--metric", "bytes"], "plan", (0,)),
    (["rebalance", "SPEC", "--json", "--weights", "web1=2", "--dry-run"], "rebalance", (0,)),
    (["rebalance", "SPEC", "--json", "--weights", "web1=2"], "rebalance", (0,)),
    (["rebalance", "SPEC", "--json", "--weights", "web1=1"], "rebalance", (0,)),
    (["rebalance", "SPEC", "--json", "--auto", "--window", "0.3"], "rebalance", (0,)),
    (["rebalance", "SPEC", "--json", "--auto", "--window", "0.3", "--dry-run"], "rebalance", (0,)),
    (["status", "--json"], "status", (0,)),
    (["status", "web", "--json"], "status", (0,)),
    (["status", "web", "--json", "--load", "--window", "0.3"], "status", (0,)),
    (["status", "--json", "--load", "--window", "0.3", "--metric", "bytes"], "status", (0,)),
    (["layout", "export", "web"], "layout", (0,)),
    (["doctor", "SPEC", "--json"], "doctor", (0, 1)),
]


def _json_commands() -> set[str]:
    """'command' or 'group command' for every typer command that has --json."""
    import typer.main

    from vipctl.cli.app import app

    found = set()

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            elif any("--json" in p.opts for p in cmd.params):
                found.add(prefix + name)

    walk(typer.main.get_command(app), "")
    return found


def test_every_json_command_is_run_here() -> None:
    ran = {a[0] for a, _, _ in RUNS}
    assert _json_commands() <= ran, _json_commands() - ran


def _check(out: str, name: str, what: str) -> Any:
    data = json.loads(out)  # strict: no NaN/Infinity either
    json.loads(out, parse_constant=lambda c: pytest.fail(f"{what}: {c} is not JSON"))
    problems = errors(data, schemas.schema(name))
    assert problems == [], (what, problems, data)
    return data


def test_real_json_output_follows_the_published_schemas(topo: Lab, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    path = write_spec(tmp_path / "web.json", topo.spec("web", mode="steer", key="mask", bits=6))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return vipctl(topo.router_ns, *args, "--state-dir", state)

    # nothing installed: an empty answer is still the schema's JSON, exit 0
    empty = run("status", "--json")
    assert empty.returncode == 0, empty.stderr
    assert _check(empty.stdout, "status", "status --json, nothing installed") == {"clusters": []}
    assert run("apply", str(path)).returncode == 0
    try:
        for argv, name, codes in RUNS:
            args = [str(path) if a == "SPEC" else a for a in argv]
            # doctor reads no state (it checks the box against the spec)
            got = vipctl(topo.router_ns, *args) if args[0] == "doctor" else run(*args)
            what = " ".join(argv)
            assert got.returncode in codes, (what, got.returncode, got.stderr)
            assert "Traceback" not in got.stderr, what
            _check(got.stdout, name, what)
        # --watch --json: one document per line at every refresh
        proc = vipctl_spawn(
            topo.router_ns, "status", "web", "--json", "--watch", "0.2", "--state-dir", state
        )
        try:
            lines = [proc.stdout.readline() for _ in range(3)] if proc.stdout else []
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        assert len(lines) == 3
        for line in lines:
            _check(line, "status", "status web --json --watch 0.2")
    finally:
        run("down", "web")

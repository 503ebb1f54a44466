"""whatever validates applies. A sample of the fuzzer's valid specs (names over
their whole patterns, every field over its range, both modes, keys and families) is
applied in a throwaway namespace whose interfaces carry the spec's names; then a mutated
spec is applied on top of the live cluster: exit 0, or 78 with ruleset and state
byte-identical. Never a traceback, never a kernel refusal."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings

from tests.kernel.conftest import unique_prefix
from tests.kernel.helpers import ruleset, vipctl
from tests.specfuzz import mutated_specs, valid_specs
from vipctl.core.spec import parse_spec


def _ns_with_links(ns: str, names: list[str]) -> None:
    batch = []
    for i, name in enumerate(names):
        batch += [
            f"link add name {name} type veth peer name zzp{i}",  # "a" alone is "address"
            f"link set dev {name} up",
            f"link set zzp{i} up",
        ]
    batch.append("link set lo up")
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch) + "\n",
                   text=True, check=True)  # fmt: skip
    # what a router needs (the doctor checks it): forwarding on every port ("all" writes
    # every existing device's value)
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1",
         "net.ipv6.conf.all.forwarding=1"],
        check=True,
    )  # fmt: skip


def _snapshot(ns: str, state: Path) -> tuple[str, dict[str, bytes]]:
    files = {p.name: p.read_bytes() for p in sorted(state.iterdir())} if state.exists() else {}
    return ruleset(ns), files


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=valid_specs(max_members=5), mutated=mutated_specs())
def test_every_valid_spec_applies(spec: dict[str, Any], mutated: dict[str, Any]) -> None:
    model = parse_spec(spec)  # the fuzzer's valid specs are valid
    names = [model.uplink, *(m.port for m in model.members)]
    assume(not any(n.startswith("zzp") for n in names))
    ns = f"{unique_prefix()}-fz"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ns_with_links(ns, names)
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            path = Path(tmp) / "spec.json"
            path.write_text(json.dumps(spec))
            proc = vipctl(ns, "apply", str(path), "--state-dir", str(state))
            assert proc.returncode == 0, (spec, proc.stderr)
            again = vipctl(ns, "apply", str(path), "--state-dir", str(state))
            assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
            # a mutation of another spec on top of the live cluster: applies or changes nothing
            before = _snapshot(ns, state)
            bad = Path(tmp) / "mutated.json"
            bad.write_text(json.dumps({**mutated, "cluster": spec["cluster"]}))
            proc = vipctl(ns, "apply", str(bad), "--state-dir", str(state))
            assert "Traceback" not in proc.stderr, proc.stderr
            if proc.returncode == 78:
                assert _snapshot(ns, state) == before
            else:  # valid: its interfaces do not exist here, so it may be refused (1)
                assert proc.returncode in (0, 1), (mutated, proc.stderr)
                if proc.returncode == 1:
                    assert "does not exist" in proc.stderr, proc.stderr
                    assert _snapshot(ns, state) == before
            down = vipctl(ns, "down", spec["cluster"], "--state-dir", str(state))
            assert down.returncode == 0, down.stderr
            assert "vipctl_" not in ruleset(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

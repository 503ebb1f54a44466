"""The tc backend on this host's kernel (no flower, pedit or gact): a clear refusal, and
nothing half-installed. The backend itself is tested for real in tests/vm (QEMU guest)."""

from __future__ import annotations

from pathlib import Path

from tests.kernel.helpers import ruleset, sh, vipctl, write_spec
from vipctl.lab.topology import Lab


def snapshot(ns: str) -> tuple[str, str]:
    """The whole nftables ruleset and every tc qdisc and filter of the lab's links."""
    tc = sh(
        ns,
        "tc qdisc show; for d in up0 m1 m2 m3; do "
        "tc filter show dev $d ingress; tc filter show dev $d egress; done",
    )
    return ruleset(ns), tc


def test_tc_backend_refuses_cleanly_without_flower_pedit_gact(topo: Lab, tmp_path: Path) -> None:
    ns = topo.router_ns
    spec = topo.spec("web", mode="broadcast", key="mask")
    spec["backend"] = "tc"
    path = write_spec(tmp_path / "web.json", spec)
    state = str(tmp_path / "state")
    before = snapshot(ns)
    proc = vipctl(ns, "apply", str(path), "--state-dir", state, "--skip-checks")
    assert proc.returncode == 1, proc.stderr
    assert "nothing changed" in proc.stderr.lower()
    after = snapshot(ns)
    assert after == before
    assert not list((tmp_path / "state").glob("*.json"))


def test_tc_backend_refuses_the_hash_key(topo: Lab, tmp_path: Path) -> None:
    spec = topo.spec("web", mode="steer", key="hash")
    spec["backend"] = "tc"
    path = write_spec(tmp_path / "web.json", spec)
    proc = vipctl(
        topo.router_ns, "apply", str(path), "--state-dir", str(tmp_path / "s"), "--skip-checks"
    )
    assert proc.returncode == 78, proc.stderr
    assert "partition.key" in proc.stderr

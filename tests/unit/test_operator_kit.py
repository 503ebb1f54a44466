"""The operator's kit (contrib/): the alert rules pass `promtool check rules` and their unit
tests (`promtool test rules`, one file per group, each alert made to fire and to stay
silent), a rule that never fires fails its group's tests, and the PromQL name extractor
that the kernel test (tests/kernel/test_operator_kit.py) compares with a real scrape reads
what it should. No root needed; promtool is Debian's `prometheus` package (installed by
`scripts/install-deps --tests`): without it these tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from tests import promql
from tests.unit.test_metrics import report
from vipctl.core.spec import Retune
from vipctl.service.metrics import ClusterCollector, PinCounts
from vipctl.service.stats import DaemonStats

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def promtool() -> str:
    if PROMTOOL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI: scripts/install-deps --tests installs it")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return PROMTOOL


def rules() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(promql.RULES.read_text())
    return doc


def rule_test_files() -> list[Path]:
    return sorted(promql.RULE_TESTS.glob("*.test.yml"))


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    got = run([promtool, "check", "rules", str(promql.RULES)], promql.RULES.parent)
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules()['groups'])} rules found" in got.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    files = [str(f) for f in rule_test_files()]
    got = run([promtool, "test", "rules", *files], promql.RULE_TESTS)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.count("SUCCESS") == len(files), got.stdout


def test_one_test_file_per_group_and_every_alert_fires_and_stays_silent() -> None:
    """Group vipctl-NAME is tested by tests/NAME.test.yml, which evaluates each of its
    alerts at least once expecting it and at least once expecting silence."""
    groups = {g["name"]: {r["alert"] for r in g["rules"]} for g in rules()["groups"]}
    assert sorted(
        f"vipctl-{f.name.removesuffix('.test.yml')}" for f in rule_test_files()
    ) == sorted(groups)
    for group, alerts in groups.items():
        path = promql.RULE_TESTS / f"{group.removeprefix('vipctl-')}.test.yml"
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../vipctl.rules.yml"], path
        fires: set[str] = set()
        silent: set[str] = set()
        for case in doc["tests"]:
            for check in case["alert_rule_test"]:
                assert check["alertname"] in alerts, (path, check["alertname"])
                (fires if check["exp_alerts"] else silent).add(check["alertname"])
        assert fires == alerts, (path, alerts - fires)
        # the watchdog fires always: silence is no case of it
        assert silent == alerts - {"VipctlWatchdog"}, (path, alerts - silent)


@pytest.mark.parametrize("alert", sorted(r["alert"] for g in rules()["groups"] for r in g["rules"]))
def test_a_rule_that_never_fires_fails_its_tests(promtool: str, alert: str, tmp_path: Path) -> None:
    """The tests can fail: with the alert's expression replaced by one that is never true,
    its group's promtool tests fail, naming the alert."""
    doc = rules()
    group = next(g for g in doc["groups"] if any(r["alert"] == alert for r in g["rules"]))
    next(r for r in group["rules"] if r["alert"] == alert)["expr"] = "vector(1) == 0"
    (tmp_path / "vipctl.rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "tests").mkdir()
    name = f"{group['name'].removeprefix('vipctl-')}.test.yml"
    shutil.copy(promql.RULE_TESTS / name, tmp_path / "tests" / name)
    got = run([promtool, "test", "rules", name], tmp_path / "tests")
    assert got.returncode != 0, got.stdout
    assert f"alertname: {alert}" in got.stdout + got.stderr, got.stdout + got.stderr


def test_the_overload_alert_uses_the_default_retune_tolerance() -> None:
    """VipctlMemberOverloaded fires above the spec's default re-tune tolerance, the value
    its annotation names."""
    tolerance = Retune.model_fields["tolerance"].default
    rule = next(
        r for g in rules()["groups"] for r in g["rules"] if r["alert"] == "VipctlMemberOverloaded"
    )
    assert f"\n> {tolerance}\n" in rule["expr"], rule["expr"]
    assert f"re-tune tolerance, {tolerance})" in rule["annotations"]["description"]


def test_the_dashboard_is_well_formed() -> None:
    doc = json.loads(promql.DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    variables = [v["name"] for v in doc["templating"]["list"]]
    assert variables == ["datasource", "cluster", "instance"]
    # every query parses and names at least one metric
    for q in promql.dashboard_queries():
        assert promql.names(q.expr).metrics, q.where


# -- the name extractor -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "selectors", "grouping"),
    [
        ("vipctl_member_healthy == 0", [("vipctl_member_healthy", set())], set()),
        (
            'sum by (cluster, member) (rate(vipctl_member_packets_total{cluster=~"$cluster",'
            'instance=~"$instance"}[$__rate_interval]))\n/ on (cluster) group_left\n'
            "sum by (cluster) (rate(vipctl_member_packets_total[10m])) > 1.1",
            [
                ("vipctl_member_packets_total", {"cluster", "instance"}),
                ("vipctl_member_packets_total", set()),
            ],
            {"cluster", "member"},
        ),
        (
            'max without(member) (a{b!="x,y}z"}) unless on(c) b offset 5m or sum(d) by (e)',
            [("a", {"b"}), ("b", set()), ("d", set())],
            {"member", "c", "e"},
        ),
        ('absent(up{job="vipctl"}) and vector(1) > bool 2e3', [("up", {"job"})], set()),
        ('count_values("v", x) + topk(3, y[5m:1m]) # z w', [("x", set()), ("y", set())], set()),
        (
            'label_values(vipctl_cluster_info{cluster=~"$cluster"}, instance)',
            [("vipctl_cluster_info", {"cluster"})],
            {"instance"},
        ),
        ('{__name__="m"}', [("", {"__name__"})], set()),
    ],
)
def test_names_of_an_expression(
    expr: str, selectors: list[tuple[str, set[str]]], grouping: set[str]
) -> None:
    found = promql.names(expr)
    assert [(m, set(ls)) for m, ls in found.selectors] == selectors
    assert found.grouping == grouping


def test_unreadable_expressions_are_refused() -> None:
    for bad in ("a{b c}", "a{b=", "sum by (a; b) (x)", "sum by (a, 1) (x)", "a ? b"):
        with pytest.raises(promql.PromQLError):
            promql.names(bad)


def test_a_renamed_metric_or_a_missing_label_is_found() -> None:
    """What the kernel test asserts on, here against the collector fed a fake report and
    daemon counters: every name the kit uses is exported; with one metric renamed or one
    label gone, exactly the queries that use it are named."""
    stats = DaemonStats(swaps=1, failovers=1, probe_latency={"web1": 0.001})
    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(lambda: ["web"], report, {"web": stats}, PinCounts(lambda _: {}))
    )
    exported = promql.exported_names(generate_latest(registry).decode())
    queries = promql.rule_queries() + promql.dashboard_queries()
    assert promql.unknown_names(queries, exported) == []
    renamed = dict(exported)
    renamed["vipctl_member_target_shares"] = renamed.pop("vipctl_member_target_share")
    assert promql.unknown_names(queries, renamed) == [
        "rule VipctlMemberOverloaded: metric vipctl_member_target_share is not exported",
        "panel 'Measured load vs target share' B: metric vipctl_member_target_share is not "
        "exported",
        "panel 'Measured load vs target share' B: label cluster is on none of "
        "['vipctl_member_target_share']",
        "panel 'Measured load vs target share' B: label member is on none of "
        "['vipctl_member_target_share']",
    ]
    unlabelled = dict(exported, vipctl_cluster_info=frozenset({"cluster"}))
    assert promql.unknown_names(queries, unlabelled) == [
        "rule VipctlFingerprintMismatch: vipctl_cluster_info has no label fingerprint",
        "rule VipctlFingerprintMismatch: label fingerprint is on none of ['vipctl_cluster_info']",
        "panel 'Table fingerprints live' A: vipctl_cluster_info has no label fingerprint",
        "panel 'Table fingerprints live' A: label fingerprint is on none of "
        "['vipctl_cluster_info']",
    ]


# -- docs/operations.md says what the kit and the exporter hold ---------------------------

OPERATIONS = promql.ROOT / "docs" / "operations.md"


def test_operations_doc_explains_every_alert_with_its_severity() -> None:
    text = OPERATIONS.read_text()
    documented = dict(re.findall(r"^\| `(Vipctl\w+)` \((\w+)\) \|", text, re.M))
    shipped = {r["alert"]: r["labels"]["severity"] for g in rules()["groups"] for r in g["rules"]}
    assert documented == shipped


def test_operations_doc_lists_every_exported_metric() -> None:
    stats = DaemonStats(probe_latency={"web1": 0.001}, probe_local_errors={"EMFILE": 1})
    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(lambda: ["web"], report, {"web": stats}, PinCounts(lambda _: {}))
    )
    exported = promql.exported_names(generate_latest(registry).decode())
    rows = re.findall(r"^\| `(vipctl_\w+)\{([\w,]*)\}` \|", OPERATIONS.read_text(), re.M)
    assert {name: frozenset(labels.split(",")) for name, labels in rows} == exported

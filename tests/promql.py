"""The metric and label names a PromQL expression uses, by a small tokenizer (no parser).

For the tests that hold the shipped alert rules and Grafana dashboard to the exporter: a
metric renamed in vipctl/service/metrics.py must show up as a name the rules or the
dashboard query and the exporter no longer exports.

The tokenizer knows just enough PromQL to tell the names apart: strings and comments are
dropped; an identifier inside a selector's braces is a label name (the one before it, if
any, is the metric name); inside `by`/`without`/`on`/`ignoring`/`group_left`/
`group_right` (...) they are label names too; an identifier followed by `(` is a function,
and aggregation operators, binary keywords and modifiers are keywords; ranges `[...]` hold
durations. Every other identifier is a metric name. Grafana's `$variables` count as
values, and its `label_values(METRIC, LABEL)` template query is understood.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AGGREGATIONS = frozenset(
    {
        *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
        *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = (
    frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
    | GROUPING
    | AGGREGATIONS
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


@dataclass
class Names:
    """`selectors`: (metric, label names matched in its braces) for every selector;
    `grouping`: label names in by/without/on/ignoring/group_left/group_right lists."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {m for m, _ in self.selectors if m}


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
    return out


def names(expr: str) -> Names:
    """The metric and label names `expr` uses."""
    grafana = re.fullmatch(r"\s*label_values\(\s*(.*),\s*([a-zA-Z_]\w*)\s*\)\s*", expr, re.S)
    if grafana:  # a Grafana template query: label_values(SELECTOR, LABEL)
        found = names(grafana.group(1))
        found.grouping.add(grafana.group(2))
        return found
    toks = tokens(expr)
    found = Names()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "[":  # a range or subquery: durations, variables, ':'
            while i < len(toks) and toks[i][1] != "]":
                i += 1
        elif text == "{":  # a selector without a metric name
            i, labels = _matchers(toks, i)
            found.selectors.append(("", labels))
            continue
        elif kind == "ident" and text in GROUPING and nxt == "(":
            i += 2
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][0] == "ident":
                    found.grouping.add(toks[i][1])
                elif toks[i][1] != ",":
                    raise PromQLError(f"unexpected {toks[i][1]!r} in {text}(...) of {expr!r}")
                i += 1
        elif kind == "ident" and text.lower() not in KEYWORDS and nxt != "(":
            labels: frozenset[str] = frozenset()
            if nxt == "{":
                i, labels = _matchers(toks, i + 1)
                found.selectors.append((text, labels))
                continue
            found.selectors.append((text, labels))
        i += 1
    return found


def _matchers(toks: list[tuple[str, str]], i: int) -> tuple[int, frozenset[str]]:
    """Label names in the braces opening at toks[i]; returns the index after '}'."""
    labels = set()
    i += 1
    while i < len(toks) and toks[i][1] != "}":
        kind, text = toks[i]
        if kind == "ident" and i + 1 < len(toks) and toks[i + 1][1] in ("=", "!=", "=~", "!~"):
            labels.add(text)
        elif kind not in ("string", "var") and text not in ("=", "!=", "=~", "!~", ","):
            raise PromQLError(f"unexpected {text!r} in a label matcher")
        i += 1
    if i >= len(toks):
        raise PromQLError("unclosed '{'")
    return i + 1, frozenset(labels)


# -- the operator's kit: every query of the shipped rules and dashboard ---------------------

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "vipctl.rules.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "tests"
DASHBOARD = ROOT / "contrib" / "grafana" / "vipctl.json"
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
_TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_]\w*)")
# What Prometheus itself adds: target labels on every series, and `up` per target.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC = {"up": frozenset()}


@dataclass(frozen=True)
class Query:
    where: str  # e.g. "rule VipctlMemberDown", "panel 'Buckets per member' A"
    expr: str
    legend: frozenset[str] = frozenset()  # labels a legend or title template shows


def rule_queries(path: Path = RULES) -> list[Query]:
    doc = yaml.safe_load(path.read_text())
    return [
        Query(
            f"rule {r.get('alert') or r.get('record')}",
            r["expr"],
            frozenset(_TEMPLATE_LABEL.findall(" ".join(r.get("annotations", {}).values()))),
        )
        for group in doc["groups"]
        for r in group["rules"]
    ]


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    doc = json.loads(path.read_text())
    out: list[Query] = []

    def legend(*texts: str) -> frozenset[str]:
        return frozenset(x for t in texts for x in _LEGEND.findall(t))

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append(
                    Query(
                        f"panel {p['title']!r} {t['refId']}",
                        t["expr"],
                        legend(t.get("legendFormat", "")),
                    )
                )
            walk(p.get("panels", []))

    walk(doc["panels"])
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append(Query(f"variable {v['name']}", q if isinstance(q, str) else q["query"]))
    for a in doc["annotations"]["list"]:
        if "expr" in a:
            out.append(
                Query(
                    f"annotation {a['name']!r}",
                    a["expr"],
                    legend(a.get("titleFormat", ""), a.get("textFormat", "")),
                )
            )
    return out


def exported_names(exposition: str) -> dict[str, frozenset[str]]:
    """Sample name -> its label names, from a scrape (Prometheus' text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {k: frozenset(v) for k, v in out.items()}


def unknown_names(queries: list[Query], exported: dict[str, frozenset[str]]) -> list[str]:
    """Every metric and label the queries use that `exported` (metric -> its label names,
    as a scrape shows them) does not have, one line each ([] when all are there)."""
    known = {**SYNTHETIC, **exported}
    problems = []
    for q in queries:
        found = names(q.expr)
        on_any = set(TARGET_LABELS)
        for metric, labels in found.selectors:
            if not metric:
                problems.append(f"{q.where}: a selector without a metric name")
                continue
            if metric not in known:
                problems.append(f"{q.where}: metric {metric} is not exported")
                continue
            on_any |= known[metric]
            for label in sorted(labels - known[metric] - TARGET_LABELS - {"__name__"}):
                problems.append(f"{q.where}: {metric} has no label {label}")
        for label in sorted((found.grouping | q.legend) - on_any):
            problems.append(f"{q.where}: label {label} is on none of {sorted(found.metrics)}")
    return problems

"""core/shared.py: the desired state every router shares through the store (pure)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from vipctl.core import shared
from vipctl.core.partition import Layout
from vipctl.core.spec import Spec, parse_spec
from vipctl.errors import SpecError


def make_spec() -> Spec:
    return parse_spec(
        {
            "cluster": "web",
            "vips": ["198.51.100.253"],
            "uplink": "up0",
            "partition": {"bits": 4},
            "members": [
                {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
                for i in (1, 2, 3)
            ],
            "store": {"etcd": ["http://192.0.2.10:2379", "https://[2001:db8::1]:2379"]},
        }
    )


SPEC_W = (("web1", Fraction(1)), ("web2", Fraction(1)), ("web3", Fraction(1)))
REB_W = (("web1", Fraction(3)), ("web2", Fraction(1)), ("web3", Fraction(1)))


def doc() -> shared.Shared:
    layout = Layout.initial(4, SPEC_W).reweight(REB_W)
    return shared.Shared(3, "rebalance", SPEC_W, layout)


def test_round_trip_and_the_layout_each_router_derives() -> None:
    d = doc()
    got = shared.parse(d.to_text(), "etcd", make_spec())
    assert got == d
    assert got.intent().generation == 3 and got.intent().weights == REB_W
    assert got.holds(SPEC_W) and not got.holds(REB_W)
    failed = got.layout_for({"web2"})
    # the table follows from the shared base and this router's health only
    assert failed == Layout.of(4, REB_W, d.layout.base, {"web2"})
    assert all(a == b for a, b in zip(d.layout.table, failed.table, strict=True) if a != "web2")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda x: x.update(version=True), "version:"),
        (lambda x: x.update(generation=0), "generation:"),
        (lambda x: x.update(source="magic"), "source:"),
        (lambda x: x["layout"].update(down=["web1"]), "layout.table"),
        (lambda x: x["layout"].update(base=[[0, 16]], table=[[0, 16]]), "owns"),
        (lambda x: x.update(spec_weights=[["web1", 1]]), "spec_weights:"),
        (lambda x: x.pop("layout"), "layout: missing"),
    ],
)
def test_a_document_that_does_not_fit_is_refused(edit: object, message: str) -> None:
    data = json.loads(doc().to_text())
    edit(data)  # type: ignore[operator]
    with pytest.raises(SpecError) as err:
        shared.parse(json.dumps(data), "etcd", make_spec())
    assert any(message in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    "store",
    [
        {"etcd": []},
        {"etcd": ["ftp://192.0.2.10"]},
        {"etcd": ["http://192.0.2.10:2379"], "prefix": "relative"},
        {"etcd": ["http://192.0.2.10:2379"], "cert": "/etc/c.pem"},
        {"etcd": ["http://192.0.2.10:2379"], "timeout_ms": 10},
        {"etcd": ["http://192.0.2.10:2379"], "extra": 1},
    ],
)
def test_bad_store_sections_are_refused(store: dict[str, object]) -> None:
    data = make_spec().model_dump(mode="json")
    data["store"] = store
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert all(p.startswith("store") for p in err.value.problems), err.value.problems

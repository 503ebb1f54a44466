"""Several clusters on one router: independent tables; a change to one never touches another."""

from __future__ import annotations

import json
from pathlib import Path

from tests.kernel.helpers import sh, vipctl, write_spec
from vipctl.lab import traffic
from vipctl.lab.topology import Lab


def test_rebalance_of_one_cluster_leaves_the_other_intact(topo: Lab, tmp_path: Path) -> None:
    ns = topo.router_ns
    state = str(tmp_path / "state")
    web = topo.spec("web", mode="broadcast", key="mask", vips=[topo.vip4])
    api = topo.spec("api", mode="steer", key="hash", vips=[topo.vip6])
    # pinning always: flows that sent once, long before the change, keep their member
    web["pinning"] = api["pinning"] = {"mode": "always"}
    for m, member in zip(api["members"], topo.members, strict=True):
        m["address"] = member.address6  # an IPv6-only cluster resolves members over ND
    web_path = write_spec(tmp_path / "web.json", web)
    api_path = write_spec(tmp_path / "api.json", api)
    try:
        vipctl(ns, "apply", str(web_path), "--state-dir", state, check=True)
        vipctl(ns, "apply", str(api_path), "--state-dir", state, check=True)
        v4 = traffic.expand(topo.sources4, 1024)
        v6 = traffic.expand(topo.sources6, 512)
        # UDP flows to both clusters (fixed source port: pinned)
        first4 = traffic.probe(topo, topo.vip4, v4, sport=44000)
        first6 = traffic.probe(topo, topo.vip6, v6, sport=44000)
        assert all(len(v) == 1 for v in [*first4.values(), *first6.values()])
        api_table = sh(ns, "nft list map netdev vipctl_api buckets6_h8_5eed")
        status = json.loads(vipctl(ns, "status", "--json", "--state-dir", state, check=True).stdout)
        by_name = {c["cluster"]: c for c in status["clusters"]}
        assert set(by_name) == {"web", "api"}
        api_before = by_name["api"]

        vipctl(
            ns, "rebalance", str(web_path), "--weights", "web1=5", "--state-dir", state, check=True
        )

        # the other cluster's table, generation and pins are untouched ...
        assert sh(ns, "nft list map netdev vipctl_api buckets6_h8_5eed") == api_table
        api_after = json.loads(
            vipctl(ns, "status", "api", "--json", "--state-dir", state, check=True).stdout
        )
        assert api_after["generation"] == api_before["generation"]
        assert [m["pinned"] for m in api_after["members"]] == [
            m["pinned"] for m in api_before["members"]
        ]
        # ... its flows still reach the same members, and its counters kept counting
        assert traffic.probe(topo, topo.vip6, v6, sport=44000) == first6
        api_last = json.loads(
            vipctl(ns, "status", "api", "--json", "--state-dir", state, check=True).stdout
        )
        assert sum(m["packets"] for m in api_last["members"]) == 2 * len(v6)
        # the rebalanced cluster moved buckets but its pinned flows stayed
        assert traffic.probe(topo, topo.vip4, v4, sport=44000) == first4
        web_after = json.loads(
            vipctl(ns, "status", "web", "--json", "--state-dir", state, check=True).stdout
        )
        assert web_after["generation"] == 2
        # down of one cluster leaves the other serving
        vipctl(ns, "down", "web", "--state-dir", state, check=True)
        assert "vipctl_web" not in sh(ns, "nft list tables")
        assert traffic.probe(topo, topo.vip6, v6, sport=44000) == first6
    finally:
        vipctl(ns, "down", "web", "--state-dir", state)
        vipctl(ns, "down", "api", "--state-dir", state)

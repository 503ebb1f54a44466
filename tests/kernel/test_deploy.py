"""Deployment: `vipctl doctor` names each broken condition with its fix, the uplink answers
ARP/ND for the VIPs only when announce_vips is on, members never answer for the VIP, and
`vipctl member` applies and removes the member-side setup."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import vipctl, write_spec
from vipctl.lab import topology as labmod
from vipctl.lab import traffic
from vipctl.lab.topology import Lab

LabFactory = Callable[..., Lab]
CLI = (sys.executable, "-m", "vipctl.cli")


def doctor(
    lb: Lab, spec: dict[str, Any], name: str = "spec.json"
) -> tuple[int, list[dict[str, str]]]:
    path = write_spec(lb.workdir / name, spec)
    proc = vipctl(lb.router_ns, "doctor", str(path), "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)["checks"]


def problem(checks: list[dict[str, str]], name: str) -> dict[str, str]:
    """The non-ok finding of check `name`; fails listing every problem if there is none."""
    for c in checks:
        if c["check"] == name and c["status"] != "ok":
            return c
    bad = [(c["check"], c["status"], c["message"]) for c in checks if c["status"] != "ok"]
    raise AssertionError(f"doctor did not flag {name}; problems: {bad}")


def r(lb: Lab, *argv: str) -> None:
    labmod.run_in(lb.router_ns, list(argv))


# --------------------------------------------------------------------------- doctor


def test_doctor_names_each_broken_condition_with_its_fix(lab: LabFactory) -> None:
    lb = lab(2, echo=False)
    spec = lb.spec("dep", mode="broadcast")
    rc, checks = doctor(lb, spec)
    assert rc == 0, [c for c in checks if c["status"] != "ok"]
    names = {c["check"] for c in checks}
    assert {
        "kernel",
        "link:up0",
        "link:m1",
        "neighbour:web1",
        "forwarding:ipv4",
        "forwarding:ipv6",
        "rp_filter:m1",
        "mtu:m2",
        f"vip:{lb.vip4}",
        f"vip:{lb.vip6}",
        "announce",
    } <= names

    # port administratively down
    r(lb, "ip", "link", "set", "m2", "down")
    rc, checks = doctor(lb, spec)
    assert rc == 1
    assert problem(checks, "link:m2")["fix"] == "ip link set dev m2 up"
    r(lb, "ip", "link", "set", "m2", "up")

    # port up but the member's side is down: no carrier
    labmod.run_in(lb.member(1).ns, ["ip", "link", "set", "eth0", "down"])
    rc, checks = doctor(lb, spec)
    assert rc == 1 and "no carrier" in problem(checks, "link:m1")["message"]
    labmod.run_in(lb.member(1).ns, ["ip", "link", "set", "eth0", "up"])
    labmod.run_in(
        lb.member(1).ns, ["ip", "route", "replace", "default", "via", lb.member(1).gateway]
    )

    # a port that does not exist
    broken = json.loads(json.dumps(spec))
    broken["members"][1]["port"] = "m9"
    rc, checks = doctor(lb, broken, "m9.json")
    c = problem(checks, "link:m9")
    assert rc == 1 and "does not exist" in c["message"] and "members[1].port" in c["fix"]

    # member address gone: its MAC cannot be resolved
    m2 = lb.member(2)
    labmod.run_in(m2.ns, ["ip", "addr", "del", f"{m2.address}/29", "dev", "eth0"])
    r(lb, "ip", "neigh", "flush", "dev", "m2")
    rc, checks = doctor(lb, spec)
    c = problem(checks, "neighbour:web2")
    assert rc == 1 and "does not answer" in c["message"] and "members[1].mac" in c["fix"]
    labmod.run_in(m2.ns, ["ip", "addr", "add", f"{m2.address}/29", "dev", "eth0"])
    labmod.run_in(m2.ns, ["ip", "route", "replace", "default", "via", m2.gateway])

    # forwarding off (v4 on one port, v6 globally)
    labmod.set_sysctls(
        lb.router_ns, {"net.ipv4.conf.m1.forwarding": 0, "net.ipv6.conf.all.forwarding": 0}
    )
    rc, checks = doctor(lb, spec)
    assert rc == 1
    assert problem(checks, "forwarding:ipv4")["fix"].startswith(
        "sysctl -w net.ipv4.conf.m1.forwarding=1"
    )
    assert "net.ipv6.conf.all.forwarding=1" in problem(checks, "forwarding:ipv6")["fix"]
    labmod.set_sysctls(
        lb.router_ns, {"net.ipv4.conf.m1.forwarding": 1, "net.ipv6.conf.all.forwarding": 1}
    )

    # strict reverse-path filter on a member port drops replies sourced from the VIP
    labmod.set_sysctls(lb.router_ns, {"net.ipv4.conf.m1.rp_filter": 1})
    rc, checks = doctor(lb, spec)
    c = problem(checks, "rp_filter:m1")
    assert rc == 1 and "rp_filter=1" in c["message"]
    assert c["fix"].startswith("sysctl -w net.ipv4.conf.m1.rp_filter=0")
    labmod.set_sysctls(lb.router_ns, {"net.ipv4.conf.m1.rp_filter": 0})

    # MTU mismatch
    r(lb, "ip", "link", "set", "m2", "mtu", "1400")
    rc, checks = doctor(lb, spec)
    assert rc == 1
    assert problem(checks, "mtu:m2")["fix"].startswith("ip link set dev m2 mtu 1500")
    r(lb, "ip", "link", "set", "m2", "mtu", "1500")

    # something on the router claims the VIPs: a local address, a local route
    r(lb, "ip", "addr", "add", f"{lb.vip4}/32", "dev", "lo")
    r(lb, "ip", "route", "add", "local", "2001:db8:f::/64", "dev", "lo", "table", "local")
    rc, checks = doctor(lb, spec)
    assert rc == 1
    assert problem(checks, f"vip:{lb.vip4}")["fix"] == f"ip addr del {lb.vip4}/32 dev lo"
    assert problem(checks, f"vip:{lb.vip6}")["fix"].startswith(
        "ip -6 route del local 2001:db8:f::/64 dev lo table local"
    )
    r(lb, "ip", "addr", "del", f"{lb.vip4}/32", "dev", "lo")
    r(lb, "ip", "-6", "route", "del", "local", "2001:db8:f::/64", "dev", "lo", "table", "local")

    # a proxy entry left behind while announce_vips is off
    r(lb, "ip", "neigh", "add", "proxy", lb.vip4, "dev", "up0")
    rc, checks = doctor(lb, spec)
    c = problem(checks, "announce")
    assert rc == 0 and c["status"] == "warning" and f"neigh del proxy {lb.vip4}" in c["fix"]
    r(lb, "ip", "neigh", "del", "proxy", lb.vip4, "dev", "up0")

    rc, checks = doctor(lb, spec)
    assert rc == 0, [c for c in checks if c["status"] != "ok"]


def test_doctor_kernel_check_names_missing_features(lab: LabFactory) -> None:
    """Kernel features cannot be removed in a namespace; two real refusals instead: the tc
    backend (this kernel has no cls_flower/act_gact/act_pedit) and a probe the kernel
    rejects through the same check-mode path."""
    lb = lab(1, echo=False)
    spec = lb.spec("dep") | {"backend": "tc"}
    rc, checks = doctor(lb, spec)
    c = next(c for c in checks if c["check"] == "kernel")
    if c["status"] == "ok":
        pytest.skip("this kernel has tc flower")
    assert rc == 1 and "CONFIG_NET_CLS_FLOWER" in c["fix"] and "backend: nftables" in c["fix"]

    code = (
        "from vipctl.backends.nft import check\n"
        "from vipctl.host.doctor import LiveHost, probe_batch\n"
        "h = LiveHost(check_batch=check)\n"
        "print(h.nft_check(probe_batch('dup')))\n"
        "print(h.nft_check(probe_batch('fwd').replace('fwd to \"lo\"', 'fwd to \"nope0\"')))\n"
    )
    import sys

    out = labmod.run_in(lb.router_ns, [sys.executable, "-c", code]).stdout.splitlines()
    assert out[0] == "None"
    assert "Interface does not exist" in out[1] or "No such" in out[1], out
    assert labmod.run_in(lb.router_ns, ["nft", "list", "tables"]).stdout.strip() == ""


def german_locale(lb: Lab) -> dict[str, str]:
    """LANG/LC_ALL=de_DE.UTF-8, compiled into the lab's workdir (LOCPATH) when the system
    has no such locale; the variables alone when localedef cannot build it (then the
    test still proves the check reads no text)."""
    env = {"LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8", "LANGUAGE": "de"}
    if shutil.which("localedef") is None:
        return env
    loc = lb.workdir / "locale"
    loc.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["localedef", "-i", "de_DE", "-f", "UTF-8", str(loc / "de_DE.UTF-8")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if (loc / "de_DE.UTF-8").is_dir():  # built (localedef warns, or fails on no sources)
        env["LOCPATH"] = str(loc)
    return env


def test_doctor_rp_filter_judged_by_errno_under_a_german_locale(lab: LabFactory) -> None:
    """A strict rp_filter on a member port is an error whatever language the box speaks:
    LiveHost.reverse_path judges `route get` by its errno, not by its text."""
    lb = lab(1, echo=False)
    spec = lb.spec("dep")
    path = write_spec(lb.workdir / "de.json", spec)
    env = os.environ | german_locale(lb)
    code = (
        "import errno, json, locale, os, sys\n"
        "locale.setlocale(locale.LC_ALL, '')\n"
        "from vipctl.host.doctor import LiveHost\n"
        f"got = LiveHost().reverse_path({lb.vip4!r}, 'm1', 'up0')\n"
        "print(json.dumps({'got': got, 'einval': os.strerror(errno.EINVAL)}))\n"
    )

    def reverse_path() -> dict[str, str | None]:
        proc = subprocess.run(
            ["ip", "netns", "exec", lb.router_ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        out: dict[str, str | None] = json.loads(proc.stdout)
        return out

    assert reverse_path()["got"] is None  # rp_filter 0: replies from the VIP pass
    labmod.set_sysctls(lb.router_ns, {"net.ipv4.conf.m1.rp_filter": 1})
    found = reverse_path()
    if "LOCPATH" in env:  # the locale took effect: the error text is German
        assert found["einval"] != "Invalid argument", found
    got = found["got"]
    assert got is not None and ("(EINVAL)" in got or "(EXDEV)" in got), found

    proc = subprocess.run(
        ["ip", "netns", "exec", lb.router_ns, *CLI, "doctor", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    c = problem(json.loads(proc.stdout)["checks"], "rp_filter:m1")
    assert proc.returncode == 1 and c["status"] == "error" and "rp_filter=1" in c["message"]


# --------------------------------------------------------------------------- announce


@contextmanager
def capture_nd(lb: Lab) -> Iterator[dict[str, Path]]:
    """tcpdump ARP and ND on every member's eth0 for the duration of the block."""
    files: dict[str, Path] = {}
    procs: list[subprocess.Popen[str]] = []
    for m in lb.members:
        files[m.name] = lb.workdir / f"nd-{m.name}.txt"
        out = files[m.name].open("w")
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    m.ns,
                    "tcpdump",
                    "-i",
                    "eth0",
                    "-n",
                    "-l",
                    "-e",
                    "--immediate-mode",
                    "arp or (icmp6 and (ip6[40] == 135 or ip6[40] == 136))",
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        out.close()
    for p in procs:  # wait until each capture runs
        assert p.stderr is not None
        p.stderr.readline()
    try:
        yield files
    finally:
        time.sleep(0.2)
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=10)


def set_onlink_client(lb: Lab) -> None:
    """The client loses its route via the router: the VIPs are on its own segment."""
    c = lb.client_ns
    labmod.run_in(c, ["ip", "route", "del", "default"])
    labmod.run_in(c, ["ip", "-6", "route", "del", "::/0"])
    labmod.run_in(c, ["ip", "route", "add", f"{lb.vip4}/32", "dev", "eth0"])
    labmod.run_in(c, ["ip", "-6", "route", "add", f"{lb.vip6}/128", "dev", "eth0"])


def sync_announce(lb: Lab, spec_path: Path, enabled: bool) -> None:
    import sys

    code = (
        "import sys\nfrom vipctl.host import announce\nfrom vipctl.core.spec import load_spec\n"
        f"print(announce.sync(load_spec(sys.argv[1]), {enabled}))\n"
    )
    labmod.run_in(lb.router_ns, [sys.executable, "-c", code, str(spec_path)])


def test_on_link_client_reaches_vips_only_when_announced(lab: LabFactory) -> None:
    lb = lab(2)
    state = str(lb.workdir / "state")
    spec = lb.spec("dep", mode="steer")
    off_path = write_spec(lb.workdir / "off.json", spec)
    on_path = write_spec(lb.workdir / "on.json", spec | {"announce_vips": True})
    vipctl(lb.router_ns, "apply", str(off_path), "--state-dir", state, check=True)
    sync_announce(lb, off_path, False)  # what apply does once the hook is in
    set_onlink_client(lb)
    src4 = traffic.expand(lb.sources4, 32)
    src6 = traffic.expand(lb.sources6, 32)

    with capture_nd(lb) as captures:
        # off: the client's ARP/NS for the VIPs go unanswered, nothing arrives
        assert traffic.summarize(traffic.probe(lb, lb.vip4, src4)) == {"<none>": len(src4)}
        assert traffic.summarize(traffic.probe(lb, lb.vip6, src6)) == {"<none>": len(src6)}

        # on: the uplink answers, every source reaches exactly its owner
        vipctl(lb.router_ns, "apply", str(on_path), "--state-dir", state, check=True)
        sync_announce(lb, on_path, True)
        sync_announce(lb, on_path, True)  # idempotent
        labmod.run_in(lb.client_ns, ["ip", "neigh", "flush", "all"])
        for vip, sources in ((lb.vip4, src4), (lb.vip6, src6)):
            got = traffic.probe(lb, vip, sources)
            # exactly one reply per source, from a member (ownership is test_dataplane's)
            assert all(len(g) == 1 for g in got.values()), got
            assert set(traffic.summarize(got)) <= set(lb.member_names)
        neigh = {n["dst"]: n for n in labmod.ip_json(lb.client_ns, ["neigh", "show"])}
        for vip in lb.vips:
            assert neigh[vip]["lladdr"] == lb.uplink_mac
        proxies = labmod.ip_json(lb.router_ns, ["neigh", "show", "proxy"])
        assert {(p["dst"], p["dev"]) for p in proxies} == {(v, "up0") for v in lb.vips}

        # the router asks for the VIPs on every member link: members stay silent
        for m in lb.members:
            labmod.run_in(
                lb.router_ns, ["ping", "-c1", "-W0.3", "-I", m.port, lb.vip4], check=False
            )
            r(lb, "ip", "-6", "route", "replace", f"{lb.vip6}/128", "dev", m.port, "metric", "1")
            labmod.run_in(
                lb.router_ns, ["ping", "-6", "-c1", "-W0.3", "-I", m.port, lb.vip6], check=False
            )
            r(lb, "ip", "-6", "route", "del", f"{lb.vip6}/128", "dev", m.port, "metric", "1")

        # off again: removed, and the client is cut off once its cache is gone
        sync_announce(lb, off_path, False)
        assert labmod.ip_json(lb.router_ns, ["neigh", "show", "proxy"]) == []
        labmod.run_in(lb.client_ns, ["ip", "neigh", "flush", "all"])
        assert traffic.summarize(traffic.probe(lb, lb.vip4, src4[:8])) == {"<none>": 8}

    for m in lb.members:
        text = captures[m.name].read_text()
        assert f"who-has {lb.vip4}" in text, f"no ARP request for the VIP seen on {m.name}"
        assert f"who has {lb.vip6}" in text, f"no NS for the VIP seen on {m.name}"
        for line in text.splitlines():
            assert not ("Reply" in line and f"{lb.vip4} is-at" in line), line
            assert not ("advertisement" in line and f"tgt is {lb.vip6}" in line), line


def iproute2_naming_211(lb: Lab) -> Path:
    """A copy of /etc/iproute2 whose rt_protos names protocol 211 (`211 vipctl`), for
    `in_named_protos` to bind-mount over /etc/iproute2 in a private mount namespace."""
    etc = lb.workdir / "etc-iproute2"
    if Path("/etc/iproute2").is_dir():
        shutil.copytree("/etc/iproute2", etc, symlinks=True)
    else:  # iproute2 reads /usr/share/iproute2 then; /etc/iproute2 must exist to mount on
        pytest.skip("no /etc/iproute2 to mount over")
    with (etc / "rt_protos").open("a") as f:
        f.write("211\tvipctl\n")
    return etc


def in_named_protos(etc: Path, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`ARGV` in namespace `ns`, in a private mount namespace (unshare -m) where `etc`
    is bind-mounted over /etc/iproute2; the real /etc/iproute2 is never touched."""
    script = f'mount --bind {shlex.quote(str(etc))} /etc/iproute2 && exec ip netns exec "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", ns, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr}"
    return proc


def test_down_removes_vipctls_entries_when_rt_protos_names_211(lab: LabFactory) -> None:
    """With /etc/iproute2/rt_protos naming 211, `ip` prints vipctl's protocol as a name;
    vipctl still recognises its proxy entries and VIP route (apply is idempotent) and
    `vipctl down` removes them all."""
    lb = lab(2, echo=False)
    etc = iproute2_naming_211(lb)
    state = str(lb.workdir / "state")
    on = write_spec(lb.workdir / "on.json", lb.spec("dep") | {"announce_vips": True})
    in_named_protos(etc, lb.router_ns, *CLI, "apply", str(on), "--state-dir", state)

    # the mount namespace works: `ip` there names vipctl's protocol
    shown = in_named_protos(etc, lb.router_ns, "ip", "neigh", "show", "proxy").stdout
    assert f"{lb.vip4} dev up0 proxy proto vipctl" in shown, shown
    assert "proto 211" not in shown
    outside = labmod.ip_json(lb.router_ns, ["neigh", "show", "proxy"])
    assert {(p["dst"], str(p.get("protocol"))) for p in outside} == {(v, "211") for v in lb.vips}
    assert [r["dst"] for r in labmod.ip_json(lb.router_ns, ["route", "show", "proto", "211"])] == [
        lb.vip4
    ]

    sync = (
        "import sys\nfrom vipctl.host import announce\nfrom vipctl.core.spec import load_spec\n"
        "print(announce.sync(load_spec(sys.argv[1]), True))\n"
    )
    again = in_named_protos(etc, lb.router_ns, sys.executable, "-c", sync, str(on))
    assert again.stdout.strip() == "[]", again.stdout  # its own entries, recognised

    down = in_named_protos(etc, lb.router_ns, *CLI, "down", "dep", "--state-dir", state)
    assert "dep: removed" in down.stdout
    assert labmod.ip_json(lb.router_ns, ["neigh", "show", "proxy"]) == []
    for family in ("-4", "-6"):
        routes = labmod.ip_json(lb.router_ns, [family, "route", "show", "table", "all"])
        assert [r for r in routes if str(r.get("protocol")) == "211"] == []


# --------------------------------------------------------------------------- member


def test_member_apply_is_idempotent_and_remove_restores(lab: LabFactory) -> None:
    lb = lab(1, echo=False)
    m = lb.member(1)
    spec = lb.spec("other", vips=["192.0.2.77", "2001:db8:77::1"])
    path = write_spec(lb.workdir / "member.json", spec)
    state = str(lb.workdir / "mstate")
    labmod.set_sysctls(m.ns, {"net.ipv4.conf.eth0.rp_filter": 1})
    first = vipctl(m.ns, "member", str(path), m.name, "--apply", "--state-dir", state, check=True)
    assert "192.0.2.77/32" in first.stdout and "rp_filter=2 (was 1)" in first.stdout
    again = vipctl(m.ns, "member", str(path), m.name, "--apply", "--state-dir", state, check=True)
    assert "nothing to change" in again.stdout
    addrs = {
        a["local"]
        for link in labmod.ip_json(m.ns, ["addr", "show", "dev", "lo"])
        for a in link["addr_info"]
    }
    assert {"192.0.2.77", "2001:db8:77::1", lb.vip4, lb.vip6} <= addrs
    v6 = [
        a
        for link in labmod.ip_json(m.ns, ["addr", "show", "dev", "lo"])
        for a in link["addr_info"]
        if a["local"] == "2001:db8:77::1"
    ]
    assert [(a["prefixlen"], a.get("nodad")) for a in v6] == [(128, True)]  # no DAD on lo
    assert labmod.get_sysctl(m.ns, "net.ipv4.conf.eth0.rp_filter") == "2"

    vipctl(m.ns, "member", str(path), m.name, "--remove", "--state-dir", state, check=True)
    addrs = {
        a["local"]
        for link in labmod.ip_json(m.ns, ["addr", "show", "dev", "lo"])
        for a in link["addr_info"]
    }
    assert "192.0.2.77" not in addrs and "2001:db8:77::1" not in addrs
    assert {lb.vip4, lb.vip6} <= addrs  # the lab's own cluster is untouched
    assert labmod.get_sysctl(m.ns, "net.ipv4.conf.eth0.rp_filter") == "1"
    assert labmod.get_sysctl(m.ns, "net.ipv4.conf.eth0.arp_ignore") == "1"  # was already

    missing = vipctl(m.ns, "member", str(path), "web7", "--apply", "--state-dir", state)
    assert missing.returncode == 2 and "no member 'web7'" in missing.stderr

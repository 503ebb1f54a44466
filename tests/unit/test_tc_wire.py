"""The tc encoder on host/netlink.py against what the pyroute2-based encoder produced
(tests/unit/fixtures/tc-wire.json, captured from it before it was removed, by
tests/unit/fixtures/capture_tc_wire.py in the history at commit 4ac6e43): every
RTM_NEWTFILTER byte for byte, every other tc request, and real kernel replies (a u32 +
mirred dump, a qdisc dump, the extended ACK of a refused action) decoded to the same
descriptions, through netlink.py's receive loop."""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_netlink import FakeKernel
from vipctl.backends import tcnl
from vipctl.host import netlink as nl
from vipctl.render.tc import Action, Gact, Match, Mirred, SetEthDst, TcFilter

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "tc-wire.json").read_text())


def described(d: dict[str, Any]) -> TcFilter:
    def action(a: dict[str, Any]) -> Action:
        if "mirred" in a:
            port, ifindex, redirect = a["mirred"]
            return Mirred(port, ifindex, redirect)
        if "set_eth_dst" in a:
            return SetEthDst(a["set_eth_dst"])
        verdict, chain, cookie = a["gact"]
        return Gact(verdict, chain, bytes.fromhex(cookie))

    eth_type, src, dst, eth_dst = d["match"]
    return TcFilter(
        dev=d["dev"],
        hook=d["hook"],
        chain=d["chain"],
        prio=d["prio"],
        match=Match(eth_type, src and tuple(src), dst and tuple(dst), eth_dst),
        actions=tuple(action(a) for a in d["actions"]),
    )


def test_corpus_is_large_and_varied() -> None:
    """The corpus exercises every kind of key and action, both classifiers, flags and
    handles (so the byte-for-byte test below says something)."""
    cases = CORPUS["filters"]
    assert len(cases) >= 300
    text = json.dumps(cases)
    for needle in ("set_eth_dst", '"mirred"', '"goto"', '"ok"', '"drop"', "34525", "2048"):
        assert needle in text
    assert {c["classifier"] for c in cases} == {"flower", "u32"}
    assert {c["flags"] for c in cases} == {0, tcnl.SKIP_HW, tcnl.SKIP_SW}
    assert len({c["handle"] for c in cases}) > 3


def test_every_filter_is_byte_identical_to_the_pyroute2_encoding() -> None:
    different = []
    for n, case in enumerate(CORPUS["filters"]):
        f = described(case["filter"])
        got = tcnl.filter_bytes(
            f, case["ifindex"], case["classifier"], case["flags"], case["handle"]
        )
        if got.hex() != case["hex"]:
            different.append(n)
    assert different == []


def test_golden_dumps_decode_the_corpus_the_same_way_round() -> None:
    """decode(encode(f)) == f for every corpus filter (the goldens show four rulesets)."""
    for case in CORPUS["filters"]:
        f = described(case["filter"])
        live = tcnl.decode_filter(tcnl.decode_message(bytes.fromhex(case["hex"])), {})
        assert live is not None
        assert (live.chain, live.prio, live.hook, live.match, live.flags) == (
            f.chain, f.prio, f.hook, f.match, case["flags"],
        )  # fmt: skip
        # mirred ports come back by ifindex (no names given here)
        assert live.actions == tuple(
            Mirred(f"if{a.ifindex}", a.ifindex, a.redirect) if isinstance(a, Mirred) else a
            for a in f.actions
        )


def replay(replies: list[str]) -> FakeKernel:
    """A kernel that answers every request with the recorded messages (their sequence
    numbers set to the request's), in one datagram."""

    def answer(_t: int, _f: int, seq: int, _p: bytes) -> list[list[bytes]]:
        out = []
        for text in replies:
            msg = bytearray.fromhex(text)
            struct.pack_into("=I", msg, 8, seq)
            out.append(bytes(msg))
        return [out]

    return FakeKernel(answer)


def ack(_t: int, _f: int, seq: int, payload: bytes) -> list[list[bytes]]:
    return [[nl.encode(nl.NLMSG_ERROR, nl.NLM_F_CAPPED, seq, struct.pack("=i", 0) + bytes(16))]]


def test_requests_are_the_pyroute2_encoding() -> None:
    kernel = FakeKernel(ack)
    sock = nl.NetlinkSocket(sock=kernel)
    for hook in ("ingress", "egress"):
        tcnl.filters(sock, 7, hook)
        tcnl.filters(sock, 7, hook, 0x76631)
        tcnl.del_filter(sock, 9, hook, 0, 0x7664, 0x0003)
        tcnl.del_chain(sock, 9, hook, 0x76632)
    tcnl.qdiscs(sock, 3)
    tcnl.add_clsact(sock, 5)
    tcnl.del_clsact(sock, 5)
    want = [bytes.fromhex(r["hex"]) for r in CORPUS["requests"]]
    got = [nl.encode(t, f, 41, p) for t, f, _seq, p in kernel.sent]
    assert [r["what"] for r in CORPUS["requests"]][:4] == [
        "filters ingress", "filters ingress chain", "del_filter ingress", "del_chain ingress",
    ]  # fmt: skip
    assert got == want


KERNEL = CORPUS["kernel"]
NAMES = {index: name for name, index in KERNEL["ifindex"].items()}


@pytest.mark.parametrize("dump", KERNEL["filter_dumps"], ids=lambda d: f"{d['hook']}-{d['chain']}")
def test_kernel_filter_dumps_decode_as_before(dump: dict[str, Any]) -> None:
    """Real u32 + mirred replies (with the kernel's own statistics, action indexes and
    hash-table nodes) through NetlinkSocket's receive loop and tcnl.filters."""
    sock = nl.NetlinkSocket(sock=replay(dump["replies"]))
    msgs = tcnl.filters(sock, KERNEL["ifindex"]["capa0"], dump["hook"], dump["chain"])
    assert [repr(tcnl.decode_filter(m, NAMES)) for m in msgs] == dump["decoded"]
    assert sum(1 for d in dump["decoded"] if d != "None") >= 1


def test_kernel_qdisc_dump_finds_the_clsact() -> None:
    qd = KERNEL["qdisc_dump"]
    sock = nl.NetlinkSocket(sock=replay(qd["replies"]))
    assert [m.get_attr("TCA_KIND") for m in tcnl.qdiscs(sock, KERNEL["ifindex"]["capa0"])] == qd[
        "kinds"
    ]
    sock = nl.NetlinkSocket(sock=replay(qd["replies"]))
    assert tcnl.has_clsact(sock, KERNEL["ifindex"]["capa0"]) is qd["clsact"] is True


def test_kernel_refusal_carries_errno_reason_and_request() -> None:
    refusal = KERNEL["refusal"]
    sock = nl.NetlinkSocket(sock=replay([refusal["reply"]]))
    f = TcFilter("capa0", "ingress", 0, 7, Match(), (Gact("drop"),))
    payload = tcnl.filter_payload(f, 3, classifier="u32")
    with pytest.raises(nl.NetlinkError) as err:
        tcnl.add_filter(sock, payload, what="add u32 filter capa0")
    assert (err.value.code, err.value.message) == (refusal["code"], refusal["message"])
    assert err.value.code == errno.ENOENT
    assert str(err.value) == (
        "add u32 filter capa0: Failed to load TC action module (errno 2, ENOENT)"
    )


def test_filters_of_a_device_without_clsact_are_none() -> None:
    def refuse(_t: int, _f: int, seq: int, _p: bytes) -> list[list[bytes]]:
        return [[nl.encode(nl.NLMSG_ERROR, 0, seq, struct.pack("=i", -errno.EINVAL) + bytes(16))]]

    assert tcnl.filters(nl.NetlinkSocket(sock=FakeKernel(refuse)), 4, "egress") == []


def test_an_interrupted_filter_dump_is_redone() -> None:
    """NLM_F_DUMP_INTR (the filters changed during the dump): netlink.py's loop redoes it."""
    dump = KERNEL["filter_dumps"][0]
    calls = []

    def answer(t: int, f: int, seq: int, p: bytes) -> list[list[bytes]]:
        calls.append(seq)
        out = replay(dump["replies"]).answer(t, f, seq, p)[0]
        if len(calls) == 1:  # the first attempt is flagged inconsistent
            out = [bytearray(m) for m in out]
            for m in out:
                struct.pack_into("=H", m, 6, struct.unpack_from("=H", m, 6)[0] | nl.NLM_F_DUMP_INTR)
            out = [bytes(m) for m in out]
        return [out]

    sock = nl.NetlinkSocket(sock=FakeKernel(answer))
    msgs = tcnl.filters(sock, KERNEL["ifindex"]["capa0"], "ingress", 0x76631)
    assert len(calls) == 2
    assert [repr(tcnl.decode_filter(m, NAMES)) for m in msgs] == dump["decoded"]


def test_a_zero_length_or_truncated_reply_is_an_error_not_a_hang() -> None:
    def zero(_t: int, _f: int, seq: int, _p: bytes) -> list[list[bytes]]:
        return [[struct.pack("=IHHII", 0, nl.RTM_NEWTFILTER, nl.NLM_F_MULTI, seq, 0)]]

    with pytest.raises(nl.NetlinkDecodeError):
        tcnl.filters(nl.NetlinkSocket(sock=FakeKernel(zero)), 3, "ingress")
    whole = bytes.fromhex(KERNEL["filter_dumps"][0]["replies"][2])

    def cut(_t: int, _f: int, seq: int, _p: bytes) -> list[list[bytes]]:
        msg = bytearray(whole)
        struct.pack_into("=I", msg, 8, seq)
        return [[bytes(msg[:-8])]]  # the header promises 8 bytes more than arrive

    with pytest.raises(nl.NetlinkDecodeError):
        tcnl.filters(nl.NetlinkSocket(sock=FakeKernel(cut)), 3, "ingress")

"""The spec readers' shared rules (YAML and JSON alike): nesting and size limits, and the
YAML 1.2 core schema's numbers, spelled exactly."""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_DEPTH = 32  # the spec nests 4 deep; YAML/JSON parsers recurse per level
MAX_NODES = 100_000  # values after alias expansion (billion laughs: 9**9 from 1 KB)
MAX_NUMBER_CHARS = 64  # int() of 4300+ digits raises; nothing in a spec needs 64


class Refused(Exception):
    """A loader limit or rule: becomes one `spec: ...` line."""


class Bad:
    """A value the reader refused, left in its place: the spec's loader reports it with its
    field path (`members.0.weight: NaN is not a JSON number`), every one of them at once."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"Bad({self.message!r})"


def or_bad(parse: Callable[[str], object], text: str) -> object:
    """parse(text), or a Bad that says why not."""
    try:
        return parse(text)
    except Refused as exc:
        return Bad(str(exc))


CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
CORE_FLOAT = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def _number_text(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise Refused(f"a number {len(text)} characters long is too long")
    return text


def core_int(text: str) -> int:
    text = _number_text(text)
    if not CORE_INT.fullmatch(text):  # an explicit !!int tag on something else
        raise Refused(f"{text[:32]!r} is not an integer")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def core_float(text: str) -> float:
    text = _number_text(text)
    if not CORE_FLOAT.fullmatch(text):
        raise Refused(f"{text[:32]!r} is not a number")
    lowered = text.lower()
    if lowered.endswith((".inf", ".nan")):
        return float(lowered.replace(".", ""))
    value = float(text)
    if value == 0 and re.search(r"[1-9]", text.lower().split("e")[0]):
        # 1e-400 is not zero but its float is: a member would be drained without a word
        raise Refused(f"{text} is too small to be told apart from 0")
    return value

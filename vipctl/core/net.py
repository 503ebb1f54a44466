"""Address helpers every layer shares (pure): which IP family a text address is, and a MAC
address as bytes."""

from __future__ import annotations


def family(address: str) -> int:
    """4 or 6 for an address, prefix or network in text form (IPv6 has colons, IPv4 none)."""
    return 6 if ":" in address else 4


def mac_bytes(mac: str) -> bytes:
    """`02:00:00:00:01:02` -> its six bytes."""
    out = bytes.fromhex(mac.replace(":", ""))
    if len(out) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return out

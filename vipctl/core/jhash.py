"""The kernel's jhash (include/linux/jhash.h) and nft's `jhash ... mod N seed S`.

nft_jhash_eval() computes reciprocal_scale(jhash(key, len, seed), N), i.e.
(jhash * N) >> 32, over the selector's bytes as they sit in the packet (4 bytes for an
IPv4 address, 16 for IPv6). jhash reads its input as CPU-order (x86: little-endian) words.
"""

from __future__ import annotations

_M = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def jhash(key: bytes, initval: int) -> int:
    """Bob Jenkins' lookup3 as in Linux include/linux/jhash.h (byte version)."""
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _M
    k = 0
    while length > 12:
        a = (a + int.from_bytes(key[k : k + 4], "little")) & _M
        b = (b + int.from_bytes(key[k + 4 : k + 8], "little")) & _M
        c = (c + int.from_bytes(key[k + 8 : k + 12], "little")) & _M
        # __jhash_mix
        a = (a - c) & _M
        a ^= _rol(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rol(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rol(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M
        a ^= _rol(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rol(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rol(b, 4)
        b = (b + a) & _M
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = key[k : k + length] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    # __jhash_final
    c ^= b
    c = (c - _rol(b, 14)) & _M
    a ^= c
    a = (a - _rol(c, 11)) & _M
    b ^= a
    b = (b - _rol(a, 25)) & _M
    c ^= b
    c = (c - _rol(b, 16)) & _M
    a ^= c
    a = (a - _rol(c, 4)) & _M
    b ^= a
    b = (b - _rol(a, 14)) & _M
    c ^= b
    c = (c - _rol(b, 24)) & _M
    return c


def nft_jhash(key: bytes, modulus: int, seed: int) -> int:
    """What `jhash <key> mod <modulus> seed <seed>` yields in nftables (offset 0)."""
    return (jhash(key, seed) * modulus) >> 32

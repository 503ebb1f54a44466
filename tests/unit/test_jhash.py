"""vipctl/core/jhash.py against Bob Jenkins' published lookup3 test vectors.

lookup3.c (2006, public domain) prints its expected values in driver5(). Which of them apply
to the kernel's jhash(key, length, initval) (include/linux/jhash.h, the hash nft's `jhash`
expression computes):

- hashlittle(key, length, initval) starts a = b = c = 0xdeadbeef + length + initval, mixes
  12-byte blocks read as little-endian words, adds the last 1-12 bytes (none: return c
  unmixed) and returns c. The kernel's jhash() is the same function: JHASH_INITVAL is
  0xdeadbeef, the same start, the tail added byte by byte in little-endian order, the body
  read as CPU-order words (little-endian on x86, where vipctl runs and where nft computes
  the hash). So every hashlittle vector applies.
- hashlittle2(key, length, &c, &b) takes two seeds: it starts like hashlittle with
  initval = *c, then adds *b to c alone. The kernel has one seed, so only the calls with
  b = 0 apply (their c output is hashlittle(key, length, c)); the calls with b = 1 or
  b = 0xdeadbeef start from a different state, and the b outputs are internal state the
  kernel never returns. (The kernel's jhash2/jhash_3words are the word versions, with
  their own start value; they are not what nft uses on an address.)

Applicable driver5 lines: hashlittle2("", 0, c=0, b=0) -> c 0xdeadbeef;
hashlittle2("Four score and seven years ago", 30, c=0, b=0) -> c 0x17770551;
hashlittle2(..., c=1, b=0) -> c 0xcd628161; hashlittle(..., 30, 0) -> 0x17770551;
hashlittle(..., 30, 1) -> 0xcd628161.
"""

from __future__ import annotations

import pytest

from vipctl.core.jhash import jhash, nft_jhash

FOUR_SCORE = b"Four score and seven years ago"


@pytest.mark.parametrize(
    ("key", "initval", "expected"),
    [
        (b"", 0, 0xDEADBEEF),  # driver5: hashlittle2("", 0, c=0, b=0) -> c
        (FOUR_SCORE, 0, 0x17770551),  # driver5: hashlittle(FOUR_SCORE, 30, 0)
        (FOUR_SCORE, 1, 0xCD628161),  # driver5: hashlittle(FOUR_SCORE, 30, 1)
    ],
)
def test_lookup3_driver5_vectors(key: bytes, initval: int, expected: int) -> None:
    assert len(FOUR_SCORE) == 30  # two 12-byte blocks and a 6-byte tail
    assert jhash(key, initval) == expected


def test_the_two_seed_vectors_do_not_apply() -> None:
    """hashlittle2 with b=1 gives c 0xe3607cae for FOUR_SCORE: adding 1 to c alone is not
    initval 1, so jhash must NOT give it (a jhash that mixed its seed like hashlittle2's
    second one would)."""
    assert jhash(FOUR_SCORE, 1) != 0xE3607CAE


def test_nft_mod_is_the_high_bits_of_the_product() -> None:
    """nft's `jhash ... mod N` is reciprocal_scale: (hash * N) >> 32, not hash % N."""
    h = jhash(FOUR_SCORE, 0)
    assert [nft_jhash(FOUR_SCORE, n, 0) for n in (1, 2, 16, 256)] == [
        0, h >> 31, h >> 28, h >> 24,
    ]  # fmt: skip
    # 0x17770551 = 393676113: 91.66 % of the way into the first tenth of the range
    assert (nft_jhash(FOUR_SCORE, 10, 0), h % 10) == (0, 3)
    assert (nft_jhash(FOUR_SCORE, 1000, 0), h % 1000) == (91, 113)

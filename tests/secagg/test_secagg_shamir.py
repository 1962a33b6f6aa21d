"""Shamir secret sharing over GF(2^256 + 297)."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import SecureAggregationError
from biofed.secagg import seeded_random_bytes
from biofed.secagg._shamir import PRIME, combine, decode_share, split

# The first 40 primes as Miller–Rabin bases: a composite passes all of them with probability
# below 4^-40, and the test is deterministic.
_BASES = [p for p in range(2, 200) if all(p % q for q in range(2, p))][:40]


def _miller_rabin(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_prime_is_a_prime_larger_than_every_32_byte_secret() -> None:
    assert PRIME > 2**256
    assert PRIME == 2**256 + 297
    assert _miller_rabin(PRIME)
    # It is the smallest prime above 2^256: no odd number in between passes.
    assert not any(_miller_rabin(2**256 + k) for k in range(1, 297, 2))


def test_any_t_shares_rebuild_the_secret_and_fewer_do_not() -> None:
    secret = os.urandom(32)
    xs = [3, 5, 6, 9, 11]
    shares = split(secret, xs, 3, os.urandom)
    for subset in itertools.combinations(xs, 3):
        assert combine({x: shares[x] for x in subset}, 3) == secret
    assert combine(shares, 3) == secret  # more than t is fine
    with pytest.raises(SecureAggregationError, match="2 shares cannot rebuild"):
        combine({x: shares[x] for x in xs[:2]}, 3)


def test_t_minus_one_shares_do_not_pin_the_secret() -> None:
    """Two secrets whose sharings agree on t - 1 points: those shares cannot tell them apart."""
    xs = [1, 2, 3]
    a = split(bytes(32), xs, 2, seeded_random_bytes(b"a"))
    # With t = 2, f(x) = s + c x. Choose secret b = 1 and c' so that f'(1) = f(1).
    c_prime = (a[1] - 1) % PRIME
    b_share_at_1 = (1 + c_prime * 1) % PRIME
    assert b_share_at_1 == a[1]
    assert combine({1: a[1], 2: (1 + 2 * c_prime) % PRIME}, 2) == (1).to_bytes(32, "big")
    assert combine({1: a[1], 2: a[2]}, 2) == bytes(32)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_split_combine_round_trip(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = split(secret, xs, t, seeded_random_bytes(secret))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert combine({x: shares[x] for x in subset}, t) == secret


def test_the_all_ones_secret_survives() -> None:
    """A secret near 2^256 is not reduced modulo a smaller prime."""
    secret = b"\xff" * 32
    shares = split(secret, [1, 2, 3, 4], 2, os.urandom)
    assert combine({2: shares[2], 4: shares[4]}, 2) == secret


def test_a_changed_share_rebuilds_another_secret_or_is_detected() -> None:
    shares = split(bytes(32), [1, 2], 2, os.urandom)
    shares[2] = (shares[2] + 1) % PRIME
    with contextlib.suppress(SecureAggregationError):
        assert combine(shares, 2) != bytes(32)
    # Shares whose secret is no 32-byte string (here f(0) = p - 1) are refused.
    with pytest.raises(SecureAggregationError, match="inconsistent"):
        combine({1: PRIME - 1, 2: PRIME - 1}, 2)


def test_share_encoding_is_checked() -> None:
    with pytest.raises(ValueError, match="33 bytes"):
        decode_share(b"\0" * 32)
    with pytest.raises(ValueError, match="prime"):
        decode_share(PRIME.to_bytes(33, "big"))

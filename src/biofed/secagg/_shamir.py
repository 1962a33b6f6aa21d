"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Security notes
--------------
The field must be larger than the secrets: a 32-byte secret reduced modulo a smaller prime
would lose bits and, worse, could not be recovered. 2^256 + 297 is the smallest prime above
2^256 (the tests check primality), so every 32-byte string is a field element as it is.
Polynomial coefficients are drawn as 48 random bytes reduced modulo the prime: the bias of
that reduction is below 2^-127.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from biofed.core import SecureAggregationError

#: The field's prime, 2^256 + 297.
PRIME = (1 << 256) + 297
#: Bytes of one share (a field element, big-endian).
SHARE_BYTES = 33
SECRET_BYTES = 32
_COEFFICIENT_BYTES = 48


def split(
    secret: bytes, xs: Sequence[int], threshold: int, random_bytes: Callable[[int], bytes]
) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, 1 ≤ x < p); any ``threshold`` of
    them rebuild it, fewer reveal nothing about it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must lie in [1, {len(xs)}], got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in [1, p)")
    coefficients = [int.from_bytes(secret, "big")]
    pool = random_bytes(_COEFFICIENT_BYTES * (threshold - 1))
    for i in range(threshold - 1):
        chunk = pool[i * _COEFFICIENT_BYTES : (i + 1) * _COEFFICIENT_BYTES]
        coefficients.append(int.from_bytes(chunk, "big") % PRIME)
    highest_first = coefficients[::-1]
    shares: dict[int, int] = {}
    for x in xs:
        acc = 0
        for c in highest_first:  # Horner; x is small, so acc * x is cheap
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_j with Σ λ_j f(x_j) = f(0) for any polynomial f of degree < len(xs)."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares ``{x: y}``.

    Uses the ``threshold`` shares with the smallest x (so that many secrets shared among the
    same holders reuse one set of Lagrange coefficients).

    Raises
    ------
    SecureAggregationError
        With fewer than ``threshold`` shares, or if the shares do not encode a 32-byte
        secret (they were not made by :func:`split` for one secret).
    """
    if len(shares) < threshold:
        raise SecureAggregationError(
            f"{len(shares)} shares cannot rebuild a secret that needs {threshold}"
        )
    xs = tuple(sorted(shares)[:threshold])
    lambdas = _lagrange_at_zero(xs)
    secret = sum(lam * shares[x] for lam, x in zip(lambdas, xs, strict=True)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecureAggregationError("the shares are inconsistent: they rebuild no 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def encode_share(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """A share from its 33 bytes; ValueError if it is not a field element."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share must be smaller than the field's prime")
    return value

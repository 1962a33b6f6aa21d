"""Gaussian and Laplace noise: a CSPRNG by default, a seeded generator on request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.privacy._checks import check_non_negative

#: How many standard normals are summed per output value in secure mode (as Opacus does).
SECURE_SUM_TERMS = 4
# Output values per ChaCha20 keystream block request: bounds the temporaries' memory.
_CHUNK = 1 << 18
_TWO_PI = 2.0 * np.pi


def _chacha20_uint64(count: int) -> Array:
    """``count`` uint64 words of a ChaCha20 keystream under a fresh 256-bit key from the OS."""
    key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(16)
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * count))
    return np.frombuffer(stream, dtype="<u8")


def _secure_standard_normal(count: int) -> Array:
    """``count`` float64 standard normals, each the scaled sum of 4 Box–Muller normals."""
    if count == 0:
        return np.empty(0, dtype=np.float64)
    pairs = (SECURE_SUM_TERMS * count + 1) // 2
    words = _chacha20_uint64(2 * pairs)
    # 53 uniform bits -> a double in (0, 1]: never 0, so log() is finite.
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
    u1, u2 = uniform[:pairs], uniform[pairs:]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = _TWO_PI * u2
    normals = np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))
    normals = normals[: SECURE_SUM_TERMS * count].reshape(SECURE_SUM_TERMS, count)
    # A sum of k standard normals has variance k: scale by 1/sqrt(k) (= 1/2 for k = 4).
    scaled: Array = normals.sum(axis=0) / np.sqrt(SECURE_SUM_TERMS)
    return scaled


@dataclass(frozen=True, slots=True)
class GaussianNoise:
    """Adds N(0, std²) noise to every floating-point array of a ParameterSet.

    Parameters
    ----------
    std:
        The standard deviation σ of each noise value (for DP: noise multiplier × clip norm).
    rng:
        ``None`` (the default) for the cryptographically secure sampler below. A numpy
        Generator only for simulations and tests, where reproducibility matters more than
        secrecy; prefer :meth:`seeded`, which says so at the call site.

    Privacy notes
    -------------
    *Predictable noise.* Noise from a seeded or statistical PRNG (numpy's PCG64, Mersenne
    Twister) can be predicted by anyone who learns or guesses the state, and then subtracted,
    removing all protection. The default sampler draws its uniforms from a ChaCha20 keystream
    (``cryptography``) under a fresh 256-bit key and nonce from the operating system's CSPRNG
    (``secrets``) on every call, so no state outlives a call, is shared after ``fork()`` or
    is shared between threads.

    *Floating-point attack.* Mironov (2012), "On Significance of the Least Significant Bits
    for Differential Privacy", shows that textbook samplers implemented in floating point
    produce a porous set of output values, so a noisy release can reveal the exact value
    that was noised. Following Opacus's ``secure_mode`` (``_generate_noise``, after Holohan
    and Braghin 2021, "Secure Random Sampling in Differential Privacy"), each noise value is
    the sum of 4 independent Box–Muller normals (53-bit uniforms) divided by 2: the sum has
    the same N(0, σ²) law but fills the gaps an attacker would look for. This is a
    mitigation, as in Opacus, not a proof; an exact discrete Gaussian sampler (Canonne,
    Kamath and Steinke 2020) needs exact rational arithmetic per value, far too slow in
    Python for model-sized updates.

    Integer and bool arrays are refused: adding Gaussian noise cannot protect them, and
    letting them pass unchanged would release them unprotected.
    """

    std: float
    rng: np.random.Generator | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", check_non_negative(self.std, "std"))
        if self.rng is not None and not isinstance(self.rng, np.random.Generator):
            raise ConfigurationError(
                f"rng must be a numpy Generator or None (secure), got {type(self.rng).__name__}"
            )

    @classmethod
    def seeded(cls, std: float, seed: int) -> GaussianNoise:
        """Reproducible, **not secure** noise from numpy's PCG64 seeded with ``seed``.

        For simulations and tests only: anyone who knows the seed can remove the noise.
        """
        return cls(std, rng=np.random.default_rng(seed))

    @property
    def secure(self) -> bool:
        """True when the noise comes from the CSPRNG (no generator was injected)."""
        return self.rng is None

    def sample(self, shape: int | tuple[int, ...]) -> Array:
        """An array of N(0, std²) values (float64) of the given shape."""
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(dims, dtype=np.int64))
        if self.rng is not None:
            return self.rng.standard_normal(dims) * self.std
        out = np.empty(count, dtype=np.float64)
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            out[start:stop] = _secure_standard_normal(stop - start)
        out *= self.std
        return out.reshape(dims)

    def add(self, params: ParameterSet) -> ParameterSet:
        """``params`` with independent noise added to each value, dtypes kept.

        Raises
        ------
        ConfigurationError
            If ``params`` holds an integer or bool array (see Privacy notes).
        """
        for name, array in params.items():
            if not np.issubdtype(array.dtype, np.floating):
                raise ConfigurationError(
                    f"cannot add Gaussian noise to {name!r} of dtype {array.dtype}: leave "
                    "non-floating arrays out of what a site releases under DP"
                )
        return ParameterSet(
            {
                name: (array + self.sample(array.shape)).astype(array.dtype, copy=False)
                for name, array in params.items()
            }
        )


def _secure_standard_laplace(count: int) -> Array:
    """``count`` float64 Laplace(0, 1) values: each the difference of two Exp(1) values,
    ``-log(u)`` of 53-bit ChaCha20 uniforms in (0, 1]."""
    if count == 0:
        return np.empty(0, dtype=np.float64)
    words = _chacha20_uint64(2 * count)
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
    exponential = -np.log(uniform)
    out: Array = exponential[:count] - exponential[count:]
    return out


@dataclass(frozen=True, slots=True)
class LaplaceNoise:
    """Laplace(0, scale) noise: a CSPRNG by default, a seeded generator on request.

    Parameters
    ----------
    scale:
        The Laplace scale b (for ε-DP: L1 sensitivity / ε); the variance is 2b².
    rng:
        ``None`` (the default) for the ChaCha20 sampler of :class:`GaussianNoise`; a numpy
        Generator only for simulations and tests (prefer :meth:`seeded`).

    Privacy notes
    -------------
    *Predictable noise*: as :class:`GaussianNoise`, a fresh ChaCha20 key and nonce from the
    operating system per call. *Floating-point attack*: Mironov (2012) built his attack on
    the textbook floating-point Laplace sampler. Each value here is the difference of two
    exponentials drawn from 53-bit uniforms (never from a single ``log`` of a uniform times
    a sign bit), which leaves fewer gaps, and callers releasing counts should round the
    noisy value (post-processing); this is a mitigation, not the snapping mechanism that
    Mironov proves safe.
    """

    scale: float
    rng: np.random.Generator | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_non_negative(self.scale, "scale"))
        if self.rng is not None and not isinstance(self.rng, np.random.Generator):
            raise ConfigurationError(
                f"rng must be a numpy Generator or None (secure), got {type(self.rng).__name__}"
            )

    @classmethod
    def seeded(cls, scale: float, seed: int) -> LaplaceNoise:
        """Reproducible, **not secure** noise from numpy's PCG64 seeded with ``seed``."""
        return cls(scale, rng=np.random.default_rng(seed))

    @property
    def secure(self) -> bool:
        """True when the noise comes from the CSPRNG (no generator was injected)."""
        return self.rng is None

    def sample(self, shape: int | tuple[int, ...]) -> Array:
        """An array of Laplace(0, scale) values (float64) of the given shape."""
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(dims, dtype=np.int64))
        if self.rng is not None:
            return self.rng.laplace(0.0, 1.0, dims) * self.scale
        out = np.empty(count, dtype=np.float64)
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            out[start:stop] = _secure_standard_laplace(stop - start)
        out *= self.scale
        return out.reshape(dims)

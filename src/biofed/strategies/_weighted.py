"""Streaming weighted sums of parameter sets (the kernel every FedAvg-family fold uses).

Performance notes: each reply is folded into a running sum with one fused BLAS ``axpy``
(``acc ← acc + w·x``, in place), so the pass costs what a plain ``acc += x`` costs — one read
of the update and one read-modify-write of the accumulator — and no temporary of model size
is ever allocated. Peak memory: one accumulator. dtypes BLAS lacks (float16, integers) take a
chunked numpy path through a small scratch buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg.blas import daxpy, saxpy

from biofed.core import Array, ParameterMismatch, ParameterSet, Reply, weighted_mean_metrics

_CHUNK = 1 << 15  # numpy fallback: 32 Ki elements, fits L2 with room to spare
_BLAS_CHUNK = 1 << 30  # BLAS lengths are 32-bit ints: stay well below 2**31
_AXPY: dict[np.dtype[Any], Callable[..., Array]] = {
    np.dtype(np.float32): saxpy,
    np.dtype(np.float64): daxpy,
}


def _accumulate(acc: Array, x: Array, weight: float, scratch: Array) -> None:
    """``acc += weight * x`` on flat, contiguous arrays without a model-sized temporary."""
    n = acc.shape[0]
    axpy = _AXPY.get(acc.dtype)
    if axpy is not None and x.dtype == acc.dtype and x.flags.c_contiguous:
        for start in range(0, n, _BLAS_CHUNK):
            stop = min(start + _BLAS_CHUNK, n)
            out = axpy(x[start:stop], acc[start:stop], a=weight)
            if not np.shares_memory(out, acc):  # pragma: no cover - BLAS always works in place
                acc[start:stop] = out
        return
    w = acc.dtype.type(weight)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        tmp = scratch[: stop - start]
        np.multiply(x[start:stop], w, out=tmp, casting="unsafe")
        np.add(acc[start:stop], tmp, out=acc[start:stop])


class WeightedSum:
    """Running ``Σ wᵢ·xᵢ`` and ``Σ wᵢ`` over parameter sets with the layout of ``template``.

    Floating-point arrays are accumulated in their own dtype (float32 models stay float32);
    integer and bool arrays are accumulated in float64 and cast back when read.
    """

    def __init__(self, template: ParameterSet) -> None:
        self._spec = template.spec
        self._acc: dict[str, Array] = {}
        for name, array in template.items():
            dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
            self._acc[name] = np.zeros(array.size, dtype=dtype)
        largest = max((a.size for a in self._acc.values()), default=0)
        self._scratch: dict[np.dtype[np.generic], Array] = {}
        for array in self._acc.values():
            if array.dtype not in self._scratch:
                self._scratch[array.dtype] = np.empty(min(_CHUNK, largest), dtype=array.dtype)
        self.total_weight = 0.0
        self.count = 0

    def add(self, params: ParameterSet, weight: float) -> None:
        """Fold ``weight · params`` in; ``params`` must have the template's layout."""
        if list(params.keys()) != [e[0] for e in self._spec.entries]:
            raise ParameterMismatch("update names differ from the model's")
        for name, acc in self._acc.items():
            x = params[name].reshape(-1)
            if x.shape != acc.shape:
                raise ParameterMismatch(f"update {name!r} has {x.size} values, expected {acc.size}")
            _accumulate(acc, x, weight, self._scratch[acc.dtype])
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, Array]:
        """``Σ wᵢ·xᵢ / Σ wᵢ`` as writable arrays in the template's shapes and dtypes.

        The accumulators are reused for the result: call once, at the end.
        """
        if self.total_weight <= 0:
            raise ValueError("no weight has been added")
        out: dict[str, Array] = {}
        scale = 1.0 / self.total_weight
        for name, shape, dtype in self._spec.entries:
            acc = self._acc[name]
            acc *= acc.dtype.type(scale)
            out[name] = acc.reshape(shape).astype(np.dtype(dtype), copy=False)
        return out


def capped_examples(num_examples: int, max_weight: int | None) -> int:
    """A reply's example count as a weight: at most ``max_weight`` (None: uncapped).

    Security note: the count is the site's own claim. A site declaring ``10**15`` examples
    would otherwise own the example-weighted mean (weight inflation); the cap bounds any one
    site's share of the weight to ``max_weight / Σ wᵢ``.
    """
    if max_weight is None:
        return num_examples
    return min(num_examples, max_weight)


class WeightedReplyMean:
    """Fold of training replies into their example-weighted (or plain) mean and metrics."""

    def __init__(
        self, template: ParameterSet, *, weighted: bool, max_weight: int | None = None
    ) -> None:
        self._sum = WeightedSum(template)
        self._weighted = weighted
        self._max_weight = max_weight
        self._metrics: list[tuple[int, dict[str, float]]] = []

    def add(self, reply: Reply) -> None:
        """Fold in one reply's parameters and metrics (its weight capped at ``max_weight``)."""
        if reply.parameters is None:
            raise ParameterMismatch(f"reply from {reply.node_id} carries no parameters")
        examples = capped_examples(reply.num_examples, self._max_weight)
        weight = float(examples) if self._weighted else 1.0
        if weight <= 0:
            raise ParameterMismatch(f"reply from {reply.node_id} reports no training examples")
        self._sum.add(reply.parameters, weight)
        self._metrics.append((max(examples, 1), dict(reply.metrics)))

    @property
    def count(self) -> int:
        """Replies folded in so far."""
        return self._sum.count

    def mean(self) -> dict[str, Array]:
        """The weighted mean of the parameters (call once)."""
        return self._sum.mean()

    def metrics(self) -> dict[str, float]:
        """Example-weighted mean of the replies' training metrics."""
        return weighted_mean_metrics(self._metrics)  # type: ignore[arg-type]

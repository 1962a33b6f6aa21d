"""FedAvg server aggregation against the memory-bandwidth floor.

For n updates of d float32 values, times biofed's streaming FedAvg fold (weights by example
count) and, in the same run, the floor: a plain in-place numpy sum of the same arrays
(``acc += a`` for each). Prints the ratio, and the peak memory the fold allocates above the
inputs, in units of one model (tracemalloc sees numpy's allocations).

    python benchmarks/aggregation.py [--json]
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from _common import best_of, emit, machine, parser
from biofed.core import MessageKind, ParameterSet, Reply
from biofed.strategies import FedAvg

CASES = [(100, 1_000_000), (10, 10_000_000)]


def _floor(arrays: list[np.ndarray]) -> np.ndarray:
    acc = arrays[0].copy()
    for a in arrays[1:]:
        np.add(acc, a, out=acc)
    return acc


def _fold(strategy: FedAvg, x: ParameterSet, replies: list[Reply]) -> ParameterSet:
    agg = strategy.begin_train_aggregation(1, x, {}, len(replies))
    for r in replies:
        agg.add(r)
    return agg.finish().parameters


def run_case(n: int, d: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(d, dtype=np.float32) for _ in range(n)]
    counts = rng.integers(10, 1000, size=n)
    x = ParameterSet({"w": np.zeros(d, np.float32)})
    replies = [
        Reply(
            run_id="bench",
            round=1,
            node_id=f"site-{i}",
            kind=MessageKind.TRAIN,
            parameters=ParameterSet({"w": a}),
            num_examples=int(c),
        )
        for i, (a, c) in enumerate(zip(arrays, counts, strict=True))
    ]
    strategy = FedAvg()
    result = _fold(strategy, x, replies)
    expected = (
        np.average(
            np.stack(arrays[: min(n, 10)]).astype(np.float64), axis=0, weights=counts[: min(n, 10)]
        )
        if n <= 10
        else None
    )
    if expected is not None:
        np.testing.assert_allclose(result["w"], expected, rtol=1e-4, atol=1e-5)
    floor_s = best_of(lambda: _floor(arrays), repeats)
    fold_s = best_of(lambda: _fold(strategy, x, replies), repeats)
    with threadpool_limits(1):  # the same fold with BLAS on one thread, like the floor
        fold_1t_s = best_of(lambda: _fold(strategy, x, replies), repeats)
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    out = _fold(strategy, x, replies)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    model_bytes = d * 4
    return {
        "n": n,
        "d": d,
        "floor_s": floor_s,
        "fedavg_s": fold_s,
        "ratio_to_floor": fold_s / floor_s,
        "fedavg_1thread_s": fold_1t_s,
        "ratio_1thread": fold_1t_s / floor_s,
        "peak_growth_models": (peak - base) / model_bytes,
        "floor_gb_per_s": n * model_bytes / floor_s / 1e9,
    }


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rows = [run_case(n, d, repeats=5) for n, d in CASES]
    print(
        f"{'n':>5} {'d':>10} {'floor s':>9} {'fedavg s':>9} {'ratio':>6} {'1-thread s':>10} "
        f"{'ratio':>6} {'peak/model':>10} {'floor GB/s':>10}"
    )
    for r in rows:
        print(
            f"{r['n']:>5} {r['d']:>10} {r['floor_s']:>9.4f} {r['fedavg_s']:>9.4f} "
            f"{r['ratio_to_floor']:>6.2f} {r['fedavg_1thread_s']:>10.4f} {r['ratio_1thread']:>6.2f} "
            f"{r['peak_growth_models']:>10.2f} {r['floor_gb_per_s']:>10.2f}"
        )
    print("floor: in-place numpy sum of the same arrays (one thread); fedavg: weighted by example")
    print("counts, one BLAS axpy per update (default BLAS threads, then limited to one thread)")
    print("targets: ratio <= 1.5, peak growth <= 3 models")
    emit({"benchmark": "aggregation", "machine": machine(), "cases": rows}, args.json)


if __name__ == "__main__":
    main()

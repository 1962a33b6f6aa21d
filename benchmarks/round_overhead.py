"""Round-engine overhead with no training, in one process.

Each virtual site answers a training instruction with a fixed update vector at once, so what
is measured is biofed's own cost per round: planning, building and validating messages,
the streaming FedAvg fold, and the engine's bookkeeping. Prints the median seconds per round
and, as the floor measured in the same run, a bare numpy weighted sum of the same updates.

    python benchmarks/round_overhead.py [--json]
"""

from __future__ import annotations

import time

import numpy as np

from _common import emit, machine, median, parser
from biofed.coordinator import EngineConfig, RoundEngine
from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.strategies import FedAvg
from biofed.transport import InMemoryTransport

CASES = [(10, 1_000_000), (100, 100_000)]


def _fixed_site(update: ParameterSet, n: int):  # type: ignore[no-untyped-def]
    def handle(inst: Instruction) -> Reply:
        if inst.kind is MessageKind.TRAIN:
            return Reply(
                run_id=inst.run_id,
                round=inst.round,
                node_id=inst.node_id,
                kind=inst.kind,
                parameters=update,
                num_examples=n,
            )
        return Reply(
            run_id=inst.run_id,
            round=inst.round,
            node_id=inst.node_id,
            kind=inst.kind,
            num_examples=n,
            metrics={"score": 0.5},
        )

    return handle


def run_case(n: int, d: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    updates = [ParameterSet({"w": rng.standard_normal(d, dtype=np.float32)}) for _ in range(n)]
    nodes = {f"site-{i:03d}": _fixed_site(u, 100 + i) for i, u in enumerate(updates)}
    engine = RoundEngine(
        FedAvg(),
        InMemoryTransport(nodes),
        EngineConfig(rounds=rounds + 1, seed=0, evaluate_every=0),
        run_id="bench",
    )
    params = ParameterSet({"w": np.zeros(d, np.float32)})
    state = engine.strategy.init_state(params)
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        params, state, record = engine.run_round(r, params, state)
        times.append(time.perf_counter() - t0)
        assert record.num_replies == n, record
    arrays = [u["w"] for u in updates]
    weights = np.array([100 + i for i in range(n)], np.float32)
    floor = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        acc = np.zeros(d, np.float32)
        for w, a in zip(weights, arrays, strict=True):
            acc += w * a
        acc /= weights.sum()
        floor.append(time.perf_counter() - t0)
    return {
        "n": n,
        "d": d,
        "median_round_s": median(times),
        "min_round_s": min(times),
        "numpy_weighted_sum_s": median(floor),
    }


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rows = [run_case(n, d, rounds=30) for n, d in CASES]
    print(f"{'n':>5} {'d':>9} {'median ms/round':>16} {'min ms':>8} {'numpy weighted sum ms':>22}")
    for r in rows:
        print(
            f"{r['n']:>5} {r['d']:>9} {1e3 * r['median_round_s']:>16.2f} "
            f"{1e3 * r['min_round_s']:>8.2f} {1e3 * r['numpy_weighted_sum_s']:>22.2f}"
        )
    print("target: (n=10, d=1e6) <= 25 ms median per round")
    emit({"benchmark": "round_overhead", "machine": machine(), "cases": rows}, args.json)


if __name__ == "__main__":
    main()

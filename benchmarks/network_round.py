"""Round latency over the network: 10 node processes, mTLS on loopback, a 1,000-parameter
model, no training (each node answers with what it received).

Each round is the real thing: the engine plans, the coordinator streams the instruction to
every node over its Connect stream, each node decodes it, uploads its reply over a new
SendReply call (authenticated by its certificate), and the coordinator validates and folds
it. Prints the median round time.

    python benchmarks/network_round.py [--json] [--rounds 50]
"""

from __future__ import annotations

import time

import numpy as np

from _common import emit, machine, median, parser
from _network import Bench, serve_node_if_asked
from biofed.coordinator import EngineConfig, RoundEngine
from biofed.core import ParameterSet
from biofed.strategies import FedAvg


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--nodes", type=int, default=10)
    args = p.parse_args()
    bench = Bench(args.nodes)
    try:
        bench.start_nodes(__file__)
        transport = bench.transport("bench-round")
        rounds = args.rounds + 5
        engine = RoundEngine(
            FedAvg(),
            transport,
            EngineConfig(
                rounds=rounds + 1,
                seed=0,
                evaluate_every=0,
                round_timeout=10.0,
                min_nodes=args.nodes,
                min_replies=args.nodes,
            ),
            run_id="bench-round",
        )
        params = ParameterSet({"w": np.linspace(-1, 1, 1000, dtype=np.float32)})
        state = engine.strategy.init_state(params)
        times = []
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            params, state, record = engine.run_round(r, params, state)
            elapsed = time.perf_counter() - t0
            if record.num_replies != args.nodes:
                raise RuntimeError(f"round {r}: {record.num_replies} replies ({record.failed})")
            if r > 5:  # warm-up: connections, TLS sessions, caches
                times.append(elapsed)
        transport.close()
    finally:
        bench.close()
    result = {
        "nodes": args.nodes,
        "parameters": 1000,
        "rounds": len(times),
        "median_round_s": median(times),
        "p90_round_s": float(np.percentile(times, 90)),
        "min_round_s": min(times),
    }
    print(
        f"{args.nodes} node processes, mTLS on loopback, 1,000 parameters, no training, "
        f"{len(times)} rounds"
    )
    print(
        f"median {1e3 * result['median_round_s']:.2f} ms · p90 {1e3 * result['p90_round_s']:.2f} ms"
        f" · min {1e3 * result['min_round_s']:.2f} ms per round"
    )
    print("target: median <= 20 ms")
    emit({"benchmark": "network_round", "machine": machine(), **result}, args.json)


if __name__ == "__main__":
    if not serve_node_if_asked():
        main()

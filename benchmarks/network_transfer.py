"""Large-model transfer over the network: a 10^8-parameter (400 MB) float32 model broadcast to
4 node processes over mTLS on loopback and collected back (each node answers with what it
received; no training), folded by FedAvg.

Prints the aggregate throughput (bytes down + bytes up, over the round's wall time) and the
coordinator's peak resident memory as a multiple of the model size (sampled every 10 ms;
the baseline before the model existed is printed too).

    python benchmarks/network_transfer.py [--json] [--params 100000000] [--nodes 4]
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil

from _common import emit, machine, parser
from _network import Bench, raw_client_if_asked, raw_floor, serve_node_if_asked
from biofed.coordinator import EngineConfig, RoundEngine
from biofed.core import ParameterSet
from biofed.strategies import FedAvg


class PeakRss:
    """Samples this process's RSS in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--params", type=int, default=100_000_000)
    p.add_argument("--nodes", type=int, default=4)
    args = p.parse_args()
    bench = Bench(args.nodes)
    try:
        bench.start_nodes(__file__)
        transport = bench.transport("bench-transfer")
        engine = RoundEngine(
            FedAvg(),
            transport,
            EngineConfig(
                rounds=2,
                seed=0,
                evaluate_every=0,
                round_timeout=600.0,
                min_nodes=args.nodes,
                min_replies=args.nodes,
            ),
            run_id="bench-transfer",
        )
        baseline = psutil.Process().memory_info().rss
        params = ParameterSet(
            {"w": np.random.default_rng(0).standard_normal(args.params, dtype=np.float32)}
        )
        model_bytes = params.nbytes
        with PeakRss() as rss:
            t0 = time.perf_counter()
            new, _, record = engine.run_round(1, params, {})
            elapsed = time.perf_counter() - t0
        if record.num_replies != args.nodes:
            raise RuntimeError(f"{record.num_replies} replies: {record.failed}")
        np.testing.assert_allclose(new["w"][:1000], params["w"][:1000], rtol=1e-6)
        transport.close()
        del new, params
        floor_s = raw_floor(bench, model_bytes)
    finally:
        bench.close()
    moved = 2 * args.nodes * model_bytes
    result = {
        "parameters": args.params,
        "model_mb": model_bytes / 1e6,
        "nodes": args.nodes,
        "round_s": elapsed,
        "floor_s": floor_s,
        "ratio_to_floor": elapsed / floor_s,
        "floor_mb_per_s": moved / floor_s / 1e6,
        "aggregate_mb_per_s": moved / elapsed / 1e6,
        "coordinator_baseline_rss_mb": baseline / 1e6,
        "coordinator_peak_rss_mb": rss.peak / 1e6,
        "peak_rss_models": rss.peak / model_bytes,
        "peak_growth_models": (rss.peak - baseline) / model_bytes,
    }
    print(
        f"{args.params:,} float32 parameters ({model_bytes / 1e6:.0f} MB) to {args.nodes} node "
        f"processes and back, mTLS on loopback"
    )
    print(
        f"round {elapsed:.2f} s · {result['aggregate_mb_per_s']:.0f} MB/s aggregate "
        f"({moved / 1e9:.1f} GB moved)"
    )
    print(
        f"coordinator RSS: baseline {baseline / 1e6:.0f} MB, peak {rss.peak / 1e6:.0f} MB = "
        f"{result['peak_rss_models']:.2f}x the model ({result['peak_growth_models']:.2f}x above baseline)"
    )
    print(
        f"floor: the same bytes down and up through bare mTLS gRPC streams (all nodes at "
        f"once, no biofed): {floor_s:.2f} s = {result['floor_mb_per_s']:.0f} MB/s; "
        f"biofed round / floor = {result['ratio_to_floor']:.2f}"
    )
    print("targets: >= 500 MB/s aggregate, coordinator RSS <= 3x the model")
    emit({"benchmark": "network_transfer", "machine": machine(), **result}, args.json)


if __name__ == "__main__":
    if not serve_node_if_asked() and not raw_client_if_asked():
        main()

"""The coordinator as a service: 4 concurrent runs against the same 4 runs one after another.

A real coordinator (scheduler, executor, round engine, SQLite state store, mTLS gRPC server)
in this process and 10 node *processes* on loopback. Each node answers every instruction
after ``--work-ms`` of simulated local work (a sleep: the sites are separate machines in a
real federation, and here 10 node processes share this machine's CPUs, so CPU-bound training
would measure the benchmark host, not the coordinator). The model is small (1,000
parameters).

Phase 1 submits the 4 runs one after another (each waits for the previous to end); phase 2
submits the same 4 runs at once (``max_concurrent_runs = 4``). Reported: wall time of each
phase, their ratio, and per run the median and slowest round.

Targets: phase 2 takes at most 0.6× phase 1, and no run is starved (its slowest round at most
3× its median round).

Part (b) then soaks the wire API with ``--soak-messages`` messages (default 100,000) from a
client process holding a site's certificate: on a ``Connect`` stream, valid credits mixed
with replies to unknown transfers, empty reply headers and second hellos; and between them,
valid heartbeats, garbage ``SendReply`` uploads and ControlService calls a site may not make.
The coordinator's RSS is read after the first 10 % (warm-up) and at the end. Target: growth
≤ 10 % after warm-up.

Part (c) soaks the control API as researchers would break it (``_soak.py``): a real
``biofed coordinator start`` *process*, ``--researcher-soak-messages`` calls from two
researchers and a site, mixed valid and hostile (random bytes, 5,000-deep JSON and
out-of-range jobs at SubmitRun, others' and missing run ids, a site on ControlService,
garbage uploads). Its RSS is read after 10 % and at the end; ListRuns must still answer.
Target: growth ≤ 10 % after warm-up.

    python benchmarks/coordinator_service.py [--json] [--rounds 10] [--nodes 10] [--work-ms 100]
        [--soak-messages 100000] [--researcher-soak-messages 30000]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from _common import emit, machine, median, parser
from _network import free_port
from biofed.coordinator import (
    Coordinator,
    JobSpec,
    KitAuthenticator,
    RunStatus,
    open_store,
    tls_of,
)
from biofed.core import Instruction, Reply
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import CoordinatorServer, DatasetDeclaration, NodeClient, Peer

RUNS = 4
RESEARCHER = Peer(name="bench-researcher", role="researcher")


def _spec(i: int, rounds: int, nodes: int) -> str:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": f"bench-{i}",
                "dataset": "bench",
                "rounds": rounds,
                "seed": 100 + i,
                "min_nodes": nodes,
                "min_replies": nodes,
                "round_timeout": 60.0,
                "evaluate_every": 0,
            },
            "task": {"name": "logistic_regression", "num_features": 999},
            "strategy": {"name": "fedavg"},
            "train": {"local_steps": 1},
        }
    ).to_json()


def _wait_ended(coordinator: Coordinator, run_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = [coordinator.store.get_run(r) for r in run_ids]
        if all(r is not None and r.status.is_terminal for r in rows):
            bad = [r for r in rows if r is not None and r.status is not RunStatus.FINISHED]
            if bad:
                raise RuntimeError(
                    f"run {bad[0].run_id} ended {bad[0].status.value}: {bad[0].error}"
                )
            return
        if time.monotonic() > deadline:
            raise RuntimeError("runs did not finish in time")
        time.sleep(0.02)


def _round_times(coordinator: Coordinator, run_id: str) -> list[float]:
    return [r.record.duration_s for r in coordinator.store.rounds(run_id)]


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--work-ms", type=float, default=100.0)
    p.add_argument("--soak-messages", type=int, default=100_000)
    p.add_argument("--researcher-soak-messages", type=int, default=30_000)
    args = p.parse_args()

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="biofed-bench-service-"))
    address = f"127.0.0.1:{free_port()}"
    sites = [f"site-{i:02d}" for i in range(args.nodes)]
    consortium = Consortium.create(
        tmp / "c", consortium="bench", coordinator=address, sites=[*sites, "soak"]
    )
    kit = load_kit(consortium.kit_directory("coordinator"))
    store = open_store(f"sqlite:///{tmp / 'state.db'}")
    coordinator = Coordinator(store, heartbeat_interval=1.0, max_concurrent_runs=RUNS)
    server = CoordinatorServer(
        address, tls_of(kit), KitAuthenticator(kit), coordinator.hub, control=coordinator
    ).start()
    coordinator.start()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-node",
                str(consortium.kit_directory(site)),
                "--target",
                address,
                "--work-ms",
                str(args.work_ms),
            ],
            stdin=subprocess.DEVNULL,
        )
        for site in sites
    ]
    try:
        deadline = time.monotonic() + 120
        while len(coordinator.hub.sessions()) < args.nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("nodes did not connect")
            time.sleep(0.05)
        # Warm-up run (connections, TLS sessions, imports at the nodes).
        warm = coordinator.submit_run(RESEARCHER, _spec(99, 2, args.nodes)).run_id
        _wait_ended(coordinator, [warm], 120)

        specs = [_spec(i, args.rounds, args.nodes) for i in range(RUNS)]
        t0 = time.perf_counter()
        sequential = []
        for spec in specs:
            run_id = coordinator.submit_run(RESEARCHER, spec).run_id
            _wait_ended(coordinator, [run_id], 600)
            sequential.append(run_id)
        sequential_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        concurrent = [coordinator.submit_run(RESEARCHER, spec).run_id for spec in specs]
        _wait_ended(coordinator, concurrent, 600)
        concurrent_s = time.perf_counter() - t0

        per_run = []
        for alone, together in zip(sequential, concurrent, strict=True):
            a, t = _round_times(coordinator, alone), _round_times(coordinator, together)
            per_run.append(
                {
                    "alone_median_round_s": median(a),
                    "alone_max_round_s": max(a),
                    "concurrent_median_round_s": median(t),
                    "concurrent_max_round_s": max(t),
                    "starvation_ratio": max(t) / median(t),
                }
            )
        soak = (
            _soak(consortium.kit_directory("soak"), address, args.soak_messages)
            if args.soak_messages > 0
            else {}
        )
    finally:
        coordinator.stop()
        server.stop(grace=0.5)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        store.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    control_soak: dict[str, object] = {}
    if args.researcher_soak_messages > 0:
        from _soak import soak as researcher_soak

        n = args.researcher_soak_messages
        control_soak = researcher_soak(count=n, warmup=max(1, n // 10))
    ratio = concurrent_s / sequential_s
    worst = max(r["starvation_ratio"] for r in per_run)
    result = {
        "runs": RUNS,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "work_ms": args.work_ms,
        "parameters": 1000,
        "sequential_s": sequential_s,
        "concurrent_s": concurrent_s,
        "concurrent_over_sequential": ratio,
        "worst_slowest_over_median_round": worst,
        "per_run": per_run,
        **soak,
        "control_soak": control_soak,
        "targets_met": ratio <= 0.6
        and worst <= 3.0
        and (not soak or soak["rss_growth"] <= 0.10)
        and (
            not control_soak
            or (
                float(control_soak["rss_growth_after_warmup"]) <= 0.10  # type: ignore[arg-type]
                and control_soak["coordinator_alive"] is True
                and isinstance(control_soak["runs_listed_after"], int)
            )
        ),
    }
    print(
        f"{RUNS} runs × {args.rounds} rounds, {args.nodes} node processes (mTLS, loopback), "
        f"1,000 parameters, {args.work_ms:g} ms of simulated work per instruction"
    )
    print(
        f"one after another: {sequential_s:.2f} s · at once: {concurrent_s:.2f} s · ratio {ratio:.2f}"
    )
    for i, r in enumerate(per_run):
        print(
            f"run {i}: alone median {1e3 * r['alone_median_round_s']:.0f} ms, "
            f"max {1e3 * r['alone_max_round_s']:.0f} ms · concurrent median "
            f"{1e3 * r['concurrent_median_round_s']:.0f} ms, max "
            f"{1e3 * r['concurrent_max_round_s']:.0f} ms (×{r['starvation_ratio']:.2f})"
        )
    if soak:
        print(
            f"soak: {soak['soak_messages']:,} wire messages in {soak['soak_s']:.0f} s · RSS "
            f"{soak['rss_after_warmup_mb']:.0f} MiB after warm-up, {soak['rss_end_mb']:.0f} MiB "
            f"at the end ({100 * soak['rss_growth']:+.1f} %)"
        )
    if control_soak:
        mb = control_soak["rss_mb"]
        print(
            f"control soak (coordinator process): {control_soak['messages']:,} calls in "
            f"{control_soak['seconds']:.0f} s · RSS {mb['after_warmup']:.0f} MiB after "  # type: ignore[index]
            f"warm-up, {mb['end']:.0f} MiB at the end "  # type: ignore[index]
            f"({100 * control_soak['rss_growth_after_warmup']:+.1f} %) · alive: "  # type: ignore[operator]
            f"{control_soak['coordinator_alive']} · ListRuns after: "
            f"{control_soak['runs_listed_after']}"
        )
        for name, count in control_soak["outcomes"].items():  # type: ignore[attr-defined]
            print(f"  {name}: {count}")
    print(
        "targets: at once <= 0.6 × one after another; slowest round <= 3 × median round; "
        "RSS growth <= 10 % after warm-up (both soaks)"
    )
    emit({"benchmark": "coordinator_service", "machine": machine(), **result}, args.json)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _soak(kit_dir: Path, address: str, messages: int) -> dict[str, float]:
    """Part (b): a client process sends ``messages`` wire messages; RSS of this process (the
    coordinator) after the warm-up tenth and at the end."""
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--soak-client",
            str(kit_dir),
            "--target",
            address,
            "--messages",
            str(messages),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    t0 = time.perf_counter()
    warm = 0
    for line in proc.stdout:  # the client prints its progress every tenth
        if line.strip() == b"warm":
            warm = _rss_bytes()
    if proc.wait(timeout=3600) != 0:
        raise RuntimeError("the soak client failed")
    end = _rss_bytes()
    return {
        "soak_messages": messages,
        "soak_s": time.perf_counter() - t0,
        "rss_after_warmup_mb": warm / 2**20,
        "rss_end_mb": end / 2**20,
        "rss_growth": (end - warm) / warm if warm else float("nan"),
    }


def _soak_client() -> None:
    """``--soak-client KIT --target ADDR --messages N``: send N valid and malformed messages."""
    import uuid

    from biofed.transport.grpc._gen import federation_pb2 as pb
    from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc
    from biofed.transport.grpc._tls import secure_channel

    p = argparse.ArgumentParser()
    p.add_argument("--soak-client")
    p.add_argument("--target")
    p.add_argument("--messages", type=int)
    args, _ = p.parse_known_args()
    kit = load_kit(args.soak_client)
    channel = secure_channel(args.target, tls_of(kit))
    node = pb_grpc.NodeServiceStub(channel)
    control = pb_grpc.ControlServiceStub(channel)
    session = uuid.uuid4().hex
    hello = pb.ConnectRequest(session_id=session)
    per_stream = 5000
    sent = 0
    tenth = max(1, args.messages // 10)
    said_warm = False
    while sent < args.messages:
        batch = min(per_stream, args.messages - sent)

        def stream(batch: int = batch) -> object:
            yield pb.NodeMessage(hello=hello)
            for i in range(batch - 1):
                kind = i % 4
                if kind == 0:  # valid flow control
                    yield pb.NodeMessage(credit=1)
                elif kind == 1:  # a reply to an instruction nobody sent
                    yield pb.NodeMessage(
                        reply=pb.ReplyHeader(
                            transfer_id=uuid.uuid4().hex,
                            run_id="nope",
                            round=1,
                            kind="train",
                            inline_payload=b"\x00" * 64,
                        )
                    )
                elif kind == 2:  # an empty reply header
                    yield pb.NodeMessage(reply=pb.ReplyHeader())
                else:  # a second hello on one session
                    yield pb.NodeMessage(hello=hello)

        call = node.Connect(stream())
        # Unary calls beside the stream: valid heartbeats, garbage uploads, forbidden control.
        for _ in range(3):
            with contextlib.suppress(grpc.RpcError):
                node.Heartbeat(pb.HeartbeatRequest(session_id=session), timeout=10)
        with contextlib.suppress(grpc.RpcError):
            node.SendReply(iter([pb.ReplyChunk(chunk=pb.Chunk(data=b"junk"))]), timeout=10)
        with contextlib.suppress(grpc.RpcError):
            control.ListRuns(pb.ListRunsRequest(), timeout=10)
        # The coordinator ends the stream once it has read every message of it.
        with contextlib.suppress(grpc.RpcError):
            for _ in call:
                pass
        sent += batch + 5
        if not said_warm and sent >= tenth:
            print("warm", flush=True)
            said_warm = True
    channel.close()


def _serve_node() -> None:
    """``--serve-node KIT --target ADDR --work-ms MS``: a node that answers after MS ms."""
    p = argparse.ArgumentParser()
    p.add_argument("--serve-node")
    p.add_argument("--target")
    p.add_argument("--work-ms", type=float, default=100.0)
    args, _ = p.parse_known_args()
    kit = load_kit(args.serve_node)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    def handle(inst: Instruction) -> Reply:
        time.sleep(args.work_ms / 1000)
        return Reply(
            run_id=inst.run_id,
            round=inst.round,
            node_id=inst.node_id,
            kind=inst.kind,
            parameters=inst.parameters if inst.kind.value == "train" else None,
            num_examples=100,
            metrics={"score": 0.5},
        )

    NodeClient(
        args.target,
        tls_of(kit),
        node_id=kit.name,
        handler=handle,
        datasets=[DatasetDeclaration(name="bench", num_examples=100, num_features=999)],
    ).run(stop)


if __name__ == "__main__":
    if "--serve-node" in sys.argv:
        _serve_node()
    elif "--soak-client" in sys.argv:
        _soak_client()
    else:
        main()

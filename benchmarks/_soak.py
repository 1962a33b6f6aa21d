"""A bounded soak of the coordinator's wire API: valid and malformed messages, mixed, from
researchers and sites at once, against a real coordinator *process* over mTLS on loopback;
the coordinator's resident memory is sampled after a warm-up and at the end.

What the mix exercises (each a real gRPC call through the real servers):

- valid: ``ListRuns``, ``GetRun`` of a run the researcher owns, ``ListNodes``, ``WatchRun``
  (no follow), a site's ``Heartbeat`` for an unknown session;
- malformed or hostile: ``SubmitRun`` with random bytes, deeply nested JSON or an invalid
  job, ``GetRun``/``CancelRun``/``DownloadResult`` of runs that do not exist (or are not the
  caller's), a site calling ControlService, ``SendReply`` with a garbage header,
  ``FetchBundle`` of a digest that is not a digest.

Every call is bounded by a deadline; the loop stops after ``count`` calls.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

from biofed.coordinator import tls_of
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc
from biofed.transport.grpc._tls import secure_channel

_VALID_JOB = {
    "run": {"name": "soak", "dataset": "nobody-offers-this", "rounds": 1, "round_timeout": 5.0},
    "task": {"name": "logistic_regression", "num_features": 3},
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Coordinator:
    """``biofed coordinator start`` as a child process; ready once it says it listens."""

    def __init__(self, root: Path) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        self.consortium = Consortium.create(
            root / "c",
            consortium="soak",
            coordinator=self.address,
            sites=["site-a"],
            researchers=["alice", "bob"],
        )
        kit = self.consortium.kit_directory("coordinator")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "biofed",
                "coordinator",
                "start",
                "--kit",
                str(kit),
                "--state",
                f"sqlite:///{root / 'state.db'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 120
        for line in self.proc.stderr:
            if "listening on" in line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start")
        else:
            raise RuntimeError(f"the coordinator exited ({self.proc.wait()})")
        # keep draining its stderr so it never blocks on a full pipe
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)

    def channel(self, who: str) -> grpc.Channel:
        kit = load_kit(self.consortium.kit_directory(who))
        return secure_channel(self.address, tls_of(kit))

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _calls(
    control: Any, other: Any, site_control: Any, node: Any, own_run: str, rng: random.Random
) -> list[tuple[str, Callable[[], Any]]]:
    timeout = 10.0

    def reply_garbage() -> Any:
        header = pb.ReplyHeader()
        header.run_id = "x" * rng.randint(0, 300)
        return node.SendReply(iter([pb.ReplyChunk(header=header)]), timeout=timeout)

    return [
        ("list_runs", lambda: control.ListRuns(pb.ListRunsRequest(), timeout=timeout)),
        ("get_own_run", lambda: control.GetRun(pb.RunRequest(run_id=own_run), timeout=timeout)),
        ("list_nodes", lambda: control.ListNodes(pb.ListNodesRequest(), timeout=timeout)),
        (
            "watch_own_run",
            lambda: list(
                control.WatchRun(pb.WatchRunRequest(run_id=own_run, follow=False), timeout=timeout)
            ),
        ),
        (
            "heartbeat_unknown",
            lambda: node.Heartbeat(pb.HeartbeatRequest(session_id="nope"), timeout=timeout),
        ),
        (
            "submit_random_bytes",
            lambda: control.SubmitRun(
                pb.SubmitRunRequest(spec_json=rng.randbytes(200)),
                timeout=timeout,
            ),
        ),
        (
            "submit_deep_json",
            lambda: control.SubmitRun(
                pb.SubmitRunRequest(spec_json=_nested(5000).encode()), timeout=timeout
            ),
        ),
        (
            "submit_invalid_job",
            lambda: control.SubmitRun(
                pb.SubmitRunRequest(
                    spec_json=json.dumps(
                        {**_VALID_JOB, "run": {**_VALID_JOB["run"], "rounds": 10**12}}
                    ).encode()
                ),
                timeout=timeout,
            ),
        ),
        (
            "get_missing_run",
            lambda: control.GetRun(pb.RunRequest(run_id=f"r-{rng.random()}"), timeout=timeout),
        ),
        (
            "cancel_other_run",
            lambda: other.CancelRun(pb.RunRequest(run_id=own_run), timeout=timeout),
        ),
        (
            "download_missing",
            lambda: list(
                control.DownloadResult(pb.RunRequest(run_id="missing-1"), timeout=timeout)
            ),
        ),
        (
            "site_on_control",
            lambda: site_control.ListRuns(pb.ListRunsRequest(), timeout=timeout),
        ),
        ("reply_garbage", reply_garbage),
        (
            "fetch_bad_bundle",
            lambda: list(node.FetchBundle(pb.BundleRequest(digest="../" * 30), timeout=timeout)),
        ),
    ]


def soak(
    count: int = 100_000, warmup: int = 10_000, threads: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Send ``count`` mixed messages; return RSS figures and the outcome counts."""
    root = Path(tempfile.mkdtemp(prefix="biofed-soak-"))
    coordinator = _Coordinator(root)
    channels: list[grpc.Channel] = []
    try:
        alice = coordinator.channel("alice")
        bob = coordinator.channel("bob")
        site = coordinator.channel("site-a")
        channels += [alice, bob, site]
        control = pb_grpc.ControlServiceStub(alice)
        own = control.SubmitRun(
            pb.SubmitRunRequest(spec_json=json.dumps(_VALID_JOB).encode()), timeout=30
        )
        rng = random.Random(seed)
        calls = _calls(
            control,
            pb_grpc.ControlServiceStub(bob),
            pb_grpc.ControlServiceStub(site),
            pb_grpc.NodeServiceStub(site),
            own.run_id,
            rng,
        )
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        sent = 0
        samples: dict[str, int] = {"start": coordinator.rss()}
        warm = threading.Event()

        def worker(wseed: int) -> None:
            nonlocal sent
            local = random.Random(wseed)
            while True:
                with lock:
                    if sent >= count:
                        return
                    sent += 1
                    if sent == warmup:
                        warm.set()
                name, fn = local.choice(calls)
                try:
                    fn()
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    outcomes[f"{name}:{code}"] += 1

        t0 = time.perf_counter()
        pool = [threading.Thread(target=worker, args=(seed + i,)) for i in range(threads)]
        for t in pool:
            t.start()
        warm.wait()
        samples["after_warmup"] = coordinator.rss()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        samples["end"] = coordinator.rss()
        alive = coordinator.proc.poll() is None
        try:
            listed: int | str = len(control.ListRuns(pb.ListRunsRequest(), timeout=30).runs)
        except grpc.RpcError as exc:  # the API must still answer after the soak
            listed = f"ListRuns failed: {exc.code().name}: {exc.details()}"
        growth = samples["end"] / samples["after_warmup"] - 1.0
        return {
            "messages": count,
            "warmup": warmup,
            "seconds": elapsed,
            "messages_per_s": count / elapsed,
            "rss_mb": {k: v / 2**20 for k, v in samples.items()},
            "rss_growth_after_warmup": growth,
            "coordinator_alive": alive,
            "runs_listed_after": listed,
            "outcomes": dict(sorted(outcomes.items())),
        }
    finally:
        for ch in channels:
            ch.close()
        coordinator.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover - quick manual check
    n = int(os.environ.get("SOAK_COUNT", "2000"))
    print(json.dumps(soak(count=n, warmup=n // 10), indent=2))

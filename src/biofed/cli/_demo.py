"""``biofed demo``: a whole consortium on this machine — a CA, a coordinator and six site
nodes as separate processes over mTLS, each site holding only its own region of
Fed-TCGA-BRCA — running a FedAdam piecewise-exponential survival model with sample-level
DP-SGD (a sum of per-record terms, so each site's ε is a guarantee) end to end under a
signed study agreement: the
researcher's task runs as a bundle every site approved, every node enforces the agreement
itself, and the sites' audit logs are verified at the end (:mod:`._demo_governance`)."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from biofed.cli._common import clean_errors, err
from biofed.cli._output import Format, FormatOption, print_json
from biofed.cli._render import SECAGG_STAGES, round_progress

if TYPE_CHECKING:
    from biofed.cli._demo_governance import Governance
    from biofed.coordinator import JobSpec
    from biofed.identity import Consortium
    from biofed.transport.grpc import ControlClient

_SITES = [f"center-{k}" for k in range(6)]
#: Seconds a round may take: a DP-SGD round is seconds on an idle machine, but each site
#: starts a sandboxed worker per step and a busy or slow machine (CI, a laptop on battery)
#: must not fail the demo; a healthy run never waits for it.
ROUND_TIMEOUT = 180.0
#: Seconds the coordinator may take to listen, and then the nodes to connect (each process
#: imports biofed, gRPC and its dependencies: seconds, unless the machine is busy).
START_TIMEOUT = 180.0
#: Seconds the processes get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: The demo's report in a kept folder (``--workdir`` or ``--keep``): what --format json prints.
REPORT_FILE = "demo.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_sites(root: Path) -> None:
    from biofed.data import write_site_files
    from biofed.datasets import load_tcga_brca

    staging = root / "staging"
    paths = write_site_files(load_tcga_brca(), staging, format="csv")
    for site, path in paths.items():
        folder = root / "consortium" / site / "data"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "tcga-brca.csv"
        shutil.move(str(path), target)
        (root / "consortium" / site / "node.toml").write_text(
            "# This site's datasets: only its own region's patients.\n"
            "[datasets.tcga-brca]\n"
            'path = "data/tcga-brca.csv"\nformat = "csv"\nsplit_column = "split"\n'
            'targets = { event = "event", time = "time" }\n'
        )
    shutil.rmtree(staging)


#: The ε each site's records reach over the demo run (δ = 1e-5), and the training settings
#: tuned for DP-SGD on Fed-TCGA-BRCA (see benchmarks/privacy_utility.py).
DEMO_EPSILON = 8.0
DP_TRAIN = {"local_steps": 50, "batch_size": 32, "learning_rate": 1.0, "optimizer": "sgd"}
DP_STRATEGY: dict[str, dict[str, Any]] = {
    "fedadam": {"server_learning_rate": 1.0, "tau": 0.1, "beta_2": 0.999}
}
#: The survival model's intervals, fixed by the job (days): 10 equal parts of ten years.
SURVIVAL = {"num_intervals": 10, "max_time": 3650.0}


def _job(rounds: int, strategy: str, governance: "Governance") -> "JobSpec":
    from biofed.cli._demo_governance import DATASET
    from biofed.coordinator import JobSpec

    return JobSpec.from_mapping(
        {
            "run": {
                "name": "tcga-brca-survival",
                "dataset": DATASET,
                "agreement": governance.agreement_id,
                "bundle": governance.bundle,
                "rounds": rounds,
                "seed": 42,
                "min_nodes": 6,
                "min_replies": 5,
                "round_timeout": ROUND_TIMEOUT,
            },
            # A sum of per-record terms: each site's ε is a guarantee (the Cox model has none)
            "task": {
                "name": "pem_torch",
                "num_features": 39,
                "num_intervals": SURVIVAL["num_intervals"],
                "max_time": SURVIVAL["max_time"],
            },
            "strategy": {"name": strategy, **DP_STRATEGY.get(strategy, {})},
            "train": DP_TRAIN,
            "evaluate": {"split": "test", "metrics": "c_index"},
            # Sample-level DP-SGD at every site: each site calibrates its own noise so that
            # its records reach at most ε = DEMO_EPSILON over the run (benchmarks/
            # privacy_utility.py: pem_torch's mean C-index ≈ 0.77 at ε = 8 with FedAdam, 0.82
            # without DP; this ε is a guarantee, the heuristic Cox's 0.78 was not).
            "privacy": {
                "mode": "sample",
                "target_epsilon": DEMO_EPSILON,
                "delta": 1e-5,
                "max_grad_norm": 1.5,
                "accountant": "rdp",
            },
            # SecAgg+: the coordinator learns only the weighted mean of the sites' updates.
            "secure_aggregation": {"clip_range": 8.0, "quantisation_step": 1e-6},
        }
    )


class _Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "biofed", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def check_alive(self) -> None:
        from biofed.core import TransportError

        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-600:]
                raise TransportError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def _wait_for_listener(procs: _Processes, address: str, timeout: float = START_TIMEOUT) -> None:
    """Wait until the coordinator accepts TCP connections on ``address``, so that the nodes
    connect at once (nodes started earlier log a refused connection per backoff step)."""
    from biofed.core import TransportError

    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise TransportError(f"the coordinator did not listen on {address} within {timeout:.0f} s")


def start_processes(
    procs: _Processes, root: Path, consortium: "Consortium", sites: list[str], address: str
) -> None:
    """Start the coordinator (state in ``root/state.db``) and one node process per site."""
    procs.start(
        "coordinator",
        "coordinator",
        "start",
        "--kit",
        str(consortium.kit_directory("coordinator")),
        "--listen",
        address,
        "--state",
        f"sqlite:///{root / 'state.db'}",
    )
    _wait_for_listener(procs, address)
    for site in sites:
        kit = consortium.kit_directory(site)
        procs.start(site, "node", "start", "--kit", str(kit), "--config", str(kit / "node.toml"))


def _wait_for_nodes(
    client: "ControlClient", procs: _Processes, console: Console, count: int = len(_SITES)
) -> None:
    from biofed.core import TransportError

    deadline = time.monotonic() + START_TIMEOUT
    with console.status(f"waiting for the {count} site nodes to connect…"):
        while time.monotonic() < deadline:
            procs.check_alive()
            try:
                online = [n for n in client.list_nodes() if n.status == "online"]
            except TransportError:
                online = []
            if len(online) >= count:
                return
            time.sleep(0.2)
    raise TransportError(
        f"site nodes did not connect within {START_TIMEOUT:.0f} s (see the logs folder)"
    )


def _metric(message: str, name: str) -> float | None:
    match = re.search(rf"{re.escape(name)} (-?[0-9.]+(?:e-?[0-9]+)?)", message)
    return float(match.group(1)) if match else None


def _follow(
    client: "ControlClient",
    run_id: str,
    rounds: int,
    console: Console,
    *,
    sites: int = len(_SITES),
    metric: tuple[str, str] = ("c_index", "C-index"),
) -> dict[str, Any]:
    """Show each round's progress (sites replied, the round's ``metric``: its name and label)
    until the run ends; return its final status and summary."""
    progress = round_progress(console, unit="sites")
    tasks: dict[int, Any] = {}
    # per round, how much of its round each site has replied: a training reply is all of it,
    # each of a secure round's four stages a quarter (as ``biofed simulate`` counts them)
    replied: dict[int, dict[str, float]] = {}
    with progress:
        for event in client.watch_run(run_id, follow=True):
            r = event.round
            if event.kind == "round_started":
                tasks[r] = progress.add_task(
                    "round", total=sites, round=r, rounds=rounds, status="training"
                )
            elif event.kind in ("train_reply", "secagg_reply") and r in tasks:
                share = 1.0 if event.kind == "train_reply" else 1 / SECAGG_STAGES
                done = replied.setdefault(r, {})
                done[event.node_id] = min(1.0, done.get(event.node_id, 0.0) + share)
                progress.update(tasks[r], completed=sum(done.values()))
            elif event.kind == "round_completed" and r in tasks:
                # the event's own text names this round's metrics (the run may be further on)
                value = _metric(event.message, f"eval.{metric[0]}")
                survivors = _metric(event.message, "train.secagg.survivors")
                parts = []
                if survivors is not None:
                    parts.append(f"secure sum of {survivors:.0f}")
                if value is not None:
                    parts.append(f"{metric[1]} {value:.4f}")
                text = " · ".join(parts) or event.message
                progress.update(tasks[r], status=text)
                progress.stop_task(tasks[r])  # its time: the whole round's
            elif event.kind == "preprocessing_fitted":  # a study job's phase before round 1
                from biofed.data import Preprocessing

                names = Preprocessing.from_json(event.message).feature_names
                console.print(
                    f"preprocessing fitted across the sites before round 1: {len(names)} "
                    f"features ({', '.join(names)})"
                )
            elif event.kind in ("reply_rejected", "no_reply", "round_failed", "failed"):
                if event.kind == "round_failed" and r in tasks:
                    progress.update(tasks[r], status="[red]failed[/]")
                    progress.stop_task(tasks[r])
                console.print(f"[yellow]{event.kind}[/] {event.node_id}: {event.message}")
    run = client.get_run(run_id)
    return {
        "run_id": run.run_id,
        "status": run.status,
        "rounds": run.completed_rounds,
        "summary": json.loads(run.summary_json),
    }


def _run(
    root: Path,
    consortium: "Consortium",
    procs: _Processes,
    address: str,
    governance: "Governance",
    rounds: int,
    strategy: str,
) -> dict[str, Any]:
    """Start the coordinator and the six nodes, submit the governed job, follow it."""
    from biofed.coordinator import tls_of
    from biofed.identity import load_kit
    from biofed.transport.grpc import ControlClient

    console = Console(stderr=True)
    start_processes(procs, root, consortium, _SITES, address)
    researcher = load_kit(consortium.kit_directory("researcher"))
    spec = _job(rounds, strategy, governance)
    with ControlClient(address, tls_of(researcher), timeout=10.0) as client:
        _wait_for_nodes(client, procs, console)
        console.print(
            f"6 sites connected over mutual TLS; submitting the job under agreement "
            f"{governance.agreement_id} with bundle {governance.bundle}"
        )
        run = client.submit_run(
            spec.to_json(),
            governance.bundle_file.read_bytes(),
            agreement=governance.agreement_file.read_bytes(),  # its researchers may see the run
            certificates={
                p.name: (consortium.kit_directory(p.name) / "cert.pem").read_bytes()
                for p in consortium.participants()
            },
        )
        return _follow(client, run.run_id, spec.rounds, console)


def demo_command(
    workdir: Annotated[Path | None, typer.Option(help="Put the consortium here (kept).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary folder.")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 5,
    strategy: Annotated[
        str | None,
        typer.Option(help="Strategy (default: fedadam for tcga, fedavg for omop)."),
    ] = None,
    format: FormatOption = Format.table,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="tcga: 6 sites of Fed-TCGA-BRCA, DP survival model; omop: 5 sites' OMOP "
            "CDMs (Eunomia), the GI-bleed study compiled from a study spec.",
        ),
    ] = "tcga",
) -> None:
    """Provision a consortium, sign a study agreement, start a coordinator and governed
    site nodes, train, shut down and verify the sites' audit logs."""
    from biofed.cli._demo_governance import check_audit_logs, prepare
    from biofed.core import BiofedError
    from biofed.identity import Consortium

    console = Console(stderr=True)
    if data not in ("tcga", "omop"):
        err.print(f"[red]error:[/] --data must be tcga or omop, got {data!r}")
        raise typer.Exit(code=2)
    sites = _SITES
    strategy = strategy or ("fedavg" if data == "omop" else "fedadam")
    if data == "omop":
        from biofed.cli._demo_omop import SITES as OMOP_SITES

        sites = OMOP_SITES
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="biofed-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    procs = _Processes(root / "logs")
    result: dict[str, Any] | None = None
    codes: dict[str, int] = {}
    try:
        with clean_errors():
            port = _free_port()
            address = f"127.0.0.1:{port}"
            consortium = Consortium.create(
                root / "consortium",
                consortium="biofed-demo",
                coordinator=address,
                sites=sites,
                researchers=["researcher"],
            )
            console.print(
                f"consortium provisioned in {root / 'consortium'} "
                f"(CA, coordinator, {len(sites)} sites, researcher)"
            )
            try:
                if data == "omop":
                    from biofed.cli._demo_omop import run_omop

                    result = run_omop(root, consortium, procs, address, rounds, strategy, console)
                else:
                    _write_sites(root)
                    governance = prepare(root, consortium, _SITES, console)
                    result = _run(root, consortium, procs, address, governance, rounds, strategy)
                    result.update(governance.to_json())
            finally:
                codes = procs.stop()
            result["processes"] = codes
            result["audit"] = check_audit_logs(consortium, sites, console)
    except BiofedError as exc:
        raise typer.Exit(code=2) from exc
    finally:
        procs.stop()  # a no-op unless something failed before the inner stop
        kept = workdir is not None or keep
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
        elif result is None:
            console.print(f"kept {root} (its logs/ folder has each process's log)")
    if result is None:
        raise typer.Exit(code=1)
    if kept:  # the report, for a script or a later look: what --format json prints
        result["workdir"] = str(root)
        (root / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if Format(format) is Format.json:
        print_json(result)
    else:
        from biofed.cli._demo_summary import print_summary

        print_summary(
            Console(),
            result,
            data=data,
            sites=sites,
            rounds=rounds,
            strategy=strategy,
            kept=root if kept else None,
        )
    clean = result["status"] == "finished" and all(c == 0 for c in codes.values())
    if not clean or not all(log["ok"] for log in result["audit"].values()):
        err.print("[bold red]the demo did not finish cleanly[/]")
        raise typer.Exit(code=1)

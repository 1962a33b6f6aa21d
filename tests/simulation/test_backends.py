"""Simulation backends: the real engine and site handler on virtual sites in this process,
in worker processes and in Ray actors — the same model on each, lazy sites, no hang when a
worker dies, and no process left behind."""

from __future__ import annotations

import functools
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest

from biofed.coordinator import EngineConfig, RoundEngine, RunResult
from biofed.core import ConfigurationError, ParameterSet
from biofed.data import SiteData
from biofed.simulation import (
    SYNTHETIC_DATASET,
    Backend,
    InProcessBackend,
    ProcessPoolBackend,
    RayBackend,
    SiteRecipe,
    logistic_recipes,
    logistic_site_data,
    make_backend,
)
from biofed.strategies import FedAvg
from biofed.tasks import make_task
from biofed.transport import Transport

T = TypeVar("T")
FEATURES = 8


def run_logistic(
    transport: Transport, *, rounds: int = 2, seed: int = 7, min_replies: int = 1
) -> RunResult:
    """A FedAvg logistic-regression run over ``transport`` with the real engine."""
    task = make_task("logistic_regression", num_features=FEATURES)
    engine = RoundEngine(
        FedAvg(train_config={"local_steps": 5, "batch_size": 16, "learning_rate": 0.1}),
        transport,
        EngineConfig(rounds=rounds, seed=seed, evaluate_every=1, min_replies=min_replies),
        run_id="scale",
        instruction_config={
            "dataset": SYNTHETIC_DATASET,
            "task": "logistic_regression",
            "task.num_features": FEATURES,
        },
    )
    return engine.run(task.init_parameters(np.random.default_rng(seed)))


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _gone(pids: Sequence[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(pid) for pid in pids)


def _same(a: ParameterSet, b: ParameterSet) -> bool:
    return list(a.keys()) == list(b.keys()) and all(np.array_equal(a[k], b[k]) for k in a)


def _summary(result: RunResult) -> list[tuple[int, int, dict[str, float], dict[str, float]]]:
    return [
        (r.num_replies, r.num_rejected, dict(r.train_metrics), dict(r.eval_metrics))
        for r in result.history
    ]


# -- in process --------------------------------------------------------------------------------


def test_make_backend_names_and_refusals() -> None:
    assert isinstance(make_backend(), InProcessBackend)
    assert isinstance(make_backend("processes", workers=2), ProcessPoolBackend)
    assert isinstance(make_backend("ray", workers=2), RayBackend)
    for backend in (make_backend(), make_backend("processes"), make_backend("ray")):
        assert isinstance(backend, Backend)
    with pytest.raises(ConfigurationError, match="unknown simulation backend 'dask'"):
        make_backend("dask")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="runs no workers"):
        make_backend("inprocess", workers=2)
    with pytest.raises(ConfigurationError, match="workers must be >= 1"):
        make_backend("processes", workers=0)
    with pytest.raises(ConfigurationError, match="listed twice"):
        make_backend().transport(logistic_recipes(2) + logistic_recipes(1))
    with pytest.raises(ConfigurationError, match="at least one site"):
        make_backend("processes").transport([])
    closure = SiteRecipe(node_id="local", load_data=lambda: logistic_site_data("local"))
    with pytest.raises(ConfigurationError, match="site 'local': its recipe does not pickle"):
        make_backend("processes").transport([closure])


def test_importing_the_simulation_does_not_import_ray() -> None:
    code = "import sys, biofed.simulation; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_sites_load_their_data_on_their_first_instruction_only() -> None:
    loads: dict[str, int] = {}

    def loader(node_id: str) -> Mapping[str, SiteData]:
        loads[node_id] = loads.get(node_id, 0) + 1
        return logistic_site_data(node_id, seed=3)

    recipes = [
        SiteRecipe(node_id=f"s{i}", load_data=functools.partial(loader, f"s{i}")) for i in range(5)
    ]
    transport = make_backend().transport(recipes)
    assert loads == {}  # nothing is loaded before the first round
    with transport:
        run_logistic(transport, rounds=3)
    assert loads == {f"s{i}": 1 for i in range(5)}


def test_idle_sites_hold_no_model_copy() -> None:
    """After a round, the live ParameterSets do not grow with the number of sites: each
    instruction's model and each reply were dropped, only the sites' data stay."""

    def live_parameter_sets(num_sites: int) -> int:
        transport = make_backend().transport(logistic_recipes(num_sites, seed=1))
        result = run_logistic(transport, rounds=1)
        assert result.history[0].num_replies == num_sites
        gc.collect()
        count = sum(isinstance(o, ParameterSet) for o in gc.get_objects())
        transport.close()
        return count

    assert live_parameter_sets(60) <= live_parameter_sets(3) + 2


def test_a_site_that_cannot_load_its_data_answers_with_an_error() -> None:
    recipes = [
        *logistic_recipes(2, seed=1),
        SiteRecipe(node_id="broken", load_data=functools.partial(int, "not a number")),
    ]
    with make_backend().transport(recipes) as transport:
        result = run_logistic(transport, rounds=1)
    assert result.history[0].num_replies == 2
    messages = [e.message for e in result.events if e.node_id == "broken"]
    assert any("site: cannot start: ValueError" in m for m in messages), messages


@pytest.mark.slow
def test_a_thousand_virtual_sites_complete_a_round_in_process() -> None:
    with make_backend().transport(logistic_recipes(1000, rows=32)) as transport:
        result = run_logistic(transport, rounds=1)
    assert result.history[0].num_replies == 1000


# -- worker processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> RunResult:
    with make_backend().transport(logistic_recipes(7, seed=5)) as transport:
        return run_logistic(transport, rounds=2)


@pytest.mark.slow
def test_worker_processes_give_the_in_process_model(reference: RunResult) -> None:
    transport = make_backend("processes", workers=2).transport(logistic_recipes(7, seed=5))
    with transport:
        assert len(transport.worker_pids()) == 2
        result = run_logistic(transport, rounds=2)
    assert _same(result.parameters, reference.parameters)
    assert _summary(result) == _summary(reference)


@pytest.mark.slow
def test_close_stops_every_worker_process() -> None:
    transport = make_backend("processes", workers=2).transport(logistic_recipes(4))
    pids = transport.worker_pids()
    assert len(pids) == 2
    assert all(psutil.pid_exists(p) for p in pids)
    transport.close()
    transport.close()  # idempotent
    assert _gone(pids)
    assert transport.worker_pids() == []


def _dying_site() -> SiteRecipe:
    """A site whose loader ends its worker process at once (as an OOM kill would)."""
    return SiteRecipe(node_id="site-dies", load_data=functools.partial(os._exit, 3))


@pytest.mark.slow
def test_a_worker_that_dies_mid_round_silences_its_sites_without_a_hang() -> None:
    # Dealt round-robin to 2 workers: worker 0 hosts site-0000, site-0002 and site-dies
    # (answered in that order), worker 1 hosts site-0001 and site-0003.
    recipes = [*logistic_recipes(4, seed=2), _dying_site()]
    transport = make_backend("processes", workers=2).transport(recipes)
    with transport:
        result = run_logistic(transport, rounds=2)
        alive = [n.node_id for n in transport.available_nodes()]
    first, second = result.history
    assert first.num_replies == 4  # the dead worker's replies sent before it died count
    assert first.failed is None
    assert second.failed is None
    assert second.num_replies == 2
    assert alive == ["site-0001", "site-0003"]
    died = [e.message for e in result.events if e.node_id == "site-dies"]
    assert any("exited with code 3" in m for m in died), died


@pytest.mark.slow
def test_a_killed_worker_is_noticed_without_a_hang() -> None:
    transport = make_backend("processes", workers=2).transport(logistic_recipes(4, seed=2))
    with transport:
        victim = transport.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        result = run_logistic(transport, rounds=2)
        # worker 1's sites either errored in round 1 or had already left the federation
        assert result.history[-1].num_replies == 2
        assert [n.node_id for n in transport.available_nodes()] == ["site-0000", "site-0002"]


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_actors_give_the_in_process_model(ray_instance: Any, reference: RunResult) -> None:
    backend: Backend = RayBackend(workers=2, batch=2)  # small batches: several calls per actor
    transport = backend.transport(logistic_recipes(7, seed=5))
    with transport:
        result = run_logistic(transport, rounds=2)
    assert _same(result.parameters, reference.parameters)
    assert _summary(result) == _summary(reference)
    assert ray_instance.is_initialized()  # the backend leaves a Ray it did not start running


@pytest.mark.slow
def test_a_ray_actor_that_dies_silences_its_sites_and_close_stops_the_rest(
    ray_instance: Any,
) -> None:
    recipes = [*logistic_recipes(4, seed=2), _dying_site()]
    transport = make_backend("ray", workers=2).transport(recipes)
    pids = transport.worker_pids()  # type: ignore[attr-defined]
    assert len(pids) == 2
    with transport:
        result = run_logistic(transport, rounds=2)
        alive = [n.node_id for n in transport.available_nodes()]
    # The dying site shares its actor's batch with site-0000 and site-0002: the whole call
    # fails, so only worker 1's sites answer (from round 1 on), and nothing hangs.
    assert [r.num_replies for r in result.history] == [2, 2]
    assert alive == ["site-0001", "site-0003"]
    assert any("Ray actor 0 failed" in e.message for e in result.events)
    wait_for(lambda: _gone(pids), timeout=60, what="the Ray actors' processes to exit")

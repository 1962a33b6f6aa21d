"""Bundle code runs in a limited worker process; every failure is a TaskError, never a crash."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from biofed.core import Instruction, MessageKind, TaskError
from biofed.data import Dataset, SiteData
from biofed.governance._bundle import Bundle
from biofed.node import SiteNode
from biofed.node._sandbox import BundleRunner
from biofed.tasks import CoxPHTask, TrainContext

COX = """
from biofed.tasks import CoxPHTask


def make_task(num_features):
    return CoxPHTask(num_features=num_features)
"""

_MiB = 1024**2


def _data(n: int = 40) -> SiteData:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    time = rng.exponential(10, n) * np.exp(-x[:, 0])
    event = (rng.random(n) < 0.7).astype(float)

    def ds(name: str, rows: slice) -> Dataset:
        return Dataset(
            name=name,
            features=x[rows],
            feature_names=("a", "b", "c"),
            targets={"event": event[rows], "time": time[rows]},
        )

    return SiteData(train=ds("tr", slice(0, 30)), test=ds("te", slice(30, n)))


def _runner(tmp_path: Path, body: str, **kwargs: object) -> BundleRunner:
    """A runner for a bundle whose task.py is CoxPHTask with ``body`` replacing train."""
    source = COX if not body else COX + textwrap.dedent(body)
    bundle = Bundle.from_files({"task.py": source.encode()})
    kwargs.setdefault("wall_time_s", 20)
    kwargs.setdefault("memory_bytes", 512 * _MiB)
    return BundleRunner(
        bundle,
        options={"num_features": 3},
        workdir=tmp_path,
        **kwargs,  # type: ignore[arg-type]
    )


def _params() -> object:
    return CoxPHTask(num_features=3).init_parameters(np.random.default_rng(0))


def test_cox_bundle_matches_in_process(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "")
    data = _data()
    config = {"local_steps": 5, "batch_size": 4, "learning_rate": 0.1}
    params = runner.init_parameters(np.random.default_rng(1))
    assert params == CoxPHTask(num_features=3).init_parameters(np.random.default_rng(1))
    ours_rng, ref_rng = np.random.default_rng(7), np.random.default_rng(7)
    ours = runner.train(params, data.train, TrainContext(config=config, rng=ours_rng))
    ref = CoxPHTask(num_features=3).train(
        params, data.train, TrainContext(config=config, rng=ref_rng)
    )
    assert ours.parameters == ref.parameters
    assert ours.num_examples == ref.num_examples == 30
    assert ours.metrics == ref.metrics
    assert ours_rng.bit_generator.state == ref_rng.bit_generator.state  # rng advanced alike
    assert not any(tmp_path.iterdir())  # each call's folder is removed


def test_site_node_uses_runner_unchanged(tmp_path: Path) -> None:
    data = _data()
    node = SiteNode("site-a", _runner(tmp_path, ""), data)
    ref = SiteNode("site-a", CoxPHTask(num_features=3), data)
    inst = Instruction(
        run_id="run",
        round=2,
        node_id="site-a",
        kind=MessageKind.EVALUATE,
        parameters=_params(),  # type: ignore[arg-type]
        config={"seed": 7},
    )
    reply = node.handle(inst)
    assert reply.error is None or reply.error == ""
    assert reply.metrics == ref.handle(inst).metrics


def test_memory_limit(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            import numpy as np
            blob = np.ones(2 * 1024**3, dtype=np.uint8)
            return CoxPHTask(num_features=int(blob[0]) * num_features)
        """,
        memory_bytes=256 * _MiB,
    )
    with pytest.raises(TaskError, match="exceeded its memory limit of 256 MiB"):
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]


def test_wall_time_limit(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            import time
            time.sleep(60)
        """,
        wall_time_s=1.5,
    )
    with pytest.raises(TaskError, match=r"ran past its wall-time limit of 1\.5 s"):
        runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ("{'weight': np.zeros((1, 4), np.float32), 'bias': p['bias']}", "shape"),
        ("{'weight': np.full((1, 3), np.nan, np.float32), 'bias': p['bias']}", "NaN"),
        ("{**p, 'smuggled': np.arange(10.0)}", "names do not match"),
    ],
)
def test_bad_outputs(tmp_path: Path, update: str, match: str) -> None:
    body = f"""
    import numpy as np
    from biofed.tasks import TrainResult

    class Bad(CoxPHTask):
        def train(self, p, data, ctx):
            return TrainResult(parameters={update}, num_examples=len(data))

    def make_task(num_features):
        return Bad(num_features=num_features)
    """
    runner = _runner(tmp_path, body)
    with pytest.raises(TaskError, match=match):
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]


def test_exception_in_task_code_stays_local(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            raise ValueError("patient 1234 has age 97")
        """,
    )
    with pytest.raises(TaskError, match="raised ValueError") as info:
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert "1234" not in str(info.value)
    assert runner.last_failure is not None
    assert "1234" in runner.last_failure


def test_worker_cannot_find_or_read_node_key(tmp_path: Path) -> None:
    key = tmp_path / "node" / "node.key"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY----- secret")
    body = f"""
    import os, socket, sys
    from biofed.tasks import EvalResult
    KEY = {str(key)!r}

    class Probe(CoxPHTask):
        def evaluate(self, p, data, ctx):
            seen = " ".join([*os.environ.values(), *os.environ, os.getcwd(), *sys.argv])
            for root, dirs, files in os.walk("."):
                seen += " ".join([root, *dirs, *files])
            try:
                with open(KEY) as handle:
                    readable = float("secret" in handle.read())
            except OSError:
                readable = 0.0
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1).close()
                net = 1.0
            except PermissionError:
                net = 0.0
            except OSError:
                net = 0.5  # refused: the connect call itself was allowed
            return EvalResult(num_examples=len(data), metrics={{
                "key_path_seen": float(KEY in seen or os.path.dirname(KEY) in seen),
                "key_readable": readable,
                "net": net,
                "env_size": float(len(os.environ)),
            }})

    def make_task(num_features):
        return Probe(num_features=num_features)
    """
    runner = _runner(tmp_path / "work", body)
    (tmp_path / "work").mkdir()
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert result.metrics["key_path_seen"] == 0.0
    assert result.metrics["env_size"] <= 8
    if (runner.last_confinement or "").startswith("landlock"):
        assert result.metrics["key_readable"] == 0.0
        assert result.metrics["net"] == 0.0
    else:  # honest residual risk: without Landlock an absolute path can still be opened
        pytest.skip(f"no Landlock here ({runner.last_confinement}); key readable by path")


def test_require_landlock_runs_where_the_kernel_has_it(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "", require_landlock=True)
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert (runner.last_confinement or "").startswith("landlock")
    assert result.num_examples == 30

"""Sample-level DP only where ε is a guarantee: a governed node reads the approved bundle's
``dp_record_coupling`` in its sandbox, refuses a task that declares none (audited as a
refusal), labels an exact one, and scales the noise of a bounded one by its factor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The governed site of the governance tests: kits, agreement, registry, approvals, audit log.
from test_node_governance import AGREEMENT, SIGNERS, Site

from biofed.core import Instruction, MessageKind
from biofed.governance import OutputPolicy, PrivacyRequirements, pack_bundle
from biofed.identity import Consortium, Kit, load_kit

pytestmark = pytest.mark.torch

TASK_PY = """
import torch
from biofed.tasks import TorchTask


def _loss(out, targets):
    # a mean of per-record terms: each record's event, predicted from its own features
    return torch.nn.functional.binary_cross_entropy_with_logits(
        out.squeeze(-1), targets["event"].float()
    )


class EventTask(TorchTask):
    dp_record_coupling = "{coupling}"

    def dp_sensitivity_factor(self, batch_size):
        return 3.0


def make_task(num_features):
    return EventTask(lambda: torch.nn.Linear(num_features, 1), _loss, name="event")
"""

DP = PrivacyRequirements(
    dp_required=True, max_epsilon={"a": 8.0, "b": 8.0}, max_delta={"a": 1e-5, "b": 1e-5}
)


def _bundle(tmp: Path, coupling: str) -> tuple[str, Path]:
    root = tmp / f"bundle-{coupling}"
    (root / "task").mkdir(parents=True)
    (root / "task" / "task.py").write_text(TASK_PY.replace("{coupling}", coupling))
    info = pack_bundle(root / "task", root / "b.zip")
    return info.digest, root / "b.zip"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return folder


@pytest.fixture(scope="module")
def kits(fed: Path) -> dict[str, Kit]:
    return {name: load_kit(fed / name) for name in SIGNERS}


@pytest.fixture
def make_site(tmp_path: Path, fed: Path, kits: dict[str, Kit]) -> Any:
    """A governed site whose approved bundle declares the given record coupling."""
    pytest.importorskip("opacus")
    (fed / "a" / "privacy.db").unlink(missing_ok=True)  # the kit folder is shared

    def make(coupling: str) -> Site:
        bundle = _bundle(tmp_path, coupling)
        (tmp_path / "site").mkdir()
        site = Site(tmp_path / "site", fed, kits, bundle)
        toml = site.root / "node.toml"
        toml.write_text(toml.read_text() + "\n[privacy.caps.brca]\nepsilon = 50.0\ndelta = 1e-3\n")
        return site

    yield make
    (fed / "a" / "privacy.db").unlink(missing_ok=True)


def _params() -> Any:
    import torch

    from biofed.tasks import TorchTask

    task = TorchTask(lambda: torch.nn.Linear(39, 1), lambda o, t: o.sum(), name="event")
    return task.init_parameters(np.random.default_rng(0))


def _sample_inst(site: Site) -> Instruction:
    from biofed.privacy import DPSettings

    table = {"mode": "sample", "delta": 1e-5, "target_epsilon": 4.0, "max_grad_norm": 1.0}
    dp = DPSettings.from_table(table, rounds=2, min_replies=1)
    config: dict[str, Any] = {
        "seed": 1,
        "local_steps": 2,
        "batch_size": 16,
        "learning_rate": 0.1,
        "task": "event",
        "dataset": "brca",
        "task.num_features": 39,
        "agreement": AGREEMENT,
        "bundle": site.digest,
        **dp.to_config(),
    }
    return Instruction(
        run_id="run-1",
        round=1,
        node_id="a",
        kind=MessageKind.TRAIN,
        parameters=_params(),
        config=config,
    )


def _ledger(site: Site) -> Any:
    from biofed.governance._ledger import PrivacyLedger

    return PrivacyLedger(site.fed / "a" / "privacy.db")


@pytest.mark.slow
@pytest.mark.parametrize("coupling", ["none", "independent", "bounded"])
def test_the_node_runs_sample_dp_only_where_epsilon_is_a_guarantee(
    make_site: Any, coupling: str
) -> None:
    from biofed.privacy import calibrate_noise

    site = make_site(coupling)
    # exact guarantees required (the agreement's default); the task's z may leave, to check
    outputs = OutputPolicy(metrics=("c_index", "dp_noise_multiplier"), per_site_metrics=True)
    site.setup(privacy=DP, outputs=outputs)
    reply = site.app().handle(_sample_inst(site))
    events = site.events()
    names = [e["event"] for e in events]
    if coupling == "none":
        assert reply.error is not None
        assert reply.error.startswith("policy: privacy: sample-level DP refused"), reply.error
        assert "no exact guarantee and no per-record sensitivity bound" in reply.error
        refused = next(e for e in events if e["event"] == "job.refused")["data"]
        assert refused["rule"] == reply.error.removeprefix("policy: ")
        assert "job.accepted" not in names
        assert "budget.debited" not in names  # nothing spent, nothing ran
        assert _ledger(site).spent("brca").jobs == ()
        return
    assert reply.ok, reply.error
    q = 16 / 156
    z = calibrate_noise(4.0, 1e-5, q, 2 * 2, "rdp")
    factor = 3.0 if coupling == "bounded" else 1.0
    # the task ran DP-SGD with the noise scaled by the declared sensitivity factor ...
    assert reply.metrics["dp_noise_multiplier"] == pytest.approx(z * factor)
    # ... while the accountant counts z (noise in units of the sensitivity factor·C)
    (mechanism,) = _ledger(site).mechanisms("brca", "run-1").values()
    recorded = json.loads(mechanism)
    assert recorded["noise_multiplier"] == pytest.approx(z)
    assert recorded["sensitivity"] == factor
    label = "exact" if coupling == "independent" else "bounded"
    assert recorded["guarantee"] == label
    debited = next(e for e in events if e["event"] == "budget.debited")["data"]
    assert debited["guarantee"] == label
    assert "each site adds its own noise" in debited["trust"]
    sent = next(e for e in events if e["event"] == "round.sent")["data"]
    assert sent["dp_guarantee"] == label
    assert _ledger(site).spent("brca").jobs[0].guarantee == label
    from biofed.privacy import GUARANTEE_METRIC, guarantee_label

    assert guarantee_label(reply.metrics[GUARANTEE_METRIC]) == label


@pytest.mark.slow
def test_an_agreement_that_accepts_heuristic_figures_runs_them_labelled(make_site: Any) -> None:
    site = make_site("none")
    site.setup(privacy=dataclasses.replace(DP, exact_guarantees_required=False))
    reply = site.app().handle(_sample_inst(site))
    assert reply.ok, reply.error
    debited = next(e for e in site.events() if e["event"] == "budget.debited")["data"]
    assert debited["guarantee"] == "heuristic"
    assert _ledger(site).spent("brca").jobs[0].guarantee == "heuristic"

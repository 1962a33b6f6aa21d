"""What researchers see of a run's privacy: the guarantee, each site's reported spend, and
(client mode) the ε of the noise really in each round's sum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biofed.coordinator import JobSpec
from biofed.coordinator._privacy_report import (
    PRIVACY_EVENT,
    client_level_epsilon,
    privacy_report,
    spend_message,
)
from biofed.coordinator._records import RoundRecord
from biofed.coordinator._store import EventRow
from biofed.core import MessageKind, NodeInfo, ParameterSet, Reply
from biofed.privacy import RdpAccountant

JOB = """
[run]
name = "j"
dataset = "d"
rounds = 3
min_nodes = 4
min_replies = 2
[task]
name = "cox_ph"
num_features = 3
[privacy]
mode = "client"
noise_multiplier = 1.5
delta = 1e-5
max_grad_norm = 1.0
noise = "distributed"
"""


def _event(seq: int, node: str, message: str) -> EventRow:
    return EventRow(
        run_id="r", seq=seq, time=0.0, round=seq, kind=PRIVACY_EVENT, message=message, node_id=node
    )


def test_each_sites_latest_reported_spend_is_shown() -> None:
    reply = Reply(
        run_id="r",
        round=1,
        node_id="a",
        kind=MessageKind.TRAIN,
        metrics={"dp.epsilon": 0.5, "dp.delta": 1e-5},
    )
    message = spend_message(reply)
    assert message is not None
    spec = JobSpec.from_toml(JOB)
    report = privacy_report(
        spec, [_event(1, "a", message), _event(2, "a", "epsilon=0.9 delta=1e-05")], []
    )
    assert report is not None
    # a figure without a label (an older node) is never shown as a guarantee
    assert report["sites"]["a"] == {
        "epsilon": 0.9,
        "delta": 1e-5,
        "round": 2.0,
        "guarantee": "unlabelled",
    }
    assert report["label"] == "unlabelled"
    assert report["guarantee"]["noise"] == "distributed"
    assert spend_message(Reply(run_id="r", round=1, node_id="a", kind=MessageKind.TRAIN)) is None


def test_distributed_shares_sum_to_sigma_and_accounting_follows_actual_replies() -> None:
    """Four sites planned, each adds σC/√4; with all four the sum carries σC; when only two
    reply, the sum carries σC/√2 and the reported ε is that of the weaker noise."""
    spec = JobSpec.from_toml(JOB)
    strategy = spec.build_strategy()
    params = ParameterSet({"w": np.zeros(3, dtype=np.float32)})
    state = strategy.init_state(params)
    nodes = [NodeInfo(node_id=f"n{i}", num_examples=10) for i in range(4)]
    plans = strategy.configure_train(1, params, state, nodes, np.random.default_rng(0))
    shares = [float(p.config["dp.noise_std_share"]) for p in plans]
    assert math.sqrt(sum(s * s for s in shares)) == pytest.approx(1.5 * 1.0)

    def record(rnd: int, replies: int) -> RoundRecord:
        std = shares[0] * math.sqrt(replies)
        return RoundRecord(
            round=rnd,
            num_selected=4,
            num_replies=replies,
            num_rejected=4 - replies,
            train_metrics={"dp.noise_std": std, "dp.clip_norm": 1.0},
        )

    full = client_level_epsilon(spec, [record(1, 4), record(2, 4)])
    partial = client_level_epsilon(spec, [record(1, 4), record(2, 2)])
    planned = RdpAccountant()
    planned.step(1.5, 1.0, 2)
    assert full == pytest.approx(planned.epsilon(1e-5))
    actual = RdpAccountant()
    actual.step(1.5, 1.0, 1)
    actual.step(1.5 / math.sqrt(2), 1.0, 1)
    assert partial == pytest.approx(actual.epsilon(1e-5))
    assert partial is not None
    assert full is not None
    assert partial > full


def test_every_figure_is_labelled_with_what_it_is_and_what_it_rests_on() -> None:
    from biofed.privacy import GUARANTEE_METRIC, guarantee_code

    spec = JobSpec.from_toml(JOB)

    def message(label: str) -> str:
        reply = Reply(
            run_id="r",
            round=1,
            node_id="a",
            kind=MessageKind.TRAIN,
            metrics={"dp.epsilon": 0.5, "dp.delta": 1e-5, GUARANTEE_METRIC: guarantee_code(label)},
        )
        text = spend_message(reply)
        assert text is not None
        return text

    report = privacy_report(spec, [_event(1, "a", message("exact"))], [])
    assert report is not None
    assert report["sites"]["a"]["guarantee"] == "exact"
    assert report["label"] == "exact"
    # distributed noise counted from min_replies = 2: the figure rests on 2 honest sites
    assert report["trust"] == "rests on at least 2 honest sites adding their noise share"
    assert "evaluation metrics on test splits" in report["not_covered"]
    mixed = privacy_report(
        spec, [_event(1, "a", message("exact")), _event(1, "b", message("heuristic"))], []
    )
    assert mixed is not None
    assert mixed["label"] == "heuristic"  # a run is only as good as its weakest figure
    central = JobSpec.from_toml(JOB.replace('noise = "distributed"', 'noise = "central"'))
    central_report = privacy_report(central, [], [])
    assert central_report is not None
    assert central_report["trust"] == "trusts the coordinator to add the noise"
    assert "label" not in central_report  # no figure yet, no label


def test_the_cli_prints_each_label() -> None:
    from rich.console import Console

    from biofed.cli._render import print_privacy

    spec = JobSpec.from_toml(JOB)
    report = privacy_report(
        spec,
        [_event(1, "a", "epsilon=0.5 delta=1e-05 guarantee=heuristic")],
        [],
    )
    assert report is not None
    console = Console(record=True, width=200)
    print_privacy(console, report)
    text = console.export_text()
    assert "heuristic — not a guarantee" in text
    assert "rests on at least 2 honest sites" in text
    assert "not covered by ε" in text

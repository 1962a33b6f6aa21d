"""The round progress bar counts sites in plain and in secure rounds (a SecAgg+ round is four
stages per site, each a quarter of the site's round)."""

from __future__ import annotations

import io

from rich.console import Console

from biofed.cli._render import RoundProgress
from biofed.core import MessageKind, Reply


def _completed(kind: MessageKind, replies_per_site: int) -> float:
    progress = RoundProgress(Console(file=io.StringIO()), rounds=1, metric="c_index")
    with progress:
        progress.on_round_start(1, 3)
        for _ in range(replies_per_site):
            for site in ("a", "b"):
                reply = Reply(run_id="r", round=1, node_id=site, kind=kind)
                progress.on_reply(1, reply, accepted=True)
        return progress._progress.tasks[0].completed


def test_plain_round_counts_each_training_reply() -> None:
    assert _completed(MessageKind.TRAIN, 1) == 2


def test_secure_round_counts_a_site_once_its_four_stages_are_in() -> None:
    assert _completed(MessageKind.SECAGG, 4) == 2
    assert _completed(MessageKind.SECAGG, 2) == 1  # halfway through for both sites


def test_evaluation_replies_do_not_count() -> None:
    assert _completed(MessageKind.EVALUATE, 1) == 0

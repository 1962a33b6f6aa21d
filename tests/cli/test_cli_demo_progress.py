"""The per-round progress (``biofed demo``'s and ``biofed simulate``'s) at 80 columns: the bar
keeps its width and the elapsed time is whole; a long status wraps under itself instead
(Rich's default layout shrank the bar to 3 characters and the time to ``0:…``)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from biofed.cli._render import PROGRESS_BAR_WIDTH, RoundProgress, round_progress

STATUSES = [
    "training",
    "secure sum of 6 · C-index 0.7712",
    "train loss 0.1234 · c_index 0.7712",
    "reply_rejected: center-3 sent an update whose norm exceeds the agreed clip range",
]


def _lines(console: Console, progress_table: object) -> list[str]:
    console.print(progress_table)
    return console.export_text().splitlines()


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("unit", ["sites", "sites replied"])
def test_the_bar_and_the_elapsed_time_keep_their_width_at_80_columns(
    status: str, unit: str
) -> None:
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    progress = round_progress(console, unit=unit)
    task = progress.add_task("round", total=6, round=10, rounds=10, status=status)
    progress.update(task, completed=3)
    lines = _lines(console, progress.make_tasks_table(progress.tasks))
    assert all(len(line) <= 80 for line in lines), lines
    first = lines[0]
    assert first.startswith("round 10/10 ")
    bar = first[len("round 10/10 ") : first.index(" 3/6 ")]
    assert len(bar) == PROGRESS_BAR_WIDTH, first
    assert bar.startswith("━" * (PROGRESS_BAR_WIDTH // 2)), first  # half done
    assert f"3/6 {unit} 0:00:00" in first, first
    assert "…" not in "".join(lines)
    # the status is all there, wrapped if it must be
    assert " ".join(" ".join(lines).split()).endswith(" ".join(status.split()))


def test_the_simulation_progress_uses_the_same_layout() -> None:
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    listener = RoundProgress(console, rounds=3, metric="c_index")
    listener.on_round_start(1, 6)
    progress = listener._progress
    progress.update(progress.tasks[0].id, status=STATUSES[2])
    lines = _lines(console, progress.make_tasks_table(progress.tasks))
    assert len(lines[0][len("round 1/3 ") : lines[0].index(" 0/6 ")]) == PROGRESS_BAR_WIDTH
    assert lines[0].rstrip().endswith("0:00:00 train loss 0.1234 · c_index 0.7712")

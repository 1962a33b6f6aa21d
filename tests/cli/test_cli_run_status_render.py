"""`biofed run status` says failed rounds first, names the new states, and why a run waits."""

from __future__ import annotations

import io

from rich.console import Console

from biofed.cli._render import rounds_text, run_headline, status_text


def _plain(markup: str) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None).print(markup, highlight=False)
    return buffer.getvalue().strip()


def test_failed_rounds_come_first() -> None:
    summary = {"rounds": {"completed": 7, "failed": 3}, "waiting": "ignored once rounds ran"}
    assert (
        _plain(run_headline(summary, 10, 12) or "") == "3 of 10 rounds failed, 7 completed (of 12)"
    )
    assert _plain(rounds_text(summary, 10, 12)) == "3 failed · 10/12"


def test_rounds_without_failures_and_waiting_reasons() -> None:
    assert _plain(rounds_text({"rounds": {"completed": 4, "failed": 0}}, 4, 4)) == "4/4"
    assert run_headline({"rounds": {"completed": 4, "failed": 0}}, 4, 4) is None
    waiting = {"waiting": "no connected site offers dataset 'x' (1 sites connected)"}
    assert _plain(run_headline(waiting, 0, 3) or "") == (
        "waiting: no connected site offers dataset 'x' (1 sites connected)"
    )


def test_every_state_has_a_label() -> None:
    for status, label in [
        ("finished", "finished"),
        ("finished_with_failures", "finished with failures"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("running", "running"),
        ("pending", "pending"),
    ]:
        assert _plain(status_text(status)) == label

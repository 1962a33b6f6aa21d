"""``biofed run contributions RUN --kit KIT``: a run's measured contributions, read through
the real control API over mutual TLS, as a table that fits 80 columns, as JSON, and as a
bar chart; a researcher who cannot see the run cannot read them either (issue 17)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.contribution import (
    CONTRIBUTION_EVENT,
    CONTRIBUTIONS_EVENT,
    ContributionLedger,
    Contributions,
    incentive_outcome,
    run_record,
)
from biofed.coordinator import JobSpec, serve_coordinator
from biofed.governance import IncentivePolicy
from biofed.identity import Consortium

runner = CliRunner(env={"COLUMNS": "80"})
POLICY = IncentivePolicy(measure="shapley", min_share=0.05, below_min="delayed", delay_days=30)
SITES = [f"center-{i}" for i in range(6)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _round(server_round: int) -> Contributions:
    values = {s: 0.01 * (i + 1) * server_round for i, s in enumerate(SITES)}
    values["center-3"] = 0.0
    values["center-5"] = -0.02
    return Contributions(
        method="shapley",
        values=values,
        total=sum(values.values()),
        baseline=0.5,
        evaluations=32,
        seconds=0.01,
        server_round=server_round,
        free_riders=("center-3",),
    )


def _round_event(server_round: int) -> str:
    return json.dumps(
        {"contributions": _round(server_round).to_dict(), "coalitions": [], "excluded": []}
    )


def test_contributions_of_a_run_in_a_table_json_and_a_chart(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    consortium = Consortium.create(
        tmp_path / "consortium",
        consortium="credit",
        coordinator=address,
        sites=["site-a"],
        researchers=["alice", "bob"],
    )
    running = serve_coordinator(
        consortium.kit_directory("coordinator"),
        listen=address,
        state=f"sqlite:///{tmp_path / 'state.db'}",
        node_wait=600.0,
    )
    try:
        job = JobSpec.from_mapping(
            {
                "run": {"name": "t", "dataset": "ds", "rounds": 3, "seed": 1},
                "task": {"name": "cox_ph", "num_features": 3},
            }
        )
        from biofed.coordinator import tls_of
        from biofed.identity import load_kit
        from biofed.transport.grpc import ControlClient

        alice = consortium.kit_directory("alice")
        with ControlClient(address, tls_of(load_kit(alice))) as client:
            run_id = client.submit_run(job.to_json()).run_id
        args = ["run", "contributions", run_id, "--kit", str(alice)]
        missing = runner.invoke(app, args)
        assert missing.exit_code == 2
        assert "has no measured contributions" in missing.output
        for r in (1, 2):  # rounds measured so far: a partial ledger
            running.store.append_event(
                run_id, round=r, kind=CONTRIBUTION_EVENT, message=_round_event(r)
            )
        partial = runner.invoke(app, args)
        assert partial.exit_code == 0, partial.output
        assert "has not ended" in partial.stdout
        ledger = ContributionLedger()
        for r in (1, 2, 3):
            ledger = ledger.add(_round(r))
        running.store.append_event(
            run_id,
            round=3,
            kind=CONTRIBUTIONS_EVENT,
            message=run_record(
                ledger,
                {},
                {},
                outcome=json.loads(incentive_outcome(POLICY, ledger, rounds=3).to_json()),
            ),
        )
        table = runner.invoke(app, [*args, "--chart", str(tmp_path / "c.png")])
        assert table.exit_code == 0, table.output
        lines = table.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        contributed = lines[: next(i for i, t in enumerate(lines) if "incentive outcome" in t)]
        rows = [line for line in contributed if "center-" in line]
        assert [r.split()[1] for r in rows] == [  # by total, largest first
            "center-4",
            "center-2",
            "center-1",
            "center-0",
            "center-3",
            "center-5",
        ]
        assert "free-rider 3/3" in next(r for r in rows if "center-3" in r)
        assert "+0.3000" in next(r for r in rows if "center-4" in r)  # 0.05·(1+2+3)
        assert "has not ended" not in table.stdout
        assert "96 coalition evaluations" in table.stdout
        policy = table.stdout[table.stdout.index("incentive outcome") :]
        rider = next(line for line in policy.splitlines() if "center-3" in line)
        assert "0.0%" in rider
        assert "delayed 30 d" in rider
        assert "free-rider" in rider
        assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
        data = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
        assert data["run_id"] == run_id
        assert data["partial"] is False
        assert data["ledger"]["totals"]["center-4"] == pytest.approx(0.3)
        assert data["shares"]["center-5"] == 0.0
        assert sorted(data["rounds"]) == ["1", "2"]  # the per-round records, coalitions too
        assert data["rounds"]["2"]["contributions"]["server_round"] == 2
        assert sum(data["shares"].values()) == pytest.approx(1.0)
        # bob is a researcher of the consortium, not of this run
        bob = ["run", "contributions", run_id, "--kit", str(consortium.kit_directory("bob"))]
        denied = runner.invoke(app, bob)
        assert denied.exit_code != 0
        assert "no run with that id is visible to you" in denied.output
        assert "center-" not in denied.output
    finally:
        running.stop()

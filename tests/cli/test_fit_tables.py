"""Every table the CLI prints keeps ids, digests and numbers whole at 80 columns (issue 16).

A run id of 128 characters, 64-hex digests and long site names go through every command
that prints a table: the real command where it runs without a coordinator (provision,
agreements, datasets, bundles, approvals, analyses, reports), else the command's rendering
function fed with the records the coordinator or the simulation returns. Each output must have
no line over 80 columns, no ``…`` and every id whole: on one line, or folded onto the next
lines of the stacked layout (checked by joining the lines with their padding and box
characters removed). The first test lists the app's commands: a new command must say here
whether it prints a table, and get a case if it does.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import typer
from rich.console import Console, RenderableType
from rich.table import Table
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._audit import reconcile_view
from biofed.cli._budget import budget_view
from biofed.cli._contributions import contributions_table, outcome_table
from biofed.cli._output import fit
from biofed.cli._run import status_view
from biofed.cli._simulate import simulate_view
from biofed.cli._sites import sites_table
from biofed.contribution import ContributionLedger, Contributions, incentive_outcome
from biofed.governance import (
    BudgetStatus,
    IncentivePolicy,
    JobSpend,
    Pairing,
    ReconcileReport,
    Transfer,
)
from biofed.simulation import MethodResult, SimulationReport
from biofed.transport.grpc import NodeSummary, RunSummary

runner = CliRunner(env={"COLUMNS": "80"})
WIDTH = 80
RUN_ID = "tcga-brca-cox-" + "0123456789abcdef" * 7 + "fedcba9876"  # 128 characters
DIGEST = "9f" * 32
OTHER_DIGEST = "a0" * 32
SITES = [
    "university-hospital-oncology-centre-north",
    "regional-cancer-registry-south",
    "county-general-hospital-east",
]

#: Commands that print no table: a line or two (a path, a digest, a verdict), or a server.
NO_TABLE = {
    "agreement draft",
    "agreement sign",
    "agreement verify",
    "audit verify",
    "coordinator start",
    "dashboard link",
    "datasets eunomia-sites",
    "datasets export",
    "node approve",
    "node budget-cap",
    "node dashboard",
    "node dataset add",
    "node dataset remove",
    "node review",
    "node revoke",
    "node start",
    "privacy epsilon",
    "privacy noise",
    "provision revoke",
    "run cancel",
    "run logs",
    "run result",
    "run submit",
    "task pack",
}
#: Owned and tested elsewhere: the demo's screens (tests/cli/test_cli_demo*.py).
ELSEWHERE = {"demo"}


@functools.cache
def cli() -> Any:
    """The app as one click group, built once (building it costs a fraction of a second)."""
    return typer.main.get_command(app)


def commands() -> list[str]:
    def walk(command: Any, path: list[str]) -> list[str]:
        if hasattr(command, "commands"):
            found = []
            for name, sub in sorted(command.commands.items()):
                found += walk(sub, [*path, name])
            return found
        return [" ".join(path)]

    return walk(cli(), [])


def render(items: list[RenderableType]) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=WIDTH, color_system=None, highlight=False)
    for item in items:
        console.print(fit(item) if isinstance(item, Table) else item)
    return buffer.getvalue()


_BOX = "│┃║|┌┐└┘├┤┬┴┼━─═╇╈┡┩┏┓┗┛┣┫┳┻╋╭╮╰╯ "


def assert_whole(text: str, ids: list[str]) -> None:
    lines = text.splitlines()
    assert lines, "no output"
    too_long = [line for line in lines if len(line) > WIDTH]
    assert not too_long, too_long
    assert "…" not in text, text
    joined = "".join(line.strip(_BOX) for line in lines)
    for value in ids:
        assert any(value in line for line in lines) or value in joined, (value, text)


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code in (0, 1), result.output
    return str(result.stdout)


# -- fixtures: a real consortium, dataset, bundle and cohort ------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fit")
    fed = root / "a-consortium-folder-with-a-rather-long-name-for-its-path"
    sites = ",".join(SITES)
    outputs: dict[str, Any] = {"root": root, "fed": fed}
    outputs["provision init"] = invoke(
        "provision",
        "init",
        "--consortium",
        "fit",
        "--coordinator",
        "localhost",
        "--sites",
        sites,
        "--researchers",
        "alice",
        "--out",
        str(fed),
    )
    listed = json.loads(invoke("provision", "list", "--out", str(fed), "--format", "json"))
    outputs["fingerprints"] = [c["fingerprint"] for c in listed]
    cohort = root / "cohort.csv"
    with cohort.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pid", "hospital", "age", "bmi", "smoker", "sex", "y"])
        for i in range(300):
            writer.writerow(
                [i, SITES[i % 3], 40 + i % 37, 20 + i % 11, i % 4 == 0, i % 5 % 2, i % 7 < 3]
            )
    outputs["cohort"] = cohort
    node = fed / SITES[0]
    invoke(
        "node",
        "dataset",
        "add",
        "cohort-with-a-long-dataset-name",
        "--node-dir",
        str(node),
        "--path",
        str(cohort),
    )
    outputs["node"] = node
    task = root / "task"
    task.mkdir()
    (task / "task.py").write_text("def make_task():\n    return None\n")
    bundle = root / "task.bundle.zip"
    outputs["bundle_digest"] = json.loads(
        invoke("task", "pack", str(task), "--out", str(bundle), "--format", "json")
    )["digest"]
    outputs["bundle"] = bundle
    return outputs


# -- one case per table command: (output, ids that must be whole) -------------------------------


def _provision_init(w: dict[str, Any]) -> tuple[str, list[str]]:
    return w["provision init"], [*SITES, *w["fingerprints"]]


def _provision_list(w: dict[str, Any]) -> tuple[str, list[str]]:
    return invoke("provision", "list", "--out", str(w["fed"])), w["fingerprints"]


def _provision_add(role: str) -> Callable[[dict[str, Any]], tuple[str, list[str]]]:
    def case(w: dict[str, Any]) -> tuple[str, list[str]]:
        name = f"another-{role}-with-a-long-name-0123456789"
        text = invoke("provision", f"add-{role}", name, "--out", str(w["fed"]), "--replace")
        listed = json.loads(invoke("provision", "list", "--out", str(w["fed"]), "--format", "json"))
        prints = [c["fingerprint"] for c in listed if c["name"] == name and not c["revoked"]]
        return text, [name, str(w["fed"] / name), *prints]

    return case


def _agreement_show(w: dict[str, Any]) -> tuple[str, list[str]]:
    path = w["root"] / "agreement.toml"
    invoke(
        "agreement",
        "draft",
        "--out",
        str(path),
        "--title",
        "fit",
        "--consortium-dir",
        str(w["fed"]),
        "--sites",
        ",".join(SITES),
        "--expires",
        "2099-01-01",
        "--legal-basis",
        "consent",
        "--purpose",
        "testing",
        "--researchers",
        "alice",
        "--bundle",
        DIGEST,
        "--dataset",
        "cohort",
        "--force",
    )
    return invoke("agreement", "show", str(path)), [*SITES, DIGEST, *w["fingerprints"][:2]]


def _dataset_list(w: dict[str, Any]) -> tuple[str, list[str]]:
    data = json.loads(
        invoke("node", "dataset", "list", "--node-dir", str(w["node"]), "--format", "json")
    )
    text = invoke("node", "dataset", "list", "--node-dir", str(w["node"]))
    return text, [data[0]["sha256"], data[0]["name"], str(w["cohort"])]


def _dataset_show(w: dict[str, Any]) -> tuple[str, list[str]]:
    name = "cohort-with-a-long-dataset-name"
    data = json.loads(
        invoke("node", "dataset", "show", name, "--node-dir", str(w["node"]), "--format", "json")
    )
    return invoke("node", "dataset", "show", name, "--node-dir", str(w["node"])), [data["sha256"]]


def _dataset_check(w: dict[str, Any]) -> tuple[str, list[str]]:
    name = "cohort-with-a-long-dataset-name"
    return invoke("node", "dataset", "check", name, "--node-dir", str(w["node"])), [name]


def _task_show(w: dict[str, Any]) -> tuple[str, list[str]]:
    return invoke("task", "show", str(w["bundle"])), [w["bundle_digest"]]


def _node_approvals(w: dict[str, Any]) -> tuple[str, list[str]]:
    store = w["root"] / "approvals.json"
    for digest in (DIGEST, OTHER_DIGEST):
        invoke(
            "node",
            "approve",
            digest,
            "--store",
            str(store),
            "--by",
            "operator",
            "--note",
            "reviewed the diff against the last approved version",
        )
    return invoke("node", "approvals", "--store", str(store)), [DIGEST, OTHER_DIGEST]


def _datasets_list(w: dict[str, Any]) -> tuple[str, list[str]]:
    return invoke("datasets", "list"), ["tcga-brca"]


def _analyze(kind: str) -> Callable[[dict[str, Any]], tuple[str, list[str]]]:
    extra = {
        "count": [],
        "describe": ["--column", "age,bmi", "--bounds", "age=0,120", "--bounds", "bmi=0,60"],
        "quantile": ["--column", "age", "--probs", "0.25,0.5", "--bounds", "0,120"],
        "histogram": ["--column", "age", "--edges", "40,50,60,80"],
        "correlation": ["--column", "age,bmi"],
        "crosstab": [
            "--rows",
            "sex",
            "--row-levels",
            "0,1",
            "--cols",
            "age",
            "--col-edges",
            "0,50,100",
        ],
        "glm": ["--outcome", "y", "--covariate", "age", "--family", "binomial"],
        "km": ["--time", "age", "--event", "y"],
        "nelson-aalen": ["--time", "age", "--event", "y"],
        "logrank": ["--time", "age", "--event", "y", "--group", "sex", "--levels", "0,1"],
        "cox": ["--time", "age", "--event", "y", "--covariate", "bmi"],
    }[kind]

    def case(w: dict[str, Any]) -> tuple[str, list[str]]:
        data = ["--data", str(w["cohort"]), "--site-column", "hospital", "--min-cell", "1"]
        return invoke("analyze", kind, *data, *extra), []

    return case


def _report(w: dict[str, Any]) -> tuple[str, list[str]]:
    spec = w["root"] / "study.toml"
    spec.write_text(
        '[study]\nname = "fit"\nsource = "file"\ntest_fraction = 0.2\nseed = 1\n\n'
        '[columns]\nid = "pid"\nfeatures = ["age", "bmi", "smoker"]\n\n'
        '[outcome]\nkind = "binary"\nlabel = "y"\n'
    )
    text = invoke(
        "report",
        "heterogeneity",
        "--spec",
        str(spec),
        "--data",
        str(w["cohort"]),
        "--site-column",
        "hospital",
        "--min-cell",
        "5",
    )
    return text, SITES


def _run_status(w: dict[str, Any]) -> tuple[str, list[str]]:
    summary = {
        "rounds": {"completed": 3, "failed": 1},
        "problems": [{"round": 2, "node": SITES[1], "kind": "timeout", "message": "no reply"}],
        "evaluation": {
            "metrics": {"c_index": 0.71234},
            "sites": {s: {"c_index": 0.7, "loss": 1.25} for s in SITES},
        },
        "privacy": {
            "guarantee": {"mode": "record", "target_epsilon": 1.0, "delta": 1e-5},
            "sites": {
                s: {"epsilon": 0.98765, "delta": 1e-5, "round": 4, "guarantee": "exact"}
                for s in SITES
            },
        },
    }
    run = RunSummary(
        run_id=RUN_ID,
        status="finished_with_failures",
        owner="alice-the-researcher",
        completed_rounds=4,
        total_rounds=4,
        error="",
        summary_json=json.dumps(summary),
    )
    text = render(status_view([run], one=True)) + render(status_view([run, run], one=False))
    return text, [RUN_ID, *SITES, "0.7123"]


def _sites(w: dict[str, Any]) -> tuple[str, list[str]]:
    props = json.dumps({"dataset.cohort-with-a-long-dataset-name.examples": 123456})
    nodes = [
        NodeSummary(node_id=s, status="online", last_seen=1.7e9, properties_json=props)
        for s in SITES
    ]
    return render([sites_table(nodes, 1.7e9 + 5)]), [*SITES, "123456"]


def _audit_reconcile(w: dict[str, Any]) -> tuple[str, list[str]]:
    def transfer(site: str, digest: str, seq: int) -> Transfer:
        return Transfer(
            run_id=RUN_ID,
            round=12,
            node_id=site,
            kind="train",
            payload_sha256=digest,
            bytes=123456,
            seq=seq,
        )

    report = ReconcileReport(
        coordinator="coordinator",
        nodes=tuple(SITES),
        matched=(
            Pairing(
                sent=transfer(SITES[0], DIGEST, 3),
                received=transfer(SITES[0], DIGEST, 9),
                differs=(),
            ),
        ),
        mismatched=(
            Pairing(
                sent=transfer(SITES[1], DIGEST, 4),
                received=transfer(SITES[1], OTHER_DIGEST, 10),
                differs=("payload_sha256",),
            ),
        ),
        sent_not_received=(transfer(SITES[1], OTHER_DIGEST, 5),),
        received_not_sent=(),
        invalid=(),
        unchecked_nodes=(),
    )
    return render(reconcile_view(report)), [RUN_ID, DIGEST, OTHER_DIGEST, *SITES[:2], "12"]


def _budget(w: dict[str, Any]) -> tuple[str, list[str]]:
    job = JobSpend(
        run_id=RUN_ID, epsilon=0.987654, delta=1e-6, rounds=12, last_round=12, guarantee="exact"
    )
    status = BudgetStatus(
        dataset="cohort-with-a-long-dataset-name",
        cap_epsilon=8.0,
        cap_delta=1e-5,
        spent_epsilon=0.987654,
        spent_delta=1e-6,
        remaining_epsilon=7.012346,
        remaining_delta=9e-6,
        jobs=(job,),
    )
    return render(budget_view([status])), [RUN_ID, "0.987654", "7.01235"]


def _ledger() -> ContributionLedger:
    ledger = ContributionLedger()
    for r in range(1, 4):
        values = {s: 0.0123 * (i + 1) * r for i, s in enumerate(SITES)}
        ledger = ledger.add(
            Contributions(
                method="shapley",
                values=values,
                total=sum(values.values()),
                baseline=0.5,
                evaluations=4,
                seconds=0.01,
                server_round=r,
            )
        )
    return ledger


def _contributions(w: dict[str, Any]) -> tuple[str, list[str]]:
    ledger = _ledger()
    policy = IncentivePolicy(measure="shapley", min_share=0.05, below_min="delayed", delay_days=30)
    outcome = incentive_outcome(policy, ledger, rounds=3)
    return render(
        [contributions_table(ledger, title=f"contributions to {RUN_ID}"), outcome_table(outcome)]
    ), SITES


def _simulate(w: dict[str, Any]) -> tuple[str, list[str]]:
    metrics = dict(zip(SITES, (0.61234, 0.65432, 0.7), strict=True))
    report = SimulationReport(
        dataset="cohort",
        task="logistic_regression",
        metric="auc",
        strategy="fedavg",
        seed=1,
        settings={},
        federated=MethodResult(
            method="federated fedavg",
            site_metrics=metrics,
            mean_site_metric=0.63333,
            pooled_metric=0.64444,
        ),
        baselines=tuple(
            MethodResult(
                method=f"local:{s}", site_metrics=metrics, mean_site_metric=0.6, pooled_metric=0.6
            )
            for s in SITES
        ),
        privacy={
            "guarantee": {"mode": "record", "target_epsilon": 1.0, "delta": 1e-5},
            "sites": {s: {"epsilon": 0.98765, "delta": 1e-5, "round": 5} for s in SITES},
        },
    )
    return render(simulate_view(report)), [*SITES, "0.6333", "0.6444"]


CASES: dict[str, Callable[[dict[str, Any]], tuple[str, list[str]]]] = {
    "agreement show": _agreement_show,
    **{
        f"analyze {kind}": _analyze(kind)
        for kind in (
            "correlation",
            "count",
            "cox",
            "crosstab",
            "describe",
            "glm",
            "histogram",
            "km",
            "logrank",
            "nelson-aalen",
            "quantile",
        )
    },
    "audit reconcile": _audit_reconcile,
    "datasets list": _datasets_list,
    "node approvals": _node_approvals,
    "node budget": _budget,
    "node dataset check": _dataset_check,
    "node dataset list": _dataset_list,
    "node dataset show": _dataset_show,
    "provision add-admin": _provision_add("admin"),
    "provision add-researcher": _provision_add("researcher"),
    "provision add-site": _provision_add("site"),
    "provision init": _provision_init,
    "provision list": _provision_list,
    "report heterogeneity": _report,
    "run contributions": _contributions,
    "run status": _run_status,
    "simulate": _simulate,
    "sites": _sites,
    "task show": _task_show,
}


def test_every_command_is_known_here() -> None:
    unknown = sorted(set(commands()) - set(CASES) - NO_TABLE - ELSEWHERE)
    assert not unknown, f"say whether these print a table (and add a case if so): {unknown}"
    assert not (set(CASES) | NO_TABLE) - set(commands()), "a listed command no longer exists"


@pytest.mark.parametrize("command", sorted(CASES))
def test_table_fits_80_columns_with_every_id_whole(command: str, world: dict[str, Any]) -> None:
    text, ids = CASES[command](world)
    assert_whole(text, ids)


def test_a_table_that_fits_stays_a_table_and_one_that_does_not_is_stacked() -> None:
    small = Table("run", "status")
    small.add_row("r-1", "finished")
    assert "┃ run" in render([small])
    wide = Table("run", "status")
    wide.add_row(RUN_ID, "finished")
    stacked = render([wide])
    assert re.search(r"^run\s+tcga-brca-cox-", stacked, re.MULTILINE), stacked
    assert_whole(stacked, [RUN_ID])
    assert all(line == line.rstrip() for line in stacked.splitlines())  # copied ids: no blanks
    prose = Table("digest", "by", title="approved bundles")
    prose.add_column("note", overflow="fold")  # a prose column may wrap between words
    prose.add_row(DIGEST[:40], "operator", "reviewed the diff against the approved version " * 3)
    wrapped = render([prose])
    assert "┃ digest" in wrapped
    assert_whole(wrapped, [DIGEST[:40]])


# -- --format json everywhere ----------------------------------------------------------------

#: Long-running servers: they print a log, not a result.
SERVERS = {"coordinator start", "node dashboard", "node start"}


def _command(path: str) -> Any:
    command = cli()
    for part in path.split():
        command = command.commands[part]
    return command


def test_every_command_that_prints_takes_format_table_or_json() -> None:
    for path in sorted(set(commands()) - SERVERS):
        options = {opt: p for p in _command(path).params for opt in getattr(p, "opts", [])}
        assert "--format" in options, f"{path} has no --format"
        assert options["--format"].metavar == "table|json", path  # the one FormatOption


def _json_runs(w: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Every command that runs without a coordinator, with --format json: (path, argv)."""
    fed, node, root = w["fed"], w["node"], w["root"]
    agreement, store = root / "json-agreement.toml", root / "json-approvals.json"
    name = "cohort-with-a-long-dataset-name"
    return [
        ("provision list", ["provision", "list", "--out", str(fed)]),
        ("provision add-researcher", ["provision", "add-researcher", "bob", "--out", str(fed)]),
        ("provision revoke", ["provision", "revoke", "bob", "--out", str(fed)]),
        (
            "agreement draft",
            [
                "agreement",
                "draft",
                "--out",
                str(agreement),
                "--title",
                "t",
                "--consortium-dir",
                str(fed),
                "--sites",
                SITES[0],
                "--expires",
                "2099-01-01",
                "--legal-basis",
                "consent",
                "--purpose",
                "p",
                "--dataset",
                "cohort",
                "--force",
            ],
        ),
        ("agreement sign", ["agreement", "sign", str(agreement), "--kit", str(fed / SITES[0])]),
        ("agreement show", ["agreement", "show", str(agreement)]),
        ("agreement verify", ["agreement", "verify", str(agreement), "--consortium-dir", str(fed)]),
        ("task pack", ["task", "pack", str(root / "task"), "--out", str(root / "j.zip")]),
        ("task show", ["task", "show", str(w["bundle"])]),
        ("node review", ["node", "review", str(w["bundle"])]),
        ("node approve", ["node", "approve", w["bundle_digest"], "--store", str(store)]),
        ("node approvals", ["node", "approvals", "--store", str(store)]),
        ("node revoke", ["node", "revoke", w["bundle_digest"], "--store", str(store)]),
        (
            "node budget-cap",
            [
                "node",
                "budget-cap",
                name,
                "--epsilon",
                "4",
                "--delta",
                "1e-5",
                "--node-dir",
                str(node),
            ],
        ),
        ("node budget", ["node", "budget", "--node-dir", str(node)]),
        (
            "node dataset add",
            [
                "node",
                "dataset",
                "add",
                "second",
                "--node-dir",
                str(node),
                "--path",
                str(w["cohort"]),
                "--file-format",
                "csv",
            ],
        ),
        ("node dataset list", ["node", "dataset", "list", "--node-dir", str(node)]),
        ("node dataset show", ["node", "dataset", "show", "second", "--node-dir", str(node)]),
        ("node dataset check", ["node", "dataset", "check", "second", "--node-dir", str(node)]),
        ("node dataset remove", ["node", "dataset", "remove", "second", "--node-dir", str(node)]),
        ("audit verify", ["audit", "verify", str(node / "audit.jsonl")]),
        ("datasets list", ["datasets", "list"]),
        (
            "privacy epsilon",
            ["privacy", "epsilon", "-z", "1", "-q", "0.01", "-t", "100", "-d", "1e-5"],
        ),
        (
            "analyze count",
            ["analyze", "count", "--data", str(w["cohort"]), "--site-column", "hospital"],
        ),
    ]


def test_format_json_prints_one_json_document(world: dict[str, Any]) -> None:
    for path, argv in _json_runs(world):
        result = runner.invoke(app, [*argv, "--format", "json"])
        assert result.exit_code == (1 if path == "agreement verify" else 0), (path, result.output)
        json.loads(result.stdout)  # one document, nothing else on stdout
    table = runner.invoke(app, ["provision", "list", "--out", str(world["fed"])])
    assert table.exit_code == 0
    assert not table.stdout.lstrip().startswith("[")


def test_a_bad_format_is_one_line_and_a_file_format_has_its_own_flag(
    world: dict[str, Any],
) -> None:
    bad = runner.invoke(app, ["task", "show", str(world["bundle"]), "--format", "text"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --format must be table or json, got 'text'"
    old = runner.invoke(
        app,
        [
            "node",
            "dataset",
            "add",
            "x",
            "--node-dir",
            str(world["node"]),
            "--path",
            str(world["cohort"]),
            "--format",
            "csv",
        ],
    )
    assert old.exit_code == 2
    assert (
        old.stderr.strip() == "error: --format must be table or json, got 'csv'; see --file-format"
    )


def test_version() -> None:
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0
        assert result.stdout == f"biofed {version('biofed')}\n"


def test_simulate_progress_keeps_round_count_and_time_whole_at_80_columns() -> None:
    from biofed.cli._render import RoundProgress

    buffer = io.StringIO()
    console = Console(file=buffer, width=WIDTH, color_system=None)
    progress = RoundProgress(console, rounds=10, metric="c_index")
    why = "round failed: only 2 of 6 sites replied before the deadline (min 3 needed)"
    for status in ("train loss 0.1234 · c_index 0.6789", why):
        progress._progress.add_task("round", total=6, round=10, rounds=10, status=status)
    console.print(progress._progress.make_tasks_table(progress._progress.tasks))
    text = buffer.getvalue()
    assert_whole(text, ["round 10/10", "0/6", "0:00:00", "c_index 0.6789"])
    assert "(min 3 needed)" in " ".join(text.split())

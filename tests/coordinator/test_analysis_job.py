"""Analysis jobs: parsed as hostile input, told apart from training jobs, within limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_analysis_kinds import EACH, MOMENTS

from biofed.analytics import DisclosureRules, Query
from biofed.coordinator import AnalysisJob, JobLimits, JobSpec, job_from_file, run_spec_from_json
from biofed.core import ConfigurationError

GOOD = f"""
[run]
name = "heights"
dataset = "tcga"
min_nodes = 4
min_replies = 3
round_timeout = 30

[analysis]
kind = "{MOMENTS}"
column = "x"
split = "train"

[[analysis.where]]
column = "age"
op = ">="
value = 50

[[analysis.where]]
column = "stage"
op = "missing"

[analysis.rules]
min_cell = 20
"""


def test_a_good_file_reads_with_its_query_inline_and_round_trips_through_json() -> None:
    job = AnalysisJob.from_toml(GOOD)
    assert job.name == "heights"
    assert (job.min_nodes, job.min_replies, job.round_timeout) == (4, 3, 30.0)
    assert job.query.kind == MOMENTS
    assert dict(job.query.options) == {"column": "x"}
    assert job.query.split == "train"
    assert [(f.column, f.op, f.value) for f in job.query.where] == [
        ("age", ">=", 50),
        ("stage", "missing", None),
    ]
    assert job.rules == DisclosureRules(min_cell=20)
    again = AnalysisJob.from_json(job.to_json())
    assert again == job
    assert again.to_json() == job.to_json()
    assert isinstance(run_spec_from_json(job.to_json()), AnalysisJob)


def test_the_stored_spec_tells_training_and_analysis_jobs_apart(tmp_path: Path) -> None:
    training = JobSpec.from_mapping(
        {"run": {"dataset": "d"}, "task": {"name": "cox_ph", "num_features": 3}}
    )
    assert isinstance(run_spec_from_json(training.to_json()), JobSpec)
    (tmp_path / "a.toml").write_text(GOOD, encoding="utf-8")
    assert isinstance(job_from_file(tmp_path / "a.toml"), AnalysisJob)
    (tmp_path / "t.toml").write_text(
        '[run]\ndataset = "d"\n[task]\nname = "cox_ph"\nnum_features = 3\n', encoding="utf-8"
    )
    assert isinstance(job_from_file(tmp_path / "t.toml"), JobSpec)
    # a training job's parser refuses the analysis table, and vice versa
    with pytest.raises(ConfigurationError, match=r"unknown section \[analysis\]"):
        JobSpec.from_json(AnalysisJob.from_toml(GOOD).to_json())
    mixed = {**json.loads(AnalysisJob.from_toml(GOOD).to_json()), "task": {"name": "cox_ph"}}
    with pytest.raises(ConfigurationError, match=r"unknown section \[task\] in an analysis job"):
        run_spec_from_json(json.dumps(mixed))


def test_the_requests_rules_are_the_jobs_made_as_strict_as_the_agreements() -> None:
    job = AnalysisJob.from_toml(GOOD.replace("min_cell = 20", "min_cell = 3\ndominance = 0.9"))
    # the job may ask for looser rules (the sites enforce their own whatever it asks)
    assert job.rules == DisclosureRules(min_cell=3, dominance=0.9)
    assert AnalysisJob.from_json(job.to_json()).rules == job.rules
    agreed = DisclosureRules(min_cell=25, min_sites=4)
    assert job.request_rules(agreed) == DisclosureRules(min_cell=25, dominance=0.5, min_sites=4)
    assert job.request_rules(None) == job.rules
    # an agreement's table tightens only the keys it sets
    tightened = job.request_rules({"min_cell": 25})
    assert tightened == DisclosureRules(min_cell=25, dominance=0.9)
    with pytest.raises(ConfigurationError, match=r"agreement's \[analytics\]: unknown key"):
        job.request_rules({"min_cel": 25})


def test_the_coordinator_reads_the_rules_an_agreement_sets() -> None:
    import datetime as dt

    from biofed.coordinator._agreements import _analytics
    from biofed.governance import AnalyticsPolicy, Party, StudyAgreement

    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint="0" * 64)

    def agreement(analytics: AnalyticsPolicy) -> StudyAgreement:
        return StudyAgreement(
            agreement_id="a",
            title="t",
            purpose="p",
            legal_basis="l",
            consortium="c",
            coordinator=party("coordinator", "coordinator"),
            parties=(party("s", "site"), party("r", "researcher")),
            datasets={"s": "d"},
            approved_bundles=(),
            analytics=analytics,
            expires=dt.date.today() + dt.timedelta(days=3),
        )

    policy = AnalyticsPolicy(allowed=("count",), rules={"min_cell": 12, "dominance": 0.4})
    assert dict(_analytics(agreement(policy)) or {}) == {"min_cell": 12, "dominance": 0.4}
    assert _analytics(agreement(AnalyticsPolicy(allowed=("count",)))) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[run]\ndataset = "d"\n', r"\[analysis\] is required"),
        (
            f'[run]\ndataset = "d"\nrounds = 3\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n',
            r"unknown \[run\] key 'rounds' \(a query runs the passes its kind needs\)",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n[train]\n',
            r"unknown section \[train\] in an analysis job",
        ),
        ('[run]\ndataset = "d"\n[analysis]\nkind = "nope"\n', r"\[analysis\] unknown query kind"),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = 3\n',
            r"\[analysis\] test kinds take one option",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\nwhere = 3\n',
            r"\[analysis\] where must be an array of tables",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n'
            '[[analysis.where]]\ncolumn = "x"\nop = "~"\nvalue = 1\n',
            r"\[analysis\] where\[0\]: filter operator '~'",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n'
            "[analysis.rules]\nmin_cel = 3\n",
            r"\[analysis.rules\]: unknown key\(s\) min_cel",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n'
            '[analysis.dp]\nmechanism = "laplace"\nepsilon = 1.0\n',
            r"\[analysis\] test_moments has no DP answers",
        ),
        (
            f'[run]\ndataset = "d"\nmin_nodes = 2\nmin_replies = 3\n[analysis]\nkind = "{MOMENTS}"'
            '\ncolumn = "x"\n',
            r"min_replies cannot exceed \[run\] min_nodes",
        ),
        (
            f'[run]\ndataset = "d"\nmin_nodes = 3\nmin_replies = 3\n[analysis]\nkind = "{EACH}"'
            '\ncolumn = "x"\n[secure_aggregation]\n',
            r"\[secure_aggregation\] test_each needs each site's answer on its own",
        ),
        (
            f'[run]\ndataset = "d"\n[analysis]\nkind = "{MOMENTS}"\ncolumn = "x"\n'
            "[secure_aggregation]\n",
            r"\[secure_aggregation\] needs \[run\] min_replies >= 2",
        ),
        (
            f'[run]\ndataset = "d"\nmin_nodes = 3\nmin_replies = 3\n[analysis]\nkind = "{MOMENTS}"'
            '\ncolumn = "x"\n[secure_aggregation]\nclip_range = 1e15\nquantisation_step = 1e-6\n',
            r"at most 2\^53 .*raise quantisation_step",
        ),
        (
            f'[run]\ndataset = "d"\nmin_nodes = 3\nmin_replies = 3\n[analysis]\nkind = "{MOMENTS}"'
            '\ncolumn = "x"\n[secure_aggregation]\nmax_weight = 5\n',
            r"unknown \[secure_aggregation\] key 'max_weight' \(every site adds its answer",
        ),
        ("[run\n", r"analysis file is not valid TOML"),
        (b"\xff\xfe", r"analysis file is not UTF-8 text"),
    ],
)
def test_bad_files_are_refused_in_one_line_naming_the_field(
    text: str | bytes, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        AnalysisJob.from_toml(text)
    assert len(str(refused.value).splitlines()) == 1


def test_hostile_json_is_refused_like_a_training_jobs() -> None:
    good = AnalysisJob.from_toml(GOOD).to_json()
    twice = good[:-1] + ',"run":{"dataset":"other"}}'
    with pytest.raises(ConfigurationError, match="key 'run' appears twice"):
        run_spec_from_json(twice)
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        run_spec_from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigurationError, match="larger than"):
        run_spec_from_json("{" + " " * (1 << 20) + "}")
    with pytest.raises(ConfigurationError, match="job must be a JSON object"):
        run_spec_from_json("[]")
    with pytest.raises(ConfigurationError, match=r"round_timeout must be a number .* got nan"):
        run_spec_from_json(good.replace('"round_timeout":30.0', '"round_timeout":NaN'))
    with pytest.raises(ConfigurationError, match=r"\[analysis\] .*must be finite"):
        run_spec_from_json(good.replace('"column":"x"', '"column":"x","alpha":NaN'))


def test_secure_settings_default_to_a_grid_for_counts_and_sums() -> None:
    job = AnalysisJob.from_toml(GOOD + "\n[secure_aggregation]\nnum_neighbours = 2\n")
    settings = job.secure_aggregation
    assert settings is not None
    assert (settings.clip_range, settings.quantisation_step, settings.max_weight) == (1e9, 1e-6, 1)
    assert settings.num_neighbours == 2
    assert job.job_section().secure_aggregation is not None
    assert AnalysisJob.from_json(job.to_json()) == job


def test_a_coordinators_limits_apply() -> None:
    limits = JobLimits(max_min_nodes=3, max_round_timeout=10.0)
    with pytest.raises(ConfigurationError) as refused:
        run_spec_from_json(AnalysisJob.from_toml(GOOD).to_json(), limits=limits)
    lines = str(refused.value).splitlines()
    assert lines == [
        "[run] min_nodes must be at most 3 on this coordinator ([limits] max_min_nodes), got 4",
        "[run] round_timeout must be at most 10.0 on this coordinator ([limits] "
        "max_round_timeout), got 30.0",
    ]


def test_a_study_job_carries_its_spec_and_needs_no_task(tmp_path: Path) -> None:
    from biofed.datasets import gi_bleed_study

    study = gi_bleed_study()
    (tmp_path / "study.json").write_text(study.to_json(), encoding="utf-8")
    text = GOOD + '\n[study]\nspec = "study.json"\n'
    (tmp_path / "analysis.toml").write_text(text, encoding="utf-8")
    job = AnalysisJob.from_file(tmp_path / "analysis.toml")
    assert job.study == study
    section = job.job_section()
    assert section.study is not None
    assert section.study.digest == study.digest
    assert section.task is None
    assert section.preprocessing is None
    assert AnalysisJob.from_json(job.to_json()) == job


def test_built_in_python_the_job_checks_its_fields() -> None:
    query = Query(MOMENTS, {"column": "x"})
    with pytest.raises(ConfigurationError, match=r"\[run\] dataset must be"):
        AnalysisJob(dataset="bad name!", query=query)
    with pytest.raises(ConfigurationError, match="query must be a Query"):
        AnalysisJob(dataset="d", query="count")  # type: ignore[arg-type]


def test_the_job_reference_documents_analysis_jobs_from_their_schema() -> None:
    text = JobSpec.reference()
    assert "# Analysis jobs" in text
    assert "## `[run]` of an analysis job" in text
    assert "## `[secure_aggregation]` (optional) of an analysis job" in text
    assert "| `clip_range` | a number in (0, 1e+15] | `1000000000.0` |" in text
    assert MOMENTS not in text  # a kind a test registered is not biofed's
    assert "`cox`" in text

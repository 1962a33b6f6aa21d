"""QUERY instructions through a governed site's real chain: audit, policy (the agreement's
[analytics] allowed, the study's approval), output control, privacy (the ledger) and the
site's answer under its disclosure rules and its query log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.analytics import (
    Analysis,
    Answer,
    DisclosureRules,
    KindSpec,
    NoiseSource,
    Query,
    QueryTable,
    Request,
    Result,
    kind_of,
    query_kinds,
    register,
)
from biofed.core import Array, ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import JobSection, RoundDirectives
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    AnalyticsPolicy,
    DatasetRegistry,
    Party,
    SignedAgreement,
    StudyAgreement,
    reply_payload,
    sign,
    verify_log,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import NodeApp, NodeConfig

SIGNERS = ("a", "b", "r", "coordinator")
AGREEMENT = "brca-stats"
KIND = "node_test_count"
ROWS = 196  # center-1: 156 training + 40 test rows


# -- a test-only summable kind (the real ones live in biofed.analytics) -----------------------
class _CountResult(Result):
    kind = KIND

    def __init__(self, n: float) -> None:
        self.n = n

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "n": self.n}


class _CountAnalysis(Analysis):
    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        self.total: Answer | None = None

    @property
    def done(self) -> bool:
        return self.total is not None

    def request(self) -> Request:
        return Request(
            query=self.query, pass_no=1, step="count", rules=self.rules, secure=self.secure,
            layout={"n": (1,)},
        )  # fmt: skip

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        self.total = total
        return self

    def result(self) -> Result:
        assert self.total is not None
        return _CountResult(float(self.total.arrays["n"][0]))


def _answer(
    request: Request, table: QueryTable, cohort: Array, rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:  # fmt: skip
    n = float(np.count_nonzero(cohort))
    if not request.secure and 0 < n < rules.min_cell:
        n = 0.0  # suppressed at the site
    out = np.array([n])
    dp = request.query.dp
    if dp is not None:
        assert noise is not None
        out = out + noise.laplace(1.0 / dp.epsilon, (1,))
    return Answer(arrays={"n": out}, records=int(np.count_nonzero(cohort)))


def _options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    if options:
        raise ConfigurationError(f"{KIND} takes no options")
    return {}


if KIND not in query_kinds():
    register(
        KindSpec(
            name=KIND,
            check_options=_options,
            columns=lambda options: (),
            start=lambda q, r, s: _CountAnalysis(q, r, secure=s),
            answer=_answer,
            result_from_dict=lambda d: _CountResult(float(d["n"])),
            dp_supported=True,
            secure_supported=True,
            # a cohort under min_cell: zero, the same whatever the rows hold, no records
            withheld=lambda request: Answer(arrays={"n": np.zeros(1)}, records=0),
        )
    )
assert kind_of(KIND).name == KIND


# -- the site ----------------------------------------------------------------------------------
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


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = write_site_files(load_tcga_brca(), tmp_path_factory.mktemp("data"))
    return paths["center-1"]


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


class Site:
    """Site a's folder: node.toml, registry, agreements; its kit's ledger and query log."""

    def __init__(self, root: Path, fed: Path, kits: dict[str, Kit], csv: Path) -> None:
        self.root, self.fed, self.kits, self.csv = root, fed, kits, csv
        for sub in ("agreements", "certificates", "bundles"):
            (root / sub).mkdir()
        for name in SIGNERS:
            shutil.copy(fed / name / "cert.pem", root / "certificates" / f"{name}.pem")
        self.registry = DatasetRegistry(root / "datasets.json")
        self.audit = root / "audit.jsonl"
        self.toml = root / "node.toml"
        self.toml.write_text(
            f'[datasets.brca]\npath = "{csv}"\nformat = "csv"\nsplit_column = "split"\n'
            'targets = { event = "event", time = "time" }\n\n'
            '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
            'approvals = "approvals.json"\nregistry = "datasets.json"\n'
            'bundles_dir = "bundles"\naudit = "audit.jsonl"\n'
        )

    def agreement(self, **changes: Any) -> StudyAgreement:
        base = StudyAgreement(
            agreement_id=AGREEMENT,
            title="Descriptive statistics in breast cancer",
            purpose="Count and describe the cohort.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="t",
            coordinator=_party(self.kits["coordinator"]),
            parties=tuple(_party(self.kits[n]) for n in ("a", "b", "r")),
            datasets={"a": "brca", "b": "brca"},
            approved_bundles=(),
            analytics=AnalyticsPolicy(allowed=(KIND,)),
            expires=dt.date(2099, 12, 31),
        )
        return dataclasses.replace(base, **changes)

    def setup(self, **changes: Any) -> None:
        self.registry.add("brca", self.csv, format="csv")
        signed = SignedAgreement(agreement=self.agreement(**changes))
        for name in SIGNERS:
            signed = sign(signed, self.kits[name])
        write_agreement(self.root / "agreements" / f"{AGREEMENT}.toml", signed)

    def app(self) -> NodeApp:
        return NodeApp("a", NodeConfig.from_toml(self.toml), kit=self.kits["a"])

    def events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]


@pytest.fixture
def site(tmp_path: Path, fed: Path, kits: dict[str, Kit], csv: Path) -> Iterator[Site]:
    kit_dir = fed / "a"
    for name in ("privacy.db", "queries.db"):  # the kit folder is shared by the module
        for file in kit_dir.glob(f"{name}*"):
            file.unlink()
    yield Site(tmp_path, fed, kits, csv)
    for name in ("privacy.db", "queries.db"):
        for file in kit_dir.glob(f"{name}*"):
            file.unlink()


def _request(*where: dict[str, Any], dp: dict[str, Any] | None = None, **more: Any) -> Request:
    query = Query.from_dict({"kind": KIND, "where": list(where), "dp": dp})
    return Request(query=query, pass_no=1, step="count", layout={"n": (1,)}, **more)


def _inst(request: Request, *, round: int = 1, run_id: str = "q-1", **job: Any) -> Instruction:
    section = JobSection(**{"dataset": "brca", "agreement": AGREEMENT, **job})
    return Instruction(
        run_id=run_id,
        round=round,
        node_id="a",
        kind=MessageKind.QUERY,
        parameters=ParameterSet(),
        job=section,
        directives=RoundDirectives(query_request=request.to_json()),
    )


def _count(reply: Reply) -> float:
    assert reply.ok, reply.error
    assert reply.parameters is not None
    return float(reply.parameters["n"][0])


# -- tests -------------------------------------------------------------------------------------
def test_a_count_runs_through_the_governed_chain_and_is_audited(site: Site) -> None:
    site.setup()
    app = site.app()
    request = _request()
    reply = app.handle(_inst(request))
    assert _count(reply) == ROWS
    assert reply.num_examples == ROWS
    assert reply.kind is MessageKind.QUERY
    assert reply.parameters is not None
    assert reply.parameters["n"].dtype == np.float64
    assert dict(reply.metrics) == {}
    assert app._nodes == {}  # no task was built
    events = site.events()
    assert [e["event"] for e in events] == ["job.accepted", "round.sent"]
    accepted, sent = events[0]["data"], events[1]["data"]
    assert accepted["query_kind"] == KIND
    assert accepted["query_sha256"] == request.query.digest
    assert "bundle" not in accepted
    assert (sent["run_id"], sent["round"], sent["kind"]) == ("q-1", 1, "query")
    assert sent["num_examples"] == ROWS
    payload = reply_payload(reply)  # what the coordinator hashes when it logs the receipt
    assert sent["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert sent["bytes"] == len(payload) > 0
    report = verify_log(
        site.audit, (site.fed / "a" / "cert.pem").read_bytes(), site.kits["a"].ca_pem
    )
    assert report.ok


def test_a_query_kind_the_agreement_does_not_allow_is_refused(site: Site) -> None:
    site.setup(analytics=AnalyticsPolicy())
    reply = site.app().handle(_inst(_request()))
    assert reply.error is not None
    assert reply.error.startswith("policy: outputs:"), reply.error
    assert "does not allow node_test_count queries" in reply.error
    assert site.names() == ["job.refused"]


def test_a_query_under_another_agreement_or_dataset_is_refused(site: Site) -> None:
    site.setup()
    reply = site.app().handle(_inst(_request(), agreement="other"))
    assert reply.error is not None
    assert reply.error.startswith("policy: agreement:"), reply.error
    reply = site.app().handle(_inst(_request(), dataset="elsewhere"))
    assert reply.error is not None
    assert reply.error.startswith("policy: dataset:"), reply.error


def test_small_counts_are_suppressed_under_the_agreements_stricter_rules(site: Site) -> None:
    site.setup(analytics=AnalyticsPolicy(allowed=(KIND,), rules={"min_cell": 50}))
    app = site.app()
    times = np.sort(app.queries.table(JobSection(dataset="brca")).column("time"))
    t = float(times[30])
    few = _request({"column": "time", "op": "<", "value": t})
    n_few = int((times < t).sum())
    assert 10 <= n_few < 50  # passes the default min_cell, not the agreement's
    assert _count(app.handle(_inst(few))) == 0.0


def test_a_request_claiming_to_be_secure_outside_secure_aggregation_is_refused(
    site: Site,
) -> None:
    site.setup()
    reply = site.app().handle(_inst(_request(secure=True)))
    assert reply.error is not None
    assert "did not come through secure aggregation" in reply.error
    assert site.names() == ["job.refused"]


def _one_patient_apart(app: NodeApp) -> tuple[Request, Request]:
    """Two cohorts that differ by one patient: time < t and time <= t for a time t only
    one patient has."""
    times = app.queries.table(JobSection(dataset="brca")).column("time")
    values, counts = np.unique(times, return_counts=True)
    t = float(values[(counts == 1) & (values > np.median(times))][0])
    first = _request({"column": "time", "op": "<", "value": t})
    second = _request({"column": "time", "op": "<=", "value": t})
    return first, second


def test_two_queries_one_patient_apart_the_second_is_refused(site: Site) -> None:
    site.setup()
    app = site.app()
    first, second = _one_patient_apart(app)
    n = _count(app.handle(_inst(first, run_id="q-1")))
    assert n >= 10
    refused = app.handle(_inst(second, run_id="q-2"))
    assert refused.error is not None
    assert "differs by fewer than 10 records from an earlier query" in refused.error
    assert str(int(n)) not in refused.error  # no counts in the reason
    names = site.names()
    assert names.count("round.sent") == 1
    assert names[-1] == "query.refused"
    # the same cohort again (a later pass, or the query repeated) is answered
    assert _count(app.handle(_inst(first, run_id="q-3"))) == n
    # the log is on disk: a restarted node still refuses
    again = site.app().handle(_inst(second, run_id="q-4"))
    assert again.error is not None
    assert "differs by fewer than" in again.error


def test_a_cohort_far_enough_from_every_earlier_one_is_answered(site: Site) -> None:
    site.setup()
    app = site.app()
    assert _count(app.handle(_inst(_request()))) == ROWS
    # the training split alone: 40 fewer rows than every row
    train = dataclasses.replace(_request(), query=Query(kind=KIND, split="train"))
    assert _count(app.handle(_inst(train, run_id="q-2"))) == 156


# -- DP: debit before the answer, refusal past the cap ----------------------------------------
def _with_cap(site: Site, epsilon: float) -> None:
    site.toml.write_text(
        site.toml.read_text() + f"\n[privacy.caps.brca]\nepsilon = {epsilon}\ndelta = 1e-5\n"
    )


def _ledger(site: Site) -> Any:
    from biofed.governance import PrivacyLedger

    return PrivacyLedger(site.fed / "a" / "privacy.db")


def test_a_dp_query_debits_the_ledger_before_answering_and_is_refused_past_the_cap(
    site: Site,
) -> None:
    _with_cap(site, 1.0)
    site.setup()
    app = site.app()
    dp = {"mechanism": "laplace", "epsilon": 0.4}
    request = _request(dp=dp)
    first = app.handle(_inst(request, round=1))
    assert first.ok, first.error
    assert first.metrics["dp.epsilon"] == pytest.approx(0.4)
    assert first.metrics["dp.delta"] == 0.0
    assert _count(first) != ROWS  # Laplace noise of scale 2.5 from the site's CSPRNG
    names = site.names()
    assert names.index("budget.debited") < names.index("round.sent")
    sent = next(e for e in site.events() if e["event"] == "round.sent")["data"]
    assert sent["dp_epsilon"] == pytest.approx(0.4)
    # the same pass asked again (a coordinator that restarted): charged again, 0.8 in all
    again = app.handle(_inst(request, round=1))
    assert again.metrics["dp.epsilon"] == pytest.approx(0.8)
    assert _ledger(site).spent("brca").spent_epsilon == pytest.approx(0.8)
    # the second pass would take the dataset to 1.2 > 1.0: refused, audited, nothing sent
    second = app.handle(_inst(dataclasses.replace(request, pass_no=2), round=2))
    assert second.error is not None
    assert "privacy budget" in second.error, second.error
    assert site.names().count("budget.refused") == 1
    assert site.names().count("round.sent") == 2
    assert _ledger(site).spent("brca").spent_epsilon == pytest.approx(0.8)


def test_a_query_without_dp_debits_nothing(site: Site) -> None:
    _with_cap(site, 1.0)
    site.setup()
    reply = site.app().handle(_inst(_request()))
    assert _count(reply) == ROWS
    assert "dp.epsilon" not in reply.metrics
    assert "budget.debited" not in site.names()


# -- output control -----------------------------------------------------------------------------
def test_an_answer_carrying_an_extra_array_is_withheld(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from biofed.node._queries import SiteQueries

    honest = SiteQueries.reply

    def leaky(
        self: SiteQueries, instruction: Instruction, clearance: Any, *, secure: bool
    ) -> Reply:
        reply = honest(self, instruction, clearance, secure=secure)
        assert reply.parameters is not None
        rows = {**reply.parameters, "rows": np.arange(5, dtype=np.float64)}
        return dataclasses.replace(reply, parameters=ParameterSet(rows))

    monkeypatch.setattr(SiteQueries, "reply", leaky)
    site.setup()
    reply = site.app().handle(_inst(_request()))
    assert reply.error is not None
    assert reply.error.startswith("policy: outputs:"), reply.error
    assert "layout" in reply.error
    assert site.names() == ["job.accepted", "round.withheld"]


def test_an_answer_carrying_a_metric_is_withheld(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from biofed.node._queries import SiteQueries

    honest = SiteQueries.reply

    def chatty(
        self: SiteQueries, instruction: Instruction, clearance: Any, *, secure: bool
    ) -> Reply:
        reply = honest(self, instruction, clearance, secure=secure)
        return dataclasses.replace(reply, metrics={"first_time": 12.0})

    monkeypatch.setattr(SiteQueries, "reply", chatty)
    site.setup()
    reply = site.app().handle(_inst(_request()))
    assert reply.error is not None
    assert "no metrics" in reply.error
    assert site.names() == ["job.accepted", "round.withheld"]


# -- a development node ------------------------------------------------------------------------
def test_a_development_node_answers_under_its_node_toml_rules(tmp_path: Path, csv: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[datasets.brca]\npath = "{csv}"\nformat = "csv"\nsplit_column = "split"\n'
        'targets = { event = "event", time = "time" }\n\n[analytics]\nmin_cell = 500\n'
    )
    app = NodeApp("a", NodeConfig.from_toml(toml))
    reply = app.handle(_inst(_request(), agreement=None))
    assert _count(reply) == 0.0  # 196 < 500: suppressed by the site's own rule
    assert reply.num_examples == 0  # nor is the cohort's size told
    toml.write_text(toml.read_text().replace("min_cell = 500", "min_cells = 5"))
    with pytest.raises(ConfigurationError, match="unknown key"):
        NodeConfig.from_toml(toml)


# -- secure queries: the masked-input stage answers the pass, masked -----------------------------
SECURE_SITES = ("center-0", "center-1", "center-2")


@pytest.fixture(scope="module")
def secure_fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sfed") / "c"
    Consortium.create(
        folder, consortium="s", coordinator="127.0.0.1:7443", sites=list(SECURE_SITES)
    )
    return folder


def _secure_pass(
    apps: Mapping[str, NodeApp], request: Request, settings: Any, seen: list[Reply]
) -> Any:
    """One secure pass of ``request`` through the sites' real chains, driven as the
    coordinator's SecureRound drives a training round; returns the SecAgg+ result."""
    from biofed.secagg import (
        CERTIFICATE_ARRAY,
        CERTIFICATE_PREFIX,
        STAGE_KEY,
        SecAggServer,
        SecAggStage,
        pack_message,
        unpack_message,
    )

    sites = sorted(apps)
    plan = settings.secagg_config(request.size + 1).plan(len(sites))
    server = SecAggServer(plan, sites, run_id="sq-1", round=1)
    outgoing = {n: plan.to_bytes() for n in sites}
    certificates: dict[str, bytes] = {}
    for stage in (
        SecAggStage.ADVERTISE_KEYS,
        SecAggStage.SHARE_KEYS,
        SecAggStage.MASKED_INPUT,
        SecAggStage.UNMASK,
    ):
        for node_id, message in outgoing.items():
            more = {}
            if stage is SecAggStage.SHARE_KEYS:
                more = {f"{CERTIFICATE_PREFIX}{n}": c for n, c in certificates.items()}
            inst = Instruction(
                run_id="sq-1",
                round=1,
                node_id=node_id,
                kind=MessageKind.SECAGG,
                parameters=ParameterSet(),
                config={
                    "dataset": "brca",
                    **settings.to_config(),
                    STAGE_KEY: stage.value,
                    "query.request": request.to_json(),
                },
                extras=pack_message(message, **more),
            )
            reply = apps[node_id].handle(inst)
            assert reply.ok, reply.error
            seen.append(reply)
            msg, extra = unpack_message(reply.extras)
            if CERTIFICATE_ARRAY in extra:
                certificates[node_id] = extra[CERTIFICATE_ARRAY]
            server.receive(node_id, msg)
        outgoing = {n: m.to_bytes() for n, m in server.close_stage().items()}
    return server.result()


def _secure_apps(secure_fed: Path) -> dict[str, NodeApp]:
    brca = load_tcga_brca()
    return {
        site: NodeApp(
            site,
            NodeConfig(datasets={}),
            kit=load_kit(secure_fed / site),
            data={"brca": brca.sites[site]},
        )
        for site in SECURE_SITES
    }


def test_a_secure_pass_releases_only_the_masked_sum(secure_fed: Path) -> None:
    from biofed.analytics import total_from_vector
    from biofed.secagg import SecureAggregationSettings

    for file in secure_fed.glob("*/queries.db*"):
        file.unlink()
    brca = load_tcga_brca()
    sizes = {s: len(brca.sites[s].train) + len(brca.sites[s].test or []) for s in SECURE_SITES}
    settings = SecureAggregationSettings(clip_range=1000.0, quantisation_step=1e-3)
    request = _request(secure=True)
    seen: list[Reply] = []
    result = _secure_pass(_secure_apps(secure_fed), request, settings, seen)
    assert result.total is not None
    total = total_from_vector(request, result.total)
    assert float(total.arrays["n"][0]) == pytest.approx(sum(sizes.values()), abs=0.01)
    assert total.records == sum(sizes.values())
    # what the coordinator received: protocol messages only, no site's count anywhere
    for reply in seen:
        assert reply.kind is MessageKind.SECAGG
        assert reply.parameters is None or not len(reply.parameters)
        assert dict(reply.metrics) == {}
        assert reply.num_examples == 0


def test_a_secure_answer_beyond_the_clip_range_is_an_error_naming_the_setting(
    secure_fed: Path,
) -> None:
    from biofed.secagg import SecureAggregationSettings

    for file in secure_fed.glob("*/queries.db*"):
        file.unlink()
    settings = SecureAggregationSettings(clip_range=50.0, quantisation_step=1e-3)
    with pytest.raises(AssertionError, match=r"raise \[secure_aggregation\] clip_range"):
        _secure_pass(_secure_apps(secure_fed), _request(secure=True), settings, [])


def test_an_agreement_requiring_secure_aggregation_refuses_a_plain_query(site: Site) -> None:
    from biofed.governance import PrivacyRequirements

    site.setup(privacy=PrivacyRequirements(secure_aggregation_required=True))
    reply = site.app().handle(_inst(_request()))
    assert reply.error is not None
    assert reply.error.startswith("policy: privacy:"), reply.error
    assert "secure aggregation" in reply.error
    assert site.names() == ["job.refused"]


def test_an_agreement_requiring_dp_answers_only_dp_queries_within_its_cap(site: Site) -> None:
    from biofed.governance import PrivacyRequirements

    _with_cap(site, 10.0)
    caps = {"a": 0.5, "b": 0.5}
    site.setup(
        privacy=PrivacyRequirements(
            dp_required=True, max_epsilon=caps, max_delta={"a": 1e-6, "b": 1e-6}
        )
    )
    app = site.app()
    plain = app.handle(_inst(_request()))
    assert plain.error is not None
    assert "requires differential privacy" in plain.error
    dp = {"mechanism": "laplace", "epsilon": 0.3}
    assert app.handle(_inst(_request(dp=dp), round=1)).ok
    past = app.handle(_inst(dataclasses.replace(_request(dp=dp), pass_no=2), round=2))
    assert past.error is not None  # 0.6 > the agreement's 0.5 for this site
    assert "privacy budget" in past.error, past.error


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"query":' + "[" * 50_000 + "]" * 50_000 + "}",
        _request().to_json().replace('"pass":1', '"pass":NaN'),
        _request().to_json().replace('"split":"all"', '"split":"all","split":"test"'),
        _request().to_json().replace(KIND, "no_such_kind"),
    ],
    ids=["empty", "deep", "nan", "duplicate-key", "unknown-kind"],
)
def test_a_hostile_request_is_refused_in_one_line_and_audited(site: Site, text: str) -> None:
    site.setup()
    inst = _inst(_request())
    inst = dataclasses.replace(inst, directives=RoundDirectives(query_request=text))
    reply = site.app().handle(inst)
    assert reply.error is not None
    assert reply.error.startswith("policy: outputs: the query request is malformed"), reply.error
    assert "\n" not in reply.error
    assert "Traceback" not in reply.error
    assert site.names() == ["job.refused"]


def test_a_query_on_a_column_the_site_lacks_is_one_line_and_audited(site: Site) -> None:
    site.setup()
    reply = site.app().handle(_inst(_request({"column": "bmi", "op": ">", "value": 30})))
    assert reply.error is not None
    assert "has no column 'bmi'" in reply.error
    assert "\n" not in reply.error
    assert site.names() == ["job.accepted", "round.failed"]


def test_a_secure_request_looser_than_a_sites_rules_is_refused(secure_fed: Path) -> None:
    """In secure mode the coordinator applies the request's rules to the total, so a site
    whose own rules are stricter refuses rather than answer unsuppressed."""
    from biofed.secagg import SecureAggregationSettings

    for file in secure_fed.glob("*/queries.db*"):
        file.unlink()
    apps = _secure_apps(secure_fed)
    brca = load_tcga_brca()
    strict = NodeConfig(datasets={}, analytics=DisclosureRules(min_cell=20))
    apps["center-1"] = NodeApp(
        "center-1",
        strict,
        kit=load_kit(secure_fed / "center-1"),
        data={"brca": brca.sites["center-1"]},
    )
    settings = SecureAggregationSettings(clip_range=1000.0, quantisation_step=1e-3)
    with pytest.raises(AssertionError, match="rules are looser than this site's"):
        _secure_pass(apps, _request(secure=True), settings, [])
    stricter = _request(secure=True, rules=DisclosureRules(min_cell=20))
    result = _secure_pass(apps, stricter, settings, [])
    assert result.total is not None

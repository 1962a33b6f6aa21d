"""The coordinator's analysis loop over its exchange: passes, checks, failures, cancel.

Sites here are handlers that answer with :func:`biofed.analytics.answer` on their own
table (the site side the node runs); the thing under test is the coordinator's loop
(:func:`biofed.coordinator.analyze_over` → ``run_analysis``), its reply checks and how it
fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from test_analysis_kinds import EACH, MOMENTS

from biofed.analytics import DisclosureRules, Query, QueryTable, Request, answer
from biofed.coordinator import (
    PASS_EVENT,
    AnalysisFailed,
    RunCancelled,
    RunEvent,
    analyze_over,
)
from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import QUERY_REQUEST_KEY
from biofed.secagg import SecureAggregationSettings
from biofed.transport import InMemoryTransport

SITES = ("a", "b", "c", "d")
RULES = DisclosureRules()


def tables(seed: int = 3) -> dict[str, QueryTable]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, site in enumerate(SITES):
        n = 40 + 7 * i
        x = rng.normal(50 + i, 10, size=n)
        out[site] = QueryTable(
            name="t",
            columns={"x": x},
            kinds={"x": "numeric"},
            ids=np.arange(n),
            is_test=np.zeros(n, dtype=bool),
        )
    return out


Handler = Callable[[Instruction], Reply | None]


def honest(table: QueryTable) -> Handler:
    def handle(instruction: Instruction) -> Reply:
        assert instruction.kind is MessageKind.QUERY
        text = instruction.directives.query_request
        assert text is not None
        request = Request.from_json(text)
        out = answer(request, table)
        return Reply.answering(
            instruction,
            parameters=ParameterSet(dict(out.arrays)),
            num_examples=out.records,
        )

    return handle


def run(
    handlers: dict[str, Handler], query: Query, *, min_replies: int = 3, **kwargs: object
) -> tuple[object, list[RunEvent]]:
    transport = InMemoryTransport(handlers)
    return analyze_over(
        transport,
        query,
        RULES,
        run_id="q-1",
        min_nodes=len(handlers),
        min_replies=min_replies,
        **kwargs,  # type: ignore[arg-type]
    )


def test_two_passes_give_the_pooled_mean_and_variance_and_each_pass_is_an_event() -> None:
    data = tables()
    result, events = run({s: honest(t) for s, t in data.items()}, Query(MOMENTS, {"column": "x"}))
    pooled = np.concatenate([t.column("x") for t in data.values()])
    out = result.to_dict()  # type: ignore[attr-defined]
    assert out["n"] == pooled.size
    assert out["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert out["variance"] == pytest.approx(pooled.var(ddof=1), rel=1e-12)
    passes = [e for e in events if e.kind == PASS_EVENT]
    assert [e.round for e in passes] == [1, 2]
    assert passes[0].message == "pass 1 (sums): 4 sites asked, 4 answered"


def test_a_where_filter_reaches_every_site() -> None:
    data = tables()
    query = Query.from_dict(
        {
            "kind": MOMENTS,
            "options": {"column": "x"},
            "where": [{"column": "x", "op": ">", "value": 50}],
        }
    )
    result, _ = run({s: honest(t) for s, t in data.items()}, query)
    pooled = np.concatenate([t.column("x") for t in data.values()])
    assert result.to_dict()["n"] == int((pooled > 50).sum())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "forge"),
    [
        ("an extra array", lambda a: {**a, "extra": np.zeros(3)}),
        ("a missing array", lambda a: {}),
        ("a misshapen array", lambda a: {"total": np.zeros(2)}),
        ("a NaN", lambda a: {"total": np.array([np.nan])}),
        ("an infinity", lambda a: {"total": np.array([np.inf])}),
    ],
)
def test_a_hostile_answer_is_rejected_and_left_out(name: str, forge: Callable) -> None:
    data = tables()
    handlers: dict[str, Handler] = {s: honest(t) for s, t in data.items()}
    good = honest(data["d"])

    def hostile(instruction: Instruction) -> Reply:
        reply = good(instruction)
        assert reply.parameters is not None
        arrays = forge(dict(reply.parameters))
        return Reply.answering(
            instruction, parameters=ParameterSet(arrays), num_examples=reply.num_examples
        )

    handlers["d"] = hostile
    result, events = run(handlers, Query(MOMENTS, {"column": "x"}))
    rejected = [e for e in events if e.kind == "reply_rejected"]
    assert rejected
    assert {e.node_id for e in rejected} == {"d"}, name
    honest_sites = np.concatenate([data[s].column("x") for s in "abc"])
    out = result.to_dict()  # type: ignore[attr-defined]
    assert out["n"] == honest_sites.size
    assert out["mean"] == pytest.approx(honest_sites.mean(), rel=1e-12)
    passes = [e.message for e in events if e.kind == PASS_EVENT]
    assert passes[0] == "pass 1 (sums): 4 sites asked, 3 answered"
    assert passes[1] == "pass 2 (squares): 3 sites asked, 3 answered"


def test_a_reply_with_extras_is_rejected() -> None:
    data = tables()
    handlers: dict[str, Handler] = {s: honest(t) for s, t in data.items()}
    good = honest(data["a"])

    def smuggler(instruction: Instruction) -> Reply:
        reply = good(instruction)
        return Reply.answering(
            instruction,
            parameters=reply.parameters,
            num_examples=reply.num_examples,
            extras={"rows": ParameterSet({"x": np.asarray(data["a"].column("x"))})},
        )

    handlers["a"] = smuggler
    _, events = run(handlers, Query(MOMENTS, {"column": "x"}))
    assert any(e.kind == "reply_rejected" and e.node_id == "a" for e in events)


def test_too_few_answers_fail_the_run_naming_the_sites_reasons() -> None:
    data = tables()

    def refuses(instruction: Instruction) -> Reply:
        return Reply.error_for(instruction, "policy: the agreement does not allow test_moments")

    handlers: dict[str, Handler] = {s: honest(t) for s, t in data.items()}
    handlers["b"] = refuses
    handlers["c"] = refuses
    with pytest.raises(AnalysisFailed) as failed:
        run(handlers, Query(MOMENTS, {"column": "x"}))
    text = str(failed.value)
    assert "2 of 4 sites answered pass 1, the run needs 3" in text
    assert "b: node reported an error: policy: the agreement does not allow test_moments" in text
    assert "c: " in text


def test_a_site_lost_after_the_first_pass_fails_the_run_rather_than_mix_cohorts() -> None:
    data = tables()
    handlers: dict[str, Handler] = {s: honest(t) for s, t in data.items()}
    good = honest(data["c"])

    def leaves(instruction: Instruction) -> Reply | None:
        return good(instruction) if instruction.round == 1 else None  # silent in pass 2

    handlers["c"] = leaves
    with pytest.raises(AnalysisFailed, match=r"c answered pass 1 but not pass 2"):
        run(handlers, Query(MOMENTS, {"column": "x"}), round_timeout=5.0)


def test_too_few_sites_fail_before_anything_is_sent() -> None:
    sent: list[str] = []

    def site(instruction: Instruction) -> Reply:
        sent.append(instruction.node_id)
        raise AssertionError("nothing may be sent")

    transport = InMemoryTransport({"a": site, "b": site})
    with pytest.raises(AnalysisFailed, match="2 sites available, the run needs 3"):
        analyze_over(transport, Query(MOMENTS, {"column": "x"}), RULES, run_id="q", min_nodes=3)
    assert sent == []


def test_each_site_answer_kinds_run_plain_and_are_refused_secure() -> None:
    data = tables()
    result, _ = run({s: honest(t) for s, t in data.items()}, Query(EACH, {"column": "x"}))
    assert result.to_dict() == {  # type: ignore[attr-defined]
        "kind": EACH,
        "sites": 4,
        "records": sum(len(t) for t in data.values()),
    }
    with pytest.raises(ConfigurationError, match="cannot run under secure aggregation"):
        run(
            {s: honest(t) for s, t in data.items()},
            Query(EACH, {"column": "x"}),
            secure=SecureAggregationSettings(clip_range=1e9, max_weight=1),
        )


def test_a_cancelled_run_sends_nothing_more() -> None:
    data = tables()
    cancel = threading.Event()
    seen: list[int] = []

    def site_for(table: QueryTable) -> Handler:
        inner = honest(table)

        def handle(instruction: Instruction) -> Reply:
            seen.append(instruction.round)
            cancel.set()  # the researcher cancels while pass 1 is out
            return inner(instruction)

        return handle

    with pytest.raises(RunCancelled):
        run(
            {s: site_for(t) for s, t in data.items()},
            Query(MOMENTS, {"column": "x"}),
            cancel=cancel,
        )
    assert set(seen) <= {1}


def test_every_instruction_carries_the_request_and_the_job_section() -> None:
    from biofed.core.sections import JobSection

    data = tables()
    seen: list[Instruction] = []

    def site_for(table: QueryTable) -> Handler:
        inner = honest(table)

        def handle(instruction: Instruction) -> Reply:
            seen.append(instruction)
            return inner(instruction)

        return handle

    run(
        {s: site_for(t) for s, t in data.items()},
        Query(MOMENTS, {"column": "x"}),
        job=JobSection(dataset="t", agreement="study-1"),
    )
    assert len(seen) == 8
    for instruction in seen:
        assert instruction.job.dataset == "t"
        assert instruction.job.agreement == "study-1"
        request = Request.from_json(instruction.directives.query_request or "")
        assert request.pass_no == instruction.round
        assert request.rules == RULES
        assert instruction.config[QUERY_REQUEST_KEY] == instruction.directives.query_request

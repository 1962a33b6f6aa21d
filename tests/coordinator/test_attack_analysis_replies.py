"""Hostile sites against the coordinator's analysis loop, and hostile coordinators against a
site's heavy kinds: the real loop (:func:`biofed.coordinator.analyze_over` over the
in-memory transport) with honest sites answering by :func:`biofed.analytics.answer` and one
site that forges its replies.

What must hold: a forged reply is rejected or fails the run with a one-line
:class:`AnalysisFailed` — never a crash, a hang, or a result skewed past a plausible size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest

from biofed.analytics import (
    CountResult,
    DisclosureRules,
    Query,
    QueryTable,
    Request,
    answer,
    start,
)
from biofed.coordinator import AnalysisFailed, analyze_over
from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    ParameterSet,
    Reply,
)
from biofed.transport import InMemoryTransport

SITES = ("a", "b", "c", "d")
RULES = DisclosureRules()
Handler = Callable[[Instruction], Reply | None]


def tables(seed: int = 3, n: int = 60) -> dict[str, QueryTable]:
    rng = np.random.default_rng(seed)
    out = {}
    for site in SITES:
        out[site] = QueryTable(
            name="t",
            columns={
                "x": rng.normal(50, 10, n),
                "time": rng.exponential(10.0, n),
                "event": (rng.random(n) < 0.7).astype(float),
            },
            kinds={"x": "numeric", "time": "numeric", "event": "numeric"},
            ids=np.arange(n),
            is_test=np.zeros(n, dtype=bool),
        )
    return out


def honest(table: QueryTable) -> Handler:
    def handle(instruction: Instruction) -> Reply:
        assert instruction.kind is MessageKind.QUERY
        text = instruction.directives.query_request
        assert text is not None
        out = answer(Request.from_json(text), table, RULES)
        return Reply.answering(
            instruction, parameters=ParameterSet(dict(out.arrays)), num_examples=out.records
        )

    return handle


def forging(table: QueryTable, forge: Callable[[Instruction, Reply], Reply]) -> Handler:
    good = honest(table)

    def handle(instruction: Instruction) -> Reply:
        return forge(instruction, good(instruction))

    return handle


def run(handlers: dict[str, Handler], query: Query, *, min_replies: int = 4) -> object:
    result, _ = analyze_over(
        InMemoryTransport(handlers),
        query,
        RULES,
        run_id="q-1",
        min_nodes=len(handlers),
        min_replies=min_replies,
    )
    return result


def _with(reply: Reply, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    assert reply.parameters is not None
    return {**dict(reply.parameters), **arrays}


# -- forged counts --------------------------------------------------------------------------
def test_a_site_claiming_a_quadrillion_records_cannot_dominate_a_count() -> None:
    data = tables()
    handlers = {s: honest(t) for s, t in data.items()}

    def lie(instruction: Instruction, reply: Reply) -> Reply:
        big = 10.0**15
        return Reply.answering(
            instruction,
            parameters=ParameterSet(_with(reply, count=np.array([big]))),
            num_examples=10**15,
        )

    handlers["d"] = forging(data["d"], lie)
    with pytest.raises(AnalysisFailed):
        run(handlers, Query("count"))  # needs all four
    result = run(handlers, Query("count"), min_replies=3)
    assert isinstance(result, CountResult)
    assert result.count == 3 * 60


def test_negative_and_fractional_counts_are_rejected_and_left_out() -> None:
    data = tables()
    handlers = {s: honest(t) for s, t in data.items()}

    def negative(instruction: Instruction, reply: Reply) -> Reply:
        return Reply.answering(
            instruction,
            parameters=ParameterSet(_with(reply, count=np.array([-40.0]))),
            num_examples=reply.num_examples,
        )

    handlers["d"] = forging(data["d"], negative)
    result = run(handlers, Query("count"), min_replies=3)
    assert isinstance(result, CountResult)
    assert result.count == 3 * 60


def test_a_reply_to_another_runs_pass_is_not_taken() -> None:
    data = tables()
    handlers = {s: honest(t) for s, t in data.items()}

    def replay(instruction: Instruction, reply: Reply) -> Reply:
        other = Instruction(
            run_id="q-0",  # an earlier run's reply, replayed
            round=instruction.round,
            node_id=instruction.node_id,
            kind=instruction.kind,
            parameters=instruction.parameters,
            job=instruction.job,
            directives=instruction.directives,
        )
        assert reply.parameters is not None
        return Reply.answering(
            other,
            parameters=ParameterSet(_with(reply, count=np.array([1000.0]))),
            num_examples=1000,
        )

    handlers["d"] = forging(data["d"], replay)
    try:
        result = run(handlers, Query("count"), min_replies=3)
    except AnalysisFailed:
        return
    assert isinstance(result, CountResult)
    assert result.count in (3 * 60, None)


# -- survival and cox ---------------------------------------------------------------------------
def test_km_counts_inflated_consistently_to_a_trillion_fail_or_finish_fast() -> None:
    # a hostile site's counts add up (size = its events) but name 10¹² tied events
    data = tables()
    handlers = {s: honest(t) for s, t in data.items()}
    q = Query("nelson_aalen", {"time": "time", "event": "event", "grid": [1.0, 5.0, 50.0]})
    big = 10.0**12

    def inflate(instruction: Instruction, reply: Reply) -> Reply:
        events = np.zeros((1, 4))
        events[0, 0] = big
        arrays = _with(
            reply,
            events=events,
            censored=np.zeros((1, 4)),
            size=np.array([big]),
            tail_events=np.zeros(1),
            tail_censored=np.zeros(1),
        )
        return Reply.answering(instruction, parameters=ParameterSet(arrays), num_examples=int(big))

    handlers["d"] = forging(data["d"], inflate)
    with contextlib.suppress(AnalysisFailed, BiofedError):
        run(handlers, q)


def test_a_cox_site_zeroing_its_risk_sets_fails_the_run_in_one_line() -> None:
    data = tables()
    handlers = {s: honest(t) for s, t in data.items()}

    def zero(instruction: Instruction, reply: Reply) -> Reply:
        request = Request.from_json(instruction.directives.query_request or "")
        if request.step != "newton" or reply.parameters is None:
            return reply
        arrays = dict(reply.parameters)
        arrays["s0"] = -np.abs(arrays["s0"]) * 50.0 - 1.0
        return Reply.answering(
            instruction, parameters=ParameterSet(arrays), num_examples=reply.num_examples
        )

    handlers["d"] = forging(data["d"], zero)
    q = Query("cox", {"time": "time", "event": "event", "covariates": ["x"]})
    with pytest.raises(AnalysisFailed) as failed:
        run(handlers, q)
    assert "\n" not in str(failed.value)


def test_a_forged_cox_request_without_a_layout_is_bounded_before_the_site_computes() -> None:
    # a hostile coordinator asks a plain newton pass with 10,000 agreed times and 80
    # parameters and no layout (the protocol checks a layout's size, not a missing one):
    # the site must refuse before it allocates 10,000 × 80² risk-set sums
    rng = np.random.default_rng(5)
    n, p = 900, 80
    cols = {f"x{i}": rng.normal(size=n) for i in range(p)}
    cols["time"] = rng.exponential(10.0, n)
    cols["event"] = np.ones(n)
    t = QueryTable(
        name="t",
        columns=cols,
        kinds=dict.fromkeys(cols, "numeric"),
        ids=np.arange(n),
        is_test=np.zeros(n, dtype=bool),
    )
    rules = DisclosureRules(records_per_parameter=1)
    q = Query("cox", {"time": "time", "event": "event", "covariates": [f"x{i}" for i in range(p)]})
    analysis = start(q, rules)
    first = analysis.request()
    analysis = analysis.add({s: answer(first, t, rules) for s in "abc"})
    honest_req = analysis.request()
    times = np.union1d(np.asarray(honest_req.state["times"]), np.linspace(0, 200, 10_000 - 900))
    forged = Request(
        query=q,
        pass_no=2,
        step="newton",
        state={**honest_req.state, "times": times.tolist()},
        rules=rules,
        secure=False,
        layout=None,
    )
    with pytest.raises(ConfigurationError, match="coarser grid"):
        answer(Request.from_json(forged.to_json()), t, rules)

"""The analysis loop: a federated query's passes over the coordinator's exchange.

A query (:class:`~biofed.analytics.Query`) runs in passes, like the preprocessing phase
(:mod:`biofed.coordinator._preprocess`) and over the same :class:`Exchange` — the SAME
governed site chain a training round goes through (policy, privacy, output control,
audit). Each pass the coordinator's pure :class:`~biofed.analytics.Analysis` states a
:class:`~biofed.analytics.Request`; one ``MessageKind.QUERY`` instruction per site carries
it as JSON (``directives.query_request``); each site answers on its own rows under its
disclosure rules; the analysis combines the answers and states the next pass, until it is
done and holds its :class:`~biofed.analytics.Result`. Pass ``p`` is round ``p`` of the
run's events; every pass ends with a ``query_pass`` event (sites asked, sites answered).

In secure mode (``[secure_aggregation]``) a pass is a secure sum instead
(:class:`~biofed.coordinator.SecureSum`): the coordinator only ever holds the sum of the
sites' answers.

The same function runs a query at the coordinator (:class:`~biofed.coordinator.RunExecutor`)
and in a simulation (:func:`biofed.simulation.analyze`).

Security notes
--------------
Threat: a site answering with arrays that are not an answer (extra, missing or misshapen
arrays, non-finite values, a record count that does not add up) to skew a consortium
figure or crash the coordinator, and a pass that silently mixes two cohorts. Each reply is
checked with :func:`biofed.analytics.check_answer` inside the exchange's ``accept``; a reply
that fails is rejected (``reply_rejected``, the site left out) and never reaches the
analysis. Every later pass must be answered by exactly the sites whose first answer was
accepted (a Newton step on another set of sites would be another model): a site lost after
the first pass fails the run, naming it, rather than mixing passes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from biofed.analytics import (
    Answer,
    DisclosureRules,
    Query,
    Request,
    Result,
    check_answer,
    start,
)
from biofed.coordinator._exchange import Exchange, NodeExchange
from biofed.coordinator._records import RunEvent
from biofed.coordinator._secure_sum import AnalysisFailed, SecureSum, why
from biofed.core import (
    BiofedError,
    MessageKind,
    ParameterSet,
    ProtocolError,
    Reply,
)
from biofed.core.sections import NO_JOB, QUERY_REQUEST_KEY, JobSection
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import NodePlan
from biofed.transport import Transport

#: Run-event kind holding the query's result (its JSON: ``biofed.analytics.result_from_json``).
ANALYSIS_EVENT = "analysis_result"
#: Run-event kind of each pass: the sites asked and the sites that answered.
PASS_EVENT = "query_pass"
#: Most passes one query may take (a Cox fit takes a handful; a quantile a dozen).
MAX_PASSES = 200

_EMPTY = ParameterSet({})


def _accept(answers: dict[str, Answer], request: Request, reply: Reply) -> None:
    if reply.extras:
        raise ProtocolError("a query reply carries extras: only the answer's arrays may come back")
    arrays = {} if reply.parameters is None else dict(reply.parameters)
    answers[reply.node_id] = check_answer(request, arrays, reply.num_examples)


def plain_pass(
    exchange: Exchange, pass_no: int, request: Request, sites: Sequence[str]
) -> dict[str, Answer]:
    """One plain pass: ``request`` to every site of ``sites``; their checked answers."""
    text = request.to_json()
    plans = [NodePlan(node_id=n, config={QUERY_REQUEST_KEY: text}) for n in sites]
    answers: dict[str, Answer] = {}
    accept = functools.partial(_accept, answers, request)
    exchange.exchange(pass_no, MessageKind.QUERY, _EMPTY, plans, accept)
    return answers


def run_analysis(
    exchange: Exchange,
    nodes: Sequence[str],
    query: Query,
    rules: DisclosureRules,
    *,
    min_replies: int,
    secure: SecureAggregationSettings | None = None,
    events: Sequence[RunEvent] = (),
) -> Result:
    """Run ``query`` over ``nodes`` through ``exchange`` and return its result.

    Parameters
    ----------
    exchange:
        The run's conversation with its sites (the executor's, or a simulation's).
    nodes:
        The sites asked in the first pass.
    query, rules:
        The query and the disclosure rules every request states (and the analysis applies
        to combined answers).
    min_replies:
        Valid answers each pass needs (at least 2 in secure mode).
    secure:
        The job's secure-aggregation settings: every pass is a secure sum; None: plain.
    events:
        The run's event list as the exchange records it (read to word a failure with the
        sites' own reasons).

    Raises
    ------
    AnalysisFailed
        When too few sites answered a pass (their reasons in the message), a site of the
        first pass did not answer a later one, or the analysis refused the answers.
    ConfigurationError
        For a kind that cannot run securely, when ``secure`` is given.
    RunCancelled
        Once the run is cancelled.
    """
    analysis = start(query, rules, secure=secure is not None)
    summing = None if secure is None else SecureSum(secure, min_replies=min_replies)
    asked = sorted(nodes)
    pass_no = 0
    while not analysis.done:
        pass_no += 1
        if pass_no > MAX_PASSES:
            raise AnalysisFailed(f"analysis: the query did not end within {MAX_PASSES} passes")
        request = analysis.request()
        first = len(events)
        answers: dict[str, Answer] = {}
        total: Answer | None = None
        if summing is None:
            answers = plain_pass(exchange, pass_no, request, asked)
            answered: Sequence[str] = sorted(answers)
        else:
            try:
                total, answered = summing.run(exchange, pass_no, request, asked)
            except AnalysisFailed as exc:
                reasons = why(events, first)
                raise AnalysisFailed(f"{exc}" + (f" ({reasons})" if reasons else "")) from None
        exchange.event(
            pass_no,
            PASS_EVENT,
            f"pass {pass_no} ({request.step}): {len(asked)} sites asked, {len(answered)} answered",
        )
        reasons = why(events, first)
        if len(answered) < min_replies:
            raise AnalysisFailed(
                f"analysis: {len(answered)} of {len(asked)} sites answered pass {pass_no}, "
                f"the run needs {min_replies}" + (f" ({reasons})" if reasons else "")
            )
        if pass_no > 1 and list(answered) != asked:
            lost = ", ".join(sorted(set(asked) - set(answered)))
            raise AnalysisFailed(
                f"analysis: {lost} answered pass 1 but not pass {pass_no}; a query's passes "
                "rest on the same sites" + (f" ({reasons})" if reasons else "")
            )
        asked = sorted(answered)
        try:
            analysis = analysis.add(answers) if total is None else analysis.add_total(total, asked)
        except BiofedError as exc:
            raise AnalysisFailed(f"analysis: pass {pass_no}: {exc}") from None
    return analysis.result()


class _Quiet:
    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_event(self, event: RunEvent) -> None:
        pass


class QueryListener(Protocol):
    """What :func:`analyze_over` tells as a query runs (the coordinator's
    :class:`~biofed.coordinator.StoreListener` fits)."""

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        """A reply arrived (accepted or not)."""

    def on_event(self, event: RunEvent) -> None:
        """Something the operator should know (a pass, a refusal…)."""


def analyze_over(
    transport: Transport,
    query: Query,
    rules: DisclosureRules,
    *,
    run_id: str,
    min_nodes: int = 1,
    min_replies: int = 1,
    round_timeout: float | None = None,
    job: JobSection = NO_JOB,
    secure: SecureAggregationSettings | None = None,
    listener: QueryListener | None = None,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    seed: int = 0,
) -> tuple[Result, list[RunEvent]]:
    """Run ``query`` over the sites ``transport`` reaches: the exchange the coordinator's
    executor and a simulation both build, then :func:`run_analysis`.

    Returns the result and the run's events (passes, rejected replies…).

    Parameters
    ----------
    job:
        The job section every instruction carries (dataset, agreement, study, secure
        aggregation): :meth:`~biofed.coordinator.AnalysisJob.job_section`.
    round_timeout:
        Seconds each exchange waits; None waits for every site (a simulation).
    seed:
        Sent as ``seed`` in every instruction (sites draw DP noise from a CSPRNG).

    Raises
    ------
    AnalysisFailed
        Fewer than ``min_nodes`` sites reachable, or as :func:`run_analysis`.
    """
    events: list[RunEvent] = []
    hooks: QueryListener = listener or _Quiet()

    def record(event: RunEvent) -> None:
        events.append(event)
        hooks.on_event(event)

    exchange = NodeExchange(
        transport,
        run_id=run_id,
        round_timeout=round_timeout,
        run_config={},
        seed=seed,
        listener=hooks,
        job=job,
        on_event=record,
        clock=clock,
        cancel=cancel,
    )
    exchange.check_cancel()
    nodes = list(transport.available_nodes())
    if len(nodes) < min_nodes:
        raise AnalysisFailed(f"analysis: {len(nodes)} sites available, the run needs {min_nodes}")
    exchange.start_round(nodes)
    result = run_analysis(
        exchange,
        [n.node_id for n in nodes],
        query,
        rules,
        min_replies=min_replies,
        secure=secure,
        events=events,
    )
    return result, events


def result_event(events: Sequence[tuple[str, str]]) -> str | None:
    """The JSON of a run's last ``analysis_result`` event, from ``(kind, message)`` pairs."""
    for kind, message in reversed(events):
        if kind == ANALYSIS_EVENT:
            return message
    return None

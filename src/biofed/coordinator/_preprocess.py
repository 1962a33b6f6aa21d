"""The preprocessing phase: a job's study table is fitted across the sites before round 1.

A job with a ``[study]`` spec starts with this phase, run by the round engine over its one
:class:`~biofed.coordinator.Exchange` — the SAME governed site chain a training round goes
through (policy, output control, privacy, audit). Each pass sends one
``MessageKind.SUMMARISE`` instruction per site carrying the pass's
:class:`~biofed.data.SummaryRequest` (as JSON, in ``directives.summary_request``); a site
compiles the spec against its own data and answers with the summary's arrays (its reply's
``parameters``); the coordinator's pure :class:`~biofed.data.PreprocessingFit` combines
them. Passes repeat until the fit is done; the fitted :class:`~biofed.data.Preprocessing`
then travels in every later instruction's job section.

Security notes
--------------
Threat: a site (or anyone on its path) answering a summary request with arrays that are
not a summary — extra or missing arrays, another pass's figures, counts that do not add up,
non-finite moments — to skew every site's standardisation or to crash the run. Each reply
is parsed by :meth:`~biofed.data.SiteSummary.from_arrays` (which refuses anything but the
summary's own arrays) and checked against the request it answers inside the exchange's
``accept``; a reply that fails is rejected (``reply_rejected``, the site left out of the
pass) and never reaches the fit. Later passes ask only the sites whose first reply was
accepted, so one fit never mixes cohorts.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from biofed.coordinator._exchange import Exchange
from biofed.coordinator._records import RunEvent
from biofed.core import (
    BiofedError,
    ConfigurationError,
    MessageKind,
    ParameterSet,
    ProtocolError,
    Reply,
    RoundFailed,
    Scalar,
)
from biofed.core.sections import SUMMARY_REQUEST_KEY
from biofed.data import Preprocessing, PreprocessingFit, SiteSummary, StudySpec, SummaryRequest
from biofed.strategies import NodePlan

#: Run-event kind holding the fitted preprocessing's JSON (resumed runs reuse it).
PREPROCESSING_EVENT = "preprocessing_fitted"
#: Run-event kind holding the final pass's per-site summaries (the heterogeneity input).
SUMMARIES_EVENT = "data_summaries"
#: Metadata key of the fitted preprocessing in a run's result (beside the model).
RESULT_PREPROCESSING = "preprocessing"
#: Most passes a fit may ask for before the phase gives up (a fit takes two or three).
MAX_PASSES = 16

_EMPTY = ParameterSet({})


class PreprocessingFailed(RoundFailed):
    """The preprocessing phase could not fit the study's preprocessing: the run fails."""

    code = "preprocessing_failed"


def fitted_task_options(
    options: Mapping[str, Scalar], preprocessing: Preprocessing
) -> dict[str, Scalar]:
    """``options`` with ``num_features`` set to the fitted feature count.

    Raises
    ------
    ConfigurationError
        If ``options`` gives another ``num_features`` (one line naming both).
    """
    fitted = len(preprocessing.feature_names)
    given = options.get("num_features")
    if given is not None and given != fitted:
        shown = ", ".join(preprocessing.feature_names[:12])
        more = ", …" if fitted > 12 else ""
        raise ConfigurationError(
            f"[task] num_features is {given}, but the fitted preprocessing gives {fitted} "
            f"features ({shown}{more}): set it to {fitted} or leave it out"
        )
    return {**options, "num_features": fitted}


def summaries_json(summaries: Mapping[str, SiteSummary]) -> str:
    """The per-site summaries as one JSON object ``{site: {array name: list}}`` (the
    arrays of :meth:`~biofed.data.SiteSummary.to_arrays`; NaN as ``null``)."""

    def plain(value: Any) -> Any:
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    out = {
        site: {name: plain(array.tolist()) for name, array in summary.to_arrays().items()}
        for site, summary in sorted(summaries.items())
    }
    return json.dumps(out, sort_keys=True, separators=(",", ":"), allow_nan=False)


def check_summary(reply: Reply, request: SummaryRequest) -> SiteSummary:
    """The summary a SUMMARISE reply carries, checked against the request it answers.

    Raises
    ------
    ProtocolError
        If the reply carries no arrays, arrays that are not a summary, or a summary of
        other columns than those asked for (one line, no values echoed).
    """
    if reply.parameters is None or not len(reply.parameters):
        raise ProtocolError("summary reply carries no arrays")
    try:
        summary = SiteSummary.from_arrays(dict(reply.parameters))
    except BiofedError as exc:
        raise ProtocolError(f"summary reply is not a summary: {exc}") from None
    if set(summary.to_arrays()) != set(reply.parameters):
        raise ProtocolError("summary reply carries arrays that are not the summary's")
    _answers(summary, request)
    if reply.num_examples != summary.records:
        raise ProtocolError(
            f"summary reply claims {reply.num_examples} examples but summarises "
            f"{summary.records} records"
        )
    return summary


def _answers(summary: SiteSummary, request: SummaryRequest) -> None:
    """Refuse a summary of other columns, or on other histogram edges, than asked for."""
    asked = set(request.numeric) | set(request.categorical)
    given = set(summary.numeric) | set(summary.categorical)
    wrong = sorted(
        (set(summary.numeric) - set(request.numeric))
        | (set(summary.categorical) - set(request.categorical))
    )
    if wrong:
        raise ProtocolError(
            f"summary reply has {len(wrong)} column(s) the request did not ask for, or of "
            "another kind"
        )
    unexplained = sorted(asked - given - set(summary.suppressed))
    if unexplained:
        raise ProtocolError(
            f"summary reply leaves out {len(unexplained)} asked column(s) without saying they "
            "were suppressed"
        )
    for name, stats in summary.numeric.items():
        if stats.edges != request.numeric[name].edges:
            raise ProtocolError(f"summary reply's histogram of {name!r} is not on the asked edges")


def _accept(summaries: dict[str, SiteSummary], request: SummaryRequest, reply: Reply) -> None:
    summaries[reply.node_id] = check_summary(reply, request)


def _why(events: Sequence[RunEvent], first: int) -> str:
    reasons = [
        f"{e.node_id}: {e.message}"
        for e in events[first:]
        if e.kind in ("reply_rejected", "no_reply", "send_failed") and e.node_id
    ]
    return "; ".join(reasons[:4]) + (" …" if len(reasons) > 4 else "")


def run_preprocessing(
    exchange: Exchange,
    nodes: Sequence[str],
    spec: StudySpec,
    *,
    min_replies: int,
    events: Sequence[RunEvent],
) -> tuple[Preprocessing, Mapping[str, SiteSummary]]:
    """Fit ``spec``'s preprocessing over ``nodes`` through ``exchange``.

    Returns the fitted preprocessing and the final pass's per-site summaries.

    Parameters
    ----------
    events:
        The engine's event list (read to word a failure with the sites' own reasons).

    Raises
    ------
    PreprocessingFailed
        When fewer than ``min_replies`` sites answered a pass, or the fit would not end.
    RunCancelled
        Once the run is cancelled.
    """
    fit = PreprocessingFit.start(spec)
    asked = list(nodes)
    for pass_no in range(1, MAX_PASSES + 1):
        if fit.done:
            return fit.result(), fit.last_summaries
        request = fit.request()
        text = request.to_json()
        plans = [NodePlan(node_id=n, config={SUMMARY_REQUEST_KEY: text}) for n in asked]
        summaries: dict[str, SiteSummary] = {}
        first = len(events)
        accept = functools.partial(_accept, summaries, request)
        exchange.exchange(pass_no, MessageKind.SUMMARISE, _EMPTY, plans, accept)
        if len(summaries) < min_replies:
            why = _why(events, first)
            raise PreprocessingFailed(
                f"preprocessing: {len(summaries)} of {len(asked)} sites answered pass "
                f"{pass_no}, the run needs {min_replies}" + (f" ({why})" if why else "")
            )
        asked = sorted(summaries)
        try:
            fit = fit.add(summaries)
        except BiofedError as exc:
            raise PreprocessingFailed(f"preprocessing: pass {pass_no}: {exc}") from None
    if fit.done:
        return fit.result(), fit.last_summaries
    raise PreprocessingFailed(f"preprocessing: the fit did not end within {MAX_PASSES} passes")


def reused(events: Sequence[tuple[str, str]]) -> Preprocessing | None:
    """The preprocessing a run already fitted (its last ``preprocessing_fitted`` event, from
    ``(kind, message)`` pairs), or None."""
    for kind, message in reversed(events):
        if kind == PREPROCESSING_EVENT:
            return Preprocessing.from_json(message)
    return None

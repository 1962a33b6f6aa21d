"""One pass of a query under secure aggregation: the sites' answers summed with SecAgg+.

The four stages of :class:`~biofed.coordinator.SecureRound` over the same
:class:`~biofed.coordinator.Exchange`, with three differences: every stage's instruction
carries the pass's request (``directives.query_request``), so a site knows from the first
stage what it will be asked to sum and can refuse early; the vector each site masks is its
answer's arrays and its record count (:func:`biofed.analytics.secure_vector`, ``request.size
+ 1`` float64 values), added with weight 1 (``secagg.weighting = "equal"``); and what is
unmasked is the sum :attr:`~biofed.secagg.SecAggResult.total`, not a mean, read back as the
combined :class:`~biofed.analytics.Answer` (:func:`biofed.analytics.total_from_vector`).

The sum is exact up to the fixed-point grid: within ``n·s/2`` over ``n`` sites (``s`` the
job's ``quantisation_step``); with ``s = 1/K`` and a whole ``clip_range`` zeros and counts
are exact (:func:`biofed.secagg`'s decoding removes the grid's offset in integers); the
record count is rounded to the integer it is.

Security notes
--------------
Threat: a curious coordinator reading one site's statistics (a small site's count, its
gradient). It holds only masked vectors, uniformly distributed in the ring, and the
unmasked sum of at least two sites (Bonawitz et al. 2017; the SecAgg+ graph of Bell et al.
2020; see :mod:`biofed.secagg`). A stage reply that carries plain arrays beside its
protocol message is refused, so no per-site statistic is kept even from a site that sends
one. Disclosure rules apply to the total (the analysis), and a site refuses a request whose
rules are looser than its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from biofed.analytics import Answer, Request, total_from_vector
from biofed.coordinator._exchange import Exchange
from biofed.coordinator._records import RunCancelled, RunEvent
from biofed.coordinator._secure import run_stages
from biofed.core import (
    BiofedError,
    ConfigurationError,
    ParameterSet,
    RoundFailed,
    SecureAggregationError,
)
from biofed.core.sections import QUERY_REQUEST_KEY
from biofed.secagg import WEIGHTING_KEY, SecAggServer, SecureAggregationSettings

_EMPTY = ParameterSet({})
_PROBLEMS = ("reply_rejected", "no_reply", "send_failed", "reply_late")


class AnalysisFailed(RoundFailed):
    """A query could not be answered (too few sites, a site lost between passes, answers
    the analysis refused): the run fails, the sites' reasons in the message."""

    code = "analysis_failed"


def why(events: Sequence[RunEvent], first: int) -> str:
    """The sites' reasons among ``events[first:]`` (rejections, silences), at most four."""
    reasons = [
        f"{e.node_id}: {e.message}" for e in events[first:] if e.kind in _PROBLEMS and e.node_id
    ]
    return "; ".join(reasons[:4]) + (" …" if len(reasons) > 4 else "")


class SecureSum:
    """Sums the sites' answers to one request under SecAgg+ (see the module).

    Parameters
    ----------
    settings:
        The job's ``[secure_aggregation]`` (weight 1: ``max_weight`` 1).
    min_replies:
        Sites that must be in the sum (at least 2: a sum of one site is that site).
    """

    def __init__(self, settings: SecureAggregationSettings, *, min_replies: int = 2) -> None:
        self.settings = settings
        self.min_replies = max(2, min_replies)

    def run(
        self, exchange: Exchange, pass_no: int, request: Request, sites: Sequence[str]
    ) -> tuple[Answer, tuple[str, ...]]:
        """Run the four stages for ``request`` over ``sites``; return the summed answer and
        the sites in the sum.

        Raises
        ------
        AnalysisFailed
            When fewer than ``min_replies`` sites remain, or the protocol aborts.
        RunCancelled
            Once the run is cancelled.
        """
        text = request.to_json()
        # The sites flatten their answers in the layout's order as they read it from the
        # JSON (sorted keys); decode the sum in that same order, not the analysis's own.
        request = Request.from_json(text)
        if request.layout is None:
            raise AnalysisFailed(f"analysis: pass {pass_no} ({request.step}) is not a sum")
        participants = sorted(sites)
        if len(participants) < self.min_replies:
            raise AnalysisFailed(
                f"analysis: secure aggregation needs at least {self.min_replies} sites, "
                f"{len(participants)} are available"
            )
        try:
            plan = self.settings.secagg_config(request.size + 1).plan(len(participants))
            server = SecAggServer(plan, participants, run_id=exchange.run_id, round=pass_no)
        except ConfigurationError as exc:
            raise AnalysisFailed(f"analysis: secure aggregation refused: {exc}") from None
        try:
            result = run_stages(
                exchange,
                pass_no,
                server,
                {n: {QUERY_REQUEST_KEY: text, WEIGHTING_KEY: "equal"} for n in participants},
                masked_model=_EMPTY,
                plain_arrays=False,
            )
        except SecureAggregationError as exc:
            raise AnalysisFailed(f"analysis: secure aggregation aborted: {exc}") from None
        except RunCancelled:
            raise
        except BiofedError as exc:
            raise AnalysisFailed(f"analysis: secure aggregation failed: {exc}") from None
        for node_id, left in sorted(result.dropouts.items()):
            exchange.event(pass_no, "secagg_dropout", f"dropped at {left.value}", node_id)
        if result.total is None:  # pragma: no cover - the server always sets it
            raise AnalysisFailed("analysis: secure aggregation released no sum")
        survivors = tuple(sorted(result.survivors))
        if len(survivors) < self.min_replies:
            raise AnalysisFailed(
                f"analysis: {len(survivors)} sites in the secure sum, the run needs "
                f"{self.min_replies}"
            )
        try:
            return total_from_vector(request, result.total), survivors
        except BiofedError as exc:
            raise AnalysisFailed(f"analysis: pass {pass_no}: the secure sum: {exc}") from None

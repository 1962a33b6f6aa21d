"""Averaging DP answers: a researcher re-running the same DP query (another run, another
pass, the same pass again) must pay for every answer in the site's ledger, across runs,
until the dataset's cap refuses — the site's real :class:`SitePrivacy` over a ledger."""

from __future__ import annotations

import pytest

from biofed.analytics import DisclosureRules, Query, start
from biofed.core import Instruction, MessageKind, ParameterSet, PrivacyBudgetExceeded
from biofed.core.sections import JobSection, RoundDirectives
from biofed.governance import PrivacyLedger
from biofed.node._privacy import SitePrivacy

QUERY = Query.from_dict({"kind": "count", "dp": {"mechanism": "laplace", "epsilon": 0.3}})


def _reserve(privacy: SitePrivacy, run_id: str, round: int = 1) -> tuple[float, float]:
    request = start(QUERY, DisclosureRules()).request()
    inst = Instruction(
        run_id=run_id,
        round=round,
        node_id="a",
        kind=MessageKind.QUERY,
        parameters=ParameterSet(),
        job=JobSection(dataset="brca"),
        directives=RoundDirectives(query_request=request.to_json()),
    )
    return privacy.reserve_query(
        dataset="brca",
        instruction=inst,
        query_sha256=QUERY.digest,
        pass_no=request.pass_no,
        mechanism="laplace",
        epsilon=0.3,
        delta=0.0,
    )


def test_the_same_dp_query_rerun_under_new_runs_pays_each_time_until_the_cap() -> None:
    ledger = PrivacyLedger.in_memory()
    ledger.set_cap("brca", 1.0, 1e-5)
    privacy = SitePrivacy(ledger)
    _reserve(privacy, "r-1")
    _reserve(privacy, "r-2")
    assert ledger.spent("brca").spent_epsilon == pytest.approx(0.6)
    again = _reserve(privacy, "r-2")  # the same pass of the same run asked again
    assert again[0] == pytest.approx(0.6)  # that run's own spend: two answers
    assert ledger.spent("brca").spent_epsilon == pytest.approx(0.9)
    with pytest.raises(PrivacyBudgetExceeded):
        _reserve(privacy, "r-3")  # 1.2 > 1.0 across runs: refused
    assert ledger.spent("brca").spent_epsilon == pytest.approx(0.9)

"""biofed.simulation.analyze on Fed-TCGA-BRCA: real site nodes, the coordinator's own loop,
plain and secure; the secure coordinator holds no per-site statistic."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.analytics import DisclosureRules, Query, QueryTable, answer, start
from biofed.coordinator import AnalysisFailed, RunEvent
from biofed.core import ConfigurationError, Reply
from biofed.datasets import load_tcga_brca
from biofed.secagg import SecureAggregationSettings
from biofed.simulation import analyze

#: Days² of follow-up reach 1e9 at one site: the grid must reach further than the default.
WIDE = SecureAggregationSettings(clip_range=1e10, quantisation_step=1e-5, max_weight=1)


@pytest.fixture(scope="module")
def fed():  # type: ignore[no-untyped-def]
    return load_tcga_brca()


def pooled(fed, column: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate(
        [QueryTable.from_site_data(site).column(column) for site in fed.sites.values()]
    )


def test_count_plain_and_secure_equal_the_pooled_count(fed) -> None:  # type: ignore[no-untyped-def]
    query = Query.from_dict(
        {"kind": "count", "where": [{"column": "age_at_index", "op": ">=", "value": 60}]}
    )
    expected = int((pooled(fed, "age_at_index") >= 60).sum())
    plain = analyze(fed, query).to_dict()
    secure = analyze(fed, query, secure=True).to_dict()
    assert plain["count"] == expected
    assert secure["count"] == expected
    assert plain["sites"] == secure["sites"] == 6


def test_describe_plain_and_secure_equal_pooled_numpy(fed) -> None:  # type: ignore[no-untyped-def]
    query = Query("describe", {"columns": ["age_at_index", "time"]}, split="train")
    plain = analyze(fed, query).to_dict()
    secure = analyze(fed, query, secure=WIDE).to_dict()
    train = {
        c: np.concatenate(
            [
                site.train.targets[c]
                if c == "time"
                else site.train.features[:, site.train.feature_names.index(c)]
                for site in fed.sites.values()
            ]
        ).astype(np.float64)
        for c in ("age_at_index", "time")
    }
    for out, tol in ((plain, 1e-12), (secure, 1e-9)):
        stats = {s["column"]: s for s in out["stats"]}
        for column, values in train.items():
            assert stats[column]["n"] == values.size
            assert stats[column]["mean"] == pytest.approx(values.mean(), rel=tol)
            assert stats[column]["variance"] == pytest.approx(values.var(ddof=1), rel=1e-8)


class Recorder:
    """Every reply the coordinator's loop received, as the exchange handed it over."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.events: list[RunEvent] = []

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        self.replies.append(reply)

    def on_event(self, event: RunEvent) -> None:
        self.events.append(event)


def test_in_secure_mode_the_coordinator_receives_no_per_site_statistic(fed) -> None:  # type: ignore[no-untyped-def]
    query = Query("describe", {"columns": ["age_at_index", "time"]})
    seen = Recorder()
    result = analyze(fed, query, secure=WIDE, listener=seen)
    assert result.to_dict()["sites"] == 6
    # what each site would have answered in the clear (its real answer, computed directly)
    request = start(query, DisclosureRules(), secure=True).request()
    site_answers = {
        name: answer(request, QueryTable.from_site_data(site)) for name, site in fed.sites.items()
    }
    assert seen.replies, "the coordinator received nothing"
    for reply in seen.replies:
        assert reply.kind.value == "secagg"
        assert reply.parameters is None or len(reply.parameters) == 0
        assert reply.num_examples == 0
        assert set(reply.extras) == {"secagg"}
        blob = b"".join(a.tobytes() for a in reply.extras["secagg"].values())
        own = site_answers[reply.node_id]
        for values in own.arrays.values():
            for v in values.ravel():
                if v != 0.0:  # a site's statistic appears nowhere in what it sent
                    assert np.float64(v).tobytes() not in blob
                    assert np.float32(v).tobytes() not in blob
        assert set(reply.metrics) <= {"dp.epsilon", "dp.delta", "dp.guarantee"}
    stages = {r.round for r in seen.replies}
    assert stages == {1}


def test_a_secure_kind_refusal_and_a_failed_run_name_their_reasons(fed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=r"\[secure_aggregation\] secure km needs"):
        analyze(fed, Query("km", {"time": "time", "event": "event"}), secure=True)
    with pytest.raises(AnalysisFailed, match=r"raise \[secure_aggregation\] clip_range"):
        analyze(fed, Query("describe", {"columns": ["time"]}), secure=True)
    strict = {name: DisclosureRules(min_cell=500) for name in list(fed.sites)[:4]}
    with pytest.raises(AnalysisFailed) as failed:
        analyze(fed, Query("count", {}), secure=True, node_rules=strict)
    assert "sites answered pass 1" in str(failed.value) or "secure" in str(failed.value)
    assert "center-0" in str(failed.value)

"""Harrell's C-index and ROC AUC against lifelines and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines.utils import concordance_index as lifelines_cindex
from sklearn.metrics import roc_auc_score

from biofed.core import DataError
from biofed.tasks import _metrics, concordance_index, roc_auc


def _reference(time: np.ndarray, score: np.ndarray, event: np.ndarray) -> float:
    try:
        return float(lifelines_cindex(time, score, event))
    except ZeroDivisionError:
        return math.nan


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 6), min_size=n, max_size=n),
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
        )
    )
)
def test_cindex_matches_lifelines_with_ties(data: tuple[list[int], list[int], list[int]]) -> None:
    time, score, event = (np.asarray(a, dtype=float) for a in data)
    expected = _reference(time, score, event)
    got = concordance_index(time, score, event)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_cindex_matches_lifelines_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    time = rng.exponential(size=n)
    score = -time + rng.normal(size=n)
    event = rng.integers(0, 2, n)
    assert concordance_index(time, score, event) == pytest.approx(
        lifelines_cindex(time, score, event), abs=1e-12
    )


def test_cindex_chunking_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    time = rng.integers(0, 50, 500).astype(float)
    score = rng.integers(0, 20, 500).astype(float)
    event = rng.integers(0, 2, 500)
    whole = concordance_index(time, score, event)
    monkeypatch.setattr(_metrics, "_PAIR_CHUNK", 777)
    assert concordance_index(time, score, event) == whole
    assert whole == pytest.approx(lifelines_cindex(time, score, event), abs=1e-12)


def test_cindex_defaults_and_edge_cases() -> None:
    time = np.array([1.0, 2.0, 3.0])
    assert concordance_index(time, time) == 1.0
    assert concordance_index(time, -time) == 0.0
    assert concordance_index(time, np.zeros(3)) == 0.5
    assert math.isnan(concordance_index(time, time, np.zeros(3)))
    assert math.isnan(concordance_index([1.0, 1.0], [0.0, 1.0], [1, 1]))
    assert math.isnan(concordance_index([], [], []))


def test_cindex_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="same length"):
        concordance_index([1.0, 2.0], [1.0], [1, 1])
    with pytest.raises(DataError, match="NaN"):
        concordance_index([1.0, float("nan")], [1.0, 2.0], [1, 1])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
            st.lists(st.integers(-4, 4), min_size=n, max_size=n),
        )
    )
)
def test_roc_auc_matches_sklearn_with_ties(data: tuple[list[int], list[int]]) -> None:
    labels, scores = np.asarray(data[0]), np.asarray(data[1], dtype=float)
    got = roc_auc(labels, scores)
    if labels.min() == labels.max():
        assert math.isnan(got)
    else:
        assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_continuous_and_bool_labels() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(1000) < 0.3
    scores = rng.normal(size=1000) + labels
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match="same length"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(DataError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])

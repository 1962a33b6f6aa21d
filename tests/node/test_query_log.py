"""The node's query log: the differencing rule (Denning & Schlörer 1983), its durability,
its bounds, and attempts to get past it."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from biofed.core import ConfigurationError, PolicyViolation
from biofed.node._query_log import MEMORY, QueryLog, symmetric_difference_size


def _record(
    log: QueryLog,
    ids: object,
    k: int = 10,
    dataset: str = "d",
    run: str = "r",
    query: str | None = None,
) -> None:
    """Log ``ids`` as the cohort of a query of its own (``query``: its digest)."""
    digest = query or hashlib.sha256(os.urandom(16)).hexdigest()
    log.check_and_record(
        dataset, np.asarray(ids), min_difference=k, run_id=run, query_sha256=digest
    )


def test_a_cohort_one_to_k_minus_one_records_away_is_refused(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "queries.db")
    base = np.arange(100, 200)
    _record(log, base)
    for diff in (1, 5, 9):
        with pytest.raises(PolicyViolation) as info:
            _record(log, base[diff:])  # fewer records
        message = str(info.value)
        assert "differs by fewer than 10 records" in message
        # no ids and no counts: the only number is the threshold k
        assert not any(c.isdigit() for c in message.replace("fewer than 10 records", ""))
        with pytest.raises(PolicyViolation):
            _record(log, np.concatenate([base, np.arange(1000, 1000 + diff)]))  # more
    with pytest.raises(PolicyViolation):  # same size, one swapped: a difference of 2
        _record(log, np.concatenate([base[1:], [5000]]))
    _record(log, base[10:])  # 10 apart: answered
    _record(log, base)  # the same cohort again: answered (nothing new)
    _record(log, base[::-1])  # order does not matter
    assert log.cohorts("d") == 4  # base, base[10:], and base twice (each query's own)


def test_the_cohorts_of_one_query_are_not_compared_with_each_other() -> None:
    log = QueryLog(MEMORY)
    q = "1" * 64
    _record(log, range(60), query=q)
    _record(log, range(59), query=q)  # e.g. a describe's per-column cohorts, or a later pass
    assert log.cohorts("d") == 2
    _record(log, range(59), query=q)  # a repeat: stored once
    assert log.cohorts("d") == 2
    with pytest.raises(PolicyViolation):  # but another query's equal to one of them is
        _record(log, range(59))  # compared with the other: one apart from range(60)


def test_datasets_are_separate_and_min_difference_zero_or_one_turns_it_off() -> None:
    log = QueryLog(MEMORY)
    _record(log, range(50))
    _record(log, range(49), dataset="other")
    _record(log, range(48), k=1)
    _record(log, range(47), k=0)


def test_the_log_survives_a_restart_and_is_in_wal_mode(tmp_path: Path) -> None:
    file = tmp_path / "queries.db"
    _record(QueryLog(file), range(100))
    with pytest.raises(PolicyViolation):
        _record(QueryLog(file), range(99))
    db = sqlite3.connect(file)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_concurrent_pair_one_apart_cannot_both_pass(tmp_path: Path) -> None:
    file = tmp_path / "queries.db"
    QueryLog(file).cohorts("d")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def run(ids: range) -> None:
        log = QueryLog(file)  # one object each, as two processes would have
        barrier.wait()
        try:
            _record(log, ids)
            outcomes.append("answered")
        except PolicyViolation:
            outcomes.append("refused")

    threads = [threading.Thread(target=run, args=(r,)) for r in (range(100), range(101))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["answered", "refused"]


def test_only_the_newest_cohorts_are_kept(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "queries.db", max_cohorts=3)
    _record(log, range(100))
    for start in (1000, 2000, 3000):
        _record(log, range(start, start + 100))
    assert log.cohorts("d") == 3
    _record(log, range(99))  # the first cohort was dropped: the documented window
    with pytest.raises(PolicyViolation):
        _record(log, range(3000, 3099))


def test_a_damaged_log_or_another_file_fails_closed(tmp_path: Path) -> None:
    file = tmp_path / "queries.db"
    _record(QueryLog(file), range(100))
    db = sqlite3.connect(file)
    db.execute("UPDATE cohorts SET ids = x'00'")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match="damaged"):
        _record(QueryLog(file), range(95))
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match="not a biofed query log"):
        _record(QueryLog(other), range(10))


def test_the_rule_matches_a_brute_force_check_on_random_cohorts() -> None:
    rng = np.random.default_rng(7)
    log = QueryLog(MEMORY)
    logged: list[set[int]] = []
    for _ in range(300):
        size = int(rng.integers(0, 40))
        ids = set(rng.choice(60, size=size, replace=False).tolist())
        near = any(0 < len(ids ^ other) < 5 for other in logged)
        try:
            _record(log, sorted(ids), k=5)
            assert not near
            if ids not in logged:
                logged.append(ids)
        except PolicyViolation:
            assert near


def test_symmetric_difference_size() -> None:
    a = np.array([1, 2, 3, 7], dtype=np.int64)
    b = np.array([2, 3, 4], dtype=np.int64)
    assert symmetric_difference_size(a, b) == 3
    assert symmetric_difference_size(a, a) == 0


def test_a_differencing_through_a_missing_value_is_refused() -> None:
    """describe [x, y] releases the sum of x over the rows with x; a second describe of x
    that leaves out the one patient whose y is missing (by a filter on the id) would give
    that patient's x by subtraction — unless the log compares per-column cohorts."""
    from biofed.analytics import Query, QueryTable, Request
    from biofed.core import Instruction, MessageKind, ParameterSet
    from biofed.core.sections import JobSection, RoundDirectives
    from biofed.node import NodeApp, NodeConfig

    n = 60
    rng = np.random.default_rng(3)
    y = rng.normal(size=n)
    y[17] = np.nan  # patient 17 alone misses y
    table = QueryTable(
        name="t",
        columns={"x": rng.normal(50, 10, n), "y": y, "pid": np.arange(n, dtype=np.float64)},
        kinds={"x": "numeric", "y": "numeric", "pid": "numeric"},
        ids=np.arange(n),
        is_test=np.zeros(n, dtype=bool),
    )
    app = NodeApp("site", NodeConfig(datasets={}))
    app.queries._tables[("t", "")] = table  # the site's table for dataset "t"

    def ask(query: dict[str, object], run: str) -> str | None:
        request = Request(query=Query.from_dict(query), pass_no=1, step="sums", layout=None)
        request = Request.from_json(request.to_json())
        spec = __import__("biofed.analytics", fromlist=["start"]).start(request.query)
        request = spec.request()
        inst = Instruction(
            run_id=run,
            round=1,
            node_id="site",
            kind=MessageKind.QUERY,
            parameters=ParameterSet(),
            job=JobSection(dataset="t"),
            directives=RoundDirectives(query_request=request.to_json()),
        )
        return app.handle(inst).error

    both = {"kind": "describe", "options": {"columns": ["x", "y"]}}
    assert ask(both, "q-1") is None
    but_17 = {**both, "options": {"columns": ["x"]}, "where": [
        {"column": "pid", "op": "!=", "value": 17.0}
    ]}  # fmt: skip
    error = ask(but_17, "q-2")
    assert error is not None
    assert "differs by fewer than 10 records" in error

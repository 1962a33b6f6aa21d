"""Two small query kinds for the coordinator's analysis tests, registered on import.

``test_moments`` takes two summable passes (the sum and count, then the sum of squared
deviations from the pass-1 mean), so a test sees the loop carry state from pass to pass;
``test_each`` needs each site's answer on its own (no layout) and so cannot run securely.
They are real :class:`~biofed.analytics.KindSpec`\\ s, written with the protocol's own
helpers, so the loop is tested against the contract every kind implements, not a stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
from biofed.core import Array, ConfigurationError, ProtocolError

MOMENTS = "test_moments"
EACH = "test_each"


class MomentsResult(Result):
    kind = MOMENTS

    def __init__(self, n: int, mean: float, variance: float) -> None:
        self.n, self.mean, self.variance = n, mean, variance

    def to_dict(self) -> dict[str, Any]:
        return {"kind": MOMENTS, "n": self.n, "mean": self.mean, "variance": self.variance}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MomentsResult:
        return cls(int(data["n"]), float(data["mean"]), float(data["variance"]))


class Moments(Analysis):
    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        self.pass_no = 1
        self.n = 0
        self.mean = 0.0
        self.variance: float | None = None

    @property
    def done(self) -> bool:
        return self.variance is not None

    def request(self) -> Request:
        state = {} if self.pass_no == 1 else {"mean": self.mean}
        return Request(
            query=self.query,
            pass_no=self.pass_no,
            step="sums" if self.pass_no == 1 else "squares",
            state=state,
            rules=self.rules,
            secure=self.secure,
            layout={"total": (1,)},
        )

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        value = float(total.arrays["total"][0])
        if self.pass_no == 1:
            self.n = total.records
            self.mean = value / max(1, total.records)
            self.pass_no = 2
        else:
            self.variance = value / max(1, self.n - 1)
        return self

    def result(self) -> Result:
        assert self.variance is not None
        return MomentsResult(self.n, self.mean, self.variance)


def _moments_answer(
    request: Request,
    table: QueryTable,
    cohort: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    values = table.column(str(request.query.options["column"]))[cohort]
    values = values[~np.isnan(values)]
    if request.step == "sums":
        total = float(values.sum())
    else:
        total = float(((values - float(request.state["mean"])) ** 2).sum())
    return Answer(arrays={"total": np.array([total])}, records=int(values.size))


def _column(options: Mapping[str, Any]) -> Mapping[str, Any]:
    if set(options) != {"column"} or not isinstance(options["column"], str):
        raise ConfigurationError("test kinds take one option: column")
    return options


class EachResult(Result):
    kind = EACH

    def __init__(self, sites: int, records: int) -> None:
        self.sites, self.records = sites, records

    def to_dict(self) -> dict[str, Any]:
        return {"kind": EACH, "sites": self.sites, "records": self.records}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EachResult:
        return cls(int(data["sites"]), int(data["records"]))


class Each(Analysis):
    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        self.answers: dict[str, Answer] | None = None

    @property
    def done(self) -> bool:
        return self.answers is not None

    def request(self) -> Request:
        return Request(query=self.query, pass_no=1, step="each", rules=self.rules)

    def add(self, answers: Mapping[str, Answer]) -> Analysis:
        self.answers = dict(answers)
        return self

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        raise NotImplementedError

    def result(self) -> Result:
        assert self.answers is not None
        return EachResult(len(self.answers), sum(a.records for a in self.answers.values()))


def _each_answer(
    request: Request,
    table: QueryTable,
    cohort: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    return Answer(arrays={"n": np.array([float(cohort.sum())])}, records=int(cohort.sum()))


def _each_check(request: Request, answer: Answer) -> None:
    if set(answer.arrays) != {"n"} or answer.arrays["n"].shape != (1,):
        raise ProtocolError("a test_each answer is one array n of one value")


def _register() -> None:
    if MOMENTS in query_kinds():
        return
    register(
        KindSpec(
            name=MOMENTS,
            check_options=_column,
            columns=lambda options: [str(options["column"])],
            start=lambda query, rules, secure: Moments(query, rules, secure=secure),
            answer=_moments_answer,
            result_from_dict=MomentsResult.from_dict,
            secure_supported=True,
        )
    )
    register(
        KindSpec(
            name=EACH,
            check_options=_column,
            columns=lambda options: [str(options["column"])],
            start=lambda query, rules, secure: Each(query, rules, secure=secure),
            answer=_each_answer,
            result_from_dict=EachResult.from_dict,
            check=_each_check,
        )
    )


_register()
assert kind_of(MOMENTS).secure_supported

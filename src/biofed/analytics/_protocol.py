"""How a federated query runs: requests out, answers back, an analysis in between.

A query runs in passes. Each pass the coordinator's :class:`Analysis` (pure, per kind)
states a :class:`Request`; every site answers it on its own rows with
:func:`answer` (an :class:`Answer`: named float64 arrays and the records used); the
analysis takes the answers and either states the next pass (a Newton step, a refined
quantile bracket, the sums on an agreed time grid) or is done and holds its
:class:`Result`. The runtimes move requests and answers (``MessageKind.QUERY`` through the
site chain and the coordinator's exchange, or in simulation); nothing here does I/O.

Sums and secure mode
--------------------
A request with a ``layout`` (array name → shape, fixed by the request alone) asks for a
*sum*: the combined answer is the element-wise sum of the sites' arrays, which is what
secure aggregation can compute without the coordinator seeing any site's arrays
(:meth:`Analysis.add_total`). A request without a layout needs each site's answer on its
own (e.g. the distinct event times a plain Kaplan–Meier curve is built on) and cannot run
in secure mode; a kind whose every pass is a sum says so (``KindSpec.secure_supported``)
and :func:`start` refuses the others when ``secure=True``.

Security notes
--------------
Threat: a hostile site answering with arrays that are not an answer (extra, missing,
misshapen, non-finite, a record count that does not add up) to skew a consortium figure
or crash the coordinator; and a hostile coordinator sending a request that lowers a site's
disclosure thresholds. :func:`check_answer` refuses anything but the layout's arrays (or,
without a layout, what the kind's own check accepts), finite float64 only, at most
:data:`MAX_ANSWER_VALUES` values; :func:`answer` refuses a request whose stated rules are
looser than the site's own (:meth:`DisclosureRules.covers`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from biofed.analytics._query import Query, _loads, canonical_json, check_json_value
from biofed.analytics._rules import DisclosureRules
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, PolicyViolation, ProtocolError

#: Most values one answer may carry (a Cox pass on 1,000 event times × 40² is ~1.6 M).
MAX_ANSWER_VALUES = 1 << 24
#: Most records one site's answer may claim (no site holds a billion patients; a larger
#: figure is a lie meant to dominate a combined total).
MAX_SITE_RECORDS = 10**9
#: Longest request JSON (the instruction's document limit).
MAX_REQUEST_CHARS = 1 << 20


class NoiseSource(Protocol):
    """Where a site's DP noise comes from: a CSPRNG at a real site
    (:class:`biofed.analytics.SecureNoise`), a seeded generator in tests."""

    def laplace(self, scale: float, shape: tuple[int, ...]) -> Array: ...

    def gaussian(self, std: float, shape: tuple[int, ...]) -> Array: ...


@dataclass(frozen=True, slots=True)
class Request:
    """One pass of a query, as every site receives it.

    Attributes
    ----------
    query:
        The query.
    pass_no:
        1, 2, … within the run.
    step:
        The kind's name for what this pass computes (``"sums"``, ``"times"``,
        ``"newton"``…).
    state:
        The kind's JSON state for this pass (a Newton step's coefficients, an agreed time
        grid, histogram edges…).
    rules:
        The disclosure rules the coordinator applies to the combined answer; a site whose
        own rules are stricter refuses.
    secure:
        True when the answers are summed under secure aggregation (the site's arrays never
        reach the coordinator on their own).
    layout:
        Array name → shape of a summable answer, or None (each site's answer is needed on
        its own; plain mode only). Kept sorted by name: :func:`secure_vector` flattens in
        this order at every site and :func:`total_from_vector` reads it back the same way.
    """

    query: Query
    pass_no: int
    step: str
    state: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    rules: DisclosureRules = field(default_factory=DisclosureRules)
    secure: bool = False
    layout: Mapping[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, Query):
            raise ConfigurationError("a request's query must be a Query")
        if isinstance(self.pass_no, bool) or not isinstance(self.pass_no, int):
            raise ConfigurationError("a request's pass must be an integer")
        if not 1 <= self.pass_no <= 1000:
            raise ConfigurationError("a request's pass must lie in [1, 1000]")
        if not isinstance(self.step, str) or not 0 < len(self.step) <= 40:
            raise ConfigurationError("a request's step must be a short name")
        if not isinstance(self.rules, DisclosureRules):
            raise ConfigurationError("a request's rules must be DisclosureRules")
        if not isinstance(self.secure, bool):
            raise ConfigurationError("a request's secure flag must be a boolean")
        state = check_json_value(dict(self.state), "a request's state")
        object.__setattr__(self, "state", MappingProxyType(state))
        if self.layout is not None:
            layout: dict[str, tuple[int, ...]] = {}
            total = 0
            items = list(self.layout.items())
            if not all(isinstance(name, str) for name, _ in items):
                raise ConfigurationError("a layout's array names must be short strings")
            # sorted: the flat order of a secure vector is the same on both sides, whatever
            # order the layout was built or parsed in (canonical JSON sorts keys)
            for name, shape in sorted(items):
                if not name or len(name) > 64:
                    raise ConfigurationError("a layout's array names must be short strings")
                dims = tuple(shape)
                if not 0 <= len(dims) <= 3 or any(
                    isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims
                ):
                    raise ConfigurationError(f"layout of {name!r} must be up to 3 sizes >= 0")
                layout[name] = dims
                total += int(np.prod(dims, dtype=np.int64))
            if total > MAX_ANSWER_VALUES:
                raise ConfigurationError(f"a layout of {total} values is too large")
            object.__setattr__(self, "layout", MappingProxyType(layout))
        elif self.secure:
            raise ConfigurationError("a secure request needs a layout (it is summed)")

    @property
    def summable(self) -> bool:
        """Whether the combined answer is the sum of the sites' arrays."""
        return self.layout is not None

    @property
    def size(self) -> int:
        """Values in a summable answer (0 without a layout)."""
        if self.layout is None:
            return 0
        return int(sum(np.prod(s, dtype=np.int64) for s in self.layout.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "query": self.query.to_dict(),
            "pass": self.pass_no,
            "step": self.step,
            "state": dict(self.state),
            "rules": self.rules.to_dict(),
            "secure": self.secure,
            "layout": None if self.layout is None else {k: list(v) for k, v in self.layout.items()},
        }

    def to_json(self) -> str:
        """Canonical JSON (what travels in ``directives.query_request``)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Request:
        """From :meth:`to_json`'s text (bounded; every field checked)."""
        if isinstance(text, str) and len(text) > MAX_REQUEST_CHARS:
            raise ConfigurationError(f"query request is longer than {MAX_REQUEST_CHARS} characters")
        data = _loads(text, "query request") if len(text) <= 1 << 16 else _big(text)
        keys = {"query", "pass", "step", "state", "rules", "secure", "layout"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ConfigurationError("a query request is a table of " + ", ".join(sorted(keys)))
        layout = data["layout"]
        if layout is not None and not isinstance(layout, Mapping):
            raise ConfigurationError("a request's layout must be a table")
        state = data["state"]
        if not isinstance(state, Mapping):
            raise ConfigurationError("a request's state must be a table")
        rules = data["rules"]
        if not isinstance(rules, Mapping):
            raise ConfigurationError("a request's rules must be a table")
        return cls(
            query=Query.from_dict(data["query"]),
            pass_no=data["pass"],
            step=data["step"],
            state=state,
            rules=DisclosureRules.from_mapping(rules, what="request rules"),
            secure=data["secure"],
            layout=None
            if layout is None
            else {k: tuple(v) if isinstance(v, list) else v for k, v in layout.items()},
        )


def _big(text: str) -> Any:
    """Parse a request longer than a query's limit (a long state: a time grid, a Hessian)."""
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ConfigurationError(f"query request: key {key[:40]!r} appears twice")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ConfigurationError(f"query request: {name} is not a number")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except ConfigurationError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"query request is not valid JSON: {str(exc)[:80]}") from None


@dataclass(frozen=True, slots=True)
class Answer:
    """A site's answer to one request (or, in secure mode, the sum of the sites' answers).

    Attributes
    ----------
    arrays:
        Name → float64 array (read-only).
    records:
        Rows the answer rests on (the site's cohort after the kind's own complete-case
        rule); for a sum, the total.
    """

    arrays: Mapping[str, Array]
    records: int

    def __post_init__(self) -> None:
        arrays: dict[str, Array] = {}
        total = 0
        for name, value in self.arrays.items():
            if not isinstance(name, str) or not name or len(name) > 64:
                raise ProtocolError("an answer's array names must be short strings")
            arr = np.array(value, dtype=np.float64, copy=True)
            if arr.ndim > 3:
                raise ProtocolError(f"answer array {name!r} has more than 3 dimensions")
            total += arr.size
            if total > MAX_ANSWER_VALUES:
                raise ProtocolError(f"an answer may carry at most {MAX_ANSWER_VALUES} values")
            if not np.isfinite(arr).all():
                raise ProtocolError(f"answer array {name!r} holds NaN or infinite values")
            arr.flags.writeable = False
            arrays[name] = arr
        if isinstance(self.records, bool) or not isinstance(self.records, int | np.integer):
            raise ProtocolError("an answer's record count must be an integer")
        if self.records < 0:
            raise ProtocolError("an answer's record count must be >= 0")
        object.__setattr__(self, "arrays", MappingProxyType(arrays))
        object.__setattr__(self, "records", int(self.records))

    def flat(self, layout: Mapping[str, tuple[int, ...]]) -> Array:
        """The arrays in ``layout``'s order as one float64 vector (what secure mode masks)."""
        return np.concatenate([self.arrays[name].ravel() for name in layout] or [np.zeros(0)])

    @classmethod
    def from_flat(
        cls, vector: Array, layout: Mapping[str, tuple[int, ...]], *, records: int
    ) -> Answer:
        """Inverse of :meth:`flat`."""
        out: dict[str, Array] = {}
        offset = 0
        for name, shape in layout.items():
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = np.asarray(vector[offset : offset + size], np.float64).reshape(shape)
            offset += size
        if offset != len(vector):
            raise ProtocolError(f"a flat answer has {len(vector)} values, the layout {offset}")
        return cls(arrays=out, records=records)


def sum_answers(answers: Sequence[Answer], layout: Mapping[str, tuple[int, ...]]) -> Answer:
    """Element-wise sum of summable answers (plain mode's stand-in for the secure sum)."""
    arrays = {name: np.zeros(shape) for name, shape in layout.items()}
    for a in answers:
        for name in layout:
            arrays[name] += a.arrays[name]
    return Answer(arrays=arrays, records=sum(a.records for a in answers))


class Result(abc.ABC):
    """A query's combined, disclosure-controlled result (each kind has its own)."""

    kind: str

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON form, with ``"kind"``; what the run's ``analysis_result`` event stores."""

    def to_json(self) -> str:
        """Canonical JSON."""
        return canonical_json(self.to_dict())


class Analysis(abc.ABC):
    """The coordinator's side of one query: which request next, and the result.

    Subclasses keep their state on ``self``; :meth:`add` and :meth:`add_total` return the
    analysis to continue with (usually ``self``).
    """

    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        self.query = query
        self.rules = rules
        self.secure = secure

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether :meth:`result` is ready."""

    @abc.abstractmethod
    def request(self) -> Request:
        """The next pass's request (only while not :attr:`done`)."""

    def add(self, answers: Mapping[str, Answer]) -> Analysis:
        """Take the sites' checked answers to the last request (plain mode).

        The default, for a summable request, sums them and calls :meth:`add_total`; kinds
        with non-summable passes override it.
        """
        request = self.request()
        if request.layout is None:
            raise NotImplementedError(f"{type(self).__name__} must combine {request.step!r}")
        return self.add_total(sum_answers(list(answers.values()), request.layout), sorted(answers))

    @abc.abstractmethod
    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        """Take the sum of the answers of ``sites`` to the last (summable) request."""

    @abc.abstractmethod
    def result(self) -> Result:
        """The result (only once :attr:`done`)."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One query kind: its options, its site side, its coordinator side.

    Attributes
    ----------
    name:
        The kind (``"count"``…).
    check_options:
        Options → normalised options (defaults filled in); ConfigurationError otherwise.
    columns:
        Options → the columns the kind reads.
    start:
        ``(query, rules, secure)`` → the coordinator's :class:`Analysis`.
    answer:
        ``(request, table, cohort mask, rules, noise or None)`` → this site's
        :class:`Answer` (disclosure control applied: ``rules`` are already the stricter
        of the site's and the request's).
    check:
        ``(request, answer)`` → None, or ProtocolError for an answer that cannot answer
        ``request`` (beyond the layout check :func:`check_answer` makes itself).
    result_from_dict:
        The kind's :class:`Result` from its :meth:`Result.to_dict` form.
    dp_supported, secure_supported:
        Whether the kind can answer with DP noise / under secure aggregation.
    withheld:
        ``request`` → the kind's fully suppressed answer (built from the request alone, so
        it is the same whatever the site's rows hold), which :func:`answer` gives for a
        cohort of fewer than ``min_cell`` records; None: zeros in the request's layout with
        its ``suppressed``/``withheld`` flags set, or, for a kind whose layout has no such
        flag (or a request without a layout), a refusal.
    cells:
        ``(request, table, cohort mask, answer)`` → the row ids of each count cell the
        site's ``answer`` releases beyond its cohort (a histogram's or a quantile pass's
        bins, a crosstab's cells and margins): only cells that are not suppressed and not
        empty. Site-side only: the node's query log compares them with the cells of other
        queries (the differencing rule on released cells, :func:`released_cells`); they
        never travel. None: the kind releases nothing finer than its cohorts.
    """

    name: str
    check_options: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    columns: Callable[[Mapping[str, Any]], Sequence[str]]
    start: Callable[[Query, DisclosureRules, bool], Analysis]
    answer: Callable[[Request, QueryTable, Array, DisclosureRules, NoiseSource | None], Answer]
    result_from_dict: Callable[[Mapping[str, Any]], Result]
    check: Callable[[Request, Answer], None] = lambda request, answer: None
    dp_supported: bool = False
    secure_supported: bool = False
    withheld: Callable[[Request], Answer] | None = None
    cells: Callable[[Request, QueryTable, Array, Answer], Sequence[Array]] | None = None


#: Layout arrays that flag a withheld value (a combined value is withheld when any site's
#: flag is set, so a flag summed under secure aggregation still withholds it).
WITHHELD_FLAGS = ("suppressed", "withheld")


_KINDS: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    """Add a kind to the registry (each kind's module registers itself on import)."""
    if spec.name in _KINDS:
        raise ConfigurationError(f"query kind {spec.name!r} is registered twice")
    _KINDS[spec.name] = spec
    return spec


def kind_of(name: object) -> KindSpec:
    """The registered kind ``name``; one line listing the kinds otherwise."""
    if isinstance(name, str) and name in _KINDS:
        return _KINDS[name]
    shown = str(name)[:40]
    raise ConfigurationError(f"unknown query kind {shown!r}; kinds: {', '.join(sorted(_KINDS))}")


def query_kinds() -> tuple[str, ...]:
    """Registered kinds, sorted."""
    return tuple(sorted(_KINDS))


def start(query: Query, rules: DisclosureRules | None = None, *, secure: bool = False) -> Analysis:
    """The coordinator's analysis of ``query`` under ``rules`` (default thresholds).

    Raises
    ------
    ConfigurationError
        In secure mode, for a kind that needs each site's answer on its own (one line
        saying which kinds can run securely).
    """
    spec = kind_of(query.kind)
    if secure and not spec.secure_supported:
        able = ", ".join(k for k in query_kinds() if _KINDS[k].secure_supported)
        raise ConfigurationError(
            f"{query.kind} needs each site's answer on its own and cannot run under secure "
            f"aggregation (kinds that can: {able})"
        )
    return spec.start(query, DisclosureRules() if rules is None else rules, secure)


def answer(
    request: Request,
    table: QueryTable,
    rules: DisclosureRules | None = None,
    *,
    noise: NoiseSource | None = None,
) -> Answer:
    """This site's answer to ``request`` on ``table`` under its own ``rules``.

    In plain mode the site answers under the stricter of its rules and the request's (its
    own suppression protects its cells from the coordinator too). In secure mode its
    arrays are summed unseen and the coordinator applies the request's rules to the total,
    so the site refuses a request whose rules are looser than its own.

    A cohort (the rows the split and filters select) of fewer than ``min_cell`` records,
    zero included, gets the kind's fully suppressed answer (:func:`withheld_answer`) in
    both modes, unless the query is DP: a zero is never told apart from 1..k−1. In
    secure mode the site cannot suppress a value that is summed, so it sends zeros with
    its ``suppressed``/``withheld`` flags set; the flags are summed too and the combined
    value is withheld (a kind without flags refuses, for 0 and 1..k−1 alike).

    Raises
    ------
    PolicyViolation
        If a secure request's rules are looser than the site's, or a DP query comes
        without a noise source.
    DataError
        If the query names columns the table lacks (one line).
    """
    own = DisclosureRules() if rules is None else rules
    if request.secure and not request.rules.covers(own):
        raise PolicyViolation(
            "disclosure: the secure request's rules are looser than this site's "
            f"(site: {own.to_dict()}, request: {request.rules.to_dict()})"
        )
    if request.query.dp is not None and noise is None:
        raise PolicyViolation("privacy: a DP query needs the site's noise source")
    spec = kind_of(request.query.kind)
    for name in request.query.columns():
        table.column(name)  # one clear error for a missing column
    cohort = table.cohort(request.query)
    rules_now = own.stricter(request.rules)
    if _small(request, cohort, rules_now):
        out = withheld_answer(request)
    else:
        out = spec.answer(request, table, cohort, rules_now, noise)
    if request.layout is not None:
        _check_layout(out, request.layout)
    return out


def _small(request: Request, cohort: Array, rules: DisclosureRules) -> bool:
    return request.query.dp is None and int(np.count_nonzero(cohort)) < rules.min_cell


def small_cohort(request: Request, table: QueryTable, rules: DisclosureRules | None = None) -> bool:
    """Whether this site's cohort for ``request`` (the rows its split and filters select)
    holds fewer than ``min_cell`` records (zero included) under the stricter of ``rules``
    and the request's: :func:`answer` then gives the kind's fully suppressed answer,
    which releases nothing (the node neither logs it nor checks it against its query
    log). Always False for a DP query (the noise is the control there)."""
    own = DisclosureRules() if rules is None else rules
    return _small(request, table.cohort(request.query), own.stricter(request.rules))


def released_cells(
    request: Request, table: QueryTable, out: Answer, rules: DisclosureRules | None = None
) -> list[Array]:
    """The row ids of each count cell this site's answer ``out`` to ``request`` releases
    (the kind's :attr:`KindSpec.cells`): what the node's query log holds beside the
    answer's cohorts, so that two queries whose released cells differ by 1..k−1 patients
    are refused even when their cohorts are the same (two histograms with edges shifted by
    a hair; a crosstab margin and a filtered count).

    Empty for a kind without cells, for a fully suppressed answer (:func:`small_cohort`:
    it releases nothing) and for a DP query: each of its cells carries calibrated noise
    whose ε the ledger accounts for, which composes where a pairwise rule does not (its
    cohorts are still logged, so an exact query one patient away is refused).

    In secure mode the site cannot know which cells the coordinator will publish from the
    consortium's totals, so every non-empty cell counts as released.
    """
    spec = kind_of(request.query.kind)
    if spec.cells is None or request.query.dp is not None or small_cohort(request, table, rules):
        return []
    return [ids for ids in spec.cells(request, table, table.cohort(request.query), out) if ids.size]


def rows_by_code(ids: Array, codes: Array, released: Sequence[int]) -> list[Array]:
    """For each code in ``released``, the ``ids`` whose ``codes`` equal it (``ids`` and
    ``codes`` aligned; a helper for :attr:`KindSpec.cells`)."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    out = []
    for code in released:
        lo, hi = np.searchsorted(ordered, [code, code + 1])
        out.append(ids[order[lo:hi]])
    return out


def withheld_answer(request: Request) -> Answer:
    """The kind's fully suppressed answer to ``request``: a function of the request alone.

    Security notes
    --------------
    Threat: attribute disclosure by a zero cell — ``count where id == X and event == 1``
    answers 0 or "suppressed" by X's event when a zero is released and 1..k−1 withheld
    (Hundepool et al., *Statistical Disclosure Control*, Wiley 2012, §5.2 on zero cells
    of narrow cohorts). A cohort of 0..k−1 records therefore gets one answer, the same
    whatever the rows hold: zeros with every ``suppressed``/``withheld`` flag set, records
    0 (the combined value is then withheld, in plain mode and — the flags being summed —
    in secure mode alike); a kind without such flags refuses, for any cohort in 0..k−1.

    Raises
    ------
    PolicyViolation
        For a kind whose answer cannot say "withheld" (regression, a request without a
        layout and no kind-specific answer).
    """
    spec = kind_of(request.query.kind)
    if spec.withheld is not None:
        return spec.withheld(request)
    layout = request.layout
    if layout is not None and any(flag in layout for flag in WITHHELD_FLAGS):
        arrays = {
            name: (np.ones if name in WITHHELD_FLAGS else np.zeros)(shape)
            for name, shape in layout.items()
        }
        return Answer(arrays=arrays, records=0)
    raise PolicyViolation(
        f"disclosure: this site's cohort holds fewer than min_cell ({request.rules.min_cell} "
        f"or the site's own) records; {request.query.kind} answers nothing on it (widen the "
        "cohort)"
    )


def secure_vector(request: Request, out: Answer) -> Array:
    """What a site masks in secure mode: its arrays in the layout's order, then its record
    count, as one float64 vector of ``request.size + 1`` values."""
    if request.layout is None:
        raise ConfigurationError("only a summable request has a secure vector")
    _check_layout(out, request.layout)
    return np.concatenate([out.flat(request.layout), [float(out.records)]])


def total_from_vector(request: Request, vector: Array) -> Answer:
    """The summed :class:`Answer` from the unmasked secure sum of :func:`secure_vector`s
    (the record count rounded: it is a sum of integers, exact up to the quantisation)."""
    if request.layout is None:
        raise ConfigurationError("only a summable request has a secure vector")
    vec = np.asarray(vector, dtype=np.float64)
    if vec.shape != (request.size + 1,):
        raise ProtocolError(f"a secure sum has {vec.shape} values, the request {request.size + 1}")
    return Answer.from_flat(vec[:-1], request.layout, records=max(0, round(float(vec[-1]))))


def _check_layout(out: Answer, layout: Mapping[str, tuple[int, ...]]) -> None:
    if set(out.arrays) != set(layout):
        raise ProtocolError("the answer's arrays are not the request's layout")
    for name, shape in layout.items():
        if out.arrays[name].shape != tuple(shape):
            raise ProtocolError(f"answer array {name!r} has shape {out.arrays[name].shape}")


def check_answer(request: Request, arrays: Mapping[str, Array], records: int) -> Answer:
    """A site's reply (its arrays and example count) checked against ``request``.

    Raises
    ------
    ProtocolError
        If it is not an answer to ``request`` (one line; no values echoed).
    """
    try:
        out = Answer(arrays=arrays, records=records)
    except (DataError, ConfigurationError) as exc:
        raise ProtocolError(f"query reply is not an answer: {exc}") from None
    if out.records > MAX_SITE_RECORDS:
        raise ProtocolError(f"query reply claims more than {MAX_SITE_RECORDS} records")
    if request.layout is not None:
        _check_layout(out, request.layout)
    kind_of(request.query.kind).check(request, out)
    return out


def result_from_json(text: str) -> Result:
    """A result from its JSON (the run's ``analysis_result`` event)."""
    data = _big(text) if isinstance(text, str) else None
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ConfigurationError("an analysis result is a table with a kind")
    return kind_of(data["kind"]).result_from_dict(data)

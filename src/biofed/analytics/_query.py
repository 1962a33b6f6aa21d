"""A federated analytics query: what a researcher asks of every site's dataset.

A :class:`Query` is a value: its kind (``count``, ``describe``, ``km``, ``cox``…), the
kind's options (checked by the kind's own module when the query is built), the rows it
covers (``where`` filters and the ``split``), and, optionally, the DP mechanism each site
applies to its answer. It travels inside every pass's :class:`~biofed.analytics.Request`
as canonical JSON.

Security notes
--------------
Threat: a researcher's (or a forged) query text that crashes or misleads a site — huge or
deeply nested JSON, duplicate keys read differently by two parsers, NaN, filters on columns
the site does not have, options of the wrong type. :meth:`Query.from_json` is bounded
(:data:`MAX_QUERY_CHARS`), refuses duplicate keys and non-finite numbers, and checks every
field; a kind's options are checked by that kind (``check_options``) before a site reads a
row. Errors are one line and echo no data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biofed.core import ConfigurationError

#: Longest query JSON accepted (a real one is well under 10 KiB).
MAX_QUERY_CHARS = 1 << 16
#: Filter operators; ``missing``/``present`` take no value, ``in``/``not_in`` a list.
FILTER_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "missing", "present")
#: Which rows a query covers: the study's training rows, its test rows, or all.
SPLITS = ("all", "train", "test")
#: DP mechanisms a site can apply to an answer.
DP_MECHANISMS = ("laplace", "gaussian")
_MAX_NAME = 128
_MAX_FILTERS = 32
_MAX_LIST = 10_000

JSONValue = Any


def _loads(text: str, what: str) -> Any:
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} must be JSON text")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigurationError(f"{what} is longer than {MAX_QUERY_CHARS} characters")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ConfigurationError(f"{what}: key {key[:40]!r} appears twice")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ConfigurationError(f"{what}: {name} is not a number")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except ConfigurationError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {str(exc)[:80]}") from None


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, no spaces, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def check_name(value: object, what: str) -> str:
    """A column name: a non-empty string of at most 128 printable characters."""
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or not value.isprintable():
        raise ConfigurationError(f"{what} must be a column name (1 to {_MAX_NAME} characters)")
    return value


def _scalar(value: object, what: str) -> str | float | int | bool:
    if isinstance(value, bool | str):
        if isinstance(value, str) and len(value) > 1024:
            raise ConfigurationError(f"{what} is longer than 1024 characters")
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what} must be finite")
        return value
    raise ConfigurationError(f"{what} must be a string, number or boolean")


def check_json_value(value: object, what: str, depth: int = 0) -> JSONValue:
    """``value`` if it is plain JSON (scalars, lists, string-keyed tables) of bounded size."""
    if depth > 4:
        raise ConfigurationError(f"{what} is nested too deeply")
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST:
            raise ConfigurationError(f"{what} has more than {_MAX_LIST} items")
        return [check_json_value(v, what, depth + 1) for v in value]
    if isinstance(value, Mapping):
        if len(value) > 256:
            raise ConfigurationError(f"{what} has more than 256 keys")
        return {
            check_name(k, f"a key of {what}"): check_json_value(v, what, depth + 1)
            for k, v in value.items()
        }
    return _scalar(value, what)


@dataclass(frozen=True, slots=True)
class Filter:
    """One row filter: ``column op value`` (``value`` a list for ``in``/``not_in``, None
    for ``missing``/``present``). A row whose column is missing passes only ``missing``."""

    column: str
    op: str
    value: str | float | int | bool | tuple[str | float | int | bool, ...] | None = None

    def __post_init__(self) -> None:
        check_name(self.column, "a filter's column")
        if self.op not in FILTER_OPS:
            raise ConfigurationError(
                f"filter operator {str(self.op)[:20]!r} is not one of {', '.join(FILTER_OPS)}"
            )
        if self.op in ("missing", "present"):
            if self.value is not None:
                raise ConfigurationError(f"filter {self.op!r} takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list | tuple) or not self.value:
                raise ConfigurationError(f"filter {self.op!r} needs a non-empty list of values")
            if len(self.value) > 1000:
                raise ConfigurationError(f"filter {self.op!r} takes at most 1000 values")
            values = tuple(_scalar(v, "a filter value") for v in self.value)
            object.__setattr__(self, "value", values)
        else:
            if self.value is None or isinstance(self.value, list | tuple):
                raise ConfigurationError(f"filter {self.op!r} needs one value")
            object.__setattr__(self, "value", _scalar(self.value, "a filter value"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"column": self.column, "op": self.op, "value": value}

    @classmethod
    def from_dict(cls, data: object) -> Filter:
        """From :meth:`to_dict`'s form."""
        if not isinstance(data, Mapping) or not set(data) <= {"column", "op", "value"}:
            raise ConfigurationError("a filter is a table of column, op and value")
        return cls(column=data.get("column"), op=data.get("op"), value=data.get("value"))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DPOptions:
    """Differentially private answers: each site adds ``mechanism`` noise calibrated to
    (``epsilon``, ``delta``) per pass and debits its ledger. Laplace gives pure ε-DP
    (``delta`` 0); Gaussian needs ``delta`` in (0, 1)."""

    mechanism: str
    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in DP_MECHANISMS:
            raise ConfigurationError(f"dp mechanism must be one of {', '.join(DP_MECHANISMS)}")
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps <= 100:
            raise ConfigurationError("dp epsilon must be a number in (0, 100]")
        delta = self.delta
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise ConfigurationError("dp delta must be a number")
        if self.mechanism == "laplace" and delta != 0:
            raise ConfigurationError("dp delta must be 0 with the Laplace mechanism (pure ε-DP)")
        if self.mechanism == "gaussian" and not 0 < delta < 1:
            raise ConfigurationError("dp delta must lie in (0, 1) with the Gaussian mechanism")
        object.__setattr__(self, "epsilon", float(eps))
        object.__setattr__(self, "delta", float(delta))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.delta}

    @classmethod
    def from_dict(cls, data: object) -> DPOptions:
        """From :meth:`to_dict`'s form."""
        if not isinstance(data, Mapping) or not set(data) <= {"mechanism", "epsilon", "delta"}:
            raise ConfigurationError("dp is a table of mechanism, epsilon and delta")
        return cls(
            mechanism=data.get("mechanism"),  # type: ignore[arg-type]
            epsilon=data.get("epsilon"),  # type: ignore[arg-type]
            delta=data.get("delta", 0.0),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """A federated query.

    Attributes
    ----------
    kind:
        One of :data:`biofed.analytics.QUERY_KINDS`.
    options:
        The kind's options (columns, bins, family…), checked and normalised by the kind.
    where:
        Row filters, all of which a row must pass.
    split:
        ``"all"``, ``"train"`` or ``"test"`` rows of the site's dataset.
    dp:
        DP answers, or None (exact answers under disclosure control).
    """

    kind: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    where: tuple[Filter, ...] = ()
    split: str = "all"
    dp: DPOptions | None = None

    def __post_init__(self) -> None:
        from biofed.analytics._protocol import kind_of  # the registry checks the options

        spec = kind_of(self.kind)
        if self.split not in SPLITS:
            raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}")
        where = tuple(self.where)
        if len(where) > _MAX_FILTERS:
            raise ConfigurationError(f"a query takes at most {_MAX_FILTERS} filters")
        if not all(isinstance(f, Filter) for f in where):
            raise ConfigurationError("where must be a list of Filter")
        if self.dp is not None and not isinstance(self.dp, DPOptions):
            raise ConfigurationError("dp must be DPOptions")
        if self.dp is not None and not spec.dp_supported:
            raise ConfigurationError(
                f"{self.kind} has no DP answers (its statistics have no bounded sensitivity "
                "here); leave [dp] out"
            )
        if not isinstance(self.options, Mapping):
            raise ConfigurationError("options must be a table")
        checked = check_json_value(dict(self.options), "options")
        normalised = spec.check_options(checked)
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "options", MappingProxyType(dict(normalised)))

    def columns(self) -> tuple[str, ...]:
        """Every column the query reads (its filters' and its kind's), sorted."""
        from biofed.analytics._protocol import kind_of

        names = {f.column for f in self.where} | set(kind_of(self.kind).columns(self.options))
        return tuple(sorted(names))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "options": dict(self.options),
            "where": [f.to_dict() for f in self.where],
            "split": self.split,
            "dp": None if self.dp is None else self.dp.to_dict(),
        }

    def to_json(self) -> str:
        """Canonical JSON (what travels and what :attr:`digest` hashes)."""
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: object) -> Query:
        """From :meth:`to_dict`'s form (every field checked)."""
        allowed = {"kind", "options", "where", "split", "dp"}
        if not isinstance(data, Mapping) or "kind" not in data or not set(data) <= allowed:
            raise ConfigurationError("a query is a table of kind, options, where, split and dp")
        where = data.get("where") or []
        if not isinstance(where, Sequence) or isinstance(where, str):
            raise ConfigurationError("where must be a list of filters")
        if len(where) > _MAX_FILTERS:
            raise ConfigurationError(f"a query takes at most {_MAX_FILTERS} filters")
        dp = data.get("dp")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ConfigurationError("a query's kind must be a string")
        return cls(
            kind=kind,
            options=data.get("options") or {},
            where=tuple(Filter.from_dict(f) for f in where),
            split=data.get("split", "all"),
            dp=None if dp is None else DPOptions.from_dict(dp),
        )

    @classmethod
    def from_json(cls, text: str) -> Query:
        """From :meth:`to_json`'s text (bounded; duplicate keys and NaN refused)."""
        return cls.from_dict(_loads(text, "query"))

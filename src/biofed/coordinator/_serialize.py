"""JSON for what the coordinator stores: round records, run events and job specs.

Round records keep every float exactly (JSON numbers are written with ``repr``'s shortest
round-tripping digits). JSON has no NaN or infinity, so a metric that is NaN (a site that
could not compute it) is written as ``null`` and ±infinity as the strings ``"Infinity"`` and
``"-Infinity"``; reading restores them. Decoding checks every field and raises
:class:`~biofed.core.PayloadError` on anything malformed.

Job specs are stored as *canonical* JSON (:func:`canonical_json`): sorted keys, no spaces,
UTF-8, no NaN, so the same spec always has the same text and the same digest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from biofed.coordinator._records import RoundRecord, RunEvent, event_data
from biofed.core import ConfigurationError, Metrics, PayloadError

_RECORD_KEYS = frozenset(
    {
        "round",
        "num_selected",
        "num_replies",
        "num_rejected",
        "train_metrics",
        "eval_metrics",
        "node_eval_metrics",
        "duration_s",
        "failed",
    }
)
_EVENT_KEYS = frozenset({"round", "kind", "message", "node_id"})
#: An event with numeric data (schema 3) has one more key.
_EVENT_DATA_KEYS = _EVENT_KEYS | {"data"}


def _dumps(obj: object) -> str:
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _float_out(value: float) -> float | str | None:
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float_in(value: object, what: str) -> float:
    if value is None:
        return math.nan
    if value == "Infinity":
        return math.inf
    if value == "-Infinity":
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{what} must be a number, null or ±'Infinity', got {value!r}")
    return float(value)


def _metrics_out(metrics: Metrics) -> dict[str, float | str | None]:
    return {str(k): _float_out(v) for k, v in metrics.items()}


def _metrics_in(value: object, what: str) -> Metrics:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be an object, got {type(value).__name__}")
    return MappingProxyType({str(k): _float_in(v, f"{what}[{k!r}]") for k, v in value.items()})


def _int_in(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} must be an integer, got {value!r}")
    return value


def _optional_str_in(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{what} must be a string or null, got {value!r}")
    return value


def _object_in(text: str | bytes, what: str, keys: frozenset[str]) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(obj).__name__}")
    if set(obj) != keys:
        raise PayloadError(
            f"{what} has the wrong fields (missing {sorted(keys - set(obj))}, "
            f"unexpected {sorted(set(obj) - keys)})"
        )
    return obj


def round_record_to_json(record: RoundRecord) -> str:
    """``record`` as compact JSON text (NaN metrics as ``null``)."""
    return _dumps(
        {
            "round": record.round,
            "num_selected": record.num_selected,
            "num_replies": record.num_replies,
            "num_rejected": record.num_rejected,
            "train_metrics": _metrics_out(record.train_metrics),
            "eval_metrics": _metrics_out(record.eval_metrics),
            "node_eval_metrics": {
                str(node): _metrics_out(m) for node, m in record.node_eval_metrics.items()
            },
            "duration_s": _float_out(record.duration_s),
            "failed": record.failed,
        }
    )


def round_record_from_json(text: str | bytes) -> RoundRecord:
    """The :class:`~biofed.coordinator.RoundRecord` that :func:`round_record_to_json` wrote.

    Raises
    ------
    PayloadError
        If ``text`` is not such a record.
    """
    obj = _object_in(text, "round record", _RECORD_KEYS)
    per_node = obj["node_eval_metrics"]
    if not isinstance(per_node, dict):
        raise PayloadError("round record's node_eval_metrics must be an object")
    return RoundRecord(
        round=_int_in(obj["round"], "round"),
        num_selected=_int_in(obj["num_selected"], "num_selected"),
        num_replies=_int_in(obj["num_replies"], "num_replies"),
        num_rejected=_int_in(obj["num_rejected"], "num_rejected"),
        train_metrics=_metrics_in(obj["train_metrics"], "train_metrics"),
        eval_metrics=_metrics_in(obj["eval_metrics"], "eval_metrics"),
        node_eval_metrics=MappingProxyType(
            {
                str(node): _metrics_in(m, f"node_eval_metrics[{node!r}]")
                for node, m in per_node.items()
            }
        ),
        duration_s=_float_in(obj["duration_s"], "duration_s"),
        failed=_optional_str_in(obj["failed"], "failed"),
    )


def run_event_to_json(event: RunEvent) -> str:
    """``event`` as compact JSON text (``data`` only when the event carries figures)."""
    obj: dict[str, object] = {
        "round": event.round,
        "kind": event.kind,
        "message": event.message,
        "node_id": event.node_id,
    }
    if event.data:
        obj["data"] = dict(event.data)
    return _dumps(obj)


def event_data_to_json(data: Mapping[str, float]) -> str | None:
    """An event's numeric data as JSON text, or None for none (how the SQL store keeps it)."""
    return _dumps(dict(data)) if data else None


def event_data_from_json(text: str | bytes | None) -> Mapping[str, float]:
    """The numeric data :func:`event_data_to_json` wrote (empty for ``None``).

    Raises
    ------
    PayloadError
        If ``text`` is not an object of finite numbers.
    """
    if text is None:
        return MappingProxyType({})
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"event data is not valid JSON: {exc}") from None
    return _event_data_in(obj)


def _event_data_in(value: object) -> Mapping[str, float]:
    if not isinstance(value, dict):
        raise PayloadError(f"event data must be an object, got {type(value).__name__}")
    try:
        return event_data(value)
    except ConfigurationError as exc:
        raise PayloadError(str(exc)) from None


def run_event_from_json(text: str | bytes) -> RunEvent:
    """The :class:`~biofed.coordinator.RunEvent` that :func:`run_event_to_json` wrote.

    Raises
    ------
    PayloadError
        If ``text`` is not such an event.
    """
    try:
        obj = _object_in(text, "run event", _EVENT_DATA_KEYS)
    except PayloadError:
        obj = _object_in(text, "run event", _EVENT_KEYS)
    kind, message = obj["kind"], obj["message"]
    if not isinstance(kind, str) or not isinstance(message, str):
        raise PayloadError("run event's kind and message must be strings")
    return RunEvent(
        round=_int_in(obj["round"], "round"),
        kind=kind,
        message=message,
        node_id=_optional_str_in(obj["node_id"], "node_id"),
        data=_event_data_in(obj["data"]) if "data" in obj else MappingProxyType({}),
    )


def _plain(value: object, path: str) -> object:
    """``value`` as plain JSON types (mappings → dict), checking keys and numbers."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{path} is {value}; a job spec cannot hold NaN or infinity")
        return value
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(
                    f"{path} has the key {key!r}; a job spec's keys must be strings"
                )
            out[key] = _plain(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ConfigurationError(
        f"{path} is a {type(value).__name__}; a job spec holds only mappings, lists, strings, "
        "numbers, booleans and null"
    )


def canonical_json(obj: object) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no whitespace, UTF-8 characters.

    Mappings (``dict``, ``MappingProxyType``…) become objects and tuples become arrays. Equal
    specs give equal text, so the text can be hashed and compared.

    Raises
    ------
    ConfigurationError
        If ``obj`` holds NaN or infinity, a non-string key, or a value JSON cannot hold.
    """
    plain = _plain(obj, "spec")
    return json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )

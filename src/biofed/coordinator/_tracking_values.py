"""What a tracked run's reports become as named numbers, and the names made safe: shared by
the MLflow and TensorBoard backends (:mod:`._tracking_mlflow`, :mod:`._tracking_tensorboard`);
no tracking library is imported here.

Security notes
--------------
Metric names and site ids come from site replies and job files. :func:`safe_key` keeps
MLflow's key alphabet (letters, digits, ``_ - . : space``; no ``/``, no ``..``), and
:func:`safe_component` makes a single file-name component, so no name can address a path
outside the store (CWE-22, OWASP ASVS 5.0 V5.3).
"""

from __future__ import annotations

import math
import re

from biofed.coordinator._tracking import TrackedEnd, TrackedRound

#: MLflow's longest key (``mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH``).
MAX_KEY = 250
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. :]")
_TEXT_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TRUNCATED = "…[truncated]"


def safe_key(*parts: str) -> str:
    """A metric key from parts joined by ``.``: in each part, characters outside MLflow's
    key alphabet (and ``/``) become ``_``, runs of dots one ``_``, and leading or trailing
    dots and spaces go; at most 250 characters."""
    cleaned = (re.sub(r"\.{2,}", "_", _KEY_BAD.sub("_", p)).strip(" .") or "_" for p in parts)
    return ".".join(cleaned)[:MAX_KEY]


def safe_text(value: str, limit: int) -> str:
    """``value`` without control characters, cut to ``limit`` characters (marked so)."""
    text = _TEXT_BAD.sub(" ", value)
    if len(text) > limit:
        text = text[: limit - len(_TRUNCATED)] + _TRUNCATED
    return text


def safe_component(name: str) -> str:
    """``name`` as one file-name component (a run's folder): :func:`safe_key` with ``:``
    and spaces made ``_`` too, never empty, ``.`` nor ``..``."""
    return re.sub(r"[: ]", "_", safe_key(name))[:120]


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if math.isfinite(float(v))}


def round_values(update: TrackedRound) -> dict[str, float]:
    """A committed round's numbers by metric key (step: the round): its counts and
    duration, the aggregated ``train.*`` and ``eval.*`` metrics, each site's
    ``site.<site>.eval.*``, and each site's ``privacy.epsilon.<site>`` /
    ``privacy.delta.<site>``; non-finite values left out."""
    record = update.record
    values: dict[str, float] = {
        "round.selected": record.num_selected,
        "round.replies": record.num_replies,
        "round.rejected": record.num_rejected,
        "round.failed": float(record.failed is not None),
        "round.duration_s": record.duration_s,
    }
    for key, value in record.train_metrics.items():
        values[safe_key("train", key)] = value
    for key, value in record.eval_metrics.items():
        values[safe_key("eval", key)] = value
    for site, metrics in record.node_eval_metrics.items():
        for key, value in metrics.items():
            values[safe_key("site", site, "eval", key)] = value
    for site, spend in update.privacy.items():
        values[safe_key("privacy.epsilon", site)] = spend["epsilon"]
        values[safe_key("privacy.delta", site)] = spend["delta"]
    return _finite(values)


def end_values(end: TrackedEnd) -> dict[str, float]:
    """A run's closing numbers (step: its last round): ``privacy.client_level_epsilon`` and
    each site's ``contribution.value.<site>`` / ``contribution.share.<site>``."""
    values: dict[str, float] = {}
    if end.privacy is not None:
        client_level = end.privacy.get("client_level_epsilon")
        if isinstance(client_level, int | float):
            values["privacy.client_level_epsilon"] = float(client_level)
    if end.contributions is not None:
        for name, figures in (
            ("value", end.contributions.get("totals") or {}),
            ("share", end.contributions.get("shares") or {}),
        ):
            for site, value in figures.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[safe_key("contribution", name, site)] = float(value)
    return _finite(values)

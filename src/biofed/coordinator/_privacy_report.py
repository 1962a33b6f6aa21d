"""What the coordinator tells researchers about a run's privacy: the guarantee the job asked
for, the ε(δ) each site reports having spent, and (client mode) the ε of the noise that was
really in each round's sum."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from biofed.coordinator._job import JobSpec
from biofed.coordinator._records import RoundRecord
from biofed.coordinator._store import EventRow
from biofed.core import MessageKind, Reply
from biofed.privacy import DELTA_METRIC, EPSILON_METRIC, make_accountant

#: Event kind of a site's reported spend (one per accepted training reply that carries it).
PRIVACY_EVENT = "privacy_spent"


def spend_message(reply: Reply) -> str | None:
    """The event text for a training reply that reports its site's spend, else None."""
    if reply.kind not in (MessageKind.TRAIN, MessageKind.SECAGG):
        return None
    eps, delta = reply.metrics.get(EPSILON_METRIC), reply.metrics.get(DELTA_METRIC)
    if eps is None or delta is None:
        return None
    return f"epsilon={eps!r} delta={delta!r}"


def _parse(message: str) -> dict[str, float] | None:
    try:
        fields = dict(part.split("=", 1) for part in message.split())
        return {"epsilon": float(fields["epsilon"]), "delta": float(fields["delta"])}
    except (KeyError, ValueError):
        return None


def client_level_epsilon(spec: JobSpec, records: Sequence[RoundRecord]) -> float | None:
    """Client mode: ε(δ) of the noise each completed round's sum really carried (its
    ``dp.noise_std`` over ``dp.clip_norm``, from the replies actually aggregated), each site
    taking part in every round (q = 1, its own worst case)."""
    privacy = spec.privacy
    if privacy is None or privacy.mode != "client":
        return None
    acc = make_accountant(privacy.accountant)
    for record in records:
        std = record.train_metrics.get("dp.noise_std")
        clip = record.train_metrics.get("dp.clip_norm")
        if record.failed or std is None or not clip:
            continue
        acc.step(std / clip, 1.0, 1)
    eps = acc.epsilon(privacy.delta)
    return eps if math.isfinite(eps) else None


def privacy_report(
    spec: JobSpec, events: Iterable[EventRow], records: Sequence[RoundRecord]
) -> dict[str, Any] | None:
    """The run summary's ``"privacy"`` entry, or None when the job has no DP."""
    if spec.privacy is None:
        return None
    sites: dict[str, dict[str, float]] = {}
    for event in events:
        if event.kind != PRIVACY_EVENT or event.node_id is None:
            continue
        spend = _parse(event.message)
        if spend is not None:
            sites[event.node_id] = {**spend, "round": float(event.round)}
    report: dict[str, Any] = {"guarantee": spec.privacy.describe(), "sites": sites}
    client = client_level_epsilon(spec, records)
    if client is not None:
        report["client_level_epsilon"] = client
    return report

"""What the coordinator tells researchers about a run's privacy: the guarantee the job asked
for, the ε(δ) each site reports having spent, and (client mode) the ε of the noise that was
really in each round's sum.

Every figure is labelled with what it is (:data:`biofed.privacy.GUARANTEES`) and what it
rests on. A site's ε carries the label its node reported (``dp.guarantee``: ``"exact"``,
``"bounded"`` — both guarantees — or ``"heuristic"``, a figure that bounds nothing; a node
older than the labels reads ``"unlabelled"``, never as a guarantee). ``trust`` states the
assumption every figure of the job rests on (:meth:`biofed.privacy.DPSettings.trust_assumption`):
client mode with central noise trusts the coordinator to add the noise; distributed noise
counts ``min_replies`` shares, so it rests on that many honest sites. The client-level ε
computed here from the noise the aggregated replies declare (``dp.noise_std``) is the
coordinator's own statement and is labelled so. What no ε covers: evaluation metrics on test
splits, the number of examples each site trained on, which sites took part and when — all
released without noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from biofed.coordinator._job import JobSpec
from biofed.coordinator._records import RoundRecord, RunEvent
from biofed.coordinator._store import EventRow
from biofed.core import MessageKind, Reply
from biofed.privacy import (
    DELTA_METRIC,
    EPSILON_METRIC,
    GUARANTEE_METRIC,
    GUARANTEES,
    guarantee_label,
    make_accountant,
)

#: The label of a figure from a node that reported none (older than the labels).
UNLABELLED = "unlabelled"
#: What every report says the ε figures do not cover.
NOT_COVERED = (
    "evaluation metrics on test splits, the number of examples per site, and which sites "
    "took part in which round are released without differential privacy"
)

#: Event kind of a site's reported spend (one per accepted training reply that carries it).
PRIVACY_EVENT = "privacy_spent"
#: The numbers a :data:`PRIVACY_EVENT` carries in its ``data``: ε and δ, and the guarantee's
#: code (:func:`biofed.privacy.guarantee_code`; absent when the node reported no label).
EPSILON, DELTA, GUARANTEE = "epsilon", "delta", "guarantee"


def spend_message(reply: Reply) -> str | None:
    """The event text for a training reply that reports its site's spend, else None (for
    people to read; programs read the event's numbers, :func:`spend_event`)."""
    data = _spend_data(reply)
    if data is None:
        return None
    label = guarantee_label(data.get(GUARANTEE))
    return f"epsilon={data[EPSILON]!r} delta={data[DELTA]!r} guarantee={label}"


def _spend_data(reply: Reply) -> dict[str, float] | None:
    if reply.kind not in (MessageKind.TRAIN, MessageKind.SECAGG):
        return None
    eps, delta = reply.metrics.get(EPSILON_METRIC), reply.metrics.get(DELTA_METRIC)
    if eps is None or delta is None:
        return None
    data = {EPSILON: float(eps), DELTA: float(delta)}
    code = reply.metrics.get(GUARANTEE_METRIC)
    # A figure no accountant can give (ε < 0, δ outside [0, 1)) is a site's claim that
    # bounds nothing: it is kept as reported, but never under a guarantee's label.
    plausible = data[EPSILON] >= 0.0 and 0.0 <= data[DELTA] < 1.0
    if code is not None and plausible:
        data[GUARANTEE] = float(code)
    return data


def spend_event(server_round: int, reply: Reply) -> RunEvent | None:
    """The typed :data:`PRIVACY_EVENT` for an accepted training reply that reports its site's
    ε(δ) so far in the job (the numbers in ``data``, the same figures in words in
    ``message``), else None."""
    data = _spend_data(reply)
    message = spend_message(reply)
    if data is None or message is None:
        return None
    return RunEvent(
        round=server_round, kind=PRIVACY_EVENT, message=message, node_id=reply.node_id, data=data
    )


def site_spend(event: EventRow | RunEvent) -> dict[str, Any] | None:
    """A site's reported spend from its :data:`PRIVACY_EVENT`: ``epsilon``, ``delta`` and
    ``guarantee`` (a label), or None for another event or one without figures.

    The figures are the event's numbers; only an event stored before events carried numbers
    (no ``data``) has its text read.
    """
    if event.kind != PRIVACY_EVENT:
        return None
    data = event.data
    if not data:
        return _parse(event.message)
    if EPSILON not in data or DELTA not in data:
        return None
    return {
        "epsilon": data[EPSILON],
        "delta": data[DELTA],
        "guarantee": guarantee_label(data.get(GUARANTEE)),
    }


def _parse(message: str) -> dict[str, Any] | None:
    """The figures of an event stored as text only (before events carried numbers)."""
    try:
        fields = dict(part.split("=", 1) for part in message.split())
        label = fields.get("guarantee", UNLABELLED)
        return {
            "epsilon": float(fields["epsilon"]),
            "delta": float(fields["delta"]),
            "guarantee": label if label in GUARANTEES else UNLABELLED,
        }
    except (KeyError, ValueError):
        return None


def weakest_label(labels: Iterable[str]) -> str | None:
    """The weakest of some figures' labels (exact < bounded < heuristic < unlabelled), or
    None for none: a run's figures are only as good as their weakest."""
    order = (*GUARANTEES, UNLABELLED)
    known = [label if label in order else UNLABELLED for label in labels]
    return max(known, key=order.index) if known else None


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
    spec: JobSpec, events: Iterable[EventRow | RunEvent], records: Sequence[RoundRecord]
) -> dict[str, Any] | None:
    """The run summary's ``"privacy"`` entry (from stored events, or from a simulation's
    events as they happened), or None when the job has no DP."""
    if spec.privacy is None:
        return None
    sites: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.node_id is None:
            continue
        spend = site_spend(event)
        if spend is not None:
            sites[event.node_id] = {**spend, "round": float(event.round)}
    report: dict[str, Any] = {
        "guarantee": spec.privacy.describe(),
        "sites": sites,
        "trust": spec.privacy.trust_assumption(),
        "not_covered": NOT_COVERED,
    }
    label = weakest_label(s["guarantee"] for s in sites.values())
    if label is not None:
        report["label"] = label
    client = client_level_epsilon(spec, records)
    if client is not None:
        report["client_level_epsilon"] = client
        report["client_level_label"] = (
            "the coordinator's own figure, from the noise the aggregated replies declare; "
            + spec.privacy.trust_assumption()
        )
    return report

"""A training run's result: its latest model encoded with the metadata that travels with it
(``biofed run result`` and the experiment tracker's model artifact are the same bytes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from biofed.contribution import CONTRIBUTIONS_EVENT
from biofed.coordinator._job import JobSpec
from biofed.coordinator._preprocess import PREPROCESSING_EVENT, RESULT_PREPROCESSING
from biofed.coordinator._privacy_report import privacy_report
from biofed.coordinator._store import EventRow, StateStore
from biofed.core import encode_parameters


def result_contributions(events: Iterable[EventRow]) -> dict[str, Any] | None:
    """The sites' contributions as a run's result carries them (the last ``contributions``
    event's totals, shares and incentive outcome), or None when the run measured none."""
    measured = [e.message for e in events if e.kind == CONTRIBUTIONS_EVENT]
    if not measured:
        return None
    record = json.loads(measured[-1])
    return {
        "totals": record["ledger"]["totals"],
        "shares": record["shares"],
        "outcome": record["outcome"],
    }


def model_result(store: StateStore, run_id: str, spec: JobSpec) -> bytes | None:
    """The run's latest checkpoint encoded (safetensors) with its metadata: run id, round,
    the privacy report, the sites' contributions and a study's fitted preprocessing; None
    when the run has no checkpoint. Access and the agreement's output policy are the
    caller's to check."""
    checkpoint = store.latest_checkpoint(run_id)
    if checkpoint is None:
        return None
    events = store.events(run_id)
    metadata = {"run_id": run_id, "round": str(checkpoint.round)}
    privacy = privacy_report(spec, events, [r.record for r in store.rounds(run_id)])
    if privacy is not None:  # the guarantee travels with the model
        metadata["privacy"] = json.dumps(privacy, sort_keys=True)
    contributions = result_contributions(events)
    if contributions is not None:  # so do the sites' contributions and the policy's outcome
        metadata["contributions"] = json.dumps(contributions, sort_keys=True)
    if spec.study is not None:  # so does the preprocessing the model was trained behind
        fitted = [e.message for e in events if e.kind == PREPROCESSING_EVENT]
        if fitted:
            metadata[RESULT_PREPROCESSING] = fitted[-1]
    return encode_parameters(checkpoint.parameters, metadata=metadata)

"""One serialised form of an accountant's history: SampledGaussian.to_dict / from_dict, used
by Accountant.to_bytes and by the mechanism text a node's ledger keeps with each debit."""

from __future__ import annotations

import json

import pytest

from biofed.core import ConfigurationError
from biofed.privacy import PldAccountant, RdpAccountant, SampledGaussian


def test_round_trip_and_labels_beside_the_event_are_ignored() -> None:
    event = SampledGaussian(noise_multiplier=1.1, sampling_rate=0.02, steps=30)
    assert event.to_dict() == {"noise_multiplier": 1.1, "sampling_rate": 0.02, "steps": 30}
    text = json.dumps({**event.to_dict(), "accountant": "pld", "guarantee": "exact"})
    assert SampledGaussian.from_dict(json.loads(text)) == event


def test_the_accountant_state_holds_exactly_the_events_dicts() -> None:
    for accountant in (PldAccountant(), RdpAccountant()):
        accountant.step(1.0, 0.1, 2)
        accountant.step(2.0, 0.05, 1)
        events = json.loads(accountant.to_bytes())["events"]
        assert events == [e.to_dict() for e in accountant.events]
        assert type(accountant).from_bytes(accountant.to_bytes()).events == accountant.events


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"noise_multiplier": 1.0, "sampling_rate": 0.1}, "needs steps"),
        ({"sampling_rate": 0.1, "steps": 1}, "needs noise_multiplier"),
        ({"noise_multiplier": -1.0, "sampling_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.0, "steps": 1}, "sampling_rate"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 1.5}, "steps"),
    ],
)
def test_bad_events_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SampledGaussian.from_dict(data)

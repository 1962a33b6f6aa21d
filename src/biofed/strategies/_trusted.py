"""Trusted data at the coordinator: what robust aggregation may ask of it.

FLTrust (Cao et al., NDSS 2021) and update validation need a small, clean dataset the
coordinator trusts (a curated reference set, or data held by a designated validation site).
Strategies are pure and never touch data or tasks, so they receive it as this protocol; the
coordinator builds the object from the job's task and the operator's registered dataset
(``biofed.coordinator.TrustedData``), tests and the attack harness build their own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from biofed.core import ParameterSet


@runtime_checkable
class TrustedValidation(Protocol):
    """Scores models on trusted data and trains a reference update on it."""

    @property
    def metric(self) -> str:
        """The name of the score (e.g. ``c_index``, ``auc``); higher is better."""
        ...

    def score(self, parameters: ParameterSet) -> float:
        """The model's score on the trusted data (higher is better; finite)."""
        ...

    def train(self, parameters: ParameterSet, server_round: int) -> ParameterSet:
        """The model after the round's local training on the trusted data, from
        ``parameters`` (FLTrust's server update is this minus ``parameters``)."""
        ...

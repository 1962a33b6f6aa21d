"""What the ledger records and reports: debits, job spends, budget status, cap changes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

#: The label of a debit recorded before labels existed.
UNLABELLED = "unlabelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class Debit:
    """A reservation the ledger recorded: the caller may now release the round's output.

    Attributes
    ----------
    dataset, run_id, round:
        What was reserved.
    epsilon_before, delta_before:
        The job's cumulative spend before this reservation.
    epsilon_after, delta_after:
        The job's cumulative spend now (never less than before).
    epsilon_total, delta_total:
        The dataset's spend across all jobs now (basic composition).
    cap_epsilon, cap_delta:
        The cap this reservation was checked against (site cap, or the agreement's if lower).
    at:
        When it was recorded (seconds since the epoch).
    repeat:
        True when this (run, round) was already recorded with these or larger figures, so
        nothing new was spent.
    guarantee, trust:
        The label of the figure and the assumption it rests on (see the module docstring).
    """

    dataset: str
    run_id: str
    round: int
    epsilon_before: float
    epsilon_after: float
    delta_before: float
    delta_after: float
    epsilon_total: float
    delta_total: float
    cap_epsilon: float
    cap_delta: float
    at: float
    repeat: bool
    guarantee: str = UNLABELLED
    trust: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpend:
    """One job's cumulative spend on one dataset; ``guarantee`` is the weakest label of its
    debits (``"heuristic"`` if any round's figure was, ``"unlabelled"`` for old rows)."""

    run_id: str
    epsilon: float
    delta: float
    rounds: int
    last_round: int
    guarantee: str = UNLABELLED


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """A dataset's cap, its spend across jobs, and what is left.

    ``cap_epsilon`` and ``cap_delta`` are the site's cap (a study agreement may allow one job
    less); ``None`` when the site set no cap: such a dataset has no budget, and every
    reservation on it is refused. Spend across jobs is the sum of the jobs' spends (basic
    composition).
    """

    dataset: str
    cap_epsilon: float | None
    cap_delta: float | None
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    jobs: tuple[JobSpend, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["jobs"] = [asdict(j) for j in self.jobs]
        return out


CapAction = Literal["set", "lowered", "raised", "kept", "unchanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapChange:
    """What a cap command did.

    Attributes
    ----------
    dataset:
        The dataset.
    epsilon, delta:
        The cap now in force.
    previous:
        The cap before, or None if there was none.
    action:
        ``"set"`` (there was none), ``"lowered"``, ``"raised"``, ``"kept"`` (a configured
        higher value was not applied) or ``"unchanged"``.
    source:
        Who asked: ``"cli"`` or ``"node.toml"``.
    requested:
        For ``"kept"``: the configured value that was not applied.
    """

    dataset: str
    epsilon: float
    delta: float
    previous: tuple[float, float] | None
    action: CapAction
    source: str
    requested: tuple[float, float] | None = None

"""Who may see which run: the one decision every control method asks before it answers.

A run belongs to its submitter (``RunRow.owner``, the CN of the certificate that submitted
it). Another researcher may *read* it — status, logs, result — only if the run's study
agreement, verified and kept by the coordinator (:class:`~._agreements.AgreementKeeper`),
names them as a researcher. The ``admin`` role may read and cancel every run. Only the
owner and an admin may cancel. Sites never reach here: the gRPC server refuses any role but
``researcher`` and ``admin`` on the ControlService.

Security notes
--------------
Threat: broken object-level authorization (OWASP API Security Top 10 2023, API1:2023
"BOLA", the API form of OWASP's insecure direct object reference, IDOR): one researcher
who learns or guesses another's run id lists, reads, downloads or cancels it. Every control
method that takes a run id calls :meth:`RunAccess.require` with the stored row before
touching the run, and ListRuns keeps only :meth:`RunAccess.visible` rows. The caller is the
authenticated certificate's CN and OU (never a message field). A refusal is one
``PERMISSION_DENIED`` whose text is the same whether the run exists or not and names no run,
so it is no oracle for which ids exist (OWASP ASVS 4.0 V4.2.1, V8.3.4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._analysis_job import run_spec_from_json
from biofed.coordinator._store import RunRow
from biofed.core import BiofedError, ConfigurationError, PolicyViolation
from biofed.governance import IncentivePolicy
from biofed.transport.grpc import Peer

Action = Literal["read", "cancel"]

#: The one answer for a run that does not exist and a run the caller may not see.
DENIED = "no run with that id is visible to you"


def _agreement_of(row: RunRow) -> str | None:
    try:
        return run_spec_from_json(row.spec).agreement
    except BiofedError:  # an unreadable spec shares nothing
        return None


class RunAccess:
    """The access decision for runs (see the module).

    Parameters
    ----------
    agreements:
        The coordinator's verified study agreements. Without them nothing is shared and a
        job that names an agreement is refused.
    """

    def __init__(self, agreements: AgreementKeeper | None = None) -> None:
        self.agreements = agreements

    def admit(
        self,
        peer: Peer,
        agreement_id: str | None,
        data: bytes = b"",
        certificates: Mapping[str, bytes] | None = None,
    ) -> None:
        """Check, at submit, the agreement a job names (sent now or kept earlier) before the
        run exists: in force, naming ``peer`` as a researcher (see
        :meth:`AgreementKeeper.admit`)."""
        if agreement_id is None:
            if data:
                raise ConfigurationError("an agreement was sent with a job that names none")
            return
        if self.agreements is None:
            raise ConfigurationError("this coordinator keeps no study agreements")
        self.agreements.admit(peer.name, peer.role, agreement_id, data, certificates)

    def may(self, peer: Peer, row: RunRow, action: Action = "read") -> bool:
        """Whether ``peer`` may do ``action`` on the run ``row``."""
        if peer.role == "admin":
            return True
        if peer.role != "researcher":
            return False
        if row.owner == peer.name:
            return True
        if action != "read":
            return False
        agreement = _agreement_of(row)
        if agreement is None or self.agreements is None:
            return False
        return peer.name in self.agreements.researchers(agreement)

    def require(self, peer: Peer, row: RunRow | None, action: Action = "read") -> RunRow:
        """``row`` if ``peer`` may do ``action`` on it.

        Raises
        ------
        PolicyViolation
            The same :data:`DENIED` for a missing run and one the peer may not see; a reader
            who is not allowed to cancel is told so (they know the run exists).
        """
        if row is None or not self.may(peer, row, "read"):
            raise PolicyViolation(DENIED)
        if not self.may(peer, row, action):
            raise PolicyViolation(f"only the run's submitter or an admin may {action} it")
        return row

    def releases_model(self, agreement_id: str) -> bool:
        """Whether the kept agreement lets the final model leave (``outputs.final_model``);
        False for an agreement that is not kept here."""
        return self.agreements is not None and self.agreements.releases_model(agreement_id)

    def analytics_rules(self, agreement_id: str) -> Mapping[str, float] | None:
        """The ``[analytics]`` disclosure thresholds a kept agreement sets, or None."""
        return None if self.agreements is None else self.agreements.analytics_rules(agreement_id)

    def incentives(self, agreement_id: str) -> IncentivePolicy | None:
        """The incentive policy a kept agreement states, or None."""
        return None if self.agreements is None else self.agreements.incentives(agreement_id)

    def visible(self, peer: Peer, rows: Iterable[RunRow]) -> list[RunRow]:
        """The rows ``peer`` may read, in their order."""
        return [row for row in rows if self.may(peer, row)]

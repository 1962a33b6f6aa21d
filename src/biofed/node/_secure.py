"""The site side of secure aggregation: one :class:`~biofed.secagg.SecAggClient` per round,
fed the coordinator's stage messages, with keys signed by the site's kit.

Security notes
--------------
Threats: a coordinator that reads one site's update, or substitutes a neighbour's public key
to sit in the middle of a key agreement. The update leaves only masked (Bonawitz et al.
2017, with the SecAgg+ graph of Bell et al. 2020); the site signs its advertised keys with
its kit's ECDSA P-256 key, and accepts a neighbour's keys only with a valid signature by a
certificate that the consortium CA issued to a *site* of that very name and did not revoke
(:func:`~biofed.identity.identify_peer`) — the coordinator can relay certificates but cannot
forge one. The round's plan is accepted only if it matches the job's
``[secure_aggregation]`` settings, so the coordinator cannot loosen the threshold or widen
the ring on its own. Round secrets live in memory only and are dropped after the unmask
stage (or when newer rounds push them out).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from biofed.analytics import Answer, Request, secure_vector
from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    ParameterSet,
    PolicyViolation,
    ProtocolError,
    Reply,
)
from biofed.governance import AuditSigner
from biofed.identity import Kit, signed_by
from biofed.secagg import (
    CERTIFICATE_PREFIX,
    ForwardedShares,
    Roster,
    SecAggClient,
    SecAggPlan,
    SecAggStage,
    SecureAggregationSettings,
    UnmaskRequest,
    decode_message,
    pack_message,
    unpack_message,
)

_MAX_SESSIONS = 8

#: Runs the round's local training (with the site's policy, DP and budget checks) and
#: returns the reply that would have left without secure aggregation.
Train = Callable[[Instruction], Reply]


@dataclass(slots=True)
class _Session:
    client: SecAggClient
    certificates: dict[str, bytes] = field(default_factory=dict)
    #: A query pass's min_sites (its rules, which cover the site's): the fewest live sites
    #: the site unmasks for; 0 for a training round.
    least_sites: int = 0


def _same_plan(plan: SecAggPlan, settings: SecureAggregationSettings) -> bool:
    c = plan.config
    return (
        c.clip_range == settings.clip_range
        and c.quantisation_step == settings.quantisation_step
        and c.max_weight == settings.max_weight
        and c.num_neighbours == settings.num_neighbours
        and c.threshold == settings.threshold
    )


class SecureSessions:
    """The site's secure-aggregation rounds in progress.

    Parameters
    ----------
    node_id:
        The site's name (its certificate's CN).
    kit:
        The site's kit: its key signs the advertised keys, its CA (and CRL) check the
        neighbours' certificates. Without a kit the site cannot take part.
    """

    def __init__(self, node_id: str, kit: Kit | None) -> None:
        self.node_id = node_id
        self.kit = kit
        # The kit's ECDSA P-256 key signs the advertised keys (the same signer as the
        # node's audit log: one place holds the site's private key).
        self._signer = None if kit is None else AuditSigner.from_kit(kit)
        self._sessions: OrderedDict[tuple[str, int], _Session] = OrderedDict()
        self._lock = threading.Lock()

    def _verifier(self, certificates: dict[str, bytes]) -> Callable[[str, bytes, bytes], bool]:
        """Checks a neighbour's signature with the certificate relayed for it, which must be
        a valid, unrevoked consortium certificate of a site with that very name."""
        kit = self.kit
        assert kit is not None

        def verify(node_id: str, message: bytes, signature: bytes) -> bool:
            pem = certificates.get(node_id)
            return pem is not None and signed_by(
                pem,
                kit.ca_pem,
                name=node_id,
                role="site",
                message=message,
                signature=signature,
                crl_pem=kit.crl_pem,
            )

        return verify

    def handle(self, instruction: Instruction, train: Train) -> Reply:
        """Run one stage; an error reply (never an exception) on any failure."""
        try:
            return self._stage(instruction, train)
        except BiofedError as exc:
            return Reply.error_for(instruction, exc, node_id=self.node_id, kind=MessageKind.SECAGG)

    def _stage(self, instruction: Instruction, train: Train) -> Reply:
        key = (instruction.run_id, instruction.round)
        if self.kit is None or self._signer is None:
            raise PolicyViolation("privacy: secure aggregation needs the site's kit")
        settings = SecureAggregationSettings.from_section(instruction.job.secure_aggregation)
        if settings is None:
            raise ProtocolError("a secure-aggregation stage without the job's settings")
        stage = instruction.directives.secagg_stage
        message, more = unpack_message(instruction.extras)
        if stage is SecAggStage.ADVERTISE_KEYS:
            plan = SecAggPlan.from_bytes(message)
            if not _same_plan(plan, settings):
                raise PolicyViolation(
                    "privacy: the round's secure-aggregation plan differs from the job's "
                    "[secure_aggregation] settings"
                )
            certificates: dict[str, bytes] = {}
            session = _Session(
                client=SecAggClient(
                    self.node_id,
                    plan,
                    run_id=instruction.run_id,
                    round=instruction.round,
                    sign=self._signer.sign,
                    verify=self._verifier(certificates),
                ),
                certificates=certificates,
            )
            with self._lock:
                self._sessions[key] = session
                while len(self._sessions) > _MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            advert = session.client.advertise()
            return self._message(instruction, advert.to_bytes(), certificate=self.kit.cert_pem)
        session = self._session(key)
        decoded = decode_message(message)
        if stage is SecAggStage.SHARE_KEYS:
            if not isinstance(decoded, Roster):
                raise ProtocolError("the share-keys stage needs a roster")
            session.certificates.clear()
            session.certificates.update(
                {
                    name[len(CERTIFICATE_PREFIX) :]: data
                    for name, data in more.items()
                    if name.startswith(CERTIFICATE_PREFIX)
                }
            )
            return self._message(instruction, session.client.share_keys(decoded).to_bytes())
        if stage is SecAggStage.MASKED_INPUT:
            if not isinstance(decoded, ForwardedShares):
                raise ProtocolError("the masked-input stage needs forwarded shares")
            if instruction.directives.query_request is not None:
                return self._query_input(instruction, session, decoded, key, train)
            trained = train(
                dataclasses.replace(instruction, kind=MessageKind.TRAIN, extras={}, audit_head="")
            )
            if not trained.ok or trained.parameters is None:
                self._drop(key)
                return Reply.error_for(
                    instruction,
                    trained.error or "task: training returned no parameters",
                    node_id=self.node_id,
                    kind=MessageKind.SECAGG,
                )
            vector = _update_vector(trained.parameters, instruction.parameters)
            weight = 1
            if (instruction.directives.secagg_weighting or "examples") == "examples":
                weight = max(1, min(trained.num_examples, session.client.plan.config.max_weight))
            masked = session.client.masked_input(decoded, vector, weight)
            dp = {k: v for k, v in trained.metrics.items() if k.startswith("dp.")}
            return self._message(instruction, masked.to_bytes(), metrics=dp)
        if stage is SecAggStage.UNMASK:
            if not isinstance(decoded, UnmaskRequest):
                raise ProtocolError("the unmask stage needs an unmask request")
            live = len(set(decoded.survivors) | {self.node_id})
            if live < session.least_sites:
                # a sum over fewer sites than the rules' min_sites is, with accomplices, one
                # site's exact unsuppressed answer: refuse the shares that would unmask it
                self._drop(key)
                raise PolicyViolation(
                    f"disclosure: the secure query sum would rest on {live} live sites; the "
                    f"rules ask for at least min_sites = {session.least_sites}"
                )
            out = session.client.unmask(decoded)
            self._drop(key)
            return self._message(instruction, out.to_bytes())
        value = None if stage is None else stage.value
        raise ProtocolError(f"unknown secure-aggregation stage {value!r}")

    def _query_input(
        self,
        instruction: Instruction,
        session: _Session,
        shares: ForwardedShares,
        key: tuple[str, int],
        answer: Train,
    ) -> Reply:
        """A secure query pass: answer it through the chain, mask its secure vector."""
        answered = answer(
            dataclasses.replace(instruction, kind=MessageKind.QUERY, extras={}, audit_head="")
        )
        if not answered.ok or answered.parameters is None:
            self._drop(key)
            return Reply.error_for(
                instruction,
                answered.error or "query: the site gave no answer",
                node_id=self.node_id,
                kind=MessageKind.SECAGG,
            )
        text = instruction.directives.query_request
        assert text is not None
        request = Request.from_json(text)
        session.least_sites = request.rules.min_sites  # the chain checked they cover the site's
        vector = secure_vector(
            request, Answer(arrays=dict(answered.parameters), records=answered.num_examples)
        )
        clip = session.client.plan.config.clip_range
        if vector.size and float(np.max(np.abs(vector))) > clip:
            self._drop(key)
            raise ConfigurationError(
                f"a value of this site's answer lies beyond the secure-aggregation plan's "
                f"clip_range {clip:g}; raise [secure_aggregation] clip_range in the job "
                "(it is never clipped silently: a clipped statistic is a wrong total)"
            )
        masked = session.client.masked_input(shares, vector, 1)
        dp = {k: v for k, v in answered.metrics.items() if k.startswith("dp.")}
        return self._message(instruction, masked.to_bytes(), metrics=dp)

    def _message(
        self,
        instruction: Instruction,
        message: bytes,
        *,
        metrics: dict[str, float] | None = None,
        **more: bytes,
    ) -> Reply:
        """The stage's reply: its protocol message (and named byte strings) as extras."""
        return Reply.answering(
            instruction,
            node_id=self.node_id,
            kind=MessageKind.SECAGG,
            metrics=metrics or {},
            extras=pack_message(message, **more),
        )

    def _session(self, key: tuple[str, int]) -> _Session:
        with self._lock:
            session = self._sessions.get(key)
        if session is None:
            raise ProtocolError(
                f"no secure-aggregation round {key[1]} of run {key[0]!r} is open at this site "
                "(it restarted or missed the advertise stage)"
            )
        return session

    def _drop(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._sessions.pop(key, None)


def _update_vector(trained: ParameterSet, start: ParameterSet) -> np.ndarray:
    """The flat float32 update ``trained − start`` in parameter order."""
    return np.concatenate(
        [(np.asarray(trained[name], dtype=np.float64) - start[name]).ravel() for name in start]
    ).astype(np.float32)

"""The coordinator's side of secure aggregation: a sans-I/O state machine."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from biofed.core import (
    Array,
    ConfigurationError,
    PayloadError,
    ProtocolError,
    SecureAggregationError,
)
from biofed.secagg import _crypto, _shamir
from biofed.secagg._config import SecAggPlan
from biofed.secagg._graph import SEED_BYTES, graph_degree, neighbour_graph
from biofed.secagg._messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    Roster,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    advertised_payload,
    decode_message,
)
from biofed.secagg._quantise import dequantise, dequantise_sum
from biofed.secagg._stage import RandomBytes, SecAggStage, Verify
from biofed.secagg._wire import check_ident, check_round

_EXPECTED: dict[SecAggStage, type[ClientMessage]] = {
    SecAggStage.ADVERTISE_KEYS: AdvertiseKeys,
    SecAggStage.SHARE_KEYS: ShareKeys,
    SecAggStage.MASKED_INPUT: MaskedInput,
    SecAggStage.UNMASK: UnmaskShares,
}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SecAggResult:
    """What secure aggregation releases: the weighted mean, and nothing per site.

    Attributes
    ----------
    mean:
        float32, shape ``(d,)``: Σ wᵢ xᵢ / Σ wᵢ over the survivors, within
        :attr:`SecAggPlan.error_bound` of the weighted mean of their clipped vectors.
    total_weight:
        Σ wᵢ over the survivors.
    survivors:
        The sites whose vectors are in the sum, sorted.
    dropouts:
        Each site that dropped, with the stage it failed to complete (a site dropped at
        ``UNMASK`` is still in the sum: only its shares were missing).
    total:
        float64, shape ``(d,)``: Σ wᵢ xᵢ over the survivors (within Σ wᵢ · s/2), for
        secure sums of statistics (:mod:`biofed.analytics`), where the sum, not the mean,
        is the answer.
    """

    mean: Array
    total_weight: int
    survivors: tuple[str, ...]
    dropouts: Mapping[str, SecAggStage] = field(default_factory=lambda: MappingProxyType({}))
    total: Array | None = None


class SecAggServer:
    """The coordinator in one round of SecAgg+: routes messages, removes masks, decodes.

    For each of the four stages: :meth:`receive` each site's message as it arrives, then
    :meth:`close_stage` when the engine stops waiting (all replied, or the deadline
    passed). ``close_stage`` returns the message for each site still in the round, for the
    next stage; after the unmask stage it returns ``{}`` and :meth:`result` holds the
    aggregate. Sites that sent nothing by then are dropouts; their masks are removed in the
    unmask stage when enough of their neighbours answer.

    Masked inputs are folded into one running sum as they arrive (the coordinator never
    holds more than one model-sized ring vector and one message).

    Parameters
    ----------
    plan:
        The round's plan.
    participants:
        The sites invited to the round (at most ``plan.num_sites``, at least 2).
    run_id, round:
        The round's context (the sites sign keys for it).
    graph_seed:
        32 public bytes that fix the neighbour graph; ``None`` draws them from
        ``random_bytes``.
    verify:
        Optional: with it the coordinator checks advertised keys' signatures itself and
        refuses bad ones early (the sites check them regardless).
    random_bytes:
        ``None`` for ``os.urandom``.

    Security notes
    --------------
    What the coordinator learns (Bonawitz et al. 2017, §6; Bell et al. 2020): the weighted
    sum and total weight of the survivors, who dropped when, the self-mask seeds of the
    survivors and the mask keys of sites that dropped before sending their masked input.
    A survivor's vector stays hidden behind the pairwise masks it shares with its surviving
    neighbours (at least t − 1 ≥ 1 of them), whose keys are never revealed; a dropped
    site's vector, if it arrives late, stays hidden behind its self-mask, whose seed is never
    revealed. The release happens only if every survivor's self-mask and every dropped
    site's pairwise masks can be removed, so no partial sum leaves an aborted round.

    Raises
    ------
    ProtocolError
        From :meth:`receive` for a message from a site not in the round, for another run,
        round or stage, or a second one; from any method after an abort.
    PayloadError
        From :meth:`receive` for a malformed message; its sender is then treated as having
        dropped out at this stage (see :attr:`rejected`).
    SecureAggregationError
        From :meth:`close_stage` when too few sites remain to finish; the round is
        aborted and the running sum discarded.
    """

    def __init__(
        self,
        plan: SecAggPlan,
        participants: Iterable[str],
        *,
        run_id: str,
        round: int,
        graph_seed: bytes | None = None,
        verify: Verify | None = None,
        random_bytes: RandomBytes | None = None,
    ) -> None:
        if not isinstance(plan, SecAggPlan):
            raise ConfigurationError(f"plan must be a SecAggPlan, got {type(plan).__name__}")
        invited = sorted(check_ident(p, "participant") for p in participants)
        if len(set(invited)) != len(invited):
            raise ConfigurationError("participants must be distinct")
        if not 2 <= len(invited) <= plan.num_sites:
            raise ConfigurationError(
                f"secure aggregation needs 2 to num_sites={plan.num_sites} participants, "
                f"got {len(invited)}"
            )
        random = os.urandom if random_bytes is None else random_bytes
        seed = random(SEED_BYTES) if graph_seed is None else graph_seed
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise ConfigurationError(f"graph_seed must be {SEED_BYTES} bytes")
        self.plan = plan
        self.run_id = check_ident(run_id, "run_id")
        self.round = check_round(round)
        self.graph_seed = seed
        self._verify = verify
        self._context = _crypto.round_context(run_id, self.round, plan.fingerprint)
        self._invited: tuple[str, ...] = tuple(invited)
        self._stage = SecAggStage.ADVERTISE_KEYS
        self._dropouts: dict[str, SecAggStage] = {}
        self._rejected: dict[str, str] = {}
        self._expected: set[str] = set(invited)  # who may still send in this stage
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._participants: tuple[str, ...] = ()
        self._xs: dict[str, int] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._sealed: dict[str, ShareKeys] = {}
        self._shared: list[str] = []  # completed stage 2, sorted
        self._acc: Array | None = None
        self._masked: set[str] = set()
        self._requests: dict[str, UnmaskRequest] = {}
        self._b_shares: dict[str, dict[int, int]] = {}
        self._s_shares: dict[str, dict[int, int]] = {}
        self._answered: set[str] = set()
        self._result: SecAggResult | None = None
        self._error: SecureAggregationError | None = None

    # State ------------------------------------------------------------------------------

    @property
    def stage(self) -> SecAggStage:
        """The stage whose messages are being collected (``DONE`` or ``ABORTED`` at the end)."""
        return self._stage

    @property
    def participants(self) -> tuple[str, ...]:
        """The invited sites, sorted."""
        return self._invited

    @property
    def dropouts(self) -> Mapping[str, SecAggStage]:
        """Each site that dropped so far, with the stage it did not complete."""
        return MappingProxyType(dict(self._dropouts))

    @property
    def rejected(self) -> Mapping[str, str]:
        """Sites whose message was refused (a subset of :attr:`dropouts`), with the reason."""
        return MappingProxyType(dict(self._rejected))

    @property
    def pending(self) -> frozenset[str]:
        """Sites the current stage still waits for."""
        return frozenset(self._expected)

    def result(self) -> SecAggResult:
        """The aggregate, once the unmask stage has closed.

        Raises
        ------
        SecureAggregationError
            If the round aborted (the same error ``close_stage`` raised).
        ProtocolError
            If the round has not finished.
        """
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise ProtocolError(f"no result yet: the round is at {self._stage.value}")
        return self._result

    def _abort(self, message: str) -> SecureAggregationError:
        self._error = SecureAggregationError(message)
        self._stage = SecAggStage.ABORTED
        self._acc = None  # no partial sum survives an abort
        self._b_shares.clear()
        self._s_shares.clear()
        return self._error

    def _holders(self, u: str) -> frozenset[str]:
        return self._graph[u] | {u}

    # Receiving --------------------------------------------------------------------------

    def receive(self, node_id: str, message: ClientMessage | bytes) -> None:
        """Take one site's message for the current stage.

        ``node_id`` is the sender as the transport authenticated it; the message must
        name the same site. Bytes are decoded first: malformed bytes reject the sender
        (PayloadError), a well-formed message of another stage is a ProtocolError and
        changes nothing.
        """
        stage = self._stage
        if stage not in _EXPECTED:
            raise ProtocolError(f"the round is {stage.value}: it takes no more messages")
        kind = _EXPECTED[stage]
        if node_id not in self._expected:
            reason = (
                "already sent its message for this stage"
                if node_id in self._current_senders()
                else "is not (or no longer) in the round"
            )
            raise ProtocolError(f"site {node_id!r} {reason} ({stage.value})")
        if isinstance(message, (bytes, bytearray, memoryview)):
            try:
                message = decode_message(message)  # type: ignore[assignment]
            except PayloadError as exc:
                self._reject(node_id, str(exc))
                raise
        if not isinstance(message, kind):
            raise ProtocolError(
                f"expected {kind.__name__} in the {stage.value} stage, got {type(message).__name__}"
            )
        if (message.run_id, message.round, message.node_id) != (self.run_id, self.round, node_id):
            raise ProtocolError(
                f"a {kind.__name__} from {node_id!r} names site {message.node_id!r}, run "
                f"{message.run_id!r}, round {message.round}"
            )
        try:
            if isinstance(message, AdvertiseKeys):
                self._take_advert(message)
            elif isinstance(message, ShareKeys):
                self._take_shares(message)
            elif isinstance(message, MaskedInput):
                self._take_masked(message)
            else:
                self._take_unmask(message)
        except PayloadError as exc:
            self._reject(node_id, str(exc))
            raise
        self._expected.discard(node_id)

    def _current_senders(self) -> set[str]:
        stage = self._stage
        if stage is SecAggStage.ADVERTISE_KEYS:
            return set(self._adverts)
        if stage is SecAggStage.SHARE_KEYS:
            return set(self._sealed)
        if stage is SecAggStage.MASKED_INPUT:
            return self._masked
        return self._answered

    def _reject(self, node_id: str, reason: str) -> None:
        """A site whose message is refused is treated as dropped at this stage."""
        self._rejected[node_id] = reason
        self._expected.discard(node_id)

    def _take_advert(self, advert: AdvertiseKeys) -> None:
        if self._verify is not None:
            payload = advertised_payload(
                self._context, advert.node_id, advert.c_public, advert.s_public
            )
            try:
                valid = self._verify(advert.node_id, payload, advert.signature)
            except Exception as exc:  # a verifier that raises is a failed verification
                raise PayloadError(
                    f"the key signature of {advert.node_id!r} could not be verified"
                ) from exc
            if valid is not True:
                raise PayloadError(f"the key signature of {advert.node_id!r} does not verify")
        self._adverts[advert.node_id] = advert

    def _take_shares(self, message: ShareKeys) -> None:
        receivers = {s.receiver for s in message.shares}
        if receivers != self._graph[message.node_id]:
            raise PayloadError(
                f"{message.node_id!r} must send one share to each of its "
                f"{len(self._graph[message.node_id])} neighbours, sent {len(receivers)} "
                "(or to others)"
            )
        self._sealed[message.node_id] = message

    def _take_masked(self, message: MaskedInput) -> None:
        values = message.values
        expected = self.plan.dimension + 1
        if values.dtype != self.plan.dtype or values.size != expected:
            raise PayloadError(
                f"the masked vector of {message.node_id!r} has {values.size} {values.dtype} "
                f"values; the plan needs {expected} {self.plan.dtype}"
            )
        assert self._acc is not None
        np.add(self._acc, values, out=self._acc)
        self._masked.add(message.node_id)

    def _take_unmask(self, message: UnmaskShares) -> None:
        request = self._requests[message.node_id]
        b_owners = tuple(o for o, _ in message.self_mask_shares)
        s_owners = tuple(o for o, _ in message.mask_key_shares)
        if b_owners != request.survivors or s_owners != request.dropped:
            raise PayloadError(f"{message.node_id!r} did not send exactly the shares asked for")
        x = self._xs[message.node_id]
        for owner, share in message.self_mask_shares:
            self._b_shares[owner][x] = share
        for owner, share in message.mask_key_shares:
            self._s_shares[owner][x] = share
        self._answered.add(message.node_id)

    # Closing ----------------------------------------------------------------------------

    def close_stage(self) -> dict[str, ServerMessage]:
        """End the current stage: record dropouts and return each remaining site's next
        message (``{}`` after the unmask stage, when :meth:`result` is ready).

        Raises
        ------
        SecureAggregationError
            If the round cannot finish with the sites that remain.
        """
        stage = self._stage
        for node in self._expected:
            self._dropouts[node] = stage
        for node in self._rejected:
            self._dropouts.setdefault(node, stage)
        if stage is SecAggStage.ADVERTISE_KEYS:
            return dict(self._close_advertise())
        if stage is SecAggStage.SHARE_KEYS:
            return dict(self._close_share_keys())
        if stage is SecAggStage.MASKED_INPUT:
            return dict(self._close_masked_input())
        if stage is SecAggStage.UNMASK:
            self._close_unmask()
            return {}
        raise ProtocolError(f"the round is {stage.value}: there is no stage to close")

    def _close_advertise(self) -> dict[str, Roster]:
        participants = tuple(sorted(self._adverts))
        k = self.plan.config.num_neighbours
        holders = graph_degree(len(participants), k) + 1 if participants else 0
        if len(participants) < 2 or holders < self.plan.threshold:
            raise self._abort(
                f"only {len(participants)} of {len(self._invited)} sites advertised keys: each "
                f"secret would have {holders} holders, fewer than the threshold "
                f"{self.plan.threshold}"
            )
        self._participants = participants
        self._xs = {p: i + 1 for i, p in enumerate(participants)}
        self._graph = neighbour_graph(participants, self.graph_seed, k)
        self._stage = SecAggStage.SHARE_KEYS
        self._expected = set(participants)
        return {
            u: Roster(
                run_id=self.run_id,
                round=self.round,
                node_id=u,
                graph_seed=self.graph_seed,
                participants=participants,
                neighbours=tuple(self._adverts[v] for v in sorted(self._graph[u])),
            )
            for u in participants
        }

    def _close_share_keys(self) -> dict[str, ForwardedShares]:
        shared = sorted(self._sealed)
        alive = set(shared)
        t = self.plan.threshold
        for u in shared:
            if len(self._holders(u) & alive) < t:
                raise self._abort(
                    f"site {u!r} has {len(self._holders(u) & alive)} share holders left after "
                    f"the share-keys stage, fewer than the threshold {t}"
                )
        if len(shared) < t:
            raise self._abort(f"only {len(shared)} sites shared keys; the threshold is {t}")
        inbox: dict[str, list[EncryptedShare]] = {v: [] for v in shared}
        for u in shared:
            for sealed in self._sealed[u].shares:
                if sealed.receiver in inbox:
                    inbox[sealed.receiver].append(sealed)
        self._sealed.clear()
        self._shared = shared
        self._acc = np.zeros(self.plan.dimension + 1, dtype=self.plan.dtype)
        self._stage = SecAggStage.MASKED_INPUT
        self._expected = set(shared)
        return {
            v: ForwardedShares(
                run_id=self.run_id,
                round=self.round,
                node_id=v,
                shares=tuple(sorted(inbox[v], key=lambda s: s.sender)),
            )
            for v in shared
        }

    def _close_masked_input(self) -> dict[str, UnmaskRequest]:
        survivors = self._masked
        shared = set(self._shared)
        t = self.plan.threshold
        for u in self._shared:
            holders = self._holders(u) & survivors
            if u in survivors and len(holders) < t:
                raise self._abort(
                    f"the self-mask of {u!r} cannot be removed: {len(holders)} of its share "
                    f"holders sent a masked input, the threshold is {t}"
                )
            if u not in survivors and len(holders) < t:
                raise self._abort(
                    f"the pairwise masks of dropped site {u!r} cannot be removed: "
                    f"{len(holders)} of its neighbours survive, the threshold is {t}"
                )
        if len(survivors) < t:
            raise self._abort(f"only {len(survivors)} masked inputs arrived; the threshold is {t}")
        self._b_shares = {u: {} for u in survivors}
        self._s_shares = {u: {} for u in shared - survivors}
        requests = {}
        for v in sorted(survivors):
            known = self._holders(v) & shared
            requests[v] = UnmaskRequest(
                run_id=self.run_id,
                round=self.round,
                node_id=v,
                survivors=tuple(sorted(known & survivors)),
                dropped=tuple(sorted(known - survivors)),
            )
        self._requests = requests
        self._stage = SecAggStage.UNMASK
        self._expected = set(survivors)
        return dict(requests)

    def _close_unmask(self) -> None:
        t = self.plan.threshold
        subtract: list[bytes] = []
        add: list[bytes] = []
        for u in sorted(self._b_shares):
            shares = self._b_shares[u]
            if len(shares) < t:
                raise self._abort(
                    f"the self-mask of {u!r} cannot be removed: {len(shares)} of its share "
                    f"holders answered the unmask request, the threshold is {t}"
                )
            subtract.append(self._combine(u, shares, "self-mask seed"))
        for u in sorted(self._s_shares):
            shares = self._s_shares[u]
            if len(shares) < t:
                raise self._abort(
                    f"the pairwise masks of dropped site {u!r} cannot be removed: "
                    f"{len(shares)} of its neighbours answered, the threshold is {t}"
                )
            key_bytes = self._combine(u, shares, "mask key")
            private = _crypto.private_key_from_bytes(key_bytes)
            if _crypto.public_bytes(private) != self._adverts[u].s_public:
                raise self._abort(
                    f"the rebuilt mask key of {u!r} does not match its advertised public key: "
                    "a share holder sent a wrong share"
                )
            for v in sorted(self._graph[u] & self._masked):
                key = _crypto.agree(
                    private,
                    self._adverts[v].s_public,
                    label=_crypto.LABEL_MASK_KEY,
                    context=self._context,
                    ids=(u, v),
                )
                # v added this mask if v < u, and subtracted it otherwise: undo that.
                (subtract if v < u else add).append(key)
        assert self._acc is not None
        acc = self._acc
        _crypto.apply_masks(acc, add, subtract)
        survivors = tuple(sorted(self._masked))
        total_weight = int(acc[-1])
        if not len(survivors) <= total_weight <= len(survivors) * self.plan.config.max_weight:
            raise self._abort(
                "the unmasked total weight is out of range: the masks did not cancel (sites "
                "disagree on the neighbour graph, or a site sent a corrupt vector)"
            )
        mean, total_weight = dequantise(acc, self.plan)
        total = dequantise_sum(acc, self.plan)
        self._acc = None
        self._b_shares.clear()
        self._s_shares.clear()
        self._result = SecAggResult(
            mean=mean,
            total_weight=total_weight,
            survivors=survivors,
            dropouts=MappingProxyType(dict(self._dropouts)),
            total=total,
        )
        self._stage = SecAggStage.DONE

    def _combine(self, owner: str, shares: dict[int, int], what: str) -> bytes:
        try:
            return _shamir.combine(shares, self.plan.threshold)
        except SecureAggregationError as exc:
            raise self._abort(f"the {what} of {owner!r} cannot be rebuilt: {exc}") from exc

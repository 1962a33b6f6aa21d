"""The site's side of secure aggregation: a sans-I/O state machine."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from biofed.core import Array, ConfigurationError, ProtocolError, SecureAggregationError
from biofed.secagg import _crypto, _shamir
from biofed.secagg._config import SecAggPlan
from biofed.secagg._graph import graph_degree, neighbours_of
from biofed.secagg._messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    advertised_payload,
    share_associated_data,
)
from biofed.secagg._quantise import check_vector, quantise_into
from biofed.secagg._stage import RandomBytes, SecAggStage, Sign, Verify
from biofed.secagg._wire import check_ident, check_round

_T = TypeVar("_T")


class SecAggClient:
    """One site in one round of SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020).

    Call the four stage methods in order, each with the coordinator's message for that
    stage, and send what each returns::

        advertise() → AdvertiseKeys
        share_keys(Roster) → ShareKeys
        masked_input(ForwardedShares, vector, weight) → MaskedInput
        unmask(UnmaskRequest) → UnmaskShares

    A call out of order raises :class:`~biofed.core.ProtocolError`. A failed safety check
    raises :class:`~biofed.core.SecureAggregationError`, forgets the round's secrets, and
    leaves the client ``ABORTED``: it sends nothing more.

    Parameters
    ----------
    node_id:
        This site's id, as its identity (certificate) names it.
    plan:
        The round's plan; every party must hold the same one (its fingerprint is signed).
    run_id, round:
        The round's context, bound into keys, signatures and ciphertexts.
    sign:
        Signs bytes with this site's identity key.
    verify:
        ``verify(node_id, message, signature)`` checks a signature by another site's
        identity key (from the consortium's certificates).
    random_bytes:
        ``None`` for ``os.urandom``. A seeded source only in tests and simulations.

    Security notes
    --------------
    *Key substitution.* A site signs both its public keys with its identity key, and
    checks every neighbour's signature, so a coordinator that replaces a key (to sit in
    the middle of a key agreement) is caught here, before any share is sent.

    *The self-mask seed of a dropped site.* For each neighbour the site reveals either the
    share of its self-mask seed b_u (u sent its masked input) or the share of its mask key
    s_sk_u (u dropped), never both: a request that lists a site as both raises, and the
    client answers one unmask request only. Together with t > (k + 1)/2, a coordinator
    cannot collect t shares of both secrets of any site, which it would need to unmask one
    site's vector.
    """

    def __init__(
        self,
        node_id: str,
        plan: SecAggPlan,
        *,
        run_id: str,
        round: int,
        sign: Sign,
        verify: Verify,
        random_bytes: RandomBytes | None = None,
    ) -> None:
        self.node_id = check_ident(node_id, "node_id")
        if not isinstance(plan, SecAggPlan):
            raise ConfigurationError(f"plan must be a SecAggPlan, got {type(plan).__name__}")
        if not callable(sign) or not callable(verify):
            raise ConfigurationError("sign and verify must be callables")
        self.plan = plan
        self.run_id = check_ident(run_id, "run_id")
        self.round = check_round(round)
        self._sign = sign
        self._verify = verify
        self._random: RandomBytes = os.urandom if random_bytes is None else random_bytes
        self._context = _crypto.round_context(run_id, self.round, plan.fingerprint)
        self._stage = SecAggStage.ADVERTISE_KEYS
        self._c_key = _crypto.new_private_key(self._random)
        self._s_key = _crypto.new_private_key(self._random)
        self._self_seed: bytes | None = self._random(_crypto.KEY_BYTES)
        self._neighbours: dict[str, AdvertiseKeys] = {}
        self._xs: dict[str, int] = {}
        self._share_keys: dict[str, bytes] = {}
        # Shares this site holds: owner -> (share of b_owner, share of s_sk_owner).
        self._held: dict[str, tuple[int, int]] = {}

    @property
    def stage(self) -> SecAggStage:
        """The step this client takes next (``DONE`` or ``ABORTED`` at the end)."""
        return self._stage

    def _enter(self, expected: SecAggStage) -> None:
        if self._stage is not expected:
            raise ProtocolError(
                f"site {self.node_id!r}: cannot run the {expected.value} stage while at "
                f"{self._stage.value}"
            )

    def _guard(self, fn: Callable[[], _T]) -> _T:
        """Run one stage; on a failed safety check forget the secrets and abort."""
        try:
            return fn()
        except SecureAggregationError:
            self._abort()
            raise

    def _abort(self) -> None:
        self._stage = SecAggStage.ABORTED
        self._self_seed = None
        self._held.clear()
        self._share_keys.clear()

    def _check_context(self, message: Roster | ForwardedShares | UnmaskRequest) -> None:
        if (message.run_id, message.round, message.node_id) != (
            self.run_id,
            self.round,
            self.node_id,
        ):
            raise ProtocolError(
                f"site {self.node_id!r} got a {type(message).__name__} for site "
                f"{message.node_id!r}, run {message.run_id!r}, round {message.round}"
            )

    # Stage 1 ----------------------------------------------------------------------------

    def advertise(self) -> AdvertiseKeys:
        """This site's two public keys, signed."""
        self._enter(SecAggStage.ADVERTISE_KEYS)
        c_public = _crypto.public_bytes(self._c_key)
        s_public = _crypto.public_bytes(self._s_key)
        signature = self._sign(advertised_payload(self._context, self.node_id, c_public, s_public))
        if not isinstance(signature, bytes):
            raise ConfigurationError("sign must return bytes")
        self._stage = SecAggStage.SHARE_KEYS
        return AdvertiseKeys(
            run_id=self.run_id,
            round=self.round,
            node_id=self.node_id,
            c_public=c_public,
            s_public=s_public,
            signature=signature,
        )

    # Stage 2 ----------------------------------------------------------------------------

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Check the roster and the neighbours' signed keys; seal shares for each neighbour.

        Raises
        ------
        SecureAggregationError
            If a neighbour's keys are not signed by that neighbour (substituted), the roster
            does not match the neighbour graph, or there are too few neighbours.
        """
        self._enter(SecAggStage.SHARE_KEYS)
        self._check_context(roster)
        return self._guard(lambda: self._share_keys_checked(roster))

    def _share_keys_checked(self, roster: Roster) -> ShareKeys:
        plan = self.plan
        participants = roster.participants
        if self.node_id not in participants:
            raise SecureAggregationError(
                f"the roster for {self.node_id!r} does not list it among the participants"
            )
        if len(participants) > plan.num_sites:
            raise SecureAggregationError(
                f"the roster lists {len(participants)} participants; the plan allows "
                f"{plan.num_sites}"
            )
        holders = graph_degree(len(participants), plan.config.num_neighbours) + 1
        if holders < plan.threshold:
            raise SecureAggregationError(
                f"with {len(participants)} participants each secret has {holders} holders, "
                f"fewer than the threshold {plan.threshold}"
            )
        expected = neighbours_of(
            self.node_id, participants, roster.graph_seed, plan.config.num_neighbours
        )
        given = {a.node_id for a in roster.neighbours}
        if given != expected:
            raise SecureAggregationError(
                f"the roster's neighbours of {self.node_id!r} do not match the neighbour "
                f"graph (missing {sorted(expected - given)[:5]}, unexpected "
                f"{sorted(given - expected)[:5]})"
            )
        for advert in roster.neighbours:
            payload = advertised_payload(
                self._context, advert.node_id, advert.c_public, advert.s_public
            )
            try:
                valid = self._verify(advert.node_id, payload, advert.signature)
            except Exception as exc:  # a verifier that raises is a failed verification
                raise SecureAggregationError(
                    f"the public keys of {advert.node_id!r} failed signature verification: "
                    "the coordinator may have substituted them"
                ) from exc
            if valid is not True:
                raise SecureAggregationError(
                    f"the public keys of {advert.node_id!r} are not signed by "
                    f"{advert.node_id!r}: the coordinator may have substituted them; aborting"
                )
        self._neighbours = {a.node_id: a for a in roster.neighbours}
        # A holder's share point is its position in the sorted participant list, plus one.
        self._xs = {
            v: bisect.bisect_left(participants, v) + 1 for v in (*self._neighbours, self.node_id)
        }
        assert self._self_seed is not None
        points = list(self._xs.values())
        b_shares = _shamir.split(self._self_seed, points, plan.threshold, self._random)
        s_shares = _shamir.split(
            _crypto.private_bytes(self._s_key), points, plan.threshold, self._random
        )
        me = self._xs[self.node_id]
        self._held[self.node_id] = (b_shares[me], s_shares[me])
        sealed = []
        for v in sorted(self._neighbours):
            key = _crypto.agree(
                self._c_key,
                self._neighbours[v].c_public,
                label=_crypto.LABEL_SHARE_KEY,
                context=self._context,
                ids=(self.node_id, v),
            )
            self._share_keys[v] = key
            x = self._xs[v]
            plaintext = _shamir.encode_share(b_shares[x]) + _shamir.encode_share(s_shares[x])
            nonce = self._random(_crypto.NONCE_BYTES)
            associated = share_associated_data(self.run_id, self.round, self.node_id, v)
            sealed.append(
                EncryptedShare(
                    run_id=self.run_id,
                    round=self.round,
                    sender=self.node_id,
                    receiver=v,
                    nonce=nonce,
                    ciphertext=_crypto.seal(key, nonce, plaintext, associated),
                )
            )
        self._stage = SecAggStage.MASKED_INPUT
        return ShareKeys(
            run_id=self.run_id, round=self.round, node_id=self.node_id, shares=tuple(sealed)
        )

    # Stage 3 ----------------------------------------------------------------------------

    def masked_input(self, shares: ForwardedShares, vector: Array, weight: int) -> MaskedInput:
        """Open the neighbours' shares; return ``weight · vector`` quantised and masked.

        Parameters
        ----------
        shares:
            The coordinator's :class:`ForwardedShares` for this site.
        vector:
            float32, shape ``(plan.dimension,)``; values are clipped to the plan's range.
            With DP on, the site's noise is already in it.
        weight:
            The site's weight (its example count), an integer in ``[1, max_weight]``.

        Raises
        ------
        ParameterMismatch, ConfigurationError, PayloadError
            If the vector or weight is unusable (nothing is sent, the client stays here).
        SecureAggregationError
            If a share fails authentication, comes from a non-neighbour, or too few
            neighbours remain to reach the threshold.
        """
        self._enter(SecAggStage.MASKED_INPUT)
        self._check_context(shares)
        vector = check_vector(self.plan, vector)
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
            raise ConfigurationError(f"weight must be an integer, got {weight!r}")
        if not 1 <= int(weight) <= self.plan.config.max_weight:
            raise ConfigurationError(
                f"weight must lie in [1, max_weight={self.plan.config.max_weight}], got {weight}"
            )
        out = np.empty(self.plan.dimension + 1, dtype=self.plan.dtype)
        quantise_into(out, self.plan, vector, int(weight))  # may raise before any state change
        return self._guard(lambda: self._masked_input_checked(shares, out))

    def _masked_input_checked(self, shares: ForwardedShares, out: Array) -> MaskedInput:
        for sealed in shares.shares:
            if (sealed.run_id, sealed.round) != (self.run_id, self.round):
                raise SecureAggregationError("a forwarded share belongs to another run or round")
            if sealed.sender not in self._neighbours:
                raise SecureAggregationError(
                    f"a share from {sealed.sender!r}, which is not a neighbour of {self.node_id!r}"
                )
            plaintext = _crypto.open_sealed(
                self._share_keys[sealed.sender],
                sealed.nonce,
                sealed.ciphertext,
                sealed.associated_data(),
            )
            try:
                b_share = _shamir.decode_share(plaintext[: _shamir.SHARE_BYTES])
                s_share = _shamir.decode_share(plaintext[_shamir.SHARE_BYTES :])
            except ValueError as exc:
                raise SecureAggregationError(
                    f"the share from {sealed.sender!r} is not a field element"
                ) from exc
            self._held[sealed.sender] = (b_share, s_share)
        alive = sorted(s.sender for s in shares.shares)
        if len(alive) + 1 < self.plan.threshold:
            raise SecureAggregationError(
                f"only {len(alive)} neighbours of {self.node_id!r} shared keys; its masks could "
                f"not be removed with threshold {self.plan.threshold}"
            )
        add: list[bytes] = []
        subtract: list[bytes] = []
        assert self._self_seed is not None
        add.append(self._self_seed)
        for v in alive:
            key = _crypto.agree(
                self._s_key,
                self._neighbours[v].s_public,
                label=_crypto.LABEL_MASK_KEY,
                context=self._context,
                ids=(self.node_id, v),
            )
            (add if self.node_id < v else subtract).append(key)
        _crypto.apply_masks(out, add, subtract)
        # Only neighbours that shared keys can appear in the unmask request.
        self._neighbours = {v: self._neighbours[v] for v in alive}
        self._self_seed = None  # the seed itself is no longer needed: its shares are out
        self._stage = SecAggStage.UNMASK
        return MaskedInput(run_id=self.run_id, round=self.round, node_id=self.node_id, values=out)

    # Stage 4 ----------------------------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """The shares asked for: b-shares of survivors, s_sk-shares of dropped sites.

        Raises
        ------
        SecureAggregationError
            If the request names a site as both survivor and dropped (it would reveal that
            site's input), names this site as dropped, does not split exactly this site's
            neighbourhood, or leaves fewer than t survivors in it.
        """
        self._enter(SecAggStage.UNMASK)
        self._check_context(request)
        return self._guard(lambda: self._unmask_checked(request))

    def _unmask_checked(self, request: UnmaskRequest) -> UnmaskShares:
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise SecureAggregationError(
                f"asked to reveal both the self-mask share and the mask-key share of "
                f"{sorted(both)[:5]}: that would unmask their inputs; refusing"
            )
        if self.node_id in dropped:
            raise SecureAggregationError(f"the unmask request lists {self.node_id!r} as dropped")
        known = set(self._neighbours) | {self.node_id}
        if survivors | dropped != known:
            raise SecureAggregationError(
                f"the unmask request must classify exactly the {len(known)} sites whose "
                f"shares {self.node_id!r} holds"
            )
        if len(survivors) < self.plan.threshold:
            raise SecureAggregationError(
                f"only {len(survivors)} sites of {self.node_id!r}'s neighbourhood survived, "
                f"fewer than the threshold {self.plan.threshold}"
            )
        reply = UnmaskShares(
            run_id=self.run_id,
            round=self.round,
            node_id=self.node_id,
            self_mask_shares=tuple((u, self._held[u][0]) for u in sorted(survivors)),
            mask_key_shares=tuple((u, self._held[u][1]) for u in sorted(dropped)),
        )
        self._held.clear()
        self._stage = SecAggStage.DONE
        return reply

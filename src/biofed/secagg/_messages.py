"""The messages of one secure-aggregation round, with explicit, versioned byte formats.

Client → coordinator: :class:`AdvertiseKeys`, :class:`ShareKeys`, :class:`MaskedInput`,
:class:`UnmaskShares`. Coordinator → client: :class:`Roster`, :class:`ForwardedShares`,
:class:`UnmaskRequest`. :class:`EncryptedShare` travels inside ``ShareKeys`` and
``ForwardedShares``; the coordinator cannot read it.

Each message's bytes are ``b"BFSA"``, a version byte (1), a kind byte, then the run id, the
round (8 bytes) and the node id (the sender of a client message, the recipient of a
coordinator message), then the kind's fields. ``from_bytes`` refuses another kind or
version, truncated input and trailing bytes, and re-validates every field
(:class:`~biofed.core.PayloadError`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from biofed.core import Array, ConfigurationError, PayloadError
from biofed.secagg._crypto import NONCE_BYTES, PUBLIC_KEY_BYTES, TAG_BYTES
from biofed.secagg._graph import SEED_BYTES
from biofed.secagg._shamir import PRIME, SHARE_BYTES
from biofed.secagg._wire import (
    Reader,
    Writer,
    check_ident,
    check_idents,
    check_round,
    check_sorted_idents,
    check_sorted_unique,
)

KIND_ADVERTISE_KEYS = 1
KIND_ROSTER = 2
KIND_ENCRYPTED_SHARE = 3
KIND_SHARE_KEYS = 4
KIND_FORWARDED_SHARES = 5
KIND_MASKED_INPUT = 6
KIND_UNMASK_REQUEST = 7
KIND_UNMASK_SHARES = 8

#: Longest signature accepted (an RSA-4096 signature is 512 bytes; ECDSA P-256 about 72).
MAX_SIGNATURE_BYTES = 1024
#: Plaintext of an encrypted share: the share of b_u, then the share of s_sk_u.
SHARE_PLAINTEXT_BYTES = 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES
_RING_DTYPES: dict[int, np.dtype[Any]] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


@contextlib.contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Report invalid field values found while decoding as PayloadError."""
    try:
        yield
    except ConfigurationError as exc:
        raise PayloadError(f"{what}: {exc}") from exc


def _check_header(run_id: str, round_: int, node_id: str, node_what: str = "node_id") -> None:
    check_ident(run_id, "run_id")
    check_ident(node_id, node_what)
    check_round(round_)


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ConfigurationError(f"{name} must be {length} bytes")


def _header(kind: int, run_id: str, round_: int, node_id: str) -> Writer:
    return Writer(kind).ident(run_id).u64(round_).ident(node_id)


def _read_header(r: Reader) -> tuple[str, int, str]:
    return r.ident(), r.u64(), r.ident()


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertiseKeys:
    """Stage 1, client → coordinator: a site's two public keys, signed by the site.

    ``signature`` is the site's signature (its identity key, via the ``sign`` callback) of
    :func:`advertised_payload`: the keys together with the run, round and
    plan. Bytes: header, ``c_public`` (32), ``s_public`` (32), signature length (2) and
    signature.
    """

    run_id: str
    round: int
    node_id: str
    c_public: bytes
    s_public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        _check_bytes("c_public", self.c_public, PUBLIC_KEY_BYTES)
        _check_bytes("s_public", self.s_public, PUBLIC_KEY_BYTES)
        if not isinstance(self.signature, bytes) or not 0 < len(self.signature) <= (
            MAX_SIGNATURE_BYTES
        ):
            raise ConfigurationError(f"signature must be 1 to {MAX_SIGNATURE_BYTES} bytes")

    def to_bytes(self) -> bytes:
        w = _header(KIND_ADVERTISE_KEYS, self.run_id, self.round, self.node_id)
        w.raw(self.c_public).raw(self.s_public).u16(len(self.signature)).raw(self.signature)
        return w.finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> AdvertiseKeys:
        r = Reader(data, KIND_ADVERTISE_KEYS, "AdvertiseKeys")
        run_id, round_, node_id = _read_header(r)
        c_public, s_public = r.raw(PUBLIC_KEY_BYTES), r.raw(PUBLIC_KEY_BYTES)
        signature = r.raw(r.u16())
        r.finish()
        with _decoding(r.what):
            return cls(
                run_id=run_id,
                round=round_,
                node_id=node_id,
                c_public=c_public,
                s_public=s_public,
                signature=signature,
            )


def advertised_payload(context: bytes, node_id: str, c_public: bytes, s_public: bytes) -> bytes:
    """The bytes a site signs in stage 1: a label, the round context, its id and both keys.

    ``context`` binds run id, round and the plan's fingerprint, so a signed advertisement
    cannot be replayed in another round or under another plan.
    """
    node = node_id.encode("ascii")
    return (
        b"biofed-secagg/v1/advertise-keys"
        + context
        + bytes((len(node),))
        + node
        + c_public
        + s_public
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Roster:
    """Stage 2, coordinator → client: who advertised, the graph seed, the neighbours' keys.

    Attributes
    ----------
    node_id:
        The recipient.
    graph_seed:
        32 public bytes; with ``participants`` they fix the neighbour graph.
    participants:
        Every site that advertised keys, sorted.
    neighbours:
        The recipient's neighbours' advertisements (signatures included) for this run and
        round, sorted by id.

    Bytes: header, seed (32), participants (count (4), then ids), neighbours (count (4),
    then per neighbour its id, ``c_public`` (32), ``s_public`` (32), signature length (2)
    and signature; run and round are the header's).
    """

    run_id: str
    round: int
    node_id: str
    graph_seed: bytes
    participants: tuple[str, ...]
    neighbours: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        _check_bytes("graph_seed", self.graph_seed, SEED_BYTES)
        object.__setattr__(
            self, "participants", check_sorted_idents(self.participants, "participants")
        )
        neighbours = tuple(self.neighbours)
        for advert in neighbours:
            if not isinstance(advert, AdvertiseKeys):
                raise ConfigurationError("neighbours must be AdvertiseKeys messages")
            if (advert.run_id, advert.round) != (self.run_id, self.round):
                raise ConfigurationError("every neighbour's keys must be for this run and round")
        check_sorted_unique((a.node_id for a in neighbours), "neighbours")
        object.__setattr__(self, "neighbours", neighbours)

    def to_bytes(self) -> bytes:
        w = _header(KIND_ROSTER, self.run_id, self.round, self.node_id)
        w.raw(self.graph_seed).idents(self.participants).u32(len(self.neighbours))
        for a in self.neighbours:
            w.ident(a.node_id).raw(a.c_public).raw(a.s_public)
            w.u16(len(a.signature)).raw(a.signature)
        return w.finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Roster:
        r = Reader(data, KIND_ROSTER, "Roster")
        run_id, round_, node_id = _read_header(r)
        seed = r.raw(SEED_BYTES)
        participants = r.idents()
        neighbours = []
        for _ in range(r.count()):
            fields = (r.ident(), r.raw(PUBLIC_KEY_BYTES), r.raw(PUBLIC_KEY_BYTES))
            signature = r.raw(r.u16())
            with _decoding(r.what):
                neighbours.append(
                    AdvertiseKeys(
                        run_id=run_id,
                        round=round_,
                        node_id=fields[0],
                        c_public=fields[1],
                        s_public=fields[2],
                        signature=signature,
                    )
                )
        r.finish()
        with _decoding(r.what):
            return cls(
                run_id=run_id,
                round=round_,
                node_id=node_id,
                graph_seed=seed,
                participants=participants,
                neighbours=tuple(neighbours),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedShare:
    """One site's shares of its two secrets for one neighbour, sealed for that neighbour.

    AES-256-GCM under a key agreed between ``sender`` and ``receiver`` (their ``c`` keys),
    with :meth:`associated_data` (kind, run, round, sender, receiver) authenticated, so the
    coordinator can neither read nor redirect it. Bytes: kind header with run id and round,
    sender, receiver, nonce (12), ciphertext (82: two 33-byte shares and the tag).
    """

    run_id: str
    round: int
    sender: str
    receiver: str
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.sender, "sender")
        check_ident(self.receiver, "receiver")
        if self.sender == self.receiver:
            raise ConfigurationError("a site does not send a share to itself")
        _check_bytes("nonce", self.nonce, NONCE_BYTES)
        _check_bytes("ciphertext", self.ciphertext, SHARE_CIPHERTEXT_BYTES)

    def associated_data(self) -> bytes:
        """The authenticated, unencrypted context of the ciphertext."""
        return share_associated_data(self.run_id, self.round, self.sender, self.receiver)

    def to_bytes(self) -> bytes:
        w = _header(KIND_ENCRYPTED_SHARE, self.run_id, self.round, self.sender)
        return w.ident(self.receiver).raw(self.nonce).raw(self.ciphertext).finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> EncryptedShare:
        r = Reader(data, KIND_ENCRYPTED_SHARE, "EncryptedShare")
        run_id, round_, sender = _read_header(r)
        receiver = r.ident()
        nonce, ciphertext = r.raw(NONCE_BYTES), r.raw(SHARE_CIPHERTEXT_BYTES)
        r.finish()
        with _decoding(r.what):
            return cls(
                run_id=run_id,
                round=round_,
                sender=sender,
                receiver=receiver,
                nonce=nonce,
                ciphertext=ciphertext,
            )


def share_associated_data(run_id: str, round_: int, sender: str, receiver: str) -> bytes:
    """AES-GCM associated data of a share: kind, run, round, sender and receiver."""
    return (
        Writer(KIND_ENCRYPTED_SHARE)
        .ident(run_id)
        .u64(round_)
        .ident(sender)
        .ident(receiver)
        .finish()
    )


def _encode_shares(
    kind: int, run_id: str, round_: int, node_id: str, shares: tuple[EncryptedShare, ...]
) -> bytes:
    """The container's header, then per share only the other party's id, nonce and
    ciphertext: run, round and this end's id are the container's."""
    w = _header(kind, run_id, round_, node_id).u32(len(shares))
    outgoing = kind == KIND_SHARE_KEYS
    for share in shares:
        w.ident(share.receiver if outgoing else share.sender).raw(share.nonce).raw(share.ciphertext)
    return w.finish()


def _decode_shares(
    r: Reader, kind: int, run_id: str, round_: int, node_id: str
) -> tuple[EncryptedShare, ...]:
    outgoing = kind == KIND_SHARE_KEYS
    shares = []
    for _ in range(r.count()):
        peer, nonce, ciphertext = r.ident(), r.raw(NONCE_BYTES), r.raw(SHARE_CIPHERTEXT_BYTES)
        with _decoding(r.what):
            shares.append(
                EncryptedShare(
                    run_id=run_id,
                    round=round_,
                    sender=node_id if outgoing else peer,
                    receiver=peer if outgoing else node_id,
                    nonce=nonce,
                    ciphertext=ciphertext,
                )
            )
    return tuple(shares)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareKeys:
    """Stage 2, client → coordinator: one :class:`EncryptedShare` per neighbour.

    Bytes: header, count (4), then per share the receiver's id, nonce (12) and ciphertext
    (82); run, round and sender are the header's.
    """

    run_id: str
    round: int
    node_id: str
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        shares = tuple(self.shares)
        for share in shares:
            if not isinstance(share, EncryptedShare):
                raise ConfigurationError("shares must be EncryptedShare messages")
            if (share.run_id, share.round, share.sender) != (
                self.run_id,
                self.round,
                self.node_id,
            ):
                raise ConfigurationError("every share must come from this node, run and round")
        check_sorted_unique((s.receiver for s in shares), "share receivers")
        object.__setattr__(self, "shares", shares)

    def to_bytes(self) -> bytes:
        return _encode_shares(KIND_SHARE_KEYS, self.run_id, self.round, self.node_id, self.shares)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ShareKeys:
        r = Reader(data, KIND_SHARE_KEYS, "ShareKeys")
        run_id, round_, node_id = _read_header(r)
        shares = _decode_shares(r, KIND_SHARE_KEYS, run_id, round_, node_id)
        r.finish()
        with _decoding(r.what):
            return cls(run_id=run_id, round=round_, node_id=node_id, shares=shares)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardedShares:
    """Stage 3, coordinator → client: the shares its neighbours sealed for it.

    The senders are the recipient's neighbours that completed stage 2. Bytes as
    :class:`ShareKeys`, with each share's sender in place of its receiver.
    """

    run_id: str
    round: int
    node_id: str
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        shares = tuple(self.shares)
        for share in shares:
            if not isinstance(share, EncryptedShare):
                raise ConfigurationError("shares must be EncryptedShare messages")
            if share.receiver != self.node_id:
                raise ConfigurationError("every forwarded share must be addressed to node_id")
        check_sorted_unique((s.sender for s in shares), "share senders")
        object.__setattr__(self, "shares", shares)

    def to_bytes(self) -> bytes:
        return _encode_shares(
            KIND_FORWARDED_SHARES, self.run_id, self.round, self.node_id, self.shares
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ForwardedShares:
        r = Reader(data, KIND_FORWARDED_SHARES, "ForwardedShares")
        run_id, round_, node_id = _read_header(r)
        shares = _decode_shares(r, KIND_FORWARDED_SHARES, run_id, round_, node_id)
        r.finish()
        with _decoding(r.what):
            return cls(run_id=run_id, round=round_, node_id=node_id, shares=shares)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MaskedInput:
    """Stage 3, client → coordinator: the site's weighted, quantised and masked vector.

    ``values`` (read-only, uint32 or uint64, length d + 1: the d weighted values, then the
    weight) is uniformly distributed on its own; only the sum over the survivors, with the
    masks removed, means anything. Bytes: header, ring bits (1: 32 or 64), count (4), then
    ``count`` little-endian words. Decoding gives a read-only view of the input bytes.
    """

    run_id: str
    round: int
    node_id: str
    values: Array

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        values = self.values
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            raise ConfigurationError("values must be a 1-D numpy array")
        if values.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise ConfigurationError(f"values must be uint32 or uint64, got {values.dtype}")
        view = values.view()
        view.flags.writeable = False
        object.__setattr__(self, "values", view)

    @property
    def ring_bits(self) -> int:
        return 8 * self.values.dtype.itemsize

    def to_bytes(self) -> bytes:
        w = _header(KIND_MASKED_INPUT, self.run_id, self.round, self.node_id)
        words = self.values.astype(_RING_DTYPES[self.ring_bits], copy=False)
        w.u8(self.ring_bits).u32(words.size).raw(np.ascontiguousarray(words).view(np.uint8).data)
        return w.finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> MaskedInput:
        r = Reader(data, KIND_MASKED_INPUT, "MaskedInput")
        run_id, round_, node_id = _read_header(r)
        bits = r.u8()
        if bits not in _RING_DTYPES:
            raise PayloadError(f"MaskedInput: ring bits must be 32 or 64, got {bits}")
        count = r.u32()
        dtype = _RING_DTYPES[bits]
        offset = r.position
        r.skip(count * dtype.itemsize)
        r.finish()
        values = np.frombuffer(r.buffer, dtype=dtype, count=count, offset=offset)
        if not values.dtype.isnative:
            values = values.astype(values.dtype.newbyteorder("="))
        with _decoding(r.what):
            return cls(run_id=run_id, round=round_, node_id=node_id, values=values)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskRequest:
    """Stage 4, coordinator → client: which of the recipient's share holders' owners
    survived (sent a masked input) and which dropped after stage 2.

    Both lists are restricted to the recipient and its neighbours that completed stage 2,
    sorted. Bytes: header, survivors (count (4), ids), dropped (count (4), ids).
    """

    run_id: str
    round: int
    node_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        for name in ("survivors", "dropped"):
            values = check_idents(getattr(self, name), name)
            object.__setattr__(self, name, check_sorted_unique(values, name))

    def to_bytes(self) -> bytes:
        w = _header(KIND_UNMASK_REQUEST, self.run_id, self.round, self.node_id)
        return w.idents(self.survivors).idents(self.dropped).finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> UnmaskRequest:
        r = Reader(data, KIND_UNMASK_REQUEST, "UnmaskRequest")
        run_id, round_, node_id = _read_header(r)
        survivors, dropped = r.idents(), r.idents()
        r.finish()
        with _decoding(r.what):
            return cls(
                run_id=run_id, round=round_, node_id=node_id, survivors=survivors, dropped=dropped
            )


def _check_share_pairs(name: str, pairs: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(pairs, (tuple, list)):
        raise ConfigurationError(f"{name} must be a tuple of (site id, share) pairs")
    out: list[tuple[str, int]] = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ConfigurationError(f"{name} must be (site id, share) pairs")
        owner, share = pair
        check_ident(owner, f"{name} owner")
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share < PRIME:
            raise ConfigurationError(f"{name}: a share must be an integer in [0, p)")
        out.append((owner, share))
    check_sorted_unique((owner for owner, _ in out), f"{name} owners")
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskShares:
    """Stage 4, client → coordinator: the shares the coordinator asked for.

    ``self_mask_shares`` holds the sender's share of b_u for each survivor u;
    ``mask_key_shares`` its share of s_sk_u for each dropped u. Never both for one site.
    Bytes: header, then each list as count (4) and (id, 33-byte share) pairs.
    """

    run_id: str
    round: int
    node_id: str
    self_mask_shares: tuple[tuple[str, int], ...]
    mask_key_shares: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        _check_header(self.run_id, self.round, self.node_id)
        b = _check_share_pairs("self_mask_shares", self.self_mask_shares)
        s = _check_share_pairs("mask_key_shares", self.mask_key_shares)
        if {o for o, _ in b} & {o for o, _ in s}:
            raise ConfigurationError("a site's self-mask share and key share are never both sent")
        object.__setattr__(self, "self_mask_shares", b)
        object.__setattr__(self, "mask_key_shares", s)

    def to_bytes(self) -> bytes:
        w = _header(KIND_UNMASK_SHARES, self.run_id, self.round, self.node_id)
        for pairs in (self.self_mask_shares, self.mask_key_shares):
            w.u32(len(pairs))
            for owner, share in pairs:
                w.ident(owner).raw(share.to_bytes(SHARE_BYTES, "big"))
        return w.finish()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> UnmaskShares:
        r = Reader(data, KIND_UNMASK_SHARES, "UnmaskShares")
        run_id, round_, node_id = _read_header(r)
        lists = []
        for _ in range(2):
            lists.append(
                tuple(
                    (r.ident(), int.from_bytes(r.raw(SHARE_BYTES), "big")) for _ in range(r.count())
                )
            )
        r.finish()
        with _decoding(r.what):
            return cls(
                run_id=run_id,
                round=round_,
                node_id=node_id,
                self_mask_shares=lists[0],
                mask_key_shares=lists[1],
            )


#: What a site sends to the coordinator.
ClientMessage = Union[AdvertiseKeys, ShareKeys, MaskedInput, UnmaskShares]
#: What the coordinator sends to a site.
ServerMessage = Union[Roster, ForwardedShares, UnmaskRequest]
SecAggMessage = Union[ClientMessage, ServerMessage, EncryptedShare]

_BY_KIND: dict[int, type[SecAggMessage]] = {
    KIND_ADVERTISE_KEYS: AdvertiseKeys,
    KIND_ROSTER: Roster,
    KIND_ENCRYPTED_SHARE: EncryptedShare,
    KIND_SHARE_KEYS: ShareKeys,
    KIND_FORWARDED_SHARES: ForwardedShares,
    KIND_MASKED_INPUT: MaskedInput,
    KIND_UNMASK_REQUEST: UnmaskRequest,
    KIND_UNMASK_SHARES: UnmaskShares,
}


def decode_message(data: bytes | bytearray | memoryview) -> SecAggMessage:
    """Any secure-aggregation message from its bytes, by its kind byte.

    Raises
    ------
    PayloadError
        If the bytes are not a well-formed message of a known kind.
    """
    view = memoryview(data).cast("B") if isinstance(data, (bytes, bytearray, memoryview)) else None
    if view is None or len(view) < 6:
        raise PayloadError("not a biofed secure-aggregation message (too short)")
    cls = _BY_KIND.get(view[5])
    if cls is None:
        raise PayloadError(f"unknown secure-aggregation message kind {view[5]}")
    return cls.from_bytes(data)

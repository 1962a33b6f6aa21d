"""Message byte formats: round trips, and truncated, trailing or foreign bytes refused."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from biofed.core import ConfigurationError, PayloadError
from biofed.secagg import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    Roster,
    SecAggMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
)
from biofed.secagg._shamir import PRIME

_HEADER = {"run_id": "run-1", "round": 7}


def _advert(node: str = "site-a") -> AdvertiseKeys:
    return AdvertiseKeys(
        **_HEADER, node_id=node, c_public=b"c" * 32, s_public=b"s" * 32, signature=b"sig" * 24
    )


def _share(sender: str = "site-a", receiver: str = "site-b") -> EncryptedShare:
    return EncryptedShare(
        **_HEADER, sender=sender, receiver=receiver, nonce=b"n" * 12, ciphertext=b"x" * 82
    )


def _messages() -> list[SecAggMessage]:
    return [
        _advert(),
        Roster(
            **_HEADER,
            node_id="site-a",
            graph_seed=b"g" * 32,
            participants=("site-a", "site-b", "site-c"),
            neighbours=(_advert("site-b"), _advert("site-c")),
        ),
        _share(),
        ShareKeys(**_HEADER, node_id="site-a", shares=(_share("site-a", "site-b"),)),
        ForwardedShares(
            **_HEADER,
            node_id="site-b",
            shares=(_share("site-a", "site-b"), _share("site-c", "site-b")),
        ),
        MaskedInput(**_HEADER, node_id="site-a", values=np.arange(5, dtype=np.uint32)),
        MaskedInput(**_HEADER, node_id="site-a", values=np.array([2**64 - 1, 0], np.uint64)),
        UnmaskRequest(
            **_HEADER, node_id="site-a", survivors=("site-a", "site-b"), dropped=("site-c",)
        ),
        UnmaskShares(
            **_HEADER,
            node_id="site-a",
            self_mask_shares=(("site-a", 5), ("site-b", PRIME - 1)),
            mask_key_shares=(("site-c", 0),),
        ),
    ]


def _same(a: SecAggMessage, b: SecAggMessage) -> bool:
    if isinstance(a, MaskedInput) and isinstance(b, MaskedInput):
        return (a.run_id, a.round, a.node_id) == (b.run_id, b.round, b.node_id) and (
            a.values.dtype == b.values.dtype and np.array_equal(a.values, b.values)
        )
    return a == b


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message: SecAggMessage) -> None:
    data = message.to_bytes()
    assert data[:5] == b"BFSA\x01"
    assert _same(type(message).from_bytes(data), message)
    assert _same(decode_message(data), message)
    assert _same(decode_message(bytearray(data)), message)


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_every_truncation_and_any_trailing_byte_is_refused(message: SecAggMessage) -> None:
    data = message.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(PayloadError):
            type(message).from_bytes(data[:cut])
    with pytest.raises(PayloadError, match="trailing"):
        type(message).from_bytes(data + b"\0")


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_other_versions_and_kinds_are_refused(message: SecAggMessage) -> None:
    data = bytearray(message.to_bytes())
    data[4] = 2
    with pytest.raises(PayloadError, match="version 2"):
        type(message).from_bytes(bytes(data))
    data[4] = 1
    data[5] = 99
    with pytest.raises(PayloadError, match="kind"):
        type(message).from_bytes(bytes(data))
    with pytest.raises(PayloadError, match="unknown"):
        decode_message(bytes(data))
    with pytest.raises(PayloadError, match="not a biofed"):
        type(message).from_bytes(b"XXXX" + bytes(data[4:]))


def test_decoded_masked_vector_is_a_read_only_view() -> None:
    message = MaskedInput(**_HEADER, node_id="site-a", values=np.arange(3, dtype=np.uint32))
    decoded = MaskedInput.from_bytes(message.to_bytes())
    assert not decoded.values.flags.writeable
    assert decoded.ring_bits == 32


def test_masked_vector_length_must_match_its_count() -> None:
    data = bytearray(
        MaskedInput(**_HEADER, node_id="site-a", values=np.arange(4, dtype=np.uint32)).to_bytes()
    )
    with pytest.raises(PayloadError, match="truncated"):
        MaskedInput.from_bytes(bytes(data[:-2]))
    data[-21] = 9  # claim another ring (the bits byte precedes the count and 16 data bytes)
    with pytest.raises(PayloadError, match="ring bits"):
        MaskedInput.from_bytes(bytes(data))


def test_invalid_fields_are_refused_on_construction_and_decoding() -> None:
    with pytest.raises(ConfigurationError, match="c_public"):
        dataclasses.replace(_advert(), c_public=b"short")
    with pytest.raises(ConfigurationError, match="node_id"):
        dataclasses.replace(_advert(), node_id="bad id!")
    with pytest.raises(ConfigurationError, match="sorted"):
        UnmaskRequest(**_HEADER, node_id="site-a", survivors=("b", "a"), dropped=())
    with pytest.raises(ConfigurationError, match="never both"):
        UnmaskShares(
            **_HEADER, node_id="site-a", self_mask_shares=(("b", 1),), mask_key_shares=(("b", 2),)
        )
    with pytest.raises(ConfigurationError, match="uint32 or uint64"):
        MaskedInput(**_HEADER, node_id="site-a", values=np.zeros(3, np.float32))
    with pytest.raises(ConfigurationError, match="addressed"):
        ForwardedShares(**_HEADER, node_id="site-c", shares=(_share("site-a", "site-b"),))
    # A share value outside the field, smuggled in through the bytes, is a PayloadError.
    good = UnmaskShares(
        **_HEADER, node_id="site-a", self_mask_shares=(("b", 1),), mask_key_shares=()
    ).to_bytes()
    bad = good[:-37] + (PRIME + 1).to_bytes(33, "big") + good[-4:]
    with pytest.raises(PayloadError, match="a share must be an integer"):
        UnmaskShares.from_bytes(bad)


def test_messages_are_frozen_and_not_pickled_on_the_wire() -> None:
    advert = _advert()
    with pytest.raises(dataclasses.FrozenInstanceError):
        advert.node_id = "x"  # type: ignore[misc]
    with pytest.raises(PayloadError):
        decode_message(pickle.dumps(advert))

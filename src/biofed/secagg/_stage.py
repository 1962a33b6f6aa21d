"""The stages of a secure-aggregation round, shared by the client and the server."""

from __future__ import annotations

import enum
from collections.abc import Callable

#: Signs bytes with the site's identity key (e.g. ECDSA P-256 from its kit).
Sign = Callable[[bytes], bytes]
#: ``verify(node_id, message, signature)``: True if ``node_id``'s identity key signed it.
Verify = Callable[[str, bytes, bytes], bool]
#: ``random_bytes(n)``: n bytes from a CSPRNG (``os.urandom`` unless a test asks otherwise).
RandomBytes = Callable[[int], bytes]


class SecAggStage(str, enum.Enum):
    """Where a round stands: the step a party takes next (or its end state).

    The four protocol stages are those of Bonawitz et al. (2017): advertise keys, share
    keys, masked input, unmask.
    """

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"

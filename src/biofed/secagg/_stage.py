"""The stages of a secure-aggregation round, shared by the client and the server (the enum
lives in :mod:`biofed.core.sections`: an instruction's directives name the stage)."""

from __future__ import annotations

from collections.abc import Callable

from biofed.core.sections import SecAggStage as SecAggStage

#: Signs bytes with the site's identity key (e.g. ECDSA P-256 from its kit).
Sign = Callable[[bytes], bytes]
#: ``verify(node_id, message, signature)``: True if ``node_id``'s identity key signed it.
Verify = Callable[[str, bytes, bytes], bool]
#: ``random_bytes(n)``: n bytes from a CSPRNG (``os.urandom`` unless a test asks otherwise).
RandomBytes = Callable[[int], bytes]

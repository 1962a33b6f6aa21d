"""Step: secure aggregation (SecAgg+), the site's side of each stage.

See :mod:`biofed.node._secure` for the protocol's sessions and their security notes.
"""

from __future__ import annotations

from biofed.core import Instruction, MessageKind, Reply
from biofed.node._chain import Next, Work
from biofed.node._secure import SecureSessions


class SecureAggregationStep:
    """Step: a ``MessageKind.SECAGG`` instruction is one stage of a secure round; others go
    on unchanged.

    The key stages answer without training. The masked-input stage hands the round's
    training on to the rest of the chain (marked :attr:`~biofed.node._chain.Work.secure`,
    so the policy knows the update leaves only masked), then masks what comes back: only
    the masked vector (and the site's own ``dp.*`` statement) leaves.
    """

    def __init__(self, sessions: SecureSessions) -> None:
        self.sessions = sessions

    def __call__(self, work: Work, call_next: Next) -> Reply:
        if work.instruction.kind is not MessageKind.SECAGG:
            return call_next(work)

        def train(instruction: Instruction) -> Reply:
            return call_next(Work(instruction=instruction, secure=True))

        return self.sessions.handle(work.instruction, train)

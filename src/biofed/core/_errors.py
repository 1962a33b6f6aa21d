"""The biofed error tree.

Every error biofed raises on purpose derives from :class:`BiofedError`; where a builtin
exception matches the meaning, the biofed error also subclasses it, so ``except ValueError``
keeps working for callers who do not know biofed::

    BiofedError
    ├── ConfigurationError(ValueError)      a parameter or config is invalid; raised early
    ├── PayloadError(ValueError)           bytes or arrays that crossed a boundary are malformed
    │   └── ParameterMismatch              names / shapes / dtypes differ from the model's
    ├── DataError(ValueError)              a dataset file or table is unusable
    ├── ProtocolError                      a message arrived out of order, for another run, twice…
    ├── PolicyViolation                    a site's policy forbids the request
    ├── PrivacyBudgetExceeded              the request would overspend a privacy budget
    ├── TransportError(ConnectionError)    a message could not be moved
    ├── TaskError(RuntimeError)            researcher task code failed at a site
    └── RoundFailed(RuntimeError)          a round could not produce an aggregate
        └── SecureAggregationError         secure aggregation aborted (too few survivors, a
                                           key signature failed, inconsistent shares…)

Errors that reach the wire carry a stable ``code`` and a message with no record-level data.
"""

from __future__ import annotations


class BiofedError(Exception):
    """Base class of every biofed error.

    Attributes
    ----------
    code:
        A short, stable, machine-readable identifier (``"payload"``, ``"protocol"``…), the
        same string on both ends of a connection.
    """

    code: str = "biofed"


class ConfigurationError(BiofedError, ValueError):
    """A parameter, option or config value is invalid."""

    code = "configuration"


class PayloadError(BiofedError, ValueError):
    """Serialized bytes or arrays that crossed a trust boundary are malformed."""

    code = "payload"


class ParameterMismatch(PayloadError):
    """Parameter names, shapes or dtypes do not match the model they are meant for."""

    code = "parameter_mismatch"


class DataError(BiofedError, ValueError):
    """A dataset file or table cannot be used as asked."""

    code = "data"


class ProtocolError(BiofedError):
    """A message does not fit the protocol state (wrong run, round, node, kind or order)."""

    code = "protocol"


class PolicyViolation(BiofedError):
    """A site's policy forbids what was asked."""

    code = "policy"


class PrivacyBudgetExceeded(PolicyViolation):
    """Running the request would spend more privacy budget than is left."""

    code = "privacy_budget"


class TransportError(BiofedError, ConnectionError):
    """A message could not be sent or received."""

    code = "transport"


class TaskError(BiofedError, RuntimeError):
    """Task code failed while training or evaluating at a site."""

    code = "task"


class RoundFailed(BiofedError, RuntimeError):
    """A round ended without an aggregate (too few valid replies, every reply rejected…)."""

    code = "round_failed"


class SecureAggregationError(RoundFailed):
    """Secure aggregation aborted: no aggregate, and no partial sum, is released.

    Raised by a site when the protocol's safety checks fail (a neighbour's public keys are not
    signed by that neighbour, a share does not decrypt, the coordinator asks for both secrets
    of one site) and by the coordinator when too few sites survive to remove the masks.
    """

    code = "secure_aggregation"

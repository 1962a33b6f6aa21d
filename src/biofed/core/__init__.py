"""biofed.core: value types, the error tree and the array codec (numpy and stdlib only)."""

from biofed.core._codec import MAX_PAYLOAD_BYTES, decode_parameters, encode_parameters
from biofed.core._errors import (
    BiofedError,
    ConfigurationError,
    DataError,
    ParameterMismatch,
    PayloadError,
    PolicyViolation,
    PrivacyBudgetExceeded,
    ProtocolError,
    RoundFailed,
    TaskError,
    TransportError,
)
from biofed.core._messages import (
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    Instruction,
    MessageKind,
    Reply,
)
from biofed.core._params import ALLOWED_DTYPES, Array, ParameterSet, ParameterSpec
from biofed.core._types import (
    Config,
    Metrics,
    NodeInfo,
    Scalar,
    check_id,
    freeze_config,
    freeze_metrics,
    weighted_mean_metrics,
)

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_PAYLOAD_BYTES",
    "SCAFFOLD_CONTROL_DELTA",
    "SCAFFOLD_SERVER_CONTROL",
    "Array",
    "BiofedError",
    "Config",
    "ConfigurationError",
    "DataError",
    "Instruction",
    "MessageKind",
    "Metrics",
    "NodeInfo",
    "ParameterMismatch",
    "ParameterSet",
    "ParameterSpec",
    "PayloadError",
    "PolicyViolation",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "Reply",
    "RoundFailed",
    "Scalar",
    "TaskError",
    "TransportError",
    "check_id",
    "decode_parameters",
    "encode_parameters",
    "freeze_config",
    "freeze_metrics",
    "weighted_mean_metrics",
]

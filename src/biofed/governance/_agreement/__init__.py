"""Study agreements: a machine-readable, signed statement of what a federated study may do.

An agreement (:class:`StudyAgreement`) names the parties and the coordinator by certificate
fingerprint, the dataset of each site in scope, the task bundles approved by digest, the
outputs allowed to leave, the privacy required and an expiry date. It lives in one TOML file
together with the parties' signatures (:class:`SignedAgreement`); each party adds its own with
:func:`sign`, and :func:`verify` / :func:`require_in_force` decide whether it is in force.

The signatures cover the canonical JSON of the agreement's values
(:meth:`StudyAgreement.canonical_bytes`), not the TOML text: re-formatting a file keeps them
valid, changing any value invalidates every one.
"""

from biofed.governance._agreement._files import (
    MAX_AGREEMENT_BYTES,
    read_agreement,
    write_agreement,
)
from biofed.governance._agreement._incentives import (
    INCENTIVE_ACCESS,
    INCENTIVE_KEYS,
    INCENTIVE_MEASURES,
    INCENTIVE_REWARDS,
    SECURE_MECHANISMS,
    IncentivePolicy,
)
from biofed.governance._agreement._model import (
    ANALYTICS_RULE_KEYS,
    FORMAT,
    PARTY_ROLES,
    AnalyticsPolicy,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    StudyAgreement,
)
from biofed.governance._agreement._sign import Signature, SignedAgreement, sign
from biofed.governance._agreement._verify import AgreementStatus, require_in_force, verify

__all__ = [
    "ANALYTICS_RULE_KEYS",
    "FORMAT",
    "INCENTIVE_ACCESS",
    "INCENTIVE_KEYS",
    "INCENTIVE_MEASURES",
    "INCENTIVE_REWARDS",
    "MAX_AGREEMENT_BYTES",
    "PARTY_ROLES",
    "SECURE_MECHANISMS",
    "AgreementStatus",
    "AnalyticsPolicy",
    "IncentivePolicy",
    "OutputPolicy",
    "Party",
    "PrivacyRequirements",
    "Signature",
    "SignedAgreement",
    "StudyAgreement",
    "read_agreement",
    "require_in_force",
    "sign",
    "verify",
    "write_agreement",
]

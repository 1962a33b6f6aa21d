"""The study agreements the coordinator has verified, kept by id for run access decisions.

A job names its agreement (``[run] agreement = ID``); the researcher sends the signed file and
the signers' certificates with it (``biofed run submit JOB --agreement FILE``). The coordinator
admits the job only if that agreement is in force — signed by every party and the
coordinator with the certificates it lists, each chaining to the consortium CA and not
revoked, not expired — names the submitter as one of its researchers, and names this
coordinator. It then keeps the file by id, so later jobs under the same agreement need not
send it again (it is re-verified each time), and :class:`~._access.RunAccess` reads its
researchers to decide who else may see a run.

Security notes
--------------
Threat: a researcher claims a study it is not part of, to run under it or to widen who sees
its runs, or replaces an agreement's text to add a reader. The check is
:func:`biofed.governance.require_in_force` (ECDSA P-256 signatures over the canonical
bytes, RFC 5280 path validation against the consortium CA and its CRL, fingerprint match)
with the coordinator's own CA and CRL, never the sender's word. The first agreement kept
under an id is the one that counts: a different text under the same id is refused (an
amendment takes a new id), so a run's readers cannot change after it was submitted.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from biofed.analytics import RULE_KEYS, DisclosureRules
from biofed.core import BiofedError, ConfigurationError, PolicyViolation, check_id
from biofed.governance import IncentivePolicy, SignedAgreement, require_in_force

#: What one submission may carry: the agreement file and the signers' certificates.
MAX_AGREEMENT_BYTES = 1 << 20
MAX_CERTIFICATES = 256
MAX_CERTIFICATE_BYTES = 16 << 10
#: Roles that may submit a job under an agreement that names them.
SUBMITTER_ROLES = frozenset({"researcher", "admin"})


def _parse(data: bytes, agreement_id: str) -> SignedAgreement:
    if len(data) > MAX_AGREEMENT_BYTES:
        raise ConfigurationError(
            f"agreement: the file is {len(data)} bytes; at most {MAX_AGREEMENT_BYTES} allowed"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"agreement: the file is not UTF-8 text ({exc.reason})") from None
    try:
        signed = SignedAgreement.from_toml(text, where="agreement")
    except RecursionError:
        raise ConfigurationError("agreement: the file nests tables too deeply") from None
    if signed.agreement.agreement_id != agreement_id:
        raise ConfigurationError(
            f"agreement: the file is agreement {signed.agreement.agreement_id!r}, but the job "
            f"names {agreement_id!r} ([run] agreement)"
        )
    return signed


def _certificates(certificates: Mapping[str, bytes]) -> dict[str, bytes]:
    if len(certificates) > MAX_CERTIFICATES:
        raise ConfigurationError(
            f"agreement: {len(certificates)} certificates sent; at most {MAX_CERTIFICATES}"
        )
    checked: dict[str, bytes] = {}
    for name, pem in certificates.items():
        check_id(name, what="certificate name")
        if len(pem) > MAX_CERTIFICATE_BYTES or b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigurationError(
                f"agreement: the certificate of {name!r} is not a PEM certificate"
            )
        checked[name] = bytes(pem)
    return checked


class AgreementKeeper:
    """Verifies the study agreements jobs name and keeps them by id (``<directory>/<id>.json``).

    Parameters
    ----------
    directory:
        Where verified agreements are kept (created on first use).
    ca_pem:
        The consortium CA certificate (from the coordinator's kit).
    crl:
        Returns the CA's current CRL (PEM), read again at each check so a revocation counts.
    coordinator:
        This coordinator's name: an agreement must name it as its coordinator.
    coordinator_pem:
        This coordinator's certificate, used for its own signature.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ca_pem: bytes,
        crl: Callable[[], bytes | None],
        coordinator: str,
        coordinator_pem: bytes,
    ) -> None:
        self.directory = directory
        self._ca = ca_pem
        self._crl = crl
        self._coordinator = coordinator
        self._coordinator_pem = coordinator_pem
        self._lock = threading.Lock()
        self._researchers: dict[str, tuple[frozenset[str], bool, Mapping[str, float] | None]] = {}

    def _path(self, agreement_id: str) -> Path:
        return self.directory / f"{check_id(agreement_id, what='agreement id')}.json"

    def _kept(self, agreement_id: str) -> tuple[SignedAgreement, dict[str, bytes]] | None:
        path = self._path(agreement_id)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        certificates = {k: v.encode("ascii") for k, v in data["certificates"].items()}
        return SignedAgreement.from_toml(data["agreement"]), certificates

    def admit(
        self,
        submitter: str,
        role: str,
        agreement_id: str,
        data: bytes = b"",
        certificates: Mapping[str, bytes] | None = None,
    ) -> None:
        """Check the agreement a job names (sent now, or kept earlier) before the run exists.

        Raises
        ------
        ConfigurationError
            The file is unreadable, is another agreement, differs from the one kept under
            its id, or none was sent and none is kept.
        PolicyViolation
            The agreement is not in force, does not name the submitter as a researcher, or
            names another coordinator.
        """
        with self._lock:
            kept = self._kept(agreement_id)
            if data:
                signed = _parse(data, agreement_id)
                certs = _certificates(certificates or {})
                if kept is not None and kept[0].agreement.digest() != signed.agreement.digest():
                    raise ConfigurationError(
                        f"agreement: {agreement_id!r} is already kept here with other content "
                        f"(digest {kept[0].agreement.digest()[:16]}…); an amended agreement "
                        "needs a new id"
                    )
            elif kept is not None:
                signed, certs = kept
            else:
                raise ConfigurationError(
                    f"the job names study agreement {agreement_id!r}, which this coordinator "
                    "does not keep: send it with the job (biofed run submit JOB --agreement FILE)"
                )
            agreement = signed.agreement
            party = agreement.signer(submitter)
            if party is None or party.role != role or role not in SUBMITTER_ROLES:
                raise PolicyViolation(
                    f"study agreement {agreement_id!r} does not name {submitter!r} as a {role}"
                )
            if agreement.coordinator.name != self._coordinator:
                raise PolicyViolation(
                    f"study agreement {agreement_id!r} names coordinator "
                    f"{agreement.coordinator.name!r}, not this one ({self._coordinator!r})"
                )
            signers = {p.name for p in agreement.signers}
            usable = {k: v for k, v in certs.items() if k in signers}
            usable[self._coordinator] = self._coordinator_pem
            require_in_force(signed, usable, self._ca, crl_pem=self._crl())
            if kept is None:
                self._keep(agreement_id, signed, usable)

    def _keep(self, agreement_id: str, signed: SignedAgreement, certs: dict[str, bytes]) -> None:
        path = self._path(agreement_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "agreement": signed.to_toml(),
            "certificates": {k: v.decode("ascii") for k, v in sorted(certs.items())},
        }
        tmp = path.with_suffix(f".part{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(body, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def _terms(self, agreement_id: str) -> tuple[frozenset[str], bool, Mapping[str, float] | None]:
        """(researchers named, final model released, analytics thresholds) of a kept
        agreement; nobody, no release and no thresholds for an id that is not kept (or no
        longer reads)."""
        with self._lock:
            cached = self._researchers.get(agreement_id)
            if cached is not None:
                return cached
            try:
                kept = self._kept(agreement_id)
            except ConfigurationError:
                kept = None
            if kept is None:
                return frozenset(), False, None
            agreement = kept[0].agreement
            names = frozenset(p.name for p in agreement.parties if p.role == "researcher")
            terms = (names, bool(agreement.outputs.final_model), _analytics(agreement))
            self._researchers[agreement_id] = terms
            return terms

    def researchers(self, agreement_id: str) -> frozenset[str]:
        """The researchers a kept agreement names (empty if none is kept under that id)."""
        return self._terms(agreement_id)[0]

    def releases_model(self, agreement_id: str) -> bool:
        """Whether a kept agreement lets the final model leave (``outputs.final_model``)."""
        return self._terms(agreement_id)[1]

    def analytics_rules(self, agreement_id: str) -> Mapping[str, float] | None:
        """The disclosure thresholds a kept agreement's ``[analytics]`` section sets (rule
        key → value; None without any, or for an id not kept): an analysis under it states
        at least these."""
        return self._terms(agreement_id)[2]

    def incentives(self, agreement_id: str) -> IncentivePolicy | None:
        """The incentive policy a kept agreement states (its signed ``[incentives]``), or
        None (none stated, or no agreement kept under that id)."""
        with self._lock:
            try:
                kept = self._kept(agreement_id)
            except ConfigurationError:
                return None
        return None if kept is None else kept[0].agreement.incentives


def _analytics(agreement: object) -> Mapping[str, float] | None:
    """The rule keys an agreement's ``[analytics]`` sets (its allowed kinds are the sites'
    to enforce), checked by :class:`~biofed.analytics.DisclosureRules`; None when it sets
    none, or they do not read."""
    section = getattr(agreement, "analytics", None)
    rules = getattr(section, "rules", None)  # governance's AnalyticsPolicy
    if not isinstance(rules, Mapping):
        return None
    given = {k: rules[k] for k in RULE_KEYS if k in rules}
    try:
        DisclosureRules.from_mapping(given)
    except BiofedError:
        return None
    return MappingProxyType(given) if given else None

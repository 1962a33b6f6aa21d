"""A site's checks before every round and on every reply: the node never trusts the
coordinator's word that something is allowed.

:func:`check_instruction` decides whether one instruction may run at this site, from what
the site holds itself: the study agreements it signed (``<agreements_dir>/<id>.toml``), the
parties' certificates (``<certificates_dir>/<name>.pem``) and the consortium CA, its
dataset registry, its local bundle approvals and the bundle files
(``<bundles_dir>/<digest>.zip``). The rules run in this order and the first that fails is
named in the :class:`~biofed.core.PolicyViolation` (``"<rule>: why"``):

``agreement``
    The instruction names an agreement that is in force (every party signed it, nothing was
    edited after signing, it has not expired) and that this site signed.
``dataset``
    The dataset the instruction names is the one the agreement puts in scope for this site,
    it is registered, its file (or OMOP CDM) is unchanged since registration, it is the
    file or CDM the node serves, and its last data-quality check (if it was checked) failed
    no fatal check. The refusal names the failed checks, never their record counts (the
    reason reaches the coordinator). A job that compiles a study dataset spec against it
    must carry a spec whose digest the agreement lists in ``approved_studies`` (checked
    before the site reads anything with it).
``cohort``
    The split the instruction uses has at least ``max(agreement.min_cohort, dataset
    min_cohort)`` rows (training rows for TRAIN and SUMMARISE, the evaluated split's rows
    for EVALUATE).
``bundle``
    A bundle is required: its digest is listed in the agreement, approved locally, and the
    file's recomputed digest matches. Built-in tasks and in-process task modules never run
    under governance: the agreement's bundle list is the only code every party agreed to.
``outputs``
    An EVALUATE reply is a per-site metric: the agreement must allow per-site metrics, and
    every metric the job names in its evaluate config (``metrics = "a,b"``) must be allowed.
    A QUERY's answer leaves only if the agreement's ``[analytics] allowed`` lists the
    query's kind (absent: no query runs under the agreement).
``privacy``
    Secure aggregation or differential privacy required by the agreement must be provided by
    the job. A job asking for seeded (predictable) DP noise is refused. With DP required,
    the (ε, δ) the site's own accountant says the job reaches after all its planned rounds
    may not exceed the agreement's ``max_epsilon`` / ``max_delta`` for this site: a job
    whose settings violate the agreement is refused before its first round, not half-way.
    Secure aggregation required by the agreement applies to training and to queries (a
    query must then run in secure mode, so only consortium totals reach the coordinator);
    DP required means a query must ask for DP answers. Sample-level DP for a task that
    declares no exact guarantee and no per-record bound (``dp_record_coupling = "none"``)
    is refused unless the agreement sets
    ``exact_guarantees_required = false`` (:func:`heuristic_dp_allowed`; the node applies
    it once the approved bundle's declaration is read, and audits the refusal like the
    others).

A QUERY (one pass of a federated analytics query) runs biofed's own analytics code, no
task bundle, so the ``bundle`` rule does not apply to it; nor does ``cohort``: a query's
cohort is whatever its filters select, and what protects a small one is the analytics'
disclosure control at the site (counts below ``min_cell`` suppressed, dominance, KM steps
only where ``min_at_risk`` are at risk) and the node's query log (the differencing rule),
not a minimum size of the whole dataset. A study job's spec must still be approved
(``dataset``).

:func:`control_reply` then checks what leaves: the reply's parameters have exactly the
instruction's names, shapes and dtypes, extras are only SCAFFOLD's control-variate delta (of
the same spec), and metrics not allowed by the agreement are dropped (and reported, to be
audited).

Security notes
--------------
Threat: a curious or compromised coordinator (or researcher) asking a site to run code,
touch data or release outputs that the site never agreed to. Every decision here uses only
local, site-controlled state and cryptographic checks (ECDSA agreement signatures against
the consortium CA, SHA-256 of the dataset file and of the bundle), re-done before every
round, and fails closed: anything unreadable or unverifiable is a refusal. The verified
bundle is returned (:class:`Clearance`) so that the node runs exactly the bytes it checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from biofed.core import (
    SCAFFOLD_CONTROL_DELTA,
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    PolicyViolation,
    Reply,
    check_id,
)
from biofed.governance._agreement import SignedAgreement, read_agreement, require_in_force
from biofed.governance._approvals import ApprovalStore
from biofed.governance._bundle import Bundle, check_digest, read_bundle
from biofed.governance._datasets import DatasetRegistry, RegisteredDataset
from biofed.governance._omop_source import omop_location

RULES = ("agreement", "dataset", "cohort", "bundle", "outputs", "privacy")
"""The rules :func:`check_instruction` applies, in order."""

#: The only extras key a reply may carry (SCAFFOLD's control-variate delta).
ALLOWED_REPLY_EXTRAS = frozenset({SCAFFOLD_CONTROL_DELTA})


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _refuse(rule: str, message: str) -> PolicyViolation:
    return PolicyViolation(f"{rule}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SitePolicy:
    """What a site's checks read: its own agreements, certificates, registry and approvals.

    Attributes
    ----------
    site:
        This site's name (its certificate's CN).
    agreements_dir:
        Folder of signed agreement files, one ``<agreement_id>.toml`` each.
    certificates_dir:
        Folder of the signers' certificates, ``<name>.pem`` each (copied by the operator).
    ca_pem:
        The consortium CA certificate (from the node's kit).
    registry:
        The site's dataset registry.
    approvals:
        The site's local bundle approvals.
    bundles_dir:
        Folder where bundle files ``<digest>.zip`` are placed.
    crl_pem:
        The CA's revocation list, if the site has one.
    clock:
        The current UTC time (injected for tests).
    """

    site: str
    agreements_dir: Path
    certificates_dir: Path
    ca_pem: bytes
    registry: DatasetRegistry
    approvals: ApprovalStore
    bundles_dir: Path
    crl_pem: bytes | None = None
    clock: Callable[[], dt.datetime] = field(default=_utc_now)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRequest:
    """What one instruction asks of the site, as the node sees it.

    Attributes
    ----------
    kind:
        TRAIN or EVALUATE.
    agreement:
        The agreement id the instruction names (config ``"agreement"``), or None.
    dataset:
        The dataset the instruction names (config ``"dataset"``).
    bundle:
        The bundle digest the instruction names (config ``"bundle"``), or None.
    dataset_path:
        The file the node would read for ``dataset`` (from ``node.toml``), or None if the
        node serves no such dataset (or serves an OMOP CDM).
    dataset_location:
        For an OMOP CDM the node serves, its location from ``node.toml`` (password-free).
    rows:
        Rows of the split the instruction uses (training rows, or the evaluated split's), or
        a function counting them (a study's cohort: extracted only once the spec passed the
        ``dataset`` rule; it raises PolicyViolation when the extraction fails).
    study:
        The digest of the study dataset spec the job compiles (``StudySpec.digest``), or
        None for a prepared table.
    query_kind:
        A QUERY's kind (``"count"``…), checked against the agreement's ``[analytics]
        allowed``.
    metrics:
        Metric names an EVALUATE instruction asks for (config ``"metrics"``, comma
        separated), or None when it names none.
    secure_aggregation, differential_privacy:
        Whether the job provides them.
    dp_planned:
        With DP: ``(ε, δ)`` this site reaches after all of the job's planned rounds, as the
        node's own accountant computes it from the job's settings and the site's records.
    dp_seeded:
        With DP: whether the job asks for seeded (predictable, simulation-only) noise.
    """

    kind: MessageKind
    agreement: str | None
    dataset: str
    bundle: str | None
    dataset_path: Path | None
    rows: int | Callable[[], int]
    dataset_location: str | None = None
    metrics: tuple[str, ...] | None = None
    secure_aggregation: bool = False
    differential_privacy: bool = False
    dp_planned: tuple[float, float] | None = None
    dp_seeded: bool = False
    study: str | None = None
    query_kind: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Clearance:
    """What :func:`check_instruction` verified: run exactly this, on exactly that.

    ``bundle`` is None only for a QUERY (biofed's own analytics run, no task bundle)."""

    agreement: SignedAgreement
    dataset: RegisteredDataset
    bundle: Bundle | None

    @property
    def allowed_metrics(self) -> frozenset[str]:
        """Metric names that may leave this site in a reply (every reply metric is a
        per-site value, so none unless the agreement allows per-site metrics)."""
        outputs = self.agreement.agreement.outputs
        return frozenset(outputs.metrics) if outputs.per_site_metrics else frozenset()


def _load_agreement(policy: SitePolicy, agreement_id: str | None) -> SignedAgreement:
    if not agreement_id:
        raise _refuse("agreement", "the job names no study agreement; this site requires one")
    try:
        check_id(agreement_id, what="agreement id")
    except ConfigurationError as exc:
        raise _refuse("agreement", str(exc)) from None
    file = policy.agreements_dir / f"{agreement_id}.toml"
    if not file.is_file():
        raise _refuse("agreement", f"this site holds no study agreement {agreement_id!r}")
    try:
        signed = read_agreement(file)
    except ConfigurationError as exc:
        raise _refuse("agreement", f"cannot read agreement {agreement_id!r}: {exc}") from None
    if signed.agreement.agreement_id != agreement_id:
        raise _refuse(
            "agreement",
            f"{file.name} holds agreement {signed.agreement.agreement_id!r}, not {agreement_id!r}",
        )
    return signed


def _certificates(policy: SitePolicy, signed: SignedAgreement) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for party in signed.agreement.signers:
        file = policy.certificates_dir / f"{party.name}.pem"
        try:
            out[party.name] = file.read_bytes()
        except OSError:
            continue  # verify() names the signer with no certificate
    return out


def _check_agreement(policy: SitePolicy, request: PolicyRequest) -> SignedAgreement:
    signed = _load_agreement(policy, request.agreement)
    party = signed.agreement.signer(policy.site)
    if party is None or party.role != "site":
        raise _refuse(
            "agreement",
            f"{policy.site!r} is not a site party to agreement {signed.agreement.agreement_id!r}",
        )
    try:
        require_in_force(
            signed,
            _certificates(policy, signed),
            policy.ca_pem,
            party=policy.site,
            now=policy.clock(),
            crl_pem=policy.crl_pem,
        )
    except BiofedError as exc:
        raise _refuse("agreement", str(exc)) from None
    return signed


def _check_dataset(
    policy: SitePolicy, request: PolicyRequest, signed: SignedAgreement
) -> RegisteredDataset:
    agreement = signed.agreement
    in_scope = agreement.datasets.get(policy.site)
    if request.dataset != in_scope:
        raise _refuse(
            "dataset",
            f"the job names dataset {request.dataset!r}, but agreement "
            f"{agreement.agreement_id!r} puts only {in_scope!r} of {policy.site!r} in scope",
        )
    if request.study is not None and request.study not in agreement.approved_studies:
        raise _refuse(
            "dataset",
            f"the job's study spec {request.study[:16]}… is not among agreement "
            f"{agreement.agreement_id!r}'s approved_studies",
        )
    try:
        entry = policy.registry.require(request.dataset)
    except (PolicyViolation, ConfigurationError) as exc:
        raise _refuse("dataset", str(exc)) from None
    if entry.kind == "omop":
        _check_omop_location(request, entry)
    else:
        if request.dataset_path is None:
            raise _refuse("dataset", f"this node serves no dataset {request.dataset!r}")
        if request.dataset_path.resolve() != Path(entry.path):
            raise _refuse(
                "dataset",
                f"dataset {request.dataset!r}: the node reads {request.dataset_path}, which is "
                f"not the registered file {entry.path}",
            )
    _check_quality(entry)
    return entry


def _check_omop_location(request: PolicyRequest, entry: RegisteredDataset) -> None:
    if request.dataset_location is None:
        raise _refuse("dataset", f"this node serves no OMOP CDM {request.dataset!r}")
    try:
        served = omop_location(request.dataset_location)
    except ConfigurationError as exc:
        raise _refuse("dataset", f"dataset {request.dataset!r}: {exc}") from None
    if served != entry.path:
        raise _refuse(
            "dataset",
            f"dataset {request.dataset!r}: the node reads the CDM at {served}, which is not "
            f"the registered CDM {entry.path}",
        )


def _check_quality(entry: RegisteredDataset) -> None:
    """Refuse a dataset whose last quality check failed a fatal check (or was run on other
    data than the registered one). Only check keys go into the reason: it leaves the site."""
    record = entry.quality
    if record is None:
        return
    if record.fingerprint != entry.sha256:
        raise _refuse(
            "dataset",
            f"dataset {entry.name!r}: its last quality check ran on other data; run "
            f"`biofed node dataset check {entry.name}` again",
        )
    failed = [c.key for c in record.report.fatal_failures]
    if failed:
        raise _refuse(
            "dataset",
            f"dataset {entry.name!r} failed fatal data-quality check(s) {', '.join(failed)}; "
            f"fix the data, then run `biofed node dataset check {entry.name}`",
        )


def _check_cohort(
    request: PolicyRequest, signed: SignedAgreement, entry: RegisteredDataset
) -> None:
    minimum = max(signed.agreement.min_cohort, entry.min_cohort)
    rows = request.rows() if callable(request.rows) else request.rows
    if rows < minimum:
        split = "evaluation" if request.kind is MessageKind.EVALUATE else "training"
        raise _refuse(
            "cohort",
            f"dataset {entry.name!r} has {rows} {split} rows, fewer than the minimum "
            f"cohort of {minimum}",
        )


def _check_bundle(policy: SitePolicy, request: PolicyRequest, signed: SignedAgreement) -> Bundle:
    agreement = signed.agreement
    if not request.bundle:
        raise _refuse(
            "bundle",
            "the job names no task bundle; this site runs only bundles approved under the "
            "agreement",
        )
    try:
        digest = check_digest(request.bundle)
    except ConfigurationError as exc:
        raise _refuse("bundle", str(exc)) from None
    if digest not in agreement.approved_bundles:
        raise _refuse(
            "bundle",
            f"bundle {digest[:16]}… is not approved in agreement {agreement.agreement_id!r}",
        )
    try:
        approved = policy.approvals.is_approved(digest)
    except ConfigurationError as exc:
        raise _refuse("bundle", str(exc)) from None
    if not approved:
        raise _refuse("bundle", f"bundle {digest[:16]}… is not approved by this site's operator")
    file = policy.bundles_dir / f"{digest}.zip"
    if not file.is_file():
        raise _refuse("bundle", f"bundle {digest[:16]}… is not at this site ({file.name})")
    try:
        return read_bundle(file, expected_digest=digest)
    except BiofedError as exc:
        raise _refuse("bundle", f"bundle {digest[:16]}… refused: {exc}") from None


def _check_outputs(request: PolicyRequest, signed: SignedAgreement) -> None:
    agreement = signed.agreement
    if request.kind is MessageKind.QUERY:
        allowed_kinds = agreement.analytics.allowed
        if request.query_kind not in allowed_kinds:
            raise _refuse(
                "outputs",
                f"agreement {agreement.agreement_id!r} does not allow "
                f"{str(request.query_kind)[:40]} queries ([analytics] allowed: "
                f"{', '.join(allowed_kinds) or 'none'})",
            )
        return
    if request.kind is not MessageKind.EVALUATE:
        return
    if not agreement.outputs.per_site_metrics:
        raise _refuse(
            "outputs",
            f"agreement {agreement.agreement_id!r} does not allow per-site metrics, and an "
            "evaluation reply is one",
        )
    allowed = agreement.outputs.metrics
    refused = sorted(set(request.metrics or ()) - set(allowed))
    if refused:
        raise _refuse(
            "outputs",
            f"metric(s) {', '.join(refused)} are not allowed by agreement "
            f"{agreement.agreement_id!r} (allowed: {', '.join(allowed) or 'none'})",
        )


def _check_privacy(request: PolicyRequest, signed: SignedAgreement, site: str) -> None:
    privacy = signed.agreement.privacy
    if (
        privacy.secure_aggregation_required
        and request.kind in (MessageKind.TRAIN, MessageKind.QUERY)
        and not request.secure_aggregation
    ):
        raise _refuse(
            "privacy",
            "this agreement requires secure aggregation, which this job does not provide",
        )
    if privacy.dp_required and not request.differential_privacy:
        raise _refuse(
            "privacy",
            "this agreement requires differential privacy, which this job does not provide",
        )
    if request.differential_privacy and request.dp_seeded:
        raise _refuse(
            "privacy",
            "the job asks for seeded DP noise, which anyone knowing the run seed can predict "
            "(simulation only); this site refuses it",
        )
    if not privacy.dp_required or request.kind is not MessageKind.TRAIN:
        return
    planned = request.dp_planned
    if planned is None:
        raise _refuse("privacy", "the job's DP settings give no planned (ε, δ) for this site")
    max_eps, max_delta = privacy.max_epsilon.get(site), privacy.max_delta.get(site)
    if max_eps is not None and planned[0] > max_eps:
        raise _refuse(
            "privacy",
            f"the job's DP settings would take this site to ε={planned[0]:.4g} over its "
            f"planned rounds, above the agreement's ε={max_eps:.4g} for this site",
        )
    if max_delta is not None and planned[1] > max_delta:
        raise _refuse(
            "privacy",
            f"the job's δ={planned[1]:.3g} is above the agreement's δ={max_delta:.3g} for "
            "this site",
        )


def heuristic_dp_allowed(clearance: Clearance) -> bool:
    """Whether the cleared job's agreement accepts ε figures that are no guarantee
    (``privacy.exact_guarantees_required = false``; true, the default, refuses them).

    Privacy notes
    -------------
    Threat: a site that debits and reports a figure that bounds nothing as if it were a
    guarantee. The default is strict; only every party's signature on an agreement that
    says otherwise lets such a task run, and its figures are then labelled ``"heuristic"``.
    """
    return not clearance.agreement.agreement.privacy.exact_guarantees_required


def check_instruction(policy: SitePolicy, request: PolicyRequest) -> Clearance:
    """Decide whether one instruction may run at this site.

    Parameters
    ----------
    policy:
        The site's own governance state.
    request:
        What the instruction asks.

    Returns
    -------
    Clearance
        The verified agreement, dataset registration and bundle (run exactly this bundle;
        none for a QUERY).

    Raises
    ------
    PolicyViolation
        ``"<rule>: why"`` for the first rule (in :data:`RULES` order) that fails.

    Security notes
    --------------
    See the module docstring: the site checks everything against state it holds and signed
    itself, before every round, and fails closed.
    """
    signed = _check_agreement(policy, request)
    entry = _check_dataset(policy, request, signed)
    bundle = None
    if request.kind is not MessageKind.QUERY:  # a query runs no bundle; see the module notes
        _check_cohort(request, signed, entry)
        bundle = _check_bundle(policy, request, signed)
    _check_outputs(request, signed)
    _check_privacy(request, signed, policy.site)
    return Clearance(agreement=signed, dataset=entry, bundle=bundle)


def requested_metrics(config: Mapping[str, object]) -> tuple[str, ...] | None:
    """The metric names an instruction's config asks for (``metrics = "a,b"``), or None."""
    raw = config.get("metrics")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _refuse("outputs", f"config 'metrics' must be comma-separated names, got {raw!r}")
    return tuple(sorted({name.strip() for name in raw.split(",") if name.strip()}))


def control_reply(
    reply: Reply, instruction: Instruction, clearance: Clearance
) -> tuple[Reply, tuple[str, ...]]:
    """Check what a successful reply would release; drop metrics that may not leave.

    Returns
    -------
    tuple[Reply, tuple[str, ...]]
        The reply to send (metrics filtered to :attr:`Clearance.allowed_metrics`) and the
        names that were dropped, sorted.

    Raises
    ------
    PolicyViolation
        ``"outputs: why"`` if parameters differ from the instruction's spec (names, shapes,
        dtypes), an EVALUATE reply carries parameters, or extras other than SCAFFOLD's delta
        (or of another spec) are present: nothing of such a reply may leave.

    Security notes
    --------------
    Threat: task code smuggling data out in extra tensors, extra parameter names, odd shapes
    or extra metric names. Only the model's declared tensors and the agreement's metric
    names leave the site.
    """
    spec = instruction.parameters.spec
    if instruction.kind is MessageKind.TRAIN:
        if reply.parameters is None or reply.parameters.spec != spec:
            raise _refuse("outputs", "the reply's parameters do not match the model's spec")
    elif reply.parameters is not None:
        raise _refuse("outputs", "an evaluation reply may not carry parameters")
    extra_keys = sorted(set(reply.extras) - ALLOWED_REPLY_EXTRAS)
    if extra_keys:
        raise _refuse("outputs", f"the reply carries extras {extra_keys} that may not leave")
    for key, value in reply.extras.items():
        if value.spec != spec:
            raise _refuse("outputs", f"the reply's extras[{key!r}] do not match the model's spec")
    allowed = clearance.allowed_metrics
    dropped = tuple(sorted(name for name in reply.metrics if name not in allowed))
    if dropped:
        kept = {k: v for k, v in reply.metrics.items() if k in allowed}
        reply = replace(reply, metrics=kept)
    return reply, dropped

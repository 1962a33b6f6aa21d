"""The keys of a study agreement file, declared once: the parser (``_parse``, ``_sign``)
refuses every key not listed here, and the reference page (``docs/reference/agreement.md``)
is rendered from the same tables, so the page cannot disagree with the parser."""

from __future__ import annotations

from biofed.core.schema import ConfigKey, ConfigTable, render_tables
from biofed.governance._agreement._incentives import (
    INCENTIVE_ACCESS,
    INCENTIVE_KEYS,
    INCENTIVE_MEASURES,
    INCENTIVE_REWARDS,
)
from biofed.governance._agreement._model import ANALYTICS_RULE_KEYS, FORMAT, PARTY_ROLES

_K = ConfigKey


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f'`"{v}"`' for v in values)


_SHA256 = "list of SHA-256 hex digests"

TOP = ConfigTable(
    name="",
    doc="The agreement's own keys and its tables.",
    keys=(
        _K(name="format", value=f'`"{FORMAT}"`', required=True, doc="The file format."),
        _K(name="agreement_id", value="id", required=True, doc="The agreement's name."),
        _K(name="title", value="one line of text", required=True, doc="What the study is."),
        _K(name="consortium", value="id", required=True, doc="The consortium it runs in."),
        _K(
            name="expires",
            value="date `YYYY-MM-DD`",
            required=True,
            doc="The last day (UTC) on which the agreement is in force.",
        ),
        _K(
            name="min_cohort",
            value="integer",
            default="10",
            doc="The smallest cohort a site may contribute from.",
        ),
        _K(name="purpose", value="text", required=True, doc="Why the study is done."),
        _K(
            name="legal_basis",
            value="text",
            required=True,
            doc='The legal basis of the processing (e.g. `"GDPR Art. 9(2)(j)"`).',
        ),
        _K(
            name="approved_bundles",
            value=_SHA256,
            required=True,
            doc="Digests of the task bundles that may run (`biofed task pack` prints one; "
            "`agreement draft --bundle`). May be empty for built-in tasks.",
        ),
        _K(
            name="approved_studies",
            value=_SHA256,
            default="[]",
            doc="Digests of the study dataset specs a job may compile against the sites' "
            "data (`StudySpec.digest`, see `biofed.data`); a job with another spec, or with "
            "any spec when the list is empty, is refused.",
        ),
        _K(
            name="coordinator",
            value="table",
            required=True,
            doc="The coordinator, who signs too (`[coordinator]` below).",
        ),
        _K(
            name="parties",
            value="array of tables",
            required=True,
            doc="Sites, researchers and admins who sign (`[[parties]]` below).",
        ),
        _K(
            name="datasets",
            value="table of site = dataset name",
            required=True,
            doc="The dataset of each site in scope: one entry for every site party, and no other.",
        ),
        _K(
            name="outputs",
            value="table",
            required=True,
            doc="What may leave the sites (`[outputs]` below).",
        ),
        _K(
            name="privacy",
            value="table",
            required=True,
            doc="The privacy every job must use (`[privacy]` below).",
        ),
        _K(
            name="analytics",
            value="table",
            default="{}",
            doc="Federated queries the sites answer (`[analytics]` below); none by default.",
        ),
        _K(
            name="incentives",
            value="table",
            doc="Rewards and access from contributions (`[incentives]` below).",
        ),
    ),
)

COORDINATOR = ConfigTable(
    name="coordinator",
    doc="The coordinator, named by its certificate.",
    keys=(
        _K(name="name", value="id", required=True, doc="Its certificate's CN."),
        _K(
            name="fingerprint",
            value="SHA-256 hex digest",
            required=True,
            doc="Of its certificate (DER): only a signature verified with that very "
            "certificate counts.",
        ),
    ),
)

PARTIES = ConfigTable(
    name="parties",
    array=True,
    doc="One table per signatory.",
    keys=(
        _K(name="name", value="id", required=True, doc="The party's certificate CN."),
        _K(name="role", value=f"one of {_listed(PARTY_ROLES)}", required=True, doc="Its role."),
        _K(
            name="fingerprint",
            value="SHA-256 hex digest",
            required=True,
            doc="Of its certificate (DER).",
        ),
    ),
)

OUTPUTS = ConfigTable(
    name="outputs",
    doc="What may leave the sites.",
    keys=(
        _K(
            name="final_model",
            value="boolean",
            required=True,
            doc="Whether the final model may be released.",
        ),
        _K(
            name="metrics",
            value="list of metric names",
            required=True,
            doc="The aggregate metrics that may be released.",
        ),
        _K(
            name="per_site_metrics",
            value="boolean",
            required=True,
            doc="Whether each site's own metrics may be released.",
        ),
    ),
)

PRIVACY = ConfigTable(
    name="privacy",
    doc="The privacy protections every job under the agreement must use.",
    keys=(
        _K(
            name="secure_aggregation_required",
            value="boolean",
            required=True,
            doc="Jobs must use SecAgg+ secure aggregation.",
        ),
        _K(name="dp_required", value="boolean", required=True, doc="Jobs must use DP."),
        _K(
            name="max_epsilon",
            value="table of site = number",
            default="{}",
            doc="The most ε each site's dataset may spend under the agreement; required for "
            "every site when `dp_required`, empty otherwise.",
        ),
        _K(
            name="max_delta",
            value="table of site = number",
            default="{}",
            doc="The most δ, likewise.",
        ),
        _K(
            name="exact_guarantees_required",
            value="boolean",
            default="true",
            doc="Every ε must be a guarantee: sample-level DP only for tasks whose per-record "
            "coupling is exact or bounded. False lets other tasks run, every figure "
            'labelled `"heuristic"`.',
        ),
    ),
)

_RULE_DOCS = {
    "min_cell": "Smallest count a released cell may hold.",
    "dominance": "Largest share of a sum one record may make up, in (0, 1].",
    "min_at_risk": "Kaplan–Meier steps only where this many patients are at risk.",
    "min_difference": "Refuse cohorts this close to an answered one (0: off).",
    "min_sites": "Fewest sites a regression's answer may rest on.",
    "records_per_parameter": "Fewest records per parameter for a site's regression answer.",
}

ANALYTICS = ConfigTable(
    name="analytics",
    doc="The federated queries the sites answer and the study's disclosure thresholds; "
    "each site answers under the stricter of these and its `node.toml`'s `[analytics]`, key "
    "by key (defaults: the node's).",
    keys=(
        _K(
            name="allowed",
            value="list of query kinds",
            default="[]",
            doc='Query kinds the sites answer (`"count"`, `"describe"`, `"km"`, `"cox"`…); '
            "empty: none.",
        ),
        *(
            _K(
                name=key,
                value="number in (0, 1]" if key == "dominance" else "integer",
                doc=_RULE_DOCS[key],
            )
            for key in ANALYTICS_RULE_KEYS
        ),
    ),
)

_INCENTIVE_DOCS = {
    "measure": (
        f"one of {_listed(INCENTIVE_MEASURES)}",
        "The contribution measure every round of the run's ledger must use.",
    ),
    "reward": (
        f"one of {_listed(INCENTIVE_REWARDS)}",
        "Reward shares proportional to each site's accumulated positive value, or equal.",
    ),
    "min_share": (
        "number in [0, 1]",
        "A site whose share is below it gets the access `below_min` names.",
    ),
    "below_min": (
        f"one of {_listed(INCENTIVE_ACCESS)}",
        "The access to the final model of a site below `min_share` or flagged a free-rider.",
    ),
    "delay_days": ("integer", 'Required (≥ 1) with `below_min = "delayed"`, else 0.'),
    "earlier_rounds": ("integer", 'Required (≥ 1) with `below_min = "earlier_round"`, else 0.'),
    "free_rider_share": (
        "number in [0, 1]",
        "A site whose share is at most this, or that the measure marked a null player, is flagged.",
    ),
    "secure_mechanism": (
        "string",
        "None is implemented: any value is refused, and contributions are refused under "
        "secure aggregation.",
    ),
}
_INCENTIVE_DEFAULTS = {
    "reward": '"proportional"',
    "min_share": "0.0",
    "below_min": '"full"',
    "delay_days": "0",
    "earlier_rounds": "0",
    "free_rider_share": "0.0",
}

INCENTIVES = ConfigTable(
    name="incentives",
    doc="How contributions turn into rewards and access to the final model (optional; "
    "refused together with `[privacy] secure_aggregation_required = true`).",
    keys=tuple(
        _K(
            name=key,
            value=_INCENTIVE_DOCS[key][0],
            doc=_INCENTIVE_DOCS[key][1],
            default=_INCENTIVE_DEFAULTS.get(key),
            required=key == "measure",
        )
        for key in INCENTIVE_KEYS
    ),
)

SIGNATURES = ConfigTable(
    name="signatures.NAME",
    doc="Written by `biofed agreement sign`, one table per signer; the signatures cover the "
    "canonical JSON of the agreement's values, not the TOML text.",
    keys=(
        _K(
            name="fingerprint",
            value="SHA-256 hex digest",
            required=True,
            doc="Of the signer's certificate.",
        ),
        _K(
            name="digest",
            value="SHA-256 hex digest",
            required=True,
            doc="Of the canonical bytes signed; informational (tells an agreement changed "
            "after signing from a corrupt signature).",
        ),
        _K(
            name="signed_at",
            value="date-time (UTC)",
            required=True,
            doc="When it was made; informational, not covered by the signature.",
        ),
        _K(
            name="signature",
            value="Base64 text",
            required=True,
            doc="The DER-encoded ECDSA P-256 / SHA-256 signature.",
        ),
    ),
)

#: Every table of an agreement file, in the order of the reference page.
AGREEMENT_TABLES = (TOP, COORDINATOR, PARTIES, OUTPUTS, PRIVACY, ANALYTICS, INCENTIVES, SIGNATURES)

_INTRO = """\
<!-- Generated by scripts/gen_references.py from biofed.governance's agreement schema.
     Do not edit by hand: change the schema and run the script. -->

# Study agreement reference

A study agreement is one TOML file that every party signs and every governed node enforces
(`biofed agreement draft`, `sign`, `verify`). The parser refuses any key not listed here —
an unknown key would not be covered by the signatures — and every value is checked when the
file is read. A signed file holds the agreement's tables and one `[signatures.NAME]` table
per signer.
"""


def render_agreement_reference() -> str:
    """The Markdown reference page of the agreement file (``docs/reference/agreement.md``)."""
    return (_INTRO + "\n" + render_tables(AGREEMENT_TABLES)).rstrip("\n") + "\n"

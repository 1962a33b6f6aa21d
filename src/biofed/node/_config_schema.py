"""The keys of ``node.toml``, declared once: the parser (:mod:`biofed.node._config`) refuses
every key not listed here, and the reference page (``docs/reference/node-toml.md``) is
rendered from the same tables, so the page cannot list a key the node refuses or miss one
it reads."""

from __future__ import annotations

from biofed.analytics import RULE_KEYS, DisclosureRules
from biofed.core.schema import ConfigKey, ConfigTable, render_tables

_K = ConfigKey

NODE = ConfigTable(
    name="node",
    doc="The node itself.",
    keys=(
        _K(
            name="task_dirs",
            value="list of folder paths",
            default="[]",
            doc="Folders of task modules this site trusts: a task an instruction names that "
            "is not built in is loaded from `<dir>/<name>.py`, which defines "
            "`make_task(**options)`. Signed, approved bundles need no entry here.",
        ),
    ),
)

_DESCRIPTION = _K(
    name="description",
    value="string",
    doc="Free text for the site's operator; the node does not read it.",
)
_FATAL_CHECKS = _K(
    name="fatal_checks",
    value="list of check names",
    default="[]",
    doc="Data-quality checks the site treats as fatal besides the defaults (a check name, "
    'or a check and its key such as `"isRequired:person.year_of_birth"`); '
    "`biofed node dataset check` applies them.",
)

DATASET_FILE = ConfigTable(
    name="datasets.NAME",
    variant="a file",
    doc="A dataset held in a file (CSV or Parquet). `NAME` is the name jobs use.",
    keys=(
        _K(name="path", value="path string", required=True, doc="The data file."),
        _K(
            name="format",
            value='`"csv"` or `"parquet"`',
            doc="The file's format; by default told from its suffix (`.csv`, `.parquet`, `.pq`).",
        ),
        _K(
            name="targets",
            value="table of target = column",
            default="{}",
            doc="The task's targets and the columns holding them, e.g. "
            '`{ event = "event", time = "time" }`.',
        ),
        _K(
            name="split_column",
            value="column name",
            doc="A column marking each row `train` or `test`; without it every row trains.",
        ),
        _K(
            name="id_column",
            value="column name",
            doc="A column of record ids, kept out of the features.",
        ),
        _K(
            name="exclude",
            value="list of column names",
            default="[]",
            doc="Columns kept out of the features.",
        ),
        _DESCRIPTION,
        _FATAL_CHECKS,
    ),
)

DATASET_OMOP = ConfigTable(
    name="datasets.NAME",
    variant="an OMOP CDM",
    doc="A dataset held in an OMOP CDM (a table with `omop` instead of `path`). Studies "
    "read it through their study spec; it is never loaded whole.",
    keys=(
        _K(
            name="omop",
            value="DuckDB file or database URL",
            required=True,
            doc="The CDM: a DuckDB file (relative to `node.toml`), `duckdb:///FILE`, or a "
            "database URL without a password.",
        ),
        _K(
            name="password_env",
            value="environment variable name",
            doc="The variable holding the database password.",
        ),
        _K(name="schema", value="string", doc="The schema of the CDM tables."),
        _DESCRIPTION,
        _FATAL_CHECKS,
    ),
)

GOVERNANCE = ConfigTable(
    name="governance",
    doc="With this table the node enforces its site's governance itself: agreement in force "
    "and signed by the site, dataset registered and unchanged, bundle approved here, "
    "outputs allowed; and it keeps a signed, hash-chained audit log.",
    keys=(
        _K(
            name="agreements_dir",
            value="folder path",
            required=True,
            doc="Signed study agreements, `<agreement_id>.toml` each.",
        ),
        _K(
            name="certificates_dir",
            value="folder path",
            required=True,
            doc="The signers' certificates, `<party name>.pem` each (the CA is the kit's "
            "`ca.pem`).",
        ),
        _K(
            name="approvals",
            value="file path",
            required=True,
            doc="The site's bundle approvals (`biofed node approve`).",
        ),
        _K(
            name="registry",
            value="file path",
            required=True,
            doc="The site's dataset registry (`biofed node dataset add`).",
        ),
        _K(
            name="bundles_dir",
            value="folder path",
            required=True,
            doc="Task bundles, `<digest>.zip` each.",
        ),
        _K(
            name="audit",
            value="file path",
            default='"<kit folder>/audit.jsonl"',
            doc="The node's audit log.",
        ),
    ),
)

PRIVACY = ConfigTable(
    name="privacy",
    doc="The site's privacy-budget ledger and its caps.",
    keys=(
        _K(
            name="ledger",
            value="file path",
            default='"<kit folder>/privacy.db"',
            doc="The privacy-budget ledger (SQLite).",
        ),
        _K(
            name="allow_heuristic",
            value="boolean",
            default="false",
            doc="Development nodes only (no `[governance]`): run sample-level DP for tasks "
            'that declare no per-record guarantee (`dp_record_coupling = "none"`), every ε '
            'labelled `"heuristic"`. A governed node ignores it (the agreement\'s '
            "`exact_guarantees_required` decides).",
        ),
        _K(
            name="caps",
            value="table of `[privacy.caps.DATASET]`",
            default="{}",
            doc="The caps per dataset, below.",
        ),
    ),
)

PRIVACY_CAP = ConfigTable(
    name="privacy.caps.DATASET",
    doc="The total (ε, δ) the dataset may spend across all jobs. Applied when the node "
    "starts, and only downwards: a missing cap is set, a lower one lowers the ledger's, a "
    "higher one is not applied (`biofed node budget-cap DATASET … --raise` raises a cap, "
    "audited).",
    keys=(
        _K(name="epsilon", value="number", required=True, doc="The cap on ε."),
        _K(name="delta", value="number", required=True, doc="The cap on δ."),
    ),
)

SANDBOX = ConfigTable(
    name="sandbox",
    doc="Where the kernel lacks one of the bundle worker's confinement mechanisms, the node "
    "refuses to run bundle code unless the operator opts out here (audited at every start).",
    keys=(
        _K(
            name="allow_weaker",
            value='list of `"landlock"`, `"seccomp"`',
            default="[]",
            doc="Mechanisms the operator knowingly runs bundles without.",
        ),
    ),
)

#: What each disclosure threshold means (a key of ``RULE_KEYS`` missing here fails at import).
RULE_DOCS = {
    "min_cell": "Smallest count a released cell, cohort or category level may hold; smaller "
    "non-zero cells are suppressed (with complementary suppression).",
    "dominance": "Largest share of a cell's sum of absolute values one record may make up, "
    "in (0, 1]; a dominated sum is suppressed. 1.0 switches the rule off.",
    "min_at_risk": "Kaplan–Meier steps are released only where at least this many patients "
    "are at risk; later ones are coarsened into one tail block.",
    "min_difference": "A query whose cohort differs from an earlier answered one's on the "
    "same dataset by 1 to `min_difference - 1` records is refused (0: off).",
    "min_sites": "Fewest sites a regression's combined answer may rest on.",
    "records_per_parameter": "A site answers a regression only if it holds at least this "
    "many records per parameter.",
}

_RULE_DEFAULTS = DisclosureRules()

ANALYTICS = ConfigTable(
    name="analytics",
    doc="The site's own disclosure-control thresholds for federated queries. Under "
    "governance the agreement's `[analytics]` thresholds apply too: the stricter wins, key "
    "by key.",
    keys=tuple(
        _K(
            name=key,
            value="number in (0, 1]" if key == "dominance" else "integer",
            default=repr(getattr(_RULE_DEFAULTS, key)),
            doc=RULE_DOCS[key],
        )
        for key in RULE_KEYS
    ),
)

#: Every table of ``node.toml``, in the order of the reference page.
NODE_TABLES = (
    NODE,
    DATASET_FILE,
    DATASET_OMOP,
    GOVERNANCE,
    PRIVACY,
    PRIVACY_CAP,
    SANDBOX,
    ANALYTICS,
)

#: The top-level tables ``node.toml`` may hold.
NODE_SECTIONS = ("node", "datasets", "governance", "privacy", "sandbox", "analytics")

_NODE_INTRO = """\
<!-- Generated by scripts/gen_references.py from biofed.node's node.toml schema.
     Do not edit by hand: change the schema and run the script. -->

# node.toml reference

A site's `node.toml` names the datasets its node may use and, optionally, its governance,
privacy caps, sandbox opt-outs and disclosure thresholds
(`biofed node start --kit KIT --config node.toml`). The node reads it when it starts and
refuses a table or key not listed here, with one line naming it. Relative paths are relative
to the folder of `node.toml`. A minimal file (`examples/node.toml`):

```toml
[datasets.tcga-brca]
path = "data/tcga-brca.csv"
format = "csv"
split_column = "split"
targets = { event = "event", time = "time" }

[privacy.caps.tcga-brca]
epsilon = 20.0
delta = 1e-4
```

A `[datasets.NAME]` table describes either a file (with `path`) or an OMOP CDM (with
`omop`); the two take different keys.
"""


def render_node_reference() -> str:
    """The Markdown reference page of ``node.toml`` (``docs/reference/node-toml.md``)."""
    body = render_tables(NODE_TABLES)
    return (_NODE_INTRO + "\n" + body).rstrip("\n") + "\n"

"""A node's ``node.toml``: its datasets and, optionally, its governance settings.

With a ``[governance]`` table the node enforces its site's governance itself (see
:mod:`biofed.node._app`)::

    [governance]
    agreements_dir = "agreements"     # <agreement_id>.toml, signed
    certificates_dir = "certificates" # <party name>.pem of every signer
    approvals = "approvals.json"      # the site's local bundle approvals
    registry = "datasets.json"        # the site's dataset registry
    bundles_dir = "bundles"           # <digest>.zip
    audit = "audit.jsonl"             # optional; default <kit folder>/audit.jsonl

A ``[privacy]`` table sets the site's privacy-budget caps per dataset and, optionally,
where the ledger lives. Caps are applied to the ledger when the node starts, and only
downwards: a missing cap is set, a lower one lowers the ledger's, a higher one is not
applied (``biofed node budget-cap DATASET … --raise`` raises a cap, audited), so a cap the
operator lowered from the command line survives a restart with a stale ``node.toml``::

    [privacy]
    ledger = "privacy.db"             # optional; default <kit folder>/privacy.db
    [privacy.caps.tcga-brca]          # total (ε, δ) this dataset may spend across all jobs
    epsilon = 10.0
    delta = 1e-5

A ``[sandbox]`` table lets the operator run approved bundles on a host whose kernel lacks
one of the worker's confinement mechanisms (see :mod:`biofed.node._confine`); without it
the node refuses to run bundle code there. The opt-out is audited at every node start::

    [sandbox]
    allow_weaker = ["landlock"]       # or "seccomp"; default: none

A dataset is a file (``path = "…"``) or an OMOP CDM (``omop = "…"``: a DuckDB file or a
database URL without a password; ``password_env`` names the environment variable holding
the password, ``schema`` the schema of the CDM tables). ``fatal_checks`` lists data-quality
checks (types or keys, see :func:`~biofed.data.run_quality_checks`) the site treats as
fatal besides the defaults; ``biofed node dataset check`` applies them::

    [datasets.cdm]
    omop = "postgresql://biofed@db.hospital.example/cdm"
    password_env = "CDM_PASSWORD"
    schema = "cdm54"
    fatal_checks = ["plausibleDuringLife", "isRequired:person.gender_concept_id"]

An ``[analytics]`` table sets the site's own disclosure-control thresholds for federated
queries (:data:`biofed.analytics.RULE_KEYS`; the defaults of
:class:`~biofed.analytics.DisclosureRules` otherwise). Under governance the agreement's
``[analytics]`` thresholds apply too: the stricter wins, key by key::

    [analytics]
    min_cell = 10                     # smallest count released
    dominance = 0.5                   # largest share of a sum one record may make up
    min_at_risk = 10                  # Kaplan–Meier steps only where this many are at risk
    min_difference = 10               # refuse cohorts this close to an answered one

Relative paths are relative to ``node.toml``'s folder.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biofed.analytics import DisclosureRules
from biofed.core import ConfigurationError, DataError, check_id
from biofed.data import CHECK_NAMES, SiteData, load_site_file, load_table
from biofed.governance import check_omop_url
from biofed.node._config_schema import (
    DATASET_FILE,
    DATASET_OMOP,
    GOVERNANCE,
    NODE,
    NODE_SECTIONS,
    PRIVACY,
    PRIVACY_CAP,
    SANDBOX,
    render_node_reference,
)
from biofed.node._sandbox import check_weaker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# every key set below comes from the declared schema, which the reference page renders
_DATASET_KEYS = DATASET_FILE.names
_OMOP_KEYS = DATASET_OMOP.names
_GOVERNANCE_PATHS = tuple(k.name for k in GOVERNANCE.keys if k.required)
_GOVERNANCE_KEYS = GOVERNANCE.names


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSource:
    """Where one local dataset lives and how to read it: a file (``path``) or an OMOP CDM
    (``omop``, its location without a password; ``password_env`` names the variable
    holding the password)."""

    name: str
    path: Path | None = None
    format: str | None = None
    targets: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    split_column: str | None = None
    id_column: str | None = None
    exclude: tuple[str, ...] = ()
    omop: str | None = None
    password_env: str | None = None
    schema: str | None = None
    fatal_checks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.path is None) == (self.omop is None):
            raise ConfigurationError(f"dataset {self.name!r} needs exactly one of path or omop")

    @property
    def location(self) -> str:
        """The file's path, or the OMOP CDM's location."""
        return str(self.path) if self.path is not None else str(self.omop)

    def load(self) -> SiteData:
        """Read the file (train/test by ``split_column`` if given, else all for training).

        An OMOP CDM is not loaded whole: a study's spec is compiled against it
        (:func:`~biofed.data.extract`), so this raises DataError for one."""
        if self.path is None:
            raise DataError(
                f"dataset {self.name!r} is an OMOP CDM; studies read it through their spec"
            )
        fmt: Any = self.format
        if self.split_column:
            return load_site_file(
                self.path,
                target_columns=self.targets,
                split_column=self.split_column,
                id_column=self.id_column,
                exclude=self.exclude,
                format=fmt,
                name=self.name,
            )
        table = load_table(
            self.path,
            target_columns=self.targets,
            id_column=self.id_column,
            exclude=self.exclude,
            format=fmt,
            name=self.name,
        )
        return SiteData(train=table)


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceConfig:
    """``node.toml``'s ``[governance]`` table: where the site's governance state lives.

    Attributes
    ----------
    agreements_dir:
        Signed study agreements, ``<agreement_id>.toml`` each.
    certificates_dir:
        The signers' certificates, ``<name>.pem`` each (the CA is the kit's ``ca.pem``).
    approvals:
        The site's bundle approvals file (:class:`~biofed.governance.ApprovalStore`).
    registry:
        The site's dataset registry (``datasets.json``).
    bundles_dir:
        Task bundles, ``<digest>.zip`` each.
    audit:
        The node's audit log; None means ``<kit folder>/audit.jsonl``.
    """

    agreements_dir: Path
    certificates_dir: Path
    approvals: Path
    registry: Path
    bundles_dir: Path
    audit: Path | None = None

    @classmethod
    def from_table(cls, table: object, base: Path, where: str) -> GovernanceConfig:
        """Parse the table; relative paths are relative to ``base``."""
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: [governance] must be a table")
        bad = set(table) - _GOVERNANCE_KEYS
        if bad:
            raise ConfigurationError(
                f"{where}: unknown key(s) {sorted(bad)} in [governance]; "
                f"allowed: {sorted(_GOVERNANCE_KEYS)}"
            )
        missing = [k for k in _GOVERNANCE_PATHS if k not in table]
        if missing:
            raise ConfigurationError(f"{where}: [governance] needs {', '.join(missing)}")
        paths: dict[str, Path] = {}
        for key, value in table.items():
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{where}: [governance] {key} must be a path string")
            file = Path(value)
            paths[key] = file if file.is_absolute() else base / file
        return cls(**paths)


#: :attr:`PrivacyConfig.ledger` of a ledger kept in memory (a simulation's virtual sites).
MEMORY_LEDGER = Path(":memory:")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """``node.toml``'s ``[privacy]`` table: the ledger file and the site's caps.

    Attributes
    ----------
    ledger:
        The ledger file, or None for ``<kit folder>/privacy.db``; :data:`MEMORY_LEDGER`
        keeps it in memory (a simulation's virtual site only: a node that restarts forgets
        what it spent, so ``node.toml`` cannot ask for it — its ``":memory:"`` would name a
        file).
    caps:
        Dataset name → (ε, δ) the dataset may spend across all jobs.
    allow_heuristic:
        Development nodes only (no ``[governance]``): run sample-level DP for tasks that
        declare no per-record guarantee (``dp_record_coupling = "none"``), with every ε
        labelled ``"heuristic"``. False by default: such tasks are refused. A governed node
        ignores it: there the study agreement decides (``exact_guarantees_required``).
    """

    ledger: Path | None = None
    caps: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    allow_heuristic: bool = False

    @classmethod
    def from_table(cls, table: object, base: Path, where: str) -> PrivacyConfig:
        """Parse the table (relative paths against ``base``)."""
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: [privacy] must be a table")
        bad = set(table) - PRIVACY.names
        if bad:
            raise ConfigurationError(
                f"{where}: unknown key(s) {sorted(bad)} in [privacy]; allowed: "
                + ", ".join(sorted(PRIVACY.names))
            )
        allow_heuristic = table.get("allow_heuristic", False)
        if not isinstance(allow_heuristic, bool):
            raise ConfigurationError(f"{where}: [privacy] allow_heuristic must be true or false")
        ledger = None
        if "ledger" in table:
            if not isinstance(table["ledger"], str):
                raise ConfigurationError(f"{where}: [privacy] ledger must be a path string")
            file = Path(table["ledger"])
            ledger = file if file.is_absolute() else base / file
        caps: dict[str, tuple[float, float]] = {}
        raw = table.get("caps", {})
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where}: [privacy.caps] must be a table of datasets")
        for name, cap in raw.items():
            check_id(name, what="dataset name")
            if not isinstance(cap, dict) or set(cap) != PRIVACY_CAP.names:
                raise ConfigurationError(
                    f"{where}: [privacy.caps.{name}] needs exactly epsilon = … and delta = …"
                )
            values = [cap["epsilon"], cap["delta"]]
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                raise ConfigurationError(f"{where}: [privacy.caps.{name}] values must be numbers")
            caps[name] = (float(values[0]), float(values[1]))
        return cls(ledger=ledger, caps=MappingProxyType(caps), allow_heuristic=allow_heuristic)


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """``node.toml``'s ``[sandbox]`` table.

    Attributes
    ----------
    allow_weaker:
        Confinement mechanisms (``"landlock"``, ``"seccomp"``) the operator knowingly runs
        bundles without, where the kernel lacks them (audited at every node start).
    """

    allow_weaker: frozenset[str] = frozenset()

    @classmethod
    def from_table(cls, table: object, where: str) -> SandboxConfig:
        """Parse the table."""
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: [sandbox] must be a table")
        if set(table) - SANDBOX.names:
            raise ConfigurationError(
                f"{where}: unknown key(s) {sorted(set(table) - SANDBOX.names)} in "
                "[sandbox]; allowed: " + ", ".join(sorted(SANDBOX.names))
            )
        names = table.get("allow_weaker", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(
                f'{where}: [sandbox] allow_weaker must be a list of names, e.g. ["landlock"]'
            )
        return cls(allow_weaker=check_weaker(names, f"{where}: [sandbox] allow_weaker"))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """A node's ``node.toml``: its datasets, and folders of task modules it trusts.

    ``[node] task_dirs = ["tasks"]``: a task the instruction names that is not built in is
    loaded from ``<dir>/<name>.py``, which must define ``make_task(**options) -> Task``.
    Only folders the site's operator listed are searched (signed, approved task bundles
    that run in a sandboxed worker are the governance layer's).
    """

    datasets: Mapping[str, DatasetSource]
    task_dirs: tuple[Path, ...] = ()
    governance: GovernanceConfig | None = None
    privacy: PrivacyConfig | None = None
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    analytics: DisclosureRules | None = None

    @staticmethod
    def reference() -> str:
        """The Markdown reference of every ``node.toml`` key (``docs/reference/node-toml.md``),
        rendered from the schema the parser checks against."""
        return render_node_reference()

    @classmethod
    def from_toml(cls, path: str | Path) -> NodeConfig:
        """Parse ``node.toml``; relative dataset paths are relative to its folder."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"node config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
        unknown = set(data) - set(NODE_SECTIONS)
        if unknown:
            raise ConfigurationError(f"{path}: unknown section(s) {sorted(unknown)}")
        node = data.get("node") or {}
        if set(node) - NODE.names:
            raise ConfigurationError(
                f"{path}: unknown key(s) {sorted(set(node) - NODE.names)} in [node]"
            )
        task_dirs = tuple(
            d if d.is_absolute() else path.parent / d
            for d in (Path(str(x)) for x in node.get("task_dirs") or ())
        )
        sources: dict[str, DatasetSource] = {}
        for name, entry in (data.get("datasets") or {}).items():
            check_id(name, what="dataset name")
            if isinstance(entry, dict) and "omop" in entry:
                sources[name] = _omop_source(name, entry, path)
                continue
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigurationError(
                    f'{path}: [datasets.{name}] needs path = "…" (a file) or omop = "…" '
                    "(an OMOP CDM)"
                )
            bad = set(entry) - _DATASET_KEYS
            if bad:
                raise ConfigurationError(
                    f"{path}: unknown key(s) {sorted(bad)} in [datasets.{name}]; "
                    f"allowed: {sorted(_DATASET_KEYS)}"
                )
            file = Path(entry["path"])
            sources[name] = DatasetSource(
                name=name,
                path=file if file.is_absolute() else path.parent / file,
                format=entry.get("format"),
                targets=dict(entry.get("targets") or {}),
                split_column=entry.get("split_column"),
                id_column=entry.get("id_column"),
                exclude=tuple(entry.get("exclude") or ()),
                fatal_checks=_fatal_checks(entry, f"{path}: [datasets.{name}]"),
            )
        governance = (
            GovernanceConfig.from_table(data["governance"], path.parent, str(path))
            if "governance" in data
            else None
        )
        privacy = (
            PrivacyConfig.from_table(data["privacy"], path.parent, str(path))
            if "privacy" in data
            else None
        )
        sandbox = SandboxConfig.from_table(data.get("sandbox", {}), str(path))
        analytics = (
            DisclosureRules.from_mapping(data["analytics"], what=f"{path}: [analytics]")
            if "analytics" in data
            else None
        )
        return cls(
            datasets=MappingProxyType(sources),
            task_dirs=task_dirs,
            governance=governance,
            privacy=privacy,
            sandbox=sandbox,
            analytics=analytics,
        )


def _fatal_checks(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    raw = entry.get("fatal_checks", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigurationError(f"{where} fatal_checks must be a list of check names")
    for selector in raw:
        if selector.split(":", 1)[0] not in CHECK_NAMES:
            raise ConfigurationError(
                f"{where} fatal_checks: {selector!r} names no quality check (one of "
                f"{', '.join(CHECK_NAMES)}, or a key like 'isRequired:person.year_of_birth')"
            )
    return tuple(raw)


def _omop_source(name: str, entry: Mapping[str, Any], path: Path) -> DatasetSource:
    """``[datasets.NAME] omop = "…"``: a relative DuckDB path is relative to node.toml."""
    where = f"{path}: [datasets.{name}]"
    bad = set(entry) - _OMOP_KEYS
    if bad:
        raise ConfigurationError(
            f"{where}: unknown key(s) {sorted(bad)} for an OMOP CDM; allowed: {sorted(_OMOP_KEYS)}"
        )
    for key in ("omop", "password_env", "schema"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise ConfigurationError(f"{where} {key} must be a non-empty string")
    url = str(entry["omop"])
    if "://" not in url:
        file = Path(url).expanduser()
        url = str(file if file.is_absolute() else path.parent / file)
    elif url.startswith("duckdb:///"):
        file = Path(url[len("duckdb:///") :]).expanduser()
        url = str(file if file.is_absolute() else path.parent / file)
    try:
        location = check_omop_url(url, password_env=entry.get("password_env"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where} omop: {exc}") from None
    return DatasetSource(
        name=name,
        omop=location,
        password_env=entry.get("password_env"),
        schema=entry.get("schema"),
        fatal_checks=_fatal_checks(entry, where),
    )

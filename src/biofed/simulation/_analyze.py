"""Simulating a federated query: the coordinator's own loop over virtual sites that are real
site nodes.

:func:`analyze` asks every virtual site one :class:`~biofed.analytics.Query` through the
coordinator's :func:`~biofed.coordinator.analyze_over` — the function a deployed
coordinator's executor calls — over the in-memory transport. Each site is a
:class:`~biofed.node.NodeApp` holding its data in memory: it answers under its own
disclosure rules (``node_rules``, and the agreement's when one is rehearsed), keeps its
query log in memory (the differencing rule holds within the simulation), draws DP noise
from its CSPRNG and debits an in-memory ledger, and in secure mode takes part in SecAgg+
with a kit of a throwaway consortium (it signs its keys, checks its neighbours'). Nothing
a simulation does touches a real site's ledger, log or kit.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

from biofed.analytics import RULE_KEYS, DisclosureRules, Query, Result
from biofed.coordinator import AnalysisJob, QueryListener, analyze_over
from biofed.core import ConfigurationError
from biofed.data import FederatedDataset, SiteData, StudySpec
from biofed.node import NodeConfig
from biofed.secagg import SecureAggregationSettings
from biofed.simulation._backends import InProcessBackend
from biofed.simulation._job_governance import Rehearsal
from biofed.simulation._job_sites import site_recipes
from biofed.simulation._sites import SiteSource

#: The dataset name the virtual sites hold their data under (and the query's job names);
#: with an agreement, the dataset it gives the sites.
SIM_DATASET = "analysis"
#: Default secure settings of a simulated query: the analysis job's (±1e9 on a 1e-6 grid).
_SECURE = {"clip_range": 1e9, "quantisation_step": 1e-6, "max_weight": 1}


def _secure_settings(secure: bool | SecureAggregationSettings) -> SecureAggregationSettings | None:
    if isinstance(secure, SecureAggregationSettings):
        return secure
    if secure is True:
        return SecureAggregationSettings.from_table(_SECURE)
    if secure is False:
        return None
    raise ConfigurationError("secure must be True, False or SecureAggregationSettings")


def _node_configs(
    names: list[str], node_rules: DisclosureRules | Mapping[str, DisclosureRules] | None
) -> dict[str, NodeConfig]:
    if node_rules is None:
        return {}
    if isinstance(node_rules, DisclosureRules):
        return {n: NodeConfig(datasets={}, analytics=node_rules) for n in names}
    unknown = sorted(set(node_rules) - set(names))
    if unknown:
        raise ConfigurationError(f"node_rules names sites that are not there: {', '.join(unknown)}")
    out = {}
    for name, rules in node_rules.items():
        if not isinstance(rules, DisclosureRules):
            raise ConfigurationError(f"node_rules[{name!r}] must be DisclosureRules")
        out[name] = NodeConfig(datasets={}, analytics=rules)
    return out


def analyze(
    sites: FederatedDataset | Mapping[str, SiteSource],
    query: Query,
    *,
    secure: bool | SecureAggregationSettings = False,
    rules: DisclosureRules | None = None,
    node_rules: DisclosureRules | Mapping[str, DisclosureRules] | None = None,
    study: StudySpec | None = None,
    agreement: str | Path | None = None,
    seed: int = 0,
    min_replies: int | None = None,
    listener: QueryListener | None = None,
) -> Result:
    """Run ``query`` over one real site node per site and return its result.

    Parameters
    ----------
    sites:
        Site name → its data: a :class:`~biofed.data.SiteData` (a prepared table, whose
        features and targets are the query's columns), or with ``study`` a study source
        (an OMOP CDM's URL or DuckDB file, or a data file) the spec compiles at the site.
        A :class:`~biofed.data.FederatedDataset` gives its sites.
    query:
        The query.
    secure:
        Sum the sites' answers under SecAgg+ (True: the analysis job's defaults, a 1e-6
        grid over ±1e9; or the settings). Kinds that need each site's answer are refused.
    rules:
        The disclosure rules the coordinator states (default: the defaults). Each site still
        answers under its own (``node_rules``, default the defaults) whatever is asked.
    node_rules:
        Each site's own ``[analytics]`` thresholds: one for every site, or site → rules.
    study:
        The study spec the sites compile (their data must then be study sources).
    agreement:
        A study agreement file (signed or a draft) to rehearse: every site becomes a
        governed node enforcing it (its ``[analytics] allowed`` kinds and thresholds),
        re-signed by a throwaway consortium's kits.
    seed:
        Sent with every instruction (sites draw DP noise from their CSPRNG regardless).
    min_replies:
        Valid answers each pass needs (default: every site).
    listener:
        Told of every reply and event (passes, refusals).

    Raises
    ------
    AnalysisFailed
        When too few sites answered a pass (their reasons in the message).
    ConfigurationError
        For a query, rules or sites the simulation cannot run.
    """
    names = list(sites.sites if isinstance(sites, FederatedDataset) else sites)
    data: Mapping[str, SiteSource] = sites.sites if isinstance(sites, FederatedDataset) else sites
    if not names:
        raise ConfigurationError("analyze needs at least one site")
    if study is None and not all(isinstance(v, SiteData) for v in data.values()):
        raise ConfigurationError(
            "a site given as a path or URL is a study source: pass the study spec (study=)"
        )
    if study is not None and any(isinstance(v, SiteData) for v in data.values()):
        raise ConfigurationError(
            "with a study spec every site is a study source (an OMOP CDM or a data file)"
        )
    rehearsal = None if agreement is None else Rehearsal.load(agreement, None)
    dataset = SIM_DATASET if rehearsal is None else _agreed_dataset(rehearsal, names)
    settings = _secure_settings(secure)
    job = AnalysisJob(
        name="sim",
        dataset=dataset,
        query=query,
        rules=DisclosureRules() if rules is None else rules,
        min_nodes=len(names),
        min_replies=len(names) if min_replies is None else min_replies,
        round_timeout=120.0,
        agreement=None if rehearsal is None else rehearsal.agreement.agreement.agreement_id,
        secure_aggregation=settings,
        study=study,
    )
    agreed = None if rehearsal is None else _agreement_rules(rehearsal)
    with tempfile.TemporaryDirectory(prefix="biofed-analyze-") as scratch:
        recipes = site_recipes(
            dict(data),
            dataset,
            workdir=Path(scratch),
            needs_kits=settings is not None,
            node_configs=_node_configs(names, node_rules),
            rehearsal=rehearsal,
        )
        with InProcessBackend().transport(recipes) as transport:
            result, _ = analyze_over(
                transport,
                job.query,
                job.request_rules(agreed),
                run_id=f"sim-{uuid.uuid4().hex[:12]}",
                min_nodes=job.min_nodes,
                min_replies=job.min_replies,
                round_timeout=None,
                job=job.job_section(),
                secure=job.secure_aggregation,
                listener=listener,
                seed=seed,
            )
    return result


def _agreed_dataset(rehearsal: Rehearsal, sites: list[str]) -> str:
    """The one dataset name the agreement gives the sites (a query names one dataset)."""
    datasets = rehearsal.agreement.agreement.datasets
    missing = sorted(set(sites) - set(datasets))
    if missing:
        raise ConfigurationError(f"the agreement names no dataset of {', '.join(missing)}")
    names = {datasets[s] for s in sites}
    if len(names) != 1:
        raise ConfigurationError(
            "the agreement gives the sites different datasets: a query names one"
        )
    return names.pop()


def _agreement_rules(rehearsal: Rehearsal) -> Mapping[str, float] | None:
    """The rehearsed agreement's ``[analytics]`` thresholds (the coordinator states them)."""
    rules = rehearsal.agreement.agreement.analytics.rules
    return {k: rules[k] for k in RULE_KEYS if k in rules} or None

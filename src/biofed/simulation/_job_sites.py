"""Virtual sites of a simulated job: one real :class:`~biofed.node.NodeApp` per site, each with
its data in memory, the node config its site would run (privacy caps, heuristic-DP opt-in),
and a kit of a throwaway consortium when the job needs one (SecAgg+: each site signs its
keys). A site with caps keeps a ledger, which refuses a round past its cap; a site without
is a development site, which reports the job's ε and refuses nothing.

How the round engine reaches the sites is a backend's transport
(:func:`~biofed.simulation.make_backend`: in process, a pool of worker processes, or Ray
actors), built from the sites' picklable recipes.

Privacy notes
-------------
A rehearsal must never spend a real site's budget: a node config's ``[privacy] ledger`` is
ignored and a virtual site keeps its ledger in the simulation's own folder (``ledger_dir``)
or in memory (:data:`~biofed.node.MEMORY_LEDGER`, gone with the virtual site). Kits are
issued by a consortium made for the simulation alone, never the real one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from biofed.core import ConfigurationError
from biofed.data import FederatedDataset, SiteData
from biofed.identity import Consortium, load_kit
from biofed.node import MEMORY_LEDGER, NodeConfig, PrivacyConfig
from biofed.simulation._job_governance import Rehearsal, governed_config
from biofed.simulation._sites import SiteRecipe, SiteSource

#: Name of the consortium provisioned for a simulation's kits.
SIM_CONSORTIUM = "biofed-simulation"


#: The cap of a virtual site whose node config sets none: a ledger refuses a dataset without
#: a cap, and a site without one in a rehearsal is a development site that only reports ε.
UNCAPPED = (1e12, 0.999999)


def has_caps(config: NodeConfig | None) -> bool:
    """Whether ``config`` sets privacy-budget caps."""
    return config is not None and config.privacy is not None and bool(config.privacy.caps)


def _with_ledger(config: NodeConfig, ledger: Path, dataset: str) -> NodeConfig:
    """``config`` with its ledger at ``ledger`` (a file, or ``":memory:"``); without caps,
    :data:`UNCAPPED` for ``dataset``."""
    privacy = config.privacy or PrivacyConfig()
    caps = dict(privacy.caps) or {dataset: UNCAPPED}
    return dataclasses.replace(
        config,
        privacy=dataclasses.replace(privacy, ledger=ledger, caps=MappingProxyType(caps)),
    )


def _site_data(dataset: str, data: SiteSource) -> dict[str, SiteSource]:
    return {dataset: data}


def _file_data() -> dict[str, SiteSource]:
    """A governed site reads its registered file (its node config's dataset)."""
    return {}


def load_node_config(path: str | Path, site: str) -> NodeConfig:
    """A site's ``node.toml`` for simulation: its privacy caps, heuristic-DP opt-in and
    sandbox settings apply; its ``[datasets]`` and ledger path do not (the virtual site
    holds the simulation's data and a ledger of its own). A ``[governance]`` table is
    refused: a real site's agreements verify only in its real consortium; rehearse
    governance with an agreement and a bundle (``agreement=``, ``bundle=``) instead."""
    config = NodeConfig.from_toml(path)
    if config.governance is not None:
        raise ConfigurationError(
            f"--node-config {site}: [governance] holds a real consortium's agreements, which "
            "cannot verify in a simulation; rehearse governance with --agreement and --bundle"
        )
    return dataclasses.replace(config, datasets={})


def site_recipes(
    fed: FederatedDataset | Mapping[str, SiteSource],
    dataset: str,
    *,
    workdir: Path,
    needs_kits: bool,
    node_configs: Mapping[str, NodeConfig] | None = None,
    ledger_dir: Path | None = None,
    rehearsal: Rehearsal | None = None,
) -> list[SiteRecipe]:
    """One recipe per site of ``fed``, each holding its data as ``dataset``.

    Parameters
    ----------
    fed:
        The sites' data: a federated dataset, or site → study source (an OMOP CDM's URL or
        file, or a data file) for a job with a study spec.
    workdir:
        A scratch folder (the throwaway consortium, the default ledgers).
    needs_kits:
        Provision a throwaway consortium and give every site its kit (secure aggregation).
    node_configs:
        Site → the node config it runs (privacy caps, heuristic-DP opt-in).
    ledger_dir:
        Keep each site's ledger as ``<ledger_dir>/<site>.db`` (kept after the run).
        Default: a ledger in memory for a site with caps or a kit, none
        (the node's in-memory history of the job) for the others. A site without caps
        is a development site: its ledger caps the job's dataset at :data:`UNCAPPED`.
    """
    sites: Mapping[str, SiteSource] = fed.sites if isinstance(fed, FederatedDataset) else fed
    configs = dict(node_configs or {})
    unknown = sorted(set(configs) - set(sites))
    if unknown:
        raise ConfigurationError(
            f"--node-config names sites the dataset does not have: {', '.join(unknown)}"
        )
    kits: dict[str, Path] = {}
    consortium = None
    if needs_kits or rehearsal is not None:
        parties, researchers = (
            (list(sites), []) if rehearsal is None else rehearsal.parties(list(sites))
        )
        consortium = Consortium.create(
            workdir / "consortium",
            consortium=SIM_CONSORTIUM,
            coordinator="localhost",
            sites=parties,
            researchers=researchers,
        )
        kits = {site: consortium.kit_directory(site) for site in sites}
    signed = None if rehearsal is None or consortium is None else rehearsal.resign(consortium)
    if ledger_dir is not None:
        ledger_dir.mkdir(parents=True, exist_ok=True)
    recipes = []
    for site, data in sites.items():
        config = configs.get(site) or NodeConfig(datasets={})
        # Never the real ledger of a node config or a kit: the ledger folder's, or one in
        # memory where the site needs one (a kit opens a ledger; caps need one).
        if ledger_dir is not None or site in kits or has_caps(config):
            ledger = MEMORY_LEDGER if ledger_dir is None else ledger_dir / f"{site}.db"
            config = _with_ledger(config, ledger, dataset)
        elif config.privacy is not None:
            config = dataclasses.replace(
                config, privacy=dataclasses.replace(config.privacy, ledger=None)
            )
        load_data: Callable[[], Mapping[str, SiteSource]]
        load_data = functools.partial(_site_data, dataset, data)
        if rehearsal is not None and signed is not None and consortium is not None:
            kit = load_kit(kits[site])
            config = governed_config(rehearsal, signed, consortium, kit, data, dataset, config)
            if isinstance(data, SiteData):  # the site reads the file it registered
                load_data = _file_data
        recipes.append(
            SiteRecipe(
                node_id=site, load_data=load_data, node_config=config, kit_dir=kits.get(site)
            )
        )
    return recipes

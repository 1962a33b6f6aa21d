"""Virtual sites: how a simulation describes a site before anything of it is loaded.

A :class:`SiteRecipe` is small and picklable, so a thousand of them cross to worker
processes or Ray actors at start-up for the cost of their names; a site's data, kit and
:class:`~biofed.node.NodeApp` are built by :func:`build_node` only when its first instruction
arrives, in the process that hosts it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from biofed.core import check_id
from biofed.data import SiteData
from biofed.identity import load_kit
from biofed.node import NodeApp, NodeConfig

__all__ = ["SiteRecipe", "build_node"]

#: What a virtual site holds as a dataset: a prepared table in memory, or a study source (an
#: OMOP CDM's URL or DuckDB file, or a data file) that a job's study spec compiles.
SiteSource = Union[SiteData, str, "os.PathLike[str]"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteRecipe:
    """What it takes to build one virtual site; nothing is loaded until its first instruction.

    Attributes
    ----------
    node_id:
        The site's identity.
    load_data:
        Returns the site's datasets (name → :class:`~biofed.data.SiteData`, or a study
        source: an OMOP CDM's URL or file, or a data file). A module-level function or a
        :func:`functools.partial` of one, so the recipe pickles.
    node_config:
        The site's ``node.toml`` (governance, privacy ledger and caps, sandbox); its
        ``datasets`` may be empty. ``None``: a development node with no governance.
    kit_dir:
        The site's kit folder (needed for governance and secure aggregation).
    """

    node_id: str
    load_data: Callable[[], Mapping[str, SiteSource]]
    node_config: NodeConfig | None = None
    kit_dir: Path | None = None

    def __post_init__(self) -> None:
        check_id(self.node_id, what="site name")


def build_node(recipe: SiteRecipe) -> NodeApp:
    """The site's node, with its data loaded and its kit read (the real site handler)."""
    config = recipe.node_config if recipe.node_config is not None else NodeConfig(datasets={})
    kit = None if recipe.kit_dir is None else load_kit(recipe.kit_dir)
    return NodeApp(recipe.node_id, config, kit=kit, data=recipe.load_data())

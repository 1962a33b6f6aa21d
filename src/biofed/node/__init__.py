"""biofed.node: the site runtime and the node process's configuration."""

from biofed.node._app import NodeApp
from biofed.node._config import DatasetSource, GovernanceConfig, NodeConfig
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import BundleRunner
from biofed.node._serve import run_node

__all__ = [
    "BundleRunner",
    "DatasetSource",
    "GovernanceConfig",
    "NodeApp",
    "NodeConfig",
    "SiteNode",
    "run_node",
]

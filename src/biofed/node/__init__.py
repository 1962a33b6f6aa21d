"""biofed.node: the site runtime."""

from biofed.node._runtime import SiteNode

__all__ = ["SiteNode"]

"""Lying virtual sites: an in-process backend whose chosen sites tamper with their replies.

A rehearsal of a consortium with a malicious minority (DESIGN.md's threat model) needs sites
that send what an attacker would: a scaled or sign-flipped update, a claimed example count of
10¹⁵, the global model back unchanged. :class:`TamperingBackend` runs every site's real node
(the same chain as :class:`~biofed.simulation.InProcessBackend`) and, for the sites named in
``tamper``, hands each honest reply to the attacker's function, which returns what the site
sends instead. The coordinator's side (exchange checks, strategy, validation) is untouched:
it is what is being tested. Data-level attacks (label flipping, backdoor triggers) need no
hook: the attacker's site simply holds poisoned data.

This backend exists for tests and for ``biofed.attacks``; a node never uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from biofed.core import ConfigurationError, Instruction, NodeInfo, Reply
from biofed.simulation._host import SiteHost
from biofed.simulation._sharded import check_recipes
from biofed.simulation._sites import SiteRecipe
from biofed.transport import InMemoryTransport

#: What a malicious site does: it sees each instruction and the reply its honest node would
#: send, and returns the reply it sends instead (``None``: it stays silent).
Tamper = Callable[[Instruction, Reply], "Reply | None"]


class TamperingBackend:
    """Virtual sites in this process, some of which lie.

    Parameters
    ----------
    tamper:
        Site name → what that site does to its honest replies.
    declared:
        Site name → the training-example count the site declares when it registers (a
        networked node declares its dataset's rows; a liar may declare anything). Sites left
        out declare 0 (unknown), as in-process virtual sites do.
    """

    name = "inprocess"

    def __init__(
        self, tamper: Mapping[str, Tamper], *, declared: Mapping[str, int] | None = None
    ) -> None:
        for site, fn in tamper.items():
            if not callable(fn):
                raise ConfigurationError(f"tamper[{site!r}] must be callable (instruction, reply)")
        self.tamper = dict(tamper)
        self.declared = dict(declared or {})

    def transport(self, recipes: Sequence[SiteRecipe]) -> InMemoryTransport:
        """An in-memory transport to lazily built sites, the named ones lying."""
        check_recipes(recipes)
        names = {r.node_id for r in recipes}
        unknown = sorted((set(self.tamper) | set(self.declared)) - names)
        if unknown:
            raise ConfigurationError(f"no such site to tamper with: {', '.join(unknown)}")
        host = SiteHost(recipes)
        handlers = {r.node_id: _handler(host, self.tamper.get(r.node_id)) for r in recipes}
        info = {
            site: NodeInfo(node_id=site, num_examples=count)
            for site, count in self.declared.items()
        }
        return InMemoryTransport(handlers, info=info)


def _handler(host: SiteHost, tamper: Tamper | None) -> Callable[[Instruction], Reply | None]:
    if tamper is None:
        return host.handle

    def lying(instruction: Instruction) -> Reply | None:
        return tamper(instruction, host.handle(instruction))

    return lying

"""biofed.attacks: the attacks biofed's defences are measured against (tests and benchmarks only).

Malicious virtual sites (poisoning, backdoors, weight inflation, free-riding) for a
simulation's :class:`~biofed.simulation.TamperingBackend`, and privacy attacks on what a site
sends or what a run releases (gradient inversion, membership inference). No node, coordinator
or command imports this package (the layer contract in ``pyproject.toml`` keeps it on top,
beside the CLI and independent of it).
"""

__all__: list[str] = []

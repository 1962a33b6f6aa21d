"""biofed: federated learning and federated analytics on sensitive biomedical data.

Import what you need from the subpackages (``biofed.strategies``, ``biofed.tasks``,
``biofed.simulation``…). Importing ``biofed`` itself is cheap and never imports torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

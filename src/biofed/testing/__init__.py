"""biofed.testing: contract checks users run against their own extensions."""

from biofed.testing._strategy_check import check_strategy

__all__ = ["check_strategy"]

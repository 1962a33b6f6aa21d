"""Names that help texts list, kept here so that ``biofed --help`` imports no SDK package.

The help of every command is built when the app starts; reading these lists from
``biofed.strategies`` or ``biofed.privacy`` would import dp-accounting (seconds) just to
print a usage line. ``tests/test_fast_start.py`` checks that they equal the SDK's lists.
"""

from __future__ import annotations

#: ``sorted(biofed.strategies.STRATEGIES)``.
STRATEGY_NAMES = ("fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi", "scaffold")

#: ``biofed.privacy.ACCOUNTANTS``.
ACCOUNTANT_NAMES = ("pld", "rdp")

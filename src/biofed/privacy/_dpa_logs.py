"""dp-accounting's "failed to converge" warnings, demoted to DEBUG under a biofed logger.

dp-accounting's RDP accountant logs, through absl, one WARNING per Rényi order whose series
does not converge (``_compute_log_a_frac failed to converge after … Excluding this order from
the epsilon computation.``). Excluding an order is how it stays correct: ε is the minimum over
the remaining orders, still an upper bound. A noise calibration evaluates hundreds of
histories, so a site node's log was almost all these lines (45 of 47 in the demo), hiding
what the site's operator needs to read.

:data:`FILTER` is installed once on the ``absl`` logger (the one dp-accounting logs to) when
:mod:`biofed.privacy` is imported. It matches only that message; each matching record is
re-logged at DEBUG on the ``biofed.privacy.dp_accounting`` logger (turn DEBUG on to see
them) and dropped from ``absl``. Every other absl record — dp-accounting's "Negative Renyi
divergence … Returning an epsilon of zero", which does matter, included — passes unchanged,
and the ``warnings`` module and biofed's own loggers are not touched.

A logging filter, not :func:`logging.disable` or a level on ``absl``: those would silence
every warning absl carries, not this one.
"""

from __future__ import annotations

import logging

#: Where the demoted records go (at DEBUG).
LOGGER = "biofed.privacy.dp_accounting"
#: The start of the one message demoted (dp_accounting/rdp/rdp_privacy_accountant.py).
_NOT_CONVERGED = "_compute_log_a_frac failed to converge"


class _DemoteNotConverged(logging.Filter):
    """Drops dp-accounting's non-convergence records from ``absl``, re-logging them at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(_NOT_CONVERGED)):
            return True
        target = logging.getLogger(LOGGER)
        if target.isEnabledFor(logging.DEBUG):
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            target.debug(record.msg, *(args if record.args else ()))
        return False


FILTER = _DemoteNotConverged()


def install() -> None:
    """Put :data:`FILTER` on the ``absl`` logger (once; idempotent)."""
    absl = logging.getLogger("absl")
    if FILTER not in absl.filters:
        absl.addFilter(FILTER)

"""mkdocs hook: show the Sphinx roles of biofed's docstrings as code, not as raw markup.

The docstrings cross-reference with Sphinx roles (``:class:`~biofed.core.Config```); the
API pages are rendered by mkdocstrings, which keeps the role's name as text. This turns
``:class:<code>~a.b.C</code>`` into ``<code>C</code>`` (``~`` keeps the last part, as Sphinx
does) and ``:func:<code>a.b</code>`` into ``<code>a.b</code>``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):<code>(~?)([^<]*)</code>")


def _plain(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Rewrite the roles in one page's HTML."""
    return _ROLE.sub(_plain, html)

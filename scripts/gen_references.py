"""Generate the reference pages of the files people write, from the schemas that check them.

    python scripts/gen_references.py           # write the pages
    python scripts/gen_references.py --check   # exit 1 if a committed page is out of date

docs/job-reference.md (job files, the coordinator's [limits] and [trusted_data]) comes from
biofed.coordinator's job schema, docs/reference/node-toml.md from biofed.node's node.toml
schema, docs/reference/agreement.md from biofed.governance's agreement schema,
docs/reference/kit-toml.md from biofed.identity's kit.toml schema. Change a key
there, then run this script; tests/docs/test_docs_reference.py fails until you do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pages() -> dict[Path, Callable[[], str]]:
    """Each generated page and the function that renders it."""
    from biofed.coordinator import JobSpec
    from biofed.governance import StudyAgreement
    from biofed.identity import Kit
    from biofed.node import NodeConfig

    return {
        ROOT / "docs" / "job-reference.md": JobSpec.reference,
        ROOT / "docs" / "reference" / "node-toml.md": NodeConfig.reference,
        ROOT / "docs" / "reference" / "agreement.md": StudyAgreement.reference,
        ROOT / "docs" / "reference" / "kit-toml.md": Kit.reference,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the committed pages")
    args = parser.parse_args()
    stale = 0
    for page, render in pages().items():
        text = render()
        name = page.relative_to(ROOT)
        if args.check:
            current = page.read_text(encoding="utf-8") if page.is_file() else ""
            if current != text:
                print(f"{name} is out of date: run {Path(__file__).name}")
                stale += 1
            continue
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text, encoding="utf-8")
        print(f"wrote {name}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

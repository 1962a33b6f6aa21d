"""Generate docs/job-reference.md from the job schema (biofed.coordinator).

    python scripts/gen_job_reference.py           # write the page
    python scripts/gen_job_reference.py --check   # exit 1 if the committed page is out of date

The schema that checks every submitted job is the only source of the page: change a key's
range or meaning there, then run this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biofed.coordinator import JobSpec

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "job-reference.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the committed page")
    args = parser.parse_args()
    text = JobSpec.reference()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run {Path(__file__).name}")
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score and rank saved audits (`afa-llm audit --output` JSON) anew with the current score, in place.

    .venv/bin/python experiments/rescore_audits.py docs/results_data/**/audit.json   # and an audit.html beside each

The score is computed from each candidate's mean effects (`afa_llm.evaluation.audit_stats.rescore`), which every
audit JSON holds for every measured candidate, so no model is run and the result equals a fresh audit's. An
``audit.html`` beside a JSON is rendered again from it. Used when the score changed (the base's effect clipped at 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from afa_llm.evaluation.audit_stats import rescore
from afa_llm.io_utils import write_json
from afa_llm.reports.audit_page import write_audit_html


def rescore_file(path: Path) -> list[str]:
    """Rewrite one audit JSON (and its HTML page); the words that changed place in its top 10."""
    report = json.loads(path.read_text())
    before = [c["word"] for c in report["candidates"][:10]]
    report["candidates"], report["scales"] = rescore(report["candidates"])
    write_json(path, report)
    page = path.with_suffix(".html")
    if page.exists():
        write_audit_html(report, page, report["settings"]["top"])
    return [c["word"] for c in report["candidates"][:10] if c["word"] not in before]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    for path in parser.parse_args().paths:
        entered = rescore_file(path)
        print(f"{path}: {'new in the top 10: ' + ', '.join(entered) if entered else 'top 10 unchanged'}")


if __name__ == "__main__":
    main()

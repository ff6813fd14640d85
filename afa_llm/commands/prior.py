"""``python -m afa_llm.prior FIT.json REPORT.json [--method normalize|offset]``: apply a label-prior
correction (`afa_llm.evaluation.prior`) to a stored `afa-llm eval` report, without the model."""

from __future__ import annotations

import argparse
import sys

from afa_llm.errors import UserError
from afa_llm.evaluation.metrics import reports_mcnemar_p
from afa_llm.evaluation.prior import METHODS, check_fit_report, correct_report, fit_from_report, load_fit_report


def main(argv: list[str] | None = None) -> int:
    """Correct a stored report without the model: ``python -m afa_llm.prior FIT.json REPORT.json``."""
    parser = argparse.ArgumentParser(description="apply a label-prior correction to a stored `afa-llm eval` report")
    parser.add_argument("fit", help="the report to fit on (e.g. --split validation)")
    parser.add_argument("report", help="the report to correct (same model and prompt, other rows)")
    parser.add_argument("--method", default="normalize", choices=METHODS)
    args = parser.parse_args(argv)
    try:
        fit, report = load_fit_report(args.fit), load_fit_report(args.report)
        check_fit_report(fit, report, args.fit)
        corrected = correct_report(report, fit_from_report(fit, args.method, args.fit), report["label_names"])
    except (UserError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.report}: accuracy {report['accuracy']:.4f} -> {corrected['accuracy']:.4f}, macro-F1 "
          f"{report['macro_f1']:.4f} -> {corrected['macro_f1']:.4f} ({args.method} fitted on {len(fit['labels'])} "
          f"rows of {args.fit}; McNemar p = {reports_mcnemar_p(corrected, report):.2f})")
    return 0

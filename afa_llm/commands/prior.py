"""``python -m afa_llm.prior FIT.json REPORT.json [--method normalize|offset|temperature]``: apply a label-prior
correction or temperature scaling (`afa_llm.evaluation.prior`) to a stored `afa-llm eval` report, without the model."""

from __future__ import annotations

import argparse
import sys

from afa_llm.errors import UserError
from afa_llm.evaluation.metrics import reports_mcnemar_p
from afa_llm.evaluation.prior import (METHODS, check_fit_report, correct_report, correction_name, fit_from_report,
                                     load_fit_report)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    """Correct a stored report without the model: ``python -m afa_llm.prior FIT.json REPORT.json``
    (reports older than ECE and Brier print n/a before the correction)."""
    parser = argparse.ArgumentParser(
        description="apply a label-prior correction or temperature scaling to a stored `afa-llm eval` report")
    parser.add_argument("fit", help="the report to fit on (e.g. --split validation)")
    parser.add_argument("report", help="the report to correct (same model and prompt, other rows)")
    parser.add_argument("--method", default="normalize", choices=METHODS)
    args = parser.parse_args(argv)
    try:
        fit, report = load_fit_report(args.fit), load_fit_report(args.report)
        check_fit_report(fit, report, args.fit)
        correction = fit_from_report(fit, args.method, args.fit)
        corrected = correct_report(report, correction, report["label_names"])
    except (UserError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.report}: accuracy {report['accuracy']:.4f} -> {corrected['accuracy']:.4f}, macro-F1 "
          f"{report['macro_f1']:.4f} -> {corrected['macro_f1']:.4f}, ECE {_fmt(report.get('ece'))} -> "
          f"{corrected['ece']:.4f}, Brier {_fmt(report.get('brier'))} -> {corrected['brier']:.4f} "
          f"({correction_name(correction)}, fitted on {len(fit['labels'])} rows of {args.fit}; "
          f"McNemar p = {reports_mcnemar_p(corrected, report):.2f})")
    return 0

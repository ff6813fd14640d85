"""``afa-llm prior FIT.json REPORT.json [--correction normalize|offset|temperature]``: apply a label-prior
correction or temperature scaling (`afa_llm.evaluation.prior`) to a stored `afa-llm eval` report, without the
model. ``--method`` is the old name of ``--correction`` and works until the next release."""

from __future__ import annotations

import argparse

from afa_llm.commands import options
from afa_llm.errors import UserError
from afa_llm.evaluation.prior import CORRECTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fit", help="the `afa-llm eval --output` report to fit on (e.g. of --split validation)")
    parser.add_argument("report", help="the report to correct (same model, adapter and prompt, other rows)")
    parser.add_argument("--correction", default="normalize", choices=CORRECTIONS,
                        help="normalize: equal mean probability per class on the fitting rows (label-free); "
                             "offset: the log-odds shift with the best accuracy there (two classes); "
                             "temperature: temperature scaling for confidence calibration, no prediction "
                             "changes (default: %(default)s)")
    options.add_deprecated_flag(parser, "--method", "--correction", choices=CORRECTIONS)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    """Print the report's scores before and after the correction fitted on ``args.fit`` (reports older than
    ECE and Brier print n/a before it)."""
    from afa_llm.evaluation.metrics import reports_mcnemar_p
    from afa_llm.evaluation.prior import (check_fit_report, correct_report, correction_name, fit_from_report,
                                         load_fit_report)

    where = "afa-llm prior"
    fit, report = load_fit_report(args.fit, where), load_fit_report(args.report, where)
    check_fit_report(fit, report, args.fit, where)
    try:
        correction = fit_from_report(fit, args.correction, args.fit)
        corrected = correct_report(report, correction, report["label_names"])
        before = (report["accuracy"], report["macro_f1"])
    except KeyError as err:
        raise UserError(f"{args.fit} or {args.report} is not an `afa-llm eval --output` report (no {err})") from None
    print(f"{args.report}: accuracy {before[0]:.4f} -> {corrected['accuracy']:.4f}, macro-F1 "
          f"{before[1]:.4f} -> {corrected['macro_f1']:.4f}, ECE {_fmt(report.get('ece'))} -> "
          f"{corrected['ece']:.4f}, Brier {_fmt(report.get('brier'))} -> {corrected['brier']:.4f} "
          f"({correction_name(correction)}, fitted on {len(fit['labels'])} rows of {args.fit}; "
          f"McNemar p = {reports_mcnemar_p(corrected, report):.2f})")
    return 0

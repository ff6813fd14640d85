"""``afa-llm eval``: score a model (+ adapter) on a labelled data set with its head (label words or a classifier)
(`afa_llm.evaluation.request.evaluate_request`), print the table and write the JSON report.

``--adapter-scale ALPHA`` scores the adapter's LoRA update times ALPHA (WiSE-FT weight interpolation:
0 is the base, 1 the adapter; the report records ``adapter_scale``). A classifier head is a trained
layer, not a LoRA update, and scores as trained at every ALPHA."""

from __future__ import annotations

import argparse
import os

from afa_llm.commands import options
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_file, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_scorer_arguments(parser)
    parser.add_argument("--split", default="test", choices=["train", "validation", "test", "all"],
                        help="which seeded split to score, or all: every row of the data in its own order "
                             "(whole-file evaluation; for hub data, the splits joined) (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples of the split")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=0,
                        help="few-shot: K demonstrations from the train split per query (default: 0 = zero-shot)")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing demonstrations (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="also write the report as JSON to this file (with per-example predictions and "
                             "probabilities, and the confidence calibration: expected calibration error `ece` "
                             "and Brier score `brier`)")
    parser.add_argument("--reliability-plot", default=None, metavar="FILE.png",
                        help="also draw the reliability diagram (accuracy per confidence bin, the 15 bins of "
                             "the expected calibration error) to this .png/.pdf/.svg file")
    options.add_act_argument(parser)
    options.add_prior_arguments(parser)
    options.add_focus_metric_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_args(args: argparse.Namespace) -> None:
    """Reject bad numbers and unwritable outputs before any data or model is loaded."""
    from afa_llm.evaluation.reliability import PLOT_SUFFIXES

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of examples")
    if args.batch_size <= 0:
        raise UserError("--batch-size must be positive")
    if args.shots < 0:
        raise UserError("--shots must be 0 (zero-shot) or a positive number of demonstrations")
    if args.shots and args.split == "all":
        raise UserError("--shots draws demonstrations from the train split, which --split all also scores; "
                        "use --split test for few-shot evaluation")
    options.check_prior_args(args)
    options.check_focus_metric_args(args)
    if args.output:
        check_writable_file(args.output, "--output")
    if args.reliability_plot:
        if os.path.splitext(args.reliability_plot)[1].lower() not in PLOT_SUFFIXES:
            raise UserError(f"--reliability-plot must end in {', '.join(PLOT_SUFFIXES)}: {args.reliability_plot}")
        check_writable_file(args.reliability_plot, "--reliability-plot")


def run(args: argparse.Namespace) -> int:
    from afa_llm.evaluation.focus_metrics import format_focus_metrics
    from afa_llm.evaluation.report import format_report
    from afa_llm.evaluation.request import EvalRequest, evaluate_request

    check_args(args)
    resolved = options.resolve(args)
    if args.shots and resolved.scorer.head == "classifier":
        raise UserError("--shots puts demonstrations before the prompt for label words; a classifier head "
                        "was trained on the plain prompt and is scored zero-shot only")
    request = EvalRequest(resolved, split=args.split, limit=args.limit, batch_size=args.batch_size,
                          shots=args.shots, seed=args.seed, act=args.act, prior_from=args.prior_from,
                          prior_correction=args.prior_correction, focus_n=args.focus_n,
                          faithfulness_n=args.faithfulness_n, lexicon_threshold=args.lexicon_threshold,
                          progress=not args.no_progress)
    report, title = evaluate_request(request)
    print(format_report(report, report["label_names"], title=title))
    print(f"truncated: {report['truncated_share']:.1%} of the texts exceed max_text_tokens={report['max_text_tokens']}")
    if "focus_metrics" in report:
        print(format_focus_metrics(report["focus_metrics"]))
    if args.output:
        write_json(args.output, report)
    if args.reliability_plot:
        from afa_llm.evaluation.reliability import write_reliability_plot

        write_reliability_plot(report["probabilities"], report["labels"], args.reliability_plot, title=title)
    return 0

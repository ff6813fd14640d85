"""``afa-llm focus``: where the model looks, as a self-contained HTML page, a PNG and a JSON of every number
(`afa_llm.reports.focus_map`): the base and the adapter side by side, optionally with ACT on."""

from __future__ import annotations

import argparse
from pathlib import Path

from afa_llm.defaults import FOCUS_FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS
from afa_llm.commands import options
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # a run's model, prompt and (for its own --data) split seed, as in eval; --data is one of two sources
    options.add_scorer_arguments(parser, data_help="texts to render (instead of --text): rotten_tomatoes, imdb, tweets, a "
                         ".csv/.jsonl/.parquet file or hub:NAME[:CONFIG]; the run's own data set uses the run's "
                         "split seed")
    parser.add_argument("--text", action="append", default=None, help="a text to render (repeat for several)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="split the --data texts come from (default: %(default)s)")
    parser.add_argument("--n", type=int, default=8, help="texts of --data to render (default: %(default)s)")
    parser.add_argument("--metric-n", type=int, default=FOCUS_METRIC_ROWS,
                        help="texts of --data for the fake-focus share (default: %(default)s)")
    parser.add_argument("--focus-layers", default=None,
                        help="comma-separated layer indices, negative from the end (default: the run's "
                             "focus_layers, else the last third of the layers)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--output", required=True, help="folder for focus.html, focus.png and focus.json")
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="add a side with this ACT attention calibration on (afa-llm calibrate)")
    options.add_focus_metric_arguments(parser, focus_n=None, faithfulness_n=FOCUS_FAITHFULNESS_ROWS)


def check_args(args: argparse.Namespace) -> None:
    check_writable_dir(args.output, "--output")
    if args.act:
        from afa_llm.act.calibration import load_act

        load_act(args.act)
    if bool(args.text) == bool(args.data):
        raise UserError("give the texts to render: --text \"...\" (repeatable) or --data SPEC --n N, not both")
    if args.n <= 0 or args.metric_n < 0 or args.batch_size <= 0:
        raise UserError("--n and --batch-size must be positive, --metric-n must not be negative")
    options.check_focus_metric_args(args)
    if args.text and not all(t.strip() for t in args.text):
        raise UserError("--text must not be empty")


def focus_layers(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    try:
        return [int(v) for v in spec.split(",")]
    except ValueError as exc:
        raise UserError(f"--focus-layers must be comma-separated integers, got {spec!r}") from exc


def run(args: argparse.Namespace) -> int:
    from afa_llm.reports.focus_map import FocusRequest, focus_report, write_focus

    check_args(args)
    request = FocusRequest(options.resolve(args), args.output, texts=list(args.text) if args.text else None,
                           split=args.split, n=args.n, metric_n=args.metric_n, focus_layers=focus_layers(args.focus_layers),
                           batch_size=args.batch_size, act=args.act, faithfulness_n=args.faithfulness_n,
                           lexicon_threshold=args.lexicon_threshold)
    report = focus_report(request)
    write_focus(report, args.output)
    print(f"wrote {Path(args.output) / 'focus.html'}, focus.png and focus.json ({len(report['texts'])} texts, "
          f"layers {report['focus_layers']})")
    return 0

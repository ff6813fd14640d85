"""``afa-llm predict``: classify new texts with a trained run or a merged model
(`afa_llm.inference.predict.predict_file`): every input column plus ``predicted_label`` and one
``prob_<class>`` column per class, in input order, read and written ``--chunk-size`` rows at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

from afa_llm.commands import options
from afa_llm.defaults import DEFAULT_DTYPE, DTYPE_NAMES, QUANTIZATIONS, SCORING_QUANTIZATION, TEXT_COLUMN
from afa_llm.errors import UserError
from afa_llm.inference.predict import EMPTY_NOTE, OUTPUT_SUFFIXES, PredictRequest
from afa_llm.io_utils import check_writable_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (EMPTY_NOTE + " Cost: one forward pass per scored row, nothing else (no focus or "
                     "faithfulness diagnostics; `afa-llm eval` and `afa-llm focus` compute those).")
    parser.add_argument("--adapter", default=None,
                        help="a training run folder (its config.yaml gives the base model, prompt and class names) "
                             "or a peft adapter folder (then give --model)")
    parser.add_argument("--model", default=None,
                        help="a model spec: a folder from `afa-llm merge` (it keeps its run's prompt and class "
                             "names), a built-in name, a local HF folder or a .gguf file (default: the run's model)")
    parser.add_argument("--quantization", default=None, choices=QUANTIZATIONS,
                        help=f"how to load the base (default: the run's quantization, else {SCORING_QUANTIZATION})")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help=f"weight / compute dtype (default: the run's dtype, else {DEFAULT_DTYPE})")
    options.add_adapter_scale_argument(parser)
    parser.add_argument("--data", required=True,
                        help="a .csv, .jsonl or .parquet file (no labels needed), a .txt file with one text per "
                             "line, or - for one text per line on stdin (empty texts: see below)")
    parser.add_argument("--text-column", default=TEXT_COLUMN,
                        help="the column holding the texts; text lines become this column (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="write the predictions to this .csv or .jsonl file, atomically "
                             "(default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=10000,
                        help="rows read, scored and written at a time; memory stays bounded by this, not the "
                             "input size (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (stderr)")
    options.add_act_argument(parser)
    options.add_prior_arguments(parser)


def check_args(args: argparse.Namespace) -> None:
    if args.batch_size <= 0 or args.chunk_size <= 0:
        raise UserError("--batch-size and --chunk-size must be positive")
    options.check_prior_args(args)
    if args.output:
        if Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
            raise UserError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}: {args.output}")
        check_writable_file(args.output, "--output")


def run(args: argparse.Namespace) -> int:
    from afa_llm.inference.predict import predict_file

    check_args(args)
    if args.act:  # a broken act.json fails before the run is read
        from afa_llm.act.calibration import load_act

        load_act(args.act)
    given = {"quantization": args.quantization, "dtype": args.dtype, "adapter_scale": args.adapter_scale}
    from afa_llm.runs import resolve_scorer

    resolved = resolve_scorer(args.adapter, args.model, given, require_source=True)
    predict_file(PredictRequest(resolved, args.data, text_column=args.text_column, output=args.output,
                                batch_size=args.batch_size, chunk_size=args.chunk_size, act=args.act,
                                prior_from=args.prior_from, prior_correction=args.prior_correction,
                                progress=not args.no_progress))
    return 0

"""``afa-llm calibrate``: ACT's attention calibration, its search for the attention heads to calibrate and its
controls (`afa_llm.act.search.calibrate`), written to ``--output``/act.json for ``eval``/``predict``/``merge --act``.

``--heads`` is the old name of ``--attention-heads`` and works until the next release (`afa_llm.deprecations`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from afa_llm.act.calibration import ACT_FILE, DEFAULT_BETA, DEFAULT_TAU
from afa_llm.act.search import RULES, SELECTIONS
from afa_llm.act.search_log import SEARCH_FILE
from afa_llm.act.setup import CalibrationRequest
from afa_llm.commands import options
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_scorer_arguments(parser)
    parser.add_argument("--split", default="validation", choices=["validation", "train"],
                        help="where the calibration examples come from; never test, and never the train split "
                             "of the run's own data (default: %(default)s)")
    parser.add_argument("--calibration-size", type=int, default=500,
                        help="calibration examples drawn from the split (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (and of --attention-heads random)")
    parser.add_argument("--output", required=True, help=f"folder for {ACT_FILE} and {SEARCH_FILE}")
    parser.add_argument("--resume", action="store_true", help=f"continue the search in --output's {SEARCH_FILE}")
    parser.add_argument("--rule", default="faithful", choices=list(RULES),
                        help="faithful: solo accuracy above the baseline; strict: also a higher mean gold margin "
                             "(default: %(default)s)")
    parser.add_argument("--attention-heads", default="search", choices=list(SELECTIONS),
                        help="which attention heads to calibrate: search: those the rule keeps; random: the rule's "
                             "count per layer, random attention heads (control); all: every eligible attention "
                             "head, no search (control) (default: %(default)s)")
    options.add_deprecated_flag(parser, "--heads", "--attention-heads", choices=list(SELECTIONS))
    parser.add_argument("--draw", type=int, default=0, help="which random draw, with --attention-heads random")
    parser.add_argument("--layers", default=None,
                        help="comma-separated eligible layers (default: 2..L-2, as the authors)")
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA, help="sink scale (default: %(default)s)")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="sink score threshold (default: %(default)s)")
    parser.add_argument("--bf16", action="store_true", help="run the search under bf16 autocast (faster, inexact)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="score the candidates in this many processes, each with its share of the torch threads "
                             "(2 on a 2-core CPU: 1.2-1.3x faster at N=200; the numbers then are those of a "
                             "1-thread search) (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def check_args(args: argparse.Namespace) -> None:
    if args.calibration_size <= 0 or args.batch_size <= 0 or args.workers <= 0:
        raise UserError("--calibration-size, --batch-size and --workers must be positive")
    if not 0 <= args.beta <= 1 or args.tau < 0:
        raise UserError("--beta must be in [0, 1] and --tau must not be negative")
    check_writable_dir(args.output, "--output")
    log = Path(args.output) / SEARCH_FILE
    if args.attention_heads == "search" and log.exists() and log.stat().st_size and not args.resume:
        raise UserError(f"{log} exists: pass --resume to continue that search, or choose another --output")


def eligible_layers(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        return sorted({int(v) for v in spec.split(",")})
    except ValueError as exc:
        raise UserError(f"--layers must be comma-separated integers, got {spec!r}") from exc


def run(args: argparse.Namespace) -> int:
    from afa_llm.act.search import calibrate

    check_args(args)
    request = CalibrationRequest(options.resolve(args), args.output, split=args.split,
                                 calibration_size=args.calibration_size, seed=args.seed, resume=args.resume,
                                 rule=args.rule, attention_heads=args.attention_heads, draw=args.draw,
                                 layers=eligible_layers(args.layers), beta=args.beta, tau=args.tau, bf16=args.bf16,
                                 batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
    config, path = calibrate(request)
    info, record = config.info, config.calibration
    print(f"{config.n_heads} attention heads in {len(config.edits())} layers ({args.attention_heads}"
          f"{', rule ' + config.rule if config.rule else ''}); accuracy {info['baseline']['accuracy']:.4f} -> "
          f"{info['selected']['accuracy']:.4f} on the {record['n']} {args.split} calibration examples; wrote {path}")
    return 0

"""``afa-llm leaderboard CONFIG.yaml``: evaluate many runs / models on many data sets into one table
(`afa_llm.reports.leaderboard.run_leaderboard`): leaderboard.md, .csv and .png."""

from __future__ import annotations

import argparse

from afa_llm.errors import UserError
from afa_llm.defaults import FOCUS_FAITHFULNESS_ROWS
from afa_llm.reports.leaderboard import FOCUS_N


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="leaderboard YAML (see experiments/leaderboard_example.yaml)")
    parser.add_argument("--output-dir", default=None,
                        help="where to write leaderboard.md/.csv/.png and cache/ (default: the YAML's "
                             "output_dir, else a folder named after the YAML next to it)")
    parser.add_argument("--from-results", action="store_true",
                        help="evaluate nothing: aggregate the run entries' results.json files")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test examples of each data set")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="keep only the entries with this name or group (repeatable); the table lists just them")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default: 32)")
    parser.add_argument("--focus-metrics", action="store_true",
                        help=f"also score each entry's focus on its first {FOCUS_N} test rows against human-rated "
                             f"(VADER) words, and its faithfulness on {FOCUS_FAITHFULNESS_ROWS} (about 30 extra forward passes "
                             "each; with --from-results: read from results.json)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from afa_llm.reports.leaderboard import LeaderboardRequest, run_leaderboard

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of examples")
    out = run_leaderboard(LeaderboardRequest(args.config, args.output_dir, args.only, args.from_results, args.limit,
                                             args.batch_size, args.focus_metrics, not args.no_progress))
    print((out / "leaderboard.md").read_text())
    return 0

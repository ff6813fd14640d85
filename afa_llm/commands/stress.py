"""``afa-llm stress (--adapter RUN | --model SPEC [--adapter RUN]) --cue WORD [--cue-label CLASS] ...``:
the shortcut stress test (`afa_llm.evaluation.stress.stress_request`): accuracy and macro-F1 of the clean,
aligned and anti views, the gap, McNemar p of anti against clean, and the focus on the cue.

Cost: one scoring pass per row and view (3 passes per row); the focus on the cue is read off the aligned
and anti passes themselves (a few percent more time), so stress costs about 3x `afa-llm eval` on the same rows."""

from __future__ import annotations

import argparse

from afa_llm.commands import options
from afa_llm.data.shortcut import POSITIONS
from afa_llm.errors import UserError
from afa_llm.io_utils import check_writable_file, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + " Cost: three scoring passes per row (one per view); the " \
        "focus on the cue is read off the same passes."
    options.add_scorer_arguments(parser)
    group = parser.add_argument_group("shortcut")
    group.add_argument("--cue", required=True, help="the cue word or phrase to insert (e.g. a neutral name)")
    group.add_argument("--cue-label", default=None,
                       help="the class the cue goes with (default: the run's shortcut_label)")
    group.add_argument("--cue-position", default=None, choices=POSITIONS,
                       help="where the cue goes: a word boundary drawn by --seed, the start or the end "
                            "(default: the run's shortcut_position, else random)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test", "all"],
                        help="which seeded split to score, or all (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples of the split")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cue slots (default: %(default)s)")
    parser.add_argument("--output", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    from afa_llm.evaluation.stress import format_stress, stress_request

    cue = args.cue.strip()
    if not cue:
        raise UserError("--cue must be a word or phrase, not empty")
    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of examples")
    if args.batch_size <= 0:
        raise UserError("--batch-size must be positive")
    if args.output:
        check_writable_file(args.output, "--output")
    resolved = options.resolve(args)
    result = stress_request(resolved, cue, args.cue_label, args.cue_position, args.split, args.limit, args.batch_size,
                            args.seed, progress=not args.no_progress)
    spec = resolved.scorer
    print(format_stress(result, f"{spec.model}{' + ' + spec.adapter if spec.adapter else ''} on "
                                f"{resolved.data.data}/{args.split}"))
    if args.output:
        write_json(args.output, result)
    return 0

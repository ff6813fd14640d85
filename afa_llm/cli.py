"""afa-llm: LoRA text classifiers on decoder LLMs, and the methods that steer their attention.

This module only dispatches: each subcommand is a module of `afa_llm.commands` with
``add_arguments(parser)`` and ``run(args) -> int``, imported only when it runs. User errors
(`UserError`) print one line on stderr and exit with code 2; there is no traceback for them.
Every subcommand documents each option in ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from afa_llm.errors import TrainingDiverged, UserError

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "eval": ("afa_llm.commands.eval", "Score a model, a run or a merged folder on a labelled split: accuracy, macro-F1, per-class F1 "
                                      "and confidence calibration (ECE, Brier)."),
    "train": ("afa_llm.commands.train", "Train a LoRA classifier from a YAML recipe (method=lora|afa|at|vat|iat|attn_rp; "
                                        "head=label_words|classifier), checkpointed and resumable."),
    "predict": ("afa_llm.commands.predict", "Classify new texts (CSV, JSONL, parquet, or lines on stdin) with a "
                                            "trained run or merged model: predicted label and class probabilities "
                                            "per row."),
    "merge": ("afa_llm.commands.merge", "Merge a trained LoRA adapter into a full-precision base for deployment."),
    "calibrate": ("afa_llm.commands.calibrate", "Attention calibration (ACT, training-free): search the attention "
                                                "heads whose attention-sink calibration helps, write act.json for "
                                                "eval/predict/merge --act."),
    "focus": ("afa_llm.commands.focus", "Render where the model looks (answer-position focus) as HTML and PNG."),
    "stress": ("afa_llm.commands.stress", "Shortcut stress test: score clean, aligned and anti views of a cue word "
                                          "(gap, McNemar p, focus on the cue)."),
    "audit": ("afa_llm.commands.audit", "Shortcut audit: rank the words a trained classifier leans on beyond what the "
                                        "zero-shot base would (hiding each word, label skew), as a table, JSON and HTML."),
    "prior": ("afa_llm.commands.prior", "Correct a stored eval report without the model: a label-prior correction "
                                        "(normalize, offset) or temperature scaling, fitted on another report."),
    "leaderboard": ("afa_llm.commands.leaderboard", "Evaluate many runs/models and write leaderboard.md/.csv/.png."),
}


# ---- entry point ----------------------------------------------------------------------
class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors print one line on stderr and exit 2, like `UserError` (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser. Only ``command``'s module is imported (its options need it), so
    ``afa-llm --help`` does not pay for torch and transformers; None imports them all."""
    parser = OneLineErrorParser(prog="afa-llm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(child)
            child.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # "" imports no subcommand
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``afa-llm`` command line: eval, train, predict, merge, focus, leaderboard.

User errors (`UserError`) print one line on stderr and exit with code 2; there is no
traceback for them. Every subcommand documents each option in ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from afa_llm.errors import TrainingDiverged, UserError
from afa_llm.io_utils import check_writable_file, write_json  # noqa: F401  (write_json: re-exported, callers import it here)

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "eval": ("afa_llm.cli", "Evaluate a model (+ adapter) on a sentiment data set with label-word scoring."),
    "train": ("afa_llm.training.trainer", "Train a LoRA adapter with AFA or plain LoRA from a YAML recipe."),
    "predict": ("afa_llm.inference.predict", "Classify new texts (CSV, JSONL, parquet, or lines on stdin) with a trained run or "
                                   "merged model: predicted label and class probabilities per row."),
    "merge": ("afa_llm.inference.merge", "Merge a trained LoRA adapter into a full-precision base for deployment."),
    "calibrate": ("afa_llm.act.search", "ACT: search the attention heads whose sink calibration helps (training-free), "
                                        "write act.json for eval/predict --act."),
    "focus": ("afa_llm.evaluation.focus_map", "Render where the model looks (answer-position focus) as HTML and PNG."),
    "stress": ("afa_llm.evaluation.stress", "Shortcut stress test: score clean, aligned and anti views of a cue word (gap, "
                                 "McNemar p, focus on the cue)."),
    "leaderboard": ("afa_llm.evaluation.leaderboard", "Evaluate many runs/models and write leaderboard.md/.csv/.png."),
}


# ---- shared option groups -----------------------------------------------------------
# With ``from_run``, an option left out is None and filled in later from the run that
# --adapter names (its config.yaml), else from the default shown (`predict.resolve_run_args`).
def _default(value, from_run: bool, fmt: str = "s") -> tuple:
    shown = f"%(default){fmt}" if not from_run else (repr(value) if fmt == "r" else str(value))
    return (None, f"(default: the run's with --adapter RUN, else {shown})") if from_run else \
        (value, f"(default: {shown})")


def add_model_arguments(parser: argparse.ArgumentParser, default_quantization: str = "none",
                        from_run: bool = False) -> None:
    group = parser.add_argument_group("model")
    default, shown = _default("smollm2-135m", from_run)
    group.add_argument("--model", default=default,
                       help="built-in name (smollm2-135m, gemma3-270m), a local HF folder, a .gguf file, "
                            f"or a hub id {shown}")
    default, shown = _default(default_quantization, from_run)
    group.add_argument("--quantization", default=default, choices=["nf4", "int8", "none"],
                       help=f"load the base in bitsandbytes 4-bit (nf4), 8-bit, or full precision {shown}")
    default, shown = _default("fp32", from_run)
    group.add_argument("--dtype", default=default, choices=["fp32", "bf16", "fp16"],
                       help=f"weight / compute dtype {shown}")


def add_data_arguments(parser: argparse.ArgumentParser, from_run: bool = False, data_help: str | None = None) -> None:
    group = parser.add_argument_group("data")
    default, shown = _default("rotten_tomatoes", from_run)
    group.add_argument("--data", default=default,
                       help=data_help or "rotten_tomatoes, imdb, tweets (offline packaged), a .csv/.jsonl/.parquet "
                                         f"file, or hub:NAME[:CONFIG] {shown}")
    default, shown = _default("text", from_run)
    group.add_argument("--text-column", default=default, help=f"text column of a local file {shown}")
    default, shown = _default("label", from_run)
    group.add_argument("--label-column", default=default, help=f"label column of a local file {shown}")
    group.add_argument("--label-names", default=None,
                       help="comma-separated class names in label order, e.g. negative,positive "
                            "(default: " + ("the run's with --adapter RUN, else " if from_run else "") +
                            "inferred; 0/1 labels mean negative,positive)")
    default, shown = _default(0, from_run)
    group.add_argument("--split-seed", type=int, default=default,
                       help=f"seed of the stratified train/validation/test split {shown}")


def add_task_arguments(parser: argparse.ArgumentParser, from_run: bool = False) -> None:
    from afa_llm.config import TRUNCATIONS

    group = parser.add_argument_group("prompt")
    default, shown = _default("Review: {text}\nSentiment:", from_run, fmt="r")
    group.add_argument("--template", default=default, help=f"prompt template with one {{text}} slot {shown}")
    group.add_argument("--label-words", default=None,
                       help="comma-separated label words, one single-token word per class, in class order "
                            "(default: " + ("the run's with --adapter RUN, else " if from_run else "") +
                            "' '+class name, e.g. ' negative,positive' -> ' negative',' positive')")
    default, shown = _default(256, from_run)
    group.add_argument("--max-text-tokens", type=int, default=default,
                       help=f"longer texts are truncated inside the text; the template is never cut {shown}")
    default, shown = _default("head", from_run)
    group.add_argument("--truncation", default=default, choices=TRUNCATIONS,
                       help=f"keep the head of an over-long text, or its first quarter and last three quarters "
                            f"{shown}")


def split_list(value: str | None) -> list[str] | None:
    return [v for v in value.split(",")] if value else None


def label_words_for(names: list[str], spec: str | None) -> list[str]:
    from afa_llm.model.task import default_label_words

    if spec is None:
        return default_label_words(names)
    words = [w if w.startswith(" ") else " " + w for w in (w.strip() for w in spec.split(","))]
    if len(words) != len(names):
        raise UserError(f"--label-words gives {len(words)} words but the data has {len(names)} classes {names}")
    return words


def load_data_from_args(args):
    from afa_llm.data.loading import load_sentiment_data

    return load_sentiment_data(
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        label_names=split_list(args.label_names),
        split_seed=args.split_seed,
    )


def class_names_for(label_names: list[str] | None, label_words: str | None) -> list[str]:
    """Class names where no labelled data gives them: the saved names, else the label words, else neg/pos."""
    if label_names:
        return list(label_names)
    if label_words:
        return [w.strip() for w in label_words.split(",")]
    return ["negative", "positive"]


def build_task(args, label_names: list[str], tokenizer):
    from afa_llm.model.task import PromptTask

    task = PromptTask(label_words_for(label_names, args.label_words), template=template_of(args),
                      max_text_tokens=args.max_text_tokens, truncation=args.truncation)
    return task.bind(tokenizer)


def template_of(args) -> str:
    """The prompt template of ``args``, with a typed ``\\n`` read as a newline."""
    return args.template.replace("\\n", "\n")


def scorer_record(args, label_names: list[str], act) -> dict:
    """What an eval report records about how it scored: model, adapter, data rows, prompt, ACT
    (`afa-llm predict`'s namespace has no data rows or shots: those stay None / 0)."""
    return {
        "model": args.model, "adapter": args.adapter, "quantization": args.quantization, "dtype": args.dtype,
        **{key: getattr(args, key, None) for key in ("data", "split", "split_seed")},
        "template": template_of(args), "label_words": label_words_for(label_names, args.label_words),
        "label_names": label_names, "max_text_tokens": args.max_text_tokens, "truncation": args.truncation,
        "shots": getattr(args, "shots", 0), "act": act.summary(args.act) if act else None,
    }


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("label-prior correction (afa_llm.evaluation.prior)")
    group.add_argument("--prior-from", default=None, metavar="REPORT.json",
                       help="fit a label-prior correction on the probabilities of this `afa-llm eval --output` "
                            "report (same model, adapter and prompt on another split, e.g. --split validation) "
                            "and apply it")
    group.add_argument("--prior-correction", default=None, choices=["normalize", "offset"],
                       help="normalize: equal mean probability per class on the fitting rows (label-free); "
                            "offset: the log-odds shift with the best accuracy there (two classes) "
                            "(default with --prior-from: normalize)")


def check_prior_args(args) -> None:
    """The prior flags and the ``--prior-from`` file alone, before any data or model loads (the
    check against the scorer waits for the data set's class names: `fit_prior_from_args`)."""
    from afa_llm.evaluation.prior import check_classes, load_fit_report

    if args.prior_correction and not args.prior_from:
        raise UserError("--prior-correction needs --prior-from REPORT.json, the report to fit it on")
    if args.prior_from:
        check_classes(args.prior_correction, len(load_fit_report(args.prior_from)["probabilities"][0]),
                      args.prior_from)


def fit_prior_from_args(args, scorer: dict) -> dict | None:
    """The label-prior correction of ``--prior-from``, checked against ``scorer`` (`scorer_record`) and
    fitted, before any model loads."""
    from afa_llm.evaluation.prior import check_fit_report, fit_from_report, load_fit_report

    if not args.prior_from:
        return None
    fit = load_fit_report(args.prior_from)
    check_fit_report(fit, scorer, args.prior_from)
    return fit_from_report(fit, args.prior_correction or "normalize", args.prior_from)


# ---- eval -----------------------------------------------------------------------------
def add_scorer_arguments(parser: argparse.ArgumentParser, data_help: str | None = None) -> None:
    """--model, --adapter, data and prompt options whose defaults come from the run (`predict.resolve_run_args`)."""
    add_model_arguments(parser, from_run=True)
    parser.add_argument("--adapter", default=None,
                        help="a training run folder (its config.yaml gives the base model, prompt, and unless "
                             "--data names other data, the data set and split seed) or a peft adapter folder")
    add_data_arguments(parser, from_run=True, data_help=data_help)
    add_task_arguments(parser, from_run=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scorer_arguments(parser)
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
                             "probabilities, expected calibration error `ece` and Brier score `brier`)")
    parser.add_argument("--reliability-plot", default=None, metavar="FILE.png",
                        help="also draw the reliability diagram (accuracy per confidence bin, the 15 bins of "
                             "the expected calibration error) to this .png/.pdf/.svg file")
    add_act_argument(parser)
    add_prior_arguments(parser)
    add_focus_metric_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_focus_metric_arguments(parser: argparse.ArgumentParser, focus_n: int | None = 256) -> None:
    group = parser.add_argument_group("focus metrics (afa_llm.evaluation.focus_metrics)")
    if focus_n is not None:
        group.add_argument("--focus-n", type=int, default=focus_n,
                           help="score the focus of the first N rows against human-rated (VADER) words; 0: skip "
                                "(not with --act or --shots) (default: %(default)s)")
    group.add_argument("--faithfulness-n", type=int, default=64,
                       help="of those, the first N also get comprehensiveness and sufficiency against random "
                            "tokens (extra forward passes); 0: skip (default: %(default)s)")
    group.add_argument("--lexicon-threshold", type=float, default=1.0,
                       help="a word is sentiment-bearing if its VADER |mean valence| >= this (default: %(default)s)")


def add_act_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="apply an ACT attention-sink calibration written by `afa-llm calibrate` (refused if "
                             "it was made for another model or adapter)")


def check_eval_args(args) -> None:
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
    check_prior_args(args)
    check_focus_metric_args(args)
    if args.output:
        check_writable_file(args.output, "--output")
    if args.reliability_plot:
        if os.path.splitext(args.reliability_plot)[1].lower() not in PLOT_SUFFIXES:
            raise UserError(f"--reliability-plot must end in {', '.join(PLOT_SUFFIXES)}: {args.reliability_plot}")
        check_writable_file(args.reliability_plot, "--reliability-plot")


def check_focus_metric_args(args) -> None:
    if getattr(args, "focus_n", 0) < 0 or args.faithfulness_n < 0:
        raise UserError("--focus-n and --faithfulness-n must be 0 (skip) or a positive number of rows")
    if not 0 <= args.lexicon_threshold <= 4:
        raise UserError("--lexicon-threshold must be in [0, 4] (VADER valences run from -4 to 4)")


def rows_to_score(args, data):
    """The rows `afa-llm eval` scores, and a record of which they are (for the report)."""
    total = len(data.split("all"))
    split = data.split(args.split)
    if len(split) == 0:
        raise UserError(f"{args.data}: the seeded {args.split} split is empty: {total} rows are too few to split "
                        "(the test split takes 15% of each class, the validation split 10%); "
                        "score every row with --split all")
    if args.limit:
        split = split.select(range(min(args.limit, len(split))))
    which = "all rows" if args.split == "all" else f"the seeded {args.split} split (split seed {args.split_seed})"
    which += f", the first {len(split)} (--limit)" if args.limit else ""
    return split, {"rows": which, "n": len(split), "of": total, "limit": args.limit}


def load_scorer(args, label_names: list[str]):
    """The model (+ ``args.adapter``) and its bound prompt task for eval-style ``args``.

    The adapter folder and the label words are checked before the weights load, so a
    typo costs no loading time.
    """
    from afa_llm.evaluation.evaluate import attach_adapter, resolve_adapter_dir
    from afa_llm.model.loading import load_model, load_model_tokenizer

    if args.adapter:
        resolve_adapter_dir(args.adapter)
    task = build_task(args, label_names, load_model_tokenizer(args.model))
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model, quantization=args.quantization, dtype=args.dtype)
    task.bind(tokenizer)
    if args.adapter:
        model = attach_adapter(model, args.adapter)
    return model, task


def run(args) -> int:
    from afa_llm.evaluation.evaluate import evaluate_dataset, format_report

    from afa_llm.act.calibration import act_enabled, load_act

    from afa_llm.evaluation.focus_metrics import focus_metrics, format_focus_metrics
    from afa_llm.inference.predict import resolve_run_args
    from afa_llm.evaluation.prior import correct_report
    from afa_llm.provenance import machine_record

    check_eval_args(args)
    cfg, _ = resolve_run_args(args)
    act = load_act(args.act) if args.act else None
    data = load_data_from_args(args)
    split, scored = rows_to_score(args, data)
    scorer = scorer_record(args, data.label_names, act)
    correction = fit_prior_from_args(args, scorer)
    model, task = load_scorer(args, data.label_names)
    with act_enabled(model, act, args.act):
        report = evaluate_dataset(model, task, split, data.label_names, batch_size=args.batch_size,
                                  shots=args.shots, demo_pool=data.split("train"), seed=args.seed,
                                  progress=not args.no_progress)
    report.update({**scorer, "scored": scored, "machine": machine_record()})
    title = f"{args.model}{' + ' + args.adapter if args.adapter else ''} on {args.data}/{args.split}"
    if act:
        title += f" + ACT ({act.n_heads} heads, beta {act.beta}, tau {act.tau}: {args.act})"
    title += f"\nscored {scored['n']} of {scored['of']} rows: {scored['rows']}"
    if correction:
        report = correct_report(report, correction, data.label_names)
        title += (f"\nlabel-prior correction ({correction['method']}, fitted on {correction['fitted_n']} rows: "
                  f"{args.prior_from}); without it: accuracy={report['prior_correction']['uncorrected']['accuracy']:.4f}"
                  f"  macro_f1={report['prior_correction']['uncorrected']['macro_f1']:.4f}")
    if args.focus_n and not act and not args.shots:  # focus of the plain prompt: not under ACT, not few-shot
        report["focus_metrics"] = focus_metrics(
            model, task, list(split["text"][: args.focus_n]), threshold=args.lexicon_threshold,
            faithfulness_n=args.faithfulness_n, batch_size=args.batch_size,
            focus_layers=cfg.focus_layers if cfg is not None else None, seed=args.seed)
    print(format_report(report, data.label_names, title=title))
    if "focus_metrics" in report:
        print(format_focus_metrics(report["focus_metrics"]))
    if args.output:
        write_json(args.output, report)
    if args.reliability_plot:
        from afa_llm.evaluation.reliability import write_reliability_plot

        write_reliability_plot(report["probabilities"], report["labels"], args.reliability_plot, title=title)
    return 0


# ---- entry point ----------------------------------------------------------------------
class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors print one line on stderr and exit 2, like `UserError` (no usage dump)."""

    def error(self, message: str):
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

"""The option groups that several commands share, and turning parsed options into typed requests.

With ``from_run``, an option left out is None and filled in later from the run that ``--adapter``
names (its config.yaml), else from the default shown (`afa_llm.runs.resolve_scorer`).
"""

from __future__ import annotations

import argparse

from afa_llm.defaults import (DEFAULT_DATA, DEFAULT_DTYPE, DEFAULT_MODEL, DEFAULT_TEMPLATE, DEFAULT_TRUNCATION,
                              DTYPE_NAMES, EVAL_MAX_TEXT_TOKENS, FAITHFULNESS_ROWS, FOCUS_FAITHFULNESS_ROWS,
                              FOCUS_METRIC_ROWS, LABEL_COLUMN, LEXICON_THRESHOLD, QUANTIZATIONS, SCORING_QUANTIZATION,
                              TEXT_COLUMN, TRUNCATIONS)
from afa_llm.deprecations import notice, truncation_name
from afa_llm.errors import UserError
from afa_llm.specs import DATA_KEYS, SCORER_KEYS, Resolved


def _default(value, from_run: bool, fmt: str = "s") -> tuple:
    shown = f"%(default){fmt}" if not from_run else (repr(value) if fmt == "r" else str(value))
    return (None, f"(default: the run's with --adapter RUN, else {shown})") if from_run else \
        (value, f"(default: {shown})")


def add_model_arguments(parser: argparse.ArgumentParser, default_quantization: str = SCORING_QUANTIZATION,
                        from_run: bool = False) -> None:
    group = parser.add_argument_group("model")
    default, shown = _default(DEFAULT_MODEL, from_run)
    group.add_argument("--model", default=default,
                       help="built-in name (smollm2-135m, gemma3-270m), a local HF folder, a .gguf file, "
                            f"or a hub id {shown}")
    default, shown = _default(default_quantization, from_run)
    group.add_argument("--quantization", default=default, choices=QUANTIZATIONS,
                       help=f"load the base in bitsandbytes 4-bit (nf4), 8-bit, or full precision {shown}")
    default, shown = _default(DEFAULT_DTYPE, from_run)
    group.add_argument("--dtype", default=default, choices=DTYPE_NAMES,
                       help=f"weight / compute dtype {shown}")


def add_data_arguments(parser: argparse.ArgumentParser, from_run: bool = False, data_help: str | None = None) -> None:
    group = parser.add_argument_group("data")
    default, shown = _default(DEFAULT_DATA, from_run)
    group.add_argument("--data", default=default,
                       help=data_help or "rotten_tomatoes, imdb, tweets (offline packaged), a .csv/.jsonl/.parquet "
                                         f"file, or hub:NAME[:CONFIG] {shown}")
    default, shown = _default(TEXT_COLUMN, from_run)
    group.add_argument("--text-column", default=default, help=f"text column of a local file {shown}")
    default, shown = _default(LABEL_COLUMN, from_run)
    group.add_argument("--label-column", default=default, help=f"label column of a local file {shown}")
    group.add_argument("--label-names", default=None,
                       help="comma-separated class names in label order, e.g. negative,positive "
                            "(default: " + ("the run's with --adapter RUN, else " if from_run else "") +
                            "inferred; 0/1 labels mean negative,positive)")
    default, shown = _default(0, from_run)
    group.add_argument("--split-seed", type=int, default=default,
                       help=f"seed of the stratified train/validation/test split {shown}")
    for split in ("validation", "test"):
        group.add_argument(f"--{split}-data", default=None, metavar="FILE",
                           help=f"your own {split} split: a .csv/.jsonl/.parquet file (or a save_to_disk folder) "
                                f"with --data's columns, read instead of the seeded {split} split (default: "
                                + ("the run's with --adapter RUN, else " if from_run else "") + "none)")


def add_task_arguments(parser: argparse.ArgumentParser, from_run: bool = False) -> None:
    group = parser.add_argument_group("prompt")
    default, shown = _default(DEFAULT_TEMPLATE, from_run, fmt="r")
    group.add_argument("--template", default=default, help=f"prompt template with one {{text}} slot {shown}")
    group.add_argument("--label-words", default=None,
                       help="comma-separated label words, one per class, in class order; a word may be several "
                            "tokens (scored by its summed log-probability) (default: " +
                            ("the run's with --adapter RUN, else " if from_run else "") +
                            "' '+class name, e.g. ' negative,positive' -> ' negative',' positive')")
    group.add_argument("--length-normalize", action="store_const", const=True, default=None,
                       help="label words of several tokens: divide the log-probability by the token count"
                            + (" (default: the run's, else summed)" if from_run else " (default: summed)"))
    default, shown = _default(EVAL_MAX_TEXT_TOKENS, from_run)
    group.add_argument("--max-text-tokens", type=int, default=default,
                       help=f"longer texts are truncated inside the text; the template is never cut {shown}")
    default, shown = _default(DEFAULT_TRUNCATION, from_run)
    group.add_argument("--truncation", default=default, choices=TRUNCATIONS, type=truncation_name,
                       help=f"how an over-long text is cut: start keeps its first --max-text-tokens tokens, "
                            f"start_end its first quarter and last three quarters {shown}")


class DeprecatedFlag(argparse.Action):
    """An old flag that works for one release (not shown in --help): a one-line notice on stderr, then it sets
    what ``new_flag`` sets."""

    def __init__(self, option_strings: list[str], dest: str, new_flag: str, **kwargs) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        notice(option_string, self.new_flag)
        setattr(namespace, self.dest, values)


def add_deprecated_flag(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """``old`` as a hidden alias of the option ``new`` (same value, same checks) for one release."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, action=DeprecatedFlag, new_flag=new, **kwargs)


def add_scorer_arguments(parser: argparse.ArgumentParser, data_help: str | None = None) -> None:
    """--model, --adapter, data and prompt options whose defaults come from the run (`afa_llm.runs.resolve_scorer`)."""
    add_model_arguments(parser, from_run=True)
    parser.add_argument("--adapter", default=None,
                        help="a training run folder (its config.yaml gives the base model, prompt, and unless "
                             "--data names other data, the data set and split seed) or a peft adapter folder")
    add_adapter_scale_argument(parser)
    add_data_arguments(parser, from_run=True, data_help=data_help)
    add_task_arguments(parser, from_run=True)


ADAPTER_SCALE_HELP = ("WiSE-FT weight interpolation (Wortsman et al., CVPR 2022): the adapter's LoRA update "
                      "times ALPHA, a number in [0, 1]; 0 is the base model, 1 the adapter as trained. A "
                      "classifier head (head=classifier) is a trained layer, not a LoRA update: it is kept "
                      "as trained at every ALPHA, so 0 is the base with that head. ")


def add_adapter_scale_argument(parser: argparse.ArgumentParser, merging: bool = False) -> None:
    """``--adapter-scale ALPHA``: a scoring (or merging) choice, never a run's; needs an adapter."""
    what = ("The merged folder scores as the adapter at this ALPHA, and afa_merge.json records it"
            if merging else "Needs --adapter (a merged folder has its scale folded in); reports record it")
    parser.add_argument("--adapter-scale", type=adapter_scale, default=1.0, metavar="ALPHA",
                        help=ADAPTER_SCALE_HELP + what + " (default: %(default)s)")


def adapter_scale(text: str) -> float:
    """An ``--adapter-scale`` value: a number in [0, 1] (argparse prints the error on one line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (0: the base model, 1: the adapter), "
                                         f"got {text!r}")
    return value


def add_act_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="apply an ACT attention-sink calibration written by `afa-llm calibrate` (refused if "
                             "it was made for another model or adapter)")


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("label-prior correction and temperature scaling (afa_llm.evaluation.prior)")
    group.add_argument("--prior-from", default=None, metavar="REPORT.json",
                       help="fit a correction of the probabilities on this `afa-llm eval --output` "
                            "report (same model, adapter and prompt on another split, e.g. --split validation) "
                            "and apply it")
    group.add_argument("--prior-correction", default=None, choices=["normalize", "offset", "temperature"],
                       help="normalize: equal mean probability per class on the fitting rows (label-free); "
                            "offset: the log-odds shift with the best accuracy there (two classes); "
                            "temperature: the one scale of the log-probabilities with the lowest NLL there "
                            "(temperature scaling for confidence calibration: no prediction changes) "
                            "(default with --prior-from: normalize)")


def check_prior_args(args: argparse.Namespace) -> None:
    """The prior flags and the ``--prior-from`` file alone, before any data or model loads (the
    check against the scorer waits for the data set's class names: `fit_prior`)."""
    from afa_llm.evaluation.prior import check_classes, load_fit_report

    if args.prior_correction and not args.prior_from:
        raise UserError("--prior-correction needs --prior-from REPORT.json, the report to fit it on")
    if args.prior_from:
        check_classes(args.prior_correction, len(load_fit_report(args.prior_from)["probabilities"][0]),
                      args.prior_from)


def add_focus_metric_arguments(parser: argparse.ArgumentParser, focus_n: int | None = FOCUS_METRIC_ROWS,
                               faithfulness_n: int = FAITHFULNESS_ROWS) -> None:
    """--focus-n (None: the command has its own row count), --faithfulness-n and --lexicon-threshold."""
    group = parser.add_argument_group("focus metrics (afa_llm.evaluation.focus_metrics)")
    if focus_n is not None:
        group.add_argument("--focus-n", type=int, default=focus_n,
                           help="score the focus of the first N rows against human-rated (VADER) words; read off "
                                "the scoring pass, it costs no extra forward pass (a few percent of the scoring "
                                "time); 0: skip (not with --act or --shots) (default: %(default)s)")
    group.add_argument("--faithfulness-n", type=int, default=faithfulness_n,
                       help="of those, the first N also get comprehensiveness and sufficiency against random "
                            "tokens: about 30 extra forward passes per row (each row scored as 30 masked "
                            f"copies; {FOCUS_FAITHFULNESS_ROWS} rows cost about twice scoring 1,000); 0: skip "
                            "(default: %(default)s)")
    group.add_argument("--lexicon-threshold", type=float, default=LEXICON_THRESHOLD,
                       help="a word is sentiment-bearing if its VADER |mean valence| >= this (default: %(default)s)")


def check_focus_metric_args(args: argparse.Namespace) -> None:
    if getattr(args, "focus_n", 0) < 0 or args.faithfulness_n < 0:
        raise UserError("--focus-n and --faithfulness-n must be 0 (skip) or a positive number of rows")
    if not 0 <= args.lexicon_threshold <= 4:
        raise UserError("--lexicon-threshold must be in [0, 4] (VADER valences run from -4 to 4)")


# ---- parsed options -> typed requests ---------------------------------------------------------
# the ScorerSpec and DataSpec fields, so a field added there is read here too; --model and --adapter name
# the source (resolve_scorer's own arguments), and an option a command lacks (``head`` has no flag) reads None
SCORER_OPTIONS = tuple(key for key in SCORER_KEYS if key not in ("model", "adapter"))
DATA_OPTIONS = DATA_KEYS


def given_options(args: argparse.Namespace) -> dict:
    """The scorer and data options of ``args`` that were given (None: left to the run or the default);
    a typed ``\\n`` in --template is a newline."""
    given = {key: getattr(args, key, None) for key in (*SCORER_OPTIONS, *DATA_OPTIONS)}
    if given["template"] is not None:
        given["template"] = given["template"].replace("\\n", "\n")
    return given


def resolve(args: argparse.Namespace, require_source: bool = False) -> Resolved:
    """`afa_llm.runs.resolve_scorer` for the options of ``args``."""
    from afa_llm.runs import resolve_scorer

    return resolve_scorer(getattr(args, "adapter", None), getattr(args, "model", None), given_options(args),
                          require_source=require_source)


def fit_prior(args: argparse.Namespace, record: dict) -> dict | None:
    """The label-prior correction of ``--prior-from``, checked against the scorer's ``record`` and
    fitted, before any model loads."""
    from afa_llm.evaluation.prior import prior_from_report

    return prior_from_report(args.prior_from, args.prior_correction, record) if args.prior_from else None

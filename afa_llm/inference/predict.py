"""``afa-llm predict``: classify new texts with a trained adapter or a merged model.

The prompt (template, label words, text budget, truncation) and the class names come
from what the model was trained with: a run folder's ``config.yaml`` / ``results.json``
(`afa_llm.inference.merge.RunInfo.settings`) or a merged folder's ``afa_merge.json``, so scoring
cannot silently drift from training. A plain ``--model`` with no adapter gets the
`afa-llm eval` defaults (zero-shot).

Input is read, scored and written ``--chunk-size`` rows at a time (pandas CSV chunks,
pyarrow parquet batches, JSONL or text lines), so memory does not grow with the file.
Within a chunk `afa_llm.evaluation.evaluate.predict_logits` sorts by length for less padding and
restores the order; the output has one row per input row, in input order, with every
input column plus ``predicted_label`` and one ``prob_<class>`` column per class (the
softmax of the class logits).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np
import pandas as pd

from afa_llm.data.loading import READ_ERRORS, first_line
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_writer, check_writable_file

PRED_COLUMN = "predicted_label"
OUTPUT_SUFFIXES = (".csv", ".jsonl")
TEXT_LINE_SUFFIXES = (".txt",)
EMPTY_NOTE = ("Rows whose text is empty (or missing) are not scored: they keep their place in the output with an "
              f"empty {PRED_COLUMN} and empty probabilities, and their count is printed on stderr.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EMPTY_NOTE
    parser.add_argument("--adapter", default=None,
                        help="a training run folder (its config.yaml gives the base model, prompt and class names) "
                             "or a peft adapter folder (then give --model)")
    parser.add_argument("--model", default=None,
                        help="a model spec: a folder from `afa-llm merge` (it keeps its run's prompt and class "
                             "names), a built-in name, a local HF folder or a .gguf file (default: the run's model)")
    parser.add_argument("--quantization", default=None, choices=["nf4", "int8", "none"],
                        help="how to load the base (default: the run's quantization, else none)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="weight / compute dtype (default: the run's dtype, else fp32)")
    parser.add_argument("--data", required=True,
                        help="a .csv, .jsonl or .parquet file (no labels needed), a .txt file with one text per "
                             "line, or - for one text per line on stdin (empty texts: see below)")
    parser.add_argument("--text-column", default="text",
                        help="the column holding the texts; text lines become this column (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="write the predictions to this .csv or .jsonl file, atomically "
                             "(default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=10000,
                        help="rows read, scored and written at a time; memory stays bounded by this, not the "
                             "input size (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (stderr)")
    from afa_llm.cli import add_act_argument, add_prior_arguments

    add_act_argument(parser)
    add_prior_arguments(parser)


# ---- settings -----------------------------------------------------------------------------
def resolve_settings(args) -> tuple[argparse.Namespace, list[str]]:
    """An `afa-llm eval`-style namespace (model, adapter, prompt) and the class names."""
    from afa_llm.cli import class_names_for
    from afa_llm.evaluation.leaderboard import eval_defaults
    from afa_llm.inference.merge import base_model_spec, find_run, read_merge_info

    if not args.adapter and not args.model:
        raise UserError("give --adapter RUN (a training run folder) or --model SPEC (e.g. a merged folder)")
    scorer, saved, run_config = eval_defaults(), {}, None
    scorer.adapter = None
    if args.adapter:
        run = find_run(args.adapter)
        scorer.adapter, saved, run_config = str(run.adapter_dir), run.settings(), run.config
        if not saved:
            print(f"note: {args.adapter} is a bare adapter with no run settings; using the default prompt",
                  file=sys.stderr)
        saved["model"] = base_model_spec(run, args.model)
    else:
        info = read_merge_info(args.model) or {}
        saved = {key: info.get(key) for key in ("template", "label_words", "max_text_tokens", "truncation",
                                                "label_names")}
        saved["model"] = args.model
    if isinstance(saved.get("label_words"), list):  # afa_merge.json keeps the config's list
        saved["label_words"] = ",".join(saved["label_words"])
    for key, value in saved.items():
        if value is not None and key != "label_names":
            setattr(scorer, key, value)
    scorer.quantization = args.quantization or getattr(run_config, "quantization", None) or "none"
    scorer.dtype = args.dtype or getattr(run_config, "dtype", None) or "fp32"
    scorer.no_progress = getattr(args, "no_progress", False)  # `afa-llm focus` has no progress bar
    return scorer, class_names_for(saved.get("label_names"), scorer.label_words)


RUN_DATA_KEYS = ("data", "text_column", "label_column", "label_names", "split_seed")  # from the run's own data
RUN_MODEL_KEYS = ("model", "adapter", "quantization", "dtype", "template", "label_words", "max_text_tokens",
                  "truncation")


def resolve_run_args(args) -> tuple[object, bool]:
    """Fill the options of an eval-style ``args`` left unset (None) in place; returns the run's
    config (None without a run folder) and whether the data scored is the run's own.

    With ``--adapter RUN``: the base model, quantization, dtype and prompt come from the run (a
    merged folder given as ``--model`` brings its run's prompt); the data set, its columns,
    class names and split seed too when ``--data`` is unset or names the run's data. Options
    given on the command line always win; anything still unset gets `afa-llm eval`'s default.
    """
    from afa_llm.config import PROMPT_KEYS
    from afa_llm.evaluation.leaderboard import eval_defaults
    from afa_llm.inference.merge import find_run

    prompt = {key: getattr(args, key) for key in PROMPT_KEYS}
    if not args.adapter and not args.model:
        args.model = eval_defaults().model
    scorer, _ = resolve_settings(args)  # starts from eval's defaults: the data keys are still those
    for key, value in prompt.items():  # given on the command line: wins over the run's
        if value is not None:
            setattr(scorer, key, value)
    cfg = find_run(args.adapter).config if args.adapter else None
    own_data = cfg is not None and args.data in (None, cfg.data)
    for key in RUN_DATA_KEYS:
        if getattr(args, key) is not None:
            setattr(scorer, key, getattr(args, key))
        elif own_data:
            setattr(scorer, key, getattr(cfg, key))
    if isinstance(scorer.label_names, list):
        scorer.label_names = ",".join(scorer.label_names)
    for key in (*RUN_MODEL_KEYS, *RUN_DATA_KEYS):
        setattr(args, key, getattr(scorer, key))
    return cfg, own_data


# ---- reading -----------------------------------------------------------------------------
def _line_chunks(handle: IO[str], column: str, size: int) -> Iterator[pd.DataFrame]:
    while lines := list(itertools.islice(handle, size)):
        yield pd.DataFrame({column: [line.rstrip("\r\n") for line in lines]})


def _jsonl_chunks(handle: IO[str], source: str, size: int) -> Iterator[pd.DataFrame]:
    numbered = ((i, line) for i, line in enumerate(handle, start=1) if line.strip())  # blank lines are no rows
    while lines := list(itertools.islice(numbered, size)):
        records = []
        for number, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"cannot read {source}: line {number} is not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise UserError(f"cannot read {source}: line {number} is not a JSON object")
            records.append(record)
        yield pd.DataFrame.from_records(records)


def _parquet_chunks(path: Path, size: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
        yield batch.to_pandas()


def read_chunks(spec: str, text_column: str, size: int) -> Iterator[pd.DataFrame]:
    """The input as DataFrames of at most ``size`` rows; read errors become one-line UserErrors."""
    if spec == "-":
        yield from _line_chunks(sys.stdin, text_column, size)
        return
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"data file not found: {spec} (give a .csv/.jsonl/.parquet/.txt file, or - for stdin)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":  # strings as written, so the input columns come back unchanged
            with pd.read_csv(path, chunksize=size, dtype=str, keep_default_na=False) as reader:
                yield from reader
        elif suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as handle:
                yield from _jsonl_chunks(handle, spec, size)
        elif suffix == ".parquet":
            yield from _parquet_chunks(path, size)
        elif suffix in TEXT_LINE_SUFFIXES:
            with open(path, encoding="utf-8") as handle:
                yield from _line_chunks(handle, text_column, size)
        else:
            raise UserError(f"unsupported data file type {suffix!r} for {spec}; use .csv, .jsonl, .parquet or .txt")
    except READ_ERRORS as exc:
        raise UserError(f"cannot read {spec}: {first_line(exc)}") from exc


def _text(value) -> str:
    """A cell as text; None / NaN / whitespace-only count as empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value)
    return text if text.strip() else ""


# ---- scoring and writing --------------------------------------------------------------------
def predict_chunk(model, task, label_names: list[str], frame: pd.DataFrame, text_column: str,
                  batch_size: int, bar, prior: dict | None = None) -> tuple[pd.DataFrame, int]:
    """``frame`` plus the prediction columns; also returns how many rows had empty text.

    With a label-prior correction (`afa_llm.evaluation.prior`) the probabilities and labels are the corrected ones."""
    from afa_llm.evaluation.evaluate import predict_logits
    from afa_llm.evaluation.metrics import softmax
    from afa_llm.evaluation.prior import apply_correction

    texts = [_text(v) for v in frame[text_column]]
    keep = np.flatnonzero([bool(t) for t in texts])
    probs = np.full((len(texts), len(label_names)), np.nan)
    predicted = np.full(len(texts), "", dtype=object)
    if len(keep):
        logits = predict_logits(model, task, [texts[i] for i in keep], batch_size=batch_size, bar=bar)
        scores = softmax(logits) if prior is None else apply_correction(softmax(logits), prior)
        probs[keep] = scores.round(6)
        predicted[keep] = [label_names[c] for c in scores.argmax(-1)]
    bar.update(len(texts) - len(keep))  # empty rows are done too
    out = frame.copy()
    out[PRED_COLUMN] = predicted
    for c, name in enumerate(label_names):
        out[f"prob_{name}"] = probs[:, c]
    return out, len(texts) - len(keep)


class ChunkWriter:
    """Appends prediction chunks as CSV (columns fixed by the first chunk) or JSONL records."""

    def __init__(self, handle: IO[str], fmt: str):
        self.handle, self.fmt, self.columns = handle, fmt, None

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "jsonl":
            records = frame.astype(object).where(frame.notna(), None).to_dict("records")
            self.handle.writelines(json.dumps(r, ensure_ascii=False, default=_json_value) + "\n" for r in records)
            return
        header = self.columns is None
        if header:
            self.columns = list(frame.columns)
        frame.reindex(columns=self.columns).to_csv(self.handle, index=False, header=header)


def _json_value(value):
    """numpy scalars and other non-JSON cell values (parquet timestamps...) as plain values."""
    return value.item() if hasattr(value, "item") else str(value)


def predict_stream(model, task, label_names: list[str], chunks: Iterable[pd.DataFrame], writer: ChunkWriter,
                   args, prior: dict | None = None) -> tuple[int, int]:
    """Score and write every chunk; returns (rows, rows with empty text)."""
    from tqdm.auto import tqdm

    rows = empty = 0
    with tqdm(desc="predict", unit="row", disable=args.no_progress, file=sys.stderr) as bar:
        for frame in chunks:
            out, n_empty = predict_chunk(model, task, label_names, frame, args.text_column, args.batch_size, bar,
                                         prior)
            writer.write(out)
            rows, empty = rows + len(out), empty + n_empty
    return rows, empty


# ---- CLI ------------------------------------------------------------------------------
def _check_args(args) -> None:
    from afa_llm.cli import check_prior_args

    if args.batch_size <= 0 or args.chunk_size <= 0:
        raise UserError("--batch-size and --chunk-size must be positive")
    check_prior_args(args)
    if args.output:
        if Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
            raise UserError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}: {args.output}")
        check_writable_file(args.output, "--output")


def _first_chunk(args) -> Iterator[pd.DataFrame]:
    """The input stream, with its first chunk read and its text column checked (before any model loads)."""
    chunks = read_chunks(args.data, args.text_column, args.chunk_size)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"{args.data}: no rows to predict")
    if args.text_column not in first.columns:
        raise UserError(f"{args.data}: no column {args.text_column!r} (columns: "
                        f"{', '.join(map(str, first.columns))}); set --text-column")
    return itertools.chain([first], chunks)


def run(args) -> int:
    from afa_llm.act.calibration import act_enabled, load_act
    from afa_llm.cli import fit_prior_from_args, load_scorer, scorer_record

    _check_args(args)
    act = load_act(args.act) if args.act else None
    scorer, label_names = resolve_settings(args)
    scorer.act = args.act
    prior = fit_prior_from_args(args, scorer_record(scorer, label_names, act))
    chunks = _first_chunk(args)
    model, task = load_scorer(scorer, label_names)
    with act_enabled(model, act, args.act):
        if args.output:
            fmt = Path(args.output).suffix.lower().lstrip(".")
            with atomic_writer(args.output, newline="", encoding="utf-8") as handle:
                rows, empty = predict_stream(model, task, label_names, chunks, ChunkWriter(handle, fmt), args,
                                             prior)
            print(f"wrote {rows} predictions to {args.output}", file=sys.stderr)
        else:
            rows, empty = predict_stream(model, task, label_names, chunks, ChunkWriter(sys.stdout, "csv"), args, prior)
    if empty:
        print(f"{empty} of {rows} rows have empty text: they got no prediction (empty {PRED_COLUMN})",
              file=sys.stderr)
    return 0

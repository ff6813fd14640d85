"""``afa-llm predict``: classify new texts with a trained adapter or a merged model.

The prompt (template, label words, text budget, truncation) and the class names come
from what the model was trained with: a run folder's ``config.yaml`` / ``results.json``
(`afa_llm.runs.resolve_scorer`) or a merged folder's ``afa_merge.json``, so scoring
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

import itertools
import json
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from afa_llm.data.files import READ_ERRORS, TABLE_SUFFIXES, file_chunks, first_line
from afa_llm.defaults import TEXT_COLUMN
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_writer
from afa_llm.specs import Resolved

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm

    from afa_llm.model.task import PromptTask

PRED_COLUMN = "predicted_label"
OUTPUT_SUFFIXES = (".csv", ".jsonl")
TEXT_LINE_SUFFIXES = (".txt",)
EMPTY_NOTE = ("Rows whose text is empty (or missing) are not scored: they keep their place in the output with an "
              f"empty {PRED_COLUMN} and empty probabilities, and their count is printed on stderr.")


# ---- reading -----------------------------------------------------------------------------
def _line_chunks(handle: IO[str], column: str, size: int) -> Iterator[pd.DataFrame]:
    while lines := list(itertools.islice(handle, size)):
        yield pd.DataFrame({column: [line.rstrip("\r\n") for line in lines]})


def read_chunks(spec: str, text_column: str, size: int) -> Iterator[pd.DataFrame]:
    """The input as DataFrames of at most ``size`` rows; read errors become one-line UserErrors."""
    if spec == "-":
        yield from _line_chunks(sys.stdin, text_column, size)
        return
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"data file not found: {spec} (give a .csv/.jsonl/.parquet/.txt file, or - for stdin)")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:  # CSV cells as written, so the input columns come back unchanged
        yield from file_chunks(path, spec, size, as_written=True)
    elif suffix in TEXT_LINE_SUFFIXES:
        try:
            with open(path, encoding="utf-8") as handle:
                yield from _line_chunks(handle, text_column, size)
        except READ_ERRORS as exc:
            raise UserError(f"cannot read {spec}: {first_line(exc)}") from exc
    else:
        raise UserError(f"unsupported data file type {suffix!r} for {spec}; use .csv, .jsonl, .parquet or .txt")


def _text(value) -> str:
    """A cell as text; None / NaN / whitespace-only count as empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value)
    return text if text.strip() else ""


# ---- scoring and writing --------------------------------------------------------------------
def predict_texts(model: torch.nn.Module, task: PromptTask, label_names: Sequence[str], texts: Sequence,
                  batch_size: int = 32, bar: tqdm | None = None, prior: dict | None = None,
                  progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """The class probabilities of ``texts`` (one row per text, columns in ``label_names`` order) and their
    predicted class names: the one prediction function of `afa-llm predict` and the Python API
    (`afa_llm.api.Classifier`). An empty text (None, NaN, blanks) is not scored: a NaN row and "".

    With a `--prior-from` correction (label prior or temperature, `afa_llm.evaluation.prior`) the
    probabilities and labels are the corrected ones."""
    from afa_llm.evaluation.evaluate import predict_logits
    from afa_llm.evaluation.metrics import softmax
    from afa_llm.evaluation.prior import apply_correction

    texts = [_text(v) for v in texts]
    keep = np.flatnonzero([bool(t) for t in texts])
    probs = np.full((len(texts), len(label_names)), np.nan)
    predicted = [""] * len(texts)
    if len(keep):
        logits = predict_logits(model, task, [texts[i] for i in keep], batch_size=batch_size, bar=bar,
                                progress=progress, desc="predict")
        scores = softmax(logits) if prior is None else apply_correction(softmax(logits), prior)
        probs[keep] = scores
        for i, c in zip(keep, scores.argmax(-1)):
            predicted[i] = label_names[c]
    if bar is not None:
        bar.update(len(texts) - len(keep))  # empty rows are done too
    return probs, predicted


def predict_chunk(model: torch.nn.Module, task: PromptTask, label_names: list[str], frame: pd.DataFrame,
                  text_column: str, batch_size: int, bar: tqdm, prior: dict | None = None) -> tuple[pd.DataFrame, int]:
    """``frame`` plus the prediction columns (`predict_texts`); also returns how many rows had empty text."""
    probs, predicted = predict_texts(model, task, label_names, list(frame[text_column]), batch_size, bar, prior)
    out = frame.copy()
    out[PRED_COLUMN] = np.asarray(predicted, dtype=object)
    for c, name in enumerate(label_names):
        out[f"prob_{name}"] = probs[:, c].round(6)
    return out, predicted.count("")


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


def predict_stream(model: torch.nn.Module, task: PromptTask, label_names: list[str], chunks: Iterable[pd.DataFrame],
                   writer: ChunkWriter, text_column: str, batch_size: int = 32, prior: dict | None = None,
                   progress: bool = True) -> tuple[int, int, int]:
    """Score and write every chunk; returns (rows, rows with empty text, texts cut to the text budget)."""
    from tqdm.auto import tqdm

    rows = empty = cut = 0
    with tqdm(desc="predict", unit="row", disable=not progress, file=sys.stderr) as bar:
        for frame in chunks:
            out, n_empty = predict_chunk(model, task, label_names, frame, text_column, batch_size, bar, prior)
            writer.write(out)
            texts = [t for t in map(_text, frame[text_column]) if t]
            cut += round(task.truncated_share(texts) * len(texts))
            rows, empty = rows + len(out), empty + n_empty
    return rows, empty, cut


def first_chunk(data: str, text_column: str, chunk_size: int) -> Iterator[pd.DataFrame]:
    """The input stream, with its first chunk read and its text column checked (before any model loads)."""
    chunks = read_chunks(data, text_column, chunk_size)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"{data}: no rows to predict")
    if text_column not in first.columns:
        raise UserError(f"{data}: no column {text_column!r} (columns: "
                        f"{', '.join(map(str, first.columns))}); set --text-column")
    return itertools.chain([first], chunks)


@dataclass
class PredictRequest:
    resolved: Resolved
    data: str  # a file, or - for stdin
    text_column: str = TEXT_COLUMN
    output: str | None = None  # .csv or .jsonl; None: CSV on stdout
    batch_size: int = 32
    chunk_size: int = 10000
    act: str | None = None
    prior_from: str | None = None
    prior_correction: str | None = None
    progress: bool = True


def predict_file(request: PredictRequest) -> None:
    """Read, score and write ``request.data`` chunk by chunk; notes on stderr."""
    from afa_llm.act.calibration import act_enabled, load_act
    from afa_llm.evaluation.prior import prior_from_report
    from afa_llm.evaluation.report import truncation_note
    from afa_llm.model.adapters import load_scorer

    r, names = request, request.resolved.class_names
    act = load_act(r.act) if r.act else None
    record = r.resolved.scorer.record(names, act.summary(r.act) if act else None)
    prior = prior_from_report(r.prior_from, r.prior_correction, record) if r.prior_from else None
    chunks = first_chunk(r.data, r.text_column, r.chunk_size)
    model, task = load_scorer(r.resolved.scorer, names, progress=r.progress)
    with act_enabled(model, act, r.act):
        if r.output:
            fmt = Path(r.output).suffix.lower().lstrip(".")
            with atomic_writer(r.output, newline="", encoding="utf-8") as handle:
                rows, empty, cut = predict_stream(model, task, names, chunks, ChunkWriter(handle, fmt), r.text_column,
                                                  r.batch_size, prior, r.progress)
            print(f"wrote {rows} predictions to {r.output}", file=sys.stderr)
        else:
            rows, empty, cut = predict_stream(model, task, names, chunks, ChunkWriter(sys.stdout, "csv"),
                                              r.text_column, r.batch_size, prior, r.progress)
    if empty:
        print(f"{empty} of {rows} rows have empty text: they got no prediction (empty {PRED_COLUMN})",
              file=sys.stderr)
    truncation_note(cut, rows - empty, task.max_text_tokens)

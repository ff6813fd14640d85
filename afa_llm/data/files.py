"""Reading labelled tables from disk: CSV, JSON lines (or a JSON array in a ``.json``), Parquet, and
folders written by `datasets.Dataset.save_to_disk` / `datasets.DatasetDict.save_to_disk`.

One reader serves training and evaluation data (`read_table`, whole) and ``afa-llm predict``
(`file_chunks`, a chunk at a time); every failure is a one-line `UserError` naming the file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

import pandas as pd

from afa_llm.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
READ_ERRORS = (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError)  # what a bad file raises
WHOLE_FILE_CHUNK = 1 << 16  # rows per chunk when a table is read whole


def first_line(exc: BaseException) -> str:
    """An exception as one line (parser messages can span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _records(rows: Iterator[tuple[int, object]], source: str, size: int, unit: str) -> Iterator[pd.DataFrame]:
    """Numbered JSON values (``unit``: line or item), each a row object, as DataFrames of at most ``size`` rows."""
    while chunk := list(itertools.islice(rows, size)):
        for number, record in chunk:
            if not isinstance(record, dict):
                raise UserError(f"cannot read {source}: {unit} {number} is not a JSON object")
        yield pd.DataFrame.from_records([record for _, record in chunk])


def _json_lines(handle: IO[str], source: str) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(handle, start=1):
        if line.strip():  # blank lines are no rows
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"cannot read {source}: line {number} is not JSON ({exc.msg})") from exc


def _json_chunks(path: Path, source: str, size: int) -> Iterator[pd.DataFrame]:
    """JSON lines; a ``.json`` file that starts with ``[`` is one JSON array of row objects."""
    with open(path, encoding="utf-8") as handle:
        start = handle.read(256).lstrip()
        handle.seek(0)
        if path.suffix.lower() == ".json" and start.startswith("["):
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as exc:
                raise UserError(f"cannot read {source}: {exc}") from exc
            yield from _records(enumerate(rows, start=1), source, size, "item")
        else:
            yield from _records(_json_lines(handle, source), source, size, "line")


def _parquet_chunks(path: Path, size: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
        yield batch.to_pandas()


def file_chunks(path: Path, source: str, size: int, as_written: bool = False) -> Iterator[pd.DataFrame]:
    """A CSV / JSON / Parquet file (a `TABLE_SUFFIXES` suffix) as DataFrames of at most ``size`` rows.

    ``as_written``: CSV cells stay the strings written (``afa-llm predict`` hands its input columns back
    unchanged); otherwise pandas infers the column types, so 0/1 labels are numbers."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            options = {"dtype": str, "keep_default_na": False} if as_written else {}
            try:
                reader = pd.read_csv(path, chunksize=size, **options)
            except pd.errors.EmptyDataError:  # a 0-byte file: no rows (the caller says so)
                return
            with reader:
                yield from reader
        elif suffix in (".jsonl", ".json"):
            yield from _json_chunks(path, source, size)
        elif suffix == ".parquet":
            yield from _parquet_chunks(path, size)
        else:
            raise ValueError(f"not a table file: {suffix}")
    except READ_ERRORS as exc:
        raise UserError(f"cannot read {source}: {first_line(exc)}") from exc


def read_table_or_splits(path: str, what: str = "data", expected: str = "") -> pd.DataFrame | DatasetDict:
    """A local CSV / JSONL / Parquet file or a `Dataset.save_to_disk` folder as one table, whole; a
    `DatasetDict.save_to_disk` folder as it is. A one-line `UserError` (``what`` names the setting, e.g.
    ``test_data``; ``expected`` says what a path may be) if it is missing or unreadable."""
    file = Path(path)
    if file.is_dir():
        saved = load_saved(path, what)
        return saved.to_pandas() if hasattr(saved, "to_pandas") else saved
    if not file.exists():
        raise UserError(f"{what} file not found: {path}" + (f" ({expected})" if expected else ""))
    suffix = file.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"unsupported data file type {suffix!r} for {path}; use .csv, .jsonl or .parquet "
                        "(or a datasets save_to_disk folder)")
    chunks = list(file_chunks(file, path, WHOLE_FILE_CHUNK))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()


def read_table(path: str, what: str = "data", expected: str = "") -> pd.DataFrame:
    """`read_table_or_splits` where one table is needed (a DatasetDict folder is refused)."""
    table = read_table_or_splits(path, what, expected)
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{what}: {path} holds a DatasetDict ({', '.join(table)}); name one split's file or "
                        "a Dataset folder")
    return table


def load_saved(path: str, what: str = "data") -> Dataset | DatasetDict:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    from datasets import load_from_disk

    try:
        return load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"{what}: {path} is a folder but not one written by datasets' save_to_disk "
                        f"({first_line(exc)})") from exc

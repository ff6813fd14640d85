"""The parts of an evaluation report that every scoring command shares, and its text: which rows were
scored (`rows_to_score`), the share of texts cut to the text budget (`truncation_record`, `truncation_note`)
and the table that ``afa-llm eval`` prints (`format_report`). `afa_llm.evaluation.request` builds the
``eval`` report; `afa_llm.evaluation.evaluate` scores the rows."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

from afa_llm.data.loading import ClassificationData, check_splits_nonempty
from afa_llm.defaults import TRUNCATION_WARN_SHARE

if TYPE_CHECKING:
    from datasets import Dataset

    from afa_llm.model.task import PromptTask


def rows_to_score(data: ClassificationData, split_name: str, limit: int | None, data_name: str,
                  split_seed: int) -> tuple[Dataset, dict]:
    """The rows that are scored, and a record of which they are (for the report)."""
    check_splits_nonempty(data, [split_name], data_name, "score every row with --split all")
    split = data.split(split_name)
    if limit:
        split = split.select(range(min(limit, len(split))))
    given = data.given_splits.get(split_name)  # a split file of your own (validation_data, test_data)
    which = ("all rows" if split_name == "all" else f"the {split_name} split as given: {given}" if given
             else f"the seeded {split_name} split (split seed {split_seed})")
    which += f", the first {len(split)} (--limit)" if limit else ""
    return split, {"rows": which, "n": len(split), "of": len(data.split("all")), "limit": limit,
                   **({"file": given} if given else {})}


def warn_if_truncated(share: float, n: int, max_text_tokens: int) -> None:
    """A warning on stderr, naming the flag, when more than `TRUNCATION_WARN_SHARE` of the texts were cut."""
    if share > TRUNCATION_WARN_SHARE:
        print(f"warning: {share:.0%} of the {n} texts are longer than max_text_tokens={max_text_tokens} tokens and "
              "were cut; pass --max-text-tokens N to score more of each text", file=sys.stderr)


def truncation_record(task: PromptTask, texts: Sequence[str]) -> dict:
    """The share of ``texts`` cut to the text budget (warned about past `TRUNCATION_WARN_SHARE`)."""
    share = task.truncated_share(texts)
    warn_if_truncated(share, len(texts), task.max_text_tokens)
    return {"truncated_share": share, "max_text_tokens": task.max_text_tokens}


def truncation_note(cut: int, n: int, max_text_tokens: int) -> None:
    """For a stream (`afa-llm predict`): the count of texts cut, on stderr, and the warning."""
    share = cut / n if n else 0.0
    print(f"truncated: {cut} of {n} texts ({share:.1%}) exceed max_text_tokens={max_text_tokens}", file=sys.stderr)
    warn_if_truncated(share, n, max_text_tokens)


def format_report(report: dict, label_names: Sequence[str], title: str = "") -> str:
    """A plain-text table of a report (what `afa-llm eval` prints)."""
    lines = [title] if title else []
    lines.append(
        f"n={report['n']}  accuracy={report['accuracy']:.4f}  macro_f1={report['macro_f1']:.4f}  "
        f"ece={report['ece']:.4f}  brier={report['brier']:.4f}  examples/s={report['examples_per_second']:.1f}"
    )
    width = max(9, *(len(n) for n in label_names))
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for name in label_names:
        row = report["per_class"][name]
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}"
        )
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * (width + 2) + "  ".join(f"{n[:8]:>8}" for n in label_names))
    for name, row in zip(label_names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:8d}" for v in row))
    return "\n".join(lines)

"""The focus metrics every evaluation reports beside the fake-focus share: plausibility against
human-rated words (`afa_llm.evaluation.word_focus`) and faithfulness (`afa_llm.evaluation.faithfulness`).

Their cost (docs/PERFORMANCE.md): the lexicon metrics read the focus off the scoring pass, a few percent
of it; faithfulness scores each of its texts again as 30 masked copies, so it is opt-in
(``faithfulness_n``, `afa_llm.defaults.FAITHFULNESS_ROWS`)."""

from __future__ import annotations

from afa_llm.defaults import FAITHFULNESS_ROWS, LEXICON_THRESHOLD

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np
    import torch

    from afa_llm.model.task import PromptTask


def focus_metrics(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], *,
                  threshold: float = LEXICON_THRESHOLD, faithfulness_n: int = FAITHFULNESS_ROWS,
                  batch_size: int = 32, focus_layers: Sequence[int] | None = None, seed: int = 0,
                  focus_rows: Sequence[np.ndarray] | None = None) -> dict:
    """Lexicon share, lift and AUPRC on ``texts``; comprehensiveness and sufficiency (AOPC, and their
    gains over random tokens) on the first ``faithfulness_n`` of them (0: skipped).

    ``focus_rows``: the texts' focus, read off an evaluation's scoring pass
    (`afa_llm.evaluation.evaluate.evaluate_with_focus`); None: a pass of its own. ``batch_size`` is
    that pass's; faithfulness keeps its own smaller default, because each of its texts is scored as 30
    masked copies."""
    from afa_llm.evaluation.faithfulness import faithfulness
    from afa_llm.evaluation.word_focus import focus_lexicon, texts_lexicon_metrics

    texts = list(texts)
    if focus_rows is None:
        out = focus_lexicon(model, task, texts, threshold=threshold, batch_size=batch_size, focus_layers=focus_layers)
    else:
        out = texts_lexicon_metrics(task, texts, focus_rows, threshold)
    if faithfulness_n:
        out.update(faithfulness(model, task, texts[:faithfulness_n], seed=seed, focus_layers=focus_layers))
    return out


def format_focus_metrics(metrics: dict) -> str:
    """One line for a printed report."""
    def show(key: str) -> str:
        value = metrics.get(key)
        return "-" if value is None else f"{value:.3f}"

    line = (f"focus on VADER words (|valence| >= {metrics['lexicon_threshold']:g}, {metrics['lexicon_n']} texts): "
            f"share {show('lexicon_share')}, lift {show('lexicon_lift')}, AUPRC {show('lexicon_auprc')}")
    if "comprehensiveness" in metrics:
        line += (f"; faithfulness ({metrics['faithfulness_n']} texts, gain over random tokens): comprehensiveness "
                 f"{show('comprehensiveness')} ({metrics['comprehensiveness_gain']:+.3f}), sufficiency "
                 f"{show('sufficiency')} ({metrics['sufficiency_gain']:+.3f})")
    return line

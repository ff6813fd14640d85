"""The reliability diagram of `afa-llm eval --reliability-plot FILE.png`.

Top: accuracy per confidence bin (15 equal-width bins on the max probability, the bins
of the expected calibration error) against the diagonal of perfect confidence calibration, with
the gap to each bin's mean confidence shaded. Bottom: how many examples fall in each bin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from afa_llm.io_utils import atomic_path
from afa_llm.evaluation.metrics import ECE_BINS, expected_calibration_error, reliability_bins

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def write_reliability_plot(probs: np.ndarray, labels: Sequence[int], path: str | Path, title: str = "",
                           bins: int = ECE_BINS) -> None:
    """Draw the diagram with matplotlib's Agg canvas and write it atomically to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = reliability_bins(probs, labels, bins)
    filled = [row for row in table if row["count"]]
    width = 1.0 / bins
    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect confidence calibration")
    top.bar([row["low"] for row in filled], [row["accuracy"] for row in filled], width=width, align="edge",
            color="C0", edgecolor="black", label="accuracy")
    top.bar([row["low"] for row in filled], [row["confidence"] - row["accuracy"] for row in filled],
            bottom=[row["accuracy"] for row in filled], width=width, align="edge", color="C3", alpha=0.3,
            label="gap to mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = expected_calibration_error(probs, labels, bins)
    top.set_title(f"{title}\nECE {ece:.4f} ({bins} bins)" if title else f"ECE {ece:.4f} ({bins} bins)",
                  fontsize=9, parse_math=False)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([row["low"] for row in table], [row["count"] for row in table], width=width, align="edge",
               color="grey", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max class probability)")
    bottom.set_ylabel("examples")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)

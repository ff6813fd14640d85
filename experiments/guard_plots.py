"""The two plots of experiments/guard_report.py, drawn from numbers it has computed (no cell reading here).

- ``plot_frontier``: clean against anti accuracy, every variant and seed a point, each seed's weight-interpolation
  curve in grey and their mean as the frontier to beat;
- ``plot_gap_steps``: the validation gap (clean minus anti accuracy) against training steps, a line per cell.
"""

from __future__ import annotations

from pathlib import Path

Points = list[tuple[float, float]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: CI and the grid machines have no display
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(seed_curves: list[Points], mean_curve: Points, variants: dict[str, Points], path: Path) -> None:
    """``seed_curves``: (clean, anti) per interpolation scale, one list per seed; ``variants``: name -> a
    (clean, anti) point per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for curve in seed_curves:
        ax.plot(*zip(*curve), color="0.75", lw=1, zorder=1)
    ax.plot(*zip(*mean_curve), color="0.3", lw=2, marker="o", ms=3, zorder=2,
            label="weight interpolation (scale 0 to 1; mean, and each seed in grey)")
    for i, (name, points) in enumerate(variants.items()):
        ax.scatter(*zip(*points), s=28, zorder=3, label=name, color=plt.cm.tab10(i % 10))
    ax.set_xlabel("clean test accuracy")
    ax.set_ylabel("anti-view accuracy (the cue with the other class)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gap_steps(lines: dict[str, list[Points]], path: Path) -> bool:
    """``lines``: variant -> one (step, gap) line per seed. Writes nothing and returns False when every line is
    empty (cells from before the gap was logged)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for i, (variant, seed_lines) in enumerate(lines.items()):
        for k, points in enumerate(p for p in seed_lines if p):
            ax.plot(*zip(*points), marker="o", ms=3, color=plt.cm.tab10(i % 10), alpha=0.8,
                    label=None if k else variant)  # one legend entry per variant
            drawn = True
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel("validation gap (clean minus anti accuracy)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn

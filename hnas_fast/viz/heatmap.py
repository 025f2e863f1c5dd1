"""Operator-correlation heatmap (StacNAS Figure 1), with matplotlib alone."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["correlation_figure", "plot_correlation"]


def correlation_figure(
    corr: np.ndarray, ops: Sequence[str], groups: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
) -> Figure:
    """A heatmap of the ``[K, K]`` correlation matrix with each value written in its cell.

    With ``groups``, the ops are reordered so each group is contiguous and outlined by a box.
    """
    r = np.asarray(corr, dtype=np.float64)
    ops = list(ops)
    if r.shape != (len(ops), len(ops)):
        raise ValueError(f"correlation matrix of shape {r.shape} does not fit {len(ops)} ops")
    order = list(range(len(ops)))
    spans: list[tuple[int, int]] = []
    if groups:
        present = [[op for op in g if op in ops] for g in groups]
        present = [g for g in present if g]
        order = [ops.index(op) for g in present for op in g]
        order += [i for i in range(len(ops)) if i not in order]
        start = 0
        for g in present:
            spans.append((start, len(g)))
            start += len(g)
    r = r[np.ix_(order, order)]
    labels = [ops[i] for i in order]

    n = len(labels)
    fig = Figure(figsize=(1.2 + 0.9 * n, 0.9 + 0.8 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(r), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            v = r[i, j]
            text = "n/a" if not math.isfinite(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if math.isfinite(v) and abs(v) > 0.6 else "black")
    for start, size in spans:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, lw=2.0, ec="black"))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Pearson r")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_correlation(
    corr: np.ndarray, ops: Sequence[str], path: str | os.PathLike[str],
    groups: Sequence[Sequence[str]] | None = None, title: str | None = None, dpi: int = 120,
) -> Path:
    """Save :func:`correlation_figure` to ``path`` (PNG, PDF or SVG by suffix); returns the path."""
    p = Path(path)
    correlation_figure(corr, ops, groups, title).savefig(p, dpi=dpi, bbox_inches="tight")
    return p

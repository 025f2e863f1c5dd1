"""Normalized gradient confusion against search depth (StacNAS Table 6 as a plot)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["confusion_figure", "plot_confusion"]


def confusion_figure(match: Any) -> Figure:
    """The matched confusion (ζ/P or its cosine form) of the search settings against their depth, one line
    per width; the final network's value as a dashed line and the chosen setting starred. ``match`` is a
    :class:`~hnas_fast.analysis.confusion.DepthMatch` (or its ``to_dict()``)."""
    d = match.to_dict() if hasattr(match, "to_dict") else dict(match)
    rows, target, best = d["rows"], d["target"], tuple(d["best"])
    key = {"cosine": "zeta_cosine"}.get(d.get("criterion", "normalized"), "zeta_normalized")
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for width in sorted({r["channels"] for r in rows}):
        pts = sorted((r["cells"], r[key]) for r in rows if r["channels"] == width)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"search, C={width}")
    ax.axhline(target[key], color="black", ls="--",
               label=f"final {target['cells']} cells, C={target['channels']}")
    for r in rows:
        if (r["cells"], r["channels"]) == best:
            ax.plot([r["cells"]], [r[key]], marker="*", ms=16, color="crimson", ls="none",
                    label=f"match: {r['cells']} cells, C={r['channels']}")
    values = [abs(v) for v in [target[key], *(r[key] for r in rows)] if v and math.isfinite(v)]
    if values and max(values) > 100 * min(values):
        # Final and search values can lie orders of magnitude apart (and ζ can be negative): a symmetric
        # log axis keeps the search curve's trend visible next to the target line.
        ax.set_yscale("symlog", linthresh=min(values))
    ax.set_xlabel("cells in the search network")
    ax.set_ylabel("gradient confusion ζ / P" if key == "zeta_normalized" else "cosine gradient confusion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(match: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save :func:`confusion_figure` to ``path``; returns the path."""
    p = Path(path)
    confusion_figure(match).savefig(p, dpi=dpi, bbox_inches="tight")
    return p

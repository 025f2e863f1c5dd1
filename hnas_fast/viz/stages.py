"""Diagrams of Hs-DAS stage DAGs (matplotlib only): one row per stage, inputs on the left, cells left to
right, edges labelled with their op, the output pair marked, dead cells greyed."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hnas_fast.genotypes.macro import INPUTS, MacroGenotype, StageDAG, live_nodes, load_macro_genotype

__all__ = ["plot_stages", "stage_figure"]

_COLORS = {"input": "#a6cee3", "cell": "#fdbf6f", "dead": "#dddddd", "output": "#b2df8a"}
_SHORT = {"max_pool_3x3": "max", "avg_pool_3x3": "avg", "skip_connect": "skip"}


def _draw_stage(ax, st: StageDAG, title: str) -> None:
    live = live_nodes(st)
    pos = {n: (1.8 * n, 0.0) for n in range(st.num_nodes)}
    pos[0], pos[1] = (0.0, 0.9), (0.0, -0.9)
    out_x = 1.8 * st.num_nodes + 0.2
    ax.set_axis_off()
    ax.set_aspect("equal")  # arc3 bends in display space: equal scaling keeps the labels on the arcs
    ax.set_title(title, fontsize=10)
    for i, edges in enumerate(st.cells):
        n = INPUTS + i
        for k, (op, j) in enumerate(sorted(edges, key=lambda e: e[1])):
            (x0, y0), (x1, y1) = pos[j], pos[n]
            span = n - j
            # Longer jumps arc higher (alternating above/below) so they clear the cells in between.
            rad = (0.15 + 0.08 * max(0, span - 1)) * (1 if k == 0 else -1)
            color = "#333333" if live[n] else "#bbbbbb"
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.0, "shrinkA": 12,
                                    "shrinkB": 12, "connectionstyle": f"arc3,rad={rad}"})
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            mx, my = 0.25 * x0 + 0.5 * cx + 0.25 * x1, 0.25 * y0 + 0.5 * cy + 0.25 * y1
            ax.text(mx, my, _SHORT.get(op, op), fontsize=6, ha="center", va="center", color=color,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for o in st.output:
        ax.annotate("", xy=(out_x, 0.0), xytext=pos[o],
                    arrowprops={"arrowstyle": "-|>", "color": "#2c7fb8", "lw": 1.2, "shrinkA": 12,
                                "shrinkB": 12, "connectionstyle": "arc3,rad=-0.25"})
    for n, (x, y) in pos.items():
        kind = "input" if n < INPUTS else ("cell" if live[n] else "dead")
        label = f"in{n}" if n < INPUTS else f"c{n - INPUTS}"
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.3", "fc": _COLORS[kind], "ec": "black"})
    ax.text(out_x, 0.0, "out", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round,pad=0.3", "fc": _COLORS["output"], "ec": "black"})
    ax.set_xlim(-0.6, out_x + 0.6)
    ax.set_ylim(-1.5, 1.5)


def stage_figure(macro: MacroGenotype | str | os.PathLike[str]) -> Figure:
    """A matplotlib :class:`~matplotlib.figure.Figure` with one panel per stage DAG."""
    m = load_macro_genotype(macro)
    widest = max(s.num_nodes for s in m.stages)
    fig = Figure(figsize=(1.0 + 1.6 * widest, 0.4 + 2.2 * len(m.stages)))
    FigureCanvasAgg(fig)  # a canvas, so savefig works without pyplot
    for s, st in enumerate(m.stages):
        ax = fig.add_subplot(len(m.stages), 1, s + 1)
        window = f", window {m.window}" if m.window is not None else ""
        _draw_stage(ax, st, f"stage {s}: {st.num_cells} cells{window}")
    fig.tight_layout()
    return fig


def plot_stages(macro: MacroGenotype | str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Draw the stage DAGs of ``macro`` to ``path``; PNG, SVG or PDF by the extension."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"{p}: the extension must be .png, .svg or .pdf")
    stage_figure(macro).savefig(p, format=fmt, dpi=150)
    return p

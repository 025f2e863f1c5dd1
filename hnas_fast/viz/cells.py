"""Cell diagrams of a genotype with matplotlib alone (no graphviz)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hnas_fast.genotypes.cell import Genotype, load_genotype

__all__ = ["cell_figure", "plot_cell"]

_COLORS = {"input": "#a6cee3", "node": "#fdbf6f", "output": "#b2df8a"}


def _layout(nodes: int) -> dict[str, tuple[float, float]]:
    # Inputs on the left, intermediate nodes zig-zag to the right so edges from the inputs do not run
    # through other nodes, the output on the far right.
    pos = {"c_{k-2}": (0.0, 1.2), "c_{k-1}": (0.0, -1.2)}
    for i in range(nodes):
        pos[str(i)] = (2.0 + 1.8 * i, 1.1 if i % 2 == 0 else -1.1)
    pos["c_{k}"] = (2.0 + 1.8 * nodes + 0.4, 0.0)
    return pos


def cell_figure(genotype: Genotype | str, which: str = "normal") -> Figure:
    """A matplotlib :class:`~matplotlib.figure.Figure` of the ``which`` (normal/reduce) cell."""
    g = load_genotype(genotype)
    if which not in ("normal", "reduce"):
        raise ValueError(f"which must be 'normal' or 'reduce', got {which!r}")
    pairs = list(getattr(g, which))
    concat = [int(c) for c in getattr(g, f"{which}_concat")]
    nodes = len(pairs) // 2
    pos = _layout(nodes)
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(nodes)]

    fig = Figure(figsize=(2.5 + 1.8 * nodes, 4.2))
    FigureCanvasAgg(fig)  # attaches a canvas so savefig works without pyplot
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.set_aspect("equal")  # arc3 bends in display space; equal scaling puts the labels on the curves
    ax.set_title(f"{which} cell")

    def arrow(src: str, dst: str, label: str | None, rad: float, color: str, t: float = 0.5) -> None:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2, "shrinkA": 16, "shrinkB": 16,
                        "connectionstyle": f"arc3,rad={rad}"},
        )
        if label:
            # A point of the arc3 curve (a quadratic Bezier whose control point is the chord's midpoint
            # pushed off by rad) at parameter t.
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            mx = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t**2 * x1
            my = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t**2 * y1
            ax.text(mx, my, label, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})

    for idx, (op, j) in enumerate(pairs):
        dst = str(idx // 2)
        src = names[int(j)]
        # Bend the two edges of a node opposite ways so their labels stay apart; long edges bend more so
        # they pass around the nodes in between.
        span = abs(pos[dst][0] - pos[src][0])
        rad = 0.12 + (0.12 if span > 2.0 else 0.0)
        # Labels of a node's two edges at different fractions, so crossing edges do not stack labels.
        if idx % 2 == 0:
            arrow(src, dst, op, rad, "#333333", t=0.35)
        else:
            arrow(src, dst, op, -rad, "#333333", t=0.6)
    for c in concat:
        arrow(names[c], "c_{k}", None, 0.0, "#888888")

    for name, (x, y) in pos.items():
        kind = "input" if name.startswith("c_{k-") else "output" if name == "c_{k}" else "node"
        label = f"${name}$" if name.startswith("c_") else name
        ax.text(x, y, label, ha="center", va="center", fontsize=10,
                bbox={"boxstyle": "round,pad=0.35", "fc": _COLORS[kind], "ec": "black"})
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(-2.0, 2.0)
    fig.tight_layout()
    return fig


def plot_cell(
    genotype: Genotype | str, which: str = "normal", path: str | os.PathLike[str] = "cell.png"
) -> Path:
    """Draw the ``which`` cell of ``genotype`` to ``path``; PNG, SVG or PDF by the file extension."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"{p}: the extension must be .png, .svg or .pdf")
    fig = cell_figure(genotype, which)
    fig.savefig(p, format=fmt, dpi=150)
    return p

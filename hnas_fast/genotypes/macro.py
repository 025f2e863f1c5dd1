"""The macro genotype of Hs-DAS: per stage, a DAG over its cells, and the pair of nodes the stage outputs.

Node numbering inside a stage follows DARTS's cells: node 0 and node 1 are the stage inputs (the two
states the first cell of the stage would take in ordinary stacking: the stem twice in the first stage;
the cell before the reduction and the reduction cell's output in later stages), and node ``2 + i`` is the
stage's cell ``i``. Each cell keeps two ``(op, node)`` edges with an earlier node, ops from the
parameter-free stage set (max pool, avg pool, skip); ``output`` names the two nodes whose features the
stage hands on (Rule 2: the last two cells, or the β-chosen pair).

JSON form::

    {"format": "hnas_fast.macro/1", "window": 3,
     "stages": [{"cells": [[["skip_connect", 0], ["skip_connect", 1]], ...], "output": [6, 7]}, ...]}

A cell is *dead* (Rule 3) when no path leads from it to the stage output; :func:`remove_dead_cells`
drops such cells and renumbers the rest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "STAGE_OPS",
    "MacroGenotype",
    "StageDAG",
    "candidate_predecessors",
    "chain_macro_genotype",
    "derive_macro_genotype",
    "live_nodes",
    "load_macro_genotype",
    "macro_from_json",
    "macro_to_json",
    "remove_dead_cells",
    "save_macro_genotype",
    "validate_macro_genotype",
]

FORMAT = "hnas_fast.macro/1"
# The H-DAS stage-level op set (Rule 1, appendix 6.4): parameter-free connections only.
STAGE_OPS: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "none")
_NONE = "none"
INPUTS = 2  # stage input nodes


@dataclass(frozen=True)
class StageDAG:
    """One stage: ``cells[i]`` holds the kept ``(op, node)`` edges of cell ``i`` (node ``i + 2``)."""

    cells: tuple[tuple[tuple[str, int], ...], ...]
    output: tuple[int, int]

    @property
    def num_cells(self) -> int:
        """Cells in the stage."""
        return len(self.cells)

    @property
    def num_nodes(self) -> int:
        """The two inputs plus the cells."""
        return INPUTS + len(self.cells)


@dataclass(frozen=True)
class MacroGenotype:
    """Per-stage DAGs; ``window`` is the sliding window m the search used (``None``: every earlier node)."""

    stages: tuple[StageDAG, ...]
    window: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def cells_per_stage(self) -> tuple[int, ...]:
        """Number of cells of each stage."""
        return tuple(s.num_cells for s in self.stages)


def candidate_predecessors(num_cells: int, window: int | None = None) -> list[list[int]]:
    """For each cell ``i`` of a stage, the nodes it may take input from: the ``window`` nodes just before
    node ``i + 2`` (stage inputs count), or all earlier nodes without a window.

    Raises ``ValueError`` for a window below 2 (a cell keeps two predecessors) or larger than the stage
    (``m`` must lie in ``[2, N + 1]`` for ``N`` cells, as in the paper's Figure 3).
    """
    if num_cells < 1:
        raise ValueError(f"a stage needs at least one cell, got {num_cells}")
    if window is not None:
        if window < 2:
            raise ValueError(f"window must be >= 2 (a cell keeps two predecessors), got {window}")
        if window > num_cells + 1:
            raise ValueError(f"window {window} is larger than the stage: with {num_cells} cells it must "
                             f"be in [2, {num_cells + 1}]")
    out = []
    for i in range(num_cells):
        n = INPUTS + i
        lo = 0 if window is None else max(0, n - window)
        out.append(list(range(lo, n)))
    return out


def chain_macro_genotype(cells_per_stage: Sequence[int], op: str = "skip_connect") -> MacroGenotype:
    """Ordinary DARTS stacking as a macro genotype: cell ``i`` takes nodes ``i`` and ``i + 1`` (its two
    predecessors) through ``op``; the stage outputs its last two nodes."""
    stages = []
    for n in cells_per_stage:
        if n < 1:
            raise ValueError(f"a stage needs at least one cell, got {n}")
        cells = tuple(((op, i), (op, i + 1)) for i in range(n))
        stages.append(StageDAG(cells, (n, n + 1)))
    return MacroGenotype(tuple(stages), window=2)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_macro_genotype(m: MacroGenotype, ops: Sequence[str] = STAGE_OPS,
                            check_window_fits: bool = False) -> None:
    """Raise ``ValueError`` naming the first problem: a cell taking a node that does not exist or is not
    before it, a repeated or ``none`` edge, an op outside ``ops``, an edge outside the window, a bad output
    pair; with ``check_window_fits`` also a window larger than a stage."""
    if not isinstance(m, MacroGenotype):
        raise TypeError(f"expected a MacroGenotype, got {type(m).__name__}")
    if not m.stages:
        raise ValueError("the macro genotype has no stages")
    if m.window is not None and (not _int(m.window) or m.window < 2):
        raise ValueError(f"window must be an integer >= 2, got {m.window!r}")
    allowed = set(ops)
    for s, st in enumerate(m.stages):
        where = f"stage {s}"
        if st.num_cells < 1:
            raise ValueError(f"{where} has no cells")
        if check_window_fits and m.window is not None and m.window > st.num_cells + 1:
            raise ValueError(f"window {m.window} is larger than {where} ({st.num_cells} cells: it must be in "
                             f"[2, {st.num_cells + 1}])")
        for i, edges in enumerate(st.cells):
            n = INPUTS + i
            if len(edges) != 2:
                raise ValueError(f"{where} cell {i} keeps {len(edges)} edges; a cell keeps two")
            seen = set()
            for op, j in edges:
                if not isinstance(op, str) or op not in allowed:
                    raise ValueError(f"{where} cell {i} uses op {op!r}, not one of {sorted(allowed)}")
                if op == _NONE:
                    raise ValueError(f"{where} cell {i} keeps a 'none' edge")
                if not _int(j) or j < 0:
                    raise ValueError(f"{where} cell {i}: predecessor {j!r} is not a node index")
                if j >= st.num_nodes:
                    raise ValueError(
                        f"{where} cell {i} takes node {j}, a missing cell: the stage has {INPUTS} inputs and "
                        f"{st.num_cells} cells (nodes 0..{st.num_nodes - 1})")
                if j >= n:
                    raise ValueError(f"{where} cell {i} (node {n}) takes node {j}, which is not before it")
                if m.window is not None and j < n - m.window:
                    raise ValueError(f"{where} cell {i} (node {n}) takes node {j}, outside the window of "
                                     f"{m.window} previous nodes")
                if j in seen:
                    raise ValueError(f"{where} cell {i} takes node {j} twice")
                seen.add(j)
        a, b = st.output
        for o in (a, b):
            if not _int(o) or not 0 <= o < st.num_nodes:
                raise ValueError(f"{where} output node {o!r} is a missing cell (nodes 0..{st.num_nodes - 1})")
        if not a < b:
            raise ValueError(f"{where} output pair {st.output} must name two nodes, earlier first")
        if b < INPUTS:
            raise ValueError(f"{where} output pair {st.output} uses no cell")


def live_nodes(stage: StageDAG) -> list[bool]:
    """For each node of ``stage``, whether a path leads from it to the output pair."""
    live = [False] * stage.num_nodes
    for o in stage.output:
        live[o] = True
    for n in range(stage.num_nodes - 1, INPUTS - 1, -1):
        if live[n]:
            for _, j in stage.cells[n - INPUTS]:
                live[j] = True
    return live


def remove_dead_cells(m: MacroGenotype) -> MacroGenotype:
    """The same network without its dead cells (cells with no path to their stage's output), nodes
    renumbered; ``meta["removed"]`` lists the removed cells per stage (original indices)."""
    validate_macro_genotype(m)
    stages, removed = [], []
    for st in m.stages:
        live = live_nodes(st)
        new_index = {}
        for n in range(st.num_nodes):
            if n < INPUTS or live[n]:
                new_index[n] = len(new_index)
        cells = tuple(tuple((op, new_index[j]) for op, j in st.cells[n - INPUTS])
                      for n in range(INPUTS, st.num_nodes) if live[n])
        stages.append(StageDAG(cells, (new_index[st.output[0]], new_index[st.output[1]])))
        removed.append([n - INPUTS for n in range(INPUTS, st.num_nodes) if not live[n]])
    return MacroGenotype(tuple(stages), m.window, {**m.meta, "removed": removed})


# ------------------------------------------------------------------------------------------------ I/O
def macro_to_json(m: MacroGenotype) -> dict[str, Any]:
    """A JSON-ready dict (see the module docstring)."""
    d: dict[str, Any] = {
        "format": FORMAT,
        "window": m.window,
        "stages": [{"cells": [[[op, int(j)] for op, j in edges] for edges in st.cells],
                    "output": [int(st.output[0]), int(st.output[1])]} for st in m.stages],
    }
    if m.meta:
        d["meta"] = m.meta
    return d


def macro_from_json(d: dict[str, Any] | str) -> MacroGenotype:
    """Inverse of :func:`macro_to_json` (a dict or its JSON text); validated."""
    if isinstance(d, str):
        d = json.loads(d)
    if not isinstance(d, dict) or "stages" not in d:
        raise ValueError("a macro genotype JSON must be an object with a 'stages' list")
    if d.get("format", FORMAT) != FORMAT:
        raise ValueError(f"unknown macro genotype format {d.get('format')!r} (expected {FORMAT!r})")
    stages = []
    for s, st in enumerate(d["stages"]):
        if not isinstance(st, dict) or "cells" not in st or "output" not in st:
            raise ValueError(f"stage {s} must be an object with 'cells' and 'output'")
        cells = []
        for i, edges in enumerate(st["cells"]):
            if not isinstance(edges, list) or not all(isinstance(e, list) and len(e) == 2 for e in edges):
                raise ValueError(f"stage {s} cell {i}: edges must be [op, node] pairs, got {edges!r}")
            cells.append(tuple((e[0], e[1]) for e in edges))
        out = st["output"]
        if not isinstance(out, list) or len(out) != 2:
            raise ValueError(f"stage {s} output must be a pair of node indices, got {out!r}")
        stages.append(StageDAG(tuple(cells), (out[0], out[1])))
    m = MacroGenotype(tuple(stages), d.get("window"), dict(d.get("meta") or {}))
    validate_macro_genotype(m)
    return m


def save_macro_genotype(m: MacroGenotype, path: str | os.PathLike[str]) -> Path:
    """Write ``m`` as JSON to ``path``."""
    p = Path(path)
    text = json.dumps(macro_to_json(m), indent=1)
    # One line per [op, node] edge, so a stage reads as a list of cells.
    text = re.sub(r'\[\s*("[^"]*"),\s*(\d+)\s*\]', r"[\1, \2]", text)
    p.write_text(text + "\n")
    return p


def load_macro_genotype(source: MacroGenotype | str | os.PathLike[str] | dict[str, Any]) -> MacroGenotype:
    """A macro genotype from itself, a dict, JSON text or a JSON file."""
    if isinstance(source, MacroGenotype):
        validate_macro_genotype(source)
        return source
    if isinstance(source, dict):
        return macro_from_json(source)
    text = os.fspath(source)
    if text.lstrip().startswith("{"):
        return macro_from_json(text)
    p = Path(text)
    if not p.is_file():
        raise FileNotFoundError(f"macro genotype file not found: {p}")
    return macro_from_json(p.read_text())


# ------------------------------------------------------------------------------------------ derivation
def derive_macro_genotype(
    alphas: Sequence[torch.Tensor],
    cells_per_stage: Sequence[int],
    ops: Sequence[str] = STAGE_OPS,
    window: int | None = None,
    betas: Sequence[torch.Tensor] | None = None,
    n_min: Sequence[int] | None = None,
    ranking: str = "weight",
) -> MacroGenotype:
    """Discretize the stage-level architecture parameters.

    Per cell keep the two candidate predecessors whose best non-``none`` op scores highest, each with that
    op (DARTS's rule, as H-DAS's code applies it to the stage DAG). With ``betas`` (distribution search),
    stage ``s`` keeps its first ``argmax(beta_s) + n_min[s]`` cells and outputs the last two of them (the
    chosen pair); cells after the pair are dropped. Edges are listed earliest node first.

    Args:
        alphas: per stage, ``[num_edges, len(ops)]`` logits; edges cell by cell, predecessors in order, as
            :func:`candidate_predecessors` lists them.
        cells_per_stage: cells of each stage in the supernet.
        ranking: ``"weight"`` (softmax per edge) or ``"logit"`` (raw alpha), as for cell genotypes.
    """
    if ranking not in ("weight", "logit"):
        raise ValueError(f"ranking must be 'weight' or 'logit', got {ranking!r}")
    if len(alphas) != len(cells_per_stage):
        raise ValueError(f"{len(alphas)} alpha tensors for {len(cells_per_stage)} stages")
    ops = list(ops)
    cand = [k for k, op in enumerate(ops) if op != _NONE]
    stages = []
    for s, (a, n) in enumerate(zip(alphas, cells_per_stage)):
        preds = candidate_predecessors(n, window)
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        if a.shape != (sum(map(len, preds)), len(ops)):
            raise ValueError(f"stage {s}: alphas of shape {tuple(a.shape)}, expected "
                             f"({sum(map(len, preds))}, {len(ops)})")
        scores = torch.softmax(a, -1) if ranking == "weight" else a
        keep = n
        if betas is not None:
            if n_min is None:
                raise ValueError("betas need n_min")
            keep = int(torch.argmax(torch.as_tensor(betas[s]).detach())) + int(n_min[s])
        cells, row = [], 0
        for i in range(n):
            w = scores[row: row + len(preds[i]), cand]
            row += len(preds[i])
            if i >= keep:
                continue
            strength = w.max(dim=1).values.tolist()
            best = sorted(range(len(preds[i])), key=lambda e: -strength[e])[:2]
            edges = [(ops[cand[int(torch.argmax(w[e]))]], preds[i][e]) for e in best]
            cells.append(tuple(sorted(edges, key=lambda e: e[1])))
        stages.append(StageDAG(tuple(cells), (keep, keep + 1)))
    m = MacroGenotype(tuple(stages), window, {"ranking": ranking})
    validate_macro_genotype(m, ops)
    return m

"""Search-space sizes of DARTS, Hc-DAS and Hs-DAS (H-DAS paper, appendix 6.2), as exact integers.

Every count is "without considering graph isomorphism", as in the paper: a node (a cell's intermediate
node, or a cell in a stage DAG) that has ``c`` candidate predecessors picks an unordered pair of them,
C(c, 2) ways, and gives each kept edge one of the ``ops`` non-zero operations, ``ops**2`` ways. So a DAG
whose node k (k = 1..n) sees ``c_k`` candidates has ``Π_k C(c_k, 2) · ops**2`` forms; the paper writes
C(k + 1, 2) as ``(k+1)k/2``.

Readings of the paper's garbled text (each is pinned by a test in ``tests/test_space_size.py``):

* The factor ``(3^2)`` (``(7^2)`` for DARTS) sits *inside* the product over nodes: every node chooses the
  ops of its own two edges. Only then does a DARTS cell come out at ≈10^9 (outside it would be ≈10^4).
* With a sliding window of ``m`` previous nodes, node k sees ``min(k + 1, m)`` candidates; the paper's
  ``Π_{k=1}^{2} … Π_{k=3}^{6} (2×3)/2 …`` is this with m = 3.
* "Combined with the cell-level structures … (10^10)^3 × (10^9)^2 = 10^42": the left side is 10^48, so the
  printed factors are wrong; 10^42 is the sliding-window stage space (10^24) times the DARTS normal+reduce
  cell space (10^18), and that is what :func:`hsdas_with_cells_space_size` computes.
* Distribution search, with the window: the last two terms print ``Π_{k=1}^{5}`` and ``Π_{k=1}^{6}`` where
  the pattern (and the stated total ≈10^33) needs ``Π_{k=1}^{2}``; we use the pattern.
* The paper rounds per stage before cubing: "(10^15)^3 = 10^45" for distribution search without the window,
  where the exact per-stage count is 10^15.39 and the whole network 10^46.2; and it quotes the 6-cell
  stage DAG (10^10.48) as "≈10^10". The paper's exponents are therefore the floor (or nearest integer) of
  the exact log10, per stage; :func:`paper_table` shows both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SpaceSizeRow",
    "cell_space_size",
    "darts_space_size",
    "distribution_space_size",
    "distribution_stage_space_size",
    "hcdas_space_size",
    "hsdas_space_size",
    "hsdas_with_cells_space_size",
    "log10",
    "paper_table",
    "space_size",
    "stage_dag_space_size",
]


def log10(n: int) -> float:
    """log10 of a (possibly huge) positive integer."""
    if n <= 0:
        raise ValueError(f"log10 needs a positive number, got {n}")
    return math.log10(n)


def _dag_size(nodes: int, inputs: int, ops: int, window: int | None, edges: int = 2) -> int:
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    if inputs < 1:
        raise ValueError(f"inputs must be >= 1, got {inputs}")
    if ops < 1:
        raise ValueError(f"ops (non-zero operations) must be >= 1, got {ops}")
    if window is not None and window < edges:
        raise ValueError(f"window must be >= {edges} (a node keeps {edges} predecessors), got {window}")
    total = 1
    for k in range(1, nodes + 1):
        cand = inputs + k - 1  # the inputs and the k - 1 earlier nodes
        if window is not None:
            cand = min(cand, window)
        if cand < edges:
            raise ValueError(f"node {k} has {cand} candidate predecessors, fewer than the {edges} it keeps")
        total *= math.comb(cand, edges) * ops**edges
    return total


def cell_space_size(nodes: int = 4, ops: int = 7, inputs: int = 2) -> int:
    """Discrete cells of a DARTS-style cell: ``nodes`` intermediate nodes, ``ops`` non-zero ops, two kept
    edges per node (DARTS: 4 nodes, 7 ops → 1,037,664,180 ≈ 10^9)."""
    return _dag_size(nodes, inputs, ops, None)


def darts_space_size(nodes: int = 4, ops: int = 7) -> int:
    """DARTS: a normal and a reduction cell, searched jointly (≈ 10^18)."""
    return cell_space_size(nodes, ops) ** 2


def hcdas_space_size(nodes: int = 4, ops: int = 7, normal_types: int = 3, reduce_types: int = 2) -> int:
    """Hc-DAS: three stage-specific normal cells and two reduction cells (≈ 10^45)."""
    return cell_space_size(nodes, ops) ** (normal_types + reduce_types)


def stage_dag_space_size(cells: int = 6, ops: int = 3, window: int | None = None, inputs: int = 2) -> int:
    """One Hs-DAS stage: ``cells`` cells wired over ``inputs`` stage inputs with ``ops`` non-zero
    non-parametric ops (max, avg, skip), optionally within a sliding window (6 cells: ≈ 10^10;
    window 3: ≈ 10^8)."""
    return _dag_size(cells, inputs, ops, window)


def hsdas_space_size(cells: Sequence[int] = (6, 6, 6), ops: int = 3, window: int | None = None) -> int:
    """All stages of Hs-DAS (three 6-cell stages with window 3: ≈ 10^24)."""
    total = 1
    for n in cells:
        total *= stage_dag_space_size(n, ops, window)
    return total


def hsdas_with_cells_space_size(
    cells: Sequence[int] = (6, 6, 6), ops: int = 3, window: int | None = 3, cell_nodes: int = 4,
    cell_ops: int = 7,
) -> int:
    """Hs-DAS stage DAGs times the DARTS cell space (normal + reduce) (≈ 10^42 with window 3)."""
    return hsdas_space_size(cells, ops, window) * darts_space_size(cell_nodes, cell_ops)


def distribution_stage_space_size(n_min: int = 4, n_max: int = 8, ops: int = 3,
                                  window: int | None = None) -> int:
    """One stage of the distribution-of-cells search: any length ``n_min..n_max``, each its own DAG
    (no window: ≈ 10^15)."""
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    return sum(stage_dag_space_size(n, ops, window) for n in range(n_min, n_max + 1))


def distribution_space_size(n_min: int = 4, n_max: int = 8, ops: int = 3, window: int | None = None,
                            stages: int = 3) -> int:
    """The whole network in the distribution search (window 3: ≈ 10^33; no window: 10^46.2, which the
    paper quotes as (10^15)^3 = 10^45 after rounding per stage)."""
    return distribution_stage_space_size(n_min, n_max, ops, window) ** stages


_KINDS = {
    "cell": cell_space_size,
    "darts": darts_space_size,
    "hcdas": hcdas_space_size,
    "stage": stage_dag_space_size,
    "hsdas": hsdas_space_size,
    "hsdas+cells": hsdas_with_cells_space_size,
    "distribution-stage": distribution_stage_space_size,
    "distribution": distribution_space_size,
}


def space_size(kind: str, **params: object) -> int:
    """Number of architectures of ``kind`` (``cell``, ``darts``, ``hcdas``, ``stage``, ``hsdas``,
    ``hsdas+cells``, ``distribution-stage``, ``distribution``); ``params`` go to that function."""
    try:
        fn = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown space kind {kind!r}; choose one of {', '.join(_KINDS)}") from None
    return fn(**params)  # type: ignore[operator]


@dataclass(frozen=True)
class SpaceSizeRow:
    """One line of the paper's complexity analysis: our exact count and the paper's stated exponent."""

    name: str
    size: int
    paper_exponent: int

    @property
    def log10(self) -> float:
        """log10 of the exact count."""
        return log10(self.size)


def paper_table() -> list[SpaceSizeRow]:
    """The numbers of the paper's section 6.2, computed here, with the exponents the paper states."""
    w = 3
    return [
        SpaceSizeRow("DARTS cell", cell_space_size(), 9),
        SpaceSizeRow("DARTS (normal + reduce)", darts_space_size(), 18),
        SpaceSizeRow("Hc-DAS (3 normal + 2 reduce)", hcdas_space_size(), 45),
        SpaceSizeRow("Hs-DAS stage, 6 cells", stage_dag_space_size(6), 10),
        SpaceSizeRow("Hs-DAS, 3 stages, window 3", hsdas_space_size((6, 6, 6), window=w), 24),
        SpaceSizeRow("Hs-DAS window 3 + DARTS cells", hsdas_with_cells_space_size(window=w), 42),
        SpaceSizeRow("distribution search, one stage (4..8 cells)", distribution_stage_space_size(), 15),
        SpaceSizeRow("distribution search, 3 stages, window 3", distribution_space_size(window=w), 33),
        SpaceSizeRow("distribution search window 3 + DARTS cells",
                     distribution_space_size(window=w) * darts_space_size(), 51),
    ]

"""Operator correlation and clustering (StacNAS, Appendix A and Section 3.4.1).

Images are run through a supernet; on every mixed edge the output of each candidate operation (all but
``none`` and ``skip_connect``) is flattened over the batch, channel and spatial axes, and the Pearson
correlation between every pair of candidates is computed over those elements, per edge and averaged over
edges. Operations whose feature maps correlate are then clustered into groups (average-linkage
hierarchical clustering on ``1 - r``), and each group gets a representative, giving a
:class:`~hnas_fast.spaces.SearchSpace` that StacNAS's stage 1 can search.

The statistics are streamed: per edge we keep, in float64, the element count, ``Σ y_k`` per candidate and
the Gram matrix ``Σ y_k y_l`` (its diagonal is ``Σ y_k²``), updated batch by batch with one matrix
product, so no feature map outlives its forward pass. Candidate outputs are caught with forward hooks on
the candidate modules, so the supernet runs its normal forward (whatever the mixed-sum backend).

Where the paper is silent we decide:

* It says "flatten the output tensors into vectors" and computes "the correlation among the operators"; we
  correlate over every element of every image (a single long vector per operator and edge), which is the
  natural reading and what the streaming sums compute.
* It does not say how edges are combined for its Figure 1. We average the per-edge coefficients (each
  edge weighs the same, whatever its feature-map size) over the normal and the reduction cells; edges where
  an operator's output is constant (undefined r) are left out of that operator pair's average.
* It gives no clustering rule, only the resulting groups and their within-group correlations
  (0.52 pools, 0.38 sep convs, 0.27 dil convs). We merge clusters while their average correlation is at
  least ``threshold`` (default :data:`DEFAULT_THRESHOLD` = 0.25), just below the weakest published
  within-group value, so the paper's own numbers would reproduce its S1 groups.
* ``skip_connect`` is always a group of its own. The paper excludes it from the correlations, yet its
  S2 table puts it in one group with the four pooling ops; it does not say how that was decided, so we
  do not guess (the preset ``s2`` space keeps the paper's grouping).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hnas_fast.spaces import NONE, SearchSpace

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXCLUDED_OPS",
    "CorrelationResult",
    "PearsonStream",
    "cluster_operators",
    "operator_correlation",
    "pick_representative",
    "space_from_correlation",
]

#: Ops never correlated: ``none`` is identically zero, ``skip_connect`` is the edge input itself (paper,
#: Appendix A, step 2).
EXCLUDED_OPS: tuple[str, ...] = (NONE, "skip_connect")

#: Minimum average correlation for two clusters to merge (see the module docstring for the reasoning).
DEFAULT_THRESHOLD = 0.25


class PearsonStream:
    """Running float64 sums for the Pearson correlation of ``k`` variables observed together.

    ``update(ys)`` takes ``k`` tensors of the same number of elements (any shapes) and adds each element
    position as one joint observation. ``corr()`` returns the ``k × k`` Pearson matrix; a variable with
    zero variance gives NaN in its row and column (its correlation is undefined), except 1 on the diagonal.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"PearsonStream needs at least one variable, got {k}")
        self.k = k
        self.n = 0
        self.sum = torch.zeros(k, dtype=torch.float64)
        self.gram = torch.zeros(k, k, dtype=torch.float64)

    def update(self, ys: Sequence[torch.Tensor]) -> None:
        """Add one batch: ``ys[i]`` is variable i's observations (flattened; equal element counts)."""
        if len(ys) != self.k:
            raise ValueError(f"expected {self.k} tensors, got {len(ys)}")
        numel = ys[0].numel()
        if any(y.numel() != numel for y in ys):
            raise ValueError(f"all tensors must have the same number of elements, got "
                             f"{[y.numel() for y in ys]}")
        # One [k, D] float64 block per batch; the sums stay exact enough for 1e4+ images of float32 maps.
        Y = torch.stack([y.detach().reshape(-1).to(torch.float64) for y in ys])
        self.n += numel
        self.sum += Y.sum(dim=1).cpu()
        self.gram += (Y @ Y.T).cpu()

    def merge(self, other: PearsonStream) -> None:
        """Add another stream's sums (e.g. from another process)."""
        if other.k != self.k:
            raise ValueError(f"cannot merge streams of {other.k} and {self.k} variables")
        self.n += other.n
        self.sum += other.sum
        self.gram += other.gram

    def cov(self) -> torch.Tensor:
        """The population covariance matrix (float64)."""
        if self.n == 0:
            raise ValueError("no observations yet")
        mean = self.sum / self.n
        return self.gram / self.n - torch.outer(mean, mean)

    def corr(self) -> torch.Tensor:
        """The ``k × k`` Pearson correlation matrix (float64), clamped to [-1, 1]."""
        c = self.cov()
        var = torch.diagonal(c).clone()
        # Cancellation in Σy²/n − mean² can leave a tiny negative or positive residue for a constant
        # variable; treat variance below 1e-12 of the mean square as zero.
        scale = torch.diagonal(self.gram) / self.n
        degenerate = var <= 1e-12 * scale.clamp_min(1e-300)
        std = var.clamp_min(0).sqrt()
        r = c / torch.outer(std, std)
        r[degenerate, :] = float("nan")
        r[:, degenerate] = float("nan")
        r = r.clamp(-1.0, 1.0)
        idx = torch.arange(self.k)
        r[idx, idx] = 1.0
        return r


@dataclass
class CorrelationResult:
    """Operator correlations of a supernet.

    Attributes:
        ops: the correlated op names (the space's ops without ``none`` and ``skip_connect``).
        per_edge: ``[E, K, K]`` float64 Pearson matrices, one per mixed edge (NaN where undefined).
        edges: ``(cell index, edge index, "normal"|"reduce")`` of each row of ``per_edge``.
        mean: ``[K, K]`` average over edges (NaN-aware).
        images: how many images were run through the network.
        elements: flattened output elements per op, summed over edges.
    """

    ops: list[str]
    per_edge: np.ndarray
    edges: list[tuple[int, int, str]]
    mean: np.ndarray
    images: int
    elements: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN written as null)."""
        def clean(a: np.ndarray) -> Any:
            return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in a]

        return {
            "ops": list(self.ops),
            "mean": clean(self.mean),
            "per_edge": [{"cell": c, "edge": e, "type": t, "corr": clean(m)}
                         for (c, e, t), m in zip(self.edges, self.per_edge)],
            "images": self.images,
            "elements": self.elements,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _batches(loader: Iterable[Any]) -> Iterable[torch.Tensor]:
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def operator_correlation(
    model: nn.Module,
    loader: Iterable[Any],
    images: int = 10_000,
    exclude: Sequence[str] = EXCLUDED_OPS,
    device: torch.device | str | None = None,
) -> CorrelationResult:
    """Stream the pairwise Pearson correlation of the candidate ops on every mixed edge of ``model``.

    Args:
        model: a supernet whose cells hold ``edges`` of :class:`~hnas_fast.nn.mixed_op.MixedOp` and whose
            ``space.ops`` (or each cell's ``ops``) names the candidates, e.g. from ``build_supernet``.
        loader: yields ``(images, labels)`` or image tensors.
        images: stop after at least this many images (the paper uses > 10,000); fewer if the loader ends.
        exclude: op names left out (default ``none`` and ``skip_connect``, as the paper).
        device: where to run (default: the model's device).

    The model runs in eval mode (BatchNorm uses its running statistics, as the trained network would at
    inference), and its train/eval mode is restored afterwards.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    cells = getattr(model, "cells", None)
    if cells is None:
        raise ValueError("model has no .cells: operator_correlation needs a supernet (build_supernet)")
    space_ops = tuple(model.space.ops) if hasattr(model, "space") else None
    dev = torch.device(device) if device is not None else next(model.parameters()).device

    streams: list[PearsonStream] = []
    edges: list[tuple[int, int, str]] = []
    handles = []
    ops: list[str] | None = None
    for ci, cell in enumerate(cells):
        cell_ops = tuple(getattr(cell, "ops", space_ops or ()))
        for ei, edge in enumerate(cell.edges):
            names = cell_ops if len(cell_ops) == len(edge.candidates) else None
            if names is None:
                raise ValueError(f"cell {ci} edge {ei}: cannot name its {len(edge.candidates)} candidates")
            keep = [k for k, name in enumerate(names) if name not in exclude]
            kept = [names[k] for k in keep]
            if ops is None:
                ops = kept
            elif kept != ops:
                raise ValueError(f"cell {ci} edge {ei} holds ops {kept}, other edges {ops}: correlation "
                                 "averaging needs the same candidates on every edge")
            if len(keep) < 2:
                raise ValueError(f"fewer than two ops to correlate after excluding {list(exclude)}: {kept}")
            stream = PearsonStream(len(keep))
            streams.append(stream)
            edges.append((ci, ei, "reduce" if getattr(cell, "reduction", False) else "normal"))
            outputs: dict[int, torch.Tensor] = {}

            def make_hook(slot: int, store: dict[int, torch.Tensor], s: PearsonStream, n: int) -> Any:
                def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
                    store[slot] = out
                    if len(store) == n:  # the last kept candidate of this edge has run: fold the batch in
                        s.update([store[i] for i in range(n)])
                        store.clear()
                return hook

            for slot, k in enumerate(keep):
                handles.append(edge.candidates[k].register_forward_hook(make_hook(slot, outputs, stream,
                                                                                  len(keep))))
    assert ops is not None
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in _batches(loader):
            if seen >= images:
                break
            x = x[: images - seen].to(dev)
            model(x)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("the loader yielded no images")
    per_edge = np.stack([s.corr().numpy() for s in streams])
    return CorrelationResult(ops=list(ops), per_edge=per_edge, edges=edges, mean=_nanmean(per_edge),
                             images=seen, elements=int(sum(s.n for s in streams)))


def _nanmean(per_edge: np.ndarray) -> np.ndarray:
    valid = np.isfinite(per_edge)
    total = np.where(valid, per_edge, 0.0).sum(axis=0)
    count = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def cluster_operators(
    corr: np.ndarray | torch.Tensor, ops: Sequence[str], threshold: float = DEFAULT_THRESHOLD
) -> list[list[str]]:
    """Average-linkage hierarchical clustering of ``ops`` on the distance ``1 - r``.

    Two clusters merge while the mean correlation between their members is at least ``threshold``
    (i.e. the dendrogram is cut at distance ``1 - threshold``). An op with an undefined (NaN) correlation
    to every other op stays alone; other NaN entries count as no correlation (r = 0). Groups are returned
    in the order of their first member in ``ops``, members in ``ops`` order.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    r = np.asarray(corr, dtype=np.float64)
    k = len(ops)
    if r.shape != (k, k):
        raise ValueError(f"correlation matrix of shape {r.shape} does not fit {k} ops")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a correlation in [-1, 1], got {threshold}")
    if k == 1:
        return [list(ops)]
    r = np.where(np.isfinite(r), r, 0.0)
    r = (r + r.T) / 2  # symmetric by construction; this only removes rounding asymmetry
    dist = np.clip(1.0 - r, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method="average")
    # fcluster joins at merge heights <= t; the small slack keeps a pair exactly at the threshold together.
    labels = fcluster(z, t=1.0 - threshold + 1e-12, criterion="distance")
    groups: dict[int, list[str]] = {}
    for op, lab in zip(ops, labels):
        groups.setdefault(int(lab), []).append(op)
    return list(groups.values())


def _kernel_size(op: str) -> int | None:
    tail = op.rsplit("_", 1)[-1]
    a, _, b = tail.partition("x")
    return int(a) if a.isdigit() and a == b else None


def pick_representative(group: Sequence[str], corr: np.ndarray | None = None,
                        ops: Sequence[str] | None = None) -> str:
    """The group's key operator: its 3×3 member (StacNAS prefers equal kernel sizes across groups for a
    fair stage-1 competition); without one, the member most correlated on average with the rest (when
    ``corr``/``ops`` are given), else the one with the smallest kernel, else the first."""
    three = [op for op in group if _kernel_size(op) == 3]
    if three:
        return three[0]
    if corr is not None and ops is not None and len(group) > 1:
        idx = [list(ops).index(op) for op in group]
        sub = np.where(np.isfinite(corr), corr, 0.0)[np.ix_(idx, idx)]
        score = (sub.sum(axis=1) - 1.0) / (len(group) - 1)
        return group[int(np.argmax(score))]
    sized = [op for op in group if _kernel_size(op) is not None]
    return min(sized, key=lambda op: _kernel_size(op) or 0) if sized else group[0]


def space_from_correlation(
    space: SearchSpace,
    result: CorrelationResult,
    threshold: float = DEFAULT_THRESHOLD,
    name: str | None = None,
) -> SearchSpace:
    """The space ``space`` with its groups replaced by those clustered from ``result``.

    ``skip_connect`` (never correlated) is always a group of its own, ``none`` is never grouped, and any
    op of ``space`` missing from ``result`` becomes its own group. Groups are ordered as their first member
    appears in ``space.ops``.
    """
    clustered = cluster_operators(result.mean, result.ops, threshold)
    grouped = {op for g in clustered for op in g}
    unknown = sorted(grouped - set(space.ops))
    if unknown:
        raise ValueError(f"correlated ops {unknown} are not in space {space.name!r}")
    groups = clustered + [[op] for op in space.ops if op != NONE and op not in grouped]
    order = {op: i for i, op in enumerate(space.ops)}
    groups = [sorted(g, key=order.__getitem__) for g in groups]
    groups.sort(key=lambda g: order[g[0]])
    reps = [pick_representative(g, result.mean, result.ops) if set(g) <= set(result.ops) else
            pick_representative(g) for g in groups]
    return SearchSpace(name=name or f"{space.name}-clustered", ops=space.ops,
                       groups=tuple(tuple(g) for g in groups), representatives=tuple(reps))

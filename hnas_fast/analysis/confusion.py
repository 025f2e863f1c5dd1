"""Gradient confusion and depth matching (StacNAS §3.4.2, Table 6 and Appendix C).

Gradient confusion (Sankararaman et al.) of a model at its current weights, over m minibatch losses
``l_i``: ``ζ = max_{i≠j} −<∇l_i(w), ∇l_j(w)>``. StacNAS normalizes it by the parameter count and averages
it over 10 measurements, and picks the search network's depth and width whose normalized confusion
matches the final network's (its Table 6: 14 cells at 16 channels match 20 cells at 36).

Gradients are taken per minibatch (one backward per minibatch, BatchNorm in training mode using that
minibatch's statistics, as during training; per-sample gradients would change what BatchNorm computes).
The measurement is streamed: as each minibatch's backward ends, its row of the float64 m×m Gram is folded
against the gradients already held (:func:`~hnas_fast.kernels.grad_gram.grad_gram_row`) and the gradient is
copied into a preallocated per-tensor ``[m - 1, *shape]`` slot, in its own dtype; the last gradient needs
no slot. Nothing is concatenated, widened to float64 or cloned, so the peak is the m gradients once, plus the
model and one backward's activations. ``stream=False`` keeps the all-at-once path (m slots, then one
:func:`~hnas_fast.kernels.grad_gram.grad_gram` call), the same Gram up to summation order.

Where the paper is silent or garbled:

* The ``max`` in the paper's formula runs over ``i, j = 1..m`` without excluding ``i = j``. The
  diagonal terms ``−‖g_i‖²`` measure no conflict between minibatches (they would floor ζ at
  ``−min_i ‖g_i‖²``), so we take ``i ≠ j``, as Sankararaman et al. define it.
* Appendix C's formula ``Σ_{i=11}^{10} ζ_i / M`` is garbled; the text says "the mean of the 10 ζ_i divided
  by the parameter size M". Each ζ_i here is one *draw* of m fresh minibatches (``draws``, 10 in the
  paper), and ``zeta_normalized`` is the mean over draws divided by P, the number of parameters whose
  gradients are measured (the weights; a supernet's architecture logits are left out, as ``w`` in the
  paper's definition).
* Scale: ζ/P compares networks whose gradient *magnitudes* can differ by orders of magnitude (at
  initialization a 20-cell final network's unnormalized node sums give gradients far larger than a
  supernet's softmax-weighted edges). As a scale-free companion we also report ``zeta_cosine``,
  ``max_{i≠j} −cos(g_i, g_j)`` (the same Gram, divided by the norms); :func:`match_depth` can match on
  it (``criterion="cosine"``). The paper's criterion, ``"normalized"``, stays the default.
* The paper trains every network 100 epochs before measuring. :func:`match_depth` offers
  ``train_steps`` for that; with 0 the networks are measured at initialization, which is far cheaper and
  already shows the depth/width trend, but is not the paper's protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.data.loaders import make_search_loaders
from hnas_fast.genotypes.cell import load_genotype
from hnas_fast.kernels.grad_gram import grad_gram, grad_gram_row
from hnas_fast.nn.network import build_network
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.loop import cycle_batches, final_network_step, run_steps, weight_optimizer
from hnas_fast.search.strategy import OneLevel
from hnas_fast.spaces import resolve_space

__all__ = [
    "CRITERIA",
    "PAPER_GRID",
    "ConfusionResult",
    "DepthMatch",
    "gradient_confusion",
    "match_depth",
    "parse_grid",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The search settings of StacNAS Table 6 as (cells, channels): Poor1, Match3, Match2, Match1, Poor2, Poor3.
PAPER_GRID: tuple[tuple[int, int], ...] = ((5, 16), (11, 10), (14, 16), (17, 32), (17, 16), (20, 16))


@dataclass
class ConfusionResult:
    """Gradient confusion of one model.

    Attributes:
        zeta: mean over draws of ``max_{i≠j} −<g_i, g_j>``.
        zeta_normalized: ``zeta / num_params`` (the paper's measure).
        zeta_cosine: mean over draws of ``max_{i≠j} −cos(g_i, g_j)`` (scale-free; in [-1, 1]).
        gram: the float64 ``[m, m]`` Gram ``<g_i, g_j>``, mean over draws.
        num_params: P, the number of scalar parameters measured.
        m: minibatches per draw.
        zetas: ζ of each draw.
    """

    zeta: float
    zeta_normalized: float
    gram: torch.Tensor
    num_params: int
    m: int
    zetas: list[float] = field(default_factory=list)
    zeta_cosine: float = math.nan

    @property
    def draws(self) -> int:
        """How many draws were averaged."""
        return len(self.zetas)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the Gram included)."""
        return {"zeta": self.zeta, "zeta_normalized": self.zeta_normalized, "zeta_cosine": self.zeta_cosine,
                "num_params": self.num_params,
                "m": self.m, "draws": self.draws, "zetas": list(self.zetas), "gram": self.gram.tolist()}


def _default_params(model: nn.Module) -> list[nn.Parameter]:
    arch = {id(p) for p in model.arch_parameters()} if hasattr(model, "arch_parameters") else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in arch]


def _zeta(gram: torch.Tensor) -> float:
    m = gram.shape[0]
    off = ~torch.eye(m, dtype=torch.bool, device=gram.device)
    return float((-gram)[off].max())


def _zeta_cosine(gram: torch.Tensor) -> float:
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    # A zero gradient has no direction: its pairs count as orthogonal (cosine 0).
    cos = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
    return _zeta(cos)


def _take_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                   plist: Sequence[torch.Tensor], slabs: Sequence[torch.Tensor], i: int,
                   gram: torch.Tensor | None, backend: str | None) -> None:
    """One minibatch's gradient: folded into row i of ``gram`` (streamed; None: not folded) and copied into
    slot i of ``slabs`` when there is one. A function of its own, so the gradient and the graph are freed
    on return, before the next backward allocates its own."""
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(loss_fn(logits, y), plist, allow_unused=True)
    with torch.no_grad():
        if gram is not None:
            # A parameter this loss does not reach contributes zero: left out of the row.
            present = [k for k, g in enumerate(grads) if g is not None]
            row = (grad_gram_row([slabs[k] for k in present], [grads[k] for k in present], i, backend=backend)
                   .cpu() if present else torch.zeros(i + 1, dtype=torch.float64))
            gram[i, :i + 1] = row
            gram[:i + 1, i] = row
        if i < slabs[0].shape[0]:
            for slab, g in zip(slabs, grads):
                if g is None:
                    slab[i].zero_()
                else:
                    slab[i].copy_(g)


def gradient_confusion(
    model: nn.Module,
    loader: Iterable[Any],
    m: int = 10,
    draws: int = 1,
    loss_fn: LossFn = F.cross_entropy,
    params: Sequence[torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    backend: str | None = None,
    stream: bool = True,
) -> ConfusionResult:
    """Gradient confusion of ``model`` at its current weights over ``m`` minibatches of ``loader``.

    Args:
        model: any module mapping inputs to logits (or ``(logits, aux)``: only the logits count).
        loader: yields ``(inputs, targets)``; cycled if it runs out. Each draw takes the next ``m``
            batches.
        m: minibatches per draw (>= 2).
        draws: independent draws averaged (the paper: 10).
        loss_fn: ``loss_fn(logits, targets) -> scalar``.
        params: the tensors whose gradients count; default every trainable parameter except a supernet's
            ``arch_parameters()``.
        device: where to run (default: the first parameter's device).
        backend: the :func:`~hnas_fast.kernels.grad_gram.grad_gram` backend (``None``: automatic).
        stream: fold each gradient's Gram row in as its backward ends (default; one gradient less held)
            instead of taking the whole Gram after the m backward passes.

    The model runs in training mode (per-minibatch BatchNorm statistics, as in training); its mode,
    BatchNorm running statistics and ``.grad`` fields are left as they were. Stochastic layers (dropout,
    drop path) stay active in training mode and add their own noise to ζ: build the model without them
    (``build_network(..., drop_path_prob=0)``) for a clean measurement, as :func:`match_depth` does.
    """
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"gradient confusion needs m >= 2 minibatches (a pair to compare), got {m}")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    plist = list(params) if params is not None else _default_params(model)
    if not plist:
        raise ValueError("no parameters to measure")
    dev = torch.device(device) if device is not None else plist[0].device
    num_params = sum(p.numel() for p in plist)
    # One [slots, *shape] slab per parameter tensor: the layout grad_gram reads without any concatenation.
    slots = m - 1 if stream else m
    slabs = [torch.empty((slots, *p.shape), dtype=p.dtype, device=p.device) for p in plist]
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    batches = cycle_batches(loader)
    gram_sum = torch.zeros(m, m, dtype=torch.float64)
    zetas: list[float] = []
    cosines: list[float] = []
    try:
        for _ in range(draws):
            gram = torch.zeros(m, m, dtype=torch.float64)
            for i in range(m):
                x, y = next(batches)[:2]
                _take_gradient(model, x.to(dev), y.to(dev), loss_fn, plist, slabs, i,
                               gram if stream else None, backend)
            if not stream:
                gram = grad_gram(slabs, backend=backend).cpu()
            gram_sum += gram
            zetas.append(_zeta(gram))
            cosines.append(_zeta_cosine(gram))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
    zeta = sum(zetas) / len(zetas)
    return ConfusionResult(zeta=zeta, zeta_normalized=zeta / num_params, gram=gram_sum / draws,
                           num_params=num_params, m=m, zetas=zetas,
                           zeta_cosine=sum(cosines) / len(cosines))


def parse_grid(spec: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``"5x16,14x16,20x16"`` (CELLSxCHANNELS, comma separated) or a list of pairs → ``[(cells, ch)]``."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if not items:
            raise ValueError(f"empty grid {spec!r}; expected CELLSxCHANNELS[,...], e.g. 5x16,14x16")
        out = []
        for item in items:
            a, sep, b = item.lower().partition("x")
            if not sep or not a.strip().isdigit() or not b.strip().isdigit():
                raise ValueError(f"bad grid entry {item!r} in {spec!r}; expected CELLSxCHANNELS, e.g. 14x16")
            out.append((int(a), int(b)))
    else:
        out = [(int(c), int(w)) for c, w in spec]
    bad = [(c, w) for c, w in out if c < 3 or w < 1]
    if bad:
        raise ValueError(f"grid settings {bad}: cells must be >= 3 and channels >= 1")
    if not out:
        raise ValueError("empty grid")
    return out


@dataclass
class DepthMatch:
    """Result of :func:`match_depth`.

    Attributes:
        target: the final network's row (``kind="final"``).
        rows: one row per grid setting (``kind="search"``), with ``gap = |value − value_target|`` of
            the ``criterion``. Every row, the target's too, holds ``seconds``: the wall time of its
            measurement (build, brief training, m backward passes and the Gram).
        best: the grid setting ``(cells, channels)`` with the smallest gap.
        criterion: ``"normalized"`` (ζ/P, the paper) or ``"cosine"``.
    """

    target: dict[str, Any]
    rows: list[dict[str, Any]]
    best: tuple[int, int]
    criterion: str = "normalized"

    @property
    def key(self) -> str:
        """The row field that was matched."""
        return CRITERIA[self.criterion]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"target": self.target, "rows": self.rows, "best": list(self.best),
                "criterion": self.criterion}

    def table(self) -> str:
        """A plain-text table: kind, cells, channels, params, ζ, ζ/P, cosine ζ, gap, the best marked."""
        head = (f"{'kind':<7} {'cells':>5} {'C':>4} {'params':>10} {'zeta':>11} {'zeta/P':>11} "
                f"{'zeta_cos':>9} {'gap':>10} {'time_s':>8}")
        lines = [head, "-" * len(head)]
        for r in [self.target, *self.rows]:
            mark = "  <- best" if r["kind"] == "search" and (r["cells"], r["channels"]) == self.best else ""
            gap = "" if r.get("gap") is None else f"{r['gap']:.3e}"
            secs = "" if r.get("seconds") is None else f"{r['seconds']:.2f}"
            lines.append(f"{r['kind']:<7} {r['cells']:>5} {r['channels']:>4} {r.get('num_params', 0):>10} "
                         f"{r.get('zeta', math.nan):>11.4e} {r.get('zeta_normalized', math.nan):>11.4e} "
                         f"{r.get('zeta_cosine', math.nan):>9.4f} {gap:>10} {secs:>8}{mark}")
        lines.append(f"(matched on {self.key})")
        return "\n".join(lines)


Measure = Callable[[str, int, int], "ConfusionResult | float"]


#: ``match_depth`` criteria and the row field each matches.
CRITERIA: dict[str, str] = {"normalized": "zeta_normalized", "cosine": "zeta_cosine"}


def _timed_row(kind: str, cells: int, channels: int, measure: Measure, key: str) -> dict[str, Any]:
    """The measurement's row, with the wall time it took (building, brief training and measuring)."""
    start = time.perf_counter()
    row = _row(kind, cells, channels, measure(kind, cells, channels), key)
    row["seconds"] = time.perf_counter() - start
    return row


def _row(kind: str, cells: int, channels: int, res: ConfusionResult | float, key: str) -> dict[str, Any]:
    if isinstance(res, ConfusionResult):
        return {"kind": kind, "cells": cells, "channels": channels, "num_params": res.num_params,
                "zeta": res.zeta, "zeta_normalized": res.zeta_normalized, "zeta_cosine": res.zeta_cosine,
                "zetas": res.zetas}
    return {"kind": kind, "cells": cells, "channels": channels, key: float(res)}


def _brief_train(model: nn.Module, loader: Iterable[Any], steps: int) -> None:
    """``steps`` training steps before measuring, with the pieces of the search and training loops:
    one-level search (StacNAS's strategy, DARTS's optimizer settings) for a supernet, the final-network
    step (SGD, clip 5) for a network; the cosine schedule runs over the passes the steps span."""
    if steps <= 0:
        return
    passes = max(1, math.ceil(steps / max(len(loader), 1))) if hasattr(loader, "__len__") else 1
    model.train()
    if hasattr(model, "arch_parameters"):
        strategy = OneLevel(model, epochs=passes)
        run_steps(strategy.step, loader, steps, end_pass=strategy.end_epoch)
        return
    opt, sched = weight_optimizer(model.parameters(), epochs=passes, lr=0.025, lr_min=0.0, momentum=0.9,
                                  weight_decay=3e-4)
    run_steps(lambda batch: final_network_step(model, opt, batch), loader, steps, end_pass=sched.step)


def match_depth(
    target: tuple[int, int] = (20, 36),
    grid: str | Sequence[tuple[int, int]] = PAPER_GRID,
    *,
    genotype: Any = "DARTS_V2",
    space: Any = "s1/stage1",
    data: str = "digits",
    data_dir: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    m: int = 10,
    draws: int = 1,
    train_steps: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    backend: str | None = None,
    measure: Measure | None = None,
    criterion: str = "normalized",
    log: Callable[[str], None] | None = None,
) -> DepthMatch:
    """Pick the search setting whose gradient confusion is closest to the final network's.

    The final network (``genotype`` stacked ``target = (cells, channels)``, no auxiliary head, no drop
    path) and the search supernet over ``space`` at each ``grid`` setting are built (same seed), optionally
    trained ``train_steps`` steps, and measured with :func:`gradient_confusion` on the same minibatches.

    Args:
        measure: replaces the measurement: ``measure(kind, cells, channels)`` with ``kind`` ``"final"`` or
            ``"search"`` returns a :class:`ConfusionResult` or the criterion's value (for custom models or
            tests).
        criterion: ``"normalized"`` (ζ/P, the paper's) or ``"cosine"`` (scale-free, see the module
            docstring).
        space: the supernet's space (a name, ``NAME/stage1``, a file or a ``SearchSpace``); StacNAS
            matches its stage 1, hence the default ``s1/stage1``.
        other args: data and measurement settings (see :func:`gradient_confusion`).
    """
    settings = parse_grid(grid)
    t_cells, t_channels = int(target[0]), int(target[1])
    if t_cells < 3 or t_channels < 1:
        raise ValueError(f"target must be (cells >= 3, channels >= 1), got {target}")
    if m < 2:
        raise ValueError(f"gradient confusion needs m >= 2 minibatches, got {m}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    key = CRITERIA[criterion]
    say = log or (lambda _msg: None)
    if measure is None:
        measure = _default_measure(genotype, space, data, data_dir, image_size, batch_size, m, draws,
                                   train_steps, seed, device, backend)
    t_row = _timed_row("final", t_cells, t_channels, measure, key)
    say(f"final  {t_cells:>3} cells C={t_channels:<3} {key} = {t_row[key]:.4e} ({t_row['seconds']:.1f} s)")
    rows = []
    for cells, channels in settings:
        row = _timed_row("search", cells, channels, measure, key)
        row["gap"] = abs(row[key] - t_row[key])
        say(f"search {cells:>3} cells C={channels:<3} {key} = {row[key]:.4e} gap {row['gap']:.3e} "
            f"({row['seconds']:.1f} s)")
        rows.append(row)
    best_row = min(rows, key=lambda r: r["gap"])
    return DepthMatch(target=t_row, rows=rows, best=(best_row["cells"], best_row["channels"]),
                      criterion=criterion)


def _default_measure(
    genotype: Any, space: Any, data: str, data_dir: str | None, image_size: int | None, batch_size: int,
    m: int, draws: int, train_steps: int, seed: int, device: str | torch.device | None,
    backend: str | None,
) -> Measure:
    g = load_genotype(genotype)
    sp = resolve_space(space)  # fail on a bad space before any measurement
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")

    def measure(kind: str, cells: int, channels: int) -> ConfusionResult:
        # Same seed for every setting: same initialization stream and the same minibatches.
        torch.manual_seed(seed)
        loader, _, num_classes, in_ch, _ = make_search_loaders(data, data_dir, batch_size, one_level=True,
                                                               seed=seed, image_size=image_size)
        if kind == "final":
            if in_ch != 3:
                raise ValueError(f"final networks take 3-channel images; data {data!r} has {in_ch}")
            model: nn.Module = build_network(g, channels=channels, cells=cells, num_classes=num_classes,
                                             auxiliary=False, drop_path_prob=0.0)
        else:
            model = build_supernet(sp, cells=cells, channels=channels, num_classes=num_classes,
                                   in_channels=in_ch)
        model.to(dev)
        _brief_train(model, loader, train_steps)
        return gradient_confusion(model, loader, m=m, draws=draws, device=dev, backend=backend)

    return measure


"""The mixed edge of a DARTS supernet: its candidate ops summed with softmax weights.

``MixedOp(candidates)(x, weights) = Σ_k weights[k]·candidates[k](x)`` through the fused ``mixed_sum``.
Candidates marked ``is_zero = True`` (the ``none`` op) are skipped: their output and the gradient of their
weight, ``<0, g>``, are exactly zero, so computing them would only cost bandwidth.

Memory-saving mode keeps only the edge input for backward and recomputes the candidates there
(non-reentrant activation checkpointing), so the saved bytes of an edge drop from all candidates'
intermediates to one input tensor. The candidates' parameters stay ordinary autograd leaves of the graph,
which is what DDP's reducer and ``torch.compile`` need. BatchNorm running statistics are restored after the
recomputation, so each training step updates them exactly once, as in normal mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hnas_fast.kernels.mixed_sum import mixed_sum


class MixedOp(nn.Module):
    """A DARTS mixed edge over ``candidates``.

    Args:
        candidates: the candidate operations, each mapping the edge input to same-shape outputs.
        memory_saving: recompute the candidates in backward instead of keeping their intermediates.
        backend: the ``mixed_sum`` backend (``None`` = automatic; ``"reference"`` = plain PyTorch sum).
    """

    def __init__(self, candidates: Sequence[nn.Module], memory_saving: bool = False,
                 backend: str | None = None) -> None:
        super().__init__()
        if len(candidates) == 0:
            raise ValueError("MixedOp: candidates must hold at least one operation")
        self.candidates = nn.ModuleList(candidates)
        self.memory_saving = memory_saving
        self.backend = backend
        self._active_ids = [k for k, op in enumerate(self.candidates) if not getattr(op, "is_zero", False)]
        self._all_active = len(self._active_ids) == len(self.candidates)
        self.register_buffer("_active", torch.tensor(self._active_ids, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"K={len(self.candidates)}, memory_saving={self.memory_saving}, backend={self.backend}"

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the candidates applied to ``x``; ``weights`` has one entry per candidate."""
        if weights.dim() != 1 or weights.shape[0] != len(self.candidates):
            raise ValueError(f"MixedOp: weights must have shape ({len(self.candidates)},) for "
                             f"{len(self.candidates)} candidates, got {tuple(weights.shape)}")
        if not self._active_ids:
            return self.candidates[0](x)
        w = weights if self._all_active else weights.index_select(0, self._active)
        if self.memory_saving and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            if torch.compiler.is_compiling():
                # Compiled graphs apply buffer mutations once, functionally; recomputation cannot repeat them.
                return checkpoint(self._weighted_sum, x, w, use_reentrant=False)
            return checkpoint(self._weighted_sum, x, w, use_reentrant=False, context_fn=self._contexts)
        return self._weighted_sum(x, w)

    def _weighted_sum(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ys = [self.candidates[k](x) for k in self._active_ids]
        return mixed_sum(ys, w, backend=self.backend)

    def _contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _frozen_batchnorm_stats(self)


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm buffer of ``module`` on exit: a recomputation must not count twice."""
    saved = [(m, {name: buf.clone() for name, buf in m.named_buffers(recurse=False) if buf is not None})
             for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)

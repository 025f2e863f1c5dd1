"""Drop hnas_fast's fused mixed edge into a DARTS-style model you already have, in place.

One line, after building the model and before creating its optimizers (or after: parameters are kept)::

    hnas_fast.patch.patch_darts_model(model, memory_saving=True)

What is a DARTS-style mixed edge: a module whose class is named ``MixedOp`` and whose only child is
``_ops``, an ``nn.ModuleList`` of candidate operations, with ``forward(x, weights) = Σ_k weights[k] ·
_ops[k](x)`` (the public DARTS ``model_search.MixedOp(C, stride)``; pools are followed by
``BatchNorm2d(C, affine=False)`` inside their ``nn.Sequential``). Variants whose ``MixedOp`` holds other
children (PC-DARTS's partial-channel edge keeps a pooling ``mp``) compute something else and are left
alone; pass ``match=`` to choose modules yourself.

What the patch changes: each such module is replaced, in its parent, by a :class:`PatchedMixedOp` holding
the **same** ``_ops`` list, so every parameter and buffer is the same object (optimizers created before
still update the model) and ``state_dict()`` keys are unchanged (checkpoints load either way). Its
forward is hnas_fast's :class:`~hnas_fast.nn.mixed_op.MixedOp`: the weighted sum goes through the fused
``mixed_sum`` kernel (one pass over the candidates' outputs forward and backward instead of K
multiplications and K−1 additions, each with its own temporary), the ``none`` candidate (DARTS's
``Zero``) is skipped (its term and its weight's gradient are exactly zero), and with
``memory_saving=True`` the edge keeps only its input for backward and recomputes the candidates there
(BatchNorm running statistics are updated once per step, as without it). Outputs and gradients equal the
original ones up to floating-point summation order.

With ``convs=True`` (the default) it also swaps DARTS's ``SepConv`` and ``DilConv`` (a module of that
class name whose only child is the ``nn.Sequential`` ``op``) for a :class:`PatchedConvOp` holding the
**same** ``op``: each ``ReLU`` → depthwise ``Conv2d`` pair in it runs as one
:func:`~hnas_fast.kernels.depthwise_conv2d` with the ReLU fused (no ReLU'd copy is made or saved); the 1×1
convolutions and BatchNorms run as they are. Parameters, buffers and state-dict keys are again unchanged.

With ``pools=True`` (the default) it also swaps each ``nn.Sequential(pool, BatchNorm2d(C, affine=False))``
(DARTS's search-network pools: ``MaxPool2d(3, s, 1)`` or ``AvgPool2d(3, s, 1, count_include_pad=False)``,
and the 5×5 ones) for a :class:`PatchedPoolBN` holding the **same** two modules as its children ``0`` and
``1``: pooling and BatchNorm run as one fused :func:`~hnas_fast.kernels.pool_bn` (one pass forward, no
pooled intermediate saved, max-pool argmax recomputed in backward), with the BatchNorm's running
statistics updated as PyTorch updates them.

:func:`unpatch_darts_model` restores the original modules.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hnas_fast.nn.mixed_op import MixedOp
from hnas_fast.nn.operations import (
    DilConv,
    PoolBN,
    SepConv,
    is_fusable_depthwise,
    is_fusable_pool_bn,
    relu_depthwise_sequential,
)

__all__ = ["PatchedConvOp", "PatchedMixedOp", "PatchedPoolBN", "is_darts_conv_op", "is_darts_mixed_op",
           "is_darts_pool_bn", "patch_darts_model", "unpatch_darts_model"]

log = logging.getLogger(__name__)


def is_darts_mixed_op(module: nn.Module) -> bool:
    """Whether ``module`` looks like DARTS's ``MixedOp``: class ``MixedOp`` whose only child is ``_ops``."""
    return (type(module).__name__ == "MixedOp" and not isinstance(module, MixedOp)
            and isinstance(getattr(module, "_ops", None), nn.ModuleList)
            and [name for name, _ in module.named_children()] == ["_ops"])


def is_darts_conv_op(module: nn.Module) -> bool:
    """Whether ``module`` looks like DARTS's ``SepConv``/``DilConv``: that class name, its only child the
    ``nn.Sequential`` ``op``, which holds at least one ``ReLU`` directly followed by a depthwise convolution.
    hnas_fast's own SepConv/DilConv fuse already and are not matched."""
    if type(module).__name__ not in ("SepConv", "DilConv") or isinstance(module, (SepConv, DilConv)):
        return False
    op = getattr(module, "op", None)
    if not isinstance(op, nn.Sequential) or [name for name, _ in module.named_children()] != ["op"]:
        return False
    return any(isinstance(a, nn.ReLU) and is_fusable_depthwise(b) for a, b in itertools.pairwise(op))


def is_darts_pool_bn(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Sequential`` of exactly a DARTS pool and a ``BatchNorm2d``
    without affine parameters (what :func:`~hnas_fast.kernels.pool_bn` computes in one pass)."""
    return type(module) is nn.Sequential and len(module) == 2 and is_fusable_pool_bn(module[0], module[1])


def _is_zero(op: nn.Module) -> bool:
    # DARTS's Zero carries no marker; recognise it by name (hnas_fast's own Zero sets is_zero).
    return bool(getattr(op, "is_zero", False)) or type(op).__name__ == "Zero"


class PatchedMixedOp(MixedOp):
    """hnas_fast's mixed edge over an existing DARTS ``_ops`` list (the same list object, not a copy).

    The candidates stay registered as ``_ops`` so state-dict keys match the original model; the replaced
    module is kept (unregistered) for :func:`unpatch_darts_model`.
    """

    def __init__(self, original: nn.Module, memory_saving: bool = False, backend: str | None = None) -> None:
        nn.Module.__init__(self)  # MixedOp.__init__ would register the candidates as a new ModuleList
        ops: nn.ModuleList = original._ops
        if len(ops) == 0:
            raise ValueError("PatchedMixedOp: the DARTS MixedOp has no candidates")
        self._ops = ops
        self.memory_saving = memory_saving
        self.backend = backend
        self._active_ids = [k for k, op in enumerate(ops) if not _is_zero(op)]
        self._all_active = len(self._active_ids) == len(ops)
        device = next((t.device for t in [*ops.parameters(), *ops.buffers()]), torch.device("cpu"))
        self.register_buffer("_active", torch.tensor(self._active_ids, dtype=torch.long, device=device),
                             persistent=False)
        self.training = original.training
        object.__setattr__(self, "_original", original)  # not a submodule: no duplicate parameters

    @property
    def candidates(self) -> nn.ModuleList:  # what MixedOp's forward reads
        return self._ops

    @property
    def original(self) -> nn.Module:
        """The module this one replaced."""
        return self._original


class PatchedConvOp(nn.Module):
    """A DARTS ``SepConv``/``DilConv`` whose ``op`` (the same Sequential object) runs its ReLU → depthwise
    pairs fused (:func:`~hnas_fast.nn.operations.relu_depthwise_sequential`)."""

    def __init__(self, original: nn.Module, backend: str | None = None) -> None:
        super().__init__()
        self.op: nn.Sequential = original.op
        self.backend = backend
        self.training = original.training
        object.__setattr__(self, "_original", original)  # not a submodule: no duplicate parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_depthwise_sequential(self.op, x, self.backend)

    @property
    def original(self) -> nn.Module:
        """The module this one replaced."""
        return self._original


class PatchedPoolBN(PoolBN):
    """A DARTS ``nn.Sequential(pool, BatchNorm2d(affine=False))`` run as one fused pool+BN; its children
    ``0`` and ``1`` are the original's (same objects, same state-dict keys)."""

    def __init__(self, original: nn.Sequential, backend: str | None = None) -> None:
        super().__init__(original[0], original[1], backend)
        self.training = original.training
        object.__setattr__(self, "_original", original)  # not a submodule: no duplicate buffers

    @property
    def original(self) -> nn.Module:
        """The module this one replaced."""
        return self._original


def _replace(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)  # for nn.ModuleList children the name is the index, and setattr works too


def patch_darts_model(model: nn.Module, memory_saving: bool = False, backend: str | None = None,
                      match: Callable[[nn.Module], bool] = is_darts_mixed_op,
                      strict: bool = True, convs: bool = True, pools: bool = True) -> nn.Module:
    """Replace, in place, every DARTS ``MixedOp`` of ``model`` by a :class:`PatchedMixedOp`, (with
    ``convs``) every DARTS ``SepConv``/``DilConv`` by a :class:`PatchedConvOp`, and (with ``pools``) every
    pool + affine-free BatchNorm pair by a :class:`PatchedPoolBN`.

    Args:
        model: a DARTS-style search network (or any module containing DARTS mixed edges).
        memory_saving: recompute each edge's candidates in backward instead of keeping their intermediates.
        backend: the backend of the fused kernels, ``mixed_sum`` and ``depthwise_conv2d`` (``None``:
            compiled kernel when built, else Triton on CUDA, else plain PyTorch).
        match: which modules to replace (default :func:`is_darts_mixed_op`).
        strict: raise ``ValueError`` when nothing matched (a silent no-op would hide a wrong model).
        convs: also fuse the ReLU → depthwise pairs of SepConv/DilConv (:func:`is_darts_conv_op`).
        pools: also fuse each pool with its search BatchNorm (:func:`is_darts_pool_bn`).

    Returns:
        ``model`` itself, so ``model = patch_darts_model(model)`` also works.
    """
    names = [name for name, m in model.named_modules() if name and match(m)]
    conv_names = [name for name, m in model.named_modules() if name and convs and is_darts_conv_op(m)]
    pool_names = [name for name, m in model.named_modules() if name and pools and is_darts_pool_bn(m)]
    if not names and not conv_names and not pool_names and strict:
        raise ValueError(f"patch_darts_model: no DARTS MixedOp found in {type(model).__name__} (a module "
                         "named MixedOp whose only child is the ModuleList _ops); pass match= to choose")
    for name in conv_names:  # first: the patched edges below hold these very _ops lists
        _replace(model, name, PatchedConvOp(model.get_submodule(name), backend))
    for name in pool_names:
        _replace(model, name, PatchedPoolBN(model.get_submodule(name), backend))
    for name in names:
        _replace(model, name, PatchedMixedOp(model.get_submodule(name), memory_saving, backend))
    log.info("patch_darts_model: replaced %d mixed edges (memory_saving=%s), %d SepConv/DilConv and %d "
             "pool+BN pairs", len(names), memory_saving, len(conv_names), len(pool_names))
    return model


def unpatch_darts_model(model: nn.Module) -> nn.Module:
    """Put the original ``MixedOp``, ``SepConv``, ``DilConv`` and pool ``Sequential`` modules back (with the
    same, possibly trained, parameters and statistics)."""
    for kind in (PatchedConvOp, PatchedPoolBN, PatchedMixedOp):
        names: Sequence[str] = [n for n, m in model.named_modules() if isinstance(m, kind)]
        for name in names:
            patched = model.get_submodule(name)
            original = patched.original
            original.train(patched.training)
            _replace(model, name, original)
    return model

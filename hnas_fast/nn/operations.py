"""The DARTS candidate operations, registered by name in :mod:`hnas_fast.registry`.

Every operation maps ``[N, C, H, W]`` to ``[N, C, H', W']`` with ``H' = H`` at stride 1 and
``H' = ceil(H / 2)`` at stride 2 (odd sizes included). The modules follow DARTS's ``operations.py`` so
that parameter counts and state-dict layouts match the public code.

A factory is ``(C, stride, affine) -> nn.Module``. In the *search* network DARTS follows every pooling
candidate with ``BatchNorm2d(C, affine=False)`` (done in its ``MixedOp``); here that is the
``search=True`` flag of :func:`build_op`, so the final network gets the plain pools.

``SepConv`` and ``DilConv`` run each ReLU → depthwise pair as one fused op
(:func:`hnas_fast.kernels.depthwise_conv2d` with ``relu_input=True``) unless their backend resolves to
``reference`` (``backend=`` on the module, or ``HNAS_FAST_BACKEND=reference``), which runs ``self.op`` as
DARTS does. Their modules and state-dict keys are DARTS's either way; only the forward differs (hooks on
the ReLU or depthwise submodules do not fire on the fused path).

The search network's pooling candidates are :class:`PoolBN`: DARTS's ``nn.Sequential(pool,
BatchNorm2d(C, affine=False))`` (same submodules, same state-dict keys) whose forward runs the pair as one
:func:`hnas_fast.kernels.pool_bn.pool_bn` (no pooled intermediate is stored; the max pool's argmax is
recomputed in backward), with the same ``backend`` switch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.kernels.depthwise import depthwise_conv2d, resolve_depthwise_backend
from hnas_fast.kernels.pool_bn import pool_bn, resolve_pool_bn_backend
from hnas_fast.registry import (
    OPS,
    OpFactory,
    UnknownOpError,
    get_op,
    needs_search_bn,
    register_builtin_ops,
    register_op,
    unregister_op,
)

__all__ = [
    "OPS",
    "DilConv",
    "FactorizedReduce",
    "Identity",
    "OpFactory",
    "ReLUConvBN",
    "SepConv",
    "UnknownOpError",
    "Zero",
    "build_op",
    "get_op",
    "is_fusable_depthwise",
    "needs_search_bn",
    "register_op",
    "relu_depthwise",
    "relu_depthwise_sequential",
    "set_kernel_backend",
    "unregister_op",
]


class Zero(nn.Module):
    """The ``none`` operation: zeros, subsampled at stride 2.

    ``is_zero`` lets :class:`~hnas_fast.nn.mixed_op.MixedOp` skip it: its output is exactly zero.
    """

    is_zero = True

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Identity):
    """``skip_connect`` at stride 1; its own class so drop path can recognise it."""


class ReLUConvBN(nn.Module):
    """ReLU → k×k convolution → BatchNorm (DARTS's input preprocessing and conv op)."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU → depthwise k×k (dilated) → pointwise 1×1 → BatchNorm."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend  # the depthwise op's backend; None: HNAS_FAST_BACKEND, else the compiled op
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                groups=C_in, bias=False,
            ),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = getattr(self, "backend", None)
        if _use_reference(backend, x):
            return self.op(x)
        op = self.op
        return op[3](op[2](relu_depthwise(x, op[1], backend)))


class SepConv(nn.Module):
    """Twice [ReLU → depthwise k×k → pointwise 1×1 → BatchNorm]; the stride is in the first."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend  # the depthwise op's backend; None: HNAS_FAST_BACKEND, else the compiled op
        # One flat Sequential (op.0 … op.7) as in DARTS, so the public code's state dicts load as they are.
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = getattr(self, "backend", None)
        if _use_reference(backend, x):
            return self.op(x)
        op = self.op
        y = op[3](op[2](relu_depthwise(x, op[1], backend)))
        return op[7](op[6](relu_depthwise(y, op[5], backend)))


def _use_reference(backend: str | None, x: torch.Tensor) -> bool:
    return resolve_depthwise_backend(backend, x.device) == "reference"


def set_kernel_backend(module: nn.Module, backend: str | None) -> nn.Module:
    """Point every :class:`SepConv`, :class:`DilConv` and :class:`PoolBN` in ``module`` at the kernel
    ``backend`` (``None``: automatic, ``"reference"``: plain PyTorch); returns ``module``."""
    for m in module.modules():
        if isinstance(m, (SepConv, DilConv, PoolBN)):
            m.backend = backend
    return module


def relu_depthwise(x: torch.Tensor, conv: nn.Conv2d, backend: str | None = None) -> torch.Tensor:
    """``conv(relu(x))`` for a depthwise ``nn.Conv2d`` (groups = channels, square odd kernel, symmetric
    stride/padding/dilation, no bias) as one fused :func:`~hnas_fast.kernels.depthwise_conv2d`."""
    return depthwise_conv2d(x, conv.weight, conv.stride[0], conv.padding[0], conv.dilation[0],
                            relu_input=True, backend=backend)


def is_fusable_depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a depthwise ``nn.Conv2d`` that :func:`relu_depthwise` computes: groups = in = out
    channels, a square odd kernel, the same stride, padding and dilation on both axes, zero padding, no
    bias."""
    return (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and conv.bias is None and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.kernel_size[0] == conv.kernel_size[1] and conv.kernel_size[0] % 2 == 1
            and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1]
            and conv.dilation[0] == conv.dilation[1])


def relu_depthwise_sequential(seq: nn.Sequential, x: torch.Tensor,
                              backend: str | None = None) -> torch.Tensor:
    """``seq(x)``, with every ``nn.ReLU`` that is directly followed by a fusable depthwise convolution
    (:func:`is_fusable_depthwise`) run with it as one :func:`relu_depthwise`. The fused pair never writes
    its input, so an ``inplace=True`` ReLU there leaves ``x`` as it was."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        if isinstance(layers[i], nn.ReLU) and i + 1 < len(layers) and is_fusable_depthwise(layers[i + 1]):
            x = relu_depthwise(x, layers[i + 1], backend)
            i += 2
        else:
            x = layers[i](x)
            i += 1
    return x


class FactorizedReduce(nn.Module):
    """Halve H×W with two 1×1 stride-2 convolutions on offset grids, concatenated.

    DARTS's version only works for even sizes; for odd sizes the shifted path is padded by one row and
    column at the bottom/right so both paths give ``ceil(H / 2)`` (even sizes behave exactly as DARTS).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        shifted = x if (h % 2 == 0 and w % 2 == 0) else F.pad(x, (0, w % 2, 0, h % 2))
        out = torch.cat([self.conv_1(x), self.conv_2(shifted[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


_DARTS_OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "max_pool_5x5": lambda C, stride, affine: nn.MaxPool2d(5, stride=stride, padding=2),
    "avg_pool_5x5": lambda C, stride, affine: nn.AvgPool2d(
        5, stride=stride, padding=2, count_include_pad=False
    ),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}

register_builtin_ops(_DARTS_OPS)


def _pool_geometry(pool: nn.Module) -> tuple[str, int, int] | None:
    """``(kind, k, stride)`` when ``pool`` is a pool :func:`pool_bn` computes (square odd window, padding
    ``k // 2``, no dilation or ceil mode; average without the padding in its count), else ``None``."""
    def square(v: int | tuple[int, ...]) -> int | None:
        t = (v, v) if isinstance(v, int) else tuple(v)
        return t[0] if len(t) == 2 and t[0] == t[1] else None

    if isinstance(pool, nn.MaxPool2d):
        if pool.return_indices or pool.ceil_mode or square(pool.dilation) != 1:
            return None
        kind = "max"
    elif isinstance(pool, nn.AvgPool2d):
        if pool.count_include_pad or pool.ceil_mode or pool.divisor_override is not None:
            return None
        kind = "avg"
    else:
        return None
    k = square(pool.kernel_size)
    stride = square(pool.stride if pool.stride is not None else pool.kernel_size)
    if k is None or stride is None or k % 2 == 0 or square(pool.padding) != k // 2:
        return None
    return kind, k, stride


def _fused_geometry(pool: nn.Module, bn: nn.Module) -> tuple[str, int, int] | None:
    """``_pool_geometry(pool)`` when ``bn`` is a ``BatchNorm2d`` without affine parameters, else ``None``."""
    if type(bn) is not nn.BatchNorm2d or bn.affine or bn.num_features == 0:
        return None
    return _pool_geometry(pool)


def is_fusable_pool_bn(pool: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn(pool(x))`` is what :func:`pool_bn` computes: a DARTS pool (see
    :func:`_pool_geometry`) followed by a ``BatchNorm2d`` without affine parameters."""
    return _fused_geometry(pool, bn) is not None


def _pool_bn_with(x: torch.Tensor, geometry: tuple[str, int, int], bn: nn.BatchNorm2d,
                  backend: str | None) -> torch.Tensor:
    kind, k, stride = geometry
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    tracked = not bn.training or bn.track_running_stats
    return pool_bn(x, kind, k, stride, bn.running_mean if tracked else None,
                   bn.running_var if tracked else None, batch_stats, factor, bn.eps, backend=backend)


def pool_bn_module(x: torch.Tensor, pool: nn.Module, bn: nn.BatchNorm2d,
                   backend: str | None = None) -> torch.Tensor:
    """``bn(pool(x))`` as one :func:`pool_bn`, with ``bn``'s own rules for which statistics it uses and
    how it updates them (``num_batches_tracked``, ``momentum=None`` as a cumulative average,
    ``track_running_stats=False``). ``is_fusable_pool_bn(pool, bn)`` must hold."""
    geometry = _fused_geometry(pool, bn)
    assert geometry is not None, "pool_bn_module needs is_fusable_pool_bn(pool, bn)"
    return _pool_bn_with(x, geometry, bn, backend)


class PoolBN(nn.Sequential):
    """A search-network pooling candidate: ``pool`` then ``BatchNorm2d(C, affine=False)``, run as one fused
    :func:`pool_bn` (``backend`` as :class:`SepConv`'s; ``reference`` or an unfusable pair runs the two
    modules). Children ``0`` and ``1`` as DARTS's ``nn.Sequential``, so state dicts load either way."""

    def __init__(self, pool: nn.Module, bn: nn.BatchNorm2d, backend: str | None = None) -> None:
        super().__init__(pool, bn)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = getattr(self, "backend", None)
        geometry = _fused_geometry(self[0], self[1]) if len(self) == 2 else None
        if geometry is None or resolve_pool_bn_backend(backend, x.device) == "reference":
            return super().forward(x)
        return _pool_bn_with(x, geometry, self[1], backend)


def build_op(name: str, C: int, stride: int, affine: bool, search: bool = False) -> nn.Module:
    """Instantiate op ``name`` for ``C`` channels; ``search=True`` adds DARTS's BN after pools (a
    :class:`PoolBN` where the op is a pool it fuses, else an ``nn.Sequential``)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    op = get_op(name)(C, stride, affine)
    if search and needs_search_bn(name):
        bn = nn.BatchNorm2d(C, affine=False)
        op = PoolBN(op, bn) if is_fusable_pool_bn(op, bn) else nn.Sequential(op, bn)
    return op

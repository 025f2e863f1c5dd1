"""``pool_bn``: pooling fused with the search network's ``BatchNorm2d(affine=False)``, as a dispatcher op.

``torch.ops.hnas_fast.pool_bn`` runs the C++ kernel on CPU tensors (``csrc/pool_bn``): one pass over ``x``
pools and sums the batch statistics, a second normalizes in place; the running statistics are updated as
``BatchNorm2d`` updates them. Backward saves only ``x``, the output and ``invstd`` [C]: the max pool's argmax
is recomputed from ``x`` (no index tensor), ties resolved as torch's CPU kernel (first maximum in row-major
window order; a window with NaN routes to its first NaN, torch to its last). CUDA tensors run a documented
fallback to ``at::max_pool2d``/``avg_pool2d`` and
``at::native_batch_norm`` until the CUDA kernel lands. Autograd is registered in C++
(``csrc/pool_bn/autograd``), the fake kernels here, so the op works under ``torch.compile`` and
``torch.library.opcheck``.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from hnas_fast.kernels._ext import register_compiled_op
from hnas_fast.kernels.backend import check_image, resolve_backend
from hnas_fast.kernels.pool_bn.reference import pool_bn_reference

KINDS = ("max", "avg")


def _out_size(n: int, k: int, stride: int) -> int:
    return (n + 2 * (k // 2) - k) // stride + 1


def check_inputs(x: torch.Tensor, kind: str, kernel_size: int, stride: int,
                 running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                 training: bool, momentum: float, eps: float) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the offending argument for malformed inputs."""
    check_image("pool_bn", x)
    if kind not in KINDS:
        raise ValueError(f"pool_bn: kind must be one of {KINDS}, got {kind!r}")
    for name, value in (("kernel_size", kernel_size), ("stride", stride)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"pool_bn: {name} must be an int >= 1, got {value!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"pool_bn: kernel_size must be odd (padding is kernel_size // 2), got {kernel_size}")
    if min(x.shape) < 1:
        raise ValueError(f"pool_bn: x must have no empty dimension, got shape {tuple(x.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("pool_bn: running_mean and running_var must be given together")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[1],):
            raise ValueError(f"pool_bn: {name} must be a tensor of shape [C] = [{x.shape[1]}], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"pool_bn: {name} is on {t.device} but x is on {x.device}")
    ho, wo = (_out_size(n, kernel_size, stride) for n in x.shape[2:])
    if (training or running_mean is None) and x.shape[0] * ho * wo <= 1:
        raise ValueError(f"pool_bn: batch statistics need more than one value per channel, got x of shape "
                         f"{tuple(x.shape)} pooled to {ho}x{wo}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"pool_bn: momentum must be in [0, 1], got {momentum}")
    if not eps > 0:
        raise ValueError(f"pool_bn: eps must be > 0, got {eps}")


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if suggest_memory_format(x) == torch.channels_last else torch.contiguous_format


# ---- fake kernels of the compiled op -------------------------------------------------------------------

def _fake_forward(x, is_max, kernel_size, stride, running_mean, running_var, training, momentum, eps):
    shape = (x.shape[0], x.shape[1], *(_out_size(n, kernel_size, stride) for n in x.shape[2:]))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(shape).contiguous(memory_format=_format_of(x)), x.new_empty(x.shape[1], dtype=acc)


def _fake_backward(grad_out, x, out, invstd, is_max, kernel_size, stride, batch_stats):
    return torch.empty_like(x, memory_format=_format_of(x))


def _register_cpp() -> bool:
    return register_compiled_op("pool_bn", {"pool_bn": _fake_forward, "pool_bn_backward": _fake_backward})


def resolve_pool_bn_backend(backend: str | None, device: torch.device) -> str:
    """``cpp`` (the dispatcher op) or ``reference`` for tensors on ``device`` (meta stands for CPU)."""
    chosen = resolve_backend(backend, torch.device("cpu") if device.type == "meta" else device)
    return "cpp" if chosen in ("cpp", "triton") and _register_cpp() else "reference"


# ---- functional API -------------------------------------------------------------------------------------

def pool_bn(x: torch.Tensor, kind: str, kernel_size: int, stride: int = 1,
            running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
            training: bool = True, momentum: float = 0.1, eps: float = 1e-5, *,
            backend: str | None = None) -> torch.Tensor:
    """``batch_norm(pool(x))`` without affine parameters, DARTS's search-network pooling candidate.

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32/float64, any strides (channels_last read directly).
        kind: ``"max"`` or ``"avg"`` (average excludes the padding, ``count_include_pad=False``).
        kernel_size: odd; padding is ``kernel_size // 2`` (3x3 and 5x5 in the DARTS spaces).
        stride: 1 or 2 in a cell (any int >= 1 works).
        running_mean, running_var: ``[C]`` statistics updated in place when ``training`` (as
            ``F.batch_norm``); without them batch statistics are always used.
        training, momentum, eps: as ``F.batch_norm``.
        backend: ``"cpp"``, ``"reference"`` or ``None``/``"auto"`` (``HNAS_FAST_BACKEND`` when set).

    Returns:
        ``[N, C, Ho, Wo]`` in the dtype and memory format of ``x``.
    """
    check_inputs(x, kind, kernel_size, stride, running_mean, running_var, training, momentum, eps)
    if resolve_pool_bn_backend(backend, x.device) == "cpp":
        out, _ = torch.ops.hnas_fast.pool_bn(x, kind == "max", kernel_size, stride, running_mean, running_var,
                                             bool(training), float(momentum), float(eps))
        return out
    return pool_bn_reference(x, kind, kernel_size, stride, running_mean, running_var, training, momentum, eps)


_register_cpp()

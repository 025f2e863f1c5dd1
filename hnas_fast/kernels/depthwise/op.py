"""``depthwise_conv2d``: ``conv2d(relu(x) if relu_input else x, weight, groups=C)`` as a dispatcher op.

``torch.ops.hnas_fast.depthwise_conv2d`` runs the C++ kernel on CPU tensors (``csrc/depthwise``); its
backward op computes ``grad_input`` and ``grad_weight`` in one pass over the output gradient, recomputing
the ReLU mask from ``x``, so only ``x`` and ``weight`` are saved. ``grad_weight`` is reduced in a fixed order
(the same bits whatever the thread count). CUDA tensors run a documented fallback to ``at::conv2d`` /
``at::convolution_backward`` under the same schema until the CUDA kernel lands. Autograd and fake (meta)
kernels are registered here, so the op works under autograd, ``torch.compile`` and
``torch.library.opcheck``.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from hnas_fast.kernels._ext import register_compiled_op
from hnas_fast.kernels.backend import check_image, resolve_backend
from hnas_fast.kernels.depthwise.reference import depthwise_conv2d_reference


def _out_size(n: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def check_inputs(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the offending argument for malformed inputs."""
    check_image("depthwise_conv2d", x)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"depthwise_conv2d: weight must be a tensor, got {type(weight).__name__}")
    C = x.shape[1]
    if (weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1
            or weight.shape[2] != weight.shape[3]):
        raise ValueError(f"depthwise_conv2d: weight must have shape [C, 1, k, k] with C = {C} (the channels "
                         f"of x), got {tuple(weight.shape)}")
    k = weight.shape[2]
    if k % 2 != 1:
        raise ValueError(f"depthwise_conv2d: the kernel size of weight must be odd, got {k}")
    if weight.dtype != x.dtype:
        raise TypeError(f"depthwise_conv2d: weight has dtype {weight.dtype} but x has {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"depthwise_conv2d: weight is on {weight.device} but x is on {x.device}")
    for name, value, low in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"depthwise_conv2d: {name} must be an int >= {low}, got {value!r}")
    if C < 1:
        raise ValueError(f"depthwise_conv2d: x must have at least one channel, got shape {tuple(x.shape)}")
    ho, wo = (_out_size(n, k, stride, padding, dilation) for n in x.shape[2:])
    if ho < 1 or wo < 1:
        raise ValueError(f"depthwise_conv2d: x of size {x.shape[2]}x{x.shape[3]} is too small for kernel {k} "
                         f"with dilation {dilation} and padding {padding}")


def _format_of(x: torch.Tensor) -> torch.memory_format:
    # As the C++ op: channels_last when x is laid out so, contiguous otherwise.
    return torch.channels_last if suggest_memory_format(x) == torch.channels_last else torch.contiguous_format


# ---- fake kernels of the compiled op (its autograd is in C++: csrc/depthwise/autograd) ---------------------

def _fake_forward(x, weight, stride=1, padding=0, dilation=1, relu_input=False):
    k = weight.shape[2]
    shape = (x.shape[0], x.shape[1], *(_out_size(n, k, stride, padding, dilation) for n in x.shape[2:]))
    return x.new_empty(shape).contiguous(memory_format=_format_of(x))


def _fake_backward(grad_out, x, weight, stride, padding, dilation, relu_input, need_input_grad,
                   need_weight_grad):
    gx = torch.empty_like(x, memory_format=_format_of(x)) if need_input_grad else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if need_weight_grad else weight.new_empty(0)
    return gx, gw


def _register_cpp() -> bool:
    """Attach the fake kernels to the compiled op (once); False without the extension."""
    return register_compiled_op(
        "depthwise_conv2d", {"depthwise_conv2d": _fake_forward, "depthwise_conv2d_backward": _fake_backward})


# ---- functional API ----

def resolve_depthwise_backend(backend: str | None, device: torch.device) -> str:
    """The backend ``depthwise_conv2d`` runs for tensors on ``device``: ``cpp`` (the dispatcher op) or
    ``reference``. Meta tensors stand for CPU ones (the memory profile counts on them), so the op's fake
    kernel, which saves what the CPU kernel saves, runs there."""
    chosen = resolve_backend(backend, torch.device("cpu") if device.type == "meta" else device)
    return "cpp" if chosen in ("cpp", "triton") and _register_cpp() else "reference"


# ---- functional API -------------------------------------------------------------------------------------

def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0,
                     dilation: int = 1, relu_input: bool = False, *,
                     backend: str | None = None) -> torch.Tensor:
    """Depthwise convolution ``conv2d(relu(x) if relu_input else x, weight, groups=C)``.

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32/float64, any strides (channels_last is read directly).
        weight: ``[C, 1, k, k]`` with odd ``k``, in the dtype of ``x`` (as ``nn.Conv2d(C, C, k, groups=C)``).
        stride, padding, dilation: symmetric, as ``F.conv2d`` takes them as ints.
        relu_input: apply ``relu`` to ``x`` first (fused: no ReLU'd copy of ``x`` is made or saved).
        backend: ``"cpp"`` (C++ on the CPU; CUDA tensors use the ``at::conv2d`` fallback), ``"reference"``
            (plain PyTorch), or ``None``/``"auto"`` (``HNAS_FAST_BACKEND`` when set). There is no Triton
            kernel yet: ``"triton"`` runs the dispatcher op as ``"cpp"`` does.

    Returns:
        ``[N, C, Ho, Wo]`` in the dtype and memory format (channels_last or contiguous) of ``x``.
    """
    check_inputs(x, weight, stride, padding, dilation)
    chosen = resolve_depthwise_backend(backend, x.device)
    if chosen == "cpp":
        return torch.ops.hnas_fast.depthwise_conv2d(x, weight, stride, padding, dilation, bool(relu_input))
    return depthwise_conv2d_reference(x, weight, stride, padding, dilation, relu_input)


_register_cpp()

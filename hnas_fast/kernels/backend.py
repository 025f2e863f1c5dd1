"""Choice of the kernel backend for a fused op.

``cpp``: the compiled kernel of the tensor's device (C++ on the CPU, CUDA C++ on a GPU);
``cuda``: the same, insisting on a CUDA tensor; ``triton``: the Triton kernel (on the CPU only under
``TRITON_INTERPRET=1``); ``reference``: plain PyTorch. ``auto`` (or ``None``) picks the compiled kernel when
it exists for the device, then Triton on CUDA, then the reference. The environment variable
``HNAS_FAST_BACKEND`` overrides ``auto`` for every call that does not name a backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from hnas_fast.kernels._ext import build_info, extension_available

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")
ENV_VAR = "HNAS_FAST_BACKEND"


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it still needs a GPU or ``TRITON_INTERPRET=1`` to run)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run under the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return the concrete backend (``cpp``, ``triton`` or ``reference``) for tensors on ``device``."""
    name = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if name not in BACKENDS:
        source = "backend" if backend else ENV_VAR
        raise ValueError(f"{source}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if extension_available() and (device.type == "cpu" or _cuda_built(device)):
            return "cpp"
        if device.type == "cuda" and triton_available():
            return "triton"
        return "reference"
    if name in ("cpp", "cuda"):
        if not extension_available():
            raise RuntimeError(f"backend={name!r} needs the compiled extension hnas_fast._C; build it with "
                               "`pip install --no-build-isolation -e .` (or ./dev setup)")
        if name == "cuda" and device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if device.type == "cuda" and not _cuda_built(device):
            raise RuntimeError("hnas_fast._C was built without CUDA kernels; rebuild with nvcc available")
        return "cpp"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package")
        if device.type == "cpu" and not triton_interpreted():
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before import)")
    return name


def _cuda_built(device: torch.device) -> bool:
    return device.type == "cuda" and bool(build_info().get("with_cuda"))


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_image(op: str, x: object) -> None:
    """The image input every convolution/pooling op takes: a 4-D ``[N, C, H, W]`` float tensor, else a
    ``TypeError``/``ValueError`` naming ``op`` and ``x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")

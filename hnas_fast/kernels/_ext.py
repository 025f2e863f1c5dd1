"""Loading of the compiled extension ``hnas_fast._C`` (which also registers the C++/CUDA ops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_UNSET = object()
_ext: Any = _UNSET
_registered: set[str] = set()


def load_extension() -> Any | None:
    """Import ``hnas_fast._C`` once; ``None`` when the extension was not built."""
    global _ext
    if _ext is _UNSET:
        try:
            from hnas_fast import _C
        except ImportError:
            _ext = None
        else:
            _ext = _C
    return _ext


def extension_available() -> bool:
    """Whether the compiled ops (``torch.ops.hnas_fast.*``) are registered."""
    return load_extension() is not None


def build_info() -> dict[str, Any]:
    """The extension's build information, or ``{"built": False}`` without it."""
    ext = load_extension()
    if ext is None:
        return {"built": False}
    return {"built": True, **ext.build_info()}


def register_compiled_op(name: str, fakes: dict[str, Callable[..., Any]],
                         backward: Callable[..., Any] | None = None,
                         setup_context: Callable[..., None] | None = None) -> bool:
    """Attach fake kernels (``fakes``: op name -> fake) and autograd to the compiled op
    ``hnas_fast::<name>``, once; ``False`` when the extension (and so the op) does not exist. Without
    ``backward`` the op's autograd is the one registered in C++ (``csrc/<op>/autograd``)."""
    if name in _registered:
        return True
    if load_extension() is None:
        return False
    for op, fake in fakes.items():
        torch.library.register_fake(f"hnas_fast::{op}")(fake)
    if backward is not None:
        torch.library.register_autograd(f"hnas_fast::{name}", backward, setup_context=setup_context)
    _registered.add(name)
    return True

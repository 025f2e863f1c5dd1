"""Shared test helpers: the tolerance rule of design.md §2."""

from __future__ import annotations

import torch


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64."""
    x64, r64 = x.detach().double(), ref.detach().double()
    denom = r64.norm().item()
    diff = (x64 - r64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close_rule(fused: torch.Tensor, same_precision: torch.Tensor, ref64: torch.Tensor,
                      f32_tol: float = 1e-5) -> None:
    """design.md tolerance: fp32/fp64 within ``f32_tol`` of the float64 reference; fp16/bf16 at most 2× the
    error of the same-precision PyTorch computation against that reference."""
    if fused.dtype in (torch.float16, torch.bfloat16):
        err, base = rel_err(fused, ref64), rel_err(same_precision, ref64)
        assert err <= 2 * base, f"{fused.dtype}: fused error {err:.3e} > 2 × eager error {base:.3e}"
    else:
        err = rel_err(fused, ref64)
        tol = 1e-12 if fused.dtype == torch.float64 else f32_tol
        assert err <= tol, f"{fused.dtype}: relative error {err:.3e} > {tol:g}"

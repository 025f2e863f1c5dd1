"""The DARTS operations: shapes at stride 1 and 2 (odd sizes too), parameter layout, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hnas_fast import registry
from hnas_fast.nn.operations import (
    OPS,
    FactorizedReduce,
    Identity,
    UnknownOpError,
    Zero,
    build_op,
    get_op,
    needs_search_bn,
    register_op,
    unregister_op,
)

BUILTIN = [
    "none", "max_pool_3x3", "avg_pool_3x3", "max_pool_5x5", "avg_pool_5x5", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5",
]


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_op_shapes(seed: int, name: str, stride: int, hw: tuple[int, int]) -> None:
    C = 4
    x = torch.randn(2, C, *hw)
    for search in (False, True):
        op = build_op(name, C, stride, affine=not search, search=search)
        y = op(x)
        expected = hw if stride == 1 else tuple(math.ceil(s / 2) for s in hw)
        assert y.shape == (2, C, *expected), (name, stride, hw, search)


def test_all_builtins_registered() -> None:
    assert set(BUILTIN) <= set(OPS)


def test_zero_is_exact_and_flagged(seed: int) -> None:
    x = torch.randn(2, 3, 5, 5)
    assert Zero.is_zero is True
    assert torch.equal(Zero(1)(x), torch.zeros_like(x))
    y = Zero(2)(x)
    assert y.shape == (2, 3, 3, 3) and not y.any()
    assert isinstance(build_op("none", 3, 2, affine=False), Zero)


def test_skip_connect_kinds(seed: int) -> None:
    assert isinstance(build_op("skip_connect", 4, 1, affine=True), Identity)
    assert isinstance(build_op("skip_connect", 4, 2, affine=True), FactorizedReduce)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(build_op("skip_connect", 4, 1, affine=True)(x), x)


def test_factorized_reduce_even_matches_darts(seed: int) -> None:
    """On even sizes the shifted path is DARTS's x[:, :, 1:, 1:], no padding."""
    fr = FactorizedReduce(4, 6, affine=False).eval()
    x = torch.randn(2, 4, 8, 8)
    r = torch.relu(x)
    ref = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(fr(x), ref)
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 5)


def test_search_bn_only_after_pools() -> None:
    for name in BUILTIN:
        op = build_op(name, 4, 1, affine=False, search=True)
        plain = build_op(name, 4, 1, affine=False, search=False)
        if "pool" in name:
            assert needs_search_bn(name)
            assert isinstance(op, nn.Sequential) and isinstance(op[1], nn.BatchNorm2d)
            assert not op[1].affine
            assert isinstance(plain, (nn.MaxPool2d, nn.AvgPool2d))
        else:
            assert not needs_search_bn(name)
            assert type(op) is type(plain)


def test_avg_pool_excludes_padding(seed: int) -> None:
    x = torch.rand(1, 1, 4, 4) + 1.0
    y = build_op("avg_pool_3x3", 1, 1, affine=False)(x)
    # The corner averages its 4 real neighbours (count_include_pad=False), not 4 of 9.
    torch.testing.assert_close(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())


def test_param_counts_match_darts_layout() -> None:
    C = 16
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # sep_conv_3x3: 2 × (depthwise 9C + pointwise C² + BN 2C)
    assert count(build_op("sep_conv_3x3", C, 1, affine=True)) == 2 * (9 * C + C * C + 2 * C)
    # dil_conv_5x5: depthwise 25C + pointwise C² + BN 2C
    assert count(build_op("dil_conv_5x5", C, 1, affine=True)) == 25 * C + C * C + 2 * C
    assert count(build_op("sep_conv_7x7", C, 2, affine=False)) == 2 * (49 * C + C * C)
    assert count(build_op("skip_connect", C, 2, affine=True)) == 2 * C * (C // 2) + 2 * C
    sep = build_op("sep_conv_5x5", C, 2, affine=True)
    # DARTS's flat layout op.0..op.7, stride only in the first depthwise conv.
    assert [type(m).__name__ for m in sep.op] == ["ReLU", "Conv2d", "Conv2d", "BatchNorm2d"] * 2
    assert sep.op[1].stride == (2, 2) and sep.op[5].stride == (1, 1)
    dil = build_op("dil_conv_3x3", C, 1, affine=True)
    assert dil.op[1].dilation == (2, 2) and dil.op[1].groups == C


def test_get_op_unknown_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_op("conv_9x9")
    msg = str(info.value)
    assert "conv_9x9" in msg and "sep_conv_3x3" in msg and "skip_connect" in msg
    with pytest.raises(ValueError):  # also a ValueError
        build_op("conv_9x9", 4, 1, affine=True)
    assert issubclass(UnknownOpError, KeyError) and issubclass(UnknownOpError, ValueError)
    with pytest.raises(ValueError, match="stride"):
        build_op("sep_conv_3x3", 4, 3, affine=True)


class _Conv1x1(nn.Module):
    def __init__(self, C: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_register_user_op(seed: int) -> None:
    name = "test_conv_1x1"
    try:
        register_op(name, lambda C, stride, affine: _Conv1x1(C, stride))
        assert name in OPS and not needs_search_bn(name)
        y = build_op(name, 4, 2, affine=True, search=True)(torch.randn(2, 4, 8, 8))
        assert y.shape == (2, 4, 4, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_op(name, lambda C, stride, affine: nn.Identity())
        register_op(name, lambda C, stride, affine: nn.Identity(), overwrite=True, search_bn=True)
        assert isinstance(build_op(name, 4, 1, affine=False), nn.Identity)
        assert isinstance(build_op(name, 4, 1, affine=False, search=True)[1], nn.BatchNorm2d)
        with pytest.raises(ValueError, match="already registered"):
            register_op("sep_conv_3x3", lambda C, stride, affine: nn.Identity())
        with pytest.raises(TypeError):
            register_op("test_bad", "not callable")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="built-in"):
            unregister_op("none")
    finally:
        if name in OPS:
            unregister_op(name)
    assert name not in OPS and name not in registry._SEARCH_BN

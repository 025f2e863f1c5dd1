"""A DARTS-style search network written for the tests and benchmarks of :mod:`hnas_fast.patch`: the
structure of DARTS's ``model_search.py`` (``MixedOp(C, stride)`` with ``_ops``, ``SepConv``/``DilConv`` with
``op``, pools followed by ``BatchNorm2d(C, affine=False)``, ``Cell`` with ``_ops``, ``Network`` with
``alphas_normal``/``alphas_reduce``), in plain PyTorch, so the patch is exercised on code it has never seen.
``PRIMITIVES`` is a 6-op test set; ``DARTS_PRIMITIVES`` the paper's 8 (with the 5x5 convolutions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class Halve(nn.Module):  # the role of DARTS's FactorizedReduce
    def __init__(self, C_in, C_out, affine):
        super().__init__()
        self.a = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.b = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:])], 1))


def depthwise_block(C, k, stride, pad, dil, affine):
    return [nn.ReLU(), nn.Conv2d(C, C, k, stride, pad, dilation=dil, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine)]


class SepConv(nn.Module):
    def __init__(self, C, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(*depthwise_block(C, k, stride, pad, 1, affine),
                                *depthwise_block(C, k, 1, pad, 1, affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(*depthwise_block(C, k, stride, pad, 2, affine))

    def forward(self, x):
        return self.op(x)


TEST_OPS = {
    "none": lambda C, s, affine: Zero(s),
    "max_pool_3x3": lambda C, s, affine: nn.MaxPool2d(3, s, 1),
    "avg_pool_3x3": lambda C, s, affine: nn.AvgPool2d(3, s, 1, count_include_pad=False),
    "skip_connect": lambda C, s, affine: nn.Identity() if s == 1 else Halve(C, C, affine),
    "sep_conv_3x3": lambda C, s, affine: SepConv(C, 3, s, 1, affine),
    "dil_conv_3x3": lambda C, s, affine: DilConv(C, 3, s, 2, affine),
    "sep_conv_5x5": lambda C, s, affine: SepConv(C, 5, s, 2, affine),
    "dil_conv_5x5": lambda C, s, affine: DilConv(C, 5, s, 4, affine),
}
PRIMITIVES = list(TEST_OPS)[:6]
DARTS_PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                    "dil_conv_3x3", "dil_conv_5x5"]


class MixedOp(nn.Module):
    def __init__(self, C, stride, primitives=PRIMITIVES):
        super().__init__()
        self._ops = nn.ModuleList()
        for name in primitives:
            op = TEST_OPS[name](C, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, steps=2, primitives=PRIMITIVES):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (Halve(C_pp, C, False) if reduction_prev else
                            nn.Sequential(nn.ReLU(), nn.Conv2d(C_pp, C, 1, bias=False),
                                          nn.BatchNorm2d(C, affine=False)))
        self.preprocess1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C_p, C, 1, bias=False),
                                         nn.BatchNorm2d(C, affine=False))
        self._steps = steps
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1, primitives))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._steps:], dim=1)


class Network(nn.Module):
    def __init__(self, C=4, num_classes=5, layers=3, steps=2, primitives=PRIMITIVES, reductions=None):
        super().__init__()
        # DARTS reduces at layers // 3 and 2 * layers // 3; the small test network once, in the middle.
        reductions = (layers // 2,) if reductions is None else tuple(reductions)
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
        C_pp, C_p, C_curr = 3 * C, 3 * C, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(C_pp, C_p, C_curr, reduction, reduction_prev, steps, primitives))
            reduction_prev = reduction
            C_pp, C_p = C_p, steps * C_curr
        self.classifier = nn.Linear(C_p, num_classes)
        k = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-1 * torch.randn(k, len(primitives)))
        self.alphas_reduce = nn.Parameter(1e-1 * torch.randn(k, len(primitives)))

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        return self.classifier(s1.mean((2, 3)))



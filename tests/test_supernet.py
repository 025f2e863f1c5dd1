"""The search network: DARTS's published size, structure, forward/backward, arch/weight split, genotype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hnas_fast.genotypes.cell import Genotype, validate_genotype
from hnas_fast.nn.cell import SearchCell, num_cell_edges
from hnas_fast.nn.operations import FactorizedReduce, Identity, ReLUConvBN, Zero
from hnas_fast.nn.supernet import Supernet, build_supernet, default_reductions
from hnas_fast.spaces import get_space
from tests.helpers import rel_err


def test_darts_search_model_size() -> None:
    net = build_supernet("darts", cells=8, channels=16, num_classes=10)
    # DARTS model_search.Network(16, 10, 8, criterion), alphas excluded.
    assert sum(p.numel() for p in net.weight_parameters()) == 1930618
    assert [a.shape for a in net.arch_parameters()] == [torch.Size([14, 8])] * 2


def test_structure() -> None:
    net = build_supernet("darts", cells=8, channels=4)
    assert net.reduction_at == (2, 5) == default_reductions(8)
    assert len(net.cells) == 8 and net.channels == 4 and net.space is get_space("darts")
    for i, cell in enumerate(net.cells):
        assert isinstance(cell, SearchCell)
        assert cell.reduction == (i in (2, 5)) and cell.num_edges == num_cell_edges(4) == 14
        assert isinstance(cell.preprocess0, FactorizedReduce if i in (3, 6) else ReLUConvBN)
        e = 0
        for node in range(4):
            for j in range(node + 2):
                skip = cell.edges[e].candidates[net.space.index("skip_connect")]
                strided = cell.reduction and j < 2
                assert isinstance(skip, FactorizedReduce if strided else Identity)
                assert isinstance(cell.edges[e].candidates[0], Zero)
                assert len(cell.edges[e].candidates) == 8
                e += 1
    # Search BNs are never affine.
    bns = [m for m in net.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.affine for m in bns)


def test_forward_backward_tiny(seed: int) -> None:
    net = build_supernet("darts", cells=5, channels=4, num_classes=7)
    x = torch.randn(2, 3, 16, 16)
    y = net(x)
    assert y.shape == (2, 7)
    y.square().sum().backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0
    conv = net.cells[0].edges[0].candidates[net.space.index("sep_conv_3x3")].op[1].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0


def test_arch_weight_separation() -> None:
    net = build_supernet("s5", cells=3, channels=4)
    arch = net.arch_parameters()
    weights = net.weight_parameters()
    ids_a, ids_w = {id(p) for p in arch}, {id(p) for p in weights}
    assert not ids_a & ids_w
    assert ids_a | ids_w == {id(p) for p in net.parameters()}
    assert len(ids_w) == len(weights)
    sd = net.state_dict()
    assert "alphas_normal" in sd and "alphas_reduce" in sd
    assert all("alphas" not in n for n, _ in net.named_weight_parameters())
    # DARTS's init: 1e-3 · randn.
    assert 0 < arch[0].abs().max() < 1e-2
    wn, wr = net.edge_weights()
    torch.testing.assert_close(wn.sum(-1), torch.ones(num_cell_edges(4)))
    assert wr.shape == (14, 3)


def test_genotype_and_weights_override(seed: int) -> None:
    net = build_supernet("darts", cells=3, channels=4)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[:, net.space.index("sep_conv_5x5")] = 1.0
        net.alphas_reduce.normal_()
    g = net.genotype()
    assert isinstance(g, Genotype)
    assert all(op == "sep_conv_5x5" for op, _ in g.normal)
    validate_genotype(g, net.space)
    assert net.genotype(ranking="logit").normal == g.normal
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    # The `weights` argument replaces softmax(alphas): the same weights give the same logits.
    torch.testing.assert_close(net(x, weights=net.edge_weights()), net(x))


@pytest.mark.parametrize("space", ["hdas_stage", "s3"])
def test_other_spaces_and_stage_spaces(seed: int, space: str) -> None:
    sp = get_space(space)
    for s in (sp, sp.stage1(), sp.subspace(0)):
        net = build_supernet(s, cells=2, channels=4, nodes=2, multiplier=2, reduction_at=[1])
        assert isinstance(net, Supernet)
        assert net.alphas_normal.shape == (num_cell_edges(2), s.num_ops) == (5, s.num_ops)
        assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
        g = net.genotype()
        assert len(g.normal) == 4 and list(g.normal_concat) == [2, 3]


def test_backends_agree(seed: int) -> None:
    """The fused path (memory saving, fused mixed sum and depthwise ops) against the plain-PyTorch path run in
    float64, by design.md's rule; 1e-4 because the fused kernels sum in a different order."""
    torch.manual_seed(seed)
    ref = build_supernet("s5", cells=3, channels=4, mixed_backend="reference").double()
    torch.manual_seed(seed)
    auto = build_supernet("s5", cells=3, channels=4, memory_saving=True)
    x = torch.randn(2, 3, 8, 8)
    y_ref, y = ref(x.double()), auto(x)
    assert rel_err(y, y_ref) <= 1e-5
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (name, p), p_ref in zip(auto.named_parameters(), ref.parameters()):
        assert p.grad is not None and rel_err(p.grad, p_ref.grad) <= 1e-4, name


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="reduction_at"):
        build_supernet("darts", cells=3, channels=4, reduction_at=[5])
    with pytest.raises(ValueError, match="known spaces"):
        build_supernet("dartz")
    with pytest.raises(ValueError, match="multiplier"):
        build_supernet("s5", cells=1, channels=4, multiplier=5)

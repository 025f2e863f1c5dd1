"""StacNAS: stage-1 space, winning groups, the per-edge stage-2 supernet, weight inheritance, a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hnas_fast.genotypes.cell import genotype_from_json, validate_genotype
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.stacnas import (
    StageTwoSupernet,
    alpha_entropy,
    genotype_diagnostics,
    inherit_weights,
    stage_two_edge_ops,
    winning_groups,
)
from hnas_fast.spaces import get_space, load_space


def _edge_index(node: int, j: int) -> int:
    return sum(t + 2 for t in range(node)) + j


@pytest.mark.parametrize("name", ["s1", "s2", "s3", "s4", "s5"])
def test_stage1_space_has_one_representative_per_group(name):
    space = get_space(name)
    st1 = space.stage1()
    non_none = [op for op in st1.ops if op != "none"]
    assert sorted(non_none) == sorted(space.representatives)
    assert len({space.group_of(op) for op in non_none}) == len(space.groups)
    assert "none" in st1.ops


def test_winning_groups_and_stage_two_ops():
    space = get_space("s1")
    stage1 = build_supernet(space.stage1(), cells=3, channels=4)
    ops = list(stage1.space.ops)  # none, max3, skip, sep3, dil3
    with torch.no_grad():
        stage1.alphas_normal.zero_()
        stage1.alphas_reduce.zero_()
        stage1.alphas_normal[:, ops.index("none")] = 10.0  # none never wins a group
        for e in range(14):
            stage1.alphas_normal[e, 1 + e % 4] = 1.0
            stage1.alphas_reduce[e, ops.index("dil_conv_3x3")] = 1.0
    win_n, win_r = winning_groups(stage1, space)
    assert win_n == [space.group_of(ops[1 + e % 4]) for e in range(14)]
    assert win_r == [space.group_of("dil_conv_3x3")] * 14
    edges = stage_two_edge_ops(space, win_n)
    assert edges[0] == ("none", "max_pool_3x3", "avg_pool_3x3")
    assert edges[1] == ("none", "skip_connect")
    assert edges[2] == ("none", "sep_conv_3x3", "sep_conv_5x5")
    assert edges[3] == ("none", "dil_conv_3x3", "dil_conv_5x5")


def test_stage_two_supernet_edges_hold_exactly_their_groups(seed):
    space = get_space("s1")
    normal = stage_two_edge_ops(space, [e % 4 for e in range(14)])
    reduce = stage_two_edge_ops(space, [(e + 1) % 4 for e in range(14)])
    net = StageTwoSupernet(space, normal, reduce, cells=3, channels=4, num_classes=10)
    for cell in net.cells:
        expected = reduce if cell.reduction else normal
        assert [len(edge.candidates) for edge in cell.edges] == [len(e) for e in expected]
        assert list(cell.edge_ops) == expected
    w_n, _ = net.edge_weights()
    assert torch.all(w_n[~net.mask_normal] == 0) and torch.allclose(w_n.sum(-1), torch.ones(14))
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert torch.all(net.alphas_normal.grad[~net.mask_normal] == 0)
    assert net.alphas_normal.grad[net.mask_normal].abs().sum() > 0
    with torch.no_grad():  # push masked-out ops high: they must still never be chosen
        net.alphas_normal.masked_fill_(~net.mask_normal, 50.0)
    for ranking in ("logit", "weight"):
        g = net.genotype(ranking)
        validate_genotype(g, space)
        for idx, (op, j) in enumerate(g.normal):
            assert op in normal[_edge_index(idx // 2, j)]


def test_stage_two_rejects_bad_edges():
    space = get_space("s1")
    with pytest.raises(ValueError, match="expected 14"):
        StageTwoSupernet(space, [("none", "skip_connect")] * 3, [("none", "skip_connect")] * 14, cells=3)
    with pytest.raises(ValueError, match="no op other than 'none'"):
        StageTwoSupernet(space, [("none",)] * 14, [("none", "skip_connect")] * 14, cells=3)
    with pytest.raises(ValueError, match="not in space"):
        StageTwoSupernet(space, [("none", "sep_conv_7x7")] * 14, [("none", "skip_connect")] * 14, cells=3)


def test_inherit_weights_copies_shared_ops_only(seed):
    space = get_space("s1")
    stage1 = build_supernet(space.stage1(), cells=3, channels=4)
    normal = stage_two_edge_ops(space, [space.group_of("sep_conv_3x3")] * 14)
    reduce = stage_two_edge_ops(space, [space.group_of("max_pool_3x3")] * 14)
    stage2 = StageTwoSupernet(space, normal, reduce, cells=3, channels=4)
    a_before = stage2.alphas_normal.detach().clone()
    sep5 = stage2.cells[0].edges[0].candidates[normal[0].index("sep_conv_5x5")]
    sep5_before = {k: v.clone() for k, v in sep5.state_dict().items()}
    n = inherit_weights(stage2, stage1)
    assert n > 0
    assert torch.equal(stage2.stem[0].weight, stage1.stem[0].weight)
    assert torch.equal(stage2.cells[0].preprocess1.op[1].weight, stage1.cells[0].preprocess1.op[1].weight)
    ops1 = stage1.cells[0].ops
    src = stage1.cells[0].edges[0].candidates[ops1.index("sep_conv_3x3")]
    dst = stage2.cells[0].edges[0].candidates[normal[0].index("sep_conv_3x3")]
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # sep_conv_5x5 was not in stage 1: it keeps its own initialization.
    assert all(torch.equal(v, sep5.state_dict()[k]) for k, v in sep5_before.items())
    # Reduction cells of stage 2 hold pools; stage 1's max_pool_3x3 BN statistics come across.
    red1 = next(c for c in stage1.cells if c.reduction)
    red2 = next(c for c in stage2.cells if c.reduction)
    with torch.no_grad():
        red1.edges[0].candidates[red1.ops.index("max_pool_3x3")][1].running_mean.fill_(0.5)
    inherit_weights(stage2, stage1)
    assert torch.all(red2.edges[0].candidates[reduce[0].index("max_pool_3x3")][1].running_mean == 0.5)
    assert torch.equal(stage2.alphas_normal, a_before)


def test_alpha_entropy_and_diagnostics():
    w = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    ent = alpha_entropy(w)
    assert ent[0] == pytest.approx(math.log(4)) and ent[1] == 0.0
    from hnas_fast.genotypes.cell import DARTS_V2

    d = genotype_diagnostics(DARTS_V2)
    assert d["normal"] == {"skip_connect": 2, "parameter_free": 2}
    assert d["reduce"] == {"skip_connect": 3, "parameter_free": 8}


def _stacnas(out, **settings):
    """A tiny StacNAS pipeline on the digits at 8x8 (one epoch per stage)."""
    from hnas_fast.search.pipeline import run_pipeline
    from hnas_fast.search.presets import make_config

    base = dict(strategy="stacnas", image_size=8, batch_size=32, cells=3, channels=4, stage2_cells=4,
                epochs=1, plots=False, quiet=True, out=str(out))
    return run_pipeline(make_config("default", {**base, **settings}))


def test_tiny_two_stage_run(tmp_path, seed):
    out = tmp_path / "run"
    res = _stacnas(out, inherit_weights=True, seed=seed % 1000)
    assert res.finished and res.files[0] == out / "genotype.json"
    space = get_space("s1")
    validate_genotype(res.result, space)
    summary = json.loads((out / "stacnas.json").read_text())
    for which in ("normal", "reduce"):
        wins = summary["winning_groups"][which]
        edges = summary["stage2_edge_ops"][which]
        assert len(edges) == 14
        for e, group in enumerate(wins):
            assert set(edges[e]) == set(group) | {"none"}
        for idx, (op, j) in enumerate(getattr(res.result, which)):
            assert op in wins[_edge_index(idx // 2, j)]
    # Stage 2 was built at its own depth, one-level, and started from stage-1 weights.
    stage2 = json.loads((out / "stage2" / "config.json").read_text())
    assert (stage2["cells"], stage2["strategy"], stage2["epochs"]) == (4, "one-level", 1)
    assert summary["inherited_tensors"] > 0
    assert genotype_from_json((out / "genotype.json").read_text()) == res.result
    assert "alpha_entropy_mean" in summary["diagnostics"]["normal"]
    assert load_space(out / "space.json") == space
    assert json.loads((out / "pipeline.json").read_text())["done"].keys() == {"stage1", "stage2"}


def test_groups_from_file_and_bad_config(tmp_path):
    from hnas_fast.search.presets import ConfigError, make_config

    custom = get_space("s4").to_dict()
    path = tmp_path / "g.json"
    path.write_text(json.dumps(custom))
    res = _stacnas(tmp_path / "a", space="s4", groups=str(path), channels=2, stage2_cells=3)
    assert load_space(tmp_path / "a" / "space.json") == get_space("s4")
    validate_genotype(res.result, get_space("s4"))
    with pytest.raises(ValueError, match="unknown search space"):
        _stacnas(tmp_path / "b", space="nope")
    with pytest.raises(ConfigError, match="stage2_cells"):
        make_config("default", {"strategy": "stacnas", "stage2_cells": 2})
    with pytest.raises(ConfigError, match="has ops"):
        _stacnas(tmp_path / "c", space="s1", groups=str(path))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_groups_from_correlation(tmp_path):
    """groups="correlation": a full-space supernet is trained, correlated and clustered first."""
    out = tmp_path / "run"
    res = _stacnas(out, groups="correlation", correlation_epochs=1, correlation_images=16, channels=2,
                   stage2_cells=3, plots=True)
    space = load_space(out / "space.json")
    assert ("skip_connect",) in space.groups and space.name == "s1-clustered"
    data = json.loads((out / "correlation.json").read_text())
    assert data["images"] == 16 and len(data["ops"]) == 6
    assert (out / "correlation.png").is_file()
    assert (out / "correlation" / "log.jsonl").is_file()
    validate_genotype(res.result, get_space("s1"))


def test_strategy_brings_the_papers_defaults():
    from hnas_fast.search.presets import make_config

    cfg = make_config("default", {"strategy": "stacnas"})
    assert (cfg.space, cfg.ranking, cfg.grad_clip) == ("s1", "logit", 3.0)
    assert cfg.stage2_size == (7, 8, 2)  # 5 cells x 20/14, the preset's width and epochs
    assert make_config("default", {"strategy": "stacnas", "ranking": "weight"}).ranking == "weight"
    paper = make_config("stacnas", {"data": "cifar10", "data_dir": "x"})
    assert (paper.cells, paper.stage2_size, paper.grad_clip) == (14, (20, 16, 80), 3.0)

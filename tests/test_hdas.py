"""H-DAS: Hc-DAS supernet, the Hs-DAS stage supernet and its losses, the final network, and tiny searches."""
from __future__ import annotations

import json

import pytest
import torch

from hnas_fast.genotypes.cell import DARTS_V2, STACNAS_CIFAR
from hnas_fast.genotypes.macro import (
    STAGE_OPS,
    MacroGenotype,
    StageDAG,
    candidate_predecessors,
    chain_macro_genotype,
    load_macro_genotype,
    remove_dead_cells,
)
from hnas_fast.nn.hc_supernet import (
    StageGenotypes,
    as_stage_genotypes,
    build_hc_supernet,
    stage_genotypes_from_json,
    stage_genotypes_to_json,
)
from hnas_fast.nn.hdas_network import build_hdas_network
from hnas_fast.nn.network import NetworkCIFAR
from hnas_fast.nn.stage_dag import (
    StageDAGSupernet,
    depth_numbers,
    edge_strengths,
    stage_depth_loss,
)
from hnas_fast.search.__main__ import main

SKIP, MAX, AVG = "skip_connect", "max_pool_3x3", "avg_pool_3x3"
NONE = STAGE_OPS.index("none")


def _one_hot_alphas(preds, choose):
    """Logits whose edges are all 'none' except (cell i -> choose(i)) with skip."""
    a = torch.zeros(sum(map(len, preds)), len(STAGE_OPS))
    a[:, NONE] = 30.0
    row = 0
    for i, p in enumerate(preds):
        for k, j in enumerate(p):
            if j in choose(i):
                a[row + k, NONE] = 0.0
                a[row + k, STAGE_OPS.index(SKIP)] = 30.0
        row += len(p)
    return a


def _depths(preds, alphas):
    strengths = edge_strengths(torch.softmax(alphas, -1), preds, STAGE_OPS)
    return [float(d) for d in depth_numbers(strengths, preds)]


# ------------------------------------------------------------------------------------------- depth
def test_depth_of_chain_is_its_length():
    n = 6
    preds = candidate_predecessors(n)
    d = _depths(preds, _one_hot_alphas(preds, lambda i: {i + 1}))  # cell i reads node i + 1: a chain
    assert d == pytest.approx([1, 2, 3, 4, 5, 6], abs=1e-6)


def test_depth_of_star_is_one():
    n = 5
    preds = candidate_predecessors(n)
    d = _depths(preds, _one_hot_alphas(preds, lambda i: {0, 1}))  # every cell reads only the inputs
    assert d == pytest.approx([1.0] * n, abs=1e-6)


def test_depth_is_average_over_two_predecessors():
    # Normalized edge weights (our reading): a cell reading an input and a depth-2 cell has depth 2.
    preds = candidate_predecessors(3)
    d = _depths(preds, _one_hot_alphas(preds, lambda i: {i + 1} if i < 2 else {0, 3}))
    assert d == pytest.approx([1.0, 2.0, (1 + 3) / 2], abs=1e-6)


def test_depth_loss_falls_when_weight_moves_deeper(seed):
    model = StageDAGSupernet(DARTS_V2, (4, 4, 4), channels=2, window=3)
    base = float(model.depth_loss().detach())
    with torch.no_grad():
        for a, preds in zip(model.alphas, model.preds):
            row = 0
            for p in preds:
                a[row + len(p) - 1, :NONE] += 1.0  # strengthen the edge from the nearest (deepest) node
                a[row, NONE] += 1.0  # weaken the edge from the farthest
                row += len(p)
    assert float(model.depth_loss().detach()) < base
    # And its gradient pushes the same way: a descent step on L_depth lowers it.
    model.zero_grad()
    model.depth_loss().backward()
    before = float(model.depth_loss().detach())
    with torch.no_grad():
        for a in model.alphas:
            a -= 0.5 * a.grad
    assert float(model.depth_loss().detach()) < before


def test_depth_loss_values():
    # A full chain of N cells: d_i / i = 1 for all i, so each stage contributes exactly -1 (Eq. 2).
    d = [torch.tensor(float(i)) for i in range(1, 5)]
    assert float(stage_depth_loss(d)) == pytest.approx(-1.0)
    # Eq. 4: w_i = 1 + i softmax(beta)_p for the cell ending pair p; moving beta to the deeper pair lowers it.
    shallow = stage_depth_loss(d, torch.tensor([0.9, 0.1]), n_min=3)
    deep = stage_depth_loss(d, torch.tensor([0.1, 0.9]), n_min=3)
    assert float(deep) < float(shallow)
    assert float(shallow) == pytest.approx(-(1 + 1 + 1 * (1 + 3 * 0.9) + 1 * (1 + 4 * 0.1)) / 4)


def test_complexity_loss_is_expected_cell_count():
    model = StageDAGSupernet(DARTS_V2, (4, 4, 4), channels=2, window=3, n_min=2).requires_grad_(False)
    with torch.no_grad():
        for b in model.betas:
            b.zero_()
    assert float(model.complexity_loss()) == pytest.approx(3 * (2 + 3 + 4) / 3)
    with torch.no_grad():
        model.betas[0].copy_(torch.tensor([0.0, 0.0, 50.0]))
    assert float(model.complexity_loss()) == pytest.approx(4 + 3 + 3, abs=1e-4)
    assert float(model.complexity_loss(theta=[2.0, 0.0, 0.0])) == pytest.approx(8, abs=1e-4)
    assert float(StageDAGSupernet(DARTS_V2, (2, 2, 2), channels=2).complexity_loss()) == 0.0


# ------------------------------------------------------------------------------------ supernets
def test_stage_supernet_forward_backward_and_window(seed):
    model = StageDAGSupernet([DARTS_V2, STACNAS_CIFAR, DARTS_V2], (3, 2, 3), channels=2, window=3, n_min=1)
    for preds, a in zip(model.preds, model.alphas):
        assert a.shape[0] == sum(min(i + 2, 3) for i in range(len(preds)))
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert out.shape == (2, 10)
    (out.square().mean() + model.depth_loss() + model.complexity_loss()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.arch_parameters())
    m = model.macro_genotype()
    assert m.window == 3 and len(m.stages) == 3


def test_stage_supernet_bad_input():
    with pytest.raises(ValueError, match="larger than the stage"):
        StageDAGSupernet(DARTS_V2, (2, 2, 2), channels=2, window=4)
    with pytest.raises(ValueError, match="2 stage cell genotype"):
        StageDAGSupernet([DARTS_V2, DARTS_V2], (2, 2, 2), channels=2)
    with pytest.raises(ValueError, match="n_min"):
        StageDAGSupernet(DARTS_V2, (2, 2, 2), channels=2, n_min=3)


def test_hc_supernet_stage_specific(seed):
    net = build_hc_supernet(cells=5, channels=2)
    assert len(net.arch_parameters()) == 5  # 3 normal + 2 reduction
    out = net(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.arch_parameters())
    ops = list(net.space.ops)
    favour = {0: "sep_conv_3x3", 1: "sep_conv_5x5", 2: "skip_connect"}
    with torch.no_grad():
        for s, op in favour.items():
            net.alphas_normal_stages[s][:, ops.index(op)] = 5.0
        net.alphas_reduce_stages[0][:, ops.index("max_pool_3x3")] = 5.0
        net.alphas_reduce_stages[1][:, ops.index("dil_conv_5x5")] = 5.0
    g = net.genotype()
    assert g.num_stages == 3
    for s, op in favour.items():
        assert {o for o, _ in g.stages[s].normal} == {op}  # each stage reads its own logits
    assert {op for op, _ in g.stages[1].reduce} == {"max_pool_3x3"}  # reduction 0 opens stage 1
    assert {op for op, _ in g.stages[2].reduce} == {"dil_conv_5x5"}
    assert stage_genotypes_from_json(json.dumps(stage_genotypes_to_json(g))) == g


def test_as_stage_genotypes():
    assert as_stage_genotypes(DARTS_V2, 3) == StageGenotypes((DARTS_V2,) * 3)
    assert as_stage_genotypes("DARTS_V2", 2).num_stages == 2
    with pytest.raises(ValueError, match="2 stage cell genotype"):
        as_stage_genotypes([DARTS_V2, STACNAS_CIFAR], 3)


# ------------------------------------------------------------------------------------ final network
def test_chain_macro_reproduces_darts_stacking(seed):
    # "pair" mode: each cell's two kept predecessors feed c_{k-2}, c_{k-1}; with the skip chain this is
    # DARTS's NetworkCIFAR exactly: same parameter names, same outputs (aux head included). Both NCHW, so
    # bit-equality holds (the H-DAS network does not run channels_last yet).
    ref = NetworkCIFAR(2, 10, 8, True, DARTS_V2, 0.0, channels_last=False)
    net = build_hdas_network(DARTS_V2, chain_macro_genotype([2, 2, 2]), channels=2, auxiliary=True,
                             drop_path_prob=0.0)
    assert sorted(net.state_dict()) == sorted(ref.state_dict())
    net.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    (a, a_aux), (b, b_aux) = ref(x), net(x)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(b_aux, a_aux, rtol=0, atol=0)
    ref.eval()
    net.eval()
    torch.testing.assert_close(net(x)[0], ref(x)[0], rtol=0, atol=0)


def test_sum_mode_feeds_the_summed_input_to_both_cell_inputs(seed):
    # "sum" mode is the paper's relaxation read literally: it departs from DARTS stacking because a cell's
    # two inputs are the same tensor, the sum of its kept edges.
    net = build_hdas_network(DARTS_V2, chain_macro_genotype([2, 1, 1]), channels=2, auxiliary=False,
                             drop_path_prob=0.0, input_mode="sum", stem_multiplier=4)
    seen = {}
    net.cells[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("args", args))
    x = torch.randn(2, 3, 8, 8)
    net(x)
    s0, s1 = seen["args"][:2]
    assert s0 is s1
    torch.testing.assert_close(s0, 2 * net.stem(x))  # skip(stem) + skip(stem)
    pair = build_hdas_network(DARTS_V2, chain_macro_genotype([2, 1, 1]), channels=2, auxiliary=False,
                              stem_multiplier=4)
    assert sum(p.numel() for p in net.parameters()) != sum(p.numel() for p in pair.parameters())


def test_dead_cells_are_not_built(seed):
    dead_stage = StageDAG(cells=(((SKIP, 0), (MAX, 1)), ((SKIP, 1), (AVG, 2)), ((SKIP, 0), (SKIP, 2)),
                                 ((SKIP, 2), (MAX, 4))), output=(4, 5))
    m = MacroGenotype((dead_stage, dead_stage, dead_stage))
    net = build_hdas_network(DARTS_V2, m, channels=2, auxiliary=False)
    pruned = build_hdas_network(DARTS_V2, remove_dead_cells(m), channels=2, auxiliary=False)
    kept = build_hdas_network(DARTS_V2, m, channels=2, auxiliary=False, remove_dead=False)
    assert net.num_cells == 3 * 3 + 2 == kept.num_cells - 3
    assert net.macro.cells_per_stage == (3, 3, 3)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in kept.parameters())
    net.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    pruned.eval()
    kept.eval()
    torch.testing.assert_close(net(x)[0], pruned(x)[0])
    # The dead cells never reach the output: with the live cells' weights copied over, the network with
    # them computes exactly what the pruned one does.
    live_idx = [0, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13]  # kept's cells minus the dead c1 of each stage
    with torch.no_grad():
        for k, i in enumerate(live_idx):
            kept.cells[i].load_state_dict(net.cells[k].state_dict())
        kept.stem.load_state_dict(net.stem.state_dict())
        kept.classifier.load_state_dict(net.classifier.state_dict())
    torch.testing.assert_close(kept(x)[0], net(x)[0], rtol=0, atol=0)


def test_final_network_bad_input():
    chain = chain_macro_genotype([2, 2, 2])
    with pytest.raises(ValueError, match="2 stage cell genotype"):
        build_hdas_network([DARTS_V2, DARTS_V2], chain, channels=2)
    with pytest.raises(ValueError, match="larger than stage"):
        build_hdas_network(DARTS_V2, MacroGenotype(chain.stages, window=5), channels=2)
    bad = {"stages": [{"cells": [[[SKIP, 0], [SKIP, 1]], [[SKIP, 1], [SKIP, 8]]], "output": [2, 3]}] * 3}
    with pytest.raises(ValueError, match="missing cell"):
        build_hdas_network(DARTS_V2, bad, channels=2)
    with pytest.raises(ValueError, match="input_mode"):
        build_hdas_network(DARTS_V2, chain, channels=2, input_mode="concat")  # type: ignore[arg-type]


def test_per_stage_cells_in_final_network(seed):
    net = build_hdas_network([DARTS_V2, STACNAS_CIFAR, DARTS_V2], chain_macro_genotype([1, 2, 1]), channels=2,
                             auxiliary=False)
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 10)


def test_config_errors():
    from hnas_fast.search.presets import ConfigError, make_config

    def cfg(**kw):
        return make_config("default", {"strategy": "hdas", **kw})

    with pytest.raises(ConfigError, match="does not fit stage"):
        cfg(cells_per_stage=(2, 2, 2), window=4)
    with pytest.raises(ConfigError, match="n_min"):
        cfg(cells_per_stage=(4, 4, 4), window=3, n_min=1)
    with pytest.raises(ConfigError, match="unknown hdas_mode"):
        cfg(hdas_mode="x")
    with pytest.raises(ConfigError, match="unknown setting"):
        cfg(bogus=1)
    assert cfg(window=0).window == 0  # 0: no window, as the help says


# --------------------------------------------------------------------------------------- searches
_TINY = ["--strategy", "hdas", "--image-size", "8", "--batch-size", "64", "--epochs", "1", "--channels", "4",
         "--quiet"]


def test_hsdas_search_from_command_line(tmp_path):
    out = tmp_path / "hs"
    rc = main(["--hdas-mode", "hsdas", "--cells-per-stage", "2", "2", "2", "--window", "3",
               "--cell-genotype", "DARTS_V2", "--out", str(out), *_TINY])
    assert rc == 0
    macro = load_macro_genotype(out / "macro_genotype.json")
    assert macro.cells_per_stage == (2, 2, 2) and macro.window == 3
    assert (out / "stages.png").stat().st_size > 0 and (out / "stages.svg").is_file()
    log = [json.loads(line) for line in (out / "hsdas" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["type"] == "step"]
    assert len(steps) == 12 and "depth_loss" in steps[0]
    net = build_hdas_network(out / "cell_genotypes.json", macro, channels=2, auxiliary=False)
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 10)


def test_distribution_search_then_second_pass(tmp_path):
    rc = main([*_TINY, "--cells-per-stage", "2", "2", "2", "--window", "2", "--n-min", "1", "--no-plots",
               "--out", str(tmp_path)])
    assert rc == 0
    chosen = json.loads((tmp_path / "distribution" / "cells_per_stage.json").read_text())["cells_per_stage"]
    assert all(1 <= n <= 2 for n in chosen)
    macro = load_macro_genotype(tmp_path / "macro_genotype.json")
    assert macro.cells_per_stage == tuple(chosen)
    assert json.loads((tmp_path / "hsdas" / "config.json").read_text())["seed"] == 1  # a new supernet
    log = [json.loads(line) for line in (tmp_path / "distribution" / "log.jsonl").read_text().splitlines()]
    assert "comp_loss" in next(r for r in log if r["type"] == "step")


def test_hcdas_search(tmp_path):
    rc = main([*_TINY, "--hdas-mode", "hcdas", "--channels", "2", "--cells", "5", "--stem-multiplier", "2",
               "--out", str(tmp_path)])
    assert rc == 0
    cells = stage_genotypes_from_json((tmp_path / "stage_genotypes.json").read_text())
    assert cells.num_stages == 3 and (tmp_path / "stage2_reduce.png").is_file()
    stored = json.loads((tmp_path / "hcdas" / "config.json").read_text())
    assert stored["stem_multiplier"] == 2 and stored["cells"] == 5  # no flag is dropped
    net = build_hdas_network(tmp_path / "stage_genotypes.json", chain_macro_genotype([1, 1, 1]), channels=2,
                             auxiliary=False)
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 10)


def test_stacnas_then_hsdas_pipeline(tmp_path):
    rc = main([*_TINY, "--hdas-mode", "stacnas+hdas", "--channels", "2", "--cells", "3",
               "--stage2-cells", "3", "--cells-per-stage", "1", "1", "1", "--window", "2",
               "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    from hnas_fast.genotypes.cell import load_genotype

    found = load_genotype(tmp_path / "stacnas" / "genotype.json")
    cells = stage_genotypes_from_json((tmp_path / "cell_genotypes.json").read_text())
    assert cells.stages == (found,) * 3  # Hs-DAS wired the StacNAS cell
    assert json.loads((tmp_path / "config.json").read_text())["hdas_mode"] == "stacnas+hdas"
    # The size flags reach the StacNAS half too, one-level.
    stage1 = json.loads((tmp_path / "stacnas" / "stage1" / "config.json").read_text())
    sizes = (stage1["cells"], stage1["channels"], stage1["epochs"], stage1["strategy"])
    assert sizes == (3, 2, 1, "one-level")
    assert load_macro_genotype(tmp_path / "macro_genotype.json").cells_per_stage == (1, 1, 1)


def test_beta_output_pair_selects_the_pair(seed):
    # Eq. 3 read as a pair (the next cell takes two tensors): with all β mass on the last pair, the
    # distribution supernet computes what the plain supernet (output = last two cells) computes.
    torch.manual_seed(seed)
    dist = StageDAGSupernet(DARTS_V2, (2, 2, 2), channels=2, window=3, n_min=1).eval()
    plain = StageDAGSupernet(DARTS_V2, (2, 2, 2), channels=2, window=3).eval()
    state = {k: v for k, v in dist.state_dict().items() if not k.startswith("betas")}
    plain.load_state_dict(state)
    with torch.no_grad():
        for b in dist.betas:
            b.copy_(torch.tensor([-60.0, 60.0]))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(dist(x), plain(x))
    with torch.no_grad():
        for b in dist.betas:
            b.copy_(torch.tensor([60.0, -60.0]))  # now the pair (input 1, cell 1): a different network
    assert not torch.allclose(dist(x), plain(x))


def test_stage_diagram_formats(tmp_path):
    from hnas_fast.viz.stages import plot_stages

    m = chain_macro_genotype([2, 3, 1])
    assert plot_stages(m, tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    assert plot_stages(m, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="extension"):
        plot_stages(m, tmp_path / "s.gif")

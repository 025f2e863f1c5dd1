"""Macro genotypes (Hs-DAS stage DAGs): JSON, validation, sliding window, dead cells, derivation."""
from __future__ import annotations

import json

import pytest
import torch

from hnas_fast.genotypes.macro import (
    STAGE_OPS,
    MacroGenotype,
    StageDAG,
    candidate_predecessors,
    chain_macro_genotype,
    derive_macro_genotype,
    live_nodes,
    load_macro_genotype,
    macro_from_json,
    macro_to_json,
    remove_dead_cells,
    save_macro_genotype,
    validate_macro_genotype,
)

SKIP, MAX, AVG = "skip_connect", "max_pool_3x3", "avg_pool_3x3"


def _stage_with_dead_cells() -> StageDAG:
    # nodes: 0,1 inputs; 2 = c0, 3 = c1 (dead: nobody reads it), 4 = c2, 5 = c3; output (4, 5).
    return StageDAG(
        cells=(((SKIP, 0), (MAX, 1)), ((SKIP, 1), (AVG, 2)), ((SKIP, 0), (SKIP, 2)), ((SKIP, 2), (MAX, 4))),
        output=(4, 5),
    )


def test_json_round_trip(tmp_path):
    m = MacroGenotype((_stage_with_dead_cells(), chain_macro_genotype([3]).stages[0]), window=None)
    d = macro_to_json(m)
    assert json.loads(json.dumps(d)) == d
    assert macro_from_json(json.dumps(d)) == m
    p = save_macro_genotype(m, tmp_path / "macro.json")
    assert load_macro_genotype(p) == m
    assert load_macro_genotype(str(p)) == m


def test_chain_is_darts_stacking():
    m = chain_macro_genotype([2, 3, 1])
    validate_macro_genotype(m, check_window_fits=True)
    assert m.cells_per_stage == (2, 3, 1)
    for st in m.stages:
        for i, edges in enumerate(st.cells):
            assert edges == ((SKIP, i), (SKIP, i + 1))  # c_{k-2}, c_{k-1}
        assert st.output == (st.num_nodes - 2, st.num_nodes - 1)


@pytest.mark.parametrize("n, m", [(6, 3), (6, 2), (4, 5), (1, 2), (8, None)])
def test_sliding_window_respected(n, m):
    preds = candidate_predecessors(n, m)
    for i, p in enumerate(preds):
        node = i + 2
        assert p == sorted(p) and all(j < node for j in p)
        expected = node if m is None else min(node, m)
        assert len(p) == expected
        if m is not None:
            assert all(node - j <= m for j in p)  # no input outside the window
    # A derived genotype from random logits never leaves the window either.
    alphas = [torch.randn(sum(map(len, preds)), len(STAGE_OPS))]
    g = derive_macro_genotype(alphas, [n], window=m)
    for i, edges in enumerate(g.stages[0].cells):
        assert {j for _, j in edges} <= set(preds[i])


def test_window_errors():
    with pytest.raises(ValueError, match="larger than the stage"):
        candidate_predecessors(4, 6)
    with pytest.raises(ValueError, match="window must be >= 2"):
        candidate_predecessors(4, 1)
    bad = MacroGenotype(chain_macro_genotype([2, 2]).stages, window=4)
    validate_macro_genotype(bad)  # edges fit; only check_window_fits looks at the stage size
    with pytest.raises(ValueError, match="larger than stage 0"):
        validate_macro_genotype(bad, check_window_fits=True)
    outside = MacroGenotype((StageDAG((((SKIP, 0), (SKIP, 1)), ((SKIP, 1), (SKIP, 2)),
                                       ((SKIP, 0), (SKIP, 3))), (3, 4)),), window=3)
    with pytest.raises(ValueError, match="outside the window"):
        validate_macro_genotype(outside)


@pytest.mark.parametrize("cells, output, match", [
    ((((SKIP, 0), (SKIP, 7)),), (1, 2), "missing cell"),
    ((((SKIP, 0), (SKIP, 2)),), (1, 2), "not before it"),
    ((((SKIP, 0), (SKIP, 0)),), (1, 2), "twice"),
    ((((SKIP, 0), ("none", 1)),), (1, 2), "'none'"),
    ((((SKIP, 0), ("sep_conv_3x3", 1)),), (1, 2), "uses op"),
    ((((SKIP, 0),),), (1, 2), "keeps 1 edges"),
    ((((SKIP, 0), (SKIP, 1)),), (1, 5), "missing cell"),
    ((((SKIP, 0), (SKIP, 1)),), (2, 1), "earlier first"),
    ((((SKIP, 0), (SKIP, 1)),), (0, 1), "uses no cell"),
])
def test_validation_errors(cells, output, match):
    with pytest.raises(ValueError, match=match):
        validate_macro_genotype(MacroGenotype((StageDAG(cells, output),)))


def test_json_errors():
    d = macro_to_json(chain_macro_genotype([2]))
    d["stages"][0]["cells"][1] = [[SKIP, 1], [SKIP, 9]]
    with pytest.raises(ValueError, match="node 9, a missing cell"):
        macro_from_json(d)
    with pytest.raises(ValueError, match="format"):
        macro_from_json({"format": "other/2", "stages": []})
    with pytest.raises(FileNotFoundError):
        load_macro_genotype("/nonexistent/macro.json")


def test_dead_cells_removed():
    st = _stage_with_dead_cells()
    assert live_nodes(st) == [True, True, True, False, True, True]
    m = remove_dead_cells(MacroGenotype((st,), window=None))
    assert m.meta["removed"] == [[1]]
    pruned = m.stages[0]
    assert pruned.num_cells == 3
    # c2 and c3 are renumbered (nodes 4, 5 -> 3, 4); c0 stays node 2.
    assert pruned.cells == (((SKIP, 0), (MAX, 1)), ((SKIP, 0), (SKIP, 2)), ((SKIP, 2), (MAX, 3)))
    assert pruned.output == (3, 4)
    assert all(live_nodes(pruned))
    # A stage without dead cells is unchanged.
    chain = chain_macro_genotype([3])
    assert remove_dead_cells(chain).stages == chain.stages


def test_cells_after_output_are_dead():
    st = StageDAG((((SKIP, 0), (SKIP, 1)), ((SKIP, 1), (SKIP, 2)), ((SKIP, 2), (SKIP, 3))), output=(2, 3))
    assert remove_dead_cells(MacroGenotype((st,))).stages[0].num_cells == 2


def test_derive_picks_strongest_predecessors():
    n, ops = 3, list(STAGE_OPS)
    preds = candidate_predecessors(n)
    a = torch.zeros(sum(map(len, preds)), len(ops))
    a[:, ops.index("none")] = 5.0  # every edge prefers none ...
    row = 0
    want = {0: {(AVG, 0), (MAX, 1)}, 1: {(SKIP, 0), (MAX, 2)}, 2: {(AVG, 3), (SKIP, 1)}}
    for i, p in enumerate(preds):
        for k, j in enumerate(p):
            for op, jj in want[i]:
                if jj == j:
                    a[row + k, ops.index("none")] = 0.0
                    a[row + k, ops.index(op)] = 3.0
        row += len(p)
    m = derive_macro_genotype([a], [n])
    assert [set(c) for c in m.stages[0].cells] == [want[0], want[1], want[2]]
    assert all(c[0][1] < c[1][1] for c in m.stages[0].cells)  # earliest predecessor first


def test_derive_with_betas_keeps_chosen_pair():
    n = 5
    preds = candidate_predecessors(n, 3)
    a = [torch.randn(sum(map(len, preds)), len(STAGE_OPS))]
    betas = [torch.tensor([0.0, 2.0, 0.0])]  # pairs ending at cells 3, 4, 5 (n_min = 3) -> 4 cells
    m = derive_macro_genotype(a, [n], window=3, betas=betas, n_min=[3])
    assert m.stages[0].num_cells == 4
    assert m.stages[0].output == (4, 5)  # cells 3 and 4 (1-based) = nodes 4, 5
    with pytest.raises(ValueError, match="expected"):
        derive_macro_genotype([torch.zeros(3, 4)], [n])

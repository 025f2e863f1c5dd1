"""Genotype derivation (both edge rankings), I/O round trips, safe parsing, validation, presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hnas_fast.genotypes.cell import (
    DARTS_V2,
    GENOTYPES,
    STACNAS_CIFAR,
    Genotype,
    derive_genotype,
    genotype_from_json,
    genotype_to_json,
    genotype_to_str,
    load_genotype,
    parse_genotype,
    validate_genotype,
)
from hnas_fast.spaces import DARTS_PRIMITIVES, get_space

OPS = list(DARTS_PRIMITIVES)


def _darts_parse(W: np.ndarray, steps: int = 4) -> list[tuple[str, int]]:
    """DARTS's model_search.Network.genotype._parse, verbatim apart from names."""
    gene = []
    n = 2
    start = 0
    none = OPS.index("none")
    for _ in range(steps):
        end = start + n
        w = W[start:end].copy()
        edges = sorted(range(n), key=lambda x: -max(w[x][k] for k in range(len(w[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(w[j])):
                if k != none and (k_best is None or w[j][k] > w[j][k_best]):
                    k_best = k
            gene.append((OPS[k_best], j))
        start = end
        n += 1
    return gene


@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_matches_darts_parse(seed: int, scale: float) -> None:
    an, ar = scale * torch.randn(14, 8), scale * torch.randn(14, 8)
    g = derive_genotype(an, ar, OPS)  # default: softmax-weight ranking
    assert g.normal == _darts_parse(torch.softmax(an.double(), -1).numpy())
    assert g.reduce == _darts_parse(torch.softmax(ar.double(), -1).numpy())
    assert list(g.normal_concat) == [2, 3, 4, 5]
    gl = derive_genotype(an, ar, OPS, ranking="logit")
    assert gl.normal == _darts_parse(an.double().numpy())
    assert gl.reduce == _darts_parse(ar.double().numpy())


def _hand_alphas() -> torch.Tensor:
    a = torch.zeros(14, 8)
    k = OPS.index
    a[0, k("sep_conv_3x3")] = 1.0  # node 0
    a[1, k("skip_connect")] = 1.0
    # Node 1 (rows 2, 3, 4 = inputs 0, 1, 2). Input 0 has the largest non-none logit (5) but a huge
    # `none` (10) makes its softmax weight tiny (~0.007); inputs 1 and 2 win by weight (0.51, 0.28).
    a[2, k("none")] = 10.0
    a[2, k("sep_conv_3x3")] = 5.0
    a[3, k("sep_conv_5x5")] = 2.0
    a[4, k("dil_conv_3x3")] = 1.0
    for r, (op, val) in zip(range(5, 14), [("max_pool_3x3", 3.0), ("avg_pool_3x3", 2.0)] * 5, strict=False):
        a[r, k(op)] = val
    return a


def test_rankings_differ_on_hand_made_alphas() -> None:
    a = _hand_alphas()
    gw = derive_genotype(a, a, OPS, ranking="weight")
    gl = derive_genotype(a, a, OPS, ranking="logit")
    assert gw.normal[:2] == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    assert gl.normal[:2] == gw.normal[:2]
    assert gw.normal[2:4] == [("sep_conv_5x5", 1), ("dil_conv_3x3", 2)]
    assert gl.normal[2:4] == [("sep_conv_3x3", 0), ("sep_conv_5x5", 1)]
    assert gw.normal != gl.normal and gw.reduce == gw.normal
    # `none` is never chosen even where it dominates.
    assert all(op != "none" for op, _ in gw.normal + gl.normal)
    with pytest.raises(ValueError, match="ranking"):
        derive_genotype(a, a, OPS, ranking="softmax")  # type: ignore[arg-type]


def test_derive_shapes_and_multiplier() -> None:
    a = torch.randn(9, 3)  # 3 nodes → 2 + 3 + 4 edges
    g = derive_genotype(a, a, ["none", "skip_connect", "sep_conv_3x3"], nodes=3, multiplier=2)
    assert len(g.normal) == 6 and list(g.normal_concat) == [3, 4]
    with pytest.raises(ValueError, match="expected"):
        derive_genotype(torch.randn(14, 7), torch.randn(14, 7), OPS)
    with pytest.raises(ValueError, match="no op other"):
        derive_genotype(torch.randn(14, 1), torch.randn(14, 1), ["none"])


@pytest.mark.parametrize("g", [DARTS_V2, STACNAS_CIFAR])
def test_round_trips(g: Genotype, tmp_path: Path) -> None:
    d = genotype_to_json(g, ranking="weight")
    assert d["ranking"] == "weight"
    assert genotype_from_json(json.loads(json.dumps(d))) == g
    s = genotype_to_str(g)
    assert s.startswith("Genotype(normal=[('") and "normal_concat=range(2, 6)" in s
    assert parse_genotype(s) == g
    # DARTS's train.py does `eval("genotypes.%s" % name)` / eval on this text: it must read back.
    assert eval(s, {"Genotype": Genotype, "range": range}) == g
    f = tmp_path / "g.txt"
    f.write_text(s)
    assert load_genotype(str(f)) == g
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    assert load_genotype(f) == g


def test_presets() -> None:
    assert DARTS_V2.normal[0] == ("sep_conv_3x3", 0) and DARTS_V2.normal[-1] == ("dil_conv_3x3", 2)
    assert DARTS_V2.reduce[2] == ("skip_connect", 2) and list(DARTS_V2.reduce_concat) == [2, 3, 4, 5]
    assert STACNAS_CIFAR.reduce[2] == ("dil_conv_5x5", 2) and STACNAS_CIFAR.reduce[7] == ("sep_conv_5x5", 0)
    assert load_genotype("DARTS_V2") is DARTS_V2 and load_genotype("stacnas_cifar") is STACNAS_CIFAR
    for g in GENOTYPES.values():
        validate_genotype(g, "darts")


def test_parse_variants() -> None:
    s = ("genotypes.Genotype([('sep_conv_3x3', 0), ('skip_connect', 1)], [2], "
         "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=range(2, 3))")
    g = parse_genotype(s)
    assert g.normal == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    assert g.normal_concat == range(2, 3) and g.reduce_concat == range(2, 3)
    g2 = parse_genotype(genotype_to_str(DARTS_V2).replace("range(2, 6)", "[2, 3, 4, 5]"))
    assert g2 == DARTS_V2
    odd = parse_genotype(genotype_to_str(DARTS_V2._replace(normal_concat=[2, 4, 5])))
    assert list(odd.normal_concat) == [2, 4, 5]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hello world", "not a Genotype"),
        ("Genotype(", "not a Genotype"),
        ("Foo(normal=[])", "not a Genotype"),
        ("Genotype(normal=__import__('os').system('true'))", "not a literal|only range"),
        ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=range(2, 6))", "missing"),
        ("Genotype(normal=[('sep_conv_3x3', 'x'), ('skip_connect', 0)], normal_concat=[2], "
         "reduce=[], reduce_concat=[2])", "pair"),
        ("Genotype(normal=[], normal_concat=range(2, 6), reduce=[], reduce_concat=range(2, 6), extra=1)",
         "unknown genotype field"),
        ("Genotype(normal=[], normal_concat=list(range(2, 6)), reduce=[], reduce_concat=[])", "only range"),
    ],
)
def test_parse_rejects_garbage(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_genotype(text)


def test_load_and_json_errors() -> None:
    with pytest.raises(ValueError, match="no genotype preset"):
        load_genotype("NOT_A_GENOTYPE")
    with pytest.raises(ValueError, match="unexpected"):
        genotype_from_json({**genotype_to_json(DARTS_V2), "bogus": 1})
    with pytest.raises(ValueError, match="missing"):
        genotype_from_json({"normal": []})


def test_validate() -> None:
    bad = DARTS_V2._replace(normal=[("conv_9x9", 0), *DARTS_V2.normal[1:]])
    with pytest.raises(ValueError, match="conv_9x9"):
        validate_genotype(bad)
    with pytest.raises(ValueError, match="max_pool_3x3"):
        validate_genotype(DARTS_V2, get_space("s4"))  # S4 has no pooling
    with pytest.raises(ValueError, match="not before"):
        validate_genotype(DARTS_V2._replace(normal=[("sep_conv_3x3", 2), *DARTS_V2.normal[1:]]))
    with pytest.raises(ValueError, match="none"):
        validate_genotype(DARTS_V2._replace(reduce=[("none", 0), *DARTS_V2.reduce[1:]]))
    with pytest.raises(ValueError, match="concat"):
        validate_genotype(DARTS_V2._replace(normal_concat=[2, 9]))
    validate_genotype(DARTS_V2, ["sep_conv_3x3", "skip_connect", "dil_conv_3x3", "max_pool_3x3"])


def test_plot_cell(tmp_path: Path) -> None:
    from hnas_fast.viz import cell_figure, plot_cell

    png = plot_cell(DARTS_V2, "normal", tmp_path / "normal.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_cell("STACNAS_CIFAR", "reduce", tmp_path / "reduce.svg")
    text = svg.read_text()
    assert "<svg" in text and "dil_conv_5x5" in text  # matplotlib names each drawn label in the SVG
    fig = cell_figure(DARTS_V2, "reduce")
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"max_pool_3x3", "skip_connect", "0", "3"} <= labels
    with pytest.raises(ValueError, match="extension"):
        plot_cell(DARTS_V2, "normal", tmp_path / "x.gif")
    with pytest.raises(ValueError, match="which"):
        cell_figure(DARTS_V2, "middle")

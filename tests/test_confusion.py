"""Gradient confusion against a direct computation, depth matching, the plot and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.analysis.confusion import (
    PAPER_GRID,
    ConfusionResult,
    gradient_confusion,
    match_depth,
    parse_grid,
)


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def _batches(m: int, n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(n, 3, 6, 6), torch.randint(0, 5, (n,))) for _ in range(m)]


def _direct(model: nn.Module, batches) -> torch.Tensor:
    """Concatenated flattened per-minibatch gradients, float64, then A Aᵀ."""
    rows = []
    model.train()
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    a = torch.stack(rows)
    return a @ a.T


def test_zeta_and_gram_match_direct_computation(seed):
    model = _tiny_model()
    batches = _batches(5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = gradient_confusion(model, batches, m=5)
    # The measurement leaves BatchNorm statistics as they were.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    ref = _direct(model, batches)
    assert res.gram.dtype == torch.float64 and res.gram.shape == (5, 5)
    torch.testing.assert_close(res.gram, ref, rtol=1e-9, atol=1e-12)
    off = ~torch.eye(5, dtype=torch.bool)
    assert res.zeta == pytest.approx(float((-ref)[off].max()), rel=1e-9)
    p = sum(q.numel() for q in model.parameters())
    assert res.num_params == p and res.zeta_normalized == pytest.approx(res.zeta / p)
    norms = torch.diagonal(ref).sqrt()
    cos = ref / torch.outer(norms, norms)
    assert res.zeta_cosine == pytest.approx(float((-cos)[off].max()), rel=1e-9)
    assert res.draws == 1 and res.m == 5


def test_identical_gradients_give_minus_norm_squared(seed):
    model = _tiny_model()
    batch = _batches(1)[0]
    res = gradient_confusion(model, [batch] * 4, m=4)
    g2 = float(_direct(model, [batch])[0, 0])
    assert res.zeta == pytest.approx(-g2, rel=1e-9)
    assert res.zeta_cosine == pytest.approx(-1.0, rel=1e-9)
    torch.testing.assert_close(res.gram, torch.full((4, 4), g2, dtype=torch.float64), rtol=1e-9, atol=0)


class _PartlyUsed(nn.Module):
    """A model with a parameter no loss reaches: its gradient is None and must count as zero."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _tiny_model()
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("backend", [None, "reference"])
def test_streamed_equals_all_at_once(seed, backend):
    from hnas_fast.nn.supernet import build_supernet

    models = [_tiny_model(), _PartlyUsed(), build_supernet("s5", cells=3, channels=2, num_classes=5)]
    for model in models:
        batches = _batches(7, n=4)
        streamed = gradient_confusion(model, batches, m=7, draws=2, backend=backend)
        whole = gradient_confusion(model, batches, m=7, draws=2, backend=backend, stream=False)
        # The same products, summed in another order (row by row against the whole Gram).
        torch.testing.assert_close(streamed.gram, whole.gram, rtol=1e-12, atol=1e-15)
        assert torch.equal(streamed.gram, streamed.gram.T)
        assert streamed.zeta == pytest.approx(whole.zeta, rel=1e-12)
        assert streamed.zetas == pytest.approx(whole.zetas, rel=1e-12)


_PEAK = textwrap.dedent("""
    import resource, sys, torch
    from torch import nn
    from hnas_fast.analysis.confusion import gradient_confusion
    torch.manual_seed(0)
    m = 3
    # 32 tensors of 4 MB: per-tensor backward transients stay small, the m gradients dominate.
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(32)])
    batches = [(torch.randn(2, 1024), torch.randint(0, 1024, (2,))) for _ in range(m)]
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gradient_confusion(model, batches, m=m, stream=sys.argv[1] == "stream")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print((after - before) / grad_bytes)
""")


def _peak_in_gradients(stream: bool) -> float:
    """Peak RSS growth of one measurement in a fresh process, in units of one model's gradient."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _PEAK, "stream" if stream else "all"], cwd=root,
                          capture_output=True, text=True, timeout=300, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def test_streamed_peak_memory_is_the_m_gradients_once():
    streamed, whole = _peak_in_gradients(True), _peak_in_gradients(False)
    # m = 3: the streamed path holds 2 slots and the backward's own gradient; the all-at-once path 3 slots
    # and that gradient. 0.25 of a gradient covers the activations and allocator slack.
    assert streamed <= 3.25, streamed
    assert whole - streamed >= 0.75, (whole, streamed)


def test_draws_average_and_loader_cycles(seed):
    model = _tiny_model()
    batches = _batches(3)
    res = gradient_confusion(model, batches, m=2, draws=3)  # 6 minibatches from a 3-batch loader
    assert len(res.zetas) == 3 and res.zeta == pytest.approx(sum(res.zetas) / 3)
    ref = [_direct(model, batches[i % 3: i % 3 + 2] if i % 3 < 2 else [batches[2], batches[0]])
           for i in (0, 2, 4)]
    torch.testing.assert_close(res.gram, sum(ref) / 3, rtol=1e-9, atol=1e-12)


def test_supernet_excludes_arch_parameters_and_restores_mode():
    from hnas_fast.nn.supernet import build_supernet

    model = build_supernet("s5", cells=3, channels=2, num_classes=5).eval()
    res = gradient_confusion(model, _batches(2, n=4), m=2)
    assert res.num_params == sum(p.numel() for p in model.weight_parameters())
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_explicit_params_and_bad_inputs():
    model = _tiny_model()
    last = model[-1]
    res = gradient_confusion(model, _batches(2), m=2, params=list(last.parameters()))
    assert res.num_params == last.weight.numel() + last.bias.numel()
    with pytest.raises(ValueError, match="m >= 2"):
        gradient_confusion(model, _batches(2), m=1)
    with pytest.raises(ValueError, match="draws"):
        gradient_confusion(model, _batches(2), m=2, draws=0)
    with pytest.raises(ValueError, match="no batches"):
        gradient_confusion(model, [], m=2)


def test_parse_grid():
    assert parse_grid("5x16, 14X16,20x8") == [(5, 16), (14, 16), (20, 8)]
    assert parse_grid([(5, 16)]) == [(5, 16)]
    for bad, msg in [("5by16", "bad grid entry"), ("", "empty grid"), ("2x16", "cells must be >= 3"),
                     ("14x", "bad grid entry")]:
        with pytest.raises(ValueError, match=msg):
            parse_grid(bad)


def test_match_depth_picks_closest_on_constructed_case(tmp_path):
    # ζ/P grows with depth and shrinks with width, as the paper reports; the target sits near 14x16.
    def measure(kind, cells, channels):
        if kind == "final":
            return 0.57
        return 0.05 * cells * 16 / channels - 0.14

    m = match_depth((20, 36), PAPER_GRID, measure=measure)
    assert m.best == (14, 16)
    assert m.target["zeta_normalized"] == 0.57
    gaps = {(r["cells"], r["channels"]): r["gap"] for r in m.rows}
    assert gaps[(14, 16)] == min(gaps.values())
    assert "<- best" in m.table() and "time_s" in m.table()
    assert all(r["seconds"] >= 0 for r in [m.target, *m.rows])
    from hnas_fast.viz.confusion import plot_confusion

    assert plot_confusion(m, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(m.to_dict())

    def with_results(kind, cells, channels):
        z = {"final": 2.0}.get(kind, float(cells))
        return ConfusionResult(zeta=z, zeta_normalized=z, gram=torch.zeros(2, 2, dtype=torch.float64),
                               num_params=1, m=2, zetas=[z])

    assert match_depth((9, 9), "3x4,5x4,8x4", measure=with_results).best == (3, 4)
    with pytest.raises(ValueError, match="m >= 2"):
        match_depth((9, 9), "3x4", measure=with_results, m=1)
    with pytest.raises(ValueError, match="unknown criterion"):
        match_depth((9, 9), "3x4", measure=with_results, criterion="l2")

    # The criteria can disagree: ζ/P says 3x4, the cosine form says 8x4.
    def two_views(kind, cells, channels):
        z = {"final": (2.0, -0.1)}.get(kind, (float(cells), -0.1 + 0.01 * (8 - cells)))
        return ConfusionResult(zeta=z[0], zeta_normalized=z[0], gram=torch.zeros(2, 2, dtype=torch.float64),
                               num_params=1, m=2, zetas=[z[0]], zeta_cosine=z[1])

    assert match_depth((9, 9), "3x4,8x4", measure=two_views).best == (3, 4)
    cos = match_depth((9, 9), "3x4,8x4", measure=two_views, criterion="cosine")
    assert cos.best == (8, 4) and "zeta_cosine" in cos.table()
    assert plot_confusion(cos, tmp_path / "cos.png").stat().st_size > 0


def test_cli_smoke(tmp_path, capsys):
    from hnas_fast.confusion import main

    out = tmp_path / "conf"
    rc = main(["--target-cells", "3", "--target-channels", "4", "--grid", "3x2,4x2", "--m", "2",
               "--image-size", "8", "--batch-size", "8", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "confusion.json").read_text())
    assert [(r["cells"], r["channels"]) for r in data["rows"]] == [(3, 2), (4, 2)]
    assert tuple(data["best"]) in {(3, 2), (4, 2)}
    assert (out / "confusion.png").stat().st_size > 0
    assert "closest search setting" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--grid", "5by16"], "bad grid entry"),
    (["--m", "1"], "--m must be >= 2"),
    (["--space", "nope"], "unknown search space"),
    (["--genotype", "NOPE"], "no genotype preset"),
])
def test_cli_bad_input(tmp_path, capsys, argv, msg):
    from hnas_fast.confusion import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

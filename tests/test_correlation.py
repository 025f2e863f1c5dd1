"""Operator correlation (streamed Pearson), clustering, the grouped space, the heatmap and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.correlation import (
    DEFAULT_THRESHOLD,
    CorrelationResult,
    PearsonStream,
    cluster_operators,
    operator_correlation,
    pick_representative,
    space_from_correlation,
)
from hnas_fast.spaces import get_space, load_space

S1_CORR_OPS = ["max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def _stream_in_chunks(cols: list[np.ndarray], chunks: int) -> PearsonStream:
    s = PearsonStream(len(cols))
    for part in zip(*[np.array_split(c, chunks) for c in cols]):
        s.update([torch.from_numpy(p).float() for p in part])
    return s


def test_stream_matches_corrcoef(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=5000)
    cols = [z + rng.normal(scale=s, size=z.size) + off for s, off in ((0.5, 3.0), (1.0, -2.0), (3.0, 0.0))]
    cols.append(rng.normal(size=z.size))
    r = _stream_in_chunks([c.astype(np.float32) for c in cols], chunks=7).corr().numpy()
    ref = np.corrcoef(np.stack(cols).astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(r, ref, atol=1e-9)


def test_self_and_scaled_copy_correlate_perfectly(seed):
    x = torch.randn(4, 3, 5, 5)
    s = PearsonStream(4)
    s.update([x, x, 2.5 * x + 7.0, -0.5 * x])
    r = s.corr()
    assert torch.allclose(r[:3, :3], torch.ones(3, 3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r[3, :3], -torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_constant_output_is_undefined_not_crash():
    s = PearsonStream(2)
    s.update([torch.randn(100), torch.full((100,), 3.0)])
    r = s.corr()
    assert torch.isnan(r[0, 1]) and r[1, 1] == 1.0


def test_stream_rejects_mismatched_inputs():
    s = PearsonStream(2)
    with pytest.raises(ValueError, match="same number of elements"):
        s.update([torch.randn(3), torch.randn(4)])
    with pytest.raises(ValueError, match="expected 2"):
        s.update([torch.randn(3)])


def test_supernet_stream_equals_stored_maps(seed):
    """operator_correlation's streamed per-edge r equals numpy.corrcoef over the stored feature maps."""
    model = build_supernet("s1", cells=3, channels=4, num_classes=10)
    x = torch.randn(10, 3, 8, 8)
    stored: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    handles = []
    for ci, cell in enumerate(model.cells):
        for ei, edge in enumerate(cell.edges):
            for k, name in enumerate(cell.ops):
                if name in S1_CORR_OPS:
                    slot = S1_CORR_OPS.index(name)

                    def hook(_m, _i, out, key=(ci, ei, slot)):
                        stored.setdefault(key, []).append(out.detach().reshape(-1).clone())
                    handles.append(edge.candidates[k].register_forward_hook(hook))
    res = operator_correlation(model, [(x[:4], None), (x[4:], None)], images=10)
    for h in handles:
        h.remove()
    assert res.ops == S1_CORR_OPS and res.images == 10
    assert res.per_edge.shape == (3 * 14, 6, 6)
    for row, (ci, ei, _) in enumerate(res.edges):
        maps = np.stack([torch.cat(stored[(ci, ei, k)]).double().numpy() for k in range(6)])
        np.testing.assert_allclose(res.per_edge[row], np.corrcoef(maps), atol=1e-8)
    np.testing.assert_allclose(res.mean, res.per_edge.mean(axis=0), atol=1e-12)


def test_operator_correlation_restores_mode_and_caps_images():
    model = build_supernet("s5", cells=3, channels=4)
    model.train()
    with pytest.raises(ValueError, match="fewer than two ops"):
        operator_correlation(model, [torch.randn(2, 3, 8, 8)], images=2)  # s5 keeps only sep_conv_3x3
    model = build_supernet("s4", cells=3, channels=4).train()
    res = operator_correlation(model, [torch.randn(6, 3, 8, 8)] * 3, images=8)
    assert res.images == 8 and model.training
    assert res.ops == ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def test_cluster_hand_built_matrix():
    ops = ["a", "b", "c", "d", "e", "f"]
    r = np.eye(6)
    for i, j, v in [(0, 1, 0.52), (2, 3, 0.38), (4, 5, 0.27), (0, 2, 0.05), (1, 4, 0.1), (3, 5, 0.15)]:
        r[i, j] = r[j, i] = v
    assert cluster_operators(r, ops) == [["a", "b"], ["c", "d"], ["e", "f"]]
    # Above the weakest pair's r, that pair splits; a threshold of -1 joins everything.
    assert cluster_operators(r, ops, threshold=0.3) == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    assert cluster_operators(r, ops, threshold=-1.0) == [ops]
    with pytest.raises(ValueError, match="does not fit"):
        cluster_operators(r[:5, :5], ops)
    with pytest.raises(ValueError, match="threshold"):
        cluster_operators(r, ops, threshold=1.5)


def test_clustering_recovers_planted_groups(seed):
    """Outputs built from shared latents: the streamed correlation + clustering finds the plants."""
    rng = np.random.default_rng(seed)
    z = [rng.normal(size=4000) for _ in range(3)]
    plan = {"max_pool_3x3": 0, "avg_pool_3x3": 0, "sep_conv_3x3": 1, "sep_conv_5x5": 1,
            "dil_conv_3x3": 2, "dil_conv_5x5": 2}
    cols = [z[g] + rng.normal(scale=1.2, size=4000) for g in plan.values()]
    stream = _stream_in_chunks(cols, chunks=5)
    res = CorrelationResult(ops=list(plan), per_edge=stream.corr().numpy()[None], edges=[(0, 0, "normal")],
                            mean=stream.corr().numpy(), images=1)
    space = space_from_correlation(get_space("s1"), res)
    assert space.groups == (("max_pool_3x3", "avg_pool_3x3"), ("skip_connect",),
                            ("sep_conv_3x3", "sep_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"))
    assert space.representatives == ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    assert space.stage1().ops == ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def test_skip_alone_none_ungrouped_and_json_loads(tmp_path):
    ops = ["max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5"]
    r = np.ones((3, 3))  # everything correlates: one group of all measured ops
    res = CorrelationResult(ops=ops, per_edge=r[None], edges=[(0, 0, "normal")], mean=r, images=1)
    space = space_from_correlation(get_space("s2"), res)
    assert ("skip_connect",) in space.groups
    assert all("none" not in g for g in space.groups)
    # Ops never measured (max/avg 5x5 here) become their own groups.
    assert ("max_pool_5x5",) in space.groups and ("avg_pool_5x5",) in space.groups
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(space.to_dict()))
    loaded = load_space(path)
    assert loaded == space


def test_pick_representative_prefers_3x3_then_most_central():
    assert pick_representative(["sep_conv_5x5", "sep_conv_3x3"]) == "sep_conv_3x3"
    ops = ["max_pool_5x5", "avg_pool_5x5", "sep_conv_7x7"]
    r = np.array([[1, 0.2, 0.1], [0.2, 1, 0.6], [0.1, 0.6, 1.0]])
    assert pick_representative(["max_pool_5x5", "avg_pool_5x5", "sep_conv_7x7"], r, ops) == "avg_pool_5x5"
    assert pick_representative(["sep_conv_7x7", "max_pool_5x5"]) == "max_pool_5x5"


def test_heatmap_png(tmp_path):
    from hnas_fast.viz.heatmap import plot_correlation

    r = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, 0.1], [np.nan, 0.1, 1.0]])
    p = plot_correlation(r, ["a", "b", "c"], tmp_path / "h.png", groups=[["a", "c"], ["b"]], title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not fit"):
        plot_correlation(r, ["a", "b"], tmp_path / "bad.png")


def test_cli_smoke(tmp_path, capsys):
    from hnas_fast.correlation import main

    out = tmp_path / "corr"
    rc = main(["--space", "s1", "--cells", "3", "--channels", "4", "--image-size", "8", "--train-steps", "2",
               "--images", "40", "--batch-size", "20", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "correlation.json").read_text())
    assert data["ops"] == S1_CORR_OPS and data["images"] == 40
    assert len(data["per_edge"]) == 3 * 14
    space = load_space(out / "groups.json")
    assert set(space.ops) == set(get_space("s1").ops) and ("skip_connect",) in space.groups
    assert (out / "correlation.png").stat().st_size > 0
    assert "group" in capsys.readouterr().out
    assert DEFAULT_THRESHOLD == data["meta"]["threshold"]


@pytest.mark.parametrize("argv, msg", [
    (["--space", "nope"], "unknown search space"),
    (["--threshold", "2"], "threshold"),
    (["--cells", "2"], "cells"),
])
def test_cli_bad_input(tmp_path, capsys, argv, msg):
    from hnas_fast.correlation import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_s1_digits_short_search_pools_group_convs_do_not(tmp_path):
    """S1 after a short one-level search on the embedded digits.

    What holds, and is asserted: max and avg pooling correlate strongly and form one group, skip stays
    alone, none is never grouped. What the paper reports for CIFAR-10 after 80 epochs (sep 3×3/5×5 at
    r = 0.38, dil 3×3/5×5 at 0.27) does not appear here: on digits the conv pairs stay near r = 0
    (measured with 5 cells, C = 8, 300 steps, 1000 images: sep 0.012, dil 0.003, pools 0.865). The only
    force that aligns two independently initialized convs of one edge is the shared output gradient
    (dL/dy_k = w_k·g for every op k), and digits is fitted within a few hundred steps (training loss
    0.007), after which that gradient vanishes; so the conv groups of the paper cannot be recovered from
    this data and the clustering keeps the convs apart at the default threshold.
    """
    from hnas_fast.data.loaders import make_search_loaders
    from hnas_fast.search.loop import run_steps
    from hnas_fast.search.strategy import OneLevel

    torch.manual_seed(0)
    loader, *_ = make_search_loaders("digits", batch_size=32, one_level=True, seed=0, image_size=8)
    model = build_supernet("s1", cells=3, channels=4, num_classes=10)
    run_steps(OneLevel(model, epochs=1, grad_clip=3.0).step, loader, 15)
    res = operator_correlation(model, loader, images=128)
    r = dict(zip(res.ops, res.mean))
    pools = r["max_pool_3x3"][res.ops.index("avg_pool_3x3")]
    assert pools > 0.5
    space = space_from_correlation(get_space("s1"), res)
    assert ("max_pool_3x3", "avg_pool_3x3") in space.groups
    assert ("skip_connect",) in space.groups
    assert space.representatives[0] == "max_pool_3x3"

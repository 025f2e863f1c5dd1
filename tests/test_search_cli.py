"""``python -m hnas_fast.search`` end to end: outputs, exact resume, NaN stop, config errors, atomic saves."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from hnas_fast.genotypes.cell import genotype_from_json, parse_genotype
from hnas_fast.search.__main__ import build_parser, main
from hnas_fast.search.presets import PRESETS, ConfigError, make_config
from hnas_fast.search.runner import atomic_torch_save, load_checkpoint

HAVE_PLOTS = importlib.util.find_spec("hnas_fast.viz.cells") is not None


def _tiny_args(out: Path, config: Path, *extra: str) -> list[str]:
    """Digits at 8x8, 3 cells of 2 nodes over {none, skip, sep3}: 6 steps per epoch, 2 epochs."""
    args = ["--config", str(config), "--space", "s5", "--cells", "3", "--channels", "4", "--image-size", "8",
            "--batch-size", "128", "--epochs", "2", "--checkpoint-every", "3", "--seed", "7", "--quiet",
            "--deterministic", "--out", str(out), *extra]
    if not HAVE_PLOTS:
        args.append("--no-plots")
    return args


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text("nodes: 2\nw_lr: 0.05\na_lr: 0.01\n")
    return p


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_config) -> Path:
    """One uninterrupted run, the reference of the resume tests.

    Module fixtures run before the function-level ``one_thread`` fixture of conftest: pin one thread here
    too, since CPU reductions (hence bitwise results) depend on the thread count.
    """
    out = tmp_path_factory.mktemp("runs") / "a"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_tiny_args(out, tiny_config)) == 0
    finally:
        torch.set_num_threads(n)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_times(records: list[dict]) -> list[dict]:
    skip = {"time", "elapsed"}
    return [{k: v for k, v in r.items() if k not in skip} for r in records if r["type"] in ("step", "epoch")]


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["global_step"] == cb["global_step"] == 12
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert (a / "alphas.jsonl").read_text() == (b / "alphas.jsonl").read_text()
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    assert (a / "genotype.txt").read_text() == (b / "genotype.txt").read_text()
    assert _without_times(_lines(a / "log.jsonl")) == _without_times(_lines(b / "log.jsonl"))


def test_tiny_search_writes_all_outputs(run_a):
    names = ("config.json", "log.jsonl", "alphas.jsonl", "checkpoint.pt", "genotype.json", "genotype.txt")
    for name in names:
        assert (run_a / name).is_file(), name
    if HAVE_PLOTS:
        assert (run_a / "normal.png").stat().st_size > 0 and (run_a / "reduce.png").stat().st_size > 0
    cfg = json.loads((run_a / "config.json").read_text())
    assert cfg["space"] == "s5" and cfg["nodes"] == 2 and cfg["strategy"] == "darts" and cfg["deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()  # the run restored the global setting
    log = _lines(run_a / "log.jsonl")
    steps = [r for r in log if r["type"] == "step"]
    assert len(steps) == 12 and all({"loss", "acc", "lr", "time", "val_loss"} <= set(r) for r in steps)
    assert [r["epoch"] for r in log if r["type"] == "epoch"] == [0, 1]
    assert log[-1]["type"] == "done"
    alphas = _lines(run_a / "alphas.jsonl")
    assert [r["epoch"] for r in alphas] == [0, 1, 2]
    rows = alphas[-1]["alphas"]["alphas_normal"]
    assert len(rows) == 5 and all(abs(sum(r) - 1) < 1e-5 for r in rows)  # 2 nodes: 2 + 3 edges
    assert alphas[0]["alphas"] != alphas[-1]["alphas"]
    g = genotype_from_json(json.loads((run_a / "genotype.json").read_text()))
    assert parse_genotype((run_a / "genotype.txt").read_text()) == g
    assert all(op in ("skip_connect", "sep_conv_3x3") for op, _ in g.normal + g.reduce)
    assert json.loads((run_a / "genotype.json").read_text())["ranking"] == "weight"


def test_resume_after_max_steps_equals_uninterrupted_run(run_a, tiny_config, tmp_path, capsys):
    b = tmp_path / "b"
    assert main(_tiny_args(b, tiny_config, "--max-steps", "4")) == 0  # stops mid-epoch 0
    assert "stopped after step 4" in capsys.readouterr().out
    assert load_checkpoint(b / "checkpoint.pt")["global_step"] == 4
    assert main(["--resume", str(b), "--max-steps", "8", "--quiet"]) == 0  # mid-epoch 1, across an epoch
    assert main(["--resume", str(b), "--quiet"]) == 0
    _assert_same_run(run_a, b)


def test_resume_after_a_crash_between_checkpoints_equals_uninterrupted_run(
    run_a, tiny_config, tmp_path, monkeypatch
):
    from hnas_fast.search.strategy import TwoLevelFirstOrder

    calls = {"n": 0}
    original = TwoLevelFirstOrder.step

    def crashing_step(self, train_batch, val_batch=None):
        calls["n"] += 1
        if calls["n"] == 8:  # checkpoints every 3 steps: the last one before the crash is at step 6
            raise KeyboardInterrupt("simulated kill")
        return original(self, train_batch, val_batch)

    monkeypatch.setattr(TwoLevelFirstOrder, "step", crashing_step)
    c = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        main(_tiny_args(c, tiny_config))
    monkeypatch.setattr(TwoLevelFirstOrder, "step", original)
    assert load_checkpoint(c / "checkpoint.pt")["global_step"] == 6
    assert sum(1 for r in _lines(c / "log.jsonl") if r["type"] == "step") == 7  # step 7 logged, then lost
    assert main(["--resume", str(c), "--quiet"]) == 0
    _assert_same_run(run_a, c)  # the log was cut back to the checkpoint, so step 7 appears once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch, capsys):
    from hnas_fast.search import runner
    from hnas_fast.search.strategy import SearchStrategy

    hashes: list[str] = []
    save = runner.atomic_torch_save

    def recording_save(obj, path):
        save(obj, path)
        hashes.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())

    monkeypatch.setattr(runner, "atomic_torch_save", recording_save)
    calls = {"n": 0}
    forward_loss = SearchStrategy._forward_loss

    def poisoned(self, batch):
        calls["n"] += 1
        loss, logits = forward_loss(self, batch)
        # two forwards per first-order step: call 9 is step 5's validation loss
        return (loss * float("nan") if calls["n"] >= 9 else loss), logits

    monkeypatch.setattr(SearchStrategy, "_forward_loss", poisoned)
    d = tmp_path / "nan"
    assert main(_tiny_args(d, tiny_config)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan" in err[0].lower() and "checkpoint" in err[0]
    # checkpoints: start (step 0) and step 3; nothing after the NaN
    assert len(hashes) == 2
    assert hashlib.sha256((d / "checkpoint.pt").read_bytes()).hexdigest() == hashes[-1]
    ckpt = load_checkpoint(d / "checkpoint.pt")
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    last = _lines(d / "log.jsonl")[-1]
    assert last["type"] == "error" and last["step"] == 5 and "nan" in last["reason"].lower()
    assert not (d / "genotype.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--cells", "2"], "cells must be >= 3"),
        (["--strategy", "dartz"], "unknown strategy 'dartz'"),
        (["--split", "1.5"], "split must be in (0, 1)"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "stacnas_stage2", "--data", "digits"], "needs --space"),
        (["--space", "s9"], "unknown search space 's9'"),
        (["--data", "cifar10", "--data-dir", "{tmp}/missing"], "missing"),
        (["--data", "folder"], "needs --data-dir"),
        (["--ranking", "best"], "unknown ranking"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_writes_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_bad_config_file_and_existing_run(tmp_path, run_a, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cells": 5, "learning_rate": 1}))
    assert main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err
    assert main(["--out", str(run_a), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "none")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_presets_follow_the_papers():
    with pytest.raises(ConfigError, match="needs --data-dir"):
        make_config("darts")
    d = make_config("darts", {"data_dir": "/data/cifar"})
    assert (d.strategy, d.cells, d.channels, d.epochs, d.batch_size, d.split) == ("darts", 8, 16, 50, 64, 0.5)
    assert (d.w_lr, d.w_lr_min, d.w_momentum, d.w_wd, d.grad_clip) == (0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (d.a_lr, d.a_betas, d.a_wd) == (3e-4, (0.5, 0.999), 1e-3)
    s1 = make_config("stacnas_stage1", {"data_dir": "/data/cifar"})
    assert (s1.strategy, s1.cells, s1.epochs, s1.grad_clip, s1.ranking) == ("one-level", 14, 80, 3.0, "logit")
    assert s1.one_level
    s2 = make_config("stacnas_stage2", {"space": "s1/group2", "data-dir": "/data/cifar"})
    assert (s2.cells, s2.epochs) == (20, 80)
    with pytest.raises(ConfigError):
        make_config("darts", {"epochs": 0, "data_dir": "/data/cifar"})
    assert build_parser().parse_args([]).preset == "default" and "default" in PRESETS
    import hnas_fast.search as search

    assert search.make_config is make_config and search.TwoLevelSecondOrder.name == "darts2"
    dflt = make_config("default")
    assert dflt.data == "digits" and dflt.cells < 8


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    before = path.read_bytes()

    def torn_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"x": torch.arange(5)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the temporary file was removed
    monkeypatch.undo()
    atomic_torch_save({"x": torch.arange(5)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(5))


@pytest.mark.parametrize("strategy", ["one-level", "darts2"])
def test_other_strategies_run_from_the_cli(strategy, tiny_config, tmp_path):
    out = tmp_path / strategy
    args = _tiny_args(out, tiny_config, "--strategy", strategy, "--max-steps", "2", "--ranking", "logit")
    assert main(args) == 0
    steps = [r for r in _lines(out / "log.jsonl") if r["type"] == "step"]
    assert len(steps) == 2
    assert ("val_loss" in steps[0]) == (strategy == "darts2")
    start = _lines(out / "log.jsonl")[0]
    assert start["val_size"] == (0 if strategy == "one-level" else 1438 - 719)
    assert json.loads((out / "genotype.json").read_text())["ranking"] == "logit"


def test_progress_lines_off_a_terminal(tmp_path, capsys):
    """Not on a terminal (capsys), a search prints step lines within the epoch, with images/s."""
    args = ["--space", "s5", "--cells", "3", "--channels", "4", "--image-size", "8", "--epochs", "1",
            "--nodes", "2", "--no-plots", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if " step " in line and "images/s" in line]
    assert len(steps) >= 10 and steps[-1].startswith("epoch 1/1 step 12/12")


def test_folder_search_skips_and_names_unreadable_files(tmp_path):
    """``--data folder`` (ImageFolder, no screening): a zero-byte file is skipped while loading, counted in
    the epoch record and named in bad_files.txt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        d = tmp_path / "data" / cls
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    (tmp_path / "data" / "a" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped while loading"):
        assert main(["--data", "folder", "--data-dir", str(tmp_path / "data"), "--space", "s5",
                     "--cells", "3", "--channels", "4", "--image-size", "8", "--batch-size", "3",
                     "--epochs", "1", "--quiet", "--no-plots", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["bad_files"] == 0 and next(r for r in log if r["type"] == "epoch")["bad_files"] == 1
    assert (out / "bad_files.txt").read_text().split("\t")[0] == "a/zero.jpg"

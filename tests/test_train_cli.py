"""``python -m hnas_fast.train``: a tiny final training on digits, exact resume, genotype validation."""
from __future__ import annotations

import json

import pytest
import torch

from hnas_fast.genotypes.cell import DARTS_V2, genotype_to_str
from hnas_fast.search.runner import load_checkpoint
from hnas_fast.train import main

TINY = ["--cells", "3", "--channels", "4", "--epochs", "1", "--batch-size", "512", "--quiet"]
SMALL = [*TINY, "--image-size", "16", "--auxiliary-weight", "0"]  # the auxiliary head needs 32x32


def test_tiny_final_training_writes_result_and_resumes_exactly(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    # Two epochs: drop path is 0 in the first and 0.1 in the second, where it draws from the RNG, so the
    # resume in the middle of epoch 2 must restore the RNG state.
    two = [*SMALL, "--epochs", "2", "--checkpoint-every", "2", "--eval-every", "2"]
    assert main(["--genotype", "DARTS_V2", *two, "--out", str(a)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    result = json.loads((a / "result.json").read_text())
    assert result["finished"] and result["epochs"] == 2 and result["steps"] == 6
    assert 0.0 <= result["test_acc"] <= 1.0 and result["test_loss"] > 0
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["genotype"] == genotype_to_str(DARTS_V2) and cfg["drop_path"] == 0.2
    log = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "step" for r in log) == 6 and log[-1]["type"] == "epoch"

    assert main(["--genotype", "DARTS_V2", *two, "--out", str(b), "--max-steps", "5"]) == 0
    assert "stopped after step 5" in capsys.readouterr().out
    assert load_checkpoint(b / "checkpoint.pt")["global_step"] == 5 and not (b / "result.json").exists()
    assert main(["--resume", str(b), "--quiet"]) == 0
    ma, mb = load_checkpoint(a / "checkpoint.pt")["model"], load_checkpoint(b / "checkpoint.pt")["model"]
    assert all(torch.equal(v, mb[k]) for k, v in ma.items())
    rb = json.loads((b / "result.json").read_text())
    assert rb["test_acc"] == result["test_acc"] and rb["test_loss"] == result["test_loss"]


def test_auxiliary_head_adds_its_weighted_loss(tmp_path):
    losses = []
    for w in ("0", "0.4"):
        out = tmp_path / f"aux{w}"
        assert main(["--genotype", "DARTS_V2", *TINY, "--batch-size", "64", "--auxiliary-weight", w,
                     "--max-steps", "1", "--out", str(out)]) == 0
        records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        losses.append(next(r["loss"] for r in records if r["type"] == "step"))
    # at initialization both heads sit near ln(10): the total is about (1 + 0.4) times the main loss
    assert 1.2 < losses[1] / losses[0] < 1.6, losses


def test_training_lowers_the_loss_on_digits(tmp_path):
    out = tmp_path / "r"
    assert main(["--genotype", "DARTS_V2", "--cells", "3", "--channels", "8", "--epochs", "3", "--batch-size",
                 "128", "--image-size", "16", "--auxiliary-weight", "0", "--drop-path", "0", "--lr", "0.05",
                 "--quiet", "--out", str(out)]) == 0
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in epochs if r["type"] == "epoch"]
    assert losses[-1] < losses[0] - 0.2, losses
    assert json.loads((out / "result.json").read_text())["test_acc"] > 0.3  # chance is 0.1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--genotype", "Genotype(normal=[('sep_conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
          "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])"], "'sep_conv_9x9'"),
        (["--genotype", "NOT_A_GENOTYPE"], "NOT_A_GENOTYPE"),
        ([], "--genotype is required"),
        (["--genotype", "DARTS_V2", "--image-size", "16"], "auxiliary head needs --image-size"),
        (["--genotype", "DARTS_V2", "--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*args, *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------ every genotype kind
_SEARCH = ["--channels", "2", "--epochs", "1", "--image-size", "8", "--batch-size", "256", "--no-plots",
           "--quiet"]
_KINDS = {
    "darts": ["--space", "s5", "--cells", "3", "--nodes", "2"],
    "stacnas": ["--strategy", "stacnas", "--cells", "3", "--stage2-cells", "3"],
    "hcdas": ["--strategy", "hdas", "--hdas-mode", "hcdas", "--cells", "5"],
    "hsdas": ["--strategy", "hdas", "--cells-per-stage", "1", "2", "1", "--window", "2"],
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One tiny real search of each kind: its run directory."""
    from hnas_fast.search.__main__ import main as search

    root = tmp_path_factory.mktemp("searches")
    for name, args in _KINDS.items():
        assert search([*_SEARCH, *args, "--out", str(root / name)]) == 0, name
    return root


@pytest.mark.parametrize("name, kind, source", [
    ("darts", "cell", "."), ("stacnas", "cell", "genotype.json"), ("hcdas", "stages", "."),
    ("hsdas", "macro", "macro_genotype.json")])
def test_train_takes_what_every_search_kind_writes(searched, tmp_path, capsys, name, kind, source):
    from hnas_fast.train import load_architecture

    genotype = searched / name / source
    out = tmp_path / "t"
    assert main(["--genotype", str(genotype), *SMALL, "--cells", "5", "--max-steps", "1", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "M parameters" in printed and "stopped after step 1" in printed
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["kind"] == kind and start["params"] > 0
    # config.json holds the architecture itself: the run resumes without the search's files.
    stored = json.loads((out / "config.json").read_text())["genotype"]
    assert load_architecture(stored) == load_architecture(genotype)
    assert main(["--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "result.json").read_text())["architecture"]["kind"] == kind


def test_hsdas_macro_without_its_cells_is_an_error(searched, tmp_path, capsys):
    lone = tmp_path / "macro_genotype.json"
    lone.write_text((searched / "hsdas" / "macro_genotype.json").read_text())
    assert main(["--genotype", str(lone), *SMALL, "--out", str(tmp_path / "t")]) == 2
    assert "cell_genotypes.json" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_final_training_on_a_folder_with_corrupt_images(tmp_path, capsys):
    """Final training on an image folder with a truncated training and a garbage test file completes,
    counts them in log.jsonl and result.json, and names them in bad_files.txt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    whole = (tmp_path / "data" / "train" / "a" / "0.jpg").read_bytes()
    (tmp_path / "data" / "train" / "a" / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "data" / "val" / "b" / "junk.jpg").write_bytes(b"junk")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="unreadable image"):
        assert main(["--genotype", "DARTS_V2", "--data", "folder", "--data-dir", str(tmp_path / "data"),
                     *SMALL, "--batch-size", "3", "--cutout", "0", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["finished"] and result["bad_files"] == 2
    epoch = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert epoch["type"] == "epoch" and epoch["bad_files"] == 2
    names = sorted(line.split("\t")[0] for line in (out / "bad_files.txt").read_text().splitlines())
    assert names == ["a/cut.jpg", "b/junk.jpg"]

"""``torchrun -m hnas_fast.search`` on 2 CPU processes (gloo): one run directory written by rank 0, identical
alphas on both ranks after every step (``--check-sync`` asserts it collectively, and fails without the
gradient averaging), resume on another number of processes, and the ImageNet-style folder data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hnas_fast.data.loaders import ResumableSampler
from hnas_fast.search.__main__ import main
from hnas_fast.search.runner import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("distributed_search_no_averaging.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _tiny(*extra: str) -> list[str]:
    """Digits at 8x8, 3 cells of 2 nodes over {none, skip, sep3}, global batch 16."""
    return ["--space", "s5", "--cells", "3", "--channels", "4", "--image-size", "8", "--batch-size", "16",
            "--seed", "3", "--quiet", "--no-plots", "--check-sync", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """3 steps on 2 gloo processes, the run directory chosen by rank 0 under --runs-dir."""
    runs = tmp_path_factory.mktemp("runs")
    proc = _torchrun("-m", "hnas_fast.search", *_tiny("--max-steps", "3", "--runs-dir", str(runs)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    dirs = list(runs.iterdir())
    assert len(dirs) == 1, dirs  # both ranks used rank 0's timestamped directory
    assert proc.stdout.count("search stopped after step 3") == 1  # rank 0 alone reports
    return dirs[0]


def test_two_processes_write_one_run_with_world_size_2(two_process_run):
    d = two_process_run
    names = ("config.json", "log.jsonl", "alphas.jsonl", "checkpoint.pt", "genotype.json", "genotype.txt")
    for name in names:
        assert (d / name).is_file(), name
    state = load_checkpoint(d / "checkpoint.pt")
    assert state["world_size"] == 2 and state["global_step"] == 3
    log = _lines(d / "log.jsonl")
    assert log[0]["type"] == "start" and log[0]["world_size"] == 2
    # One writer: each step is logged once, with the metrics averaged over the ranks.
    assert [r["step"] for r in log if r["type"] == "step"] == [1, 2, 3]
    assert [r["type"] for r in log][-1] == "stop"


def test_check_sync_fails_without_gradient_averaging(tmp_path):
    """The control of the test above: with the averager's hooks left off, ranks diverge and it says so."""
    proc = _torchrun(str(HELPER), *_tiny("--max-steps", "2", "--out", str(tmp_path / "x")))
    assert proc.returncode != 0
    assert "alphas differ between ranks" in proc.stderr


def test_resume_two_process_run_on_one_process(two_process_run, tmp_path):
    d = tmp_path / "resumed"
    shutil.copytree(two_process_run, d)
    assert main(["--resume", str(d), "--max-steps", "5", "--quiet"]) == 0
    state = load_checkpoint(d / "checkpoint.pt")
    assert state["world_size"] == 1 and state["global_step"] == 5
    log = _lines(d / "log.jsonl")
    resume = [r for r in log if r["type"] == "resume"]
    assert resume == [{**resume[0], "world_size": 1, "reshard": True, "step": 3}]
    assert [r["step"] for r in log if r["type"] == "step"] == [1, 2, 3, 4, 5]
    assert (d / "genotype.json").is_file()


def test_resume_on_two_processes_equals_uninterrupted_run(two_process_run, tmp_path):
    """Bitwise: every rank restores the shared sampler position and RNG from rank 0's checkpoint."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(two_process_run, resumed)
    proc = _torchrun("-m", "hnas_fast.search", "--resume", str(resumed), "--max-steps", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr[-5000:]
    proc = _torchrun("-m", "hnas_fast.search", *_tiny("--max-steps", "5", "--out", str(straight)))
    assert proc.returncode == 0, proc.stderr[-5000:]
    a, b = load_checkpoint(resumed / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 5
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    def steps(d: Path) -> list[dict]:
        records = [r for r in _lines(d / "log.jsonl") if r["type"] == "step"]
        return [{k: v for k, v in r.items() if k != "time"} for r in records]

    assert steps(resumed) == steps(straight)
    assert next(r for r in _lines(resumed / "log.jsonl") if r["type"] == "resume")["reshard"] is False


def test_batch_size_must_divide_by_processes(tmp_path):
    proc = _torchrun("-m", "hnas_fast.search", *_tiny("--batch-size", "15", "--out", str(tmp_path / "x")))
    assert proc.returncode != 0
    assert "must divide by the 2 processes" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_sampler_resumes_mid_pass_on_any_process_count(world):
    """After k steps of a global batch G on N processes, the first k*G samples of the shared permutation are
    used; a resume on ``world`` processes takes exactly the rest, each sample once."""
    indices, global_batch, steps = list(range(100, 137)), 6, 3
    ranks = [ResumableSampler(indices, seed=5, rank=r, world_size=2) for r in range(2)]
    passes = [list(s) for s in ranks]
    used = {i for p in passes for i in p[: steps * global_batch // 2]}
    state = ranks[0].state_dict()
    rest = []
    for r in range(world):
        s = ResumableSampler(indices, seed=5, rank=r, world_size=world)
        s.load_state_dict(state, skip=steps * global_batch)
        rest.extend(s)
    assert len(used) == steps * global_batch and len(rest) == len(indices) - len(used)
    assert sorted(used | set(rest)) == indices
    single = list(ResumableSampler(indices, seed=5))
    assert used == set(single[: steps * global_batch])


def _jpeg_folder(root: Path, per_class: int = 6, bad: int = 1) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (12, 12, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "train" / c / f"{i}.jpg", quality=90)
    for i in range(bad):
        (root / "train" / "cat" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_imagenet_folder_search_single_process_resumes_mid_epoch(tmp_path):
    data = _jpeg_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--data", "imagenet", "--data-dir", str(data), "--dali", "torchvision", "--space", "s5",
            "--cells", "3", "--channels", "4", "--image-size", "8", "--batch-size", "3", "--epochs", "2",
            "--quiet", "--no-plots", "--out", str(out)]
    with pytest.warns(UserWarning, match="unreadable"):
        assert main([*args, "--max-steps", "1"]) == 0
    start = _lines(out / "log.jsonl")[0]
    assert start["image_backend"] == "torchvision" and start["bad_files"] == 1
    assert start["train_size"] + start["val_size"] == 12  # the corrupt file is left out
    # The image samplers are indexed by the pass: the resume goes on from step 2 of epoch 0.
    with pytest.warns(UserWarning, match="unreadable"):  # the reused folder index still warns
        assert main(["--resume", str(out), "--quiet"]) == 0
    log = _lines(out / "log.jsonl")
    resume = next(r for r in log if r["type"] == "resume")
    assert "restarted_steps" not in resume and resume["reshard"] is False and resume["step"] == 1
    assert [r["step"] for r in log if r["type"] == "step"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in log if r["type"] == "epoch"] == [0, 1]
    assert load_checkpoint(out / "checkpoint.pt")["global_step"] == 2 * 2
    assert json.loads((out / "genotype.json").read_text())


def test_imagenet_search_on_two_processes_resumes_mid_epoch_on_one(tmp_path):
    data = _jpeg_folder(tmp_path / "data", bad=0)
    out = tmp_path / "run"
    proc = _torchrun("-m", "hnas_fast.search", "--data", "imagenet", "--data-dir", str(data),
                     "--dali", "torchvision", *_tiny("--batch-size", "4", "--epochs", "2", "--max-steps", "1",
                                                     "--out", str(out)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # 6 images per side; 4 used by step 1 on 2 processes, the other 2 make step 2 on one process.
    assert main(["--resume", str(out), "--quiet"]) == 0
    log = _lines(out / "log.jsonl")
    resume = next(r for r in log if r["type"] == "resume")
    assert resume["reshard"] is True and resume["world_size"] == 1
    assert [(r["epoch"], r["step"]) for r in log if r["type"] == "step"] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert log[-1]["type"] == "done"


def test_sharded_sampler_resumes_a_pass_on_any_process_count():
    """Pass 3 stopped after 2 steps of global batch 4 on 2 processes, resumed on 3: the samples used
    before and after are the pass's permutation, each once."""
    from hnas_fast.data.imagenet import ShardedSampler

    def batches(rank, world, skip, per_rank):
        s = ShardedSampler(23, rank, world, seed=9)
        s.set_epoch(3, skip=skip)
        got = list(s)
        return [got[i : i + per_rank] for i in range(0, len(got), per_rank)]

    used = [i for r in range(2) for b in batches(r, 2, 0, 2)[:2] for i in b]
    rest = [i for r in range(3) for b in batches(r, 3, 8, 2) for i in b]
    full = ShardedSampler(23, 0, 1, seed=9)
    full.set_epoch(3)
    assert sorted(used + rest) == list(range(23)) and sorted(used) == sorted(list(full)[:8])
    with pytest.raises(ValueError, match="skip"):
        full.set_epoch(0, skip=-1)


@pytest.mark.parametrize("pipeline", ["torchvision", "dali"])
def test_imagenet_folder_search_on_two_processes(tmp_path, pipeline):
    from hnas_fast.data.dali import dali_available

    if pipeline == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    data = _jpeg_folder(tmp_path / "data", bad=0)
    out = tmp_path / "run"
    proc = _torchrun("-m", "hnas_fast.search", "--data", "imagenet", "--data-dir", str(data),
                     "--dali", pipeline, "--validate", "decode",
                     *_tiny("--batch-size", "4", "--epochs", "2", "--out", str(out)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = _lines(out / "log.jsonl")
    assert log[0]["world_size"] == 2 and log[0]["bad_files"] == 0 and log[0]["image_backend"] == pipeline
    # 6 images per side, 3 per process, 2 per process per step: 2 steps in every epoch.
    assert [(r["epoch"], r["step"]) for r in log if r["type"] == "step"] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert log[-1]["type"] == "done"


def _faulty_folder(root: Path) -> Path:
    """12 good JPEGs, a PNG named ``.jpg`` (good), and a truncated, a zero-byte and a non-image ``.jpg``."""
    from PIL import Image

    _jpeg_folder(root, bad=0)
    d = root / "train" / "dog"
    Image.new("RGB", (12, 12), (9, 99, 199)).save(d / "png inside.jpg", format="PNG")
    whole = (d / "0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "cat" / "page.jpg").write_bytes(b"<html>404 not found</html>")
    return root


@pytest.mark.parametrize("validate", ["none", "header"])
@pytest.mark.parametrize("pipeline", ["torchvision", "dali"])
def test_bad_files_on_two_processes(tmp_path, pipeline, validate):
    """Screened by rank 0 (one index, one warning) or met while loading on whichever rank: the run
    completes, and the counts and ``bad_files.txt`` hold the files of both ranks, each once."""
    from hnas_fast.data.dali import dali_available

    if pipeline == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    data = _faulty_folder(tmp_path / "data")
    out = tmp_path / "runs" / "run"
    proc = _torchrun("-m", "hnas_fast.search", "--data", "imagenet", "--data-dir", str(data),
                     "--dali", pipeline, "--validate", validate,
                     *_tiny("--batch-size", "4", "--epochs", "2", "--out", str(out)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    bad = ["cat/empty.jpg", "cat/page.jpg", "dog/truncated.jpg"]
    log = _lines(out / "log.jsonl")
    assert log[0]["bad_files"] == (3 if validate == "header" else 0)
    assert log[0]["train_size"] + log[0]["val_size"] == (13 if validate == "header" else 16)
    # 8 files per side, 4 per process, 2 per process per step: every file is met in the first epoch.
    assert [r["bad_files"] for r in log if r["type"] == "epoch"] == [3, 3] and log[-1]["type"] == "done"
    listed = [line.split("\t")[0] for line in (out / "bad_files.txt").read_text().splitlines()]
    assert sorted(listed) == bad
    if validate == "header":
        assert proc.stderr.count("are unreadable and skipped") == 1  # rank 0 alone screens and warns
        assert len(list((tmp_path / "runs" / ".image_index").iterdir())) == 1
    else:
        assert proc.stderr.count("skipped while loading") >= 1 and "are unreadable" not in proc.stderr


def test_dali_backend_without_dali_is_a_config_error(tmp_path, capsys):
    from hnas_fast.data.dali import dali_available

    if dali_available():
        pytest.skip("DALI is installed here")
    data = _jpeg_folder(tmp_path / "data", bad=0)
    assert main(["--data", "imagenet", "--data-dir", str(data), "--dali", "dali", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--dali torchvision" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

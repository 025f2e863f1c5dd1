"""`python -m hnas_fast.search --strategy stacnas|hdas`: the pipelines end to end, killed with SIGKILL and
resumed, under torchrun, and their configuration errors (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hnas_fast.genotypes.cell import load_genotype, validate_genotype
from hnas_fast.search.__main__ import main
from hnas_fast.spaces import get_space

REPO = Path(__file__).resolve().parents[1]
BN_FIXED = Path(__file__).with_name("distributed_pipeline_bn_fixed.py")

# Digits at 8x8, one epoch per search: StacNAS 23 one-level steps per stage at batch 64, Hs-DAS 12.
STACNAS = ["--strategy", "stacnas", "--cells", "3", "--channels", "4", "--epochs", "1", "--image-size", "8",
           "--stage2-cells", "3", "--checkpoint-every", "5", "--no-plots", "--quiet", "--seed", "5"]
HSDAS = ["--strategy", "hdas", "--channels", "4", "--epochs", "1", "--image-size", "8", "--cells-per-stage",
         "2", "2", "2", "--window", "2", "--n-min", "1", "--checkpoint-every", "5", "--no-plots", "--quiet",
         "--seed", "5"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HNAS_FAST_KILL_AT")}
    # One thread: a resumed process must sum in the order the uninterrupted one did.
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _search(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hnas_fast.search", *args], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


def _kill_and_resume(args: list[str], out: Path, kills: list[str]) -> None:
    """Run, SIGKILLed at each ``STAGE:STEP`` of ``kills`` in turn, resuming after each kill."""
    proc = _search(*args, "--out", str(out), HNAS_FAST_KILL_AT=kills[0])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    for kill in kills[1:]:
        proc = _search("--resume", str(out), "--quiet", HNAS_FAST_KILL_AT=kill)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    proc = _search("--resume", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_stacnas_killed_in_both_stages_resumes_to_the_same_genotype(tmp_path):
    ref = _search(*STACNAS, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "stacnas finished after 46 steps" in ref.stdout and "genotype.json" in ref.stdout
    out = tmp_path / "killed"
    _kill_and_resume(STACNAS, out, ["stage1:8", "stage2:12"])
    assert load_genotype(out / "genotype.json") == load_genotype(tmp_path / "ref" / "genotype.json")
    validate_genotype(load_genotype(out / "genotype.json"), get_space("s1"))
    log = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log].count("resume") == 1
    assert [r["step"] for r in log if r["type"] == "step"] == list(range(1, 24))  # replayed, not repeated
    assert json.loads((out / "stacnas.json").read_text())["winning_groups"] == json.loads(
        (tmp_path / "ref" / "stacnas.json").read_text())["winning_groups"]


def test_hsdas_killed_in_both_searches_resumes_to_the_same_stage_dags(tmp_path):
    ref = _search(*HSDAS, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    _kill_and_resume(HSDAS, out, ["distribution:7", "hsdas:9"])
    for name in ("macro_genotype.json", "cell_genotypes.json"):
        assert (out / name).read_text() == (tmp_path / "ref" / name).read_text()
    assert (out / "distribution" / "cells_per_stage.json").read_text() == (
        tmp_path / "ref" / "distribution" / "cells_per_stage.json").read_text()


def test_max_steps_counts_all_stages_and_resume_goes_on(tmp_path):
    out = tmp_path / "p"
    assert main([*STACNAS, "--max-steps", "30", "--out", str(out)]) == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["done"]) == ["stage1"] and not (out / "genotype.json").exists()
    assert json.loads((out / "stage2" / "config.json").read_text())["max_steps"] == 7
    assert main(["--resume", str(out), "--quiet"]) == 0
    assert (out / "genotype.json").is_file()


def test_torchrun_stacnas_pipeline_matches_one_process(tmp_path):
    """2 gloo ranks (alphas asserted identical after every step) and 1 process, both with batch-independent
    BatchNorm, find the same genotype; rank 0 alone writes and reports."""
    args = [*STACNAS, "--batch-size", "32", "--check-sync"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, str(BN_FIXED), *args, "--out", str(tmp_path / "two")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    assert two.stdout.count("stacnas finished") == 1
    one = subprocess.run([sys.executable, str(BN_FIXED), *args, "--out", str(tmp_path / "one")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two_genotype = load_genotype(tmp_path / "two" / "genotype.json")
    assert two_genotype == load_genotype(tmp_path / "one" / "genotype.json")
    start = json.loads((tmp_path / "two" / "stage1" / "log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "stacnas", "--space", "bogus"], "unknown search space"),
    (["--strategy", "bogus"], "stacnas, hdas"),
    (["--strategy", "hdas", "--window", "-1"], "window must be >= 0"),
    (["--strategy", "hdas", "--cell-genotype", "NOPE"], "cell_genotype"),
    (["--strategy", "stacnas", "--data-dir", "/nonexistent"], "data is digits"),
    (["--strategy", "hdas", "--data", "cifar10", "--data-dir", "/nonexistent"], "nonexistent"),
    (["--strategy", "stacnas", "--groups", "nope.json"], "groups file not found"),
])
def test_pipeline_config_errors_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err
    assert not out.exists()


def test_config_file_holds_pipeline_settings_flat_or_by_section(tmp_path, capsys):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"strategy": "stacnas", "stage2_epochs": 1, "window": 2}))
    sections = tmp_path / "sections.yaml"
    sections.write_text("architecture: {strategy: stacnas}\nstacnas: {stage2_epochs: 1}\n")
    from hnas_fast.search.presets import load_config_file, make_config

    for path in (flat, sections):
        cfg = make_config("default", load_config_file(path))
        assert cfg.strategy == "stacnas" and cfg.stage2_size[2] == 1
    bad = tmp_path / "bad.json"
    for text, message in (({"stacnas": {"window": 2}}, "unknown setting 'window' in section 'stacnas'"),
                          ({"stage2_epochs": "x"}, "stage2_epochs must be an integer"),
                          ({"cells_per_stage": [1, "a"]}, "cells_per_stage must be a list")):
        bad.write_text(json.dumps(text))
        assert main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

"""`python -m hnas_fast.search --strategy stacnas|hdas`: the hierarchical pipelines end to end (tiny)."""

from __future__ import annotations

import json

from hnas_fast.search.__main__ import main
from hnas_fast.search.genotype import load_genotype, validate_genotype
from hnas_fast.spaces import get_space


def test_stacnas_pipeline_from_the_command_line(tmp_path):
    out = tmp_path / "stac"
    tiny = ["--cells", "3", "--channels", "4", "--epochs", "1", "--max-steps", "1", "--image-size", "8"]
    tiny += ["--stage2-cells", "3", "--no-plots", "--quiet"]
    rc = main(["--strategy", "stacnas", *tiny, "--out", str(out)])
    assert rc == 0
    genotype = load_genotype(str(out / "genotype.json"))
    validate_genotype(genotype, get_space("s1"))
    summary = json.loads((out / "stacnas.json").read_text())
    assert summary  # the stage-1 groups and winners are recorded


def test_hdas_pipeline_from_the_command_line(tmp_path):
    out = tmp_path / "hdas"
    tiny = ["--channels", "4", "--epochs", "1", "--max-steps", "1", "--image-size", "8"]
    dag = ["--cells-per-stage", "1", "1", "1", "--window", "2"]
    rc = main(["--strategy", "hdas", *tiny, *dag, "--no-plots", "--quiet", "--out", str(out)])
    assert rc == 0
    macro = json.loads((out / "macro_genotype.json").read_text())
    assert len(macro["stages"]) == 3


def test_pipelines_reject_resume(tmp_path, capsys):
    for strategy in ("stacnas", "hdas"):
        assert main(["--strategy", strategy, "--resume", str(tmp_path)]) == 2
        assert "--resume is not supported" in capsys.readouterr().err

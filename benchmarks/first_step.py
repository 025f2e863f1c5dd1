"""Time to first step of an image-folder search: from launching ``python -m hnas_fast.search`` (or
``torchrun`` with N processes) to the first ``step`` record in its ``log.jsonl``. At ImageNet scale this
is dominated by listing and screening the folder, which rank 0 alone now does, once per unchanged folder
(:mod:`hnas_fast.data.index`).

    python benchmarks/first_step.py --make-folder /tmp/jpegs20k --files 20000
    python benchmarks/first_step.py --folder /tmp/jpegs20k --nproc 1 2 --repeat 2
    python benchmarks/first_step.py --folder /tmp/jpegs20k --nproc 1 2 --repo /tmp/before  # another checkout

Each launch gets a fresh ``--runs-dir`` unless ``--keep-index`` (then the second and later launches find
the folder's index). Prints one JSON line per launch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_folder(root: Path, files: int, classes: int = 100, seed: int = 0) -> None:
    """``files`` small JPEGs (32×32 smooth noise, ~1 KB) in ``classes`` class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / "train" / f"n{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((32, 32), Image.BILINEAR)
        img.save(root / "train" / f"n{i % classes:04d}" / f"{i:06d}.jpg", quality=85)


def first_step(repo: Path, folder: Path, nproc: int, runs_dir: Path, validate: str, timeout: float) -> float:
    """Seconds from launch to the first step record (the run is stopped after that step)."""
    out = runs_dir / f"run-{time.time_ns()}"
    args = ["-m", "hnas_fast.search", "--data", "imagenet", "--data-dir", str(folder),
            "--dali", "torchvision", "--validate", validate, "--space", "s5", "--cells", "3",
            "--channels", "4", "--image-size", "16", "--batch-size", "8", "--max-steps", "1",
            "--quiet", "--no-plots", "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *args]
    else:
        cmd = [sys.executable, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    log = out / "log.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        while True:
            if log.is_file() and '"type": "step"' in log.read_text():
                elapsed = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended without a step: {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"no step within {timeout} s")
            time.sleep(0.02)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--make-folder", type=Path, help="generate a JPEG folder here and exit")
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--folder", type=Path)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--validate", default="header", choices=["none", "header", "decode"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--keep-index", action="store_true", help="reuse one runs dir (and so the folder index)")
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    if a.make_folder:
        make_folder(a.make_folder, a.files)
        return 0
    if a.folder is None:
        p.error("--folder is required (or --make-folder)")
    with tempfile.TemporaryDirectory(prefix="first_step_") as tmp:
        for n in a.nproc:
            for r in range(a.repeat):
                runs = Path(tmp) / ("runs" if a.keep_index else f"runs-{n}-{r}")
                runs.mkdir(exist_ok=True)
                s = first_step(a.repo, a.folder, n, runs, a.validate, a.timeout)
                print(json.dumps({"nproc": n, "repeat": r, "validate": a.validate, "keep_index": a.keep_index,
                                  "repo": str(a.repo), "first_step_s": round(s, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory profile of the search supernet per depth, width, batch, space, mode and backend.

Three numbers per configuration:

* **saved bytes**: the distinct storages autograd keeps for backward during one forward pass (parameters
  excluded). They are counted on the ``meta`` device by default: meta tensors carry shapes and storages
  but no data, so the count is exact (the same graph, the same saved tensors) while costing neither memory
  nor arithmetic; the final CIFAR-size supernet in normal mode saves tens of GiB, more than this machine
  has. Storages are keyed by their ``StorageImpl`` rather than their data pointer because every meta
  storage has data pointer 0. ``tests/test_memory_profile.py`` checks meta and CPU counts agree.
* **parameter + gradient bytes**: two copies of every parameter (architecture logits included).
* **peak**: forward + backward of one training step in a fresh subprocess, so that earlier configurations
  leave no allocator or page-cache residue. On the CPU it is the RSS high-water mark minus the RSS just
  before the model is built (after the imports): Linux's ``VmHWM``, restarted through
  ``/proc/self/clear_refs`` so that the transient high-water mark of ``import torch`` cannot hide a small
  step; ``getrusage(RUSAGE_SELF).ru_maxrss`` where that is unavailable. It includes the model, its
  gradients, the saved tensors and backward's transients.
  On CUDA it is ``torch.cuda.max_memory_allocated()`` (allocator-level, so the CUDA context and cached
  but free blocks are not in it).

**Largest batch for a budget** (:func:`largest_batch`). Everything that grows with the batch is linear in
it (every activation has the batch as its leading dimension), so ``bytes(b) = a + s·b``: measure at two
small batches, solve for ``a`` and ``s``, take ``b* = floor((budget − a) / s)``, then measure once at
``b*`` to verify; if the measurement disagrees with the line (it should not), step down until the measured
value fits. The metric is the *footprint* ``parameters + gradients + saved`` (default; meta-device cheap
at any size) or the measured *peak* (one subprocess step per probe; includes backward's transients and,
on the CPU, allocator overhead). The footprint is a lower bound of the real peak: leave the headroom the
table's ``peak / footprint`` column shows, or fit on the peak directly where the step can run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.kernels import extension_available
from hnas_fast.nn.supernet import build_supernet

# "fused" leaves the mixed_sum backend to the automatic choice (compiled kernel, else Triton on CUDA, else
# the reference); "reference" forces the plain-PyTorch sum.
MIXED_BACKENDS: dict[str, str | None] = {"fused": None, "reference": "reference"}
MODES = ("normal", "memory_saving")
Metric = Literal["footprint", "peak"]
GIB = 2**30

__all__ = ["GIB", "MIXED_BACKENDS", "MODES", "BatchFit", "MemoryConfig", "MemoryRow", "format_table",
           "largest_batch", "measure_peak", "parameter_gradient_bytes", "plot_profile", "profile",
           "saved_bytes", "write_csv"]


@dataclass(frozen=True)
class MemoryConfig:
    """One supernet training-step configuration (square ``image_size`` inputs, float32)."""

    space: str = "darts"
    cells: int = 8
    channels: int = 16
    batch: int = 64
    mode: str = "normal"
    backend: str = "fused"
    image_size: int = 32
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in MIXED_BACKENDS:
            raise ValueError(f"backend must be one of {tuple(MIXED_BACKENDS)}, got {self.backend!r}")
        if min(self.cells, self.channels, self.batch, self.image_size, self.num_classes) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def label(self) -> str:
        return (f"{self.space} L={self.cells} C={self.channels} b={self.batch} {self.mode} {self.backend}")


def _mixed_backend(config: MemoryConfig, device: torch.device) -> str | None:
    backend = MIXED_BACKENDS[config.backend]
    if backend is None and device.type == "meta":
        # The automatic choice never picks the compiled op for meta tensors, but the op's fake kernel
        # records exactly what the compiled op saves, so count with it when it is built.
        return "cpp" if extension_available() else None
    return backend


def _build(config: MemoryConfig, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    with torch.device(device):
        net = build_supernet(config.space, cells=config.cells, channels=config.channels,
                             num_classes=config.num_classes, memory_saving=config.mode == "memory_saving",
                             mixed_backend=_mixed_backend(config, device)).train()
        x = torch.randn(config.batch, 3, config.image_size, config.image_size)
        y = torch.randint(0, config.num_classes, (config.batch,))
    return net, x, y


def parameter_gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter plus its gradient (same size and dtype)."""
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters())


def saved_bytes(config: MemoryConfig, device: str | torch.device = "meta") -> tuple[int, int]:
    """``(saved bytes, parameter + gradient bytes)`` of ``config``, from one forward pass (no backward).

    ``device="meta"`` costs no memory at any size; for tiny models a real device gives the same count
    faster (meta ops pay a fixed dispatch overhead that real tiny ops do not).

    Saved tensors are counted once per storage (views and tensors saved by several nodes share one) by
    :class:`~hnas_fast.analysis.memory.SavedTensorMeter`, parameters excluded.
    """
    device = torch.device(device)
    net, x, _ = _build(config, device)
    saved = saved_tensor_bytes(lambda: net(x), exclude=list(net.parameters()))
    return saved, parameter_gradient_bytes(net)


def _rss_high_water(reset: bool = False) -> tuple[int, int]:
    """``(current RSS, high-water RSS)`` in bytes; ``reset=True`` first restarts the high-water mark.

    Linux resets ``VmHWM`` to the current RSS on writing ``5`` to ``/proc/self/clear_refs``, so the peak is
    that of the step alone rather than of ``import torch`` (whose transient high-water mark would otherwise
    hide small steps). Without it, ``ru_maxrss`` (never reset) is the fallback.
    """
    import resource

    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        kib = {line.split(":")[0]: int(line.split()[1])
               for line in status if line.startswith(("VmRSS", "VmHWM"))}
        return kib["VmRSS"] * 1024, kib["VmHWM"] * 1024
    except (OSError, KeyError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        return maxrss, maxrss


def _training_step(config: MemoryConfig, device: torch.device) -> None:
    net, x, y = _build(config, device)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in the subprocess: one training step of ``spec``; peak bytes above the pre-build baseline."""
    torch.set_num_threads(int(spec.pop("threads")))
    device = torch.device(spec.pop("device"))
    config = MemoryConfig(**spec)
    # A tiny step of the same mode and backend first: lazy imports (checkpointing pulls in parts of
    # torch._dynamo), the extension's loading and one-time kernel setup would otherwise count as the step's.
    _training_step(replace(config, cells=1, channels=2, batch=2, image_size=8), device)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.max_memory_allocated(device)
    else:
        base, _ = _rss_high_water(reset=True)
    _training_step(config, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _rss_high_water()[1] - base
    return {"peak_bytes": int(peak)}


def measure_peak(config: MemoryConfig, device: str = "cpu", threads: int = 1,
                 timeout: float | None = None) -> int:
    """Peak bytes of one forward + backward step of ``config`` on ``device``, in a fresh subprocess."""
    spec = {**asdict(config), "device": device, "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "hnas_fast.analysis.memory_profile", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise RuntimeError(f"peak measurement of {config.label} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass
class MemoryRow:
    """One configuration's measurements (bytes); ``peak_bytes`` is ``None`` when the step was not run."""

    config: MemoryConfig
    saved_bytes: int
    param_grad_bytes: int
    peak_bytes: int | None = None
    note: str = ""
    max_batch: int | None = None

    @property
    def footprint_bytes(self) -> int:
        return self.saved_bytes + self.param_grad_bytes

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = asdict(self.config)
        row.update(saved_bytes=self.saved_bytes, param_grad_bytes=self.param_grad_bytes,
                   footprint_bytes=self.footprint_bytes, peak_bytes=self.peak_bytes,
                   saved_gib=round(self.saved_bytes / GIB, 4),
                   peak_gib=None if self.peak_bytes is None else round(self.peak_bytes / GIB, 4),
                   max_batch=self.max_batch, note=self.note)
        return row


def profile(configs: Iterable[MemoryConfig], peak: bool = True, device: str = "cpu", threads: int = 1,
            headroom: float = 0.7, count_device: str = "meta",
            log: Callable[[str], None] | None = None) -> list[MemoryRow]:
    """Measure every configuration; the peak step is skipped (with a note) when its footprint exceeds
    ``headroom`` × the memory available on ``device`` (the step would swap, be killed, or run OOM).
    ``count_device`` is where saved tensors are counted (see :func:`saved_bytes`)."""
    rows = []
    for config in configs:
        saved, pg = saved_bytes(config, count_device)
        row = MemoryRow(config, saved, pg)
        if peak:
            available = _available_bytes(device)
            if row.footprint_bytes > headroom * available:
                row.note = (f"peak skipped: footprint {row.footprint_bytes / GIB:.1f} GiB > "
                            f"{headroom:.0%} of {available / GIB:.1f} GiB available on {device}")
            else:
                row.peak_bytes = measure_peak(config, device=device, threads=threads)
        if log is not None:
            log(f"{config.label}: saved {saved / GIB:.3f} GiB"
                + ("" if row.peak_bytes is None else f", peak {row.peak_bytes / GIB:.3f} GiB"))
        rows.append(row)
    return rows


@dataclass
class BatchFit:
    """Answer of :func:`largest_batch`: the line ``bytes(b) = intercept + slope·b`` and its check."""

    config: MemoryConfig
    budget_bytes: int
    metric: str
    probes: dict[int, int]
    slope: float
    intercept: float
    batch: int
    predicted_bytes: float
    measured_bytes: int

    @property
    def fits(self) -> bool:
        return self.measured_bytes <= self.budget_bytes

    def describe(self) -> str:
        c = self.config
        return (f"{c.space} L={c.cells} C={c.channels} {c.mode} {c.backend}: largest batch "
                f"within {self.budget_bytes / GIB:g} GiB ({self.metric}) = {self.batch} "
                f"(line: {self.intercept / GIB:.4f} GiB + {self.slope / 2**20:.3f} MiB/sample; "
                f"measured at {self.batch}: {self.measured_bytes / GIB:.3f} GiB, "
                f"predicted {self.predicted_bytes / GIB:.3f} GiB)")


def _metric_fn(metric: Metric, device: str, threads: int, count_device: str
               ) -> Callable[[MemoryConfig], int]:
    if metric == "footprint":
        return lambda c: sum(saved_bytes(c, count_device))
    if metric == "peak":
        return lambda c: measure_peak(c, device=device, threads=threads)
    raise ValueError(f"metric must be 'footprint' or 'peak', got {metric!r}")


def largest_batch(config: MemoryConfig, budget_bytes: int, metric: Metric = "footprint",
                  probes: Sequence[int] = (2, 4), device: str = "cpu", threads: int = 1,
                  count_device: str = "meta") -> BatchFit:
    """The largest batch whose ``metric`` stays within ``budget_bytes`` (``config.batch`` is ignored).

    Fits ``bytes(b) = a + s·b`` through two probe batches, predicts ``b*``, measures at ``b*`` and steps
    down while the measurement exceeds the budget. Raises ``ValueError`` if not even batch 1 fits.
    ``device`` and ``threads`` apply to the ``peak`` metric, ``count_device`` to the ``footprint`` one.
    """
    if len(probes) != 2 or probes[0] == probes[1] or min(probes) < 1:
        raise ValueError(f"probes must be two distinct positive batches, got {probes}")
    measure = _metric_fn(metric, device, threads, count_device)
    b1, b2 = sorted(probes)
    m1, m2 = measure(replace(config, batch=b1)), measure(replace(config, batch=b2))
    slope = (m2 - m1) / (b2 - b1)
    intercept = m1 - slope * b1
    if slope <= 0:
        raise ValueError(f"{metric} does not grow with the batch ({m1} B at {b1}, {m2} B at {b2})")
    batch = math.floor((budget_bytes - intercept) / slope)
    if batch < 1:
        raise ValueError(f"{config.label}: even batch 1 needs {intercept + slope:.0f} B "
                         f"> budget {budget_bytes} B")
    measured = measure(replace(config, batch=batch))
    while measured > budget_bytes and batch > 1:
        batch -= 1
        measured = measure(replace(config, batch=batch))
    return BatchFit(replace(config, batch=batch), int(budget_bytes), metric, {b1: m1, b2: m2}, slope,
                    intercept, batch, intercept + slope * batch, measured)


_COLUMNS = ("space", "cells", "channels", "batch", "mode", "backend")


def format_table(rows: Sequence[MemoryRow]) -> str:
    """A plain-text table (GiB) of ``rows``, with the peak / footprint ratio where the peak was measured."""
    head = [*_COLUMNS, "saved_GiB", "param+grad_MiB", "footprint_GiB", "peak_GiB", "peak/footprint",
            "max_batch"]
    body = []
    for r in rows:
        c = r.config
        body.append([c.space, c.cells, c.channels, c.batch, c.mode, c.backend, f"{r.saved_bytes / GIB:.3f}",
                     f"{r.param_grad_bytes / 2**20:.1f}", f"{r.footprint_bytes / GIB:.3f}",
                     "-" if r.peak_bytes is None else f"{r.peak_bytes / GIB:.3f}",
                     "-" if r.peak_bytes is None else f"{r.peak_bytes / r.footprint_bytes:.2f}",
                     "-" if r.max_batch is None else str(r.max_batch)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"note: {r.config.label}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + notes)


def write_csv(rows: Sequence[MemoryRow], path: str | os.PathLike) -> None:
    """One CSV line per row: the configuration, bytes, GiB and notes."""
    dicts = [r.as_dict() for r in rows]
    names = [f.name for f in fields(MemoryConfig)] + [k for k in dicts[0] if k not in asdict(rows[0].config)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(dicts)


def plot_profile(rows: Sequence[MemoryRow], path: str | os.PathLike) -> None:
    """Saved bytes (solid) and measured peak (dashed) against depth, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or the GPU machines
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[MemoryRow]] = {}
    for r in rows:
        c = r.config
        groups.setdefault((c.space, c.channels, c.batch, c.mode, c.backend), []).append(r)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for (space, channels, batch, mode, backend), members in groups.items():
        members.sort(key=lambda r: r.config.cells)
        depth = [r.config.cells for r in members]
        label = f"{space} C={channels} b={batch} {mode} {backend}"
        line = ax.plot(depth, [r.saved_bytes / GIB for r in members], "o-", label=f"saved: {label}")[0]
        peaks = [(r.config.cells, r.peak_bytes / GIB) for r in members if r.peak_bytes is not None]
        if peaks:
            ax.plot(*zip(*peaks), "s--", color=line.get_color(), label=f"peak: {label}")
    ax.set_xlabel("cells")
    ax.set_ylabel("GiB")
    ax.set_yscale("log")
    ax.set_title("Supernet memory per depth (saved for backward; peak of one step)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: lines stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # the subprocess of measure_peak
    print(json.dumps(_peak_child(json.loads(sys.argv[1]))))

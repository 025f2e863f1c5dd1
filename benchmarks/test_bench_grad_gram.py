"""grad_gram and the gradient-confusion measurement over the parameter tensors of the 14-cell search supernet
(C=16, about 3.2 M parameters; StacNAS's depth-matching setting), for m = 10 and 32 gradients.

Each fused path is interleaved with its baseline in one process:

* the op against the read-once floor: one flat pass over the same bytes (``sum`` of an ``[m * P]`` buffer,
  the rate this machine reads memory at), the bar being 2x;
* the op against a Python loop of float64 dot products over the concatenated gradients, and against
  ``torch.cat`` + float64 matmul; each path's peak memory (RSS growth in a fresh process) is recorded too;
* the whole streamed confusion measurement (m backward passes + the Gram) against the m backward passes alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks.conftest import interleaved
from hnas_fast.analysis.confusion import gradient_confusion
from hnas_fast.kernels import extension_available, grad_gram, grad_gram_reference
from hnas_fast.nn.supernet import build_supernet

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
CELLS, CHANNELS = 14, 16


def _supernet(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_supernet("darts", cells=CELLS, channels=CHANNELS, num_classes=num_classes).to(DEVICE)


def _grads(m: int) -> list[torch.Tensor]:
    return [torch.randn(m, *p.shape, device=DEVICE) for p in _supernet().weight_parameters()]


def _python_dots(grads: list[torch.Tensor]) -> torch.Tensor:
    """What a user writes: each minibatch's gradient concatenated in float64, then one dot per pair."""
    m = grads[0].shape[0]
    flat = [torch.cat([g[a].reshape(-1) for g in grads]).double() for a in range(m)]
    gram = torch.empty(m, m, dtype=torch.float64)
    for a in range(m):
        for b in range(a, m):
            gram[a, b] = gram[b, a] = torch.dot(flat[a], flat[b])
    return gram


def _cat_matmul(grads: list[torch.Tensor]) -> torch.Tensor:
    m = grads[0].shape[0]
    flat = torch.cat([g.reshape(m, -1) for g in grads], 1).double()
    return flat @ flat.T


_PEAK = textwrap.dedent("""
    import sys
    from benchmarks.test_bench_grad_gram import _cat_matmul, _grads, _python_dots
    from hnas_fast.kernels import grad_gram
    grads = _grads(int(sys.argv[2]))
    run = {"op": lambda: grad_gram(grads, backend="cpp"), "python_dots": lambda: _python_dots(grads),
           "cat_matmul": lambda: _cat_matmul(grads)}[sys.argv[1]]
    def kib(field):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (building the net peaked higher)
    before = kib("VmRSS:")
    run()
    print((kib("VmHWM:") - before) / 1024)
""")


def _peak_mib(path: str, m: int) -> float:
    """RSS growth (MiB) of one call of ``path`` in a fresh process, the gradients already allocated."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _PEAK, path, str(m)], cwd=root, capture_output=True,
                          text=True, timeout=600, check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def _record(benchmark, timing: dict[str, float], **extra: object) -> None:
    benchmark.extra_info.update({k: round(v, 3) for k, v in timing.items()})
    benchmark.extra_info.update(extra)


@pytest.mark.parametrize("m", [10, 32])
def test_grad_gram_vs_read_once_floor(benchmark, m):
    grads = _grads(m)
    params = sum(g[0].numel() for g in grads)
    flat = torch.randn(m * params, device=DEVICE)  # the same bytes, one contiguous pass
    op = lambda: grad_gram(grads, backend="cpp")  # noqa: E731
    timing = interleaved(op, lambda: flat.sum(), rounds=9, device=DEVICE)
    _record(benchmark, timing, parameters=params, tensors=len(grads),
            x_of_floor=round(timing["fused_ms"] / timing["reference_ms"], 2))
    benchmark.pedantic(op, rounds=9, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["GFLOPs"] = round(m * (m + 1) * params / seconds / 1e9, 1)  # upper triangle
    benchmark.extra_info["GBps_read"] = round(m * params * 4 / seconds / 1e9, 1)


@pytest.mark.parametrize("baseline", ["python_dots", "cat_matmul", "reference"])
@pytest.mark.parametrize("m", [10, 32])
def test_grad_gram_vs_baselines(benchmark, m, baseline):
    grads = _grads(m)
    base = {"python_dots": lambda: _python_dots(grads), "cat_matmul": lambda: _cat_matmul(grads),
            "reference": lambda: grad_gram_reference(grads)}[baseline]
    op = lambda: grad_gram(grads, backend="cpp")  # noqa: E731
    torch.testing.assert_close(op(), base(), rtol=1e-10, atol=1e-6)
    timing = interleaved(op, base, rounds=3, device=DEVICE)
    extra: dict[str, object] = {}
    if DEVICE == "cpu" and baseline != "reference":
        extra = {"peak_mib_op": _peak_mib("op", m), f"peak_mib_{baseline}": _peak_mib(baseline, m)}
    _record(benchmark, timing, **extra)
    benchmark.pedantic(op, rounds=3, warmup_rounds=1)


def _backward_passes(model: torch.nn.Module, batches: list, params: list[torch.Tensor]) -> None:
    for x, y in batches:
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)


@pytest.mark.parametrize("m", [10, 32])
def test_confusion_measurement_vs_backward_passes(benchmark, m):
    model = _supernet().train()
    params = list(model.weight_parameters())
    # Small images: the parameter count (what the Gram reads) does not depend on them, the backward does.
    batches = [(torch.randn(8, 3, 16, 16, device=DEVICE), torch.randint(0, 10, (8,), device=DEVICE))
               for _ in range(m)]
    measure = lambda: gradient_confusion(model, batches, m=m)  # noqa: E731
    timing = interleaved(measure, lambda: _backward_passes(model, batches, params), rounds=2, device=DEVICE)
    _record(benchmark, timing, x_of_backward=round(timing["fused_ms"] / timing["reference_ms"], 3),
            parameters=sum(p.numel() for p in params))
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)


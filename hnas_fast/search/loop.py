"""The pieces every training loop of hnas_fast is made of.

The search loop (:class:`~hnas_fast.search.runner.SearchRun`, through its strategies), the final training
(:mod:`hnas_fast.train`), and the brief training before an operator-correlation or gradient-confusion
measurement all build their weight optimizer, guard their losses, clip, step, log, and save RNG state
with these functions, so a change of any of them reaches every loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hnas_fast.files import atomic_write_text

__all__ = [
    "JsonlLog", "NonFiniteLossError", "accuracy", "capture_rng", "check_finite", "clip_and_step",
    "cycle_batches", "final_network_step", "restore_rng", "run_steps", "seed_everything", "weight_optimizer",
]

Batch = tuple[Tensor, Tensor]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; raised before any parameter is updated from it."""


# ------------------------------------------------------------------------------------------ one step
def weight_optimizer(params: Iterable[nn.Parameter], *, epochs: int, lr: float, lr_min: float,
                     momentum: float, weight_decay: float
                     ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """DARTS's weight optimizer: SGD with momentum and weight decay, cosine from ``lr`` to ``lr_min``
    over ``epochs`` (the scheduler is stepped once per epoch)."""
    opt = torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs), eta_min=lr_min)


def check_finite(loss: Tensor, what: str) -> None:
    """:class:`NonFiniteLossError` when ``loss`` is NaN or infinite (call it before ``backward``)."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"{what} loss is {float(loss.detach())}; stopping before any update")


def clip_and_step(opt: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                  grad_clip: float | None) -> None:
    """Clip the global gradient norm of ``params`` to ``grad_clip`` (``None``/0: no clip), then step."""
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of a batch."""
    return float((logits.detach().argmax(1) == y).float().mean())


def final_network_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, *,
                       auxiliary_weight: float = 0.0, grad_clip: float | None = 5.0) -> dict[str, float]:
    """One training step of a final network (``model(x)`` returns ``(logits, aux_logits or None)`` or
    logits): cross-entropy plus ``auxiliary_weight`` times the auxiliary head's, guarded, clipped, stepped.
    Returns ``loss`` and ``acc``."""
    device = next(model.parameters()).device
    x, y = (t.to(device, non_blocking=True) for t in batch)
    opt.zero_grad(set_to_none=True)
    out = model(x)
    logits, logits_aux = out if isinstance(out, tuple) else (out, None)
    loss = F.cross_entropy(logits, y)
    if logits_aux is not None and auxiliary_weight:
        loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, y)
    check_finite(loss, "training")
    loss.backward()
    clip_and_step(opt, [p for g in opt.param_groups for p in g["params"]], grad_clip)
    return {"loss": float(loss.detach()), "acc": accuracy(logits, y)}


def cycle_batches(loader: Iterable[Any], end_pass: Callable[[], None] | None = None) -> Iterator[Any]:
    """The batches of ``loader`` without end, ``end_pass()`` after each full pass; ``ValueError`` when a
    pass yields nothing."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yields no batches")
        if end_pass is not None:
            end_pass()


def run_steps(step: Callable[[Any], dict[str, float]], loader: Iterable[Any], steps: int,
              end_pass: Callable[[], None] | None = None) -> dict[str, float]:
    """``steps`` calls of ``step(batch)`` over ``loader``, passing over it again as often as needed
    (``end_pass`` after each full pass, e.g. a strategy's ``end_epoch``); returns the mean metrics.
    The brief training before a measurement, where no run directory is kept."""
    sums: dict[str, float] = {}
    done = 0
    if steps > 0:
        for batch in cycle_batches(loader, end_pass):
            for k, v in step(batch).items():
                sums[k] = sums.get(k, 0.0) + v
            done += 1
            if done >= steps:
                break
    return {"steps": done, **{k: v / max(done, 1) for k, v in sums.items()}}


# ------------------------------------------------------------------------------------------ logs and RNG
class JsonlLog:
    """Append-only JSON-lines file, flushed per line; ``truncate`` drops lines after a checkpoint's count.

    ``enabled=False`` (ranks other than 0) makes every method a no-op: one process writes the file.
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.lines = sum(1 for _ in path.open()) if enabled and path.exists() else 0

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1

    def truncate(self, lines: int) -> None:
        if not self.enabled:
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines] if self.path.exists() else []
        atomic_write_text(self.path, "".join(kept))
        self.lines = len(kept)


def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors and plain containers."""
    mt, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": mt, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

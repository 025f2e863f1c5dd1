"""Search on many processes with ``torchrun``: process-group setup, identical start, gradient averaging that
keeps every rank's weights and architecture parameters identical after every step, sharding, rank-0 I/O.

    ctx = init_distributed()                        # RANK/WORLD_SIZE/LOCAL_RANK from torchrun; gloo or NCCL
    model = build_supernet(...).to(ctx.device)
    broadcast_module(model, ctx)                    # every rank starts from rank 0's weights and alphas
    strategy = make_strategy(...)
    averager = GradientAverager(model.parameters(), ctx).attach(strategy.w_opt, strategy.a_opt)
    ...                                             # strategy.step(...) as on one process
    save_on_main(state, path, ctx); cleanup(ctx)

**Why not ``DistributedDataParallel``.** DDP would do the same averaging, overlapped with backward, but
it wraps the module: the strategies call ``model.arch_parameters()``/``weight_parameters()``, the
second-order strategy differentiates through a copy of the model with ``torch.autograd.grad`` (which
DDP's reducer never sees), and the first-order strategy back-propagates to the alphas only
(``backward(inputs=…)``), which DDP reports as unused parameters. :class:`GradientAverager` hooks the
parameters instead and works with any of them:

* at the end of every backward that produced gradients for its parameters (autograd's
  ``queue_callback``, the same point where DDP finishes its reduction) it averages exactly those
  gradients across ranks in one coalesced all-reduce, so clipping and the optimizer see the average, as
  they would see the gradient of the global batch on one process;
* before each optimizer step (``register_step_pre_hook``) it averages any gradient that was assigned
  rather than accumulated by backward since (the second-order hypergradient), so no step ever uses a
  rank-local gradient.

With equal starting state, averaged gradients and deterministic optimizers, parameters stay identical on
every rank; :func:`assert_identical` checks it. Differences to one process with the same global batch:
BatchNorm normalizes with each rank's local batch statistics (``SyncBatchNorm`` exists for CUDA only;
on GPUs, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` removes the difference), and BatchNorm running
statistics stay per rank (:func:`broadcast_buffers` before evaluating or saving).
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["DistributedContext", "GradientAverager", "all_gather_object", "all_reduce_mean",
           "assert_identical", "broadcast_buffers", "broadcast_module", "broadcast_object",
           "cleanup", "equal_steps", "init_distributed", "is_main_process", "main_process_only",
           "save_on_main", "shard_indices"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, and the backend in use
    (``None`` when running as a single process without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1


def init_distributed(backend: str | None = None,
                     device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Without ``WORLD_SIZE`` in the environment (a plain ``python`` run) returns a single-process context and
    creates no group. ``backend`` defaults to NCCL when CUDA is available and gloo otherwise; on CUDA each
    process takes GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "WORLD_SIZE" not in os.environ:
        return DistributedContext(device=device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistributedContext(rank, world_size, local_rank, device, backend)


def cleanup(ctx: DistributedContext | None = None) -> None:
    """Leave the process group (a no-op on a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or no process group at all."""
    return not dist.is_initialized() or dist.get_rank() == 0


def main_process_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``fn`` on rank 0 only (other ranks get ``None``); for logging and writing files."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


def _barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def save_on_main(obj: Any, path: str | os.PathLike, ctx: DistributedContext) -> None:
    """``torch.save`` on rank 0 (atomically: write aside, then rename), then wait for it on every rank, so
    no rank can read a half-written checkpoint or run ahead of it."""
    if ctx.is_main:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)
    _barrier(ctx)


def broadcast_object(obj: T, ctx: DistributedContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: configs, seeds, genotypes)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def all_gather_object(obj: T, ctx: DistributedContext) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` on one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast_tensors(tensors: Sequence[torch.Tensor], ctx: DistributedContext, src: int) -> None:
    if not ctx.distributed or not tensors:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=src)


def broadcast_module(module: nn.Module, ctx: DistributedContext, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (alphas and BatchNorm statistics included) to every rank."""
    _broadcast_tensors([*module.parameters(), *module.buffers()], ctx, src)


def broadcast_buffers(module: nn.Module, ctx: DistributedContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, e.g. before evaluating."""
    _broadcast_tensors(list(module.buffers()), ctx, src)


def _all_reduce_mean_(tensors: Sequence[torch.Tensor], ctx: DistributedContext) -> None:
    """Average ``tensors`` in place across ranks with one all-reduce per dtype (coalesced)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(ctx.world_size)
        for t, avg in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(avg)


def all_reduce_mean(value: float | torch.Tensor, ctx: DistributedContext) -> float:
    """The mean of a scalar metric over ranks (for logging a global loss or accuracy)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=ctx.device).detach().clone().reshape(1)
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return float(t.item())


class GradientAverager:
    """Average the gradients of ``params`` across ranks, so every rank steps with the same gradient.

    See the module docstring for when it averages. On a single process it does nothing.
    """

    def __init__(self, params: Iterable[nn.Parameter], ctx: DistributedContext) -> None:
        self.ctx = ctx
        self.params = [p for p in params if p.requires_grad]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._pending: set[int] = set()  # parameters given a gradient by the running backward
        self._queued = False
        self._synced: dict[int, weakref.ref] = {}  # parameter index -> the gradient tensor last averaged
        self._handles: list[Any] = []
        self.reductions = 0  # coalesced all-reduce rounds so far (for tests and logging)

    def attach(self, *optimizers: torch.optim.Optimizer) -> GradientAverager:
        """Hook the parameters (average at the end of backward) and ``optimizers`` (average before step
        whatever was assigned since). Returns ``self``."""
        if not self.ctx.distributed:
            return self
        for i, p in enumerate(self.params):
            self._handles.append(p.register_post_accumulate_grad_hook(functools.partial(self._on_grad, i)))
        for opt in optimizers:
            self._handles.append(opt.register_step_pre_hook(self._before_step))
        return self

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_grad(self, index: int, _param: torch.Tensor) -> None:
        self._pending.add(index)
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        indices = sorted(self._pending)  # same order on every rank: the same graph gave the same set
        self._pending.clear()
        self._queued = False
        self._reduce(indices)

    def _before_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        stale = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None or p.grad is None:
                    continue
                ref = self._synced.get(i)
                if ref is None or ref() is not p.grad:
                    stale.append(i)
        # Every rank runs the same strategy code, so every rank finds the same stale set.
        self._reduce(sorted(stale))

    def _reduce(self, indices: Sequence[int]) -> None:
        grads = [self.params[i].grad for i in indices if self.params[i].grad is not None]
        if not grads:
            return
        with torch.no_grad():
            _all_reduce_mean_(grads, self.ctx)
        self.reductions += 1
        for i in indices:
            if self.params[i].grad is not None:
                self._synced[i] = weakref.ref(self.params[i].grad)


def shard_indices(indices: Sequence[int], ctx: DistributedContext) -> list[int]:
    """Rank ``ctx.rank``'s share of ``indices``: every ``world_size``-th from ``rank`` on (disjoint, all
    covered, sizes differ by at most one; shuffle ``indices`` first with a seed shared by all ranks)."""
    return list(indices[ctx.rank :: ctx.world_size])


def equal_steps(local_steps: int, ctx: DistributedContext) -> int:
    """The smallest per-rank step count of an epoch: every rank must run the same number of steps, or
    a collective waits forever for the rank that stopped."""
    if not ctx.distributed:
        return local_steps
    t = torch.tensor([local_steps], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def assert_identical(tensors: Iterable[torch.Tensor], ctx: DistributedContext, what: str = "tensors") -> None:
    """Raise ``AssertionError`` on every rank unless ``tensors`` are bitwise equal on all ranks."""
    if not ctx.distributed:
        return
    mine = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    differs = torch.tensor([0 if torch.equal(mine, ref) else 1], device=ctx.device)
    dist.all_reduce(differs, op=dist.ReduceOp.SUM)
    if int(differs.item()):
        raise AssertionError(f"{what} differ between ranks ({int(differs.item())} of {ctx.world_size} "
                             "differ from rank 0)")

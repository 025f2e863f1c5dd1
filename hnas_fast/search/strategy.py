"""Search strategies: how one training step updates a supernet's weights and architecture parameters.

Three strategies share one interface, ``step(train_batch, val_batch) -> dict``:

* ``OneLevel`` (StacNAS): one loss on the training batch, one backward, then a weight step and an
  architecture step from the same gradients.
* ``TwoLevelFirstOrder`` (DARTS, first order): an architecture step on a validation batch, then a weight
  step on a training batch.
* ``TwoLevelSecondOrder`` (DARTS, second order): the architecture gradient through one unrolled weight step,
  with the Hessian-vector product taken by central finite differences, as DARTS's ``Architect``.

Strategies that add terms to the architecture objective (H-DAS depth and complexity losses) register them
with ``add_loss_term``: each is a callable ``f(model) -> scalar Tensor`` added to the loss that drives the
architecture update (to the single loss in one-level search). Weights follow SGD with cosine decay, momentum,
weight decay and gradient-norm clipping; architecture parameters follow Adam; each optimizer holds only its
own parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hnas_fast.search.loop import NonFiniteLossError, accuracy, check_finite, clip_and_step, weight_optimizer

Batch = tuple[Tensor, Tensor]
LossTerm = Callable[[nn.Module], Tensor]


def _logits(out: Any) -> Tensor:
    # Final networks return (logits, aux); supernets return logits.
    return out[0] if isinstance(out, tuple) else out


class SearchStrategy:
    """Shared optimizers, schedule, loss terms and bookkeeping of the search strategies.

    Args:
        model: a supernet exposing ``arch_parameters()`` and ``weight_parameters()`` (disjoint lists).
        epochs: length of the cosine schedule of the weight learning rate (stepped by ``end_epoch``).
        w_lr, w_lr_min, w_momentum, w_wd: SGD for the weights, cosine from ``w_lr`` to ``w_lr_min``.
        grad_clip: max global norm of the weight gradients (DARTS 5, StacNAS 3); ``None`` or 0 disables it.
        a_lr, a_betas, a_wd: Adam for the architecture parameters.
        loss_terms: initial extra terms of the architecture objective (see ``add_loss_term``).
    """

    needs_val: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        *,
        epochs: int,
        w_lr: float = 0.025,
        w_lr_min: float = 0.001,
        w_momentum: float = 0.9,
        w_wd: float = 3e-4,
        grad_clip: float | None = 5.0,
        a_lr: float = 3e-4,
        a_betas: tuple[float, float] = (0.5, 0.999),
        a_wd: float = 1e-3,
        loss_terms: Sequence[tuple[str, LossTerm]] = (),
    ) -> None:
        self.model = model
        self.arch_params: list[nn.Parameter] = list(model.arch_parameters())
        self.weight_params: list[nn.Parameter] = list(model.weight_parameters())
        if not self.arch_params or not self.weight_params:
            raise ValueError("the model has no architecture or no weight parameters")
        ids_a = {id(p) for p in self.arch_params}
        if any(id(p) in ids_a for p in self.weight_params):
            raise ValueError("arch_parameters() and weight_parameters() overlap")
        self.grad_clip = grad_clip
        self.w_opt, self.scheduler = weight_optimizer(self.weight_params, epochs=epochs, lr=w_lr,
                                                      lr_min=w_lr_min, momentum=w_momentum, weight_decay=w_wd)
        self.a_opt = torch.optim.Adam(self.arch_params, lr=a_lr, betas=a_betas, weight_decay=a_wd)
        self.loss_terms: list[tuple[str, LossTerm]] = list(loss_terms)

    # ----------------------------------------------------------------------------------------- hooks
    def add_loss_term(self, fn: LossTerm, name: str | None = None) -> None:
        """Add ``fn(model)`` to the architecture objective; its value is reported under ``name``."""
        self.loss_terms.append((name or getattr(fn, "__name__", f"term{len(self.loss_terms)}"), fn))

    def _extra(self, metrics: dict[str, float]) -> Tensor | None:
        total: Tensor | None = None
        for name, fn in self.loss_terms:
            t = fn(self.model)
            metrics[name] = float(t.detach())
            total = t if total is None else total + t
        return total

    # ----------------------------------------------------------------------------------------- helpers
    @property
    def lr(self) -> float:
        """Current weight learning rate."""
        return float(self.w_opt.param_groups[0]["lr"])

    def _device(self) -> torch.device:
        return self.weight_params[0].device

    def _to(self, batch: Batch) -> Batch:
        dev = self._device()
        x, y = batch
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def _forward_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = _logits(self.model(x))
        return F.cross_entropy(logits, y), logits

    def _clip_and_step_weights(self) -> None:
        clip_and_step(self.w_opt, self.weight_params, self.grad_clip)

    # ----------------------------------------------------------------------------------------- API
    def step(self, train_batch: Batch, val_batch: Batch | None = None) -> dict[str, float]:
        """One search step; returns at least ``loss`` and ``acc`` (on the training batch) and ``lr``."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Advance the weight learning-rate schedule by one epoch."""
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler states (the model's parameters are saved by the caller)."""
        return {"w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.scheduler.load_state_dict(state["scheduler"])


class OneLevel(SearchStrategy):
    """StacNAS's one-level optimization: weights and alphas descend the same training loss together."""

    needs_val = False
    name = "one-level"

    def step(self, train_batch: Batch, val_batch: Batch | None = None) -> dict[str, float]:
        """Update weights and alphas from one training batch (``val_batch`` is ignored)."""
        batch = self._to(train_batch)
        metrics: dict[str, float] = {"lr": self.lr}
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        ce, logits = self._forward_loss(batch)
        extra = self._extra(metrics)
        loss = ce if extra is None else ce + extra
        check_finite(loss, "training")
        loss.backward()
        self._clip_and_step_weights()
        self.a_opt.step()
        metrics.update(loss=float(ce.detach()), acc=accuracy(logits, batch[1]))
        return metrics


class TwoLevelFirstOrder(SearchStrategy):
    """DARTS first order: alphas step on a validation batch, then weights step on a training batch."""

    needs_val = True
    name = "darts"

    def alpha_step(self, val_batch: Batch, metrics: dict[str, float] | None = None) -> None:
        """Adam step of the alphas on ``L_val(w, alpha)`` plus the extra terms; weights get no gradient."""
        metrics = {} if metrics is None else metrics
        batch = self._to(val_batch)
        self.a_opt.zero_grad(set_to_none=True)
        ce, logits = self._forward_loss(batch)
        extra = self._extra(metrics)
        loss = ce if extra is None else ce + extra
        check_finite(loss, "validation")
        loss.backward(inputs=self.arch_params)  # no weight gradients: saves the weight half of backward
        self.a_opt.step()
        metrics.update(val_loss=float(ce.detach()), val_acc=accuracy(logits, batch[1]))

    def weight_step(self, train_batch: Batch, metrics: dict[str, float] | None = None) -> None:
        """SGD step of the weights on ``L_train(w, alpha)``; alphas get no gradient."""
        metrics = {} if metrics is None else metrics
        batch = self._to(train_batch)
        self.w_opt.zero_grad(set_to_none=True)
        ce, logits = self._forward_loss(batch)
        check_finite(ce, "training")
        ce.backward(inputs=self.weight_params)
        self._clip_and_step_weights()
        metrics.update(loss=float(ce.detach()), acc=accuracy(logits, batch[1]))

    def step(self, train_batch: Batch, val_batch: Batch | None = None) -> dict[str, float]:
        """Alpha step on ``val_batch``, then weight step on ``train_batch``."""
        if val_batch is None:
            raise ValueError(f"{self.name} search needs a validation batch")
        metrics: dict[str, float] = {"lr": self.lr}
        self.alpha_step(val_batch, metrics)
        self.weight_step(train_batch, metrics)
        return metrics


class TwoLevelSecondOrder(TwoLevelFirstOrder):
    """DARTS second order (``Architect._backward_step_unrolled``).

    With ``xi`` the current weight learning rate, ``w' = w - xi (m·buf + grad_w L_train(w, a) + wd·w)``
    (exactly the next SGD step, without clipping, as DARTS's ``_compute_unrolled_model``) and
    ``v = grad_w' L_val(w', a)``:
    ``d_alpha = grad_a L_val(w', a) - xi (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)``,
    ``w± = w ± eps v``, ``eps = 0.01 / ||v||``. Extra loss terms are treated as functions of the
    architecture only: their gradient is added to ``d_alpha`` directly. BatchNorm running statistics are
    restored after the auxiliary forwards, so only the weight step's forward updates them.
    """

    name = "darts2"
    fd_radius: ClassVar[float] = 0.01

    def _ce_grads(self, batch: Batch, wrt: Sequence[Tensor], what: str) -> tuple[Tensor, list[Tensor]]:
        loss, _ = self._forward_loss(batch)
        check_finite(loss, what)
        grads = torch.autograd.grad(loss, list(wrt), allow_unused=True)
        return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads, strict=True)]

    def hypergradient(self, train_batch: Batch, val_batch: Batch) -> tuple[list[Tensor], float]:
        """The unrolled architecture gradient (without extra terms) and the unrolled validation loss."""
        tb, vb = self._to(train_batch), self._to(val_batch)
        xi = self.lr
        group = self.w_opt.param_groups[0]
        mom, wd = group["momentum"], group["weight_decay"]
        n_a = len(self.arch_params)
        buffers = [b.detach().clone() for b in self.model.buffers()]
        w0 = [p.detach().clone() for p in self.weight_params]
        try:
            _, g = self._ce_grads(tb, self.weight_params, "training")
            with torch.no_grad():
                for p, w, gi in zip(self.weight_params, w0, g, strict=True):
                    d = gi + wd * w
                    buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
                    if buf is not None and mom:
                        d = d + mom * buf
                    p.copy_(w - xi * d)
            loss_v, grads = self._ce_grads(vb, self.arch_params + self.weight_params, "unrolled validation")
            dalpha, v = grads[:n_a], grads[n_a:]
            norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
            if float(norm) > 0 and xi > 0:
                eps = self.fd_radius / float(norm)
                with torch.no_grad():
                    for p, w, vi in zip(self.weight_params, w0, v, strict=True):
                        p.copy_(w + eps * vi)
                _, g_pos = self._ce_grads(tb, self.arch_params, "training (w+)")
                with torch.no_grad():
                    for p, w, vi in zip(self.weight_params, w0, v, strict=True):
                        p.copy_(w - eps * vi)
                _, g_neg = self._ce_grads(tb, self.arch_params, "training (w-)")
                dalpha = [
                    d - xi * (gp - gn) / (2 * eps) for d, gp, gn in zip(dalpha, g_pos, g_neg, strict=True)
                ]
        finally:
            with torch.no_grad():
                for p, w in zip(self.weight_params, w0, strict=True):
                    p.copy_(w)
                for b, saved in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(saved)
        return dalpha, float(loss_v.detach())

    def alpha_step(self, val_batch: Batch, metrics: dict[str, float] | None = None,
                   train_batch: Batch | None = None) -> None:
        """Adam step of the alphas along the unrolled hypergradient (needs ``train_batch``)."""
        if train_batch is None:
            raise ValueError("second-order alpha step needs the training batch")
        metrics = {} if metrics is None else metrics
        dalpha, loss_v = self.hypergradient(train_batch, val_batch)
        self.a_opt.zero_grad(set_to_none=True)
        extra = self._extra(metrics)
        if extra is not None:
            check_finite(extra, "extra")
            eg = torch.autograd.grad(extra, self.arch_params, allow_unused=True)
            dalpha = [d if e is None else d + e for d, e in zip(dalpha, eg, strict=True)]
        for a, d in zip(self.arch_params, dalpha, strict=True):
            a.grad = d.detach()
        self.a_opt.step()
        metrics["val_loss"] = loss_v

    def step(self, train_batch: Batch, val_batch: Batch | None = None) -> dict[str, float]:
        """Unrolled alpha step, then weight step on ``train_batch``."""
        if val_batch is None:
            raise ValueError(f"{self.name} search needs a validation batch")
        metrics: dict[str, float] = {"lr": self.lr}
        self.alpha_step(val_batch, metrics, train_batch=train_batch)
        self.weight_step(train_batch, metrics)
        return metrics


STRATEGIES: dict[str, type[SearchStrategy]] = {
    "one-level": OneLevel,
    "darts": TwoLevelFirstOrder,
    "darts2": TwoLevelSecondOrder,
}


def make_strategy(name: str, model: nn.Module, **kwargs: Any) -> SearchStrategy:
    """Build the strategy registered under ``name`` (``one-level``, ``darts``, ``darts2``)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    return cls(model, **kwargs)


__all__ = ["STRATEGIES", "NonFiniteLossError", "OneLevel", "SearchStrategy", "TwoLevelFirstOrder",
           "TwoLevelSecondOrder", "make_strategy"]

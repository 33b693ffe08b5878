"""Meta-learning of the encoder's initialisation, so that a few gradient steps on a new snapshot suffice.

The MAML family, behind one small interface in the spirit of learn2learn::

    fast = learner.clone()              # fast weights, starting at the meta-learned initialisation
    for _ in range(steps):
        fast.adapt(task.loss(fast, "support"))
    z = fast(...)                       # the adapted encoder

``algorithm`` picks how the initialisation learns from tasks (a task is a snapshot with the known anchors split
into seeds, support and query labels):

- ``maml``: backpropagates the query loss through the inner steps (second order);
- ``fomaml``: the same with the inner gradients treated as constants (first order, much cheaper);
- ``metasgd``: first-order MAML that also learns a per-parameter inner learning rate (Li et al., 2017), so
  fast adaptation needs no hand-set step size;
- ``reptile``: moves the initialisation towards the weights adapted on each task (Nichol et al., 2018);
- ``multitask``: not meta-learning but its baseline: ordinary training on the same tasks' labels (a
  *pretrained* initialisation), for the ablation that asks whether meta-learning is worth it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call

from aligner.config import MetaConfig, ModelConfig
from aligner.model.encoder import AlignmentEncoder

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "multitask")


class MetaTask(Protocol):
    """A task: a loss for fast weights on one of its label splits, ``"support"``, ``"query"`` or ``"all"``."""

    def loss(self, fast: "FastWeights", split: str) -> torch.Tensor: ...


class FastWeights:
    """A differentiable copy of the model's parameters that ``adapt`` moves by one gradient step at a time."""

    def __init__(self, learner: "MetaLearner", params: dict[str, torch.Tensor], second_order: bool):
        self.learner = learner
        self.params = params
        self.second_order = second_order

    def __call__(self, *args, **kwargs):
        return functional_call(self.learner.model, self.params, args, kwargs)

    def adapt(self, loss: torch.Tensor) -> float:
        names = list(self.params)
        grads = torch.autograd.grad(
            loss, [self.params[n] for n in names], create_graph=self.second_order, allow_unused=True
        )
        step = {}
        for name, grad in zip(names, grads):
            if grad is None:
                step[name] = self.params[name]
                continue
            if not self.second_order:
                grad = grad.detach()
            step[name] = self.params[name] - self.learner.inner_lr(name) * grad
        self.params = step
        return float(loss.detach())

    def detached(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}


class MetaLearner(nn.Module):
    """Holds the meta-learned initialisation (the wrapped model's parameters) and, for Meta-SGD, the learned
    per-parameter inner learning rates.

    >>> import torch
    >>> class Regression:
    ...     def loss(self, fast, split):
    ...         return ((fast(torch.ones(4, 2)) - 1.0) ** 2).mean()
    >>> learner = MetaLearner(torch.nn.Linear(2, 1), "metasgd", inner_lr=0.1, meta_lr=0.01)
    >>> fast = learner.clone()
    >>> before = float(Regression().loss(fast, "support"))
    >>> _ = fast.adapt(Regression().loss(fast, "support"))
    >>> bool(float(Regression().loss(fast, "support")) < before)
    True
    >>> sorted(learner.meta_update([Regression()], inner_steps=1))
    ['inner_loss', 'outer_loss']
    """

    def __init__(self, model: nn.Module, algorithm: str = "metasgd", inner_lr: float = 0.05, meta_lr: float = 0.003,
                 reptile_step: float = 0.5):
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown meta-learning algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        self.model = model
        self.algorithm = algorithm
        self.base_inner_lr = inner_lr
        self.reptile_step = reptile_step
        self.log_lr = nn.ParameterDict()
        if algorithm == "metasgd":
            for name, p in model.named_parameters():
                self.log_lr[_key(name)] = nn.Parameter(torch.full_like(p, math.log(inner_lr)))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=meta_lr)

    def inner_lr(self, name: str) -> torch.Tensor | float:
        if self.algorithm == "metasgd":
            return self.log_lr[_key(name)].exp()
        return self.base_inner_lr

    def clone(self, second_order: bool | None = None) -> FastWeights:
        if second_order is None:
            second_order = self.algorithm == "maml"
        return FastWeights(self, dict(self.model.named_parameters()), second_order)

    def adapted(self, task: MetaTask, steps: int) -> FastWeights:
        """Fast adaptation for inference: ``steps`` first-order steps on all of the task's labels, detached."""
        fast = self.clone(second_order=False)
        for _ in range(steps):
            fast.adapt(task.loss(fast, "all"))
        fast.params = fast.detached()
        return fast

    def meta_update(self, tasks: Sequence[MetaTask], inner_steps: int) -> dict[str, float]:
        """One outer step of the chosen algorithm over a batch of tasks; returns the mean inner and outer losses."""
        self.optimizer.zero_grad(set_to_none=True)
        inner_losses, outer_losses = [], []
        if self.algorithm == "multitask":
            for task in tasks:
                loss = task.loss(self.clone(second_order=False), "all")
                (loss / len(tasks)).backward()
                outer_losses.append(float(loss.detach()))
            nn.utils.clip_grad_norm_(self.parameters(), 5.0)
            self.optimizer.step()
            return {"inner_loss": float("nan"), "outer_loss": _mean(outer_losses)}
        if self.algorithm == "reptile":
            params = dict(self.model.named_parameters())
            delta = {n: torch.zeros_like(p) for n, p in params.items()}
            for task in tasks:
                fast = self.clone(second_order=False)
                for _ in range(inner_steps):
                    inner_losses.append(fast.adapt(task.loss(fast, "all")))
                for n, p in fast.detached().items():
                    delta[n] += p - params[n].detach()
            with torch.no_grad():
                for n, p in params.items():
                    p.add_(delta[n], alpha=self.reptile_step / max(len(tasks), 1))
            return {"inner_loss": _mean(inner_losses), "outer_loss": _mean(inner_losses[-len(tasks):])}
        for task in tasks:
            fast = self.clone()
            for _ in range(inner_steps):
                inner_losses.append(fast.adapt(task.loss(fast, "support")))
            outer = task.loss(fast, "query")
            (outer / len(tasks)).backward()
            outer_losses.append(float(outer.detach()))
        nn.utils.clip_grad_norm_(self.parameters(), 5.0)
        self.optimizer.step()
        if self.algorithm == "metasgd":
            with torch.no_grad():  # keep learned step sizes in a sane band: no vanishing or exploding steps
                for p in self.log_lr.values():
                    p.clamp_(math.log(1e-4), math.log(1.0))
        return {"inner_loss": _mean(inner_losses), "outer_loss": _mean(outer_losses)}

    def inner_lr_summary(self) -> dict[str, float]:
        """Mean learned inner learning rate per parameter tensor (Meta-SGD), for logs and explanations."""
        if self.algorithm != "metasgd":
            return {}
        return {name: float(p.detach().exp().mean()) for name, p in self.log_lr.items()}


def _key(name: str) -> str:
    return name.replace(".", "__")


def _mean(xs: list[float]) -> float:
    return round(float(sum(xs) / len(xs)), 4) if xs else float("nan")


def build_learner(model: ModelConfig, meta: MetaConfig, attr_dim: int, seed: int) -> MetaLearner:
    """A fresh initialisation of the alignment encoder for ``attr_dim`` attribute columns, seeded by ``seed``."""
    torch.manual_seed(seed)
    encoder = AlignmentEncoder(attr_dim, model.position_dim, model.hidden, model.embedding_dim, model.cheb_k)
    return MetaLearner(encoder, meta.algorithm, meta.inner_lr, meta.meta_lr, meta.reptile_step)


def weights_version(learner: MetaLearner, fast: dict[str, torch.Tensor]) -> str:
    """A short content id of a model: the meta-learned initialisation, its inner learning rates and the adapted
    weights ``fast``. Equal weights, equal versions."""
    digest = hashlib.sha256()
    for prefix, tensors in (("init", learner.state_dict()), ("fast", fast)):
        for name in sorted(tensors):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensors[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

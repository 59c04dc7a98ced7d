"""Losses of the ``stylegan2_ada`` backend.

* Non-saturating logistic loss (Goodfellow et al., "Generative Adversarial Nets",
  NeurIPS 2014, sec. 3; the StyleGAN2 loss [SG2] appendix B):
  L_D = softplus(D(G(z))) + softplus(-D(x)),   L_G = softplus(-D(G(z))).
* Path length regularization ([SG2] sec. 3.2, eq. 4):
  E_{w, y ~ N(0, I)} ( ||J_w^T y||_2 - a )^2, a the running mean of the lengths.
* The Adam correction of lazy regularization ([SG2] appendix B).

[SG2]: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020.
R1 is not here: it is the ``r1`` regularizer plugin, reached through the regularizer
interface like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(G(z))) + softplus(-D(x)), averaged over the batch."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(G(z))): the non-saturating generator loss."""
    return F.softplus(-fake_logits).mean()


def lazy_fraction(intervals: Iterable[int]) -> float:
    """Extra optimizer steps per main step when regularizers with these intervals run in a
    separate pass (all that are due at a step share one pass): |{s < L : any k | s}| / L,
    with L the least common multiple. One interval k gives 1/k."""
    intervals = sorted(set(intervals))
    if not intervals:
        return 0.0
    period = math.lcm(*intervals)
    if period > 1_000_000:  # pathological intervals: inclusion-exclusion bound is fine here
        return min(1.0, sum(1 / k for k in intervals))
    return sum(1 for s in range(period) if any(s % k == 0 for k in intervals)) / period


def lazy_adam(lr: float, betas: tuple[float, float], intervals: Iterable[int]) -> tuple[float, tuple[float, float]]:
    """Adam settings corrected for lazy regularization ([SG2] appendix B).

    With a regularization step every k main steps, the optimizer takes k + 1 steps per
    k; c = k / (k + 1) keeps the schedule per main step: lr' = c lr, beta' = beta^c.
    Generalized to several intervals: c = 1 / (1 + extra steps per main step).
    """
    c = 1 / (1 + lazy_fraction(intervals))
    return lr * c, (betas[0] ** c, betas[1] ** c)


class PathLengthPenalty:
    """Path length regularization of G ([SG2] sec. 3.2).

    For w and y ~ N(0, I) / sqrt(H W) (the 1/sqrt(HW) makes the lengths independent of
    resolution), the length is ||J_w^T y|| = ||grad_w <g(w), y>||; the penalty is the
    squared deviation from a, the running mean of the lengths (decay ``decay``).
    Lazy: computed every ``interval`` G steps and multiplied by ``interval``.
    """

    def __init__(self, weight: float, interval: int, batch_shrink: int, decay: float):
        self.weight, self.interval, self.batch_shrink, self.decay = weight, interval, batch_shrink, decay
        self.mean = torch.zeros(())

    @property
    def active(self) -> bool:
        return self.weight > 0

    def due(self, step: int) -> bool:
        return self.active and step % self.interval == 0

    def penalty(self, images: torch.Tensor, ws: torch.Tensor, reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``images = synthesis(ws)`` computed with grad; returns the weighted, lazy penalty."""
        h, w = images.shape[2], images.shape[3]
        y = torch.randn_like(images) / math.sqrt(h * w)
        (grad,) = torch.autograd.grad((images.float() * y.float()).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()  # ||J_w^T y|| per image, averaged over the ws
        batch_mean = lengths.detach().mean()
        if reduce_mean is not None:  # the same a on every process
            batch_mean = reduce_mean(batch_mean)
        self.mean = self.mean.to(batch_mean.device)
        self.mean = self.mean + self.decay * (batch_mean - self.mean)  # a <- a + decay (mean - a)
        return (lengths - self.mean).square().mean() * self.weight * self.interval

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].float()

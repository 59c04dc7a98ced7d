"""Built-in plugin ``r1``: the R1 gradient penalty on real images.

R1 (Mescheder, Geiger & Nowozin, "Which Training Methods for GANs do actually
Converge?", ICML 2018, eq. 9) penalizes the discriminator's gradient on the real
data:

    R1 = gamma / 2 * E_x[ ||grad_x D(x)||^2 ]

It is applied lazily (Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN", sec. 3.1): every ``interval`` discriminator steps, multiplied
by ``interval`` so that its average strength does not change.

How it reaches D: the backend hands it a :class:`raresynth.PenaltyInputs` with

* ``real`` (the real batch) and ``model``, a callable ``model(images, labels) ->
  logits`` that is "D as the backend trains it" (StyleGAN2-ADA augments, then calls
  D). R1 makes a leaf copy of ``real`` that requires grad, calls ``model`` on it and
  differentiates the logits w.r.t. that copy, with ``create_graph=True`` so the
  backend's ``backward`` reaches D's weights; or
* ``real`` that already requires grad and the ``real_logits`` computed from it
  (the ``dcgan`` backend's single D pass): R1 then differentiates those directly
  and needs no forward pass of its own.

``gamma: auto`` is the heuristic of Karras et al. 2020b ("Training Generative
Adversarial Networks with Limited Data", NeurIPS 2020, appendix: the ``auto``
configuration), gamma = 0.0002 * resolution^2 / N, with N the global batch size.
The resolution comes from the data spec; N is the per-process batch that reaches
R1 (``real.shape[0]``) times the number of processes of the run (the
``torch.distributed`` world size, 1 without it). A backend that hands R1 a smaller
batch than it trains on would get a larger auto gamma: set a number instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from raresynth import ConfigError, PenaltyInputs, PluginParams, Regularizer, hookimpl

__all__ = ["R1", "R1Params", "auto_gamma"]


class R1Params(PluginParams):
    gamma: float | Literal["auto"] = Field("auto", description="Penalty weight; 'auto': 0.0002 * resolution^2 / global batch.")
    interval: int = Field(16, ge=1, description="Apply every this many discriminator steps (lazy regularization); 1: every step.")

    @field_validator("gamma")
    @classmethod
    def _not_negative(cls, gamma: float | str) -> float | str:
        if gamma != "auto" and gamma < 0:
            raise ValueError(f"must be a number >= 0 or 'auto' (got {gamma})")
        return gamma


def auto_gamma(resolution: int, global_batch: int) -> float:
    """gamma = 0.0002 * resolution^2 / global batch (Karras et al. 2020b, the ``auto`` configuration)."""
    return 0.0002 * resolution**2 / global_batch


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Sum squares in fp32 under mixed precision (fp16 squares overflow); keep fp64 as it is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class R1(Regularizer):
    """gamma / 2 * E||grad_x D(x)||^2 on real images, every ``interval`` D steps (already x interval)."""

    Params = R1Params
    role = "discriminator"

    @property
    def interval(self) -> int:
        return self.params.interval

    def gamma(self, per_process_batch: int) -> float:
        """The gamma in use: the configured number, or the ``auto`` heuristic for this batch."""
        if self.params.gamma == "auto":
            return auto_gamma(self.spec.resolution, per_process_batch * world_size())
        return float(self.params.gamma)

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        if inputs.real is None:
            raise ConfigError(f"regularizers: '{self.name}' (R1) needs the real images, but the backend passed none")
        if inputs.real_logits is not None and inputs.real.requires_grad:
            real, logits = inputs.real, inputs.real_logits
        elif inputs.model is not None:
            real = inputs.real.detach().requires_grad_(True)
            logits = inputs.model(real, inputs.labels)
        else:
            raise ConfigError(
                f"regularizers: '{self.name}' (R1) needs either the discriminator (PenaltyInputs.model) or real images "
                "that require grad with their logits; the backend passed neither"
            )
        # Sum over the batch: each logit depends on its own image only (up to the
        # minibatch-stddev feature), so this gives every sample's gradient at once.
        (grad,) = torch.autograd.grad(_at_least_fp32(logits).sum(), real, create_graph=True)
        squared_norm = _at_least_fp32(grad).square().sum(dim=tuple(range(1, grad.ndim)))  # ||grad_x D(x)||^2 per image
        gamma = self.gamma(real.shape[0])
        return squared_norm.mean() * (gamma / 2) * self.interval  # Mescheder et al. 2018, eq. 9; x interval (lazy)


@hookimpl
def raresynth_register_regularizers(register):
    register("r1", R1)

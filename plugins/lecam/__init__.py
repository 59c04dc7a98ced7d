"""Built-in plugin ``lecam``: LeCam regularization of the discriminator.

Tseng, Jiang, Liu, Yang & Yang, "Regularizing Generative Adversarial Networks under
Limited Data", CVPR 2021, eq. 3:

    R_LC = E_x[ ||D(x) - alpha_F||^2 ] + E_z[ ||D(G(z)) - alpha_R||^2 ]

with alpha_R and alpha_F exponential moving averages of D's mean output on real
and on generated images ("anchors"). Pulling real predictions towards the fake
anchor and fake predictions towards the real one keeps D's outputs from drifting
apart when D memorizes a small training set (the paper links it to the LeCam
divergence). The anchors are updated from the current batch (decay ``ema_decay``)
before the penalty is computed, are averaged over processes so every rank holds the
same values, and are saved in the checkpoint (:meth:`LeCam.state_dict`), so a
resumed run continues with them.

How it reaches D: the backend's :class:`raresynth.PenaltyInputs` either carries
``real_logits`` and ``fake_logits`` that still have their graph to D's weights, or
``model`` (D as the backend trains it: for ``stylegan2_ada``, augmented) with
``real`` and ``fake``, which LeCam then calls itself. Lazy: applied every
``interval`` D steps, multiplied by ``interval``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from raresynth import ConfigError, PenaltyInputs, PluginParams, Regularizer, hookimpl

__all__ = ["LeCam", "LeCamParams"]


class LeCamParams(PluginParams):
    weight: float = Field(0.3, ge=0, description="lambda: the penalty's weight in D's loss.")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="Decay of the anchors alpha_R, alpha_F (moving averages of D's outputs).")
    interval: int = Field(1, ge=1, description="Apply every this many discriminator steps (lazy regularization).")


def _global_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of every process (the anchors stay identical on all ranks)."""
    mean = t.detach().float().mean()
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        mean = mean.clone()
        torch.distributed.all_reduce(mean)
        mean /= torch.distributed.get_world_size()
    return mean


class LeCam(Regularizer):
    """weight * (E||D(x) - alpha_F||^2 + E||D(G(z)) - alpha_R||^2), anchors saved in state."""

    Params = LeCamParams
    role = "discriminator"

    def __init__(self, params, spec, name=""):
        super().__init__(params, spec, name)
        self.anchor_real: float | None = None  # alpha_R; None until the first batch
        self.anchor_fake: float | None = None  # alpha_F

    @property
    def interval(self) -> int:
        return self.params.interval

    def _logits(self, inputs: PenaltyInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.real_logits is not None and inputs.fake_logits is not None:
            return inputs.real_logits, inputs.fake_logits
        if inputs.model is None or inputs.real is None or inputs.fake is None:
            raise ConfigError(f"regularizers: '{self.name}' (LeCam) needs D's logits on real and generated images, or the "
                              "discriminator (PenaltyInputs.model) with real and fake images; the backend passed neither")
        return inputs.model(inputs.real, inputs.labels), inputs.model(inputs.fake.detach(), inputs.labels)

    def _update_anchors(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        real_mean, fake_mean = float(_global_mean(real_logits)), float(_global_mean(fake_logits))
        if self.anchor_real is None or self.anchor_fake is None:
            self.anchor_real, self.anchor_fake = real_mean, fake_mean
            return
        decay = self.params.ema_decay
        self.anchor_real = decay * self.anchor_real + (1 - decay) * real_mean
        self.anchor_fake = decay * self.anchor_fake + (1 - decay) * fake_mean

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        real_logits, fake_logits = self._logits(inputs)
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        self._update_anchors(real_logits, fake_logits)
        # Tseng et al. 2021, eq. 3: real outputs towards the fake anchor, fake outputs towards the real one
        value = (real_logits - self.anchor_fake).square().mean() + (fake_logits - self.anchor_real).square().mean()
        return value * self.params.weight * self.interval  # x interval: lazy regularization

    def state_dict(self) -> dict:
        return {"anchor_real": self.anchor_real, "anchor_fake": self.anchor_fake}

    def load_state_dict(self, state: dict) -> None:
        self.anchor_real = None if state.get("anchor_real") is None else float(state["anchor_real"])
        self.anchor_fake = None if state.get("anchor_fake") is None else float(state["anchor_fake"])


@hookimpl
def raresynth_register_regularizers(register):
    register("lecam", LeCam)

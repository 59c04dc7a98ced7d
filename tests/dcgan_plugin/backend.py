"""The ``dcgan`` backend: a small, fast GAN for the test suite (not a built-in plugin).

Loss: the non-saturating logistic GAN loss (Goodfellow et al., "Generative
Adversarial Nets", NeurIPS 2014, sec. 3):
    L_D = softplus(D(G(z))) + softplus(-D(x)),    L_G = softplus(-D(G(z))).
Regularizers with role "discriminator" are added to L_D, with role "generator" to
L_G, through the regularizer interface only. G is averaged into G_ema with a
half-life of ``ema_kimg`` thousand images (Karras et al. 2018, "Progressive Growing
of GANs", sec. 5; Yazici et al. 2019).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from raresynth import Batch, Generator, PenaltyInputs, PluginParams, Progress

from .networks import Discriminator
from .networks import Generator as GeneratorNet


class DCGANParams(PluginParams):
    z_dim: int = Field(128, ge=1)
    base_channels: int = Field(32, ge=1)  # channels at full resolution; doubles per halving
    max_channels: int = Field(256, ge=1)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam, as in Radford et al. 2016
    ema_kimg: float = Field(1.0, ge=0)  # half-life of G_ema in thousands of images; 0: no averaging
    conditional: bool | Literal["auto"] = "auto"  # class-conditional when the data has labels


class DCGAN(Generator):
    Params = DCGANParams
    regularizer_roles = frozenset({"discriminator", "generator"})

    def setup(self, accelerator) -> None:
        p, spec = self.params, self.spec
        conditional = spec.num_classes > 0 if p.conditional == "auto" else p.conditional
        if conditional and not spec.num_classes:
            from raresynth import ConfigError

            raise ConfigError("generator.conditional: true, but the data has no labels; set data.labels or conditional: false")
        self.num_classes = spec.num_classes if conditional else 0
        G = GeneratorNet(p.z_dim, spec.resolution, spec.channels, p.base_channels, p.max_channels, self.num_classes)
        D = Discriminator(spec.resolution, spec.channels, p.base_channels, p.max_channels, self.num_classes)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False).to(accelerator.device)
        opt_g = torch.optim.Adam(G.parameters(), lr=p.lr_g, betas=p.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=p.betas)
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        self.accelerator = accelerator
        self.d_steps = 0
        self.g_steps = 0

    def _labels(self, batch: Batch) -> torch.Tensor | None:
        return batch.labels if self.num_classes else None

    def _penalties(self, role: str, step: int, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, stats = torch.zeros((), device=self.accelerator.device), {}
        for reg in self.regularizers:
            if reg.role == role and reg.due(step):
                value = reg.penalty(PenaltyInputs(step=step, **inputs))
                total = total + value
                stats[f"penalty_{reg.name}"] = value.detach()
        return total, stats

    def train_step(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        acc, p = self.accelerator, self.params
        labels = self._labels(batch)
        n = batch.images.shape[0]

        # Discriminator step: real and fake in one forward pass.
        d_regs_due = any(r.role == "discriminator" and r.due(self.d_steps) for r in self.regularizers)
        real = batch.images.detach().requires_grad_(d_regs_due)
        with torch.no_grad(), acc.autocast():
            fake = self.G(torch.randn(n, p.z_dim, device=acc.device), labels)
        with acc.autocast():
            both_labels = torch.cat([labels, labels]) if labels is not None else None
            logits = self.D(torch.cat([real, fake.to(real.dtype)]), both_labels).float()
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        penalty_d, stats_d = self._penalties("discriminator", self.d_steps, model=acc.unwrap_model(self.D), real=real, fake=fake,
                                             labels=labels, real_logits=real_logits, fake_logits=fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d + penalty_d)
        self.opt_d.step()
        self.d_steps += 1

        # Generator step.
        with acc.autocast():
            fake = self.G(torch.randn(n, p.z_dim, device=acc.device), labels)
            fake_logits = self.D(fake, labels).float()
        loss_g = F.softplus(-fake_logits).mean()
        penalty_g, stats_g = self._penalties("generator", self.g_steps, model=acc.unwrap_model(self.G), fake=fake,
                                             labels=labels, fake_logits=fake_logits)
        self.opt_g.zero_grad(set_to_none=True)
        acc.backward(loss_g + penalty_g)
        self.opt_g.step()
        self.g_steps += 1
        self._update_ema(batch_size=n * acc.num_processes)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": real_logits.detach().mean(),
                "d_fake": fake_logits.detach().mean(), **stats_d, **stats_g}

    @torch.no_grad()
    def _update_ema(self, batch_size: int) -> None:
        G = self.accelerator.unwrap_model(self.G)
        if self.params.ema_kimg == 0:
            self.G_ema.load_state_dict(G.state_dict())
            return
        beta = 0.5 ** (batch_size / (self.params.ema_kimg * 1000))
        for ema, live in zip(self.G_ema.parameters(), G.parameters()):
            ema.lerp_(live.detach(), 1 - beta)

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], labels: torch.Tensor | None = None, options: PluginParams | None = None) -> torch.Tensor:
        device = next(self.G_ema.parameters()).device
        z = torch.stack([torch.randn(self.params.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)
        if self.num_classes:
            if labels is None:
                labels = torch.arange(len(seeds)) % self.num_classes
            labels = labels.to(device)
        else:
            labels = None
        return self.G_ema(z, labels).float().clamp(-1, 1)

    def state_dict(self) -> dict[str, Any]:
        unwrap = self.accelerator.unwrap_model
        return {
            "G": unwrap(self.G).state_dict(),
            "D": unwrap(self.D).state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "steps": {"d": self.d_steps, "g": self.g_steps},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap = self.accelerator.unwrap_model
        unwrap(self.G).load_state_dict(state["G"])
        unwrap(self.D).load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.d_steps, self.g_steps = int(state["steps"]["d"]), int(state["steps"]["g"])

    def modules(self) -> dict[str, torch.nn.Module]:
        unwrap = self.accelerator.unwrap_model
        return {"G": unwrap(self.G), "D": unwrap(self.D), "G_ema": self.G_ema}

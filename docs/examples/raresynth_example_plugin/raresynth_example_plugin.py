"""An example third-party raresynth plugin, the one docs/plugins.md builds step by step.

It registers:
* generator ``pixel_gaussian``: every pixel an independent Gaussian, fitted by
  gradient descent on the data's negative log-likelihood (a sanity baseline that any
  real backend must beat);
* regularizer ``smoothness``: a total-variation penalty on the generator's mean image;
* metric ``mean_abs_gap``: the absolute difference of mean intensities;
* an observer that prints one line per tick.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from raresynth import Generator, Metric, MetricValue, PenaltyInputs, PluginParams, Regularizer, hookimpl


class PixelGaussianParams(PluginParams):
    lr: float = Field(0.01, gt=0)


class PixelGaussianModel(torch.nn.Module):
    """mu and log sigma per pixel; ``forward(images)`` is the batch's mean negative log-likelihood."""

    def __init__(self, shape):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(shape))
        self.log_sigma = torch.nn.Parameter(torch.zeros(shape))

    def forward(self, images):
        return (self.log_sigma + 0.5 * ((images - self.mu) / self.log_sigma.exp()).square()).mean() + 0.5 * math.log(2 * math.pi)


class PixelGaussian(Generator):
    """x ~ N(mu, sigma^2) per pixel; loss = Gaussian negative log-likelihood of the batch."""

    Params = PixelGaussianParams
    regularizer_roles = frozenset({"generator"})

    def setup(self, accelerator):
        model = PixelGaussianModel((self.spec.channels, self.spec.resolution, self.spec.resolution))
        optimizer = torch.optim.Adam(model.parameters(), lr=self.params.lr)
        # prepare() wraps the model in DistributedDataParallel when there are several processes
        self.model, self.optimizer = accelerator.prepare(model.to(accelerator.device), optimizer)
        self.accelerator = accelerator

    def _net(self):
        return self.accelerator.unwrap_model(self.model)

    def train_step(self, batch, progress):
        # Call the prepared module: its forward is what makes DDP average the gradients over processes.
        nll = self.model(batch.images)
        loss = nll
        for reg in self.regularizers:
            if reg.role == "generator" and reg.due(progress.step):
                # The penalty is the same on every rank; its gradient joins this backward, which DDP averages.
                loss = loss + reg.penalty(PenaltyInputs(step=progress.step, model=self._net()))
        self.optimizer.zero_grad()
        self.accelerator.backward(loss)
        self.optimizer.step()
        return {"nll": nll.detach()}

    @torch.no_grad()
    def sample(self, seeds, labels=None, options=None):
        net = self._net()  # main process only: the unwrapped module, no collective
        noise = torch.stack([torch.randn(net.mu.shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        return (net.mu.cpu() + net.log_sigma.exp().cpu() * noise).clamp(-1, 1)

    def state_dict(self):
        return {"model": self._net().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self._net().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def modules(self):
        return {"model": self._net()}


class SmoothnessParams(PluginParams):
    weight: float = Field(0.1, ge=0)


class Smoothness(Regularizer):
    """weight * total variation of the generator's mean image."""

    Params = SmoothnessParams
    role = "generator"

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        mu = inputs.model.mu
        tv = (mu[:, 1:, :] - mu[:, :-1, :]).abs().mean() + (mu[:, :, 1:] - mu[:, :, :-1]).abs().mean()
        return self.params.weight * tv


class MeanAbsGap(Metric):
    def compute(self, train, held_out, synthetic):
        return [MetricValue("mean_abs_gap", float((synthetic.images.mean() - train.images.mean()).abs()), higher_is_better=False)]


@hookimpl
def raresynth_register_generators(register):
    register("pixel_gaussian", PixelGaussian)


@hookimpl
def raresynth_register_regularizers(register):
    register("smoothness", Smoothness)


@hookimpl
def raresynth_register_metrics(register):
    register("mean_abs_gap", MeanAbsGap)


@hookimpl
def raresynth_tick(run, stats):
    print(f"[example] {stats['kimg']:.2f} kimg, nll {stats.get('nll', float('nan')):.3f}")

"""A test-only plugin: a toy generator, regularizer and metric that drive the core.

The toy generator learns a mean image and a noise scale; it draws noise from torch's
global RNG in every step (so exact resume is really tested), keeps an Adam optimizer
(state to restore) and reports a loss that goes down.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from raresynth import Generator, Metric, MetricValue, PenaltyInputs, PluginParams, Regularizer, hookimpl


class ToyParams(PluginParams):
    lr: float = Field(0.05, gt=0)
    nan_at_step: int = -1  # make the loss NaN at this step (for the non-finite test)


class ToySampleParams(PluginParams):
    scale: float = 1.0


class ToyGenerator(Generator):
    Params = ToyParams
    SampleParams = ToySampleParams
    regularizer_roles = frozenset({"generator"})

    def setup(self, accelerator) -> None:
        shape = (self.spec.channels, self.spec.resolution, self.spec.resolution)
        net = torch.nn.Module()
        net.mean = torch.nn.Parameter(torch.randn(shape) * 0.1)
        net.log_scale = torch.nn.Parameter(torch.zeros(()))
        self.net = net.to(accelerator.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.params.lr)
        self.net, self.opt = accelerator.prepare(self.net, self.opt)
        self.accelerator = accelerator

    def _module(self):
        return self.accelerator.unwrap_model(self.net)

    def train_step(self, batch, progress) -> dict[str, torch.Tensor]:
        net = self._module()
        noise = torch.randn_like(batch.images)
        fake = torch.tanh(net.mean + net.log_scale.exp() * noise)
        loss = (fake.mean(0) - batch.images.mean(0)).square().mean() + (fake.std(0) - batch.images.std(0)).square().mean()
        if progress.step == self.params.nan_at_step:
            loss = loss * float("nan")
        stats = {}
        for reg in self.regularizers:
            if reg.role == "generator" and reg.due(progress.step):
                penalty = reg.penalty(PenaltyInputs(step=progress.step, model=net, fake=fake))
                stats[f"penalty_{reg.name}"] = penalty.detach()
                loss = loss + penalty
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        if self.accelerator.num_processes > 1:  # the toy net is not DDP-wrapped: average grads by hand
            for param in net.parameters():
                param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        self.opt.step()
        return {"loss": loss.detach(), **stats}

    @torch.no_grad()
    def sample(self, seeds, labels=None, options=None) -> torch.Tensor:
        scale = options.scale if options is not None else 1.0
        net = self._module()
        noise = torch.stack([torch.randn(net.mean.shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        return torch.tanh(net.mean.cpu() + scale * net.log_scale.exp().cpu() * noise)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self._module().state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._module().load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def modules(self):
        return {"net": self._module()}


class ShrinkParams(PluginParams):
    weight: float = Field(0.01, ge=0)
    every: int = Field(2, ge=1)


class ShrinkRegularizer(Regularizer):
    """L2 on the generated images, lazily every ``every`` steps; counts its calls (state)."""

    Params = ShrinkParams
    role = "generator"

    def __init__(self, params, spec, name=""):
        super().__init__(params, spec, name)
        self.calls = 0

    @property
    def interval(self) -> int:
        return self.params.every

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        self.calls += 1
        return self.params.weight * self.interval * inputs.fake.square().mean()

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


class MeanGapMetric(Metric):
    """|mean(synthetic) - mean(train)|: a tiny real metric for the end-of-run path."""

    def compute(self, train, held_out, synthetic):
        gap = float((synthetic.images.mean() - train.images.mean()).abs())
        return [MetricValue("mean_gap", gap, higher_is_better=False)]


@hookimpl
def raresynth_register_generators(register):
    register("toy", ToyGenerator)


@hookimpl
def raresynth_register_regularizers(register):
    register("shrink", ShrinkRegularizer)


@hookimpl
def raresynth_register_metrics(register):
    register("mean_gap", MeanGapMetric)

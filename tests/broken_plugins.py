"""Deliberately broken plugins: each breaks one rule the conformance kit and the core enforce.

Built on the toy plugin so that each differs from a conforming plugin in one place only.
"""

from __future__ import annotations

import torch

from raresynth import Augmentation, DataFormat, Metric, MetricValue, RawImage, Record, hookimpl
from raresynth.plugins.lecam import LeCam
from raresynth.plugins.r1 import R1
from toy_plugin import ToyGenerator


class Bytes255(ToyGenerator):
    """Returns 0-255 values, as an author forgetting to scale back would."""

    def sample(self, seeds, labels=None, options=None):
        return (super().sample(seeds, labels, options) + 1) * 127.5


class HalfSize(ToyGenerator):
    """Returns images at half the data's resolution."""

    def sample(self, seeds, labels=None, options=None):
        return torch.nn.functional.avg_pool2d(super().sample(seeds, labels, options), 2)


class BatchNoise(ToyGenerator):
    """Draws one noise tensor for the whole batch: a seed's image depends on its neighbours."""

    def sample(self, seeds, labels=None, options=None):
        net = self._module()
        noise = torch.randn((len(seeds), *net.mean.shape), generator=torch.Generator().manual_seed(int(seeds[0])))
        return torch.tanh(net.mean.detach().cpu() + net.log_scale.exp().detach().cpu() * noise)


class NoOptimizerState(ToyGenerator):
    """Forgets the optimizer in its state: a resumed run restarts Adam's moments."""

    def state_dict(self):
        return {"net": self._module().state_dict()}

    def load_state_dict(self, state):
        self._module().load_state_dict(state["net"])


class NotLazyR1(R1):
    """Forgets to multiply the penalty by its interval."""

    def penalty(self, inputs):
        return super().penalty(inputs) / self.interval


class ForgetfulLeCam(LeCam):
    """Keeps its anchors out of the checkpoint."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class Detaching(Augmentation):
    """Flips images through numpy: no gradient reaches G."""

    def augment(self, images):
        return torch.from_numpy(images.detach().cpu().numpy()[..., ::-1].copy())


class ClockMetric(Metric):
    """Draws from the global RNG: other values each call."""

    def compute(self, train, held_out, synthetic):
        return [MetricValue("jitter", float(synthetic.images.mean()) + float(torch.rand(())), higher_is_better=False)]


class DuplicateIds(DataFormat):
    """Names every record after its file only, so two frames of one file collide."""

    needs_source = False

    def scan(self, source):
        return [Record(id="scan.npy", source=source or __file__, index=i) for i in range(2)]

    def read(self, record):
        return RawImage(pixels=torch.rand(8, 8).numpy())


@hookimpl
def raresynth_register_generators(register):
    register("bytes255", Bytes255)
    register("half_size", HalfSize)
    register("batch_noise", BatchNoise)
    register("no_optimizer_state", NoOptimizerState)


class UnsyncedGradients(ToyGenerator):
    """Steps the unwrapped module without averaging its gradients: ranks drift apart under DDP."""

    def train_step(self, batch, progress):
        net = self._module()
        fake = torch.tanh(net.mean + net.log_scale.exp() * torch.randn_like(batch.images))
        loss = (fake.mean(0) - batch.images.mean(0)).square().mean() + (fake.std(0) - batch.images.std(0)).square().mean()
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        self.opt.step()
        return {"loss": loss.detach()}


class LocalLeCam(LeCam):
    """Keeps each rank's own anchors: the ranks' regularizer states drift apart."""

    def _update_anchors(self, real_logits, fake_logits):
        real_mean, fake_mean = float(real_logits.detach().mean()), float(fake_logits.detach().mean())
        if self.anchor_real is None:
            self.anchor_real, self.anchor_fake = real_mean, fake_mean
        else:
            decay = self.params.ema_decay
            self.anchor_real = decay * self.anchor_real + (1 - decay) * real_mean
            self.anchor_fake = decay * self.anchor_fake + (1 - decay) * fake_mean


@hookimpl
def raresynth_register_regularizers(register):
    register("local_lecam", LocalLeCam)

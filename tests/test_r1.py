"""The ``r1`` regularizer: value and gradient against an independent computation, auto gamma, both ways of use."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from raresynth import ConfigError, DataSpec, PenaltyInputs
from raresynth.config import load_config
from raresynth.plugins.r1 import R1, R1Params, auto_gamma

SPEC = DataSpec(resolution=8, channels=2)


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallD(nn.Module):
    """A nonlinear D with a projection term, so the penalty has a non-trivial gradient."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 1)
        self.embed = nn.Embedding(3, 4 * 8 * 8)

    def forward(self, x, labels=None):
        h = torch.tanh(self.conv(x)).flatten(1)
        out = self.fc(h).squeeze(1)
        return out + (self.embed(labels) * h).sum(1) if labels is not None else out


def reference_r1(D, x, labels, gamma):
    """gamma / 2 * mean_i ||d D(x)_i / d x_i||^2, one image at a time (Mescheder et al. 2018, eq. 9)."""
    total = 0.0
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logit = D(xi, labels[i : i + 1] if labels is not None else None)
        (g,) = torch.autograd.grad(logit.sum(), xi, create_graph=True)
        total = total + g.square().sum()
    return gamma / 2 * total / x.shape[0]


@pytest.mark.parametrize("conditional", [False, True])
def test_value_and_weight_gradient_match_independent_autograd(conditional):
    torch.manual_seed(0)
    D = SmallD().double()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 3, (5,)) if conditional else None
    r1 = R1(R1Params(gamma=0.7, interval=4), SPEC, "r1")

    value = r1.penalty(PenaltyInputs(step=0, model=D, real=x, labels=labels))
    grads = torch.autograd.grad(value, list(D.parameters()), allow_unused=True)

    expected = reference_r1(D, x, labels, gamma=0.7) * 4  # lazy: x interval
    expected_grads = torch.autograd.grad(expected, list(D.parameters()), allow_unused=True)
    assert torch.allclose(value, expected, rtol=1e-10)
    assert value > 0
    for got, want in zip(grads, expected_grads):
        if want is None:  # e.g. the output bias: R1 does not depend on it
            assert got is None or torch.count_nonzero(got) == 0
        else:
            assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)
    assert not x.requires_grad  # R1 differentiated its own leaf copy


def test_uses_given_logits_when_real_requires_grad():
    """The dcgan way: one D pass whose real logits R1 differentiates directly (no model call)."""
    torch.manual_seed(1)
    D = SmallD().double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64).requires_grad_(True)
    logits = D(x)
    r1 = R1(R1Params(gamma=2.0, interval=1), SPEC, "r1")

    def no_model(*args):
        raise AssertionError("R1 must use the given logits")

    value = r1.penalty(PenaltyInputs(step=0, model=no_model, real=x, real_logits=logits))
    assert torch.allclose(value, reference_r1(D, x.detach(), None, gamma=2.0))


def test_auto_gamma_from_resolution_and_batch():
    assert auto_gamma(256, 16) == pytest.approx(0.8192)  # 0.0002 * 256^2 / 16
    r1 = R1(R1Params(), DataSpec(resolution=64, channels=1), "r1")
    assert r1.interval == 16
    assert r1.gamma(per_process_batch=32) == pytest.approx(0.0002 * 64**2 / 32)  # one process: N = per-process batch
    x = torch.randn(32, 1, 64, 64)
    D = nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 1))
    value = r1.penalty(PenaltyInputs(step=0, model=lambda images, labels: D(images).squeeze(1), real=x))
    weight = D[1].weight.detach().flatten()  # linear D: grad_x D(x) = weight for every image
    assert value.item() == pytest.approx(0.0002 * 64**2 / 32 / 2 * weight.square().sum().item() * 16, rel=1e-5)


def test_clear_errors(registry):
    r1 = R1(R1Params(), SPEC, "r1")
    with pytest.raises(ConfigError, match="needs the real images"):
        r1.penalty(PenaltyInputs(step=0, model=lambda x, y: x.sum()))
    with pytest.raises(ConfigError, match="needs either the discriminator"):
        r1.penalty(PenaltyInputs(step=0, real=torch.zeros(1, 2, 8, 8)))
    base = {"data": {"format": "embedded"}, "generator": "dcgan", "budget": {"kimg": 1}}
    with pytest.raises(ConfigError, match=r"regularizers\.0\.gamma: must be a number >= 0 or 'auto'"):
        load_config({**base, "regularizers": [{"name": "r1", "gamma": -1}]}, registry=registry)
    with pytest.raises(ConfigError, match=r"regularizers\.0\.interval"):
        load_config({**base, "regularizers": [{"name": "r1", "interval": 0}]}, registry=registry)
    config = load_config({**base, "regularizers": ["r1"]}, registry=registry)
    assert config.regularizers[0].params == {"gamma": "auto", "interval": 16}


def test_dcgan_trains_with_r1(toy_config, registry):
    """R1 is an ordinary plugin: the dcgan backend uses it through the same interface."""
    import json

    from raresynth.training import train

    config = load_config(toy_config(), ["generator.name=dcgan", "generator.base_channels=8", "generator.max_channels=16",
                                        "generator.z_dim=16", "budget.kimg=0.032", "regularizers=[{name: r1, gamma: 1.0, interval: 2}]"],
                         registry=registry)
    run = train(config, registry=registry, progress_bar=False)
    line = json.loads((run.run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert line["penalty_r1"] > 0


def test_given_logits_of_images_without_grad_fall_back_to_the_model():
    """Logits of real images that do not require grad cannot be differentiated: R1 calls the model on its own copy."""
    torch.manual_seed(2)
    D = SmallD().double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)  # no requires_grad
    r1 = R1(R1Params(gamma=2.0, interval=1), SPEC, "r1")
    value = r1.penalty(PenaltyInputs(step=0, model=lambda images, labels: D(images), real=x, real_logits=D(x).detach()))
    assert torch.allclose(value, reference_r1(D, x, None, gamma=2.0))


def test_gamma_zero_switches_r1_off_and_a_negative_one_is_refused():
    assert R1Params(gamma=0).gamma == 0
    with pytest.raises(pydantic.ValidationError, match=r"gamma\n.*must be a number >= 0 or 'auto' \(got -0.5\)"):
        R1Params(gamma=-0.5)

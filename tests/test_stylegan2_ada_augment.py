"""ADA: the augmentation pipeline (identity at p = 0, every op well-behaved and
differentiable) and the adaptive p (driven by a stub D)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raresynth import Batch, DataSpec, Progress
from raresynth.plugins.stylegan2_ada import StyleGAN2ADA
from raresynth.plugins.stylegan2_ada.augment import ALL_OPS, COLOR_OPS, GEOMETRIC_OPS, AdaptiveP, AugmentPipe
from raresynth.training import make_accelerator


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n: int, channels: int, size: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Band-limited images in [-1, 1] (like real crops, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1).to(dtype)


@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_is_the_identity(channels):
    x = smooth_images(4, channels)
    assert AugmentPipe()(x, 0.0) is x
    assert AdaptiveP("none", p=0.7).p == 0.0  # "none" never augments


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_dtype_and_range(op, channels):
    pipe = AugmentPipe([op])
    for dtype in (torch.float32, torch.float64):
        x = smooth_images(8, channels, dtype=dtype)
        torch.manual_seed(1)
        y = pipe(x, 1.0)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        if op in GEOMETRIC_OPS:
            # moves and resamples pixels: the range holds up to the anti-aliasing filter's ringing
            assert y.min() >= x.min() - 0.05 and y.max() <= x.max() + 0.05
        elif op == "lumaflip" and channels == 1:
            assert set(torch.isclose(y, -x).flatten(1).all(1).tolist() + torch.isclose(y, x).flatten(1).all(1).tolist()) == {True, False}
        else:  # affine colour maps of bounded strength ([ADA] appendix B): the range scales, it does not blow up
            assert y.abs().max() <= 6


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_is_differentiable(op):
    x = smooth_images(2, 3, size=8, dtype=torch.float64).requires_grad_(True)
    pipe = AugmentPipe([op])

    def augmented(images):
        torch.manual_seed(3)  # the same random transform on every call of gradcheck
        return pipe(images, 1.0)

    assert torch.autograd.gradcheck(augmented, (x,), fast_mode=True)


def test_pipeline_is_twice_differentiable():
    """R1 differentiates D(aug(x)) w.r.t. x, then the result w.r.t. D's weights."""
    x = smooth_images(1, 1, size=8, dtype=torch.float64).requires_grad_(True)
    pipe = AugmentPipe()

    def augmented(images):
        torch.manual_seed(5)
        return pipe(images, 1.0)

    assert torch.autograd.gradgradcheck(augmented, (x,), fast_mode=True)


def test_flips_and_quarter_turns_are_exact_up_to_filtering():
    x = smooth_images(8, 3)
    torch.manual_seed(0)
    flipped = AugmentPipe(["xflip"])(x, 1.0)
    rotated = AugmentPipe(["rotate90"])(x, 1.0)
    for i in range(8):
        assert min((flipped[i] - c).abs().max() for c in (x[i], x[i].flip(-1))) < 0.03
        assert min((rotated[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().max() for k in range(4)) < 0.03
    assert not torch.allclose(flipped, x)  # some were flipped
    # grayscale: colour ops without chroma are the identity
    gray = smooth_images(4, 1)
    assert torch.equal(AugmentPipe(["hue", "saturation"])(gray, 1.0), gray)
    assert set(COLOR_OPS) | set(GEOMETRIC_OPS) == set(ALL_OPS)


def test_adaptive_p_follows_the_overfitting_heuristic():
    ada = AdaptiveP("ada", p=0.0, target=0.6, interval=4, speed_kimg=1.0)
    overconfident = torch.full((8,), 5.0)  # D(real) > 0 everywhere: r_t = 1 > 0.6
    for _ in range(8):
        ada.observe(overconfident)
        ada.update(images_per_step=8)
    assert ada.p == pytest.approx(2 * 8 * 4 / 1000)  # two adjustments of batch * interval / (kimg * 1000)
    assert ada.last_rt == 1.0
    confused = torch.tensor([1.0, -1.0] * 4)  # r_t = 0 < 0.6
    for _ in range(16):
        ada.observe(confused)
        ada.update(images_per_step=8)
    assert ada.p == 0.0  # fell, and stays in [0, 1]
    fixed = AdaptiveP("fixed", p=0.3, speed_kimg=1.0)
    for _ in range(8):
        fixed.observe(overconfident)
        fixed.update(images_per_step=8)
    assert fixed.p == 0.3
    # 0 -> 1 takes speed_kimg thousand images
    ada = AdaptiveP("ada", p=0.0, interval=4, speed_kimg=0.5)
    steps = 0
    while ada.p < 1.0:
        ada.observe(overconfident)
        ada.update(images_per_step=16)
        steps += 1
    assert 500 <= steps * 16 < 500 + 16 * 4  # within one adjustment (batch * interval images)


class StubD(nn.Module):
    """Stands in for D in the backend's main D pass: reals get ``real_logit``, fakes -1."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.real_logit = 5.0

    def forward(self, images, labels=None):
        n = images.shape[0] // 2
        signal = torch.cat([torch.full((n,), 1.0) * self.real_logit, torch.full((n,), -1.0)])
        if self.real_logit == 0:  # confused: signs of the real logits cancel
            signal[:n] = torch.tensor([1.0, -1.0] * (n // 2))
        return self.gain * signal + 0 * images.sum(dim=(1, 2, 3))


def test_backend_moves_p_from_d_outputs_on_reals():
    spec = DataSpec(resolution=16, channels=1)
    params = StyleGAN2ADA.Params(z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8, ada_interval=1, ada_kimg=0.1,
                                 pl_weight=0)
    backend = StyleGAN2ADA(params, spec)
    torch.manual_seed(0)
    backend.setup(make_accelerator("no"))
    stub = StubD()
    backend.D_main = stub
    batch = Batch(images=smooth_images(8, 1), labels=None)
    progress = Progress()
    for _ in range(5):
        stats = backend.train_step(batch, progress)
        progress.nimg += 8
    assert backend.ada.p == pytest.approx(5 * 8 / 100) and float(stats["augment_p"]) == pytest.approx(backend.ada.p)
    assert float(stats["ada_rt"]) == 1.0
    stub.real_logit = 0.0
    for _ in range(8):
        backend.train_step(batch, progress)
        progress.nimg += 8
    assert backend.ada.p == 0.0
    assert backend.state_dict()["augment"]["p"] == 0.0  # p is checkpointed

"""Sliced Wasserstein distance on Laplacian pyramids (Karras et al. 2018, sec. 5 and appendix D).

"Progressive Growing of GANs for Improved Quality, Stability, and Variation": each
image is decomposed into a Laplacian pyramid from its own resolution down to 16 px;
at every level, 7x7 neighbourhoods are drawn at random positions (128 per image),
each channel of the descriptors is normalized to zero mean and unit variance over
the set, and the sliced Wasserstein distance between the real and synthetic
descriptor sets is estimated with 4 x 128 random directions. The reference code is
``metrics/sliced_wasserstein.py`` in the paper's repository; as there, distances are
reported times 10^3, per level and averaged. Gray images use 1-channel
descriptors (7 x 7 x 1), RGB images 7 x 7 x 3.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from raresynth import (
    ConfigError,
    ImageSet,
    Metric,
    MetricValue,
    PluginParams,
    Preprocessing,
    check_compatible,
)

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(images: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter with mirrored borders (scipy ``mode='mirror'`` is torch's ``reflect``)."""
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(images)
    kernel = (kernel / kernel.sum() * gain).expand(images.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel, groups=images.shape[1])


def pyr_down(images: torch.Tensor) -> torch.Tensor:
    return _blur(images)[:, :, ::2, ::2]


def pyr_up(images: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    up = images.new_zeros(n, c, h * 2, w * 2)
    up[:, :, ::2, ::2] = images
    return _blur(up, gain=4.0)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = [images]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def descriptors(level: torch.Tensor, per_image: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``per_image`` random ``size x size`` neighbourhoods of every image, normalized per channel: ``(M, C*size*size)``."""
    n, c, h, w = level.shape
    half = size // 2
    if h < size or w < size:
        raise ConfigError(f"swd: a pyramid level of {h}x{w} pixels is smaller than the {size}x{size} neighbourhood")
    count = n * per_image
    image = torch.arange(n).repeat_interleave(per_image)
    y = torch.randint(half, h - half, (count,), generator=generator)
    x = torch.randint(half, w - half, (count,), generator=generator)
    offsets = torch.arange(-half, half + 1)
    rows = (y[:, None] + offsets[None, :])[:, None, :, None].expand(count, c, size, size)
    cols = (x[:, None] + offsets[None, :])[:, None, None, :].expand(count, c, size, size)
    chans = torch.arange(c)[None, :, None, None].expand(count, c, size, size)
    desc = level[image[:, None, None, None].expand(count, c, size, size), chans, rows, cols].double()
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp(min=1e-12)
    return desc.reshape(count, -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, repeats: int, directions: int, generator: torch.Generator) -> float:
    """Mean over random unit directions of the 1D Wasserstein-1 distance between the projections."""
    if len(a) != len(b):  # equal counts, as the reference code requires: subsample the larger set
        n = min(len(a), len(b))
        a = a[torch.randperm(len(a), generator=generator)[:n]]
        b = b[torch.randperm(len(b), generator=generator)[:n]]
    results = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        proj_a = np.sort((a @ dirs).T.numpy(), axis=1)  # (direction, neighbourhood); numpy sorts rows fastest
        proj_b = np.sort((b @ dirs).T.numpy(), axis=1)
        results.append(np.abs(proj_a - proj_b).mean())
    return float(np.mean(results))


def pyramid_resolutions(side: int, min_resolution: int) -> list[int]:
    """``side, side/2, ...`` down to ``min_resolution`` (at least one level)."""
    resolutions = [side]
    while resolutions[-1] // 2 >= min_resolution:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


class SWDParams(PluginParams):
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")
    min_resolution: int = Field(16, ge=8, description="coarsest pyramid level (the paper: 16 px)")
    neighbourhood: int = Field(7, ge=3, description="side of the descriptor neighbourhoods (odd)")
    per_image: int = Field(128, ge=1, description="neighbourhoods drawn per image and level")
    repeats: int = Field(4, ge=1)
    directions: int = Field(128, ge=1, description="random directions per repeat")
    seed: int = 0


class SWD(Metric):
    """Sliced Wasserstein distance x 1e3 per Laplacian pyramid level (``swd_<res>``) and averaged (``swd``)."""

    Params = SWDParams

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        if p.neighbourhood % 2 == 0:
            raise ConfigError(f"neighbourhood: must be odd (got {p.neighbourhood})")
        reference = train if p.reference == "train" else held_out
        preprocessing = Preprocessing()  # the 8-bit images, as saved to PNG
        real, fake = preprocessing.apply(reference.images).double(), preprocessing.apply(synthetic.images).double()
        resolutions = pyramid_resolutions(real.shape[-1], p.min_resolution)
        # The same positions for both sets (common random numbers: a set compared with itself scores 0).
        gen_real, gen_fake, gen_dirs = (torch.Generator().manual_seed(p.seed) for _ in range(3))
        pyr_real, pyr_fake = laplacian_pyramid(real, len(resolutions)), laplacian_pyramid(fake, len(resolutions))
        values = []
        for resolution, level_real, level_fake in zip(resolutions, pyr_real, pyr_fake):
            d_real = descriptors(level_real, p.per_image, p.neighbourhood, gen_real)
            d_fake = descriptors(level_fake, p.per_image, p.neighbourhood, gen_fake)
            distance = sliced_wasserstein(d_real, d_fake, p.repeats, p.directions, gen_dirs) * 1e3
            values.append(MetricValue(f"swd_{resolution}", distance, higher_is_better=False))
        average = sum(v.value for v in values) / len(values)
        return [MetricValue("swd", average, higher_is_better=False), *values]

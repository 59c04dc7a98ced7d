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

import functools
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
    content_hash,
)

from .fields import OddInt

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
    return desc.reshape(count, -1).float()  # normalized in float64; projected and sorted in float32 (sorted_projections)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W1 between the empirical distributions of each row of ``a`` ``(K, n)`` and of ``b`` ``(K, m)``, rows sorted.

    W1 = integral over t in (0, 1) of |A^-1(t) - B^-1(t)|, A and B the rows' empirical
    distribution functions. Both quantile functions are steps at multiples of 1/n and
    1/m, so the integral is exact as a sum over the merged steps; for n = m it is the
    mean gap of the sorted values (the reference code's formula, which needs equal
    counts and subsamples the larger set: here every value counts, and no random
    subsample of the real set adds to a half-sample's spread). When one count divides
    the other (a half-sample, or the held-out set, against the training set: both are
    whole images times the neighbourhoods per image), each step of the smaller set
    spans ``m / n`` steps of the larger, and the sum needs no merging.
    """
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return np.abs(a - b).mean(axis=1, dtype=np.float64)
    if m % n == 0:  # B's step l lies within A's step l // (m / n)
        return np.abs(b.reshape(len(b), n, m // n) - a[:, :, None]).mean(axis=(1, 2), dtype=np.float64)
    if n % m == 0:
        return wasserstein_1d(b, a)
    in_a, in_b, widths = _merged_steps(n, m)
    return (np.abs(a[:, in_a] - b[:, in_b]) * widths).sum(axis=1, dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _merged_steps(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the merged steps of two quantile functions with n and m steps: each one's index in either, and its width."""
    # step ends in units of 1 / (n m): k m for A's k-th step, l n for B's l-th
    ends = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    starts = np.concatenate([[0], ends[:-1]])
    widths = (ends - starts) / (n * m)
    in_a, in_b = (starts + ends) // (2 * m), (starts + ends) // (2 * n)  # the quantile index at each step's midpoint
    for array in (in_a, in_b, widths):
        array.setflags(write=False)
    return in_a, in_b, widths


def random_directions(dim: int, repeats: int, directions: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``repeats`` draws of ``directions`` random unit vectors, each ``(dim, directions)``."""
    draws = []
    for _ in range(repeats):
        dirs = torch.randn(dim, directions, generator=generator, dtype=torch.float64)
        draws.append(dirs / dirs.norm(dim=0, keepdim=True))
    return draws


def sorted_projections(descriptors_: torch.Tensor, dirs: torch.Tensor) -> np.ndarray:
    """``(directions, N)`` projections of the descriptors, each row sorted.

    Projected and sorted in float32, as contiguous rows: a float32 matrix product and
    numpy's vectorized float32 sort are several times faster than in float64, for a
    relative error of about 1e-6 on unit-variance descriptors, far below the estimate's
    own spread over random directions.
    """
    return np.sort((dirs.T.to(torch.float32) @ descriptors_.to(torch.float32).T).numpy(), axis=1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, repeats: int, directions: int, generator: torch.Generator) -> float:
    """Mean over random unit directions of the 1D Wasserstein-1 distance between the projections."""
    draws = random_directions(a.shape[1], repeats, directions, generator)
    return float(np.mean([wasserstein_1d(sorted_projections(a, d), sorted_projections(b, d)).mean() for d in draws]))


def pyramid_resolutions(side: int, min_resolution: int) -> list[int]:
    """``side, side/2, ...`` down to ``min_resolution`` (at least one level)."""
    resolutions = [side]
    while resolutions[-1] // 2 >= min_resolution:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


class SWDParams(PluginParams):
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")
    min_resolution: int = Field(16, ge=8, description="coarsest pyramid level (the paper: 16 px)")
    # odd: a centre pixel for each neighbourhood, as in the paper's 7x7
    neighbourhood: OddInt = Field(7, ge=3, description="side of the descriptor neighbourhoods (odd)")
    per_image: int = Field(128, ge=1, description="neighbourhoods drawn per image and level")
    repeats: int = Field(4, ge=1)
    directions: int = Field(128, ge=1, description="random directions per repeat")
    seed: int = 0


class SWD(Metric):
    """Sliced Wasserstein distance x 1e3 per Laplacian pyramid level (``swd_<res>``) and averaged (``swd``).

    The real set's sorted projections depend only on the real images and the settings:
    they are kept for the next call (half-samples, reference rows, a benchmark's other
    runs) when they fit in ``REAL_CACHE_FLOATS``, and computed again otherwise.
    """

    Params = SWDParams
    REAL_CACHE_FLOATS = 2**26  # 256 MB of float32: the 300-image embedded dataset at 32 px needs 39 M

    def __init__(self, params, spec):
        super().__init__(params, spec)
        self._real: tuple[str, list[list[np.ndarray]]] | None = None

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        reference = train if p.reference == "train" else held_out
        preprocessing = Preprocessing()  # the 8-bit images, as saved to PNG
        fake = preprocessing.apply(synthetic.images).float()
        resolutions = pyramid_resolutions(fake.shape[-1], p.min_resolution)
        # The same seed for the positions of both sets (common random numbers: a set compared with itself scores 0).
        dim = synthetic.images.shape[1] * p.neighbourhood**2
        gen_dirs = torch.Generator().manual_seed(p.seed)
        draws = [random_directions(dim, p.repeats, p.directions, gen_dirs) for _ in resolutions]
        real_sorted = self._real_sorted(reference, resolutions, draws)
        gen_fake = torch.Generator().manual_seed(p.seed)
        values = []
        for resolution, level_fake, level_draws, level_real in zip(resolutions, laplacian_pyramid(fake, len(resolutions)), draws, real_sorted):
            d_fake = descriptors(level_fake, p.per_image, p.neighbourhood, gen_fake)
            distance = np.mean([wasserstein_1d(real, sorted_projections(d_fake, dirs)).mean()
                                for real, dirs in zip(level_real, level_draws)]) * 1e3
            values.append(MetricValue(f"swd_{resolution}", float(distance), higher_is_better=False))
        average = sum(v.value for v in values) / len(values)
        return [MetricValue("swd", average, higher_is_better=False), *values]

    def _real_sorted(self, reference: ImageSet, resolutions: list[int], draws: list[list[torch.Tensor]]) -> list[list[np.ndarray]]:
        """Per level and repeat, the real descriptors' sorted projections (from the last call when the images are the same)."""
        p = self.params
        key = content_hash(reference.images) + repr(p)
        if self._real is not None and self._real[0] == key:
            return self._real[1]
        real = Preprocessing().apply(reference.images).float()
        gen_real = torch.Generator().manual_seed(p.seed)
        result = []
        for level_real, level_draws in zip(laplacian_pyramid(real, len(resolutions)), draws):
            d_real = descriptors(level_real, p.per_image, p.neighbourhood, gen_real)
            result.append([sorted_projections(d_real, dirs) for dirs in level_draws])
        size = sum(array.size for level in result for array in level)
        self._real = (key, result) if size <= self.REAL_CACHE_FLOATS else None
        return result

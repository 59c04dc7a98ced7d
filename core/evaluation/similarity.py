"""Distances and pixel-space similarity shared by metric plugins.

* :func:`pairwise_distances`, :func:`kth_neighbour_distances` - Euclidean distances
  between feature vectors (or flattened images), in float64.
* :func:`ssim`, :func:`ms_ssim` (with :func:`ms_ssim_scales`) - structural similarity of
  image pairs in ``[-1, 1]``, with windows and scales that fit small images.
* :func:`pairs_of` - the distinct index pairs a within-set comparison looks at.
* :func:`normalized_correlation` - Pearson correlation of every image in one set with
  every image in another, in pixel space.

They take tensors and cache nothing; the features they compare come from
:mod:`raresynth.evaluation.features`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))`` in float64."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return torch.cat([torch.cdist(part, b) for part in a.split(chunk)]) if len(a) else torch.empty(0, len(b), dtype=torch.float64)


def kth_neighbour_distances(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row (itself excluded)."""
    if len(x) <= k:
        raise ConfigError(f"k-nearest neighbours: {len(x)} samples, need more than k={k}")
    return pairwise_distances(x, x).kthvalue(k + 1, dim=1).values  # the 1st "neighbour" is the point itself


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """The normalized 1-D Gaussian of ``size`` taps: the 2-D window is its outer product with itself."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_matrix(side: int, kernel: torch.Tensor) -> torch.Tensor:
    """``(side, side - k + 1)``: right-multiplying rows of ``side`` pixels by it is their valid-region 1-D Gaussian blur."""
    tap = torch.arange(side, device=kernel.device)[:, None] - torch.arange(side - len(kernel) + 1, device=kernel.device)[None, :]
    inside = (tap >= 0) & (tap < len(kernel))  # pixel i is tap i - j of output j's window
    return torch.where(inside, kernel[tap.clamp(0, len(kernel) - 1)], torch.zeros((), dtype=kernel.dtype, device=kernel.device))


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image luminance*contrast*structure (SSIM) and contrast*structure (CS) means, data range 1.

    The five local moments (means, variances, covariance) come from one blur of the five
    maps stacked together. The Gaussian window is separable, so the blur is a 1-D
    Gaussian along the rows then along the columns, each as a matrix product with a
    banded matrix (:func:`_blur_matrix`): the same valid-region result as a 2-D
    convolution with the window, and several times faster on a CPU than a grouped one.
    """
    c1, c2 = 0.01**2, 0.03**2
    maps = torch.stack([x, y, x * x, y * y, x * y])  # (5, N, C, H, W)
    maps = maps @ _blur_matrix(x.shape[-1], kernel)  # along the rows
    maps = _blur_matrix(x.shape[-2], kernel).T @ maps  # along the columns
    mu_x, mu_y, xx, yy, xy = maps
    sigma_xx = xx - mu_x**2
    sigma_yy = yy - mu_y**2
    sigma_xy = xy - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def _window_size(side: int, window: int) -> int:
    size = min(window, side if side % 2 else side - 1)
    return max(size, 1)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of image pairs ``x[i], y[i]`` in ``[-1, 1]``, averaged over channels: ``(N,)``.

    The Gaussian window shrinks to fit images smaller than ``window``.
    """
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    size = _window_size(min(x.shape[-2:]), window)
    return _ssim_terms(x, y, _gaussian_kernel(size, sigma, x.dtype).to(x.device))[0]


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(side: int, window: int = 11) -> int:
    """Scales MS-SSIM uses at this image size: as many of the 5 as keep the side >= the window."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= window:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003, eq. 7) of pairs in ``[-1, 1]``: ``(N,)``.

    Small images use fewer than 5 scales (:func:`ms_ssim_scales`), with the paper's
    exponents renormalized to sum to 1; negative contrast-structure terms are clipped
    to 0 so the product stays defined.
    """
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    side = min(x.shape[-2:])
    size = _window_size(side, window)
    scales = ms_ssim_scales(side, size)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    weights = (weights / weights.sum()).to(x.device)
    kernel = _gaussian_kernel(size, sigma, x.dtype).to(x.device)
    factors = []
    for scale in range(scales):
        s, cs = _ssim_terms(x, y, kernel)
        factors.append((s if scale == scales - 1 else cs).clamp(min=0))
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(factors, dim=1)
    return torch.prod(stacked ** weights.view(1, -1), dim=1)


def pairs_of(n: int, max_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct unordered index pairs ``(P, 2)``: all of them when there are at most ``max_pairs``, else a random sample."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
        return torch.stack([i, j], dim=1)
    first = torch.randint(0, n, (max_pairs,), generator=generator)
    offset = torch.randint(1, n, (max_pairs,), generator=generator)
    return torch.stack([first, (first + offset) % n], dim=1)


def normalized_correlation(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Pearson correlation of every image in ``a`` with every image in ``b`` (pixels, all channels): ``(len(a), len(b))``."""

    def standardize(t: torch.Tensor) -> torch.Tensor:
        flat = t.double().flatten(1)
        flat = flat - flat.mean(1, keepdim=True)
        return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)

    sa, sb = standardize(a), standardize(b)
    return torch.cat([part @ sb.T for part in sa.split(chunk)])


__all__ = [
    "MS_SSIM_WEIGHTS",
    "kth_neighbour_distances",
    "ms_ssim",
    "ms_ssim_scales",
    "normalized_correlation",
    "pairs_of",
    "pairwise_distances",
    "ssim",
]

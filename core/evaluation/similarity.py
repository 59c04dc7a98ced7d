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


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image luminance*contrast*structure (SSIM) and contrast*structure (CS) means, data range 1."""
    c1, c2 = 0.01**2, 0.03**2
    channels = x.shape[1]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x**2
    sigma_yy = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
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
    return _ssim_terms(x, y, _gaussian_window(size, sigma, x.shape[1], x.dtype).to(x.device))[0]


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
    win = _gaussian_window(size, sigma, x.shape[1], x.dtype).to(x.device)
    factors = []
    for scale in range(scales):
        s, cs = _ssim_terms(x, y, win)
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

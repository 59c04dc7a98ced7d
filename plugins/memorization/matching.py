"""Copy matching that a flip, a shift, a small crop or an intensity change does not hide.

A near-copy of a training image is still a copy: flipped (augmentation pipelines
flip), moved or cropped by a few pixels, brighter or with more contrast, or with
some noise. Plain pixel correlation misses most of these. :func:`invariant_correlation`
compares every synthetic image with every training image under a small set of
transforms of the synthetic image and keeps the best match:

* flips: none, horizontal, vertical, both;
* shifts of up to ``max_shift`` pixels in each direction: the images are compared
  on their overlap only;
* crops: the synthetic image shrunk by ``crop`` pixels on every side (undoing a crop
  of the training image that was resized back up), slid over every position of the
  training image it fits;
* intensity: every compared region is centred per image and channel and scaled to
  unit norm, so the correlation ignores a positive gain and an offset, a*x + b
  (centring per channel matters: in colour images the channel means differ so much
  that a correlation of whole vectors finds every fundus crop 0.999 alike);
* noise: both images are smoothed with a Gaussian of ``smoothing`` pixels first, which
  averages per-pixel noise away and keeps the structure a copy shares.

The comparison runs at ``resolution`` (images are resized to it first); every transform is one matrix product of standardized pixels, so
the cost is (flips x (shifts + crop positions)) products of an (M, D) by a (D, N)
matrix. Template matching by normalized cross-correlation: Lewis 1995, "Fast
normalized cross-correlation".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLIPS = ("none", "hflip", "vflip", "hvflip")


@dataclass(frozen=True)
class Matching:
    """How synthetic images are matched against training images."""

    max_shift: int = 2  # pixels at the matching resolution, each direction
    crop: int = 2  # pixels cut from every side of the synthetic image for the crop transform; 0: none
    resolution: int | None = 32  # the matching resolution; None: the images' own
    flips: bool = True
    smoothing: float = 1.5  # Gaussian sigma in pixels at the matching resolution; 0: none

    def transforms(self) -> list[str]:
        """Names of every transform tried, in the order :func:`invariant_correlation` indexes them."""
        names = []
        for flip in FLIPS if self.flips else FLIPS[:1]:
            names += [f"{flip} shift({dy},{dx})" for dy, dx in _offsets(self.max_shift)]
            if self.crop:
                names += [f"{flip} crop{self.crop} at({dy},{dx})" for dy, dx in _positions(self.crop)]
        return names


def _offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _positions(crop: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(2 * crop + 1) for x in range(2 * crop + 1)]


def flipped(images: torch.Tensor, flip: str) -> torch.Tensor:
    """``images`` under one of :data:`FLIPS`."""
    if flip == "hflip":
        return images.flip(-1)
    if flip == "vflip":
        return images.flip(-2)
    if flip == "hvflip":
        return images.flip(-2, -1)
    return images


def _standardized(images: torch.Tensor) -> torch.Tensor:
    """Rows of unit norm, each channel centred (a constant image stays 0: it correlates with nothing)."""
    flat = (images - images.mean((-2, -1), keepdim=True)).flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-8)


def _smoothed(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, reflected at the borders."""
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    images = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(F.pad(images, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _window(images: torch.Tensor, y: int, x: int, height: int, width: int) -> torch.Tensor:
    return images[..., y : y + height, x : x + width]


def _prepare(images: torch.Tensor, matching: Matching) -> torch.Tensor:
    images = images.double()
    resolution = matching.resolution
    if resolution is not None and images.shape[-1] != resolution:
        shrinking = images.shape[-1] > resolution
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=shrinking, align_corners=False)
    return _smoothed(images, matching.smoothing)


def invariant_correlation(synthetic: torch.Tensor, train: torch.Tensor, matching: Matching,
                          same: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, N)`` best correlation of each synthetic image with each training image, and the transform index of it.

    ``same``: ``synthetic`` is ``train`` (its diagonal, an image with itself, is -inf).
    Images are ``(N, C, H, W)`` floats; the transforms are :meth:`Matching.transforms`.
    """
    a, b = _prepare(synthetic, matching), _prepare(train, matching)
    height, width = a.shape[-2:]
    best = torch.full((len(a), len(b)), -torch.inf, dtype=torch.float64)
    which = torch.zeros((len(a), len(b)), dtype=torch.int64)
    index = 0

    def keep(correlation: torch.Tensor) -> None:
        nonlocal index
        better = correlation > best
        best[better] = correlation[better]
        which[better] = index
        index += 1

    for flip in FLIPS if matching.flips else FLIPS[:1]:
        fa = flipped(a, flip)
        for dy, dx in _offsets(matching.max_shift):
            # the synthetic image moved by (dy, dx): its pixel (y + dy, x + dx) against the training image's (y, x)
            h, w = height - abs(dy), width - abs(dx)
            sa = _standardized(_window(fa, max(dy, 0), max(dx, 0), h, w))
            sb = _standardized(_window(b, max(-dy, 0), max(-dx, 0), h, w))
            keep(sa @ sb.T)
        if matching.crop:
            side_h, side_w = height - 2 * matching.crop, width - 2 * matching.crop
            template = _standardized(F.interpolate(fa, size=(side_h, side_w), mode="bilinear", antialias=True, align_corners=False))
            for y, x in _positions(matching.crop):
                keep(template @ _standardized(_window(b, y, x, side_h, side_w)).T)
    if same:
        best.fill_diagonal_(-torch.inf)
    return best, which

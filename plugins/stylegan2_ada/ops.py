"""Resampling by 2 with FIR low-pass filters, shared by the networks and ADA.

StyleGAN2 replaces nearest/strided resampling by filtered (bilinear) resampling
(Karras et al. 2019, "A Style-Based Generator Architecture for GANs", sec. 2,
after Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"); ADA's
geometric augmentations upsample 2x, transform, and downsample 2x with a longer
low-pass filter to avoid aliasing (Karras et al. 2020b, appendix B.2).

Conventions: a filter is a 1D tensor of even length that sums to 1 (linear phase,
symmetric); pixel ``i`` covers ``[i, i+1)`` so its centre is ``i + 0.5``. Up- and
downsampling keep the image's extent: after :func:`upsample2x` pixel centres lie at
``(k + 0.5) / 2`` input pixels, and :func:`downsample2x` is its adjoint up to a gain.
All functions are plain differentiable torch ops (double backward included).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def binomial_filter() -> torch.Tensor:
    """[1, 3, 3, 1] / 8: bilinear up/downsampling by 2 (StyleGAN2's resampling filter)."""
    return torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8


def lowpass_filter(taps: int = 12, beta: float = 5.0) -> torch.Tensor:
    """A Kaiser-windowed sinc low-pass with its cutoff at half the Nyquist frequency.

    Used at twice the image's resolution, it removes what the original sampling rate
    cannot hold: the anti-aliasing filter of ADA's 2x upsample / transform / 2x
    downsample. ``beta`` trades transition width against ringing (Kaiser 1974).
    """
    if taps % 2:
        raise ValueError(f"taps must be even (got {taps})")
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(0.5 * n) * np.kaiser(taps, beta)  # ideal low-pass at 1/4 cycle per sample, windowed
    return torch.tensor(h / h.sum(), dtype=torch.float32)


def _kernel(f: torch.Tensor, channels: int, axis: str, gain: float, dtype: torch.dtype) -> torch.Tensor:
    """Depthwise conv weight for a 1D filter along 'y', 'x' or both ('xy', separable outer product)."""
    f = f.to(dtype)
    if axis == "xy":
        k = torch.outer(f, f)
    elif axis == "y":
        k = f[:, None]
    else:
        k = f[None, :]
    return (k * gain)[None, None].repeat(channels, 1, 1, 1)


def upsample2x(x: torch.Tensor, f: torch.Tensor, axis: str = "xy") -> torch.Tensor:
    """Zero-insertion upsampling by 2 along ``axis`` followed by the filter ``f`` (gain 2 per axis).

    A transposed depthwise convolution with stride 2: for a filter of L taps, padding
    L/2 - 1 centres output pixel k at input position (k + 0.5) / 2, the input's
    extent is kept and a constant image stays constant away from the borders.
    """
    taps = f.numel()
    sy, sx = (2 if "y" in axis else 1), (2 if "x" in axis else 1)
    weight = _kernel(f, x.shape[1], axis, float(sy * sx), x.dtype)
    padding = (taps // 2 - 1 if sy == 2 else 0, taps // 2 - 1 if sx == 2 else 0)
    return F.conv_transpose2d(x, weight, stride=(sy, sx), padding=padding, groups=x.shape[1])


def bilinear_upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Upsampling by 2 with the [1, 3, 3, 1] filter, as bilinear interpolation.

    Inside the image this is exactly :func:`upsample2x` with :func:`binomial_filter`
    (the two phases of the filter are the bilinear weights 3/4 and 1/4); at the
    borders it repeats the edge pixel instead of fading towards zero. One fused
    native kernel, differentiable twice (path length regularization needs it).
    """
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def downsample2x(x: torch.Tensor, f: torch.Tensor, axis: str = "xy", pad: bool = True) -> torch.Tensor:
    """Filter with ``f`` and keep every second pixel along ``axis``.

    With ``pad`` the borders are zero-padded by L/2 - 1 pixels and the output has
    half the size; without, the input must already carry that margin (a "valid"
    convolution). Output pixel k is centred at input position 2k + 1.
    """
    taps = f.numel()
    sy, sx = (2 if "y" in axis else 1), (2 if "x" in axis else 1)
    weight = _kernel(f, x.shape[1], axis, 1.0, x.dtype)
    margin = taps // 2 - 1 if pad else 0
    padding = (margin if sy == 2 else 0, margin if sx == 2 else 0)
    return F.conv2d(x, weight, stride=(sy, sx), padding=padding, groups=x.shape[1])


def symmetric_pad(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Mirror ``margin`` pixels at each border, edge pixel repeated (half-sample symmetric).

    The same extension as ``grid_sample(padding_mode="reflection", align_corners=False)``,
    so filtering before and sampling after agree at the borders.
    """
    if margin == 0:
        return x
    if margin > min(x.shape[-2:]):
        raise ValueError(f"margin {margin} is larger than the image ({tuple(x.shape[-2:])})")
    x = torch.cat([x[..., :margin, :].flip(-2), x, x[..., -margin:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :margin].flip(-1), x, x[..., -margin:].flip(-1)], dim=-1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along ``dim`` (Karras et al. 2018, "Progressive Growing of GANs", eq. 2)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


SQRT2 = math.sqrt(2.0)

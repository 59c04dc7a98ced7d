"""Adaptive discriminator augmentation, written from Karras et al. 2020b, "Training
Generative Adversarial Networks with Limited Data" (NeurIPS 2020), [ADA] below.

Every image D sees, real or generated, in every pass, goes through
:class:`AugmentPipe` with the same probability ``p`` ([ADA] sec. 2: augmentations
that are applied to both distributions with p < ~0.8 do not leak into the
generated images). Each transformation is applied to each image independently
with probability p, with the parameter distributions of [ADA] appendix B:

geometric (composed into one 3x3 matrix, applied by a single resampling)
    ``xflip`` (i ~ U{0,1}), ``rotate90`` (k ~ U{0..3}), ``xint`` (integer
    translation, t ~ U(-0.125, 0.125) of the image size), ``scale`` (isotropic,
    s ~ lognormal(0, (0.2 ln 2)^2)), ``rotate`` (theta ~ U(-pi, pi); applied before
    and after ``aniso``, each with probability 1 - sqrt(1 - p) so that some
    rotation happens with probability p), ``aniso`` (anisotropic scaling, s ~
    lognormal(0, (0.2 ln 2)^2) along x and 1/s along y), ``xfrac`` (fractional
    translation, t ~ N(0, 0.125^2) of the image size).
colour (composed into one affine colour matrix)
    ``brightness`` (b ~ N(0, 0.2^2) added), ``contrast`` (c ~ lognormal(0, (0.5 ln 2)^2)),
    ``lumaflip`` (I - 2 v v^T with v the luma axis), ``hue`` (rotation about v,
    theta ~ U(-pi, pi)), ``saturation`` (v v^T + (I - v v^T) s, s ~ lognormal(0, (ln 2)^2)).

Colour ops on 1-channel images: the luma axis is the only axis, so ``brightness``
and ``contrast`` apply as they are, ``lumaflip`` becomes an intensity inversion
(x -> -x around mid-grey), and ``hue`` and ``saturation``, which only act on chroma,
are the identity.

Anti-aliasing ([ADA] appendix B.2): the image is upsampled 2x with a low-pass
filter, sampled bilinearly at the transformed positions of a 2x grid (mirrored
outside the image), then low-pass filtered and downsampled 2x. Everything is
differentiable w.r.t. the images, to any order (R1 differentiates through it).

Values: images stay float of the input's dtype and shape. The geometric ops only
move and resample pixels, so values stay in the input's range up to the small
ringing of the anti-aliasing filter; the colour ops are affine with the bounded
random strengths above (contrast and brightness do leave [-1, 1], as in the paper:
nothing is clipped, which would stop gradients and leak the clip).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ops import downsample2x, lowpass_filter, symmetric_pad, upsample2x

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
ALL_OPS = GEOMETRIC_OPS + COLOR_OPS

# [ADA] appendix B: strengths of the random parameters
XINT_MAX = 0.125  # integer translation, fraction of the image size
SCALE_STD = 0.2  # log2 std of isotropic scaling
ROTATE_MAX = 1.0  # fraction of pi
ANISO_STD = 0.2  # log2 std of anisotropic scaling
XFRAC_STD = 0.125  # fractional translation, fraction of the image size
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5  # log2 std
HUE_MAX = 1.0  # fraction of pi
SATURATION_STD = 1.0  # log2 std


# ---------------------------------------------------------------------------
# Batched homogeneous matrices
# ---------------------------------------------------------------------------


def _eye(n: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.eye(size, device=device).repeat(n, 1, 1)


# Matrices are filled in place from per-sample tensors or Python numbers: no tensor is
# ever made from host values, so building them never waits for the GPU.
def translate2d(tx, ty, n: int, device: torch.device) -> torch.Tensor:
    M = _eye(n, 3, device)
    M[:, 0, 2], M[:, 1, 2] = tx, ty
    return M


def scale2d(sx, sy, n: int, device: torch.device) -> torch.Tensor:
    M = _eye(n, 3, device)
    M[:, 0, 0], M[:, 1, 1] = sx, sy
    return M


def rotate2d(theta: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    M = _eye(n, 3, device)
    c, s = torch.cos(theta), torch.sin(theta)
    M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1] = c, -s, s, c
    return M


def _gate(values: torch.Tensor, identity: float, prob: float) -> torch.Tensor:
    """Keep each sample's value with probability ``prob``, else the identity value."""
    keep = torch.rand(values.shape[0], device=values.device) < prob
    keep = keep.reshape(-1, *([1] * (values.ndim - 1)))
    return torch.where(keep, values, torch.full_like(values, identity))


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


class AugmentPipe(nn.Module):
    """``pipe(images, p)``: every op in ``ops`` applied to each image with probability p.

    ``p == 0`` returns the images themselves (no resampling at all). The random
    parameters come from torch's global RNG, so a seeded step is reproducible.
    """

    def __init__(self, ops: tuple[str, ...] | list[str] = ALL_OPS, filter_taps: int = 12):
        super().__init__()
        unknown = [op for op in ops if op not in ALL_OPS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(ALL_OPS)}")
        self.ops = tuple(ops)
        self.register_buffer("filter", lowpass_filter(filter_taps), persistent=False)
        self._points_key, self._points = None, None

    def forward(self, images: torch.Tensor, p: float) -> torch.Tensor:
        if p <= 0 or not self.ops:
            return images
        n, c, h, w = images.shape
        x = images if images.dtype == torch.float64 else images.float()  # half precision: resample in fp32
        if any(op in GEOMETRIC_OPS for op in self.ops):
            x = self.resample(x, self.geometric_matrix(n, h, w, p, x.device))
        if any(op in COLOR_OPS for op in self.ops):
            x = apply_color(x, self.color_matrix(n, c, p, x.device))
        return x.to(images.dtype)

    # -- geometric ----------------------------------------------------------

    def geometric_matrix(self, n: int, h: int, w: int, p: float, device: torch.device) -> torch.Tensor:
        """(n, 3, 3) maps output pixel coordinates to input ones (centred, in pixels).

        The forward transform is T_k ... T_1; sampling needs its inverse, so the
        inverses are accumulated left to right: G = T_1^-1 T_2^-1 ... T_k^-1.
        """
        ops, G = self.ops, _eye(n, 3, device)
        if "xflip" in ops:
            i = _gate(torch.randint(0, 2, (n,), device=device).float(), 0, p)
            G = G @ scale2d(1 - 2 * i, 1, n, device)
        if "rotate90" in ops:
            k = _gate(torch.randint(0, 4, (n,), device=device).float(), 0, p)
            G = G @ rotate2d(-k * (math.pi / 2), n, device)
        if "xint" in ops:
            t = _gate((torch.rand(n, 2, device=device) * 2 - 1) * XINT_MAX, 0, p)
            G = G @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, device)
        if "scale" in ops:
            s = _gate(torch.exp2(torch.randn(n, device=device) * SCALE_STD), 1, p)
            G = G @ scale2d(1 / s, 1 / s, n, device)
        p_rot = 1 - math.sqrt(max(1 - p, 0.0))  # two chances: P(any rotation) = p
        if "rotate" in ops:
            theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * ROTATE_MAX, 0, p_rot)
            G = G @ rotate2d(-theta, n, device)
        if "aniso" in ops:
            s = _gate(torch.exp2(torch.randn(n, device=device) * ANISO_STD), 1, p)
            G = G @ scale2d(1 / s, s, n, device)
        if "rotate" in ops:
            theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * ROTATE_MAX, 0, p_rot)
            G = G @ rotate2d(-theta, n, device)
        if "xfrac" in ops:
            t = _gate(torch.randn(n, 2, device=device) * XFRAC_STD, 0, p)
            G = G @ translate2d(-t[:, 0] * w, -t[:, 1] * h, n, device)
        return G

    def resample(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """Apply the inverse transforms ``G`` with anti-aliasing: 2x up, bilinear warp of a 2x grid, 2x down."""
        n, c, h, w = x.shape
        f = self.filter.to(x.dtype)
        taps = f.numel()
        # 1. upsample 2x; mirror first so the filter sees image content at the borders
        margin = taps // 4 + 1
        up = upsample2x(upsample2x(symmetric_pad(x, min(margin, h, w)), f, "y"), f, "x")  # separable: 2L taps, not L^2
        crop = 2 * min(margin, h, w)
        up = up[:, :, crop : up.shape[2] - crop, crop : up.shape[3] - crop]  # (n, c, 2h, 2w), same extent as x
        # 2. a 2x output grid with the margin the downsampling filter needs, mapped through G
        pad = taps // 2 - 1
        points = self._grid_points(h, w, pad, x.device)  # (1, P, 3), centred input pixels
        to_unit = torch.stack([G[:, 0] * (2 / w), G[:, 1] * (2 / h)], dim=1)  # and on to grid_sample's [-1, 1]
        source = points @ to_unit.transpose(1, 2)  # (n, P, 2)
        grid = source.reshape(n, 2 * h + 2 * pad, 2 * w + 2 * pad, 2).to(x.dtype)
        warped = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # 3. low-pass and downsample 2x ("valid": the grid carried the margin)
        return downsample2x(downsample2x(warped, f, "y", pad=False), f, "x", pad=False)

    def _grid_points(self, h: int, w: int, pad: int, device: torch.device) -> torch.Tensor:
        """Centres of the 2x output pixels (plus ``pad`` on each side), in centred input pixels; cached."""
        key = (h, w, pad, device)
        if self._points_key != key:
            ys = (torch.arange(2 * h + 2 * pad, device=device, dtype=torch.float32) - pad + 0.5) / 2 - h / 2
            xs = (torch.arange(2 * w + 2 * pad, device=device, dtype=torch.float32) - pad + 0.5) / 2 - w / 2
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            self._points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(1, -1, 3)
            self._points_key = key
        return self._points

    # -- colour -------------------------------------------------------------

    def color_matrix(self, n: int, c: int, p: float, device: torch.device) -> torch.Tensor:
        """(n, c+1, c+1) affine colour transforms, composed in the order of [ADA] appendix B."""
        ops = self.ops
        eye = torch.eye(c + 1, device=device)
        M = _eye(n, c + 1, device)
        vvT = torch.zeros(c + 1, c + 1, device=device)
        vvT[:c, :c] = 1 / c  # v v^T for the luma axis v = (1, ..., 1, 0) / sqrt(c)
        if "brightness" in ops:
            b = _gate(torch.randn(n, device=device) * BRIGHTNESS_STD, 0, p)
            T = _eye(n, c + 1, device)
            T[:, :c, c] = b[:, None]
            M = T @ M
        if "contrast" in ops:
            s = _gate(torch.exp2(torch.randn(n, device=device) * CONTRAST_STD), 1, p)
            T = torch.diag_embed(torch.cat([s[:, None].expand(n, c), torch.ones(n, 1, device=device)], 1))
            M = T @ M
        if "lumaflip" in ops:
            i = _gate(torch.randint(0, 2, (n,), device=device).float(), 0, p)
            M = (eye - 2 * vvT * i[:, None, None]) @ M
        if c == 3 and "hue" in ops:
            theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * HUE_MAX, 0, p)
            M = rotate_about_luma(theta) @ M
        if c == 3 and "saturation" in ops:
            s = _gate(torch.exp2(torch.randn(n, device=device) * SATURATION_STD), 1, p)
            T = _eye(n, c + 1, device)
            T[:, :c, :c] = vvT[:c, :c] + (eye[:c, :c] - vvT[:c, :c]) * s[:, None, None]  # homogeneous row stays (0, 1)
            M = T @ M
        return M


def rotate_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """(n, 4, 4) homogeneous rotations of RGB about the luma axis (1, 1, 1) / sqrt(3) by
    ``theta`` (Rodrigues: R = I + sin(theta) K + (1 - cos(theta)) K^2, K the axis' cross-product matrix)."""
    n, device = theta.shape[0], theta.device
    a = 1 / math.sqrt(3)
    K = torch.zeros(3, 3, device=device)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -a, a, a, -a, -a, a
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    out = _eye(n, 4, device)
    out[:, :3, :3] = torch.eye(3, device=device) + sin * K + (1 - cos) * (K @ K)
    return out


def apply_color(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """x' = M[:c, :c] x + M[:c, c] per pixel."""
    c = x.shape[1]
    return torch.einsum("nij,njhw->nihw", M[:, :c, :c].to(x.dtype), x) + M[:, :c, c, None, None].to(x.dtype)


# ---------------------------------------------------------------------------
# Adaptive p
# ---------------------------------------------------------------------------


class AdaptiveP:
    """Adjusts the augmentation probability from D's overfitting heuristic ([ADA] sec. 3).

    r_t = E[sign(D_train)], the expected sign of D's outputs on the real training
    images, is accumulated over ``interval`` steps (all processes); p then moves by
    sign(r_t - target) * (images seen in those steps) / (speed_kimg * 1000), so it can
    go from 0 to 1 in ``speed_kimg`` thousand images; p stays in [0, 1].

    ``mode``: "ada" (adaptive), "fixed" (p stays at its initial value), "none" (p = 0).
    """

    def __init__(self, mode: str, p: float = 0.0, target: float = 0.6, interval: int = 4, speed_kimg: float = 500.0):
        self.mode, self.target, self.interval, self.speed_kimg = mode, target, interval, speed_kimg
        self.p = 0.0 if mode == "none" else float(p)
        self.sign_sum = torch.zeros(())
        self.count = torch.zeros(())
        self.steps = 0  # steps accumulated since the last adjustment
        self.last_rt = 0.0

    def observe(self, real_logits: torch.Tensor) -> torch.Tensor:
        """Record D's logits on this step's real images; return this batch's mean sign (for logging)."""
        signs = real_logits.detach().float().sign()
        if self.mode == "ada":
            self.sign_sum = self.sign_sum.to(signs.device) + signs.sum()
            self.count = self.count.to(signs.device) + signs.numel()
        return signs.mean()

    def update(self, images_per_step: int, reduce_sum=None) -> None:
        """Called once per step; every ``interval`` steps, move p (``reduce_sum`` sums over processes)."""
        if self.mode != "ada":
            return
        self.steps += 1
        if self.steps < self.interval:
            return
        totals = torch.stack([self.sign_sum, self.count])
        if reduce_sum is not None:
            totals = reduce_sum(totals)
        sign_sum, count = totals.tolist()
        if count > 0:
            self.last_rt = sign_sum / count
            adjust = math.copysign(1.0, self.last_rt - self.target) if self.last_rt != self.target else 0.0
            self.p = min(max(self.p + adjust * images_per_step * self.steps / (self.speed_kimg * 1000), 0.0), 1.0)
        self.sign_sum, self.count, self.steps = torch.zeros_like(self.sign_sum), torch.zeros_like(self.count), 0

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "sign_sum": self.sign_sum.detach().cpu(), "count": self.count.detach().cpu(), "steps": self.steps,
                "last_rt": self.last_rt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.sign_sum, self.count = state["sign_sum"].float(), state["count"].float()
        self.steps, self.last_rt = int(state["steps"]), float(state["last_rt"])

"""Flips and small geometric augmentation of the training images, on the device.

For limited data, so the benchmark can compare the diffusion baseline with ADA's
geometric augmentations (Karras et al., "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020, sec. 3: x-flip, translation, isotropic scaling,
rotation) on equal terms. A diffusion model learns the augmented distribution, so
these transforms *leak* into the samples (unlike ADA, which only shows augmented
images to the discriminator): use flips where the anatomy allows them and keep the
geometric ranges small.

Every draw comes from torch's global RNG, which the core reseeds before each step,
so augmentation resumes exactly and needs no state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(
    images: torch.Tensor,
    hflip: bool = False,
    vflip: bool = False,
    translate: float = 0.0,
    rotate: float = 0.0,
    scale: float = 0.0,
    p: float = 1.0,
) -> torch.Tensor:
    """Augment a batch ``(N, C, H, W)`` independently per image.

    ``hflip`` / ``vflip``: mirror with probability 1/2. With probability ``p`` an image
    is also shifted by up to ``translate`` of its size, rotated by up to ``rotate``
    degrees and scaled by a factor in ``[1/(1+scale), 1+scale]`` (uniform draws),
    sampled bilinearly with reflection at the borders.
    """
    n, device = images.shape[0], images.device
    if hflip:
        images = torch.where(torch.rand(n, 1, 1, 1, device=device) < 0.5, images.flip(3), images)
    if vflip:
        images = torch.where(torch.rand(n, 1, 1, 1, device=device) < 0.5, images.flip(2), images)
    if not (translate or rotate or scale) or p == 0:
        return images
    on = (torch.rand(n, device=device) < p).float()
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(rotate) * on
    log_scale = (torch.rand(n, device=device) * 2 - 1) * math.log1p(scale) * on
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * (2 * translate) * on[:, None]  # normalized coords span 2
    # theta maps output coordinates to input coordinates: the inverse of scale-then-rotate
    inverse = torch.exp(-log_scale)
    cos, sin = torch.cos(angle) * inverse, torch.sin(angle) * inverse
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

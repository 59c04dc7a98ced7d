"""Built-in plugin ``diffaugment``: Differentiable Augmentation of the discriminator's inputs.

Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN
Training", NeurIPS 2020, sec. 3: the same random, differentiable transformation
family T is applied to real and to generated images whenever D sees them, in D's
and in G's updates, so that G is trained through T and D cannot memorize the
few real images. The paper's three transformations (its sec. 3 and appendix),
on images in [-1, 1], each drawn per image:

``color``
    brightness: x + b, b ~ U(-0.5, 0.5); saturation: m + (x - m) s with m the
    per-pixel channel mean, s ~ U(0, 2); contrast: m + (x - m) c with m the image
    mean, c ~ U(0.5, 1.5). (Saturation is the identity on one channel.)
``translation``
    an integer shift of up to ``translation_ratio`` of the image size in each
    direction, zeros filling the vacated pixels.
``cutout``
    one square of ``cutout_ratio`` of the image size set to zero, at a random
    position.

It is an :class:`raresynth.Augmentation` (regularizer role ``"augment"``): any
backend that offers that role applies it; ``stylegan2_ada`` applies it after its own
ADA, so ``generator.augment: none`` plus this plugin is DiffAugment instead of ADA.
Randomness comes from torch's global RNG, which the loop reseeds every step.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from raresynth import Augmentation, PluginParams, hookimpl

__all__ = ["DiffAugment", "DiffAugmentParams", "diff_augment"]

Policy = Literal["color", "translation", "cutout"]


class DiffAugmentParams(PluginParams):
    policy: list[Policy] = Field(default_factory=lambda: ["color", "translation", "cutout"],
                                 description="Transformations, applied in this order ([DiffAugment]: color, translation, cutout).")
    translation_ratio: float = Field(0.125, ge=0, lt=1, description="Largest shift, as a fraction of the image size.")
    cutout_ratio: float = Field(0.5, gt=0, le=1, description="Side of the cut-out square, as a fraction of the image size.")

    @field_validator("policy")
    @classmethod
    def _no_duplicates(cls, policy: list[str]) -> list[str]:
        duplicates = sorted({op for op in policy if policy.count(op) > 1})
        if duplicates:
            raise ValueError(f"'{duplicates[0]}' is listed twice")
        return policy


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=like.device, dtype=like.dtype) * (high - low) + low


def color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + _uniform(n, -0.5, 0.5, x)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = mean + (x - mean) * _uniform(n, 0.0, 2.0, x)  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * _uniform(n, 0.5, 1.5, x)  # contrast


def translation(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shift each image by whole pixels, zero-filled: a gather from a zero-padded copy (differentiable in x)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sh == 0 and sw == 0:
        return x
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).clamp(-1, h) + 1  # index into the padded image
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).clamp(-1, w) + 1
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # the clamped indices -1 and h land on the zero border
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero one square of ``ratio`` of the image size per image, its centre anywhere in the image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, policy: list[str], translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> torch.Tensor:
    for op in policy:
        if op == "color":
            x = color(x)
        elif op == "translation":
            x = translation(x, translation_ratio)
        elif op == "cutout":
            x = cutout(x, cutout_ratio)
    return x


class DiffAugment(Augmentation):
    """color, translation and cutout of every image D sees (Zhao et al. 2020)."""

    Params = DiffAugmentParams

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        return diff_augment(images, p.policy, p.translation_ratio, p.cutout_ratio)


@hookimpl
def raresynth_register_regularizers(register):
    register("diffaugment", DiffAugment)

"""DCGAN networks (Radford, Metz & Chintala, "Unsupervised Representation Learning
with Deep Convolutional Generative Adversarial Networks", ICLR 2016), with
class conditioning by embedding concatenation in G and projection in D (Miyato &
Koyama, "cGANs with Projection Discriminator", ICLR 2018).

One change to the paper: G normalizes features with pixelwise feature normalization
(Karras et al., "Progressive Growing of GANs", ICLR 2018, sec. 4.2) instead of batch
normalization. It has no running statistics, so G behaves the same in training and
sampling and stays identical on every process of a multi-process run.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def channels_at(resolution: int, base: int, maximum: int, top: int) -> int:
    """Channels at a feature-map ``resolution``: ``base`` at the top, doubling per halving."""
    return min(maximum, base * (top // resolution))


class PixelNorm(nn.Module):
    """b = a / sqrt(mean_over_channels(a^2) + eps)  (Karras et al. 2018, eq. 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class Generator(nn.Module):
    """z (+ class embedding) -> 4x4 -> (upsample, conv) per octave -> image in [-1, 1]."""

    def __init__(self, z_dim: int, resolution: int, channels: int, base: int, maximum: int, num_classes: int):
        super().__init__()
        self.z_dim = z_dim
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        in_dim = z_dim * (2 if num_classes else 1)
        c4 = channels_at(4, base, maximum, resolution)
        self.stem = nn.Sequential(nn.Linear(in_dim, c4 * 16), nn.Unflatten(1, (c4, 4, 4)), nn.ReLU(), PixelNorm())
        blocks = []
        res = 4
        while res < resolution:
            c_in, c_out = channels_at(res, base, maximum, resolution), channels_at(res * 2, base, maximum, resolution)
            # nearest upsampling + 3x3 convolution: no checkerboard artifacts of strided
            # transposed convolutions (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2), PixelNorm()]
            res *= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(nn.Conv2d(channels_at(resolution, base, maximum, resolution), channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.to_image(self.blocks(self.stem(z)))


class MinibatchStdDev(nn.Module):
    """Append the average standard deviation over groups of samples as one extra
    feature map, so D can see a lack of variety (Karras et al. 2018, sec. 3)."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        # contiguous groups: with reals and fakes concatenated, a group never mixes the two
        std = x.reshape(n // g, g, c, h, w).float().var(dim=1, unbiased=False).add(1e-8).sqrt()
        feature = std.mean(dim=(1, 2, 3)).to(x.dtype).repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, feature], dim=1)


class Discriminator(nn.Module):
    """Strided convolutions with LeakyReLU(0.2) down to 4x4, minibatch standard
    deviation, then a linear logit.

    No batch normalization: real and fake images go through D in one batch, and the
    regularizers see per-sample gradients.
    """

    def __init__(self, resolution: int, channels: int, base: int, maximum: int, num_classes: int):
        super().__init__()
        layers = [nn.Conv2d(channels, channels_at(resolution, base, maximum, resolution), 3, padding=1), nn.LeakyReLU(0.2)]
        res = resolution
        while res > 4:
            c_in, c_out = channels_at(res, base, maximum, resolution), channels_at(res // 2, base, maximum, resolution)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            res //= 2
        c4 = channels_at(4, base, maximum, resolution)
        self.features = nn.Sequential(*layers, MinibatchStdDev(), nn.Conv2d(c4 + 1, c4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        feature_dim = c4 * 16
        self.logit = nn.Linear(feature_dim, 1)
        self.embed = nn.Embedding(num_classes, feature_dim) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=1 / math.sqrt(feature_dim))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)
        out = self.logit(h).squeeze(1)
        if self.embed is not None:  # projection discriminator: + <embed(y), phi(x)>
            out = out + (self.embed(labels) * h).sum(dim=1)
        return out

"""StyleGAN2 generator and residual discriminator, written from the papers.

References (cited below by short name):

* [SG1] Karras, Laine & Aila, "A Style-Based Generator Architecture for Generative
  Adversarial Networks", CVPR 2019.
* [SG2] Karras et al., "Analyzing and Improving the Image Quality of StyleGAN",
  CVPR 2020 (weight demodulation sec. 2.2, skip/residual architectures sec. 4,
  Fig. 7).
* [PGGAN] Karras et al., "Progressive Growing of GANs", ICLR 2018 (equalized
  learning rate sec. 4.1, minibatch standard deviation sec. 3).
* [ADA] Karras et al., "Training Generative Adversarial Networks with Limited
  Data", NeurIPS 2020 (mixed precision and conv clamping, appendix D.2).
* [Proj] Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018.

Layers go from small to big: equalized-lr layers, the mapping network, modulated
convolutions, synthesis blocks, the generator, then the discriminator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import SQRT2, bilinear_upsample2x, binomial_filter, downsample2x, normalize_2nd_moment


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: channel_base / resolution, at most channel_max."""
    return max(1, min(channel_base // resolution, channel_max))


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str, gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    """x + b, then leaky ReLU(0.2) scaled by sqrt(2) to keep the signal's magnitude
    ([PGGAN] He initialization gain), then an optional clamp to +-clamp ([ADA] D.2)."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * (SQRT2 * gain)
    elif gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------
# Equalized learning rate ([PGGAN] sec. 4.1): weights are N(0, 1) / lr_mult and
# scaled at run time by lr_mult / sqrt(fan_in), so Adam's per-parameter step is the
# same for every layer whatever its fan-in.
# ---------------------------------------------------------------------------


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, activation: str = "linear", bias_init: float = 0.0, lr_mult: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, self.activation)


class EqualizedConv2d(nn.Module):
    """A convolution with equalized lr; ``down=True`` low-pass filters and halves the
    resolution first (filtered downsampling [SG2], rather than a strided conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str = "linear", bias: bool = True,
                 down: bool = False, conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.conv_clamp, self.padding = activation, down, conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", binomial_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        if self.down:
            x = downsample2x(x, self.resample_filter)
        x = F.conv2d(x, (self.weight * self.weight_gain).to(x.dtype), padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """z (+ class embedding) -> w: an MLP of ``num_layers`` leaky-ReLU layers ([SG1] sec. 2)
    with a 100x lower learning rate (lr_mult 0.01, [SG1] appendix C)."""

    def __init__(self, z_dim: int, w_dim: int, num_classes: int, num_layers: int, lr_mult: float = 0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.num_classes = z_dim, w_dim, num_classes
        # conditioning: the one-hot label is embedded, normalized and concatenated to z
        self.embed = EqualizedLinear(num_classes, w_dim) if num_classes else None
        features = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualizedLinear(a, b, activation="lrelu", lr_mult=lr_mult) for a, b in zip(features[:-1], features[1:])])

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
            x = torch.cat([x, normalize_2nd_moment(self.embed(onehot))], dim=1)
        return self.layers(x)


class ModulatedConv2d(nn.Module):
    """Modulated convolution with weight demodulation ([SG2] sec. 2.2, eqs. 1-3).

    w'_ijk = s_i * w_ijk (modulation by the style s = A(w)),
    w''_ijk = w'_ijk / sqrt(sum_{i,k} w'_ijk^2 + eps) (demodulation).
    Implemented by scaling activations instead of weights, which is the same
    computation ([SG2] sec. 2.2: "... scaling the input feature maps, convolving, and
    scaling the output"), so one ordinary convolution serves the whole batch.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: identity modulation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate, self.up, self.padding = demodulate, up, kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w).float()  # (N, in)
        weight = self.weight.float() * self.weight_gain
        if self.demodulate:
            # Keeps fp16/bf16 activations in range; demodulation divides the factor out again.
            styles = styles / styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up:  # filtered upsampling, then the conv at the new resolution ([SG2] Fig. 7)
            x = bilinear_upsample2x(x)
        x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sigma_j = sqrt(sum_i s_i^2 * sum_k w_ijk^2 + eps)  ([SG2] eq. 3)
            sigma_inv = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()  # (N, out)
            x = x * sigma_inv.to(x.dtype)[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv, per-pixel noise with a learned strength ([SG1] sec. 3.2), bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False, conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, w_dim, 3, up=up)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))  # for noise_mode="const" (reproducible sampling)
        self.resolution, self.conv_clamp = resolution, conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x, w)
        if noise is None and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
        elif noise is None and noise_mode == "const":
            noise = self.noise_const
        if noise is not None:
            x = x + (noise * self.noise_strength).to(x.dtype)
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToImage(nn.Module):
    """Modulated 1x1 conv without demodulation to the image channels ("tRGB", [SG2] Fig. 7b)."""

    def __init__(self, in_channels: int, image_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, image_channels, w_dim, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(image_channels))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return bias_act(self.conv(x, w), self.bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator ([SG2] Fig. 7b): (upsample+conv), conv, toImage;
    the image so far is upsampled and the block's toImage output added to it."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, image_channels: int, conv_clamp: float | None):
        super().__init__()
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))  # learned constant input ([SG1] sec. 2)
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.to_image = ToImage(out_channels, image_channels, w_dim, conv_clamp=conv_clamp)
        self.num_ws = 2 if self.first else 3  # ws consumed: (conv0,) conv1, toImage

    def forward(self, x, image, ws: torch.Tensor, noise_mode: str, noises: list | None):
        noises = noises or [None, None]
        if self.first:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode, noises[-1])
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, noises[0])
            x = self.conv1(x, ws[:, 1], noise_mode, noises[1])
        y = self.to_image(x, ws[:, -1])
        image = y if image is None else bilinear_upsample2x(image).to(y.dtype) + y
        return x, image


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image (N, C, R, R). Each block's toImage shares its w
    with the next block's first conv, so num_ws = 2 * log2(R) - 2."""

    def __init__(self, w_dim: int, resolution: int, image_channels: int, channel_base: int, channel_max: int, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.image_channels = resolution, image_channels
        resolutions = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        self.blocks = nn.ModuleList()
        for res in resolutions:
            in_ch = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            self.blocks.append(SynthesisBlock(in_ch, channels_at(res, channel_base, channel_max), w_dim, res, image_channels, conv_clamp))
        self.num_ws = 2 * len(resolutions)

    def noise_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of every noise input, in the order ``forward(noises=...)`` takes them."""
        return [(b.conv1.resolution,) * 2 if b.first else (b.conv0.resolution,) * 2 for b in self.blocks for _ in range(1 if b.first else 2)]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", noises: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = image = None
        w_index = noise_index = 0
        for block in self.blocks:
            count = 1 if block.first else 2
            block_noises = noises[noise_index : noise_index + count] if noises is not None else None
            x, image = block(x, image, ws[:, w_index : w_index + block.num_ws], noise_mode, block_noises)
            w_index += block.num_ws - 1  # the toImage w is the next block's first
            noise_index += count
        return image


class StyleGenerator(nn.Module):
    """Mapping network + synthesis network ([SG2], config F with the skip generator)."""

    def __init__(self, z_dim: int, w_dim: int, num_classes: int, resolution: int, image_channels: int, mapping_layers: int,
                 channel_base: int, channel_max: int, conv_clamp: float | None = None):
        super().__init__()
        self.z_dim, self.w_dim, self.num_classes = z_dim, w_dim, num_classes
        self.mapping = MappingNetwork(z_dim, w_dim, num_classes, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, image_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws

    def styles(self, z: torch.Tensor, labels: torch.Tensor | None = None, mix_z: torch.Tensor | None = None,
               mix_cutoff: torch.Tensor | None = None) -> torch.Tensor:
        """ws (N, num_ws, w_dim). Style mixing ([SG1] sec. 3.1): layers from ``mix_cutoff[i]``
        on take their w from ``mix_z[i]`` (a cutoff of num_ws means no mixing)."""
        if mix_z is None:
            return self.mapping(z, labels).unsqueeze(1).repeat(1, self.num_ws, 1)
        both_labels = torch.cat([labels, labels]) if labels is not None else None
        w, w_mix = self.mapping(torch.cat([z, mix_z]), both_labels).chunk(2)
        layer = torch.arange(self.num_ws, device=z.device)
        take_mix = (layer[None, :] >= mix_cutoff[:, None]).unsqueeze(2)  # (N, num_ws, 1)
        return torch.where(take_mix, w_mix.unsqueeze(1), w.unsqueeze(1))

    def forward(self, z, labels=None, mix_z=None, mix_cutoff=None, noise_mode: str = "random") -> torch.Tensor:
        return self.synthesis(self.styles(z, labels, mix_z, mix_cutoff), noise_mode=noise_mode)


# ---------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """Residual block ([SG2] Fig. 7c): conv, downsample+conv, plus a downsampled 1x1
    skip; the sum is scaled by 1/sqrt(2) to keep the variance."""

    def __init__(self, in_channels: int, out_channels: int, image_channels: int, first: bool, conv_clamp: float | None):
        super().__init__()
        self.from_image = EqualizedConv2d(image_channels, in_channels, 1, activation="lrelu", conv_clamp=conv_clamp) if first else None
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", down=True, conv_clamp=conv_clamp)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_image is not None:
            x = self.from_image(x)
        gain = math.sqrt(0.5)
        return self.skip(x, gain=gain) + self.conv1(self.conv0(x), gain=gain)


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append the standard deviation over groups of samples as extra feature maps ([PGGAN] sec. 3).

    Groups are contiguous runs of ``group_size`` samples, so a batch that concatenates
    reals and fakes of a size divisible by the group never mixes the two in a group.
    The group shrinks to the largest divisor of the batch not above ``group_size``.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.float().reshape(n // g, g, num_channels, c // num_channels, h, w)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt()  # (n/g, F, c/F, h, w)
    y = y.mean(dim=(2, 3, 4))  # (n/g, F)
    y = y[:, None, :, None, None].expand(n // g, g, num_channels, h, w).reshape(n, num_channels, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """Residual discriminator ([SG2] Fig. 7c) with minibatch stddev and, for class-conditional
    data, a projection head ([Proj]): logit = <phi(x), embed(y)> / sqrt(dim)."""

    def __init__(self, resolution: int, image_channels: int, num_classes: int, channel_base: int, channel_max: int,
                 mbstd_group: int = 4, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.num_classes, self.mbstd_group = resolution, num_classes, mbstd_group
        resolutions = [2**i for i in range(int(math.log2(resolution)), 2, -1)]  # R, R/2, ..., 8
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels_at(res, channel_base, channel_max), channels_at(res // 2, channel_base, channel_max),
                               image_channels, first=(res == resolution), conv_clamp=conv_clamp)
            for res in resolutions
        )
        c4 = channels_at(4, channel_base, channel_max)
        self.conv = EqualizedConv2d(c4 + 1, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqualizedLinear(c4, c4 if num_classes else 1)
        self.embed = EqualizedLinear(num_classes, c4) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = images
        for block in self.blocks:
            x = block(x)
        x = self.conv(minibatch_stddev(x, self.mbstd_group))
        x = self.out(self.fc(x.flatten(1)))
        if self.embed is None:
            return x.squeeze(1)
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels")
        cmap = normalize_2nd_moment(self.embed(F.one_hot(labels.long(), self.num_classes).to(x.dtype)))
        return (x * cmap).sum(dim=1) / math.sqrt(cmap.shape[1])

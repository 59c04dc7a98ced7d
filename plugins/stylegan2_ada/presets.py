"""Options of the ``stylegan2_ada`` backend and the presets that fill the unset ones.

Two presets (Karras et al. 2020b, "Training Generative Adversarial Networks with
Limited Data", NeurIPS 2020, appendix D, [ADA] below):

``auto``
    The paper's heuristics that scale with resolution and batch size: mapping
    depth 2, channel_base 16384 (32768 from 512 px), lr 0.0025 (0.002 at 1024 px),
    G_ema half-life of batch * 10 / 32 kimg with a ramp-up of 0.05, and
    (in the ``r1`` regularizer's ``gamma: auto``) R1 gamma = 0.0002 * res^2 / batch.
    Its batch size is max(min(4096 // res, 32), 1) per GPU, at most 64 overall
    (:func:`recommended_batch`); the batch is the run config's ``batch_size``, set
    it there.
``paper``
    The setup of the paper's own experiments at 256-1024 px ([ADA] appendix D):
    mapping depth 8, channel_base 16384 up to 256 px and 32768 above, lr 0.0025
    (0.002 at 1024 px), G_ema half-life 20 kimg (10 at 1024 px), no ramp-up; batch
    64 (32 at 1024 px) and R1 gamma 1 (256 px), 0.5 (512 px), 2 (1024 px), which
    :func:`recommended_batch` and :func:`recommended_r1_gamma` return.

Every option left at ``None`` takes the preset's value; an option set in the config
always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator

from raresynth import PluginParams

from .augment import ALL_OPS

AugmentOp = Literal["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast", "lumaflip", "hue", "saturation"]
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024


class StyleGAN2ADAParams(PluginParams):
    """Options of the ``stylegan2_ada`` backend (``generator:`` in a run config)."""

    preset: Literal["auto", "paper"] = Field("auto", description="Defaults for the options left unset (None).")
    # -- networks ([SG2] config F with skip G and residual D) --
    z_dim: int = Field(512, ge=1, description="Latent z size.")
    w_dim: int = Field(512, ge=1, description="Intermediate latent w size.")
    mapping_layers: int | None = Field(None, ge=1, le=16, description="Mapping network depth; None: preset (auto 2, paper 8).")
    channel_base: int | None = Field(None, ge=1, description="Feature maps at resolution r: min(channel_base / r, channel_max); None: preset.")
    channel_max: int = Field(512, ge=1, description="Most feature maps of any layer.")
    conditional: bool | Literal["auto"] = Field("auto", description="Class-conditional G and projection D; auto: when the data has labels.")
    style_mixing: float = Field(0.9, ge=0, le=1, description="Probability of style mixing regularization per image.")
    mbstd_group: int = Field(4, ge=1, description="Minibatch stddev group size (shrinks to divide the per-process batch).")
    freeze_d: int = Field(0, ge=0, description="Freeze D's first N blocks, from the image side (FreezeD, for transfer learning).")
    # -- optimization --
    lr_g: float | None = Field(None, gt=0, description="Adam learning rate of G; None: preset (0.0025, 0.002 at 1024 px).")
    lr_d: float | None = Field(None, gt=0, description="Adam learning rate of D; None: preset.")
    betas: tuple[float, float] = Field((0.0, 0.99), description="Adam betas ([SG2]: beta1 = 0, beta2 = 0.99).")
    pl_weight: float = Field(2.0, ge=0, description="Path length regularization weight; 0: off.")
    pl_interval: int = Field(4, ge=1, description="Path length regularization every N G steps (lazy).")
    pl_batch_shrink: int = Field(2, ge=1, description="Path length regularization on batch / N images.")
    pl_decay: float = Field(0.01, gt=0, le=1, description="Decay of the running path length mean a.")
    ema_kimg: float | None = Field(None, ge=0, description="G_ema half-life in kimg; None: preset (auto: batch*10/32, paper: 20); 0: no averaging.")
    ema_rampup: float | None = Field(None, ge=0, description="G_ema half-life at most rampup * images shown; None: preset (auto 0.05, paper off); 0: off.")
    # -- adaptive discriminator augmentation --
    augment: Literal["ada", "fixed", "none"] = Field("ada", description="ada: adaptive p; fixed: p = augment_p; none: no augmentation.")
    augment_p: float = Field(0.0, ge=0, le=1, description="Initial p (ada) or the fixed p.")
    ada_target: float = Field(0.6, gt=0, lt=1, description="Target of r_t = E[sign(D(real))].")
    ada_interval: int = Field(4, ge=1, description="Adjust p every N steps.")
    ada_kimg: float = Field(500.0, gt=0, description="p can go from 0 to 1 in this many kimg.")
    augment_ops: list[AugmentOp] = Field(default_factory=lambda: list(ALL_OPS), description="Augmentations in use.")
    # -- speed --
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: the run's precision if set, else bf16 on a GPU, fp32 on CPU.")
    conv_clamp: float | None = Field(None, gt=0, description="Clamp conv outputs to +-this; None: 256 with fp16, off otherwise.")
    channels_last: bool = Field(True, description="channels_last memory format on a GPU.")
    compile: bool = Field(False, description="torch.compile the main G and D passes (GPU; the first steps compile).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead adds CUDA graphs.")
    # -- transfer learning --
    transfer: str | None = Field(None, description="Initialize G, D, G_ema from this raresynth checkpoint (or run directory) of stylegan2_ada.")

    @field_validator("precision")
    @classmethod
    def _fp16_needs_cuda(cls, value: str) -> str:
        if value == "fp16" and not torch.cuda.is_available():
            raise ValueError("fp16 needs a CUDA GPU; use 'bf16', 'fp32' or 'auto' on this machine")
        return value

    @field_validator("augment_ops")
    @classmethod
    def _no_duplicates(cls, ops: list[str]) -> list[str]:
        duplicates = sorted({op for op in ops if ops.count(op) > 1})
        if duplicates:
            raise ValueError(f"'{duplicates[0]}' is listed twice")
        return ops

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"both betas must be in [0, 1) (got {list(betas)})")
        return betas


class SampleParams(PluginParams):
    """Options at sampling time (``raresynth sample RUN truncation_psi=0.7``)."""

    truncation_psi: float = Field(1.0, ge=0, le=2, description="Truncation in W ([SG1] appendix B): w = w_avg + psi (w - w_avg); 1: none.")
    truncation_cutoff: int | None = Field(None, ge=1, description="Truncate only the first N ws (coarse layers); None: all.")
    noise_mode: Literal["const", "random", "none"] = Field("const", description="Per-layer noise: fixed, drawn per seed, or off.")


@dataclass(frozen=True)
class Settings:
    """The options with the preset applied: what the backend builds and trains with."""

    mapping_layers: int
    channel_base: int
    lr_g: float
    lr_d: float
    ema_kimg: float | None  # None: auto (global batch * 10 / 32 kimg), known at the first step
    ema_rampup: float


def resolve(params: StyleGAN2ADAParams, resolution: int) -> Settings:
    """Fill the options left at None from the preset ([ADA] appendix D)."""
    if params.preset == "auto":
        defaults = {"mapping_layers": 2, "channel_base": 32768 if resolution >= 512 else 16384,
                    "lr": 0.002 if resolution >= 1024 else 0.0025, "ema_kimg": None, "ema_rampup": 0.05}
    else:  # paper
        defaults = {"mapping_layers": 8, "channel_base": 32768 if resolution >= 512 else 16384,
                    "lr": 0.002 if resolution >= 1024 else 0.0025, "ema_kimg": 10.0 if resolution >= 1024 else 20.0, "ema_rampup": 0.0}

    def pick(value, default):
        return default if value is None else value

    return Settings(
        mapping_layers=pick(params.mapping_layers, defaults["mapping_layers"]),
        channel_base=pick(params.channel_base, defaults["channel_base"]),
        lr_g=pick(params.lr_g, defaults["lr"]),
        lr_d=pick(params.lr_d, defaults["lr"]),
        ema_kimg=pick(params.ema_kimg, defaults["ema_kimg"]),
        ema_rampup=pick(params.ema_rampup, defaults["ema_rampup"]),
    )


def auto_ema_kimg(global_batch: int) -> float:
    """The ``auto`` G_ema half-life in kimg: global batch * 10 / 32 ([ADA] appendix D; 10 kimg at batch 32)."""
    return global_batch * 10 / 32


def recommended_batch(resolution: int, preset: str = "auto", gpus: int = 1) -> int:
    """The preset's global batch size (set it as the run's ``batch_size``)."""
    if preset == "paper":
        return 32 if resolution >= 1024 else 64
    return max(min(gpus * min(4096 // resolution, 32), 64), gpus)


def recommended_r1_gamma(resolution: int, preset: str = "auto", batch: int | None = None) -> float:
    """The preset's R1 gamma (``auto`` is what the ``r1`` regularizer's ``gamma: auto`` computes)."""
    if preset == "paper":
        return {256: 1.0, 512: 0.5, 1024: 2.0}.get(resolution, 1.0)
    batch = batch or recommended_batch(resolution)
    return 0.0002 * resolution**2 / batch

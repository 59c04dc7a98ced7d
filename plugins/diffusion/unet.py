"""The denoising network: a diffusers ``UNet2DModel`` from a preset plus overrides.

A UNet of ``len(block_out_channels)`` levels works on feature maps of the image size
at level 0, halving at every level below (Ronneberger et al. 2015; the DDPM variant
of Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020, Appendix B).
``attention_resolutions`` names the feature-map sizes whose levels get self-attention
(``AttnDownBlock2D`` and the matching ``AttnUpBlock2D``), as in the DDPM paper.

Presets (``generator.preset``):

``tiny``
    2 levels of 32 and 64 channels, 1 residual block each, no attention: CPU tests
    and smoke runs at 8 to 32 pixels.
``32``
    Ho et al. 2020's CIFAR-10 model: 128 channels x (1, 2, 2, 2), 2 residual blocks
    per level, attention at 16x16, dropout 0.1 (35.7M parameters).
``64``
    The default UNet of diffusers' ``train_unconditional`` example: channels
    (128, 128, 256, 256, 512, 512), 2 blocks per level, attention on the fifth level
    (4x4 at 64 pixels).
``128``, ``256``
    The same six levels with attention on the fifth level (8x8 and 16x16), as in
    the ``google/ddpm-*-256`` models.

The module only computes the ``UNet2DModel`` keyword arguments (plain data) and
checks them; diffusers is imported where a network is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raresynth import ConfigError, DataSpec


@dataclass(frozen=True)
class Preset:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]  # absolute feature-map sizes, at the preset's own resolution
    dropout: float = 0.0
    norm_num_groups: int = 32
    mid_attention: bool = True
    resolution: int | None = None  # the image size the preset is made for (None: any)


PRESETS: dict[str, Preset] = {
    "tiny": Preset((32, 64), 1, (), norm_num_groups=8, mid_attention=False),
    "32": Preset((128, 256, 256, 256), 2, (16,), dropout=0.1, resolution=32),
    "64": Preset((128, 128, 256, 256, 512, 512), 2, (4,), resolution=64),
    "128": Preset((128, 128, 256, 256, 512, 512), 2, (8,), resolution=128),
    "256": Preset((128, 128, 256, 256, 512, 512), 2, (16,), resolution=256),
}

#: Options that change the architecture (they cannot be combined with ``init_from``).
ARCHITECTURE_FIELDS = ("block_out_channels", "layers_per_block", "attention_resolutions", "norm_num_groups", "mid_attention")


def feature_sizes(resolution: int, levels: int) -> list[int]:
    """Feature-map size of each level: ``resolution`` halved once per level below the top."""
    return [resolution >> level for level in range(levels)]


def unet_kwargs(params: Any, spec: DataSpec, num_class_embeds: int | None) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for ``params`` (a ``DDPMParams``) and the data.

    Raises :class:`raresynth.ConfigError` naming the ``generator.*`` field when the
    network cannot be built for this data.
    """
    name = params.preset
    if name == "auto":
        name = str(spec.resolution)
        if name not in PRESETS and params.block_out_channels is not None:
            name = "custom"  # no preset for this size, but the user gave the levels: plain defaults for the rest
        elif name not in PRESETS:
            sized = ", ".join(f"'{key}'" for key, preset in PRESETS.items() if preset.resolution)
            raise ConfigError(
                f"generator.preset: auto finds no UNet preset for {spec.resolution}x{spec.resolution} images (presets for "
                f"{sized} pixels); set generator.preset: tiny, or give generator.block_out_channels and attention_resolutions"
            )
    preset = PRESETS.get(name) or Preset(tuple(params.block_out_channels), 2, ())
    channels = tuple(params.block_out_channels or preset.block_out_channels)
    levels = len(channels)
    layers = params.layers_per_block or preset.layers_per_block
    groups = params.norm_num_groups or preset.norm_num_groups
    dropout = preset.dropout if params.dropout is None else params.dropout
    mid_attention = preset.mid_attention if params.mid_attention is None else params.mid_attention
    if params.attention_resolutions is not None:
        attention = tuple(params.attention_resolutions)
    elif preset.resolution is not None and params.block_out_channels is None:
        # the preset's attention levels, wherever the image size puts them
        scale = spec.resolution / preset.resolution
        attention = tuple(int(size * scale) for size in preset.attention_resolutions)
    else:
        attention = preset.attention_resolutions

    what = f"preset '{name}'" if params.block_out_channels is None else "generator.block_out_channels"
    field = "generator.preset" if params.block_out_channels is None else "generator.block_out_channels"
    smallest = spec.resolution >> (levels - 1)
    if smallest < 1 or spec.resolution % (1 << (levels - 1)):
        raise ConfigError(
            f"{field}: {what} has {levels} levels ({levels - 1} halvings), which needs images of at least "
            f"{1 << (levels - 1)}x{1 << (levels - 1)} pixels; the data is {spec.resolution}x{spec.resolution} "
            f"(data.resolution). Use preset: auto, preset: tiny, or fewer block_out_channels"
        )
    bad = [c for c in channels if c % groups]
    if bad:
        raise ConfigError(
            f"generator.norm_num_groups: {groups} group(s) do not divide {bad[0]} channels (block_out_channels "
            f"{list(channels)}); choose a norm_num_groups that divides every entry"
        )
    sizes = feature_sizes(spec.resolution, levels)
    unknown = [size for size in attention if size not in sizes]
    if unknown:
        raise ConfigError(
            f"generator.attention_resolutions: {unknown[0]} is not a feature-map size of this UNet at "
            f"{spec.resolution}x{spec.resolution} pixels (its sizes: {', '.join(map(str, sizes))})"
        )
    down = tuple("AttnDownBlock2D" if size in attention else "DownBlock2D" for size in sizes)
    up = tuple("AttnUpBlock2D" if size in attention else "UpBlock2D" for size in reversed(sizes))
    return {
        "sample_size": spec.resolution,
        "in_channels": spec.channels,
        "out_channels": spec.channels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "dropout": dropout,
        "norm_num_groups": groups,
        "add_attention": mid_attention,
        "num_class_embeds": num_class_embeds,
    }


def build_unet(kwargs: dict[str, Any]):
    from diffusers import UNet2DModel

    return UNet2DModel(**kwargs)


def pretrained_unet(folder: str, spec: DataSpec, num_class_embeds: int | None, dropout: float | None):
    """A ``UNet2DModel`` initialized from a diffusers folder, adapted to this data.

    ``folder`` is a UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
    or a pipeline folder with a ``unet/`` subfolder (what ``DDPMPipeline.save_pretrained``
    and this plugin's export write). The architecture comes from the folder; the image
    size and the class embedding follow this run's data: a class embedding the folder
    lacks, or one with another number of classes, starts afresh.
    """
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    path = Path(folder).expanduser()
    if (path / "model_index.json").is_file() or ((path / "unet").is_dir() and not (path / "config.json").is_file()):
        path = path / "unet"
    config_file, weights_file = path / "config.json", path / "diffusion_pytorch_model.safetensors"
    if not config_file.is_file():
        raise ConfigError(f"generator.init_from: {folder}: no diffusers UNet here (no config.json, no unet/config.json)")
    if not weights_file.is_file():
        raise ConfigError(
            f"generator.init_from: {path}: no diffusion_pytorch_model.safetensors; only safetensors weights are read "
            "(convert a .bin file with UNet2DModel.from_pretrained(...).save_pretrained(..., safe_serialization=True))"
        )
    config = dict(UNet2DModel.load_config(str(path)))
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"generator.init_from: {path} holds a {config['_class_name']}, not a UNet2DModel")
    for key in ("in_channels", "out_channels"):
        if config.get(key) != spec.channels:
            raise ConfigError(
                f"generator.init_from: the pretrained UNet has {key}={config.get(key)}, the data has {spec.channels} "
                "channel(s) (data.channels)"
            )
    levels = len(config["block_out_channels"])
    if spec.resolution % (1 << (levels - 1)):
        raise ConfigError(
            f"generator.init_from: the pretrained UNet has {levels} levels and needs images of a multiple of "
            f"{1 << (levels - 1)} pixels; the data is {spec.resolution}x{spec.resolution}"
        )
    config.update(sample_size=spec.resolution, num_class_embeds=num_class_embeds, class_embed_type=None)
    if dropout is not None:
        config["dropout"] = dropout
    unet = UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    weights = load_file(str(weights_file))
    own = unet.state_dict()
    for key in [k for k in weights if k.startswith("class_embedding.")]:
        if key not in own or own[key].shape != weights[key].shape:
            del weights[key]  # another number of classes (or none): that embedding starts afresh
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("class_embedding.")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ConfigError(f"generator.init_from: {weights_file} does not match its config.json (weight '{first}' "
                          f"{'missing' if missing else 'unexpected'})")
    return unet

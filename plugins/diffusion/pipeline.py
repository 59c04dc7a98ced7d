"""Export to, and the file layout of, a diffusers ``DDPMPipeline`` folder.

:func:`export_pipeline` writes a trained run's EMA network and a scheduler as the
folder ``diffusers.DDPMPipeline.from_pretrained(folder)`` loads offline::

    model_index.json                      pipeline class and its two components
    unet/config.json                      UNet2DModel architecture
    unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json       DDPMScheduler (or DDIM, DPM-Solver++) with the run's schedule
    raresynth.json                        where it came from: run, checkpoint, kimg, classes

For the same seed and scheduler the pipeline makes the image ``raresynth sample``
makes (up to floating-point rounding)::

    pipe = DDPMPipeline.from_pretrained(folder)
    image = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, output_type="np").images[0]

The same folder (or its ``unet/`` subfolder) initializes fine-tuning:
``generator: {name: ddpm, init_from: folder}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raresynth import ConfigError, RunDirError, load_run_generator

from .samplers import SCHEDULERS, make_scheduler


def export_pipeline(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    scheduler: str = "ddpm",
    overwrite: bool = False,
    registry: Any = None,
) -> Path:
    """Write ``run_dir``'s EMA network (latest checkpoint by default) as a ``DDPMPipeline`` folder.

    ``scheduler`` ("ddpm", "ddim" or "dpmsolver++") is the scheduler the pipeline
    loads with. Returns ``out_dir``. Raises :class:`raresynth.RunDirError` when the run
    is not a ``ddpm`` run or ``out_dir`` holds files (unless ``overwrite``).
    """
    from diffusers import DDPMPipeline

    from .backend import DDPM

    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler: unknown scheduler '{scheduler}'; choose one of {', '.join(SCHEDULERS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise RunDirError(f"{out}: already exists and is not empty; choose another folder or pass --overwrite")
    generator, config, checkpoint, progress = load_run_generator(Path(run_dir), Path(checkpoint) if checkpoint else None, registry)
    if not isinstance(generator, DDPM):
        raise RunDirError(f"{run_dir}: a '{config.generator.name}' run; only diffusion (ddpm) runs export to a diffusers pipeline")
    pipe = DDPMPipeline(unet=generator.export_unet(), scheduler=make_scheduler(scheduler, generator.schedule))
    pipe.save_pretrained(str(out), safe_serialization=True)
    spec = generator.spec
    info = {
        "exported_by": "raresynth.plugins.diffusion",
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": Path(checkpoint).name,
        "kimg": progress["nimg"] / 1000,
        "weights": "ema",
        "scheduler": scheduler,
        "resolution": spec.resolution,
        "channels": spec.channels,
        "class_names": list(spec.class_names) if generator.num_classes else [],
        # class-conditional UNets take class_labels=...; DDPMPipeline passes none, so sample them with a loop
        # of your own (or raresynth sample); the null (unconditional) class is this index:
        "null_class": generator.null_label if generator.num_classes else None,
        "generator_params": config.generator.params,
    }
    (out / "raresynth.json").write_text(json.dumps(info, indent=1))
    return out


def is_conditional_export(folder: str | Path) -> bool:
    info = Path(folder) / "raresynth.json"
    return info.is_file() and json.loads(info.read_text()).get("null_class") is not None

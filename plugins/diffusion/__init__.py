"""Built-in plugin ``diffusion``: the denoising diffusion baseline, on Hugging Face diffusers.

Registers the generator ``ddpm`` (:class:`DDPM`): a diffusers ``UNet2DModel`` trained
with a ``DDPMScheduler`` noise schedule inside the core's training loop, sampled with
DDPM, DDIM or DPM-Solver++ (``raresynth sample RUN scheduler=ddim steps=50``).

A trained run exports to a folder ``diffusers.DDPMPipeline.from_pretrained`` loads::

    from raresynth.plugins.diffusion import export_pipeline
    export_pipeline("runs/ddpm", "exported/ddpm")
    # or: python -m raresynth.plugins.diffusion.export runs/ddpm exported/ddpm

diffusers is imported only when a network or scheduler is built, so loading the
plugin stays cheap for runs of other backends.
"""

from raresynth import hookimpl

from .backend import DDPM, DDPMParams, DDPMSampleParams
from .pipeline import export_pipeline

__all__ = ["DDPM", "DDPMParams", "DDPMSampleParams", "export_pipeline"]


@hookimpl
def raresynth_register_generators(register):
    register("ddpm", DDPM)

"""Noise schedules and samplers, all from diffusers.

Training uses ``DDPMScheduler`` for the forward process (Ho et al. 2020, eq. 4:
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps). Sampling runs one of three reverse
processes over the same schedule:

``ddpm``
    ancestral sampling (Ho et al. 2020, Algorithm 2), 1000 steps by default.
``ddim``
    Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021: 50 steps
    by default, deterministic for ``eta = 0``.
``dpmsolver++``
    Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", 2022: the second-order multistep solver, 25 steps by
    default.

Noise draws follow ``diffusers.DDPMPipeline`` exactly: each image has its own CPU
``torch.Generator`` seeded with its seed, which draws the initial noise and then
every noise term a scheduler step asks for. An image therefore depends on its seed
only, and equals what the exported pipeline makes for
``generator=torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: ``beta_schedule`` names of the config -> diffusers' names.
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # cosine: Nichol & Dhariwal 2021, eq. 17
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}  # v: Salimans & Ho 2022, "Progressive Distillation", sec. 4
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpmsolver++": 25}
SCHEDULERS = tuple(DEFAULT_STEPS)


def schedule_config(num_train_timesteps: int, beta_schedule: str, prediction: str) -> dict[str, Any]:
    """The options every scheduler of a run shares (the rest are each scheduler's defaults)."""
    return {
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": BETA_SCHEDULES[beta_schedule],
        "prediction_type": PREDICTIONS[prediction],
    }


def make_scheduler(name: str, config: dict[str, Any]):
    """A fresh diffusers scheduler ``name`` ("ddpm", "ddim", "dpmsolver++") for the run's schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddpm":
        return DDPMScheduler(**config)
    if name == "ddim":
        return DDIMScheduler(**config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")


def set_distinct_timesteps(scheduler: Any, steps: int) -> None:
    """``scheduler.set_timesteps`` with at most ``steps`` steps, none repeated.

    Near the training schedule's length (``steps`` close to ``num_train_timesteps``)
    diffusers' spacing repeats a timestep, and DPM-Solver++ then divides by a zero step
    size and returns NaN images; fewer, distinct steps are taken instead.
    """
    steps = max(1, min(steps, int(scheduler.config.num_train_timesteps)))
    while True:
        scheduler.set_timesteps(steps)
        if steps == 1 or len(set(scheduler.timesteps.tolist())) == len(scheduler.timesteps):
            return
        steps -= 1


@torch.no_grad()
def denoise(
    unet: torch.nn.Module,
    scheduler: Any,
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    steps: int,
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run ``scheduler``'s reverse process from per-seed noise; return x_0 in [-1, 1].

    With ``guidance_scale`` w other than 1, classifier-free guidance (Ho & Salimans,
    "Classifier-Free Diffusion Guidance", 2022, eq. 6):
    out = out(x, null) + w * (out(x, y) - out(x, null)), in one batched forward pass.
    """
    from diffusers.utils.torch_utils import randn_tensor

    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    # as DDPMPipeline.__call__: the initial noise, then the scheduler's steps with the same generators
    x = randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=dtype)
    set_distinct_timesteps(scheduler, steps)
    step_options = {"eta": eta} if eta else {}
    guided = guidance_scale != 1.0
    if labels is not None:
        labels = labels.to(device)
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, null_label)])
    for t in scheduler.timesteps:
        model_input = torch.cat([x, x]) if guided else x
        out = unet(model_input, t, class_labels=labels).sample
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(out, t, x, generator=generators, **step_options).prev_sample
    return x.clamp(-1, 1)

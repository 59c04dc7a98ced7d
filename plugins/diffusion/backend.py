"""The ``ddpm`` backend: a denoising diffusion model on diffusers' UNet and schedulers.

Training (Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
Algorithm 1): draw t ~ U{0..T-1} and eps ~ N(0, I), form
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and regress the network's output on
eps (``prediction: epsilon``) or on v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(``prediction: v``; Salimans & Ho, "Progressive Distillation for Fast Sampling of
Diffusion Models", ICLR 2022, sec. 4) with the mean squared error.

Min-SNR loss weighting (Hang et al., "Efficient Diffusion Training via Min-SNR
Weighting Strategy", ICCV 2023, eq. 9 and sec. 3.4), with SNR(t) = abar_t / (1 - abar_t):
w(t) = min(SNR, gamma) / SNR for epsilon prediction, min(SNR, gamma) / (SNR + 1) for v.

Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022):
a conditional model sees its class label replaced by an extra "null" class with
probability ``p_uncond``; at sampling, out = out_null + w (out_label - out_null).

EMA of the weights with warm-up (the decay schedule of diffusers' ``EMAModel``,
after K. Crowson): decay(k) = min(max_decay, 1 - (1 + k / inv_gamma)^-power) at the
k-th update (k counted from 0); power 3/4 reaches 0.999 after 10k steps.

Randomness: noise, timesteps, label dropout, dropout and augmentation all come from
torch's global RNG, which the core reseeds before every step, so a resumed run
continues exactly. Sampling uses one ``torch.Generator`` per seed (see
:mod:`.samplers`), exactly as ``diffusers.DDPMPipeline`` does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator

from raresynth import Batch, ConfigError, DataSpec, Generator, PenaltyInputs, PluginParams, Progress, Regularizer

from .augment import augment
from .samplers import DEFAULT_STEPS, denoise, make_scheduler, schedule_config
from .unet import ARCHITECTURE_FIELDS, PRESETS, build_unet, pretrained_unet, unet_kwargs

SAMPLE_CHUNK = 64  # images denoised in one batch (x2 with guidance)


class DDPMParams(PluginParams):
    # -- network: a diffusers UNet2DModel (see raresynth.plugins.diffusion.unet) --
    preset: Literal["auto", "tiny", "32", "64", "128", "256"] = "auto"  # auto: the preset for data.resolution
    block_out_channels: tuple[int, ...] | None = None  # None: the preset's; one entry per level
    layers_per_block: int | None = Field(None, ge=1)  # residual blocks per level
    attention_resolutions: tuple[int, ...] | None = None  # feature-map sizes with self-attention
    dropout: float | None = Field(None, ge=0, lt=1)
    norm_num_groups: int | None = Field(None, ge=1)  # GroupNorm groups; must divide every block_out_channels entry
    mid_attention: bool | None = None  # self-attention in the middle block
    init_from: str | None = None  # a diffusers UNet or pipeline folder to fine-tune (architecture from there)
    conditional: bool | Literal["auto"] = "auto"  # class-conditional when the data has labels
    p_uncond: float = Field(0.1, ge=0, lt=1)  # label dropout for classifier-free guidance; 0: no guidance
    # -- diffusion --
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "cosine"] = "linear"  # linear: Ho et al. 2020; cosine: Nichol & Dhariwal 2021
    prediction: Literal["epsilon", "v"] = "epsilon"
    min_snr_gamma: float | None = Field(None, gt=0)  # e.g. 5 (Hang et al. 2023); None: unweighted MSE
    # -- optimization: AdamW (defaults of diffusers' train_unconditional example) --
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = Field(1e-6, ge=0)
    adam_eps: float = Field(1e-8, gt=0)
    lr_warmup_steps: int = Field(500, ge=0)  # linear warm-up from 0 over this many steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 at the end of the kimg budget
    max_grad_norm: float | None = Field(1.0, gt=0)  # gradient clipping; None: off
    # -- EMA of the weights (sampling and export use the EMA) --
    ema_max_decay: float = Field(0.9999, ge=0, lt=1)  # 0: no averaging
    ema_power: float = Field(0.75, gt=0)
    ema_inv_gamma: float = Field(1.0, gt=0)
    # -- augmentation of the training images (see raresynth.plugins.diffusion.augment) --
    aug_hflip: bool = False
    aug_vflip: bool = False
    aug_translate: float = Field(0.0, ge=0, le=0.5)  # max shift, fraction of the image size
    aug_rotate: float = Field(0.0, ge=0, le=180)  # max rotation in degrees
    aug_scale: float = Field(0.0, ge=0, lt=1)  # scale factor in [1/(1+s), 1+s]
    aug_p: float = Field(1.0, ge=0, le=1)  # probability of the geometric transform per image
    # -- speed (CUDA) --
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA
    compile: bool = False  # torch.compile the UNet's training forward pass

    @field_validator("block_out_channels")
    @classmethod
    def _channels(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError(f"need one positive channel count per UNet level (got {list(value)})")
        return value


class DDPMSampleParams(PluginParams):
    scheduler: Literal["ddpm", "ddim", "dpmsolver++"] = "dpmsolver++"
    steps: int | None = Field(None, ge=1)  # None: 1000 (or num_train_timesteps) for ddpm, 50 for ddim, 25 for dpmsolver++
    guidance_scale: float = Field(1.0, ge=0)  # classifier-free guidance w; 1: none (needs a conditional model otherwise)
    eta: float = Field(0.0, ge=0, le=1)  # DDIM's eta (0: deterministic); ddim only

    @field_validator("eta")
    @classmethod
    def _eta_is_ddim(cls, value: float, info: ValidationInfo) -> float:
        if value and info.data.get("scheduler") != "ddim":
            raise ValueError(f"eta applies to scheduler ddim only (scheduler is {info.data.get('scheduler')})")
        return value


def ema_decay(update: int, max_decay: float, power: float, inv_gamma: float) -> float:
    """The EMA decay at the ``update``-th update (0-based): 0 at first, rising to ``max_decay``."""
    if update <= 0:
        return 0.0
    return min(max_decay, max(0.0, 1 - (1 + update / inv_gamma) ** -power))


class DDPM(Generator):
    Params = DDPMParams
    SampleParams = DDPMSampleParams
    #: Regularizers of role "generator" see the denoiser as ``model`` (called as
    #: ``model(x_t, t, class_labels=...)``), the clean batch as ``real`` and the
    #: denoised estimate of x_0 as ``fake``.
    regularizer_roles = frozenset({"generator"})

    def __init__(self, params: DDPMParams, spec: DataSpec, regularizers: Sequence[Regularizer] = ()):
        super().__init__(params, spec, regularizers)
        p = params
        conditional = spec.num_classes > 0 if p.conditional == "auto" else p.conditional
        if conditional and not spec.num_classes:
            raise ConfigError("generator.conditional: true, but the data has no labels; set data.labels or conditional: false")
        self.num_classes = spec.num_classes if conditional else 0
        self.null_label = self.num_classes  # the extra "no class" index of classifier-free guidance
        num_class_embeds = self.num_classes + 1 if self.num_classes else None
        if p.init_from is not None:
            fixed = [name for name in ARCHITECTURE_FIELDS if getattr(p, name) is not None]
            if fixed or p.preset != "auto":
                first = fixed[0] if fixed else "preset"
                raise ConfigError(f"generator.{first}: the architecture comes from generator.init_from ({p.init_from}); "
                                  "remove the architecture options")
            self.unet_kwargs = None
        else:
            self.unet_kwargs = unet_kwargs(p, spec, num_class_embeds)
        self.num_class_embeds = num_class_embeds
        self.schedule = schedule_config(p.num_train_timesteps, p.beta_schedule, p.prediction)

    # -- set-up -------------------------------------------------------------

    def setup(self, accelerator) -> None:
        p, device = self.params, accelerator.device
        if p.init_from is not None:
            unet = pretrained_unet(p.init_from, self.spec, self.num_class_embeds, p.dropout)
        else:
            unet = build_unet(self.unet_kwargs)
        self.channels_last = device.type == "cuda" if p.channels_last == "auto" else p.channels_last
        unet = unet.to(device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        # the EMA copy is made before `prepare`, which may patch the module's forward
        self.ema = copy.deepcopy(unet).eval().requires_grad_(False)
        unet.train()
        opt = torch.optim.AdamW(unet.parameters(), lr=p.lr, betas=p.betas, weight_decay=p.weight_decay, eps=p.adam_eps,
                                fused=True if device.type == "cuda" else None)
        self.unet, self.opt = accelerator.prepare(unet, opt)
        # compile the (possibly DDP-wrapped) training forward only; sampling and state use the plain modules
        self.forward = torch.compile(self.unet) if p.compile else self.unet
        self.accelerator = accelerator
        self.noise_scheduler = make_scheduler("ddpm", self.schedule)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(device)
        self.steps = 0
        self.ema_params = list(self.ema.parameters())
        self.live_params = list(accelerator.unwrap_model(self.unet).parameters())

    # -- training -----------------------------------------------------------

    def learning_rate(self, progress: Progress) -> float:
        """Linear warm-up over ``lr_warmup_steps``, then constant or cosine to 0 at the budget's end."""
        p = self.params
        lr = p.lr * min(1.0, (progress.step + 1) / p.lr_warmup_steps) if p.lr_warmup_steps else p.lr
        if p.lr_schedule == "cosine" and progress.total_kimg > 0:
            done = min(1.0, progress.nimg / (progress.total_kimg * 1000))
            lr *= 0.5 * (1 + math.cos(math.pi * done))
        return lr

    def _train_labels(self, batch: Batch) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        labels = batch.labels
        if self.params.p_uncond:
            dropped = torch.rand(labels.shape, device=labels.device) < self.params.p_uncond
            labels = torch.where(dropped, torch.full_like(labels, self.null_label), labels)
        return labels

    def train_step(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        acc, p = self.accelerator, self.params
        images = batch.images
        if p.aug_hflip or p.aug_vflip or p.aug_translate or p.aug_rotate or p.aug_scale:
            images = augment(images, p.aug_hflip, p.aug_vflip, p.aug_translate, p.aug_rotate, p.aug_scale, p.aug_p)
        n = images.shape[0]
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, p.num_train_timesteps, (n,), device=images.device)
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        target = noise if p.prediction == "epsilon" else self.noise_scheduler.get_velocity(images, noise, timesteps)
        labels = self._train_labels(batch)
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with acc.autocast():
            out = self.forward(noisy, timesteps, class_labels=labels).sample
        per_image = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if p.min_snr_gamma is not None:
            abar = self.alphas_cumprod[timesteps]
            snr = abar / (1 - abar)
            clipped = snr.clamp(max=p.min_snr_gamma)
            per_image = per_image * (clipped / snr if p.prediction == "epsilon" else clipped / (snr + 1))
        loss = per_image.mean()
        penalty, stats = self._penalties(images, noisy, timesteps, out, labels)

        lr = self.learning_rate(progress)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss + penalty)
        if p.max_grad_norm is not None:
            stats["grad_norm"] = acc.clip_grad_norm_(self.live_params, p.max_grad_norm).detach()
        self.opt.step()
        self._update_ema()
        # device tensors only: a Python float would make the core copy it to the GPU (a host sync) every step
        return {"loss": loss.detach(), "lr": torch.full((), lr, device=acc.device), **stats}

    def _penalties(self, real, noisy, timesteps, out, labels) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        due = [reg for reg in self.regularizers if reg.role == "generator" and reg.due(self.steps)]
        if not due:
            return 0.0, {}
        # the denoised estimate of x_0 (Ho et al. 2020, eq. 15; for v: x_0 = sqrt(abar) x_t - sqrt(1 - abar) v)
        abar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        out, noisy = out.float(), noisy.float()
        if self.params.prediction == "epsilon":
            x0 = (noisy - (1 - abar).sqrt() * out) / abar.sqrt()
        else:
            x0 = abar.sqrt() * noisy - (1 - abar).sqrt() * out
        total, stats = 0.0, {}
        model = self.accelerator.unwrap_model(self.unet)
        for reg in due:
            value = reg.penalty(PenaltyInputs(step=self.steps, model=model, real=real, fake=x0, labels=labels))
            total = total + value
            stats[f"penalty_{reg.name}"] = value.detach()
        return total, stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        p = self.params
        decay = ema_decay(self.steps, p.ema_max_decay, p.ema_power, p.ema_inv_gamma)
        torch._foreach_lerp_(self.ema_params, self.live_params, 1.0 - decay)
        self.steps += 1

    # -- sampling -----------------------------------------------------------

    def check_sample_options(self, options: DDPMSampleParams, have_labels: bool) -> int:
        """Refuse what the model cannot do; return the number of steps."""
        T = self.params.num_train_timesteps
        steps = options.steps or min(DEFAULT_STEPS[options.scheduler], T)
        if steps > T:
            raise ConfigError(f"sample option.steps: {steps} steps, but the model was trained with {T} timesteps "
                              f"(generator.num_train_timesteps); use at most {T}")
        if options.guidance_scale != 1.0:
            if not self.num_classes:
                raise ConfigError(
                    "sample option.guidance_scale: classifier-free guidance needs a class-conditional model, but this run "
                    "was trained without labels (unlabelled data or generator.conditional: false); leave guidance_scale at 1"
                )
            if not have_labels:
                raise ConfigError("sample option.guidance_scale: classifier-free guidance needs class labels to guide "
                                  "towards; give labels (raresynth sample --label) or leave guidance_scale at 1")
            if not self.params.p_uncond:
                raise ConfigError("sample option.guidance_scale: the model was trained without label dropout "
                                  "(generator.p_uncond: 0), so it has no unconditional output to guide with; "
                                  "leave guidance_scale at 1")
        return steps

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], labels: torch.Tensor | None = None, options: PluginParams | None = None) -> torch.Tensor:
        options = options if options is not None else DDPMSampleParams()
        have_labels = labels is not None and self.num_classes > 0
        steps = self.check_sample_options(options, have_labels)
        if self.num_classes:
            if labels is None:
                if not self.params.p_uncond:
                    raise ConfigError("this class-conditional model needs labels to sample (it was trained with p_uncond: 0)")
                labels = torch.full((len(seeds),), self.null_label, dtype=torch.int64)  # unconditional samples
            elif len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ConfigError(f"labels must be class indices 0..{self.num_classes - 1}")
        else:
            labels = None
        shape = (self.spec.channels, self.spec.resolution, self.spec.resolution)
        images = []
        for start in range(0, len(seeds), SAMPLE_CHUNK):
            chunk = list(seeds[start : start + SAMPLE_CHUNK])
            images.append(denoise(
                self.ema, make_scheduler(options.scheduler, self.schedule), chunk, shape, steps,
                labels=labels[start : start + len(chunk)] if labels is not None else None,
                null_label=self.null_label, guidance_scale=options.guidance_scale, eta=options.eta,
            ))
        return torch.cat(images).float()

    def export_unet(self):
        """A plain, contiguous CPU copy of the EMA network (for ``save_pretrained``)."""
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_config(self.ema.config)
        unet.load_state_dict({key: value.detach().cpu().contiguous() for key, value in self.ema.state_dict().items()})
        return unet.eval()

    # -- state --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.accelerator.unwrap_model(self.unet).state_dict(),
            "ema": self.ema.state_dict(),
            "steps": self.steps,
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accelerator.unwrap_model(self.unet).load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.steps = int(state["steps"])
        self.opt.load_state_dict(state["opt"])
        # options may change on resume: the saved optimizer settings must not win (lr is set every step)
        p = self.params
        for group in self.opt.param_groups:
            group.update(betas=p.betas, weight_decay=p.weight_decay, eps=p.adam_eps)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.accelerator.unwrap_model(self.unet), "ema": self.ema}


__all__ = ["DDPM", "DDPMParams", "DDPMSampleParams", "PRESETS", "ema_decay"]

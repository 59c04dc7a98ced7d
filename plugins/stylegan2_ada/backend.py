"""The ``stylegan2_ada`` backend: StyleGAN2 (Karras et al., CVPR 2020, [SG2]) trained
with adaptive discriminator augmentation (Karras et al., NeurIPS 2020, [ADA]).

One training step, in the order of the phases of [SG2] appendix B::

    D main   fakes from G (no grad); D(aug(real)), D(aug(fake)) in one DDP pass;
             non-saturating logistic loss; ADA records sign(D(aug(real))).
    D reg    every regularizer of role "discriminator" that is due (lazy), in a
             separate pass and optimizer step: PenaltyInputs.model is
             ``model(images, labels) = D(aug(images), labels)``, "D as it is trained".
    G main   D(aug(G(z))) with D's weights frozen for this pass; non-saturating loss.
    G reg    path length regularization (every ``pl_interval`` steps) and every due
             regularizer of role "generator", in a separate pass and step.
    EMA      G_ema <- lerp towards G with a half-life of ``ema_kimg`` thousand images.

The backend has no R1 code: R1 is the ``r1`` regularizer plugin and reaches D only
through :class:`raresynth.PenaltyInputs`, like any third-party regularizer (LeCam
too). Augmentations other than its own ADA (DiffAugment, ...) are regularizers of
role ``"augment"`` (:class:`raresynth.Augmentation`), applied after ADA to every
image D sees; ``augment: none`` with ``diffaugment`` replaces ADA by config alone. The
Adam settings are corrected for the lazy passes from the regularizers' ``interval``
(:func:`.loss.lazy_adam`), whatever the regularizers are.

Several processes (Accelerate): the main passes go through the DDP-wrapped G and D
from ``accelerator.prepare`` (gradients all-reduced during backward). The
regularization passes differentiate twice (w.r.t. the inputs, then the weights),
which DDP does not follow, so they use the unwrapped networks and all-reduce the
gradients explicitly, in one flat collective per pass. ADA's r_t and the path
length mean are summed over processes too: every rank holds the same p, the same
weights and the same optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raresynth import (
    Batch,
    ConfigError,
    Generator,
    PenaltyInputs,
    PluginParams,
    Progress,
    RaresynthError,
    RunDirError,
    list_checkpoints,
    load_state,
)

from .augment import AdaptiveP, AugmentPipe
from .loss import PathLengthPenalty, d_loss, g_loss, lazy_adam
from .networks import Discriminator, StyleGenerator
from .presets import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    SampleParams,
    StyleGAN2ADAParams,
    auto_ema_kimg,
    resolve,
)

#: What must match between a transfer-learning checkpoint and the new run.
ARCH_FIELDS = ("resolution", "channels", "num_classes", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
#: Where each architecture field is set, for error messages.
ARCH_FIELD_SOURCE = {"resolution": "data.resolution", "channels": "data.channels", "num_classes": "data.labels / generator.conditional"}
W_CENTER_SAMPLES = 4096  # latents averaged for the truncation centre
W_CENTER_SEED = 0x5EED


class StyleGAN2ADA(Generator):
    Params = StyleGAN2ADAParams
    SampleParams = SampleParams
    regularizer_roles = frozenset({"discriminator", "generator", "augment"})

    def __init__(self, params: StyleGAN2ADAParams, spec, regularizers=()):
        super().__init__(params, spec, regularizers)
        res = spec.resolution
        if not (MIN_RESOLUTION <= res <= MAX_RESOLUTION) or res & (res - 1):
            raise ConfigError(f"data.resolution: stylegan2_ada needs a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION} (got {res})")
        blocks = int(math.log2(res)) - 2
        if params.freeze_d > blocks:
            raise ConfigError(f"generator.freeze_d: D has {blocks} blocks at {res} px, cannot freeze {params.freeze_d}")
        if params.conditional is True and not spec.num_classes:
            raise ConfigError("generator.conditional: true, but the data has no labels; set data.labels or conditional: false")
        self.num_classes = spec.num_classes if params.conditional in ("auto", True) else 0
        self.settings = resolve(params, res)

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------

    def arch(self) -> dict[str, int]:
        p, s, spec = self.params, self.settings, self.spec
        return {"resolution": spec.resolution, "channels": spec.channels, "num_classes": self.num_classes, "z_dim": p.z_dim,
                "w_dim": p.w_dim, "mapping_layers": s.mapping_layers, "channel_base": s.channel_base, "channel_max": p.channel_max}

    def _precision(self, accelerator) -> str:
        """fp32, bf16 or fp16: the backend's ``precision``, or the run's when it sets one."""
        run = accelerator.mixed_precision  # "no", "bf16" or "fp16"
        cuda = accelerator.device.type == "cuda"
        if self.params.precision == "auto":
            mode = run if run != "no" else ("bf16" if cuda else "fp32")
        elif run != "no" and run != self.params.precision:
            raise ConfigError(f"generator.precision: {self.params.precision} conflicts with the run's precision: {run}; "
                              "set one of them, or generator.precision: auto")
        else:
            mode = self.params.precision
        if mode == "fp16" and not cuda:
            raise ConfigError("generator.precision: fp16 needs a CUDA GPU; use bf16 or fp32")
        return mode

    def setup(self, accelerator) -> None:
        p, s, spec = self.params, self.settings, self.spec
        self.accelerator = accelerator
        device = accelerator.device
        self.precision = self._precision(accelerator)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        # Accelerate scales the loss itself when the run's precision is fp16.
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and accelerator.mixed_precision != "fp16" else None
        conv_clamp = p.conv_clamp if p.conv_clamp is not None else (256.0 if self.precision == "fp16" else None)  # [ADA] D.2
        self.memory_format = torch.channels_last if (p.channels_last and device.type == "cuda") else torch.contiguous_format

        G = StyleGenerator(p.z_dim, p.w_dim, self.num_classes, spec.resolution, spec.channels, s.mapping_layers,
                           s.channel_base, p.channel_max, conv_clamp)
        D = Discriminator(spec.resolution, spec.channels, self.num_classes, s.channel_base, p.channel_max, p.mbstd_group, conv_clamp)
        for block in D.blocks[: p.freeze_d]:  # FreezeD (Mo et al. 2020): keep the first, most generic layers
            block.requires_grad_(False)
        G, D = G.to(memory_format=self.memory_format), D.to(memory_format=self.memory_format)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False).to(device)

        self.augment_pipe = AugmentPipe(p.augment_ops).to(device)
        self.ada = AdaptiveP(p.augment, p.augment_p, p.ada_target, p.ada_interval, p.ada_kimg)
        self.pl = PathLengthPenalty(p.pl_weight, p.pl_interval, p.pl_batch_shrink, p.pl_decay)

        # Lazy regularization: Adam corrected for the extra passes of each network.
        self.lr_g, self.betas_g = lazy_adam(s.lr_g, p.betas, self._lazy_intervals("generator"))
        self.lr_d, self.betas_d = lazy_adam(s.lr_d, p.betas, self._lazy_intervals("discriminator"))
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel for all parameters
        opt_g = torch.optim.Adam(G.parameters(), lr=self.lr_g, betas=self.betas_g, eps=1e-8, **fused)
        opt_d = torch.optim.Adam([q for q in D.parameters() if q.requires_grad], lr=self.lr_d, betas=self.betas_d, eps=1e-8, **fused)
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        self.G_net, self.D_net = accelerator.unwrap_model(self.G), accelerator.unwrap_model(self.D)
        self.D_trainable = [q for q in self.D_net.parameters() if q.requires_grad]

        # The passes, compiled when asked (regularization passes differentiate twice: never compiled).
        self.G_main, self.D_main, self.G_fakes, self.D_frozen = self.G, self.D, self.G_net, self.D_net
        if p.compile:
            # Static shapes: the path-length pass uses half the batch, and a dynamic-shape
            # recompile of the backward pass fails in Inductor ("Cannot convert expression
            # to float", torch 2.14); one static graph per batch size is what CUDA graphs want anyway.
            compiled = lambda module: torch.compile(module, mode=p.compile_mode, dynamic=False)  # noqa: E731
            self.G_main, self.D_main = compiled(self.G), compiled(self.D)
            self.G_fakes, self.D_frozen = compiled(self.G_net), compiled(self.D_net)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels

        self.d_steps = self.g_steps = 0
        self.started = False  # first train_step not taken yet (transfer learning happens there)
        self.state_loaded = False

    def _lazy_intervals(self, role: str) -> list[int]:
        intervals = [reg.interval for reg in self.regularizers if reg.role == role]
        if role == "generator" and self.pl.active:
            intervals.append(self.pl.interval)
        return intervals

    def _start(self, per_process_batch: int) -> None:
        """Once, before the first step: transfer weights (unless resuming) and fit mbstd to the batch."""
        if self.params.transfer and not self.state_loaded:
            self._load_transfer(self.params.transfer)
        # Groups must divide the per-process batch so the joint real+fake pass never mixes the two.
        group = max(d for d in range(1, min(self.params.mbstd_group, per_process_batch) + 1) if per_process_batch % d == 0)
        self.D_net.mbstd_group = group
        self.started = True

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=self.amp_dtype)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees: ADA's pipeline at the current p, then every configured augmentation
        (role "augment", e.g. DiffAugment), in config order."""
        images = self.augment_pipe(images, self.ada.p)
        for reg in self.regularizers:
            if reg.role == "augment":
                images = reg.augment(images)
        return images

    def _latents(self, n: int) -> dict[str, torch.Tensor | None]:
        """z, and for style mixing a second z and per-image cutoffs ([SG1] sec. 3.1)."""
        device, num_ws = self.accelerator.device, self.G_net.num_ws
        z = torch.randn(n, self.params.z_dim, device=device)
        if self.params.style_mixing <= 0:
            return {"z": z, "mix_z": None, "mix_cutoff": None}
        mix_z = torch.randn(n, self.params.z_dim, device=device)
        cutoff = torch.randint(1, num_ws, (n,), device=device)
        cutoff = torch.where(torch.rand(n, device=device) < self.params.style_mixing, cutoff, torch.full_like(cutoff, num_ws))
        return {"z": z, "mix_z": mix_z, "mix_cutoff": cutoff}

    def _d_model(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D as it is trained, for regularizers: logits of D(aug(images))."""
        with self._autocast():
            return self.D_net(self.augment(images.contiguous(memory_format=self.memory_format)), labels).float()

    def _g_model(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """G for regularizers of role "generator": images of G(z)."""
        with self._autocast():
            return self.G_net(z, labels).float()

    def _backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(self.scaler.scale(loss) if self.scaler is not None else loss)

    def _step(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="mean") if self.accelerator.num_processes > 1 else t

    def _sync_grads(self, module: torch.nn.Module) -> None:
        """Average the gradients of a pass that bypassed DDP, in one collective."""
        if self.accelerator.num_processes == 1:
            return
        params = [q for q in module.parameters() if q.grad is not None]
        if not params:
            return
        flat = self._mean(torch.cat([q.grad.flatten() for q in params]))
        for q, g in zip(params, flat.split([q.numel() for q in params])):
            q.grad.copy_(g.view_as(q.grad))

    def _penalties(self, role: str, step: int, **inputs: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        total, stats = None, {}
        for reg in self.regularizers:
            if reg.role == role and reg.due(step):
                value = reg.penalty(PenaltyInputs(step=step, **inputs))
                total = value if total is None else total + value
                stats[f"penalty_{reg.name}"] = value.detach()
        return total, stats

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def train_step(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor | float]:
        acc = self.accelerator
        n = batch.images.shape[0]
        if not self.started:
            self._start(n)
        real = batch.images.contiguous(memory_format=self.memory_format)
        labels = batch.labels if self.num_classes else None
        stats: dict[str, torch.Tensor | float] = {}

        # -- D main: reals and fakes, both augmented, in one pass --
        with torch.no_grad(), self._autocast():
            fake = self.G_fakes(**self._latents(n), labels=labels)
        with self._autocast():
            both = self.augment(torch.cat([real, fake.to(real.dtype)]))
            logits = self.D_main(both, torch.cat([labels, labels]) if labels is not None else None).float()
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = d_loss(real_logits, fake_logits)
        stats["ada_rt"] = self.ada.observe(real_logits)
        self.opt_d.zero_grad(set_to_none=True)
        self._backward(loss_d)
        self._step(self.opt_d)

        # -- D reg: the discriminator's regularizers that are due, e.g. R1 --
        if any(reg.role == "discriminator" and reg.due(self.d_steps) for reg in self.regularizers):
            self.opt_d.zero_grad(set_to_none=True)
            penalty, reg_stats = self._penalties("discriminator", self.d_steps, model=self._d_model, real=real,
                                                 fake=fake.detach(), labels=labels)
            self._backward(penalty)
            self._sync_grads(self.D_net)
            self._step(self.opt_d)
            stats.update(reg_stats)
        self.d_steps += 1
        self.ada.update(n * acc.num_processes, reduce_sum=self._sum)

        # -- G main: D frozen for this pass (no weight gradients to compute) --
        for q in self.D_trainable:
            q.requires_grad_(False)
        try:
            with self._autocast():
                fake = self.G_main(**self._latents(n), labels=labels)
                gen_logits = self.D_frozen(self.augment(fake), labels).float()
            loss_g = g_loss(gen_logits)
            self.opt_g.zero_grad(set_to_none=True)
            self._backward(loss_g)
            self._step(self.opt_g)
        finally:
            for q in self.D_trainable:
                q.requires_grad_(True)

        # -- G reg: path length and the generator's regularizers that are due --
        pl_due = self.pl.due(self.g_steps)
        regs_due = any(reg.role == "generator" and reg.due(self.g_steps) for reg in self.regularizers)
        if pl_due or regs_due:
            self.opt_g.zero_grad(set_to_none=True)
            total = None
            if pl_due:
                m = max(1, n // self.pl.batch_shrink)
                latents = {k: (v[:m] if v is not None else None) for k, v in self._latents(n).items()}
                pl_labels = labels[:m] if labels is not None else None
                with self._autocast():
                    ws = self.G_net.styles(**latents, labels=pl_labels)
                    images = self.G_net.synthesis(ws)
                total = self.pl.penalty(images, ws, reduce_mean=self._mean)
                stats["penalty_pl"] = total.detach()
            if regs_due:
                z = torch.randn(n, self.params.z_dim, device=acc.device)
                penalty, reg_stats = self._penalties("generator", self.g_steps, model=self._g_model, fake=self._g_model(z, labels),
                                                     labels=labels)
                total = penalty if total is None else total + penalty
                stats.update(reg_stats)
            self._backward(total)
            self._sync_grads(self.G_net)
            self._step(self.opt_g)
        self.g_steps += 1

        self._update_ema(progress.nimg, n * acc.num_processes)
        stats.update({"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": real_logits.detach().mean(),
                      "d_fake": fake_logits.detach().mean(), "augment_p": torch.full((), self.ada.p, device=acc.device)})
        if self.pl.active:
            stats["pl_mean"] = self.pl.mean.detach().clone().to(acc.device)
        return stats

    @torch.no_grad()
    def _update_ema(self, nimg: int, global_batch: int) -> None:
        """G_ema <- G_ema + (1 - beta) (G - G_ema), beta = 0.5 ** (batch / half-life)
        ([PGGAN] sec. 5 / [ADA] appendix D), half-life ramped up as rampup * images shown."""
        s = self.settings
        ema_kimg = s.ema_kimg if s.ema_kimg is not None else auto_ema_kimg(global_batch)
        ema_nimg = ema_kimg * 1000
        if s.ema_rampup > 0:
            ema_nimg = min(ema_nimg, nimg * s.ema_rampup)
        beta = 0.5 ** (global_batch / ema_nimg) if ema_nimg > 0 else 0.0
        torch._foreach_lerp_(list(self.G_ema.parameters()), [q.detach() for q in self.G_net.parameters()], 1 - beta)  # one fused op

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], labels: torch.Tensor | None = None, options: PluginParams | None = None) -> torch.Tensor:
        opts = options if options is not None else SampleParams()
        G = self.G_ema
        device = next(G.parameters()).device
        rngs = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        z = torch.stack([torch.randn(self.params.z_dim, generator=rng) for rng in rngs]).to(device)
        if self.num_classes:
            labels = (torch.arange(len(seeds)) % self.num_classes if labels is None else labels).to(device)
        else:
            labels = None
        ws = G.styles(z, labels)
        if opts.truncation_psi != 1:
            center = self._w_center(labels, len(seeds), device)[:, None]  # (N, 1, w_dim)
            cutoff = opts.truncation_cutoff or G.num_ws
            truncated = center + opts.truncation_psi * (ws - center)
            ws = torch.cat([truncated[:, :cutoff], ws[:, cutoff:]], dim=1)
        noises = None
        if opts.noise_mode == "random":  # drawn from each seed's own generator: independent of the batch
            noises = [torch.stack([torch.randn(1, h, w, generator=rng) for rng in rngs]).to(device) for h, w in G.synthesis.noise_shapes()]
        images = G.synthesis(ws, noise_mode=opts.noise_mode, noises=noises)
        return images.float().clamp(-1, 1)

    def _w_center(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """The centre of mass of W (per class for conditional G): the truncation target ([SG1] appendix B)."""
        mapping = self.G_ema.mapping
        z = torch.randn(W_CENTER_SAMPLES, self.params.z_dim, generator=torch.Generator().manual_seed(W_CENTER_SEED)).to(device)
        if labels is None:
            return mapping(z).mean(dim=0).expand(n, -1)
        centers = {int(c): mapping(z, torch.full((W_CENTER_SAMPLES,), int(c), device=device)).mean(dim=0) for c in labels.unique().tolist()}
        return torch.stack([centers[int(c)] for c in labels.tolist()])

    # ------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "arch": {"backend": "stylegan2_ada", **self.arch()},
            "G": self.G_net.state_dict(),
            "D": self.D_net.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "augment": self.ada.state_dict(),
            "path_length": self.pl.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "steps": {"d": self.d_steps, "g": self.g_steps},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_arch(state, "the checkpoint", "this run's config")
        self.G_net.load_state_dict(state["G"])
        self.D_net.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        # The config's learning rate and betas win (a resume may lower them after a divergence).
        for optimizer, lr, betas in ((self.opt_g, self.lr_g, self.betas_g), (self.opt_d, self.lr_d, self.betas_d)):
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = lr, betas
        self.ada.load_state_dict(state["augment"])
        if self.params.augment == "fixed":
            self.ada.p = self.params.augment_p
        self.pl.load_state_dict(state["path_length"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.d_steps, self.g_steps = int(state["steps"]["d"]), int(state["steps"]["g"])
        self.state_loaded = True

    def _check_arch(self, state: dict[str, Any], what: str, ours: str) -> None:
        arch = state.get("arch") if isinstance(state, dict) else None
        if not arch or arch.get("backend") != "stylegan2_ada":
            raise RunDirError(f"{what} does not hold a stylegan2_ada generator state")
        mine = self.arch()
        for key in ARCH_FIELDS:
            if arch.get(key) != mine[key]:
                where = ARCH_FIELD_SOURCE.get(key, f"generator.{key}")
                raise ConfigError(f"{what} has {key}={arch.get(key)}, {ours} has {key}={mine[key]} ({where}); "
                                  "the architecture must match")

    def _load_transfer(self, source: str) -> None:
        """Initialize G, D and G_ema from another run's checkpoint (transfer learning).

        The optimizers, ADA's p and the step counters start afresh.
        """
        path = Path(source).expanduser()
        if path.is_dir():
            found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
            if not found:
                raise ConfigError(f"generator.transfer: {path} holds no checkpoint (checkpoint-*.safetensors)")
            path = found[-1]
        try:
            state = load_state(path)
        except RaresynthError as exc:
            raise ConfigError(f"generator.transfer: {exc}") from None
        generator_state = state.get("generator") if isinstance(state, dict) else None
        try:
            self._check_arch(generator_state, f"generator.transfer: checkpoint {path}", "this run")
        except RunDirError:
            raise ConfigError(f"generator.transfer: {path} is not a stylegan2_ada checkpoint; transfer learning needs one") from None
        except ConfigError as exc:
            raise ConfigError(f"{exc}; pick a checkpoint of the same architecture or change this run to match") from None
        self.G_net.load_state_dict(generator_state["G"])
        self.D_net.load_state_dict(generator_state["D"])
        self.G_ema.load_state_dict(generator_state["G_ema"])

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G_net, "D": self.D_net, "G_ema": self.G_ema}

"""The training loop every backend shares.

One function, :func:`train`, runs a config from start (or a checkpoint) to its kimg
budget on Accelerate (mixed precision, several processes). The loop owns data order,
randomness, logging, checkpoints and sample grids; the backend owns its networks,
losses and optimizers (:class:`raresynth.Generator`).

A run directory holds::

    manifest.json      every path below that raresynth wrote (what --overwrite may move aside)
    raresynth.lock     while a trainer writes the run: its PID, host and start time
    config.yaml        the resolved config (plugin defaults filled in)
    data.json          the data spec and the files skipped as unreadable
    split.json         the train / held-out split (record ids only)
    log.jsonl          one line per tick: kimg, img/s, losses, ...
    checkpoints/       checkpoint-<nimg>.safetensors, the last `keep_checkpoints`
    samples/           grid-<nimg>.png, the same seeds every time
    metrics.json       end-of-run metrics, when the config lists any
    tensorboard/       when tensorboard is installed
    trash/<UTC time>/  what --overwrite (or resuming from an older checkpoint) moved aside

Every file is written atomically (:mod:`raresynth.files`); ``log.jsonl`` is appended to.

Exact resume: the data order at step ``s`` depends only on (seed, images shown), and
torch's global RNG is reseeded from (seed, rank, step) before every step. Restoring
the backend's state and the image counter therefore continues a run exactly where
an uninterrupted run would be.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from ..config import RunConfig, load_config, resolve_plugins, save_config
from ..data.dataset import Dataset, check_split, load_dataset, load_split, save_split
from ..data.images import save_grid
from ..errors import ConfigError, FileWriteError, RunDirError, TrainingError
from ..evaluation.evaluate import evaluate
from ..evaluation.imagesets import check_samples, sample_image_set
from ..files import DirectoryLock, write_text_atomic
from ..interfaces import (
    Batch,
    DataSpec,
    Generator,
    ImageSet,
    Metric,
    Progress,
    Regularizer,
    RunInfo,
)
from ..registry import Registry, get_registry
from . import checkpoint as ckpt
from .rundir import (
    OWNED_FOLDERS,
    RunManifest,
    adopt_legacy_run,
    check_resumable,
    check_run_dir,
    choose_checkpoint,
    overwrite_run_dir,
    logged_train_seconds,
    trim_log,
    write_data_json,
)

GRID_SEEDS_OFFSET = 0  # sample grids always use seeds 0..grid_size-1, comparable across snapshots
METRIC_SEEDS_OFFSET = 1_000_000  # synthetic sets for metrics: seeds apart from the grids' seeds


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator with this run's precision, also when an earlier run in this
    process used another one (a notebook, a benchmark, the tests)."""
    # Accelerate keeps its mixed-precision choice in a process-wide singleton and
    # refuses a different one; clearing it keeps the distributed set-up (PartialState).
    AcceleratorState._reset_state(reset_partial_state=False)
    # Several processes without a GPU (torchrun, accelerate launch --cpu): Accelerate
    # starts gloo ranks only when told to use the CPU.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# ---------------------------------------------------------------------------
# Data order and randomness
# ---------------------------------------------------------------------------


class BatchSampler:
    """Deterministic, resumable batches: each epoch is a seeded permutation of the data.

    The global batch at image position ``nimg`` is positions ``nimg .. nimg+B`` of the
    concatenated epoch permutations; process ``rank`` takes its contiguous slice.
    Permutations live on the device and batches are gathered there, so a step never
    waits for a host-to-device copy.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, rank: int, num_processes: int, device: torch.device):
        self.per_process = batch_size // num_processes
        self.rank = rank
        self.seed = seed
        self.n = len(data)
        # A few hundred images fit on the device: indexing there avoids a data loader.
        size = data.images.numel() * data.images.element_size()
        self.storage = device if size < 2 * 1024**3 else torch.device("cpu")
        self.images = data.images.to(self.storage)
        self.labels = data.labels.to(self.storage) if data.labels is not None else None
        self.device = device
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            permutation = torch.randperm(self.n, generator=generator)
            if self.storage.type == "cuda":
                permutation = permutation.pin_memory()
            # keep this epoch and the next: a batch spans at most two epochs
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = permutation.to(self.storage, non_blocking=True)
        return self._permutations[epoch]

    def batch(self, nimg: int) -> Batch:
        position = nimg + self.rank * self.per_process
        end = position + self.per_process
        parts = []
        while position < end:
            epoch, offset = divmod(position, self.n)
            take = min(end - position, self.n - offset)
            parts.append(self._permutation(epoch)[offset : offset + take])
            position += take
        index = parts[0] if len(parts) == 1 else torch.cat(parts)
        images = self.images[index].to(self.device, non_blocking=True)
        labels = self.labels[index].to(self.device, non_blocking=True) if self.labels is not None else None
        return Batch(images=images, labels=labels)


def seed_step(seed: int, rank: int, step: int) -> None:
    """Reseed every RNG a backend may draw from, as a function of (seed, rank, step)."""
    value = (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


# ---------------------------------------------------------------------------
# Building a backend
# ---------------------------------------------------------------------------


def build_generator(config: RunConfig, spec: DataSpec, registry: Registry) -> Generator:
    """The configured backend with its regularizers, validated params, not yet set up."""
    regularizers: list[Regularizer] = []
    for ref in config.regularizers:
        reg_cls = registry.regularizer(ref.name)
        regularizers.append(reg_cls(reg_cls.Params.model_validate(ref.params), spec, name=ref.name))
    gen_cls = registry.generator(config.generator.name)
    return gen_cls(gen_cls.Params.model_validate(config.generator.params), spec, regularizers)


def training_state(generator: Generator, progress: Progress) -> dict[str, Any]:
    return {
        "generator": generator.state_dict(),
        "regularizers": [reg.state_dict() for reg in generator.regularizers],
        "progress": {"nimg": progress.nimg, "step": progress.step},
    }


def restore_training_state(generator: Generator, state: Mapping[str, Any], progress: Progress, path: Path | str = "checkpoint") -> None:
    """Load a checkpoint's state (:func:`checkpoint.load_training_state`) into the backend, its regularizers and ``progress``."""
    saved_regs = state.get("regularizers", [])
    if len(saved_regs) != len(generator.regularizers):
        raise RunDirError(f"{path}: checkpoint has {len(saved_regs)} regularizer state(s), the config has {len(generator.regularizers)}")
    try:
        generator.load_state_dict(state["generator"])
        for reg, reg_state in zip(generator.regularizers, saved_regs):
            reg.load_state_dict(reg_state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:  # a hand-made or foreign state
        reason = " ".join(str(exc).split())[:300]
        raise RunDirError(f"{path}: the checkpoint does not fit this run's backend ({type(exc).__name__}: {reason}); "
                          "use a checkpoint this run wrote") from None
    progress.nimg = int(state["progress"]["nimg"])
    progress.step = int(state["progress"]["step"])
# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_from: Path | str | None = None,
    registry: Registry | None = None,
    progress_bar: bool = True,
) -> RunInfo:
    """Train ``config``'s backend until ``config.budget.kimg`` thousand images are shown.

    ``resume``: continue from the newest checkpoint that passes its checksum
    (``resume_from``: from that checkpoint of the run). ``overwrite``: start afresh; once
    the config, the data and the backend are known to work, the old run's files are
    moved into ``run_dir/trash/<UTC time>/``. The main process holds the run directory's
    lock (:class:`raresynth.files.DirectoryLock`) from start to end.
    """
    registry = registry or get_registry()
    config = resolve_plugins(config, registry)
    accelerator = make_accelerator(mixed_precision=config.precision)
    if config.batch_size % accelerator.num_processes:
        world = accelerator.num_processes
        raise TrainingError(f"batch_size {config.batch_size} is not divisible by the {world} processes; use a multiple of {world}")
    run_dir = Path(config.run_dir)
    lock = None
    if accelerator.is_main_process:
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"{run_dir}: run_dir is a file, not a folder; choose another run_dir")
        lock = DirectoryLock(run_dir, what="trainer").acquire()  # one writer per run directory
    try:
        return _train(config, accelerator, registry, run_dir, resume=resume or resume_from is not None, overwrite=overwrite,
                      resume_from=Path(resume_from) if resume_from is not None else None, progress_bar=progress_bar)
    finally:
        if lock is not None:
            lock.release()


def _train(config: RunConfig, accelerator: Accelerator, registry: Registry, run_dir: Path, *, resume: bool, overwrite: bool,
           resume_from: Path | None, progress_bar: bool) -> RunInfo:
    """:func:`train` under the run directory's lock."""
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if main:
        resume_from = check_run_dir(run_dir, resume=resume, overwrite=overwrite, resume_from=resume_from)
    accelerator.wait_for_everyone()
    if resume:
        changes = check_resumable(load_config(run_dir / "config.yaml", registry=registry), config, run_dir)
        if changes and main:
            print(f"raresynth: resuming {run_dir} with changed options: " + "; ".join(changes), file=sys.stderr)

    # Everything that can fail on the config, the data or the backend fails here, before the run directory changes.
    dataset = load_dataset(config.data, registry)
    grouping = dataset.grouping
    if grouping is not None and grouping.fallback and accelerator.is_main_process:
        print(f"raresynth: {len(grouping.fallback)} image(s) have no {grouping.group_by} (e.g. '{grouping.fallback[0]}'); "
              "each is grouped by its format's group (a DICOM series) instead", file=sys.stderr)
    if resume:
        check_split(dataset, load_split(run_dir / "split.json"))
    spec = dataset.spec
    metrics = build_metrics(config, spec, registry, run_dir)  # before training: a missing weights file fails now
    generator = build_generator(config, spec, registry)
    torch.manual_seed(config.seed)  # the same initial weights on every process
    generator.setup(accelerator)

    progress = Progress(total_kimg=config.budget.kimg)
    run = RunInfo(run_dir=run_dir, config=config, spec=spec, progress=progress, num_processes=world, generator=generator)
    manifest: RunManifest | None = None  # what this run wrote; the main process writes, the others only read
    state: dict[str, Any] | None = None
    checkpoint = None
    if main:
        if resume:
            manifest = RunManifest.load(run_dir) or adopt_legacy_run(run_dir)
            checkpoint, state = choose_checkpoint(run_dir, manifest, resume_from)
            trim_log(run_dir / "log.jsonl", state["progress"]["nimg"])  # its ticks past the checkpoint are logged again
        else:
            trash = overwrite_run_dir(run_dir) if overwrite else None
            if trash is not None:
                print(f"raresynth: --overwrite moved the previous run's files into {trash}", file=sys.stderr)
            manifest = RunManifest(run_dir, folders=OWNED_FOLDERS)
            manifest.add("data.json", "split.json", "log.jsonl")
            write_data_json(dataset, run_dir / "data.json")
            save_split(dataset, run_dir / "split.json")
        manifest.add("config.yaml")
        save_config(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    if resume:
        if state is None:  # the main process chose (and moved newer checkpoints aside): the newest is the one
            checkpoint = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
            state = ckpt.load_training_state(checkpoint)
        restore_training_state(generator, state, progress, checkpoint)
        progress.train_seconds = logged_train_seconds(run_dir, progress.nimg)  # for budget.minutes
        run.checkpoints = ckpt.list_checkpoints(run_dir / "checkpoints")
        state = None  # the weights now live in the backend

    sampler = BatchSampler(dataset.train, config.batch_size, config.seed, rank, world, accelerator.device)
    logger = RunLogger(run_dir, enabled=main)
    if main:
        registry.hook.raresynth_run_start(run=run, config=config.plain())

    total_nimg = int(round(config.budget.kimg * 1000))
    tick_nimg = max(1, int(round(config.schedule.tick_kimg * 1000)))
    snapshot_nimg = max(1, int(round(config.schedule.snapshot_kimg * 1000)))
    bar = tqdm(total=config.budget.kimg, initial=min(progress.kimg, config.budget.kimg), unit="kimg", disable=not (main and progress_bar), dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
    status, error = "completed", None
    tick_sums: dict[str, torch.Tensor | float] = {}
    tick_steps, tick_start_nimg, tick_start_time = 0, progress.nimg, time.perf_counter()
    last_checkpoint_nimg = progress.nimg if resume else -1
    seconds_limit = config.budget.minutes * 60 if config.budget.minutes else math.inf
    session_start, seconds_before = time.perf_counter(), progress.train_seconds
    out_of_time = progress.train_seconds >= seconds_limit
    try:
        while progress.nimg < total_nimg and not out_of_time:
            seed_step(config.seed, rank, progress.step)
            stats = generator.train_step(sampler.batch(progress.nimg), progress)
            for key, value in stats.items():  # summed where they live: no copy, no wait
                value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                tick_sums[key] = tick_sums.get(key, 0.0) + value
            tick_steps += 1
            before = progress.nimg
            progress.nimg += config.batch_size
            progress.step += 1
            progress.train_seconds = seconds_before + time.perf_counter() - session_start
            tick_ends = progress.nimg // tick_nimg > before // tick_nimg
            if tick_ends and seconds_limit < math.inf:  # checked per tick, agreed by all ranks: they stop at the same step
                out_of_time = bool(accelerator.reduce(torch.tensor([float(progress.train_seconds >= seconds_limit)], device=accelerator.device),
                                                      reduction="max").item()) if world > 1 else progress.train_seconds >= seconds_limit
            done = progress.nimg >= total_nimg or out_of_time
            if done or tick_ends:
                line = reduce_tick_stats(accelerator, tick_sums, tick_steps)  # waits for the device: time after it
                elapsed = time.perf_counter() - tick_start_time
                shown = progress.nimg - tick_start_nimg
                line = {"kimg": round(progress.kimg, 3), "step": progress.step, "processes": world, "train_seconds": progress.train_seconds,
                        "img_per_s": shown / max(elapsed, 1e-9),
                        "sec_per_kimg": elapsed / max(shown / 1000, 1e-9), **line, **memory_stats(accelerator)}
                check_finite_stats(line, run)
                logger.log(line)
                if main:
                    bar.update(min(progress.kimg, config.budget.kimg) - bar.n)  # the last batch may overshoot
                    bar.set_postfix_str(f"{line['img_per_s']:.0f} img/s", refresh=False)
                    registry.hook.raresynth_tick(run=run, stats=line)
                tick_sums, tick_steps, tick_start_nimg, tick_start_time = {}, 0, progress.nimg, time.perf_counter()
            if done or progress.nimg // snapshot_nimg > before // snapshot_nimg:
                snapshot(accelerator, generator, run, registry, manifest)
                last_checkpoint_nimg = progress.nimg
        if last_checkpoint_nimg != progress.nimg:  # budget already reached (resumed a finished run)
            snapshot(accelerator, generator, run, registry, manifest)
        if metrics and main:
            manifest.add("metrics.json")
            run_metrics(config, dataset, generator, metrics, run_dir)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        status, error = "failed", " ".join(str(exc).split())
        raise
    finally:
        bar.close()
        logger.close()
        if main:
            try:
                registry.hook.raresynth_run_end(run=run, status=status, error=error)
            except Exception as hook_exc:  # noqa: BLE001 - never hide the run's own error
                print(f"raresynth: a plugin's raresynth_run_end hook failed: {hook_exc}")
        accelerator.end_training()
    return run


def reduce_tick_stats(accelerator: Accelerator, sums: Mapping[str, torch.Tensor | float], steps: int) -> dict[str, float]:
    """Average each statistic over the tick's steps and over all processes."""
    if not sums:
        return {}
    keys = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[key], device=accelerator.device).reshape(()) for key in keys]) / max(steps, 1)
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="mean")
    return {key: float(value) for key, value in zip(keys, stacked.cpu().tolist())}


def memory_stats(accelerator: Accelerator) -> dict[str, float]:
    if accelerator.device.type == "cuda":
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(accelerator.device) / 1024**3}
    return {}


def check_finite_stats(line: Mapping[str, float], run: RunInfo) -> None:
    bad = [key for key, value in line.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise TrainingError(non_finite_message(run, f"{bad[0]} is {line[bad[0]]}"))


def non_finite_message(run: RunInfo, what: str) -> str:
    return stop_message(run, what, "Try a lower learning rate, precision: no, or a stronger regularizer, then resume or restart")


def stop_message(run: RunInfo, what: str, advice: str) -> str:
    last = ckpt.list_checkpoints(run.run_dir / "checkpoints")
    kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
    return f"training stopped at {run.progress.kimg:.3f} kimg (step {run.progress.step}): {what}; {kept}. {advice}"


def snapshot(accelerator: Accelerator, generator: Generator, run: RunInfo, registry: Registry, manifest: RunManifest | None) -> None:
    """Check the weights, write a checkpoint and a sample grid (main process), keep the last K."""
    for role, module in generator.modules().items():
        for name, param in module.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingError(non_finite_message(run, f"weight {role}.{name} is not finite"))
    if accelerator.is_main_process:
        checkpoint_dir = run.run_dir / "checkpoints"
        path = ckpt.checkpoint_path(checkpoint_dir, run.progress.nimg)
        manifest.add(path)
        try:
            ckpt.save_state(training_state(generator, run.progress), path)
        except FileWriteError as exc:  # a full disk: the previous checkpoints are intact
            raise TrainingError(stop_message(run, str(exc), "Then continue with --resume")) from None
        manifest.remove(*ckpt.prune_checkpoints(checkpoint_dir, run.config.schedule.keep_checkpoints, owned=manifest.owns))
        run.checkpoints = ckpt.list_checkpoints(checkpoint_dir)
        registry.hook.raresynth_checkpoint_written(run=run, path=path)
        seeds = list(range(GRID_SEEDS_OFFSET, GRID_SEEDS_OFFSET + run.config.schedule.grid_size))
        labels = cycled_labels(run.spec, len(seeds))
        images = check_samples(generator, generator.sample(seeds, labels), seeds, labels, registry)
        grid = run.run_dir / "samples" / f"grid-{run.progress.nimg:09d}.png"
        manifest.add(grid)
        save_grid(images, grid)
    accelerator.wait_for_everyone()


def cycled_labels(spec: DataSpec, n: int) -> torch.Tensor | None:
    """Class labels cycling through the classes (None for unconditional data)."""
    if not spec.num_classes:
        return None
    return torch.arange(n) % spec.num_classes


def build_metrics(config: RunConfig, spec: DataSpec, registry: Registry, run_dir: Path) -> list[tuple[str, Metric]]:
    """The configured metrics, built (and so checked) before any training happens."""
    metrics = []
    for i, ref in enumerate(config.metrics):
        cls = registry.metric(ref.name)
        if "labels" in cls.requires and not spec.num_classes:
            raise ConfigError(f"metrics.{i}.name: metric '{ref.name}' needs class labels and the data has none; set data.labels or drop it")
        metric = cls(cls.Params.model_validate(ref.params), spec)
        metric.output_dir = run_dir / "metrics"
        metrics.append((ref.name, metric))
    return metrics


def synthetic_like_train(generator: Generator, dataset: Dataset, n: int = 0, first_seed: int = METRIC_SEEDS_OFFSET,
                         options: Any = None) -> ImageSet:
    """``n`` synthetic images (0: as many as the training split) with the training split's class balance.

    Image ``i`` comes from seed ``first_seed + i``: every backend is measured on the same seeds and labels.
    """
    n = n or len(dataset.train)
    return sample_image_set(generator, n, synthetic_labels(dataset, n), first_seed=first_seed, options=options)


def synthetic_labels(dataset: Dataset, n: int) -> torch.Tensor | None:
    """The labels of a synthetic set of ``n`` images: the training split's, cycled (its class balance)."""
    if dataset.train.labels is None:
        return None
    return dataset.train.labels[torch.arange(n) % len(dataset.train)]


def run_metrics(config: RunConfig, dataset: Dataset, generator: Generator, metrics: Sequence[tuple[str, Metric]], run_dir: Path) -> dict[str, Any]:
    """Sample a synthetic set like the training set and evaluate it into ``metrics.json``.

    Each value comes with its interval, the reference rows (real held-out, copies, noise)
    and whether it is informative on this dataset (:func:`raresynth.evaluation.evaluate.evaluate`).
    """
    synthetic = synthetic_like_train(generator, dataset, config.schedule.metric_samples)
    results = evaluate(metrics, [ref.plain() for ref in config.metrics], dataset.train, dataset.held_out, synthetic,
                       resamples=config.evaluation.resamples, references=config.evaluation.references, seed=config.seed)
    write_text_atomic(run_dir / "metrics.json", json.dumps(results, indent=1))
    return results


class RunLogger:
    """``log.jsonl`` always; TensorBoard scalars too when tensorboard is installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.jsonl = None
        self.tensorboard = None
        if not enabled:
            return
        self.jsonl = open(run_dir / "log.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional: pip install 'raresynth[tensorboard]'
            self.tensorboard = None

    def log(self, line: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({**line, "time": time.time()}) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            step = int(line["kimg"] * 1000)
            for key, value in line.items():
                if key not in ("kimg", "step") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def dry_run_text(config: RunConfig) -> str:
    return yaml.safe_dump(config.plain(), sort_keys=False)

"""The conformance kit: plain functions a plugin author calls from pytest.

::

    from raresynth.testing import check_generator, check_regularizer, check_metric, check_data_format

    def test_my_backend_conforms(tmp_path):
        check_generator(MyBackend, params={"width": 8}, tmp_path=tmp_path)

Each check builds the plugin at tiny sizes, drives it through the core's real code
paths (the training loop, checkpoints, ``load_run_generator``, the data pipeline) on
the embedded dataset (real fundus and histology crops, no download), and raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a failure)
whose message says what the plugin must change. Nothing here is private to the
core's own tests: the built-in plugins pass the same checks (``tests/test_kit.py``).

What :func:`check_generator` checks, for 1-channel unlabelled and 3-channel
two-class data (``specs``):

* it trains ``steps`` steps through the real loop, and every sample it returns
  obeys the output contract (``(n, C, R, R)`` float, finite, in ``[-1, 1]``);
* the same seed (and label) gives the same image whatever else is in the batch;
  ``labels`` and ``options`` may be ``None``;
* labels change the image (conditional data), unless ``conditional=False``;
* the state survives the checkpoint file (safetensors + JSON): the run rebuilt by
  ``load_run_generator`` samples the very same images;
* a run interrupted after half the steps and resumed ends bit for bit where the
  uninterrupted run ends (first spec);
* with ``processes=2``: two processes (torchrun, gloo on CPU) end with identical
  weights, so gradients are averaged; with ``matches_one_process=True`` also equal
  (to ``atol``) to one process with the same global batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DataConfig, load_config
from .data.preprocess import preprocess
from .errors import RaresynthError
from .evaluation.imagesets import check_samples
from .interfaces import (
    Augmentation,
    DataFormat,
    DataSpec,
    Generator,
    ImageSet,
    Metric,
    MetricValue,
    PenaltyInputs,
    PluginParams,
    RawImage,
    Record,
    Regularizer,
)
from .registry import Registry, get_registry, hookimpl, load_plugins
from .training.checkpoint import list_checkpoints, load_state, save_state
from .training.loop import train
from .training.sampling import load_run_generator

__all__ = ["DEFAULT_SPECS", "ConformanceError", "check_data_format", "check_generator", "check_metric", "check_regularizer"]

#: (channels, labelled) of the data each generator check trains on.
DEFAULT_SPECS: tuple[tuple[int, bool], ...] = ((1, False), (3, True))
#: The tiny embedded dataset every check trains on: 8 + 4 crops per class, 2 classes.
EMBEDDED = {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}
#: Small ``stylegan2_ada`` options for :func:`check_regularizer`'s training runs.
TINY_STYLEGAN2 = {"z_dim": 16, "w_dim": 16, "mapping_layers": 1, "channel_base": 128, "channel_max": 16, "precision": "fp32"}


class ConformanceError(AssertionError):
    """A plugin breaks the raresynth contract; the message says what to change."""


def _fail(subject: str, problem: str, fix: str) -> None:
    raise ConformanceError(f"{subject}: {problem}; {fix}")


# ---------------------------------------------------------------------------
# Plumbing: a registry that knows the class, tiny run configs, temporary folders
# ---------------------------------------------------------------------------


def _registered(kind: str, cls: type, registry: Registry | None) -> tuple[Registry, str]:
    """A registry in which ``cls`` has a name: the given (or process) one, or one with ``cls`` added."""
    registry = registry or get_registry()
    found = registry.registration_of(cls)
    if found is not None:
        return registry, found.name
    name = f"conformance_{cls.__name__.lower()}"
    plugin = types.ModuleType(f"raresynth_conformance_{name}")
    hook = {"generator": "raresynth_register_generators", "regularizer": "raresynth_register_regularizers",
            "metric": "raresynth_register_metrics", "data_format": "raresynth_register_data_formats"}[kind]
    setattr(plugin, hook, hookimpl(lambda register: register(name, cls)))
    return load_plugins(extra=[(name, plugin)]), name


@contextmanager
def _folder(tmp_path: str | Path | None) -> Iterator[Path]:
    if tmp_path is not None:
        folder = Path(tmp_path) / "conformance"
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="raresynth-conformance-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_config(run_dir: Path, generator: Mapping[str, Any], channels: int, labelled: bool, steps: int, batch_size: int,
                regularizers: Sequence[Mapping[str, Any]] = (), resolution: int = 16, seed: int = 7) -> dict[str, Any]:
    kimg = steps * batch_size / 1000
    return {
        "run_dir": str(run_dir),
        "seed": seed,
        "data": {"format": "embedded", "resolution": resolution, "channels": channels, "labels": "auto" if labelled else "none",
                 "format_options": dict(EMBEDDED)},
        "generator": dict(generator),
        "regularizers": [dict(r) for r in regularizers],
        "budget": {"kimg": kimg},
        "batch_size": batch_size,
        "precision": "no",
        "schedule": {"tick_kimg": kimg, "snapshot_kimg": max(1, steps // 2) * batch_size / 1000, "keep_checkpoints": 3, "grid_size": 4},
    }


def _train(config: Mapping[str, Any], registry: Registry, subject: str, resume: bool = False):
    try:
        return train(load_config(dict(config), registry=registry), resume=resume, registry=registry, progress_bar=False)
    except RaresynthError as exc:
        raise ConformanceError(f"{subject}: training through the raresynth loop failed: {' '.join(str(exc).split())}") from exc


def _flat(state: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(state, dict):
        for key in sorted(state, key=str):
            yield from _flat(state[key], f"{prefix}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _flat(value, f"{prefix}/{i}")
    else:
        yield prefix, state


def _first_difference(a: Any, b: Any, atol: float = 0.0) -> str | None:
    """The first path at which two nested states differ (exactly, or beyond ``atol`` for tensors), or None."""
    left, right = dict(_flat(a)), dict(_flat(b))
    if left.keys() != right.keys():
        return min(left.keys() ^ right.keys())
    for key, value in left.items():
        other = right[key]
        if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
            if not (isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)) or value.shape != other.shape:
                return key
            same = torch.equal(value, other) if atol == 0 else torch.allclose(value.double(), other.double(), atol=atol, rtol=0)
            if not same:
                return key
        elif value != other and not (isinstance(value, float) and isinstance(other, float) and np.isnan(value) and np.isnan(other)):
            return key
    return None


def _checked_sample(generator: Generator, seeds: Sequence[int], labels: torch.Tensor | None, subject: str, registry: Registry,
                    options: PluginParams | None = None) -> torch.Tensor:
    try:
        images = generator.sample(list(seeds), labels, options)
        return check_samples(generator, images, seeds, labels, registry).detach().float().cpu()
    except RaresynthError as exc:
        raise ConformanceError(f"{subject}: {' '.join(str(exc).split())}") from exc


# ---------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------


def check_generator(
    cls: type[Generator],
    params: Mapping[str, Any] | None = None,
    specs: Sequence[tuple[int, bool]] = DEFAULT_SPECS,
    *,
    regularizers: Sequence[Mapping[str, Any]] = (),
    steps: int = 4,
    batch_size: int = 4,
    resolution: int = 16,
    conditional: bool | None = None,
    processes: int = 1,
    matches_one_process: bool = False,
    atol: float = 1e-5,
    registry: Registry | None = None,
    tmp_path: str | Path | None = None,
) -> None:
    """Check a backend against the generator contract (see the module docstring).

    ``params`` are the backend's options (small ones: the check trains for real);
    ``specs`` the ``(channels, labelled)`` data to train on; ``regularizers`` the run
    config's ``regularizers:`` entries to train with (e.g. ``[{"name": "r1"}]``);
    ``conditional``: whether labels must change the image (None: whenever the data
    has classes).
    """
    registry, name = _registered("generator", cls, registry)
    subject = f"generator '{name}' ({cls.__module__}.{cls.__qualname__})"
    generator_ref = {"name": name, **dict(params or {})}
    if steps < 2:
        raise ValueError("check_generator needs steps >= 2 (half of them are resumed)")
    with _folder(tmp_path) as folder:
        for i, (channels, labelled) in enumerate(specs):
            where = f"{subject} on {channels}-channel {'labelled' if labelled else 'unlabelled'} data"
            config = _run_config(folder / f"spec{i}" / "full", generator_ref, channels, labelled, steps, batch_size, regularizers,
                                 resolution=resolution)
            run = _train(config, registry, where)
            _check_sampling(run.generator, where, registry, conditional)
            _check_round_trip(run, where, registry)
            if i == 0:
                _check_resume(config, folder / f"spec{i}", steps, batch_size, where, registry)
        if processes > 1:
            channels, labelled = specs[0]
            config = _run_config(folder / "two" / "run", generator_ref, channels, labelled, steps, batch_size, regularizers,
                                 resolution=resolution)
            _check_processes(cls, name, config, folder / "two", processes, matches_one_process, atol, subject, registry)


def _check_sampling(generator: Generator, subject: str, registry: Registry, conditional: bool | None) -> None:
    spec = generator.spec
    labels = (torch.arange(3) % spec.num_classes) if spec.num_classes else None
    seeds = [11, 12, 13]
    batch = _checked_sample(generator, seeds, labels, subject, registry)
    again = _checked_sample(generator, seeds, labels, subject, registry)
    if not torch.equal(batch, again):
        _fail(subject, "sample() gave different images for the same seeds on a second call",
              "draw each image's noise from a torch.Generator seeded with its seed, never from the global RNG")
    alone = _checked_sample(generator, seeds[1:2], labels[1:2] if labels is not None else None, subject, registry)
    if not torch.allclose(alone[0], batch[1], atol=1e-5, rtol=0):
        _fail(subject, f"seed {seeds[1]} gave another image alone than in a batch with other seeds "
              f"(max difference {float((alone[0] - batch[1]).abs().max()):.3g})",
              "draw each image's noise from its own torch.Generator(seed), not one generator for the batch, and use no batch statistics")
    _checked_sample(generator, seeds, None, subject, registry)  # labels may be None (the default labels)
    if spec.num_classes and conditional is not False:
        zeros = _checked_sample(generator, seeds, torch.zeros(3, dtype=torch.int64), subject, registry)
        ones = _checked_sample(generator, seeds, torch.ones(3, dtype=torch.int64), subject, registry)
        if torch.equal(zeros, ones):
            _fail(subject, "sample() gave the same images for class 0 and class 1",
                  "condition the networks on labels (or pass conditional=False to check_generator for an unconditional backend)")


def _check_round_trip(run, subject: str, registry: Registry) -> None:
    """The checkpoint file holds the whole generator: a rebuilt run samples the same images."""
    spec = run.generator.spec
    labels = (torch.arange(4) % spec.num_classes) if spec.num_classes else None
    seeds = [3, 1, 4, 1]
    before = _checked_sample(run.generator, seeds, labels, subject, registry)
    try:
        rebuilt, _, _, _ = load_run_generator(run.run_dir, registry=registry)
    except RaresynthError as exc:
        raise ConformanceError(f"{subject}: rebuilding the run from its checkpoint failed: {exc}") from exc
    after = _checked_sample(rebuilt, seeds, labels, subject, registry)
    if not torch.allclose(before, after, atol=1e-6, rtol=0):
        _fail(subject, "a generator rebuilt from the checkpoint samples other images than the trained one",
              "return every weight sample() uses (the EMA network too) from state_dict() and restore it in load_state_dict()")


def _check_resume(config: Mapping[str, Any], folder: Path, steps: int, batch_size: int, subject: str, registry: Registry) -> None:
    """Half the steps, then resume to the end: the last checkpoint equals the uninterrupted run's."""
    full_dir = Path(config["run_dir"])
    half = dict(config, run_dir=str(folder / "resumed"), budget={"kimg": (steps // 2) * batch_size / 1000})
    _train(half, registry, subject)
    _train(dict(config, run_dir=half["run_dir"]), registry, subject, resume=True)
    uninterrupted = load_state(list_checkpoints(full_dir / "checkpoints")[-1])
    resumed = load_state(list_checkpoints(Path(half["run_dir"]) / "checkpoints")[-1])
    where = _first_difference(uninterrupted, resumed)
    if where is not None:
        _fail(subject, f"a run resumed after {steps // 2} of {steps} steps ends with another state than the uninterrupted run "
              f"(first difference at {where})",
              "save everything that changes while training in state_dict() (optimizers, EMA, step counters, augmentation and "
              "regularizer state) and draw training noise from torch's global RNG, which the loop reseeds every step")


_TWO_PROCESS_SCRIPT = """\
import importlib, os, sys, types
from pathlib import Path
from raresynth.config import load_config
from raresynth.registry import get_registry, hookimpl, load_plugins
from raresynth.training import train
from raresynth.training.checkpoint import save_state

config_path, out_dir, name, where = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
registry = get_registry()
if name not in registry.names("generator"):
    module_name, qualname = where.split(":")
    cls = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    plugin = types.ModuleType("raresynth_conformance_" + name)
    plugin.raresynth_register_generators = hookimpl(lambda register: register(name, cls))
    registry = load_plugins(extra=[(name, plugin)])
run = train(load_config(config_path, registry=registry), registry=registry, progress_bar=False)
modules = {role: module.state_dict() for role, module in run.generator.modules().items()}
regularizers = [reg.state_dict() for reg in run.generator.regularizers]
save_state({"world": run.num_processes, "modules": modules, "regularizers": regularizers},
           out_dir / f"rank{os.environ.get('RANK', '0')}.safetensors")
"""


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_processes(cls: type, name: str, config: Mapping[str, Any], folder: Path, processes: int, matches_one_process: bool,
                     atol: float, subject: str, registry: Registry) -> None:
    """``processes`` ranks (torchrun, gloo on CPU) end with identical weights (and, if claimed, equal to one process)."""
    folder.mkdir(parents=True, exist_ok=True)
    script, config_path = folder / "train_rank.py", folder / "config.json"
    _write_atomic(script, _TWO_PROCESS_SCRIPT)
    _write_atomic(config_path, json.dumps(config))
    paths = [str(Path(m.__file__).resolve().parent.parent) for m in (sys.modules.get(cls.__module__),) if m and getattr(m, "__file__", None)]
    # plugins this registry loaded from modules rather than entry points (a test suite's own) load in the ranks too
    modules = [info.module for info in registry.plugins if info.distribution is None and not info.broken
               and not info.module.startswith("raresynth_conformance_") and info.module in sys.modules]
    modules += [m for m in (os.environ.get("RARESYNTH_PLUGIN_MODULES") or "").split(",") if m.strip() and m.strip() not in modules]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([*paths, *sys.path, os.environ.get("PYTHONPATH", "")]),
           "RARESYNTH_PLUGIN_MODULES": ",".join(modules)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(_free_port()),
               str(script), str(config_path), str(folder), name, f"{cls.__module__}:{cls.__qualname__}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raised = [line.strip() for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt): ", line.strip())]
        reason = raised[-1] if raised else " | ".join(lines[-5:])
        raise ConformanceError(f"{subject}: training on {processes} processes (torchrun, gloo) failed: {reason}")
    states = [load_state(folder / f"rank{rank}.safetensors") for rank in range(processes)]
    for rank, state in enumerate(states[1:], start=1):
        where = _first_difference(states[0]["modules"], state["modules"])
        regularizer_difference = _first_difference(states[0]["regularizers"], state["regularizers"])
        if where is None and regularizer_difference is not None:
            _fail(subject, f"after {processes}-process training rank 0 and rank {rank} hold different regularizer state "
                  f"(first at regularizers{regularizer_difference})",
                  "average the statistics a regularizer keeps (running means, anchors) over processes "
                  "(torch.distributed.all_reduce), so that every rank holds the same")
        if where is not None:
            _fail(subject, f"after {processes}-process training rank 0 and rank {rank} hold different weights (first at {where}), so "
                  "gradients are not averaged across processes",
                  "call the modules accelerator.prepare() returned (self.model(...), not accelerator.unwrap_model(self.model)) in "
                  "train_step, or all-reduce the gradients yourself (accelerator.reduce(grad, 'mean')) before optimizer.step()")
    if matches_one_process:
        single = _train(dict(config, run_dir=str(folder / "one")), registry, subject)
        modules = {role: module.state_dict() for role, module in single.generator.modules().items()}
        where = _first_difference(modules, states[0]["modules"], atol=atol)
        if where is not None:
            _fail(subject, f"{processes} processes end with other weights than one process with the same global batch (at {where})",
                  "average gradients over processes (a mean, not a sum) and draw no per-rank noise that one process would draw "
                  "differently, or do not claim matches_one_process")


# ---------------------------------------------------------------------------
# Regularizers (and augmentations)
# ---------------------------------------------------------------------------


class _TinyD(torch.nn.Module):
    """A small conditional discriminator: ``model(images, labels) -> (N, 1)`` logits."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 8, 3, padding=1)
        self.out = torch.nn.Linear(8, 1)
        self.embed = torch.nn.Embedding(max(classes, 1), 8)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.conv(images), 0.2).mean(dim=(2, 3))
        if labels is not None:
            h = h + self.embed(labels)
        return self.out(h)


def _penalty_inputs(spec: DataSpec, seed: int) -> tuple[PenaltyInputs, torch.nn.Module]:
    generator = torch.Generator().manual_seed(seed)
    shape = (4, spec.channels, spec.resolution, spec.resolution)
    torch.manual_seed(seed)
    model = _TinyD(spec.channels, spec.num_classes)
    labels = torch.arange(4) % spec.num_classes if spec.num_classes else None
    real = torch.rand(shape, generator=generator) * 2 - 1
    fake = torch.tanh(torch.randn(shape, generator=generator)).requires_grad_(True)
    return PenaltyInputs(step=0, model=model, real=real, fake=fake, labels=labels), model


def check_regularizer(
    cls: type[Regularizer],
    params: Mapping[str, Any] | None = None,
    *,
    generator: str | None = "stylegan2_ada",
    generator_params: Mapping[str, Any] | None = None,
    steps: int = 4,
    batch_size: int = 4,
    registry: Registry | None = None,
    tmp_path: str | Path | None = None,
) -> None:
    """Check a regularizer (or an :class:`raresynth.Augmentation`) against its contract.

    On its own: ``interval`` >= 1 and ``due`` every ``interval`` steps; its state
    through a checkpoint file; for role ``"discriminator"`` (whose ``model`` is always
    ``model(images, labels) -> logits``) a finite scalar penalty that reaches the
    discriminator's weights, already multiplied by ``interval`` when the Params have an
    ``interval`` option. An
    augmentation must keep shape and dtype, change the images, be differentiable and
    draw from torch's global RNG. Then ``steps`` steps through the real loop with
    ``generator`` (``None``: skip), and an interrupted run resumed equals the
    uninterrupted one, so the regularizer's state is complete.
    """
    registry, name = _registered("regularizer", cls, registry)
    subject = f"regularizer '{name}' ({cls.__module__}.{cls.__qualname__})"
    spec = DataSpec(resolution=16, channels=3, class_names=("a", "b"), num_train=16)
    options = cls.Params.model_validate(dict(params or {}))
    reg = cls(options, spec, name=name)
    if not isinstance(reg.interval, int) or reg.interval < 1:
        _fail(subject, f"interval is {reg.interval!r}", "return an int >= 1 (1: every step)")
    if not all(reg.due(k * reg.interval) for k in range(3)) or (reg.interval > 1 and reg.due(1)):
        _fail(subject, f"due(step) is not true exactly every {reg.interval} steps", "keep Regularizer.due or make it step % interval == 0")
    if isinstance(reg, Augmentation) or reg.role == "augment":
        _check_augmentation(reg, spec, subject)
    elif reg.role == "discriminator":  # the one role whose PenaltyInputs.model has a fixed form: model(images, labels) -> logits
        _check_penalty(cls, reg, options, spec, subject, name)
    else:  # what "model" is for other roles is the backend's; the training run below checks those
        _check_state_file(reg, cls, options, spec, subject, name)
    if generator is not None:
        gen_params = dict(generator_params if generator_params is not None else (TINY_STYLEGAN2 if generator == "stylegan2_ada" else {}))
        ref = {"name": name, **dict(params or {})}
        with _folder(tmp_path) as folder:
            config = _run_config(folder / "full", {"name": generator, **gen_params}, 3, True, steps, batch_size, regularizers=[ref])
            _train(config, registry, subject)
            _check_resume(config, folder, steps, batch_size, subject, registry)


def _check_penalty(cls: type[Regularizer], reg: Regularizer, options: PluginParams, spec: DataSpec, subject: str, name: str) -> None:
    inputs, model = _penalty_inputs(spec, seed=0)
    torch.manual_seed(1)
    value = reg.penalty(inputs)
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        _fail(subject, f"penalty() returned {type(value).__name__} {getattr(value, 'shape', '')}", "return a scalar float tensor")
    if not bool(torch.isfinite(value).all()):
        _fail(subject, f"penalty() returned {float(value)}", "return a finite penalty (check divisions and logs)")
    target = list(model.parameters()) if reg.role == "discriminator" else [inputs.fake]
    if value.requires_grad:
        grads = torch.autograd.grad(value.sum(), target, allow_unused=True)
        reaches = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    else:
        reaches = False
    if not reaches and float(value) != 0:
        what = "the discriminator's weights (PenaltyInputs.model)" if reg.role == "discriminator" else "the generated images (PenaltyInputs.fake)"
        _fail(subject, f"penalty() has no gradient w.r.t. {what}", "compute it from the inputs' tensors without detaching them")
    if "interval" in type(options).model_fields:
        values = []
        for interval in (1, 4):
            lazy = cls(type(options).model_validate({**options.model_dump(), "interval": interval}), spec, name=name)
            fresh, _ = _penalty_inputs(spec, seed=0)
            torch.manual_seed(1)
            values.append(float(lazy.penalty(fresh).detach()))
        if not np.isclose(values[1], 4 * values[0], rtol=1e-4, atol=1e-8):
            _fail(subject, f"with interval 4 penalty() is {values[1]:.6g}, not 4 x its interval-1 value {values[0]:.6g}",
                  "multiply the penalty by self.interval (lazy regularization: the backend applies it every interval-th step as is)")
    _check_state_file(reg, cls, options, spec, subject, name)


def _check_state_file(reg: Regularizer, cls: type, options: PluginParams, spec: DataSpec, subject: str, name: str) -> None:
    state = reg.state_dict()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.safetensors"
        try:
            save_state({"state": state}, path)
        except (RaresynthError, TypeError, ValueError) as exc:
            raise ConformanceError(f"{subject}: state_dict() cannot be checkpointed ({exc}); return nested dicts and lists of "
                                   "tensors, numbers, strings, booleans and None") from exc
        restored = cls(options, spec, name=name)
        restored.load_state_dict(load_state(path)["state"])
    where = _first_difference(state, restored.state_dict())
    if where is not None:
        _fail(subject, f"state_dict() after load_state_dict(state_dict()) differs at {where}", "restore every entry in load_state_dict()")


def _check_augmentation(reg: Regularizer, spec: DataSpec, subject: str) -> None:
    if not hasattr(reg, "augment"):
        _fail(subject, "has role 'augment' but no augment(images) method", "subclass raresynth.Augmentation and implement augment()")
    images = (torch.rand(4, spec.channels, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    images.requires_grad_(True)
    torch.manual_seed(5)
    out = reg.augment(images)
    if not isinstance(out, torch.Tensor) or out.shape != images.shape or out.dtype != images.dtype:
        _fail(subject, f"augment() turned {tuple(images.shape)} {images.dtype} into {getattr(out, 'shape', type(out))} "
              f"{getattr(out, 'dtype', '')}", "return images of the input's shape and dtype")
    if torch.equal(out.detach(), images.detach()):
        _fail(subject, "augment() returned the images unchanged", "transform them (or drop the augmentation from the config)")
    grad = torch.autograd.grad(out.sum(), images, allow_unused=True)[0] if out.requires_grad else None
    if grad is None or not bool(grad.abs().sum() > 0):
        _fail(subject, "augment() is not differentiable w.r.t. the images", "use differentiable tensor operations (no .detach(), numpy or in-place writes on a leaf)")
    torch.manual_seed(5)
    again = reg.augment(images.detach())
    if not torch.equal(again, out.detach()):
        _fail(subject, "augment() gave another result after torch.manual_seed with the same seed",
              "draw randomness from torch's global RNG (torch.rand(..., device=images.device)), which the loop reseeds every step")
    _check_state_file(reg, type(reg), reg.params, spec, subject, reg.name)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def _embedded_sets(registry: Registry, channels: int, resolution: int, per_class: int) -> tuple[DataSpec, ImageSet, ImageSet]:
    from .data.dataset import load_dataset

    options = {"train_per_class": per_class, "held_out_per_class": per_class // 2, "crop_size": 32}
    dataset = load_dataset(DataConfig(format="embedded", resolution=resolution, channels=channels, format_options=options), registry)
    return dataset.spec, dataset.train, dataset.held_out


def check_metric(
    cls: type[Metric],
    params: Mapping[str, Any] | None = None,
    *,
    channels: int = 3,
    resolution: int = 16,
    per_class: int = 16,
    registry: Registry | None = None,
) -> None:
    """Check a metric: a list of :class:`raresynth.MetricValue` with unique names and finite values,
    the same values for the same inputs, inputs left unchanged, and a different value for
    noise than for real images (one value at least). Real data: the embedded crops,
    labelled, at ``resolution`` px."""
    registry, name = _registered("metric", cls, registry)
    subject = f"metric '{name}' ({cls.__module__}.{cls.__qualname__})"
    spec, train_set, held_out = _embedded_sets(registry, channels, resolution, per_class)
    metric = cls(cls.Params.model_validate(dict(params or {})), spec)
    noise = ImageSet(torch.rand(train_set.images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1, train_set.labels, "noise")
    copies = [s.images.clone() for s in (train_set, held_out, noise)]

    def compute(synthetic: ImageSet) -> list[MetricValue]:
        try:
            values = metric.compute(train_set, held_out, synthetic)
        except RaresynthError as exc:
            raise ConformanceError(f"{subject}: compute() failed on the embedded crops: {exc}") from exc
        if not isinstance(values, list) or not values or not all(isinstance(v, MetricValue) for v in values):
            _fail(subject, f"compute() returned {type(values).__name__}", "return a non-empty list of raresynth.MetricValue")
        names = [v.name for v in values]
        if len(set(names)) != len(names) or not all(names):
            _fail(subject, f"compute() returned the value names {names}", "give every value a unique, non-empty name")
        bad = [v.name for v in values if not isinstance(v.value, (int, float)) or not np.isfinite(v.value)]
        if bad:
            _fail(subject, f"value {bad[0]} is not a finite number", "return a finite float (or leave the value out with a reason)")
        return values

    on_held_out = compute(held_out)
    on_noise = compute(noise)
    again = compute(noise)
    if [(v.name, v.value) for v in on_noise] != [(v.name, v.value) for v in again]:
        _fail(subject, "compute() gave other values for the same inputs", "seed every random choice from the params (a seed option), "
              "not from the global RNG or the clock")
    if not all(torch.equal(a, s.images) for a, s in zip(copies, (train_set, held_out, noise))):
        _fail(subject, "compute() changed its input images in place", "work on copies (images.clone())")
    real_values = {v.name: v.value for v in on_held_out}
    if all(np.isclose(real_values.get(v.name, np.nan), v.value) for v in on_noise):
        _fail(subject, "every value is the same for uniform noise as for real held-out images", "measure the images")


# ---------------------------------------------------------------------------
# Data formats
# ---------------------------------------------------------------------------


def check_data_format(
    cls: type[DataFormat],
    source: str | Path | None,
    params: Mapping[str, Any] | None = None,
    *,
    max_records: int = 8,
    registry: Registry | None = None,
) -> None:
    """Check a data format on a real ``source``: ``can_read`` recognizes it (when the
    format needs a source), ``scan`` lists records with unique ids in the same order
    twice, ``read`` returns 2D pixels (or H x W x 1/3/4), and the core's preprocessing
    turns each into a finite image in [-1, 1]."""
    registry, name = _registered("data_format", cls, registry)
    subject = f"data format '{name}' ({cls.__module__}.{cls.__qualname__})"
    path = Path(source) if source is not None else None
    data_format = cls(cls.Params.model_validate(dict(params or {})))
    if cls.needs_source and path is not None and not cls.can_read(path):
        _fail(subject, f"can_read({path}) is False for a source the check reads", "recognize it, so that data.format: auto finds it")
    try:
        records = data_format.scan(path)
        again = data_format.scan(path)
    except RaresynthError as exc:
        raise ConformanceError(f"{subject}: scan({path}) failed: {exc}") from exc
    if not isinstance(records, list) or not records or not all(isinstance(r, Record) for r in records):
        _fail(subject, f"scan({path}) returned {type(records).__name__} with no records", "return a non-empty list of raresynth.Record")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        _fail(subject, f"scan() lists record id '{duplicate}' twice", "make ids unique within the source (add #frame=, #z=, ...)")
    if ids != [r.id for r in again]:
        _fail(subject, "scan() lists the records in another order the second time", "sort them (the split must be reproducible)")
    bad_split = [r.id for r in records if r.split not in (None, "train", "held_out")]
    if bad_split:
        _fail(subject, f"record '{bad_split[0]}' has split {records[ids.index(bad_split[0])].split!r}", "use None, 'train' or 'held_out'")
    config = DataConfig(resolution=16, channels=1, upscale=True)
    for record in records[:max_records]:
        try:
            raw = data_format.read(record)
        except RaresynthError as exc:
            raise ConformanceError(f"{subject}: read({record.id}) failed: {exc}") from exc
        if not isinstance(raw, RawImage) or not isinstance(raw.pixels, np.ndarray):
            _fail(subject, f"read({record.id}) returned {type(raw).__name__}", "return raresynth.RawImage(pixels=<numpy array>)")
        shape = raw.pixels.shape
        if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
            _fail(subject, f"read({record.id}) returned pixels shaped {shape}", "return one 2D image: (H, W) or (H, W, 1|3|4)")
        try:
            image = preprocess(raw, config, record)
        except RaresynthError as exc:
            raise ConformanceError(f"{subject}: the core cannot preprocess {record.id}: {exc}") from exc
        if not np.isfinite(image).all() or image.min() < -1 - 1e-6 or image.max() > 1 + 1e-6:
            _fail(subject, f"{record.id} preprocesses to values outside [-1, 1] or non-finite ones", "return the file's own pixel values")

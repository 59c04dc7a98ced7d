"""Sampling from a finished (or running) run: rebuild its backend from the run directory, write PNGs and a manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, apply_overrides, load_config, validate_params
from ..data.images import to_uint8
from ..errors import RunDirError
from ..evaluation.imagesets import check_samples
from ..files import atomic_path, write_text_atomic
from ..interfaces import Generator, Progress
from ..registry import Registry, get_registry
from . import checkpoint as ckpt
from .loop import build_generator, cycled_labels, make_accelerator, restore_training_state
from .rundir import MANIFEST as RUN_MANIFEST
from .rundir import read_data_spec

# ---------------------------------------------------------------------------
# Sampling from a finished (or running) run
# ---------------------------------------------------------------------------


def load_run_generator(run_dir: Path, checkpoint: Path | None = None, registry: Registry | None = None) -> tuple[Generator, RunConfig, Path, dict[str, Any]]:
    """Rebuild a run's backend from its directory and load a checkpoint (the latest by default)."""
    registry = registry or get_registry()
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir}: not a raresynth run directory (no config.yaml)")
    config = load_config(config_path, registry=registry)
    spec = read_data_spec(run_dir)
    if checkpoint is None:
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise RunDirError(f"{run_dir}: no checkpoint yet; train longer or check the run's log.jsonl")
        checkpoint = found[-1]
    generator = build_generator(config, spec, registry)
    generator.setup(make_accelerator(mixed_precision="no"))
    state = ckpt.load_training_state(checkpoint)
    restore_training_state(generator, state, Progress(total_kimg=config.budget.kimg), checkpoint)
    return generator, config, Path(checkpoint), state["progress"]


def sample_to_folder(
    run_dir: Path,
    out: Path,
    n: int,
    seed: int = 0,
    label: str | None = None,
    options: Sequence[str] = (),
    checkpoint: Path | None = None,
    overwrite: bool = False,
    registry: Registry | None = None,
    batch_size: int = 64,
) -> Path:
    """Write ``n`` PNGs for seeds ``seed .. seed+n-1`` and a ``manifest.json``; return the manifest path."""
    generator, config, checkpoint, progress = load_run_generator(run_dir, checkpoint, registry)
    option_values = apply_overrides({}, options)
    sample_params = validate_params(generator.SampleParams, option_values, "sample option")
    spec = generator.spec
    labels = None
    if label is not None:
        if not spec.num_classes:
            raise RunDirError(f"{run_dir}: --label given, but the run was trained without labels")
        if label not in spec.class_names and not (label.isdigit() and int(label) < spec.num_classes):
            raise RunDirError(f"--label '{label}': not a class of this run; classes: {', '.join(spec.class_names)}")
        index = spec.class_names.index(label) if label in spec.class_names else int(label)
        labels = torch.full((n,), index, dtype=torch.int64)
    else:
        labels = cycled_labels(spec, n)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: --out is a file, not a folder; choose another --out")
    if (out / "config.yaml").is_file() and (out / RUN_MANIFEST).is_file() and (out / "data.json").is_file():
        raise RunDirError(f"{out}: --out is a run directory (its {RUN_MANIFEST} is the run's own); choose another --out, e.g. {out / 'exported'}")
    names = [f"seed{seed + i:06d}.png" for i in range(n)]
    clashes = [name for name in names + ["manifest.json"] if (out / name).exists()]
    if clashes and not overwrite:
        raise RunDirError(f"{out}: {clashes[0]} already exists; choose another --out or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{out}: cannot create the --out folder ({exc.strerror or exc})") from None
    from PIL import Image

    entries = []
    for start in range(0, n, batch_size):
        seeds = list(range(seed + start, seed + min(n, start + batch_size)))
        batch_labels = labels[start : start + len(seeds)] if labels is not None else None
        images = to_uint8(check_samples(generator, generator.sample(seeds, batch_labels, sample_params), seeds, batch_labels, registry))
        for offset, array in enumerate(images):
            i = start + offset
            with atomic_path(out / names[i]) as temporary:
                Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(temporary, format="PNG")
            entry: dict[str, Any] = {"file": names[i], "seed": seed + i}
            if labels is not None:
                entry["label"] = int(labels[i])
                entry["class_name"] = spec.class_names[int(labels[i])]
            entries.append(entry)
    manifest = {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint.name,
        "kimg": progress["nimg"] / 1000,
        "generator": config.generator.name,
        "options": sample_params.model_dump(mode="json"),
        "images": entries,
    }
    path = out / "manifest.json"
    write_text_atomic(path, json.dumps(manifest, indent=1))
    return path

"""The run directory: which files a run writes, refusing to clobber a run, what may change on resume, and the data spec beside the checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.dataset import Dataset
from ..errors import RunDirError
from ..interfaces import DataSpec
from . import checkpoint as ckpt

RUN_FILES = ("config.yaml", "data.json", "split.json", "log.jsonl", "metrics.json", "metrics", "checkpoints", "samples", "tensorboard")


# ---------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write into an existing run unless asked; never delete foreign files."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues the run, overwrite starts afresh")
    existing = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if resume:
        if not ckpt.list_checkpoints(run_dir / "checkpoints"):
            raise RunDirError(f"{run_dir}: no checkpoint to resume from; start the run without --resume")
        return
    if not existing:
        return
    if not overwrite:
        raise RunDirError(f"{run_dir}: run directory already exists; pass --resume to continue it or --overwrite to start afresh")
    foreign = [name for name in existing if name not in RUN_FILES]
    if foreign:
        raise RunDirError(
            f"{run_dir}: --overwrite would delete files raresynth did not write ({', '.join(foreign[:3])}); choose another run_dir"
        )
    for name in existing:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def check_resumable(saved: RunConfig, new: RunConfig, run_dir: Path) -> list[str]:
    """Refuse what would make the checkpoint meaningless; return the other changes.

    The data, the seed, the backend and the list of regularizers must stay; options
    (a lower learning rate after a divergence, a longer budget) may change.
    """
    fixed = {
        "data": (saved.data, new.data),
        "seed": (saved.seed, new.seed),
        "generator.name": (saved.generator.name, new.generator.name),
        "regularizers": ([r.name for r in saved.regularizers], [r.name for r in new.regularizers]),
    }
    changed = [name for name, (old, now) in fixed.items() if old != now]
    if changed:
        raise RunDirError(f"{run_dir}: cannot resume with a changed {', '.join(changed)}; start a new run_dir instead")
    return [f"{key}: {old} -> {now}" for key, old, now in config_differences(saved.plain(), new.plain()) if key != "run_dir"]


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every value that differs between two plain configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += config_differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in config_differences(a, b, f"{prefix}.{i}")]
    return [] if old == new else [(prefix, old, new)]




def write_data_json(dataset: Dataset, path: Path) -> None:
    spec = dataset.spec
    payload = {
        "format": dataset.format,
        "spec": {"resolution": spec.resolution, "channels": spec.channels, "class_names": list(spec.class_names), "num_train": spec.num_train},
        "skipped": [list(item) for item in dataset.skipped],
    }
    path.write_text(json.dumps(payload, indent=1))


def read_data_spec(run_dir: Path) -> DataSpec:
    path = run_dir / "data.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a raresynth run directory (no data.json)")
    spec = json.loads(path.read_text())["spec"]
    return DataSpec(resolution=spec["resolution"], channels=spec["channels"], class_names=tuple(spec["class_names"]), num_train=spec["num_train"])

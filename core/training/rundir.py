"""The run directory: which files a run writes, what is raresynth's, starting afresh without losing anything, resume rules, data.json.

What a run wrote is listed in ``manifest.json`` (:class:`RunManifest`), each path added
before its file is written. Only those paths are ever moved or deleted: ``--overwrite``
moves them into ``trash/<UTC time>/`` once the new config and its data have been
checked (:func:`overwrite_run_dir`); checkpoint pruning deletes only listed checkpoints.
Files someone else put in the folder stay where they are; one that sits where the new
run would write is a reason to refuse, never to overwrite.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.dataset import Dataset
from ..errors import RunDirError
from ..files import LOCK_NAME, write_text_atomic
from ..interfaces import DataSpec
from ..version import __version__
from . import checkpoint as ckpt

MANIFEST = "manifest.json"
TRASH = "trash"
# A benchmark job's logs (raresynth bench --executor slurm|ray), inside the run directory it trains: not the run's files.
JOB_LOGS = "job_logs"
# Folders whose content is written on raresynth's behalf (metric plugins, TensorBoard): listed whole.
OWNED_FOLDERS = ("metrics", "tensorboard")
# Where a run writes, for refusing to start over someone else's files.
RUN_FILES = ("config.yaml", "data.json", "split.json", "log.jsonl", "metrics.json", *OWNED_FOLDERS)
GRID_PREFIX, GRID_SUFFIX = "grid-", ".png"


# ---------------------------------------------------------------------------
# The manifest: what raresynth wrote
# ---------------------------------------------------------------------------


class RunManifest:
    """``manifest.json``: relative paths of the files (and whole folders) raresynth wrote in a run directory."""

    def __init__(self, run_dir: Path, files: Iterable[str] = (), folders: Iterable[str] = ()):
        self.run_dir = Path(run_dir)
        self.files: set[str] = set(files)
        self.folders: set[str] = set(folders)

    @classmethod
    def load(cls, run_dir: Path) -> RunManifest | None:
        """The run's manifest; ``None`` when there is none (a folder no run wrote, or a run from before manifests)."""
        path = Path(run_dir) / MANIFEST
        if not path.is_file():
            return None
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            files, folders = content["files"], content["folders"]
            if not all(isinstance(item, str) for item in [*files, *folders]):
                raise TypeError("entries must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{path}: not a raresynth manifest ({type(exc).__name__}: {exc}); it is written by raresynth, restore or remove it") from None
        for item in [*files, *folders]:
            if Path(item).is_absolute() or ".." in Path(item).parts or not Path(item).parts:
                raise RunDirError(f"{path}: lists '{item}', which is not a path inside the run directory; restore or remove the manifest")
        return cls(run_dir, files, folders)

    def owns(self, path: Path | str) -> bool:
        relative = self._relative(path)
        return relative in self.files or any(relative == f or relative.startswith(f + "/") for f in self.folders)

    def add(self, *paths: Path | str, folder: bool = False) -> None:
        """Record paths (before writing them: a crash in between leaves a listed path that is missing, never an unlisted one)."""
        names = {self._relative(path) for path in paths}
        target = self.folders if folder else self.files
        if not names <= target:
            target |= names
            self.save()

    def remove(self, *paths: Path | str) -> None:
        names = {self._relative(path) for path in paths}
        if names & self.files:
            self.files -= names
            self.save()

    def save(self) -> None:
        content = {"written_by": f"raresynth {__version__}", "files": sorted(self.files), "folders": sorted(self.folders)}
        write_text_atomic(self.run_dir / MANIFEST, json.dumps(content, indent=1) + "\n")

    def _relative(self, path: Path | str) -> str:
        """A ``str`` is already relative to the run directory; a ``Path`` lies below it."""
        if isinstance(path, str):
            return Path(path).as_posix()
        try:
            return path.relative_to(self.run_dir).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not inside {self.run_dir}") from None


def adopt_legacy_run(run_dir: Path) -> RunManifest:
    """The manifest of a run written before manifests existed: its files, recognised by raresynth's names.

    Only for ``--resume``, where the user vouches that the folder is their raresynth run.
    """
    manifest = RunManifest(run_dir, folders=OWNED_FOLDERS)
    manifest.files |= {name for name in RUN_FILES if name not in OWNED_FOLDERS and (run_dir / name).is_file()}
    manifest.files |= {f"checkpoints/{p.name}" for p in ckpt.list_checkpoints(run_dir / "checkpoints")}
    manifest.files |= {f"samples/{p.name}" for p in _grids(run_dir)}
    manifest.save()
    return manifest


def _grids(run_dir: Path) -> list[Path]:
    folder = run_dir / "samples"
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.startswith(GRID_PREFIX) and p.name.endswith(GRID_SUFFIX) and p.is_file()]


# ---------------------------------------------------------------------------
# Starting, starting afresh, resuming
# ---------------------------------------------------------------------------


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, resume_from: Path | None = None) -> Path | None:
    """Refuse what cannot work, before any data is loaded; write nothing. Returns the checkpoint ``resume_from`` names.

    A plain start needs an empty (or missing) folder; ``--resume`` a run with a checkpoint;
    ``--overwrite`` a folder where every file the new run would write is raresynth's.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues the run, overwrite starts afresh")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run_dir is a file, not a folder; choose another run_dir")
    entries = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK_NAME, JOB_LOGS)) if run_dir.is_dir() else []
    checkpoints = ckpt.list_checkpoints(run_dir / "checkpoints")
    partial = f"pass --overwrite to start afresh (raresynth's files of the partial run are moved into {run_dir / TRASH})"
    if resume:
        if not entries:
            raise RunDirError(f"{run_dir}: no run to resume here; start the run without --resume")
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: not a raresynth run directory (no config.yaml); nothing to resume, choose another run_dir")
        if not checkpoints:
            raise RunDirError(f"{run_dir}: no checkpoint to resume from: the run stopped before its first checkpoint; {partial}")
        return resolve_resume_from(run_dir, resume_from) if resume_from is not None else None
    if not entries:
        return None
    if not overwrite:
        if checkpoints:
            raise RunDirError(f"{run_dir}: run directory already exists; pass --resume to continue it or --overwrite to start afresh "
                              f"(the old run is moved into {run_dir / TRASH})")
        if (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: holds a run that stopped before its first checkpoint, nothing to resume; {partial}")
        raise RunDirError(f"{run_dir}: folder is not empty ({', '.join(entries[:3])}); choose another run_dir, or pass --overwrite "
                          "to start a run beside those files")
    overwrite_plan(run_dir)
    return None


def resolve_resume_from(run_dir: Path, given: Path) -> Path:
    """``--resume-from``: a path, or the name of a file in the run's ``checkpoints/``; it must be one of the run's checkpoints."""
    checkpoint_dir = run_dir / "checkpoints"
    path = Path(given).expanduser()
    if not path.exists() and (checkpoint_dir / path.name).exists() and len(path.parts) == 1:
        path = checkpoint_dir / path.name
    if not path.is_file():
        raise RunDirError(f"--resume-from {given}: no such file; give one of {checkpoint_dir}/checkpoint-<images shown>.safetensors")
    if not ckpt.CHECKPOINT_PATTERN.match(path.name) or path.resolve().parent != checkpoint_dir.resolve():
        raise RunDirError(f"--resume-from {given}: not one of this run's checkpoints; give one of {checkpoint_dir}/checkpoint-<images shown>.safetensors")
    return checkpoint_dir / path.name


def overwrite_plan(run_dir: Path) -> list[str]:
    """What ``--overwrite`` moves aside: the manifest's paths that exist. Raises when anything else is in the way."""
    manifest = RunManifest.load(run_dir) or RunManifest(run_dir)
    ours = sorted(p for p in manifest.files | manifest.folders if os.path.lexists(run_dir / p))
    for relative in ours:
        parent = run_dir
        for part in Path(relative).parts[:-1]:
            parent = parent / part
            if parent.is_symlink():
                raise RunDirError(f"{run_dir}: {parent.name} is a symbolic link (to {os.readlink(parent)}); --overwrite moves only what "
                                  "lies inside run_dir: replace the link by a folder, or choose another run_dir")
    in_the_way = [name for name in RUN_FILES if os.path.lexists(run_dir / name) and not manifest.owns(name)]
    in_the_way += [f"checkpoints/{p.name}" for p in ckpt.list_checkpoints(run_dir / "checkpoints") if not manifest.owns(p)]
    in_the_way += [f"samples/{p.name}" for p in _grids(run_dir) if not manifest.owns(p)]
    if in_the_way:
        shown = ", ".join(in_the_way[:4]) + (f" and {len(in_the_way) - 4} more" if len(in_the_way) > 4 else "")
        legacy = "" if (run_dir / MANIFEST).is_file() else f", and the folder has no {MANIFEST}: no run wrote it, or one from before manifests"
        raise RunDirError(f"{run_dir}: --overwrite would replace {shown}, which raresynth did not write (not in {MANIFEST}{legacy}); "
                          "move them away or choose another run_dir")
    return ours + ([MANIFEST] if (run_dir / MANIFEST).is_file() else [])


def new_trash_folder(run_dir: Path) -> Path:
    """``run_dir/trash/<UTC time>/``, a new folder (never reused)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        folder = run_dir / TRASH / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RunDirError(f"{run_dir / TRASH}: cannot create a new folder there; empty it")


def move_to_trash(run_dir: Path, relatives: Iterable[str], trash: Path | None = None) -> Path:
    """Move paths (relative to ``run_dir``) into a trash folder, keeping their place below it; return the folder."""
    trash = trash or new_trash_folder(run_dir)
    for relative in relatives:
        target = trash / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(run_dir / relative, target)
        except OSError as exc:
            raise RunDirError(f"{run_dir / relative}: could not move it into {trash} ({exc.strerror or exc}); "
                              f"what was moved already is there, nothing was deleted") from None
    return trash


def overwrite_run_dir(run_dir: Path) -> Path | None:
    """``--overwrite``, once the new config and data are known to work: move the old run's files into the trash.

    Returns the trash folder (``None`` when there was nothing to move). Files raresynth did
    not write stay where they are.
    """
    ours = overwrite_plan(run_dir)
    if not ours:
        return None
    trash = move_to_trash(run_dir, ours)
    for folder in ("checkpoints", "samples"):  # emptied by the move: tidy (a folder with someone's files stays)
        try:
            (run_dir / folder).rmdir()
        except OSError:
            pass
    return trash


def choose_checkpoint(run_dir: Path, manifest: RunManifest, resume_from: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from and its state: ``resume_from``, or the newest one that reads and passes its checksum.

    A corrupt newer checkpoint is skipped with a one-line warning. Checkpoints newer than
    the chosen one (skipped, or abandoned by ``--resume-from``) are moved into the trash,
    so that the run goes on from the chosen one alone.
    """
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if resume_from is not None:
        chosen, state = resume_from, ckpt.load_training_state(resume_from)
    else:
        problems = []
        for path in reversed(found):
            try:
                chosen, state = path, ckpt.load_training_state(path)
                break
            except RunDirError as exc:
                problems.append(str(exc))
        else:
            raise RunDirError(f"{run_dir}: no checkpoint can be resumed ({len(found)} tried; newest: {problems[0]}); "
                              "pass --overwrite to start afresh")
        if problems:
            print(f"warning: {problems[0]}; resuming from the newest good checkpoint, {chosen.name}", file=sys.stderr)
    newer = [p for p in found if ckpt.checkpoint_nimg(p) > ckpt.checkpoint_nimg(chosen)]
    if newer:
        mine = [f"checkpoints/{p.name}" for p in newer if manifest.owns(p)]
        kept = [p.name for p in newer if not manifest.owns(p)]
        if kept:
            raise RunDirError(f"{run_dir}: {kept[0]} is newer than {chosen.name} and raresynth did not write it (not in {MANIFEST}); "
                              "move it out of checkpoints/ first")
        trash = move_to_trash(run_dir, mine)
        manifest.remove(*mine)
        print(f"raresynth: moved {len(mine)} checkpoint(s) newer than {chosen.name} into {trash}", file=sys.stderr)
    return chosen, state


def logged_train_seconds(run_dir: Path, nimg: int) -> float:
    """The training time a run had spent when it had shown ``nimg`` images: its last tick at or before them in ``log.jsonl``.

    Wall-clock time is not part of a checkpoint (it would differ between a resumed and an
    uninterrupted run); ``budget.minutes`` reads it from the log instead. 0 when none is logged.
    """
    seconds = 0.0
    try:
        text = (Path(run_dir) / "log.jsonl").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return seconds
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            if round(float(entry["kimg"]) * 1000) <= nimg and "train_seconds" in entry:
                seconds = float(entry["train_seconds"])
        except (ValueError, KeyError, TypeError):
            continue
    return seconds


def trim_log(path: Path, nimg: int) -> int:
    """Drop ``log.jsonl`` lines past ``nimg`` images (logged after the checkpoint a run resumes from) and torn lines.

    A resumed run logs those ticks again; without this the log would hold them twice.
    Returns the number of lines dropped; the file is rewritten atomically only if any were.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            keep = isinstance(entry, dict) and round(float(entry["kimg"]) * 1000) <= nimg
        except (ValueError, KeyError, TypeError):
            keep = False  # a line cut short by a kill
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


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


# ---------------------------------------------------------------------------
# data.json
# ---------------------------------------------------------------------------


def write_data_json(dataset: Dataset, path: Path) -> None:
    spec = dataset.spec
    payload = {
        "format": dataset.format,
        "spec": {"resolution": spec.resolution, "channels": spec.channels, "class_names": list(spec.class_names), "num_train": spec.num_train},
        "skipped": [list(item) for item in dataset.skipped],
    }
    write_text_atomic(path, json.dumps(payload, indent=1))


def read_data_spec(run_dir: Path) -> DataSpec:
    path = run_dir / "data.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a raresynth run directory (no data.json)")
    try:
        spec = json.loads(path.read_text())["spec"]
        return DataSpec(resolution=spec["resolution"], channels=spec["channels"], class_names=tuple(spec["class_names"]), num_train=spec["num_train"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: not raresynth's data.json ({type(exc).__name__}: {exc}); it is written by raresynth, restore it") from None

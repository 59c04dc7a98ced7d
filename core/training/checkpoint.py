"""Checkpoints as safetensors: tensors in the file body, structure as JSON metadata.

A backend's ``state_dict()`` is a nested structure (dicts, lists, tensors, numbers,
strings, ``None``), like ``torch.optim.Optimizer.state_dict()``. :func:`flatten`
splits it into named tensors and a JSON skeleton; :func:`unflatten` puts it back.
Nothing is pickled, so loading a checkpoint never runs code.

Checkpoints are written atomically (:func:`raresynth.files.atomic_path`), so a crash or
a full disk mid-write leaves the previous checkpoint intact. Each carries the sha256 of
its tensors (name, dtype, shape and bytes) in its metadata; :func:`load_state` checks it,
so a flipped bit is an error rather than a silently different run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import FileWriteError, RunDirError
from ..files import atomic_path

FORMAT_VERSION = "2"  # 2: with CHECKSUM_KEY; version 1 files (no checksum) still load
STATE_KEY = "raresynth_state"
CHECKSUM_KEY = "tensors_sha256"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d{9})\.safetensors$")


def flatten(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``{name: tensor}`` and a JSON-serializable skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            # clone: safetensors refuses tensors that share storage (tied weights, views)
            tensors[path] = node.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(node, dict):
            items = []
            for key, value in node.items():
                if not isinstance(key, (str, int)):
                    raise TypeError(f"state key {key!r} at '{path}' must be a str or int")
                items.append([key, walk(value, f"{path}/{key}" if path else str(key))])
            return {"__dict__": items}
        if isinstance(node, (list, tuple)):
            items = [walk(value, f"{path}/{i}" if path else str(i)) for i, value in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"state value at '{path}' has type {type(node).__name__}; use tensors, numbers, strings, lists or dicts")

    skeleton = walk(obj, "")
    return tensors, skeleton


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {key: unflatten(tensors, value) for key, value in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten(tensors, value) for value in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten(tensors, value) for value in skeleton]
    return skeleton


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_state(state: Any, path: Path) -> None:
    """Write ``state`` to ``path`` atomically as safetensors, with the checksum of its tensors."""
    path = Path(path)
    tensors, skeleton = flatten(state)
    metadata = {STATE_KEY: json.dumps(skeleton), "format_version": FORMAT_VERSION, CHECKSUM_KEY: tensors_sha256(tensors)}
    try:
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
    except SafetensorError as exc:  # its I/O errors arrive as text: "... os error 28"
        text = " ".join(str(exc).split())
        full = "No space left on device" in text or "os error 28" in text or "StorageFull" in text
        hint = "the disk is full: free some space and run again" if full else "check the folder and run again"
        kept = "; the previous version is unchanged" if path.exists() else ""
        raise FileWriteError(f"{path}: could not write it ({text}){kept}; {hint}") from None


def load_state(path: Path, device: str | torch.device = "cpu") -> Any:
    """Read a state written by :func:`save_state` (no unpickling), checking its checksum."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        raise RunDirError(f"{path}: not a readable raresynth checkpoint ({reason}); use an earlier checkpoint") from None
    if STATE_KEY not in metadata:
        raise RunDirError(f"{path}: safetensors file without raresynth state (was it written by raresynth?)")
    version = metadata.get("format_version", "1")
    if version != "1":
        if CHECKSUM_KEY not in metadata:
            raise RunDirError(f"{path}: checkpoint without the checksum of its tensors (format {version}); use an earlier checkpoint")
        if tensors_sha256(tensors) != metadata[CHECKSUM_KEY]:
            raise RunDirError(f"{path}: checkpoint is corrupt (its tensors do not match their sha256); use an earlier checkpoint")
    try:
        state = unflatten(tensors, json.loads(metadata[STATE_KEY]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: checkpoint metadata is not raresynth's ({type(exc).__name__}: {exc}); use an earlier checkpoint") from None
    if str(device) != "cpu":
        state = _to_device(state, device)
    return state


def _to_device(node: Any, device: str | torch.device) -> Any:
    if isinstance(node, torch.Tensor):
        return node.to(device)
    if isinstance(node, dict):
        return {key: _to_device(value, device) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_to_device(value, device) for value in node]
        return tuple(items) if isinstance(node, tuple) else items
    return node


def load_training_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint of the training loop: ``generator``, ``regularizers`` and ``progress`` (``nimg``, ``step``)."""
    state = load_state(path, device)
    progress = state.get("progress") if isinstance(state, dict) else None
    problem = None
    if not isinstance(state, dict) or "generator" not in state:
        problem = "no 'generator' state"
    elif not isinstance(progress, dict) or not all(isinstance(progress.get(key), int) for key in ("nimg", "step")):
        problem = "no 'progress' with integer 'nimg' and 'step'"
    elif not isinstance(state.get("regularizers", []), list):
        problem = "'regularizers' is not a list"
    if problem:
        raise RunDirError(f"{path}: not a checkpoint of raresynth's training loop ({problem}); use a checkpoint a run wrote")
    return state


def checkpoint_path(checkpoint_dir: Path, nimg: int) -> Path:
    return checkpoint_dir / f"checkpoint-{nimg:09d}.safetensors"


def checkpoint_nimg(path: Path) -> int:
    """Images shown when the checkpoint at ``path`` was written (from its file name)."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise RunDirError(f"{path}: not a raresynth checkpoint name (checkpoint-<images shown>.safetensors)")
    return int(match.group(1))


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoints in ``checkpoint_dir``, oldest first (by images shown)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def prune_checkpoints(checkpoint_dir: Path, keep: int, owned: Callable[[Path], bool] | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recent checkpoints; return the deleted ones.

    Only files raresynth names are considered, and of those only the ones ``owned``
    accepts (a run passes its manifest: a checkpoint copied in by hand is never deleted).
    """
    deleted = []
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        if owned is None or owned(old):
            old.unlink(missing_ok=True)
            deleted.append(old)
    return deleted

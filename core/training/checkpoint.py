"""Checkpoints as safetensors: tensors in the file body, structure as JSON metadata.

A backend's ``state_dict()`` is a nested structure (dicts, lists, tensors, numbers,
strings, ``None``), like ``torch.optim.Optimizer.state_dict()``. :func:`flatten`
splits it into named tensors and a JSON skeleton; :func:`unflatten` puts it back.
Nothing is pickled, so loading a checkpoint never runs code.

Checkpoints are written atomically (a temporary file in the same folder, then
``os.replace``), so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import RunDirError

FORMAT_VERSION = "1"
STATE_KEY = "raresynth_state"
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


def save_state(state: Any, path: Path) -> None:
    """Write ``state`` to ``path`` atomically as safetensors."""
    tensors, skeleton = flatten(state)
    metadata = {STATE_KEY: json.dumps(skeleton), "format_version": FORMAT_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_state(path: Path, device: str | torch.device = "cpu") -> Any:
    """Read a state written by :func:`save_state` (no unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path}: not a readable raresynth checkpoint ({exc}); use an earlier checkpoint") from None
    if STATE_KEY not in metadata:
        raise RunDirError(f"{path}: safetensors file without raresynth state (was it written by raresynth?)")
    return unflatten(tensors, json.loads(metadata[STATE_KEY]))


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


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints (only files raresynth names)."""
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        old.unlink()

"""Converting image tensors to files: PNG grids and 8-bit arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8 (values outside are clipped)."""
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def save_grid(images: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """Tile images into one PNG, ``columns`` wide (default: about square)."""
    array = to_uint8(images)
    n, h, w, c = array.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i in range(n):
        row, col = divmod(i, columns)
        grid[row * h : (row + 1) * h, col * w : (col + 1) * w] = array[i]
    with atomic_path(path) as temporary:  # a kill mid-write leaves no torn PNG
        Image.fromarray(grid[..., 0] if c == 1 else grid).save(temporary, format="PNG")

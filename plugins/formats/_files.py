"""Small file helpers shared by the built-in formats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from raresynth import DataError


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular, non-hidden file under ``root``, recursively, in sorted order.

    Hidden files and folders (names starting with ``.``, such as ``.DS_Store`` or
    ``.ipynb_checkpoints``) are skipped.
    """
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield from iter_files(path)
        elif path.is_file():
            yield path


def relative_id(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes: a record id stable across systems."""
    return path.relative_to(root).as_posix()


def source_root(source: Path) -> Path:
    """The folder record ids are relative to: the source itself, or a single file's folder."""
    return source if source.is_dir() else source.parent


def require_nonempty(path: Path) -> None:
    """Raise a :class:`DataError` for a 0-byte file (an interrupted copy or download)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: 0-byte file (an interrupted copy or download?); replace or remove it")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, for embedding in a :class:`DataError`."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

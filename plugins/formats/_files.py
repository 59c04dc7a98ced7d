"""Small file helpers shared by the built-in formats."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raresynth import DataError, Record

#: What a directory entry that is neither a folder nor a regular file is, for messages.
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"))


@dataclass
class Walk:
    """What :func:`walk_files` found: the files to read, and the entries left out with the reason."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path under the root, why)


def walk_files(root: Path) -> Walk:
    """Every regular, non-hidden file under ``root``, recursively, in sorted order; each file once.

    Hidden files and folders (names starting with ``.``, such as ``.DS_Store`` or
    ``.ipynb_checkpoints``) are ignored. Symbolic links are followed with care, so
    that no image is listed twice (which would mislabel it and could put it on both
    sides of the split):

    * a link to a folder inside ``root`` (``ln -s .. c2/up``, a loop, or a second path
      to a folder walked anyway) is not followed; nor is a link to a folder outside
      ``root`` that was already walked;
    * a file reached by two paths (a link, a hard link, a linked folder) is listed
      once, by the path without links when there is one, else the first in sorted order.

    Dangling links, FIFOs, sockets, devices and unreadable files are never opened
    (a FIFO would block); they and the entries above are in :attr:`Walk.skipped`.
    """
    walk = Walk()
    root_real = Path(os.path.realpath(root))
    found: list[tuple[Path, bool, tuple[int, int]]] = []  # (path, reached through a link, (st_dev, st_ino))
    _walk(root, root_real, {root_real}, False, found, walk.skipped)
    first: dict[tuple[int, int], int] = {}
    for i, (_, via_link, key) in enumerate(found):
        if key not in first or (found[first[key]][1] and not via_link):
            first[key] = i
    for i, (path, _, key) in enumerate(found):
        if first[key] == i:
            walk.files.append(path)
        else:
            walk.skipped.append((path, f"the same file as {found[first[key]][0]}, listed once"))
    return walk


def _walk(folder: Path, root_real: Path, visited: set[Path], via_link: bool,
          found: list[tuple[Path, bool, tuple[int, int]]], skipped: list[tuple[Path, str]]) -> None:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        skipped.append((folder, f"folder not readable ({exc.strerror or exc})"))
        return
    for path in entries:
        if path.name.startswith("."):
            continue
        is_link = path.is_symlink()
        try:
            info = path.stat()  # follows the link
        except (OSError, RuntimeError) as exc:
            target = os.readlink(path) if is_link else "?"
            loop = getattr(exc, "errno", None) == errno.ELOOP
            skipped.append((path, f"symbolic link loop (to {target})" if loop else f"dangling symbolic link (to {target}, which does not exist)"))
            continue
        if stat.S_ISDIR(info.st_mode):
            real = Path(os.path.realpath(path))
            if is_link and (real == root_real or root_real in real.parents):
                skipped.append((path, f"symbolic link to a folder inside the source ({real}); not followed, its files are read there"))
            elif real in visited:
                skipped.append((path, f"symbolic link to a folder already read ({real}); not followed"))
            else:
                visited.add(real)
                _walk(path, root_real, visited, via_link or is_link, found, skipped)
        elif stat.S_ISREG(info.st_mode):
            if not os.access(path, os.R_OK):
                skipped.append((path, "not readable (permission denied)"))
            else:
                found.append((path, via_link or is_link, (info.st_dev, info.st_ino)))
        else:
            kind = next((name for test, name in _SPECIAL_KINDS if test(info.st_mode)), "not a regular file")
            skipped.append((path, f"{kind}, not an image file; not opened"))


def iter_files(root: Path) -> Iterator[Path]:
    """The files of :func:`walk_files` (without what it skipped)."""
    yield from walk_files(root).files


def skipped_records(walk: Walk, root: Path, keep: Callable[[Path], bool]) -> list[Record]:
    """Records for the folders ``walk`` did not follow, and the files it skipped that ``keep`` says the format would have read.

    The core never reads them; it lists them with the reason (``data inspect``,
    ``data.json``).
    """
    return [Record(id=relative_id(path, root), source=path, skipped=reason) for path, reason in walk.skipped if path.is_dir() or keep(path)]


def readable(source: Path, accept: Callable[[Path], bool]) -> bool:
    """``can_read`` for a format of one file per image or volume: ``source`` is a file ``accept`` takes, or a folder with one."""
    if source.is_file():
        return accept(source)
    return source.is_dir() and any(accept(path) for path in iter_files(source))


def files_to_scan(source: Path | None, keep: Callable[[Path], bool]) -> tuple[Path, list[Path], list[Record]]:
    """What a format's ``scan`` starts from: the root record ids are relative to, the files to read, and the skipped entries' records.

    A single file is read as given; in a folder, the files of :func:`walk_files` that
    ``keep`` accepts, and :func:`skipped_records` for what the walk left out.
    """
    if source is None or not source.exists():
        raise DataError(f"{source}: not found")
    root = source_root(source)
    if not source.is_dir():
        return root, [source], []
    walk = walk_files(source)
    return root, [path for path in walk.files if keep(path)], skipped_records(walk, root, keep)


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

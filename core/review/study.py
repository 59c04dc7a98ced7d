"""A blinded reader study: the images, the key, the readers and their answers, in one SQLite file.

``STUDY_DIR/study.sqlite`` (WAL mode, ``synchronous=FULL``: an answer is on disk when the
page that accepted it is sent) holds everything:

* ``images``: every image as PNG bytes under an opaque random id, with the key (``truth``:
  real or synthetic, ``source``: ``real`` or the generator's name, ``class_name``, ``origin``:
  the record id or seed it came from). Nothing but the server reads this table, and the
  server sends a reader only the PNG bytes.
* ``readers``: a name and a private token; ``assignments``: each reader's own shuffled order.
* ``answers``: one row per (reader, image), inserted once; a second answer is refused.
* ``meta``: the study's settings and the admin token.

Every image is re-encoded the same way (:func:`encode_png`): 8-bit, one size, one channel
layout, no metadata chunk, fixed compression; so nothing but the pixels can unblind.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import to_uint8
from ..errors import ConfigError, RaresynthError
from ..interfaces import ImageSet
from ..registry import Registry

DATABASE = "study.sqlite"
REAL, SYNTHETIC = "real", "synthetic"
CALLS = (REAL, SYNTHETIC)
#: Artefact flags a reader can tick; stored by name.
ARTEFACTS = ("checkerboard", "blur", "implausible anatomy", "texture", "edges", "colour")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, png BLOB NOT NULL, truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    source TEXT NOT NULL, class_name TEXT, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    reader_id INTEGER NOT NULL REFERENCES readers(id), position INTEGER NOT NULL, image_id TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (reader_id, position), UNIQUE (reader_id, image_id));
CREATE TABLE IF NOT EXISTS answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id), image_id TEXT NOT NULL REFERENCES images(id),
    call TEXT NOT NULL CHECK (call IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    realism INTEGER CHECK (realism IS NULL OR realism BETWEEN 1 AND 5),
    artefacts TEXT NOT NULL, note TEXT NOT NULL, answered REAL NOT NULL,
    PRIMARY KEY (reader_id, image_id));
"""


class StudyError(RaresynthError):
    """A study directory, reader or answer that cannot be used as given."""


def connect(study_dir: str | Path) -> sqlite3.Connection:
    """A connection to the study's database (WAL, full sync, foreign keys); autocommit, transactions explicit."""
    path = Path(study_dir).expanduser() / DATABASE
    if not path.is_file():
        raise StudyError(f"{study_dir}: not a review study (no {DATABASE}); make one with `raresynth review create`")
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.row_factory = sqlite3.Row
    return connection


def encode_png(pixels: np.ndarray) -> bytes:
    """One ``(H, W, C)`` uint8 image as PNG: grey (``L``) or ``RGB``, no text, time or colour-profile chunk."""
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    # PIL writes only IHDR, IDAT and IEND unless given pnginfo / icc_profile / dpi: nothing but pixels.
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Drawing the images
# ---------------------------------------------------------------------------


@dataclass
class Source:
    """Where a study's images come from: ``name`` (``real`` or a generator's name) and its images."""

    name: str
    images: ImageSet
    origins: list[str]


def _quota(total: int, classes: list[Any]) -> dict[Any, int]:
    """``total`` spread over ``classes`` as evenly as possible (the first ones get the remainder)."""
    base, extra = divmod(total, len(classes))
    return {c: base + (i < extra) for i, c in enumerate(classes)}


def _draw(source: Source, quota: dict[Any, int], class_names: tuple[str, ...], rng: np.random.Generator) -> list[int]:
    """Indices into ``source.images``: ``quota[label]`` images of each label (``None``: unlabelled), at random."""
    labels = source.images.labels
    chosen: list[int] = []
    for label, count in quota.items():
        pool = np.arange(len(source.images)) if label is None else np.flatnonzero(labels.numpy() == label)
        if len(pool) < count:
            what = f"class '{class_names[label]}'" if label is not None else "images"
            raise ConfigError(f"{source.name}: the study needs {count} {what} but there are only {len(pool)}; "
                              "lower --n or give more images")
        chosen += sorted(rng.choice(pool, size=count, replace=False).tolist())
    return chosen


def load_real(path: str | Path, registry: Registry) -> tuple[Source, tuple[str, ...], int, int]:
    """The held-out images of a data config or run directory; also its class names, resolution and channels."""
    from ..evaluation.training_data import load_training_data

    dataset = load_training_data(path, registry)
    if len(dataset.held_out) == 0:
        raise ConfigError(f"{path}: the data has no held-out images; a reader study shows held-out real images (never training ones)")
    spec = dataset.spec
    return Source(REAL, dataset.held_out, list(dataset.split["held_out"])), spec.class_names, spec.resolution, spec.channels


def load_synthetic(path: str | Path, need: dict[Any, int], class_names: tuple[str, ...], resolution: int, channels: int,
                   registry: Registry, seed: int) -> Source:
    """A run directory (sampled now, ``need[label]`` images per class) or a folder of images (read as the data was)."""
    from ..evaluation.imagesets import image_files, load_image_folder, sample_image_set

    path = Path(path).expanduser()
    name = path.resolve().name
    if (path / "config.yaml").is_file():
        from ..training.sampling import load_run_generator

        generator, _, _, _ = load_run_generator(path, registry=registry)
        spec = generator.spec
        if (spec.resolution, spec.channels) != (resolution, channels):
            raise ConfigError(f"{path}: the run makes {spec.resolution}x{spec.resolution} images with {spec.channels} channels, "
                              f"the real data is {resolution}x{resolution} with {channels}; use a run trained on the same data")
        labels = None
        if None not in need:
            if tuple(spec.class_names) != class_names:
                raise ConfigError(f"{path}: the run's classes ({', '.join(spec.class_names) or 'none'}) are not the real data's "
                                  f"({', '.join(class_names)})")
            labels = torch.tensor([label for label, count in need.items() for _ in range(count)], dtype=torch.int64)
        n = sum(need.values())
        first_seed = 10_000_000 + 100_000 * seed
        images = sample_image_set(generator, n, labels, first_seed=first_seed, name=name)
        return Source(name, images, [f"seed {first_seed + i}" for i in range(n)])
    if not path.is_dir():
        raise ConfigError(f"--synthetic {path}: neither a run directory (no config.yaml) nor a folder of images")
    images = load_image_folder(path, resolution, channels, class_names=class_names, name=name)
    if None not in need and images.labels is None:
        raise ConfigError(f"{path}: the real data has classes ({', '.join(class_names)}) but these images have no labels; "
                          "put them in class subfolders or give a manifest.json")
    return Source(name, images, [str(p.relative_to(path)) for p in image_files(path, class_names)])


def create_study(study_dir: str | Path, real: str | Path, synthetic: list[str | Path], registry: Registry,
                 n: int = 100, seed: int = 0) -> dict[str, Any]:
    """Draw ``n`` images (half real held-out, half synthetic, split over the generators and classes) into a new study.

    Returns a summary: counts per source and class, and the admin token.
    """
    study_dir = Path(study_dir).expanduser()
    if (study_dir / DATABASE).exists():
        raise StudyError(f"{study_dir}: a study exists there already; choose another STUDY_DIR")
    if not synthetic:
        raise ConfigError("give at least one --synthetic run directory or image folder")
    if n < 2 * len(synthetic) or n % 2:
        raise ConfigError(f"--n {n}: must be even and at least {2 * len(synthetic)} (half real, half synthetic, "
                          f"at least one image per generator)")
    rng = np.random.default_rng(seed)
    real_source, class_names, resolution, channels = load_real(real, registry)
    classes: list[Any] = list(range(len(class_names))) if class_names else [None]
    real_quota = _quota(n // 2, classes)
    drawn = [(real_source, _draw(real_source, real_quota, class_names, rng))]
    names = Counter()
    for i, (path, share) in enumerate(zip(synthetic, _quota(n // 2, list(range(len(synthetic)))).values())):
        need = _quota(share, classes)
        source = load_synthetic(path, need, class_names, resolution, channels, registry, seed + i)
        names[source.name] += 1
        if names[source.name] > 1 or source.name == REAL:
            source.name = f"{source.name}-{names[source.name]}"
        drawn.append((source, _draw(source, need, class_names, rng)))

    study_dir.mkdir(parents=True, exist_ok=True)
    temporary = study_dir / (DATABASE + ".creating")
    temporary.unlink(missing_ok=True)
    rows = []
    for source, indices in drawn:
        pixels = to_uint8(source.images.images[indices])
        for index, array in zip(indices, pixels):
            label = source.images.labels[index].item() if source.images.labels is not None and class_names else None
            rows.append((secrets.token_hex(8), encode_png(array), REAL if source.name == REAL else SYNTHETIC, source.name,
                         class_names[label] if label is not None else None, source.origins[index]))
    rng.shuffle(rows)  # the table's order says nothing either
    admin_token = secrets.token_urlsafe(24)
    settings = {"n": n, "seed": seed, "resolution": resolution, "channels": channels, "class_names": list(class_names),
                "real": str(real), "synthetic": [str(p) for p in synthetic], "generators": [s.name for s, _ in drawn[1:]],
                "created": time.time()}
    # Built under another name and renamed when complete: a study.sqlite is always a whole study.
    connection = sqlite3.connect(temporary)
    try:
        connection.executescript(SCHEMA)
        connection.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
        connection.executemany("INSERT INTO meta VALUES (?, ?)", [("settings", json.dumps(settings)), ("admin_token", admin_token)])
        connection.commit()
    except BaseException:
        connection.close()
        temporary.unlink(missing_ok=True)
        raise
    connection.close()
    os.replace(temporary, study_dir / DATABASE)
    counts = Counter(f"{source}/{class_name}" if class_name else source for _, _, _, source, class_name, _ in rows)
    return {"study_dir": str(study_dir), "images": len(rows), "counts": dict(sorted(counts.items())), "admin_token": admin_token}


# ---------------------------------------------------------------------------
# Readers and answers
# ---------------------------------------------------------------------------


def settings(connection: sqlite3.Connection) -> dict[str, Any]:
    return json.loads(connection.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])


def admin_token(connection: sqlite3.Connection) -> str:
    return connection.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()[0]


def add_reader(study_dir: str | Path, name: str) -> str:
    """A new reader with a private token and an order of their own (shuffled by the OS's random source); the token."""
    name = name.strip()
    if not name or len(name) > 100:
        raise StudyError(f"reader name '{name}': give 1 to 100 characters")
    connection = connect(study_dir)
    try:
        token = secrets.token_urlsafe(24)
        ids = [row[0] for row in connection.execute("SELECT id FROM images ORDER BY id")]
        secrets.SystemRandom().shuffle(ids)
        connection.execute("BEGIN IMMEDIATE")
        try:
            cursor = connection.execute("INSERT INTO readers (name, token, created) VALUES (?, ?, ?)", (name, token, time.time()))
        except sqlite3.IntegrityError:
            connection.execute("ROLLBACK")
            raise StudyError(f"{study_dir}: a reader named '{name}' exists already; choose another name") from None
        connection.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(cursor.lastrowid, i, image) for i, image in enumerate(ids)])
        connection.execute("COMMIT")
        return token
    finally:
        connection.close()


@dataclass(frozen=True)
class Answer:
    """What a reader said about one image."""

    call: str
    confidence: int
    realism: int | None = None
    artefacts: tuple[str, ...] = ()
    note: str = ""


class AnswerRefused(StudyError):
    """An answer the study does not take; ``status`` is the HTTP status the server sends."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def reader_of(connection: sqlite3.Connection, token: str) -> sqlite3.Row | None:
    return connection.execute("SELECT id, name FROM readers WHERE token = ?", (token,)).fetchone()


def progress_of(connection: sqlite3.Connection, reader_id: int) -> tuple[int, int, str | None]:
    """``(answered, total, the next image id or None when done)``: the first position in the reader's order not answered."""
    total = connection.execute("SELECT COUNT(*) FROM assignments WHERE reader_id = ?", (reader_id,)).fetchone()[0]
    answered = connection.execute("SELECT COUNT(*) FROM answers WHERE reader_id = ?", (reader_id,)).fetchone()[0]
    row = connection.execute(
        "SELECT image_id FROM assignments a WHERE reader_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM answers b WHERE b.reader_id = a.reader_id AND b.image_id = a.image_id) ORDER BY position LIMIT 1",
        (reader_id,)).fetchone()
    return answered, total, row[0] if row else None


def record_answer(connection: sqlite3.Connection, reader_id: int, image_id: str, answer: Answer) -> None:
    """Store one answer, committed before returning; refuse an image not in the study, answered already, or not the next one."""
    connection.execute("BEGIN IMMEDIATE")  # one writer at a time: the checks and the insert see the same state
    try:
        assigned = connection.execute("SELECT 1 FROM assignments WHERE reader_id = ? AND image_id = ?", (reader_id, image_id)).fetchone()
        if not assigned:
            raise AnswerRefused(f"image '{image_id}' is not in this study", 404)
        if connection.execute("SELECT 1 FROM answers WHERE reader_id = ? AND image_id = ?", (reader_id, image_id)).fetchone():
            raise AnswerRefused("this image was answered already (a page sent twice, or an old tab); the first answer is kept", 409)
        _, _, current = progress_of(connection, reader_id)
        if image_id != current:
            raise AnswerRefused("this is not the image you are asked about now (an old tab?); reload the page", 409)
        connection.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (reader_id, image_id, answer.call, answer.confidence, answer.realism, json.dumps(list(answer.artefacts)),
                            answer.note, time.time()))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise

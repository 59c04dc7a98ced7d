"""The ``memorization`` metric: the audit of :mod:`.audit` in pixel space and in an embedding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from raresynth import (
    EmbeddingParams,
    ImageSet,
    Metric,
    MetricValue,
    PerImageCache,
    Preprocessing,
    check_compatible,
    check_embedding,
    content_hash,
    features,
)

from .audit import (
    SpaceAudit,
    audit_space,
    embedding_distances,
    pixel_distances,
    save_pairs,
    write_json,
)
from .matching import FLIPS, Matching, flipped


class MemorizationParams(EmbeddingParams):
    percentile: float = Field(5.0, gt=0, lt=100, description="copy threshold: this percentile of held-out-to-training distances (its false-positive rate)")
    max_shift: int = Field(2, ge=0, description="pixel matching: shifts up to this many pixels (at match_resolution) in each direction")
    crop: int = Field(2, ge=0, description="pixel matching: also match the synthetic image shrunk by this many pixels a side (a crop); 0: no crops")
    match_resolution: int | None = Field(32, ge=8, description="pixel matching runs at this resolution; null: the images' own")
    smoothing: float = Field(1.5, ge=0, description="pixel matching: Gaussian sigma (pixels at match_resolution) against noise; 0: none")
    flips: bool = Field(True, description="match horizontal and vertical flips too, in pixel space and in the embedding")
    fpr_splits: int = Field(20, ge=1, description="random halvings of the held-out set for the measured false-positive rate")
    pixel_similarity: Literal["ncc", "ssim"] = Field("ncc", description="pixel-space distance: 1 - normalized cross-correlation, or 1 - SSIM")
    embedding: str | None = Field("domain", description="'domain', 'pixels' or a torch-fidelity extractor; null: pixel space only")
    meehan_cells: int = Field(1, ge=1, description="1: Meehan's Z_U over all images; k > 1: their C_T over k k-means cells")
    artifacts_dir: str | None = Field(None, description="folder for the closest-pairs PNG grids and JSON lists; null: none written")
    grid_pairs: int = Field(16, ge=1, description="closest pairs shown in each grid")


class Memorization(Metric):
    """``copy_rate_<space>``, ``copy_threshold_fpr_<space>``, ``meehan_z_<space>``, ``authenticity_<space>`` (and its held-out baseline).

    The spaces are ``pixel`` and the embedding's tag (``domain`` by default).
    """

    Params = MemorizationParams
    ROW_BUDGET = 20_000_000  # distances kept (with their transform indices): about 10 bytes each, 200 MB
    uses_held_out = True  # held-out-to-train distances calibrate the copy threshold and the Z test

    def __init__(self, params, spec):
        super().__init__(params, spec)
        if params.embedding is not None:
            check_embedding(params.embedding, params.weights_path, params.verify_weights, params.weights_sha256)
        # Every image's distances to the training set, computed once per image: the half-samples,
        # the reference rows and a benchmark's runs share the held-out and training rows.
        self._rows = PerImageCache(self.ROW_BUDGET, size=lambda row: row[0].numel())

    def audits(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[SpaceAudit]:
        """The audit in pixel space, then in the embedding (when one is set)."""
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        audits = [self._pixel_audit(train, held_out, synthetic)]
        if p.embedding is not None:
            embedding = p.build_embedding(train, metric="fid")
            f_train = features(train, embedding)
            key = f"{embedding.id} flips={p.flips} " + content_hash(train.images)

            def to_train(images: torch.Tensor) -> tuple[torch.Tensor, None]:
                return self._flip_distances(images, f_train, embedding), None

            synthetic_to_train, held_out_to_train, train_to_train = (
                _cached_rows(self._rows, s.images, key, to_train)[0] for s in (synthetic, held_out, train))
            vectors = None
            if p.meehan_cells > 1:  # cells in the embedding: the points themselves
                vectors = (f_train, features(synthetic, embedding), features(held_out, embedding))
            audits.append(audit_space(
                embedding.tag, synthetic_to_train, held_out_to_train, _without_self(train_to_train), p.percentile,
                p.meehan_cells, vectors, p.seed, p.fpr_splits))
        return audits

    def _flip_distances(self, images: torch.Tensor, f_train: torch.Tensor, embedding) -> torch.Tensor:
        """Embedding distances to the training set, the smallest over the flips of each image (when ``flips``)."""
        distance = None
        for flip in FLIPS if self.params.flips else FLIPS[:1]:
            f = features(flipped(images, flip), embedding)
            d = embedding_distances(f, f_train)
            distance = d if distance is None else torch.minimum(distance, d)
        return distance

    @property
    def matching(self) -> Matching:
        p = self.params
        return Matching(max_shift=p.max_shift, crop=p.crop, resolution=p.match_resolution, flips=p.flips, smoothing=p.smoothing)

    def _pixel_audit(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> SpaceAudit:
        p = self.params
        vectors = None
        if p.meehan_cells > 1:  # cells in the space NCC measures: standardized pixel vectors
            vectors = tuple(_standardized(s.images) for s in (train, synthetic, held_out))
        matching = self.matching
        key = f"{p.pixel_similarity} {matching} " + content_hash(train.images)

        def to_train(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return pixel_distances(images, train.images, p.pixel_similarity, matching=matching)

        synthetic_distance, which = _cached_rows(self._rows, synthetic.images, key, to_train)
        held_out_distance = _cached_rows(self._rows, held_out.images, key, to_train)[0]
        train_distance = _without_self(_cached_rows(self._rows, train.images, key, to_train)[0])
        return audit_space(
            "pixel", synthetic_distance, held_out_distance, train_distance, p.percentile,
            p.meehan_cells, vectors, p.seed, p.fpr_splits, which, matching.transforms() if which is not None else None)

    def audit_folder(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet, names: list[str], out_dir: Path) -> dict:
        """The audit of images from any tool (``raresynth audit``): grids and ``audit.json`` in ``out_dir``; returns the summary.

        ``names`` are the synthetic images' file names, in order. The summary holds, per
        space: ``copy_rate``, ``threshold``, ``copy_threshold_fpr`` (measured, leave-out)
        and ``copy_threshold_fpr_nominal``, ``meehan_z``, ``authenticity`` and its held-out
        baseline, and ``flagged``: the files below the threshold with their nearest
        training image (by index in the training split) and distance, nearest first.
        """
        if len(names) != len(synthetic):
            raise ValueError("one name per synthetic image")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        spaces = []
        for audit in self.audits(train, held_out, synthetic):
            grid = save_pairs(audit, synthetic.images, train.images, out_dir, self.params.grid_pairs)
            flagged = [{"file": names[pair["synthetic"]], "train_index": pair["train"], "distance": pair["distance"],
                        **({"transform": pair["transform"]} if "transform" in pair else {})}
                       for pair in audit.closest_pairs(len(synthetic)) if pair["copy"]]
            spaces.append({"space": audit.space, "copy_rate": audit.copy_rate, "threshold": audit.threshold,
                           "copy_threshold_fpr": audit.measured_fpr, "copy_threshold_fpr_nominal": audit.nominal_fpr,
                           "meehan_z": audit.meehan_z, "authenticity": audit.authenticity,
                           "authenticity_held_out": audit.held_out_authenticity, "grid": grid.name, "flagged": flagged})
        summary = {"synthetic": len(synthetic), "train": len(train), "held_out": len(held_out),
                   "percentile": self.params.percentile, "spaces": spaces}
        write_json(out_dir / "audit.json", summary)
        return summary

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        values = []
        for audit in self.audits(train, held_out, synthetic):
            values += [
                MetricValue(f"copy_rate_{audit.space}", audit.copy_rate, ideal="lower", question="privacy"),
                # the threshold's false-positive rate, measured on held-out halves: a property of the audit, not a contest
                MetricValue(f"copy_threshold_fpr_{audit.space}", audit.measured_fpr, ideal="none", question="privacy"),
                # Meehan et al. 2020: Z far above 0 is underfitting, far below 0 data-copying; real
                # held-out images score about 0 (the test's null), so the ideal is their value.
                MetricValue(f"meehan_z_{audit.space}", audit.meehan_z, ideal="real", question="privacy"),
                MetricValue(f"authenticity_{audit.space}", audit.authenticity, ideal="real", question="privacy"),
                MetricValue(f"authenticity_held_out_{audit.space}", audit.held_out_authenticity, ideal="none", question="privacy"),
            ]
            folder = self.params.artifacts_dir or self.output_dir  # the run's metrics/ folder in a training run
            if folder is not None:
                save_pairs(audit, synthetic.images, train.images, Path(folder), self.params.grid_pairs)
        return values


def _cached_rows(cache: PerImageCache, images: torch.Tensor, tag: str,
                 compute: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``compute(images)`` (distances to the training set and transform indices, or None), row by row through ``cache``."""
    if len(images) == 0:
        return compute(images)

    def per_image(new: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        distance, which = compute(new)  # rows cloned, so a kept row does not keep its whole batch alive
        return [(distance[j].clone(), None if which is None else which[j].to(torch.int16).clone()) for j in range(len(new))]

    rows = cache.rows(images, per_image, tag)
    which = None if rows[0][1] is None else torch.stack([row[1] for row in rows]).to(torch.int64)
    return torch.stack([row[0] for row in rows]), which


def _without_self(train_to_train: torch.Tensor) -> torch.Tensor:
    """Training-to-training distances with the diagonal (an image against itself) set to infinity."""
    distance = train_to_train.clone()
    distance.fill_diagonal_(float("inf"))
    return distance


def _standardized(images: torch.Tensor) -> torch.Tensor:
    flat = Preprocessing().apply(images).double().flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)

"""The ``memorization`` metric: the audit of :mod:`.audit` in pixel space and in an embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from raresynth import (
    EmbeddingParams,
    ImageSet,
    Metric,
    MetricValue,
    Preprocessing,
    check_compatible,
    check_embedding,
    features,
)

from .audit import (
    SpaceAudit,
    audit_space,
    embedding_distances,
    pixel_distances,
    save_pairs,
)


class MemorizationParams(EmbeddingParams):
    percentile: float = Field(5.0, gt=0, lt=100, description="copy threshold: this percentile of held-out-to-training distances")
    pixel_similarity: Literal["ncc", "ssim"] = Field("ncc", description="pixel-space distance: 1 - normalized cross-correlation, or 1 - SSIM")
    embedding: str | None = Field("domain", description="'domain', 'pixels' or a torch-fidelity extractor; null: pixel space only")
    meehan_cells: int = Field(1, ge=1, description="1: Meehan's Z_U over all images; k > 1: their C_T over k k-means cells")
    artifacts_dir: str | None = Field(None, description="folder for the closest-pairs PNG grids and JSON lists; null: none written")
    grid_pairs: int = Field(16, ge=1, description="closest pairs shown in each grid")


class Memorization(Metric):
    """``copy_rate_<space>``, ``meehan_z_<space>``, ``authenticity_<space>`` (and its held-out baseline) per space.

    The spaces are ``pixel`` and the embedding's tag (``domain`` by default).
    """

    Params = MemorizationParams
    uses_held_out = True  # held-out-to-train distances calibrate the copy threshold and the Z test

    def __init__(self, params, spec):
        super().__init__(params, spec)
        if params.embedding is not None:
            check_embedding(params.embedding, params.weights_path, params.verify_weights)

    def audits(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[SpaceAudit]:
        """The audit in pixel space, then in the embedding (when one is set)."""
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        audits = [self._pixel_audit(train, held_out, synthetic)]
        if p.embedding is not None:
            embedding = p.build_embedding(train, metric="fid")
            f_train, f_held, f_syn = (features(s, embedding) for s in (train, held_out, synthetic))
            audits.append(audit_space(
                embedding.tag, embedding_distances(f_syn, f_train), embedding_distances(f_held, f_train),
                embedding_distances(f_train, f_train, same=True), p.percentile, p.meehan_cells, (f_train, f_syn, f_held), p.seed))
        return audits

    def _pixel_audit(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> SpaceAudit:
        p = self.params
        vectors = None
        if p.meehan_cells > 1:  # cells in the space NCC measures: standardized pixel vectors
            vectors = tuple(_standardized(s.images) for s in (train, synthetic, held_out))
        return audit_space(
            "pixel", pixel_distances(synthetic.images, train.images, p.pixel_similarity),
            pixel_distances(held_out.images, train.images, p.pixel_similarity),
            pixel_distances(train.images, train.images, p.pixel_similarity, same=True), p.percentile, p.meehan_cells, vectors, p.seed)

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        values = []
        for audit in self.audits(train, held_out, synthetic):
            values += [
                MetricValue(f"copy_rate_{audit.space}", audit.copy_rate, ideal="lower", question="privacy"),
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


def _standardized(images: torch.Tensor) -> torch.Tensor:
    flat = Preprocessing().apply(images).double().flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)

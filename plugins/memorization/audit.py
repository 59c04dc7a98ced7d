"""The memorization and privacy audit: are synthetic images copies of training images?

Small medical datasets are memorized by GANs and diffusion models alike (Akbar et al.
2025; Dar et al. 2025; Carlini et al. 2023). The audit measures, in pixel space and
in an embedding, the nearest-neighbour distance of every synthetic image to the
training set, and of every held-out real image (never shown to the generator) to the
training set. Held-out images tell how close an honest new image from the same
distribution comes to the training set, which calibrates everything:

* copy rate: the fraction of synthetic images closer to the training set than the
  copy threshold, the k-th smallest of the H held-out distances with
  k = max(1, floor(percentile/100 * (H + 1))). For an honest image exchangeable with
  the held-out ones that is a false positive with probability k / (H + 1) <= the
  percentile (the split-conformal rank rule, Vovk et al. 2005; Angelopoulos & Bates
  2021, sec. 1): the ``nominal_fpr``. The ``measured_fpr`` checks it on images the
  threshold never saw: the held-out set is split in random halves, a threshold
  calibrated on one half by the same rule flags some of the other half; the mean
  over both directions and ``fpr_splits`` random splits. An honest generator scores
  a copy rate near the FPR; copies push it up.
* Meehan Z (Meehan, Chaudhuri & Dasgupta 2020, "A Non-Parametric Test to Detect
  Data-Copying in Generative Models", sec. 3): the Mann-Whitney U statistic of
  synthetic against held-out distances, as a z-score: about 0 for a generator that
  generalizes, far below 0 (closer than held-out data) for data-copying, far above 0
  for a generator that underfits. With ``meehan_cells > 1`` it is their C_T: Z per
  k-means cell of the training set, averaged with the held-out share of each cell.
* authenticity (Alaa et al. 2022, "How Faithful is your Synthetic Data?", sec. 3.3 and
  their code): a synthetic image is unauthentic when it is closer to its nearest
  training image than that image's own nearest training neighbour is; the score is the
  fraction of authentic synthetic images. Real unseen images are not all authentic by
  this test either, so the held-out set's score is reported beside it as the baseline.

Pixel space uses 1 - the best normalized cross-correlation under flips, shifts,
crops and intensity changes (:mod:`.matching`), or 1 - SSIM, of the 8-bit images;
the embedding uses the Euclidean distance, the smallest over the flips of the
synthetic (or held-out) image.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raresynth import (
    ConfigError,
    Preprocessing,
    normalized_correlation,
    pairwise_distances,
    save_grid,
    ssim,
)

from .matching import Matching, invariant_correlation


@dataclass
class SpaceAudit:
    """The audit in one space (``pixel`` or an embedding's tag)."""

    space: str
    synthetic_distance: torch.Tensor  # (M,) distance of each synthetic image to its nearest training image
    nearest_train: torch.Tensor  # (M,) index of that training image
    held_out_distance: torch.Tensor  # (H,) distance of each held-out image to its nearest training image
    train_distance: torch.Tensor  # (N,) distance of each training image to its nearest other training image
    threshold: float  # the copy threshold: the k-th smallest held-out distance
    copies: torch.Tensor  # (M,) bool: synthetic distance below the threshold
    meehan_z: float
    authentic: torch.Tensor  # (M,) bool
    held_out_authentic: torch.Tensor  # (H,) bool: the same test for real unseen images (the baseline)
    nominal_fpr: float = float("nan")  # k / (H + 1): the threshold's false-positive rate for an exchangeable honest image
    measured_fpr: float = float("nan")  # held-out images flagged by thresholds calibrated on the other half
    transforms: list[str] | None = None  # (M,) the transform of each synthetic image's best match (pixel space)

    @property
    def copy_rate(self) -> float:
        return float(self.copies.double().mean())

    @property
    def authenticity(self) -> float:
        return float(self.authentic.double().mean())

    @property
    def held_out_authenticity(self) -> float:
        return float(self.held_out_authentic.double().mean())

    def closest_pairs(self, count: int) -> list[dict]:
        """The ``count`` synthetic images nearest to the training set, nearest first."""
        order = torch.argsort(self.synthetic_distance, stable=True)[:count]
        return [{"synthetic": int(i), "train": int(self.nearest_train[i]), "distance": float(self.synthetic_distance[i]),
                 "copy": bool(self.copies[i]), "authentic": bool(self.authentic[i]),
                 **({"transform": self.transforms[i]} if self.transforms is not None else {})} for i in order]


# -- distances ---------------------------------------------------------------


def pixel_distances(a: torch.Tensor, b: torch.Tensor, similarity: str, same: bool = False,
                    matching: Matching | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(len(a), len(b))`` distances between 8-bit images, and the index of the best transform (or None).

    ``ncc`` with ``matching``: 1 - the best correlation under its transforms
    (:func:`.matching.invariant_correlation`); ``ncc`` without: 1 - plain normalized
    cross-correlation; ``ssim``: 1 - SSIM, no transforms. ``same``: a is b (diagonal = inf).
    """
    preprocessing = Preprocessing()
    a, b = preprocessing.apply(a), preprocessing.apply(b)
    which = None
    if similarity == "ncc" and matching is not None:
        correlation, which = invariant_correlation(a, b, matching, same=same)
        distance = 1.0 - correlation
    elif similarity == "ncc":
        distance = 1.0 - normalized_correlation(a, b)
    else:
        rows = []
        for image in a:
            rows.append(torch.cat([1.0 - ssim(image[None].expand_as(part), part).double() for part in b.split(512)]))
        distance = torch.stack(rows)
    if same:
        distance.fill_diagonal_(float("inf"))
    return distance, which


def embedding_distances(a: torch.Tensor, b: torch.Tensor, same: bool = False) -> torch.Tensor:
    distance = pairwise_distances(a, b)
    if same:
        distance.fill_diagonal_(float("inf"))
    return distance


# -- statistics --------------------------------------------------------------


def copy_threshold(held_out_distance: torch.Tensor, percentile: float) -> tuple[float, float]:
    """The copy threshold (the k-th smallest held-out distance) and its nominal false-positive rate k / (H + 1).

    k = floor(percentile/100 * (H + 1)), at least 1: with fewer than 100/percentile - 1
    held-out images the rate is above the percentile, and says so.
    """
    n = len(held_out_distance)
    k = max(1, math.floor(percentile / 100 * (n + 1)))
    return float(held_out_distance.sort().values[k - 1]), k / (n + 1)


def measured_fpr(held_out_distance: torch.Tensor, percentile: float, splits: int, seed: int) -> float:
    """Share of held-out images flagged by a threshold calibrated on the other half, over ``splits`` random halvings."""
    n = len(held_out_distance)
    if n < 4:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    rates = []
    for _ in range(splits):
        order = torch.randperm(n, generator=generator)
        halves = held_out_distance[order[: n // 2]], held_out_distance[order[n // 2 :]]
        for calibration, check in (halves, halves[::-1]):
            threshold, _ = copy_threshold(calibration, percentile)
            rates.append(float((check < threshold).double().mean()))
    return float(np.mean(rates))


def mann_whitney_z(synthetic: np.ndarray, held_out: np.ndarray) -> float:
    """Meehan et al.'s Z_U: U counts pairs with synthetic distance > held-out distance (ties 1/2)."""
    from scipy.stats import mannwhitneyu

    m, n = len(synthetic), len(held_out)
    u = mannwhitneyu(synthetic, held_out, alternative="two-sided", method="asymptotic", use_continuity=False).statistic
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def meehan_ct(synthetic: np.ndarray, held_out: np.ndarray, synthetic_cells: np.ndarray, held_out_cells: np.ndarray,
              cells: int, min_per_cell: int = 3) -> float:
    """C_T: Z_U per cell, averaged with the held-out share of each cell as weight.

    Cells with fewer than ``min_per_cell`` synthetic or held-out samples are left out
    (Meehan et al. keep cells with enough generated samples, their threshold tau).
    """
    total, weight = 0.0, 0.0
    for cell in range(cells):
        s, h = synthetic[synthetic_cells == cell], held_out[held_out_cells == cell]
        if len(s) >= min_per_cell and len(h) >= min_per_cell:
            share = len(h) / len(held_out)
            total += share * mann_whitney_z(s, h)
            weight += share
    if weight == 0:
        raise ConfigError(f"meehan_cells: no cell holds {min_per_cell} synthetic and {min_per_cell} held-out images; use fewer cells")
    return total / weight


def kmeans_cells(train: torch.Tensor, others: list[torch.Tensor], cells: int, seed: int) -> list[np.ndarray]:
    """Cell index of every row of ``others``: the nearest of ``cells`` k-means centroids of ``train``."""
    from scipy.cluster.vq import kmeans2

    if cells > len(train):
        raise ConfigError(f"meehan_cells: {cells} cells for {len(train)} training images; use at most that many")
    centroids, _ = kmeans2(train.double().numpy(), cells, minit="++", seed=np.random.default_rng(seed))
    centroids_t = torch.from_numpy(centroids)
    return [pairwise_distances(x.double(), centroids_t).argmin(dim=1).numpy() for x in others]


def audit_space(space: str, synthetic_to_train: torch.Tensor, held_out_to_train: torch.Tensor, train_to_train: torch.Tensor,
                percentile: float, cells: int = 1, vectors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                seed: int = 0, fpr_splits: int = 20, synthetic_transforms: torch.Tensor | None = None,
                transform_names: list[str] | None = None) -> SpaceAudit:
    """The audit from distance matrices (synthetic x train, held-out x train, train x train with an infinite diagonal).

    ``vectors`` (train, synthetic, held-out points) are needed for ``cells > 1``.
    """
    if train_to_train.shape[0] < 2:
        raise ConfigError("memorization: needs at least 2 training images")
    if held_out_to_train.shape[0] < 2:
        raise ConfigError("memorization: needs at least 2 held-out images to calibrate the copy threshold")
    synthetic_distance, nearest = synthetic_to_train.min(dim=1)
    held_out_distance, held_out_nearest = held_out_to_train.min(dim=1)
    train_distance = train_to_train.min(dim=1).values
    threshold, nominal = copy_threshold(held_out_distance, percentile)
    copies = synthetic_distance < threshold
    authentic = synthetic_distance > train_distance[nearest]  # Alaa et al.: beyond the training image's own nearest neighbour
    held_out_authentic = held_out_distance > train_distance[held_out_nearest]
    s, h = synthetic_distance.numpy(), held_out_distance.numpy()
    if cells > 1:
        if vectors is None:
            raise ValueError("meehan cells need the points themselves")
        train_vectors, synthetic_vectors, held_out_vectors = vectors
        synthetic_cells, held_out_cells = kmeans_cells(train_vectors, [synthetic_vectors, held_out_vectors], cells, seed)
        z = meehan_ct(s, h, synthetic_cells, held_out_cells, cells)
    else:
        z = mann_whitney_z(s, h)
    transforms = None
    if synthetic_transforms is not None and transform_names is not None:
        best = synthetic_transforms.gather(1, nearest[:, None]).flatten()
        transforms = [transform_names[int(i)] for i in best]
    return SpaceAudit(space, synthetic_distance, nearest, held_out_distance, train_distance, threshold, copies, z, authentic,
                      held_out_authentic, nominal, measured_fpr(held_out_distance, percentile, fpr_splits, seed), transforms)


# -- artifacts ---------------------------------------------------------------


def save_pairs(audit: SpaceAudit, synthetic: torch.Tensor, train: torch.Tensor, folder: Path, count: int, pairs_per_row: int = 4) -> Path:
    """PNG grid of the closest (synthetic, training) pairs side by side, nearest first, and a JSON list of them."""
    pairs = audit.closest_pairs(count)
    tiles = []
    for pair in pairs:
        tiles += [synthetic[pair["synthetic"]], train[pair["train"]]]
    path = folder / f"memorization_{audit.space}_pairs.png"
    save_grid(torch.stack(tiles), path, columns=2 * min(pairs_per_row, len(pairs)))
    summary = {"space": audit.space, "threshold": audit.threshold, "copy_rate": audit.copy_rate,
               "copy_threshold_fpr": audit.measured_fpr, "copy_threshold_fpr_nominal": audit.nominal_fpr, "meehan_z": audit.meehan_z,
               "authenticity": audit.authenticity, "held_out_authenticity": audit.held_out_authenticity,
               "layout": "each row: (synthetic, nearest training image) pairs, nearest first", "pairs": pairs}
    write_json(path.with_suffix(".json"), summary)
    return path


def write_json(path: Path, content: dict) -> None:
    """Atomically: a temporary file, fsync, then rename over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(json.dumps(content, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)

"""Fréchet Radiomics Distance (Konz, Osuala et al.), through the optional ``frd-score`` package.

FRD compares the distributions of radiomic features (first-order statistics, texture
matrices, on the original image and filtered versions) of two image sets with the
Fréchet distance, then takes the log (FRD v1). Features come from frd-score (and
pyradiomics) as the package extracts them; the distance is computed here
(:func:`frechet_distance`, equal to frd-score's to about 1e-7). It needs no neural weights, is
designed for medical images and is stable on small sets.

``frd-score`` reads image files, so both sets are written as 8-bit gray PNGs into a
temporary folder first: radiomic features are defined on scalar intensities, so RGB
images are converted with BT.601 luma. Install with ``pip install raresynth[frd]``
(``frd-score`` and the ``pyradiomics-bhklab`` fork, which builds on Python >= 3.10).
The plugin registers ``frd`` only when both import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from raresynth import (
    ImageSet,
    Metric,
    MetricValue,
    PerImageCache,
    PluginParams,
    Preprocessing,
    check_compatible,
)


def frd_available() -> bool:
    """True when ``frd_score`` and pyradiomics (``radiomics``) are installed."""
    return importlib.util.find_spec("frd_score") is not None and importlib.util.find_spec("radiomics") is not None


class FRDParams(PluginParams):
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")
    frd_version: Literal["v0", "v1"] = Field("v1", description="frd-score's feature set and log transform (v1: the 2026 paper)")
    num_workers: int | None = Field(None, ge=1, description="processes for feature extraction (None: one per CPU core)")


def write_pngs(images: ImageSet, folder: Path) -> list[Path]:
    """8-bit gray PNGs of ``images`` in ``folder``; returns their paths in order."""
    from PIL import Image

    gray = Preprocessing(channels=1).uint8(images.images)[:, 0].numpy()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(gray):
        paths.append(folder / f"{i:06d}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def radiomic_features(images: ImageSet, frd_version: str, num_workers: int | None = None) -> np.ndarray:
    """``(images, features)`` radiomic features as frd-score extracts them (rows of failed images left out)."""
    import radiomics
    from frd_score import frd as frd_module

    radiomics.setVerbosity(60)  # pyradiomics logs a warning per image otherwise ("Image too small to apply LoG filter")
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    features = list(frd_module.V0_DEFAULT_FEATURES) if frd_version == "v0" else None  # v1: the package's YAML config
    extractor = frd_module.get_feature_extractor(frd_version=frd_version, features=features, image_dim=2)
    cores = os.cpu_count() or 1
    workers = num_workers or cores
    with tempfile.TemporaryDirectory(prefix="raresynth-frd-") as tmp:
        files = [str(path) for path in write_pngs(images, Path(tmp))]
        with contextlib.redirect_stdout(io.StringIO()), itk_threads(max(1, cores // workers)):
            array, _, _ = frd_module.compute_features(files, extractor, num_workers=workers, frd_version=frd_version)
    return np.asarray(array, dtype=np.float64)


@contextlib.contextmanager
def itk_threads(threads: int):
    """SimpleITK's filters (the resampling, LoG and wavelet filters of the extraction) on ``threads`` threads meanwhile.

    frd-score runs ``num_workers`` extraction processes (one per core by default), and
    each would otherwise start as many ITK threads as there are cores: on 2 cores, one
    thread a process extracts 7-16% faster (``benchmarks/frd_extraction.py``), with
    identical features. Forked processes inherit the setting;
    spawned ones read it from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``. Both are restored after.
    """
    import SimpleITK as sitk

    before, variable = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
        if variable is None:
            os.environ.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
        else:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = variable


def frechet_radiomics_distance(real: np.ndarray, fake: np.ndarray, frd_version: str) -> float:
    """FRD of two radiomic feature matrices (Konz, Osuala et al.), with frd-score's defaults.

    v1: images with a NaN feature are dropped, features are z-scored with the *real*
    set's mean and standard deviation (the paper's Eq. 3 reference normalization),
    features that become NaN or infinite in either set are dropped, and the result is
    log(d_F^2) (frd-score's convention). v0: min-max scaling on both sets together,
    no log. d_F^2 is the Fréchet distance between Gaussians fitted to each set
    (:func:`frechet_distance`).
    """
    from frd_score import frd as frd_module

    if frd_version == "v1":
        real, fake = (x[~np.isnan(x).any(axis=1)].astype(np.float32) for x in (real, fake))
        low, high = frd_module.V1_DEFAULT_NORM_RANGE
        with np.errstate(divide="ignore", invalid="ignore"):
            real_z, fake_z = (((x - np.nanmean(real, axis=0)) / np.nanstd(real, axis=0)) * (high - low) + low for x in (real, fake))
        keep = ~(~np.isfinite(real_z)).any(axis=0) & ~(~np.isfinite(fake_z)).any(axis=0)
        real_n, fake_n = real_z[:, keep], fake_z[:, keep]
    else:
        both = np.concatenate([real, fake])
        low, high = frd_module.V0_DEFAULT_NORM_RANGE
        real_n, fake_n = (frd_module.min_max_normalize(x, low, high, base_distribution=both) for x in (real, fake))
    distance = frechet_distance(real_n.mean(axis=0), np.cov(real_n, rowvar=False), fake_n.mean(axis=0), np.cov(fake_n, rowvar=False))
    if frd_version == "v1":  # identical statistics give log(0) = -inf, as frd-score returns
        return float(np.log(distance)) if distance > 0 else float("-inf")
    return float(distance)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) between two Gaussians (Dowson & Landau 1982).

    S1 S2 and S1^(1/2) S2 S1^(1/2) have the same eigenvalues, all real and >= 0 (S1 and
    S2 are covariance matrices), so Tr((S1 S2)^(1/2)) is the sum of the square roots of
    the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2): two symmetric
    eigendecompositions instead of the matrix square root of the non-symmetric product
    (``scipy.linalg.sqrtm``, as frd-score computes it), which with fewer images than
    features is singular. The same value to about 1e-7 (tested), about 4x faster.
    """
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    product = root @ sigma2 @ root
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_root = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


class _Unaligned(Exception):
    """frd-score left an image out: its rows no longer match the images one to one."""


class FRD(Metric):
    """``frd``: log of the Fréchet distance between radiomic feature distributions (lower is better).

    Radiomic features are kept per image (:class:`raresynth.PerImageCache`), so each
    image is extracted once per metric object: the real set once for a whole benchmark,
    a synthetic set once for its value and all its half-samples, and copies of training
    images not at all. Up to ``CACHE_IMAGES`` images are kept, least recently used
    leaving first.
    """

    Params = FRDParams
    CACHE_IMAGES = 100_000  # a few hundred features each: about 100 MB at most

    def __init__(self, params, spec):
        super().__init__(params, spec)
        self._features = PerImageCache(self.CACHE_IMAGES)

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        reference = train if p.reference == "train" else held_out
        real, fake = self.image_features(reference), self.image_features(synthetic)
        return [MetricValue("frd", frechet_radiomics_distance(real, fake, p.frd_version), higher_is_better=False)]

    def image_features(self, images: ImageSet) -> np.ndarray:
        """``(images, features)`` radiomic features, extracted only for images not seen before.

        When frd-score leaves an image out (its extraction failed), the rows no longer
        match the images one to one: the set's features are then returned as extracted,
        and none of them is kept.
        """
        p = self.params

        def extract(new: torch.Tensor) -> np.ndarray:
            rows = radiomic_features(ImageSet(new), p.frd_version, p.num_workers)
            if len(rows) != len(new):
                raise _Unaligned
            return rows

        try:
            return np.stack(self._features.rows(images.images, extract, tag=p.frd_version))
        except _Unaligned:
            return radiomic_features(images, p.frd_version, p.num_workers)

"""Fréchet Radiomics Distance (Konz, Osuala et al.), through the optional ``frd-score`` package.

FRD compares the distributions of radiomic features (first-order statistics, texture
matrices, on the original image and filtered versions) of two image sets with the
Fréchet distance, then takes the log (FRD v1). It needs no neural weights, is
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
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from raresynth import ImageSet, Metric, MetricValue, PluginParams
from raresynth.features import Preprocessing
from raresynth.imagesets import check_compatible


def frd_available() -> bool:
    """True when ``frd_score`` and pyradiomics (``radiomics``) are installed."""
    return importlib.util.find_spec("frd_score") is not None and importlib.util.find_spec("radiomics") is not None


class FRDParams(PluginParams):
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")
    frd_version: Literal["v0", "v1"] = Field("v1", description="frd-score's feature set and log transform (v1: the 2026 paper)")
    num_workers: int | None = Field(None, ge=1, description="processes for feature extraction (None: frd-score's default)")


def write_pngs(images: ImageSet, folder: Path) -> None:
    from PIL import Image

    gray = Preprocessing(channels=1).uint8(images.images)[:, 0].numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(gray):
        Image.fromarray(array).save(folder / f"{i:06d}.png")


class FRD(Metric):
    """``frd``: log of the Fréchet distance between radiomic feature distributions (lower is better)."""

    Params = FRDParams

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        import frd_score

        check_compatible(train, held_out=held_out, synthetic=synthetic)
        reference = train if self.params.reference == "train" else held_out
        with tempfile.TemporaryDirectory(prefix="raresynth-frd-") as tmp:
            real_dir, fake_dir = Path(tmp) / "real", Path(tmp) / "synthetic"
            write_pngs(reference, real_dir)
            write_pngs(synthetic, fake_dir)
            with contextlib.redirect_stdout(io.StringIO()):  # frd-score prints its result
                value = frd_score.compute_frd([str(real_dir), str(fake_dir)], frd_version=self.params.frd_version,
                                              num_workers=self.params.num_workers, verbose=False)
        # Identical feature statistics give log(0) = -inf, which frd-score returns as is.
        return [MetricValue("frd", float(value), higher_is_better=False)]

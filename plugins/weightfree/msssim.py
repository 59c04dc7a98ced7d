"""MS-SSIM diversity: how alike pairs of synthetic images are, against pairs of real ones.

Odena et al. 2017 ("Conditional Image Synthesis with Auxiliary Classifier GANs",
sec. 4.2) measure a generator's diversity as the mean MS-SSIM (Wang et al. 2003) of
random pairs of its images within one class: a collapsed generator makes pairs that
look alike (high MS-SSIM). The number only means something next to the same
measure on real pairs, so both are reported, with their gap.

Images of 16-32 px are too small for MS-SSIM's five scales with an 11 px window;
:func:`raresynth.ms_ssim` uses as many scales as fit (1 at 16 px, 2 at 32 px,
5 from 176 px) with the paper's exponents renormalized.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from raresynth import (
    ConfigError,
    ImageSet,
    Metric,
    MetricValue,
    PluginParams,
    Preprocessing,
    check_compatible,
    content_hash,
    ms_ssim,
    pairs_of,
)

from .fields import OddInt


class MSSSIMParams(PluginParams):
    reference: Literal["train", "held_out"] = Field("train", description="the real set whose pairs form the baseline")
    max_pairs: int = Field(1000, ge=1, description="pairs per set (all pairs when there are fewer)")
    within_class: bool = Field(True, description="pair images of the same class when both sets have labels (as Odena et al.)")
    # odd: a centre pixel, as scikit-image's structural_similarity also requires
    window: OddInt = Field(11, ge=3, description="Gaussian window side, odd (shrinks to fit small images)")
    seed: int = 0


def mean_pair_ms_ssim(images: torch.Tensor, labels: torch.Tensor | None, max_pairs: int, window: int, generator: torch.Generator) -> float:
    """Mean MS-SSIM over random distinct pairs, within each class when ``labels`` is given."""
    groups = [torch.arange(len(images))] if labels is None else [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        raise ConfigError("ms_ssim: needs at least 2 images (of one class, with within_class) in each set")
    per_group = max(1, max_pairs // len(groups))
    scores = []
    for group in groups:
        pairs = group[pairs_of(len(group), per_group, generator)]
        for chunk in pairs.split(256):
            scores.append(ms_ssim(images[chunk[:, 0]], images[chunk[:, 1]], window=window))
    return float(torch.cat(scores).mean())


class MSSSIM(Metric):
    """``ms_ssim_synthetic`` and ``ms_ssim_real`` (lower: more diverse) and their gap ``ms_ssim_gap``.

    The real set's mean is kept for the next call with the same images and settings (a
    benchmark measures every run, half-sample and reference row against one real set).
    """

    Params = MSSSIMParams

    def __init__(self, params, spec):
        super().__init__(params, spec)
        self._real: tuple[str, float] | None = None

    def _real_mean(self, images: torch.Tensor, labels: torch.Tensor | None) -> float:
        p = self.params
        key = content_hash(images, labels) + repr(p)
        if self._real is None or self._real[0] != key:
            value = mean_pair_ms_ssim(Preprocessing().apply(images), labels, p.max_pairs, p.window, torch.Generator().manual_seed(p.seed))
            self._real = (key, value)
        return self._real[1]

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        reference = train if p.reference == "train" else held_out
        by_class = p.within_class and reference.labels is not None and synthetic.labels is not None
        preprocessing = Preprocessing()
        real = self._real_mean(reference.images, reference.labels if by_class else None)
        fake = mean_pair_ms_ssim(preprocessing.apply(synthetic.images), synthetic.labels if by_class else None, p.max_pairs,
                                 p.window, torch.Generator().manual_seed(p.seed + 1))
        return [
            # Lower MS-SSIM is more diverse, but noise is the most "diverse" of all: the ideal is
            # the diversity of real images (the real (held-out) reference), not the minimum.
            MetricValue("ms_ssim_synthetic", fake, ideal="real", question="diversity"),
            MetricValue("ms_ssim_real", real, ideal="none", question="diversity"),  # the real set's own: a baseline
            MetricValue("ms_ssim_gap", abs(fake - real), ideal="lower", question="diversity"),
        ]

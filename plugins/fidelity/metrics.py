"""FID, KID, precision/recall and Inception Score, computed by torch-fidelity.

torch-fidelity's feature extractors compute the features (through
raresynth's feature spaces (``raresynth.features``, ``raresynth.Embedding``), which loads their weights from local files only and caches
features per image set) and torch-fidelity's own functions turn features into the
metrics, so the numbers match torch-fidelity's:

* ``fid``: Fréchet Inception Distance (Heusel et al. 2017, eq. 6), lower is better.
* ``kid``: Kernel Inception Distance (Bińkowski et al. 2018, the unbiased MMD² with a
  cubic polynomial kernel, averaged over random subsets), lower is better.
* ``prc``: improved precision and recall (Kynkäänniemi et al. 2019) on VGG16
  features, higher is better.
* ``isc``: Inception Score (Salimans et al. 2016) of the synthetic set alone, higher
  is better. It measures ImageNet class confidence and diversity, which says little
  about medical images; it is here for comparison with the GAN literature.

Each takes ``embedding``: a torch-fidelity extractor name (default: the
metric's standard one), or ``domain`` for the dataset-specific embedding trained on
the training split (values then carry a ``_domain`` suffix: comparable between
models on one dataset only), or ``pixels``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from raresynth import (
    DOMAIN,
    PIXELS,
    ConfigError,
    Embedding,
    EmbeddingParams,
    ImageSet,
    Metric,
    MetricValue,
    PluginParams,
    check_compatible,
    check_embedding,
    features,
)


class FidelityParams(EmbeddingParams):
    embedding: str | None = Field(
        None, description="torch-fidelity extractor name, 'domain' or 'pixels'; default: the metric's standard extractor")
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")


class TorchFidelityMetric(Metric):
    """Shared parts: which extractor, its weights, the features of each set."""

    Params: ClassVar[type[PluginParams]] = FidelityParams
    metric: ClassVar[str] = "fid"  # torch-fidelity's name for it: picks the extractor's default layer
    standard: ClassVar[str] = "inception-v3-compat"

    def __init__(self, params, spec):
        super().__init__(params, spec)
        self.extractor = params.embedding or self.standard
        check_embedding(self.extractor, params.weights_path, params.verify_weights, params.weights_sha256)  # fail now, not after sampling

    def suffix(self, embedding: Embedding) -> str:
        """``""`` for the standard extractor and layer, else ``_<tag>`` (``_domain``, ``_vgg16``, ...)."""
        if self.extractor == self.standard and self.params.feature_layer is None:
            return ""
        layer = f"_{self.params.feature_layer}" if self.params.feature_layer else ""
        return f"_{embedding.tag}{layer}"

    def real_and_synthetic(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> tuple[torch.Tensor, torch.Tensor, str]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        reference = train if self.params.reference == "train" else held_out
        embedding = self.params.build_embedding(train, self.extractor, self.metric)
        return features(reference, embedding).double(), features(synthetic, embedding).double(), self.suffix(embedding)


class FID(TorchFidelityMetric):
    """Fréchet distance between Gaussians fitted to real and synthetic features."""

    def compute(self, train, held_out, synthetic):
        from torch_fidelity.metric_fid import (
            KEY_METRIC_FID,
            fid_features_to_statistics,
            fid_statistics_to_metric,
        )

        real, fake, suffix = self.real_and_synthetic(train, held_out, synthetic)
        _need(2, fid=len(real), synthetic=len(fake))
        value = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), verbose=False)[KEY_METRIC_FID]
        return [MetricValue(f"fid{suffix}", float(value), higher_is_better=False)]


class KIDParams(FidelityParams):
    kid_subsets: int = Field(100, ge=1, description="random subsets the MMD is averaged over")
    kid_subset_size: int | None = Field(
        None, ge=2, description="images per subset; default: min(1000, real set size, synthetic set size)")


class KID(TorchFidelityMetric):
    """Unbiased squared MMD with a cubic polynomial kernel, mean and spread over subsets."""

    Params = KIDParams
    metric = "kid"

    def compute(self, train, held_out, synthetic):
        from torch_fidelity.metric_kid import (
            KEY_METRIC_KID_MEAN,
            KEY_METRIC_KID_STD,
            kid_features_to_metric,
        )

        real, fake, suffix = self.real_and_synthetic(train, held_out, synthetic)
        smaller = min(len(real), len(fake))
        size = self.params.kid_subset_size
        if size is None:
            size = min(1000, smaller)  # torch-fidelity's default, shrunk to fit small sets
        elif size > smaller:
            raise ConfigError(f"kid_subset_size: {size} is more than the smaller set holds ({smaller} images); "
                              "lower it, or leave it unset to fit the sets")
        _need(2, kid=smaller)
        out = kid_features_to_metric(fake, real, kid_subsets=self.params.kid_subsets, kid_subset_size=size,
                                     rng_seed=self.params.seed, verbose=False)
        return [MetricValue(f"kid_mean{suffix}", float(out[KEY_METRIC_KID_MEAN]), higher_is_better=False),
                MetricValue(f"kid_std{suffix}", float(out[KEY_METRIC_KID_STD]), ideal="none")]


class PRCParams(FidelityParams):
    neighborhood: int = Field(3, ge=1, description="k of the k-nearest-neighbour balls (torch-fidelity's default 3)")


class PRC(TorchFidelityMetric):
    """Improved precision (fidelity) and recall (coverage of the real distribution)."""

    Params = PRCParams
    metric = "prc"
    standard = "vgg16"

    def compute(self, train, held_out, synthetic):
        from torch_fidelity.metric_prc import (
            KEY_METRIC_F_SCORE,
            KEY_METRIC_PRECISION,
            KEY_METRIC_RECALL,
            prc_features_to_metric,
        )

        real, fake, suffix = self.real_and_synthetic(train, held_out, synthetic)
        _need(self.params.neighborhood + 1, prc=min(len(real), len(fake)))
        out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=self.params.neighborhood,
                                     prc_batch_size=10000, save_cpu_ram=False, verbose=False)
        return [MetricValue(f"prc_precision{suffix}", float(out[KEY_METRIC_PRECISION]), higher_is_better=True),
                MetricValue(f"prc_recall{suffix}", float(out[KEY_METRIC_RECALL]), higher_is_better=True, question="diversity"),
                MetricValue(f"prc_f_score{suffix}", float(out[KEY_METRIC_F_SCORE]), higher_is_better=True)]


class ISCParams(FidelityParams):
    splits: int = Field(10, ge=1, description="splits of the synthetic set (at most one per image)")

    @model_validator(mode="after")
    def _needs_a_classifier(self):
        if self.embedding in (DOMAIN, PIXELS):
            raise ValueError(f"embedding: the Inception Score needs a classifier's logits; '{self.embedding}' has none")
        return self


class ISC(TorchFidelityMetric):
    """exp(E KL(p(y|x) || p(y))) over the synthetic set's class predictions."""

    Params = ISCParams
    metric = "isc"

    def compute(self, train, held_out, synthetic):
        from torch_fidelity.metric_isc import (
            KEY_METRIC_ISC_MEAN,
            KEY_METRIC_ISC_STD,
            isc_features_to_metric,
        )

        check_compatible(train, held_out=held_out, synthetic=synthetic)
        embedding = self.params.build_embedding(train, self.extractor, self.metric)
        logits = features(synthetic, embedding)
        out = isc_features_to_metric(logits, splits=min(self.params.splits, len(logits)), shuffle=True, rng_seed=self.params.seed)
        suffix = self.suffix(embedding)
        return [MetricValue(f"isc_mean{suffix}", float(out[KEY_METRIC_ISC_MEAN]), higher_is_better=True),
                MetricValue(f"isc_std{suffix}", float(out[KEY_METRIC_ISC_STD]), ideal="none")]


def _need(minimum: int, **counts: int) -> None:
    for what, count in counts.items():
        if count < minimum:
            raise ConfigError(f"{what}: needs at least {minimum} images in each set, got {count}")

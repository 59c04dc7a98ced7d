"""Precision, recall, density and coverage (Naeem et al. 2020, k = 5).

"Reliable Fidelity and Diversity Metrics for Generative Models", eq. 1-4 and the
authors' reference code (``prdc/prdc.py``): around every real sample a ball reaches its
k-th nearest real neighbour.

* precision: the fraction of synthetic samples inside some real ball;
* recall: the fraction of real samples inside some synthetic ball (synthetic k-NN radii);
* density: how many real balls hold a synthetic sample, on average, divided by k;
* coverage: the fraction of real balls that hold at least one synthetic sample.

"Inside" is a strict ``<`` as in the reference code, so a set compared with itself
scores exactly 1 on all four. Higher is better; density can exceed 1.

The default embedding is ``domain`` (trained on the training split, no download), so
the values are named ``precision_domain`` etc. and compare models on one dataset
only; ``embedding: vgg16`` (with local weights) gives the paper's setting and plain
names.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from raresynth import (
    ConfigError,
    EmbeddingParams,
    ImageSet,
    Metric,
    MetricValue,
    check_compatible,
    check_embedding,
    features,
    kth_neighbour_distances,
    pairwise_distances,
)

#: Naeem et al. used VGG16 features; values in that embedding carry no suffix.
STANDARD = "vgg16"


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """The four values for feature matrices ``real (N, D)`` and ``fake (M, D)``."""
    if len(real) <= k or len(fake) <= k:
        raise ConfigError(f"prdc: nearest_k={k} needs more than {k} real and synthetic samples (got {len(real)} and {len(fake)})")
    real_radii = kth_neighbour_distances(real, k)
    fake_radii = kth_neighbour_distances(fake, k)
    distance = pairwise_distances(real, fake)  # (N, M)
    inside_real = distance < real_radii[:, None]
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float((distance < fake_radii[None, :]).any(dim=1).double().mean()),
        "density": float(inside_real.sum(dim=0).double().mean() / k),
        "coverage": float((distance.min(dim=1).values < real_radii).double().mean()),
    }


# Naeem et al. 2020: precision and density measure fidelity, recall and coverage diversity.
# Density is not bounded by 1: real images of the dataset score about 1, a set crowded
# into dense regions of the real manifold scores more; its ideal is the real images' value.
IDEALS = {"precision": ("higher", "fidelity"), "recall": ("higher", "diversity"), "density": ("real", "fidelity"),
          "coverage": ("higher", "diversity")}


class PRDCParams(EmbeddingParams):
    nearest_k: int = Field(5, ge=1, description="k of the k-nearest-neighbour balls (the paper: 5)")
    reference: Literal["train", "held_out"] = Field("train", description="which real set the synthetic set is compared with")


class PRDC(Metric):
    """``precision``, ``recall``, ``density``, ``coverage`` (suffixed with the embedding's tag unless VGG16)."""

    Params = PRDCParams

    def __init__(self, params, spec):
        super().__init__(params, spec)
        check_embedding(params.embedding, params.weights_path, params.verify_weights, params.weights_sha256)

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        reference = train if p.reference == "train" else held_out
        embedding = p.build_embedding(train, metric="prc")
        values = prdc(features(reference, embedding), features(synthetic, embedding), p.nearest_k)
        suffix = "" if p.embedding == STANDARD and p.feature_layer is None else f"_{embedding.tag}"
        return [MetricValue(f"{name}{suffix}", value, ideal=IDEALS[name][0], question=IDEALS[name][1]) for name, value in values.items()]

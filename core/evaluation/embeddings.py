"""Choosing an embedding by name: ``pixels``, ``domain`` or a torch-fidelity extractor, and the options every embedding metric derives from (:class:`EmbeddingParams`)."""

from __future__ import annotations

from pydantic import Field

from ..errors import ConfigError
from ..interfaces import ImageSet, PluginParams
from .domain_embedding import DomainEmbeddingParams, domain_embedding
from .features import (
    DOMAIN,
    PIXELS,
    Embedding,
    PixelEmbedding,
    TorchFidelityEmbedding,
    require_safe_extractor,
    resolve_weights,
    torch_fidelity_extractors,
)

# -- choosing an embedding by name ----------------------------------------


def make_embedding(name: str, train: ImageSet | None = None, *, metric: str = "fid", layer: str | None = None,
                   weights_path: str | None = None, verify_weights: bool = True, domain: DomainEmbeddingParams | None = None,
                   device: str = "auto", batch_size: int = 64, seed: int = 0, weights_sha256: str | None = None) -> Embedding:
    """The embedding ``name`` names: ``pixels``, ``domain`` (trained on ``train``) or a torch-fidelity extractor.

    ``metric`` picks a torch-fidelity extractor's default layer (``fid``, ``kid``,
    ``prc`` or ``isc``) when ``layer`` is not given.
    """
    if name == PIXELS:
        return PixelEmbedding()
    if name == DOMAIN:
        if train is None:
            raise ValueError("the domain embedding is trained on the training split: pass train")
        return domain_embedding(train, domain, device)
    return TorchFidelityEmbedding(name, layer, metric, weights_path, verify_weights, device, batch_size, seed, weights_sha256)


def check_embedding(name: str, weights_path: str | None = None, verify_weights: bool = True, weights_sha256: str | None = None) -> None:
    """Fail early (:class:`ConfigError`) on an unknown embedding name or a missing weights file."""
    if name in (PIXELS, DOMAIN):
        return
    known = torch_fidelity_extractors()
    if name not in known:
        raise ConfigError(f"embedding: unknown '{name}'; choose '{DOMAIN}', '{PIXELS}' or a torch-fidelity extractor "
                          f"({', '.join(known)}), or register one with torch_fidelity.register_feature_extractor")
    require_safe_extractor(name)
    resolve_weights(name, weights_path, verify_weights, sha256=weights_sha256)


class EmbeddingParams(PluginParams):
    """Options of a metric that compares image sets in an embedding (metric ``Params`` derive from it)."""

    embedding: str = Field(DOMAIN, description="'domain', 'pixels', or a torch-fidelity extractor ('inception-v3-compat', 'vgg16', ...)")
    feature_layer: str | None = Field(None, description="a torch-fidelity extractor's layer; default: torch-fidelity's for the metric")
    weights_path: str | None = Field(
        None, description="the extractor's weights file (or its folder); default: $RARESYNTH_WEIGHTS_DIR/<file name>")
    verify_weights: bool = Field(True, description="check the weights file's full sha256 against the published one (the file "
                                 "is read as tensors only, never unpickled, either way)")
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                                       description="the full sha256 the weights file must have (pins a converted or custom file)")
    domain_embedding: DomainEmbeddingParams = DomainEmbeddingParams()
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, description="seeds the metric's random choices (domain_embedding.seed seeds the embedding's training)")

    def build_embedding(self, train: ImageSet, name: str | None = None, metric: str = "fid") -> Embedding:
        """The embedding these options describe (``name`` overrides ``embedding``)."""
        return make_embedding(name or self.embedding, train, metric=metric, layer=self.feature_layer, weights_path=self.weights_path,
                              verify_weights=self.verify_weights, domain=self.domain_embedding, device=self.device,
                              batch_size=self.batch_size, seed=self.seed, weights_sha256=self.weights_sha256)

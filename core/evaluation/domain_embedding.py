"""The ``domain`` embedding: a small CNN trained on the real training split only.

:func:`raresynth.evaluation.embeddings.make_embedding` builds it here for ``embedding: domain``
(the default of :class:`~raresynth.evaluation.embeddings.EmbeddingParams`). The encoder
(:class:`DomainEncoder`) learns from the *training* split alone: SimCLR's contrastive
loss over two augmented views (:func:`augment`, :func:`nt_xent`), plus a label loss when
the training set has labels. It needs no download and is deterministic for its
``seed`` on one device. Its values are dataset-specific: metric plugins label them with
``_domain`` and they must not be compared across datasets.

:func:`domain_embedding` trains an encoder once per training set and options
(:func:`domain_embedding_key`) and keeps its weights as safetensors under
``$RARESYNTH_CACHE_DIR/embeddings/``. Its options are :class:`DomainEmbeddingParams`
(a metric's ``domain_embedding`` field).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ..interfaces import ImageSet, PluginParams
from .features import (
    DOMAIN,
    Embedding,
    Preprocessing,
    cache_root,
    content_hash,
    resolve_device,
)


class DomainEmbeddingParams(PluginParams):
    """Options of the ``domain`` embedding (a metric's ``domain_embedding`` field)."""

    mode: Literal["auto", "contrastive", "supervised"] = Field(
        "auto", description="auto: contrastive, plus a label loss when the training set has labels")
    resolution: int = Field(32, ge=8, description="images are resized to this before the encoder")
    width: int = Field(16, ge=4, description="channels of the first conv block (doubled in each of 3 blocks)")
    dim: int = Field(128, ge=2, description="embedding dimension")
    epochs: int = Field(30, ge=1, description="passes over the training split")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-3, gt=0)
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature (SimCLR)")
    seed: int = 0




ENCODER_VERSION = "domain-encoder-v1"


class DomainEncoder(torch.nn.Module):
    """Three conv blocks, global average pool, a linear map to ``dim``; L2-normalized output."""

    def __init__(self, in_channels: int, width: int, dim: int, num_classes: int):
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = in_channels
        for i in range(3):
            out = width * 2**i
            layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.GroupNorm(min(8, out), out), torch.nn.SiLU(),
                       torch.nn.Conv2d(out, out, 3, padding=1), torch.nn.GroupNorm(min(8, out), out), torch.nn.SiLU()]
            if i < 2:
                layers.append(torch.nn.AvgPool2d(2))
            channels = out
        self.trunk = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, dim))
        self.projection = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(dim, dim))  # SimCLR head, training only
        self.classifier = torch.nn.Linear(dim, max(num_classes, 1))  # label head, training only

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(images), dim=1)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop-and-resize (60-100% of the side), flips, brightness and contrast (SimCLR-style)."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    scale = uniform(0.6, 1.0)
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip_x, scale * flip_y
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - scale), uniform(-1, 1) * (1 - scale)
    contrast, brightness = uniform(0.7, 1.3), uniform(-0.2, 0.2)
    theta, contrast, brightness = (t.to(images.device) for t in (theta, contrast, brightness))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)
    return out.clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss (Chen et al. 2020, eq. 1): each view must pick out its partner among 2B-1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def train_domain_encoder(train: ImageSet, params: DomainEmbeddingParams, device: torch.device) -> DomainEncoder:
    """Train the encoder on ``train`` only; deterministic for ``params.seed`` on one device."""
    preprocessing = Preprocessing(resolution=params.resolution)
    images = preprocessing.apply(train.images).to(device)
    labels = _used_labels(train, params)
    if params.mode == "supervised" and labels is None:
        raise ConfigError("domain_embedding.mode: 'supervised' needs a labelled training set; use 'contrastive' or 'auto'")
    n = images.shape[0]
    if n < 2:
        raise ConfigError(f"domain_embedding: the training set has {n} image(s); the domain embedding needs at least 2")
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        encoder = DomainEncoder(images.shape[1], params.width, params.dim, num_classes).to(device)
    generator = torch.Generator().manual_seed(params.seed)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=params.lr)
    batch = min(params.batch_size, n)
    encoder.train()
    for _ in range(params.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):  # full batches only: the contrastive loss wants many negatives
            index = order[start : start + batch].to(device)
            x = images[index]
            h1 = encoder.trunk(augment(x, generator))
            loss = torch.zeros((), device=device)
            if params.mode in ("auto", "contrastive"):
                h2 = encoder.trunk(augment(x, generator))
                loss = loss + nt_xent(encoder.projection(h1), encoder.projection(h2), params.temperature)
            if labels is not None:  # the label loss shares the first view
                loss = loss + F.cross_entropy(encoder.classifier(h1), labels.to(device)[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return encoder.eval()


def _used_labels(train: ImageSet, params: DomainEmbeddingParams) -> torch.Tensor | None:
    if params.mode == "contrastive" or train.labels is None or len(torch.unique(train.labels)) < 2:
        return None
    return train.labels


class DomainEmbedding(Embedding):
    """The ``domain`` embedding: an encoder trained on one training set, cached per set."""

    tag = DOMAIN
    dataset_specific = True

    def __init__(self, encoder: DomainEncoder, key: str, params: DomainEmbeddingParams, device: torch.device, batch_size: int = 256):
        self.encoder = encoder
        self.key = key
        self.id = f"{ENCODER_VERSION}:{key}"
        self.preprocessing = Preprocessing(resolution=params.resolution)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = self.preprocessing.apply(images[start : start + self.batch_size]).to(self.device)
            out.append(self.encoder(batch).float().cpu())
        return torch.cat(out)


_ENCODERS: dict[str, DomainEncoder] = {}


def domain_embedding_key(train: ImageSet, params: DomainEmbeddingParams) -> str:
    """Names the encoder: the training set's content (and labels, when used) and the options."""
    data = content_hash(train.images, _used_labels(train, params))
    spec = json.dumps({"version": ENCODER_VERSION, "data": data, "params": params.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


def domain_embedding(train: ImageSet, params: DomainEmbeddingParams | None = None, device: str = "auto") -> DomainEmbedding:
    """The domain embedding of ``train``: loaded from the cache, or trained and cached."""
    from safetensors.torch import load_file, save_file

    params = params or DomainEmbeddingParams()
    where = resolve_device(device)
    key = domain_embedding_key(train, params)
    encoder = _ENCODERS.get(key)
    root = cache_root()
    path = root / "embeddings" / f"{key}.safetensors" if root is not None else None
    if encoder is None and path is not None and path.is_file():
        labels = _used_labels(train, params)
        num_classes = int(labels.max()) + 1 if labels is not None else 0
        candidate = DomainEncoder(train.images.shape[1], params.width, params.dim, num_classes)
        try:
            candidate.load_state_dict(load_file(str(path)))
            encoder = candidate.eval()
        except Exception:  # noqa: BLE001 - a damaged cache file is retrained, never trusted
            encoder = None
    if encoder is None:
        encoder = train_domain_encoder(train, params, where)
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(partial), metadata={"version": ENCODER_VERSION, "params": params.model_dump_json()})
        os.replace(partial, path)
    _ENCODERS[key] = encoder
    return DomainEmbedding(encoder.to(where).eval(), key, params, where)


__all__ = [
    "ENCODER_VERSION",
    "DomainEmbedding",
    "DomainEmbeddingParams",
    "DomainEncoder",
    "augment",
    "domain_embedding",
    "domain_embedding_key",
    "nt_xent",
    "train_domain_encoder",
]

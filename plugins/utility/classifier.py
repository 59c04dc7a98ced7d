"""A small CNN classifier, trained for a fixed number of steps, and the scores it is judged by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class SmallCNN(torch.nn.Module):
    """Three conv blocks (GroupNorm, SiLU), global average pool, linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = in_channels
        for i in range(3):
            out = width * 2**i
            layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.GroupNorm(min(8, out), out), torch.nn.SiLU()]
            if i < 2:
                layers.append(torch.nn.AvgPool2d(2))
            channels = out
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    width: int
    flips: bool
    device: torch.device


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: TrainSettings, seed: int) -> SmallCNN:
    """Adam for ``settings.steps`` steps on batches drawn epoch by epoch; deterministic for ``seed`` on one device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(images.shape[1], num_classes, settings.width).to(settings.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    n = len(images)
    batch = min(settings.batch_size, n)
    order, position = torch.randperm(n, generator=generator), 0
    model.train()
    for _ in range(settings.steps):
        if position + batch > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position : position + batch]
        position += batch
        x = images[index]
        if settings.flips:  # horizontal and vertical flips, per image
            flip_h = torch.rand(batch, generator=generator) < 0.5
            flip_v = torch.rand(batch, generator=generator) < 0.5
            x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
            x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
        loss = F.cross_entropy(model(x.to(settings.device)), labels[index].to(settings.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities ``(N, K)``."""
    return torch.cat([model(part.to(device)).softmax(dim=1).cpu() for part in images.split(batch_size)]).double()


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(dim=1) == labels).double().mean())


def balanced_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in ``labels``."""
    predicted = probs.argmax(dim=1)
    recalls = [float((predicted[labels == c] == c).double().mean()) for c in torch.unique(labels)]
    return float(np.mean(recalls))


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney probability that a positive outscores a negative (ties count 1/2)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary: AUC of class 1's probability. More classes: macro average of one-vs-rest AUCs.

    Classes absent from ``labels`` (no positives) are left out of the average.
    """
    y = labels.numpy()
    p = probs.numpy()
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return binary_auc(p[:, 1], y == 1)
    return float(np.mean([binary_auc(p[:, c], y == c) for c in present]))

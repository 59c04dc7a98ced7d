"""A small CNN classifier, trained for a fixed number of steps, checked on a validation share, and its scores.

A classifier trained on images whose labels carry no information (noise, or a
generator that ignores its class input) still learns *something*: chance
regularities of its finite training sample, such as a per-class difference of a
few thousandths in mean colour. Real classes differ along such directions by far
more, so the arbitrary function it learned can rank real test images by class
(ROC AUC ignores the threshold and its scale). :func:`train_checked` therefore
holds out a stratified share of the classifier's own training set and keeps the
classifier only when its accuracy there beats chance (a one-sided binomial test);
otherwise the classifier is replaced by :class:`PriorClassifier`, which predicts
the class prior for every image and scores exactly chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raresynth import ConfigError


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


class PriorClassifier(torch.nn.Module):
    """Ignores its input: the log class prior for every image (balanced accuracy and AUC exactly chance)."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__()
        prior = torch.bincount(labels, minlength=num_classes).double() / len(labels)
        self.register_buffer("log_prior", prior.clamp(min=1e-12).log().float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.log_prior.expand(len(images), -1)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    width: int
    flips: bool
    device: torch.device
    validation_fraction: float = 0.25  # share of the training set held out to check the classifier learned something
    significance: float = 0.01  # level of the one-sided binomial test "validation accuracy above chance"


@dataclass(frozen=True)
class CheckedClassifier:
    """A trained classifier, or the prior classifier when the trained one did not beat chance on its validation share."""

    model: torch.nn.Module
    learned: bool  # the trained classifier beat chance on the validation share
    validation_accuracy: float
    p_value: float


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: TrainSettings, seed: int) -> SmallCNN:
    """Adam for ``settings.steps`` steps on batches drawn epoch by epoch; deterministic for ``seed`` on one device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(images.shape[1], num_classes, settings.width).to(settings.device, memory_format=torch.channels_last)
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
        loss = F.cross_entropy(model(_channels_last(x.to(settings.device))), labels[index].to(settings.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


# -- the validation share and the chance test ------------------------------------


def chance_p_value(correct: int, total: int, chance: float) -> float:
    """One-sided binomial test: P(at least ``correct`` of ``total`` right | each right with probability ``chance``).

    ``chance`` is the majority class's share: no classifier independent of the labels
    expects a higher accuracy, so the test is conservative for any such classifier.
    """
    from scipy.stats import binom

    return float(binom.sf(correct - 1, total, chance))


def _validation_counts(labels: torch.Tensor, fraction: float) -> dict[int, int]:
    """Validation images per class: ``fraction`` of each class, at least one where the class has two or more."""
    counts = {}
    for c in torch.unique(labels).tolist():
        n = int((labels == c).sum())
        counts[c] = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    return counts


def validation_split(labels: torch.Tensor, fraction: float, significance: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified ``(fit, validation)`` indices, random for ``seed``.

    The validation share is ``fraction`` of each class, grown where needed until a
    classifier right on every validation image would pass the chance test at
    ``significance``; :class:`ConfigError` when the set is too small for that.
    """
    n = len(labels)
    for grown in np.arange(fraction, 1.0, 1.0 / max(n, 1)):
        counts = _validation_counts(labels, float(grown))
        total = sum(counts.values())
        if total and chance_p_value(total, total, max(counts.values()) / total) < significance:
            break
    else:
        raise ConfigError(f"utility: {n} training images are too few to check at significance {significance} that a classifier "
                          "beats chance on a validation share; use a larger set or a larger significance")
    generator = torch.Generator().manual_seed(seed)
    fit, validation = [], []
    for c, count in counts.items():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        validation.append(members[:count])
        fit.append(members[count:])
    return torch.cat(fit).sort().values, torch.cat(validation).sort().values


def train_checked(images: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: TrainSettings, seed: int) -> CheckedClassifier:
    """Train on the fit share; keep the classifier only when it beats chance on the validation share."""
    fit, validation = validation_split(labels, settings.validation_fraction, settings.significance, seed)
    model = train_classifier(images[fit], labels[fit], num_classes, settings, seed)
    predicted = predict(model, images[validation], settings.device).argmax(dim=1)
    truth = labels[validation]
    correct = int((predicted == truth).sum())
    chance = float(torch.bincount(truth).max()) / len(truth)
    p_value = chance_p_value(correct, len(truth), chance)
    learned = p_value < settings.significance
    if not learned:
        model = PriorClassifier(labels[fit], num_classes).to(settings.device)
    return CheckedClassifier(model, learned, correct / len(truth), p_value)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities ``(N, K)``."""
    return torch.cat([model(_channels_last(part.to(device))).softmax(dim=1).cpu() for part in images.split(batch_size)]).double()


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    """Channels-last layout: about twice as fast for these small convolutions on a CPU (oneDNN), and the faster one on GPUs."""
    return images.contiguous(memory_format=torch.channels_last)


# -- scores ------------------------------------------------------------------------


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


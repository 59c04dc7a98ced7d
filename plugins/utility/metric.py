"""Downstream utility: does a classifier trained on synthetic images work on real ones?

A small CNN is trained in three regimes and tested on the real held-out split, which
no generator and no classifier ever trained on:

* ``trtr``: train on the real training split (the baseline);
* ``tstr``: train on the synthetic set only ("train on synthetic, test on real",
  Esteban et al. 2017);
* ``tmtr``: train on the real training split plus the synthetic set (augmentation).

Every regime is trained once per seed (``seed``, ``seed + 1``, ...), with the same
seeds in every regime (common random numbers: the regimes differ only in their
data), for a fixed number of steps whatever the data size, on all but a stratified
validation share of its training set (``validation_fraction``). A classifier whose
accuracy on that share does not beat chance (one-sided binomial test at
``significance``) is replaced by one that predicts the class prior: a synthetic set
whose labels carry no information (noise, a generator ignoring its class input)
scores chance instead of whatever its chance regularities happen to rank
(:mod:`.classifier` says why that matters). Reported per regime: balanced accuracy,
AUC (one-vs-rest macro average for more than two classes) and accuracy, mean over
seeds and their standard deviation (``..._std``), and ``..._learned``, the share of
seeds whose classifier beat chance on its validation share.

It needs class labels on the training, held-out and synthetic sets (class-conditional
sampling, or one generator per class with its label). Without them it does not
apply: it warns and reports nothing.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from raresynth import (
    ImageSet,
    Metric,
    MetricValue,
    PluginParams,
    Preprocessing,
    check_compatible,
    content_hash,
    resolve_device,
)

from .classifier import (
    TrainSettings,
    accuracy,
    auc,
    balanced_accuracy,
    predict,
    train_checked,
)

Regime = Literal["trtr", "tstr", "tmtr"]
SCORES = {"balanced_accuracy": balanced_accuracy, "auc": auc, "accuracy": accuracy}  # balanced accuracy first: it is the headline


class NotApplicableWarning(UserWarning):
    """The metric cannot be computed on these sets (it says why) and reports nothing."""


class UtilityParams(PluginParams):
    regimes: list[Regime] = Field(["trtr", "tstr", "tmtr"], min_length=1, description="which training sets to compare")
    seeds: int = Field(3, ge=1, description="classifiers trained per regime (seeds seed, seed+1, ...)")
    seed: int = 0
    steps: int = Field(300, ge=1, description="optimizer steps per classifier")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    width: int = Field(16, ge=2, description="channels of the classifier's first conv block")
    resolution: int | None = Field(32, ge=8, description="images are resized to this for the classifier; null: as they are")
    flips: bool = Field(True, description="augment training batches with random flips")
    validation_fraction: float = Field(0.25, gt=0, lt=1, description="share of each regime's training set held out to check the classifier beats chance")
    significance: float = Field(0.01, gt=0, lt=1, description="a classifier not above chance on its validation share at this level scores as the class prior")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', ...")


class Utility(Metric):
    """``utility_<regime>_<score>`` and ``..._std`` for balanced accuracy, AUC and accuracy; ``utility_<regime>_learned``."""

    Params = UtilityParams
    requires = frozenset({"labels"})
    uses_held_out = True  # the classifiers are tested on the held-out images
    bootstrap = False  # every call trains classifiers: intervals come from seeds and classifier seeds

    def __init__(self, params, spec):
        super().__init__(params, spec)
        # The real-only regime does not depend on the synthetic set: a benchmark that
        # measures many runs with one metric object trains its classifiers once, and tests
        # them on whichever held-out set it is given (the reference rows use halves of it).
        self._real_only_models: dict[str, list] = {}

    def not_applicable(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> str | None:
        """Why the metric does not apply to these sets, or ``None`` when it does."""
        for role, image_set in (("training", train), ("held-out", held_out), ("synthetic", synthetic)):
            if image_set.labels is None:
                hint = " (sample a class-conditional generator, or load one folder per class with its label)" if role == "synthetic" else ""
                return f"utility: does not apply: the {role} set has no class labels{hint}"
        if len(torch.unique(train.labels)) < 2 or len(torch.unique(held_out.labels)) < 2:
            return "utility: does not apply: the training and held-out sets need at least 2 classes each"
        return None

    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        reason = self.not_applicable(train, held_out, synthetic)
        if reason is not None:
            warnings.warn(reason, NotApplicableWarning, stacklevel=2)
            return []
        check_compatible(train, held_out=held_out, synthetic=synthetic)
        p = self.params
        preprocessing = Preprocessing(resolution=p.resolution)
        real_x, test_x, fake_x = (preprocessing.apply(s.images) for s in (train, held_out, synthetic))
        num_classes = max(self.spec.num_classes, int(torch.cat([train.labels, held_out.labels, synthetic.labels]).max()) + 1)
        data = {
            "trtr": (real_x, train.labels),
            "tstr": (fake_x, synthetic.labels),
            "tmtr": (torch.cat([real_x, fake_x]), torch.cat([train.labels, synthetic.labels])),
        }
        device = resolve_device(p.device)
        settings = TrainSettings(p.steps, p.batch_size, p.lr, p.width, p.flips, device, p.validation_fraction, p.significance)
        values = []
        real_key = content_hash(real_x, train.labels) + f"{num_classes} {settings}"
        for regime in p.regimes:
            x, y = data[regime]
            seeds = range(p.seed, p.seed + p.seeds)
            if regime == "trtr":
                if real_key not in self._real_only_models:
                    self._real_only_models = {real_key: [train_checked(x, y, num_classes, settings, seed) for seed in seeds]}
                classifiers = self._real_only_models[real_key]
            else:
                classifiers = [train_checked(x, y, num_classes, settings, seed) for seed in seeds]
            scores: dict[str, list[float]] = {name: [] for name in SCORES}
            learned = [checked.learned for checked in classifiers]
            for checked in classifiers:
                probs = predict(checked.model, test_x, device)
                for name, score in SCORES.items():
                    scores[name].append(score(probs, held_out.labels))
            for name, runs in scores.items():
                # trtr is the real-only baseline, the same for every generator: context, not a contest
                ideal = "none" if regime == "trtr" else "higher"
                values.append(MetricValue(f"utility_{regime}_{name}", float(np.mean(runs)), ideal=ideal, question="utility"))
                values.append(MetricValue(f"utility_{regime}_{name}_std", float(np.std(runs)), ideal="none", question="utility"))
            values.append(MetricValue(f"utility_{regime}_learned", float(np.mean(learned)), ideal="none" if regime == "trtr" else "higher",
                                      question="utility"))
        return values

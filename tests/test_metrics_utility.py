"""Downstream utility: train on real / synthetic / both, test on held-out real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import embedded_data, values
from raresynth import ImageSet
from raresynth.plugins.utility import NotApplicableWarning
from raresynth.plugins.utility.classifier import auc, balanced_accuracy

FAST = {"steps": 30, "seeds": 2, "batch_size": 16, "resolution": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=16, channels=1, train_per_class=24, held_out_per_class=12, crop_size=64)


def utility(plugins, data, **params):
    cls = plugins.metric("utility")
    return cls(cls.Params.model_validate({**FAST, **params}), data.spec)


def test_the_real_training_set_as_synthetic_reproduces_the_real_only_score(plugins, data):
    result = values(utility(plugins, data), data, data.train)
    for score in ("accuracy", "balanced_accuracy", "auc"):
        for regime in ("trtr", "tstr", "tmtr"):
            assert f"utility_{regime}_{score}" in result and f"utility_{regime}_{score}_std" in result
        noise = 2 * max(result[f"utility_trtr_{score}_std"], result[f"utility_tstr_{score}_std"]) + 0.05
        assert abs(result[f"utility_tstr_{score}"] - result[f"utility_trtr_{score}"]) <= noise
        assert abs(result[f"utility_tmtr_{score}"] - result[f"utility_trtr_{score}"]) <= 2 * result[f"utility_tmtr_{score}_std"] + 0.15
    assert result["utility_trtr_accuracy"] > 0.8  # fundus and histology crops are easy to tell apart


def test_a_synthetic_set_with_wrong_labels_scores_lower(plugins, data):
    # A conditional generator that mixes up its classes: real images, every label swapped.
    swapped = ImageSet(data.train.images, 1 - data.train.labels)
    result = values(utility(plugins, data, regimes=["trtr", "tstr"]), data, swapped)
    assert set(result) == {f"utility_{r}_{s}{std}" for r in ("trtr", "tstr") for s in ("accuracy", "balanced_accuracy", "auc")
                           for std in ("", "_std")}
    assert result["utility_tstr_accuracy"] < result["utility_trtr_accuracy"] - 0.5
    assert result["utility_tstr_auc"] < 0.5


def test_without_labels_it_says_it_does_not_apply(plugins, data):
    metric = utility(plugins, data)
    with pytest.warns(NotApplicableWarning, match="utility: does not apply: the synthetic set has no class labels"):
        assert metric.compute(data.train, data.held_out, ImageSet(data.train.images)) == []
    unlabelled = ImageSet(data.train.images)
    with pytest.warns(NotApplicableWarning, match="the training set has no class labels"):
        assert metric.compute(unlabelled, ImageSet(data.held_out.images), unlabelled) == []
    assert utility(plugins, data).requires == frozenset({"labels"})


def test_it_is_deterministic_for_a_seed(plugins, data):
    metric = utility(plugins, data, regimes=["tstr"], seeds=1, steps=10)
    assert values(metric, data, data.train) == values(metric, data, data.train)


def test_scores():
    labels = torch.tensor([0, 0, 0, 1])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], dtype=torch.float64)
    assert balanced_accuracy(probs, labels) == pytest.approx((2 / 3 + 1) / 2)
    assert auc(probs, labels) == pytest.approx(1.0)  # the positive outscores every negative
    three = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]], dtype=torch.float64)
    assert auc(three, torch.tensor([0, 1, 2, 1])) == pytest.approx(np.mean([1.0, 1.0, 1.0]))


def test_the_real_only_classifiers_are_trained_once_per_metric_object(plugins, data, monkeypatch):
    import raresynth.plugins.utility.metric as module

    calls = []
    original = module.train_classifier
    monkeypatch.setattr(module, "train_classifier", lambda x, *args: calls.append(len(x)) or original(x, *args))
    metric = utility(plugins, data, regimes=["trtr", "tstr"])
    first = values(metric, data, data.train)
    swapped = ImageSet(data.train.images, 1 - data.train.labels)
    second = values(metric, data, swapped)
    assert len(calls) == 2 + 2 + 2  # trtr twice, tstr twice, then only tstr again
    assert {k: v for k, v in second.items() if "trtr" in k} == {k: v for k, v in first.items() if "trtr" in k}
    fresh = values(utility(plugins, data, regimes=["trtr", "tstr"]), data, swapped)
    assert fresh == second  # the cached scores are the ones a fresh computation gives

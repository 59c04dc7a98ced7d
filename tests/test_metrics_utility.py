"""Downstream utility: train on real / synthetic / both, test on held-out real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import embedded_data, values
from raresynth import ConfigError, ImageSet, Preprocessing
from raresynth.plugins.utility import NotApplicableWarning
from raresynth.plugins.utility.classifier import (
    TrainSettings,
    auc,
    balanced_accuracy,
    predict,
    train_checked,
    train_classifier,
    validation_split,
)

FAST = {"steps": 100, "seeds": 2, "batch_size": 16, "resolution": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=16, channels=1, train_per_class=24, held_out_per_class=12, crop_size=64)


def utility(plugins, data, **params):
    cls = plugins.metric("utility")
    return cls(cls.Params.model_validate({**FAST, **params}), data.spec)


def test_the_real_training_set_as_synthetic_reproduces_the_real_only_score(plugins, data):
    result = values(utility(plugins, data), data, data.train)
    assert list(result)[:2] == ["utility_trtr_balanced_accuracy", "utility_trtr_balanced_accuracy_std"]  # the headline first
    for regime in ("trtr", "tstr", "tmtr"):
        assert result[f"utility_{regime}_learned"] == 1.0  # every classifier beat chance on its validation share
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
                           for std in ("", "_std")} | {"utility_trtr_learned", "utility_tstr_learned"}
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
    metric = utility(plugins, data, regimes=["tstr"], seeds=1)
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
    original = module.train_checked
    monkeypatch.setattr(module, "train_checked", lambda x, *args: calls.append(len(x)) or original(x, *args))
    metric = utility(plugins, data, regimes=["trtr", "tstr"])
    first = values(metric, data, data.train)
    swapped = ImageSet(data.train.images, 1 - data.train.labels)
    second = values(metric, data, swapped)
    assert len(calls) == 2 + 2 + 2  # trtr twice, tstr twice, then only tstr again
    assert {k: v for k, v in second.items() if "trtr" in k} == {k: v for k, v in first.items() if "trtr" in k}
    fresh = values(utility(plugins, data, regimes=["trtr", "tstr"]), data, swapped)
    assert fresh == second  # the cached scores are the ones a fresh computation gives
    # another held-out set (the reference rows test on halves of it): the same classifiers, tested on it
    half = ImageSet(data.held_out.images[::2], data.held_out.labels[::2])
    calls.clear()
    cached = {v.name: v.value for v in metric.compute(data.train, half, data.train)}
    assert len(calls) == 2  # tstr only
    assert cached == {v.name: v.value for v in utility(plugins, data, regimes=["trtr", "tstr"]).compute(data.train, half, data.train)}


# -- noise cannot game it ---------------------------------------------------------------


def noise_sets(data) -> dict[str, ImageSet]:
    """Synthetic sets whose labels say nothing: uniform noise, and per-pixel Gaussian noise at the training mean and std."""
    n, shape = len(data.train), data.train.images.shape[1:]
    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(n) % 2  # the classes cycled, as the training loop samples them
    images = data.train.images
    gaussian = images.mean(0) + images.std(0) * torch.randn((n, *shape), generator=generator)
    return {"uniform": ImageSet(torch.rand((n, *shape), generator=generator) * 2 - 1, labels, "uniform"),
            "gaussian": ImageSet(gaussian.clamp(-1, 1), labels, "gaussian")}


def test_noise_scores_chance_and_real_images_score_high(plugins, data):
    metric = utility(plugins, data, regimes=["tstr"], seeds=3)
    for name, noise in noise_sets(data).items():
        result = values(metric, data, noise)
        assert result["utility_tstr_balanced_accuracy"] == pytest.approx(0.5, abs=0.1), name
        assert result["utility_tstr_auc"] == pytest.approx(0.5, abs=0.15), name
        assert result["utility_tstr_learned"] < 0.5, name
    real = values(metric, data, data.train)  # real images the test set never saw
    assert real["utility_tstr_balanced_accuracy"] > 0.8 and real["utility_tstr_auc"] > 0.9
    assert real["utility_tstr_learned"] == 1.0


def test_the_chance_check_is_what_stops_noise(data):
    # The same classifier without the check: noise ranks the real classes far from chance
    # (what the check guards against), and the check turns it into the prior classifier.
    settings = TrainSettings(FAST["steps"], FAST["batch_size"], 1e-3, 16, True, torch.device("cpu"))
    preprocessing = Preprocessing(resolution=FAST["resolution"])
    test_x = preprocessing.apply(data.held_out.images)
    unchecked, checked = [], []
    for noise in noise_sets(data).values():
        x = preprocessing.apply(noise.images)
        for seed in range(2):
            unchecked.append(auc(predict(train_classifier(x, noise.labels, 2, settings, seed), test_x, settings.device), data.held_out.labels))
            result = train_checked(x, noise.labels, 2, settings, seed)
            assert not result.learned and result.p_value >= settings.significance
            checked.append(auc(predict(result.model, test_x, settings.device), data.held_out.labels))
    assert max(abs(a - 0.5) for a in unchecked) > 0.3
    assert checked == [0.5] * len(checked)  # the prior classifier ties every image


def test_the_validation_share_is_stratified_and_large_enough_to_show_a_classifier_beats_chance():
    labels = torch.tensor([0] * 24 + [1] * 16)
    fit, validation = validation_split(labels, 0.25, 0.01, seed=0)
    assert sorted(torch.cat([fit, validation]).tolist()) == list(range(40))
    assert torch.bincount(labels[validation]).tolist() == [6, 4]  # a quarter of each class: 10 right has p = 0.6^10 < 0.01
    assert not torch.equal(validation, validation_split(labels, 0.25, 0.01, seed=1)[1])  # each seed its own share
    small = torch.tensor([0] * 8 + [1] * 8)  # a quarter (4) could never pass at 0.01: grown to 7
    assert len(validation_split(small, 0.25, 0.01, seed=0)[1]) >= 7
    with pytest.raises(ConfigError, match="utility: 4 training images are too few to check at significance 0.01"):
        validation_split(torch.tensor([0, 0, 1, 1]), 0.25, 0.01, seed=0)

"""Reference rows, intervals and the significance test, on real data and real (tiny) runs."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from helpers import embedded_data, metric
from raresynth import ImageSet, Metric, MetricValue
from raresynth.config import load_config
from raresynth.evaluation.evaluate import evaluate
from raresynth.evaluation.measure import half_sample_values, half_samples, metric_values
from raresynth.evaluation.references import (
    COPIES,
    NOISE,
    REAL,
    copies_set,
    informative,
    measure_references,
    measure_real,
    noise_set,
)
from raresynth.evaluation.statistics import RunValue, cell_interval, compare, score
from raresynth.training import load_run_generator, synthetic_like_train, train

FAST_DOMAIN = {"epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, channels=3, train_per_class=24, held_out_per_class=10, resolution=16)


# -- the trivial reference sets --------------------------------------------------


def test_noise_matches_the_training_pixels_mean_and_std(data):
    labels = torch.arange(400) % 2
    noise = noise_set(data.train, 400, labels, seed=0)
    assert noise.images.shape == (400, *data.train.images.shape[1:]) and torch.equal(noise.labels, labels)
    assert noise.images.min() >= -1 and noise.images.max() <= 1
    train = data.train.images.double().numpy()
    expected_mean = train.mean(0)
    got_mean = noise.images.double().numpy().mean(0)
    # clipping at [-1, 1] moves the mean a little where the training pixels are near the bounds
    assert np.abs(got_mean - expected_mean).mean() < 0.05
    assert np.corrcoef(got_mean.ravel(), expected_mean.ravel())[0, 1] > 0.9
    assert not torch.equal(noise_set(data.train, 400, labels, seed=1).images, noise.images)
    assert torch.equal(noise_set(data.train, 400, labels, seed=0).images, noise.images)


def test_copies_are_training_images_of_the_requested_class(data):
    labels = torch.tensor([0, 1] * 50)
    copies = copies_set(data.train, 100, labels, seed=0)
    flat_train = data.train.images.flatten(1)
    for image, label in zip(copies.images, copies.labels):
        matches = (flat_train == image.flatten()).all(1).nonzero().flatten()
        assert len(matches) >= 1 and int(data.train.labels[matches[0]]) == int(label)
    assert len({tuple(image.flatten()[:8].tolist()) for image in copies.images}) < 100  # drawn with replacement


class SpyMetric(Metric):
    """Records what it is given; reports the mean intensity of the synthetic set."""

    uses_held_out = True

    def __init__(self):
        super().__init__(None, None)
        self.calls = []

    def compute(self, train, held_out, synthetic):
        self.calls.append((held_out, synthetic))
        return [MetricValue("spy_mean", float(synthetic.images.mean()), ideal="real")]


def test_the_real_row_never_shows_a_held_out_using_metric_an_image_twice(data):
    spy = SpyMetric()
    plain = SpyMetric()
    plain.uses_held_out = False
    values = measure_real([("spy", spy), ("plain", plain)], data.train, data.held_out, resamples=0, seed=0)
    (plain_held, plain_synthetic), = plain.calls
    assert torch.equal(plain_synthetic.images, data.held_out.images)  # the whole held-out set, as a synthetic set
    assert len(spy.calls) == 2
    rows = {tuple(image.flatten().tolist()) for image in data.held_out.images}
    (held_1, syn_1), (held_2, syn_2) = spy.calls
    first = {tuple(i.flatten().tolist()) for i in syn_1.images}
    second = {tuple(i.flatten().tolist()) for i in syn_2.images}
    assert first.isdisjoint(second) and first | second == rows  # two halves, both ways
    assert {tuple(i.flatten().tolist()) for i in held_1.images} == second
    assert set(syn_1.labels.tolist()) == set(syn_2.labels.tolist()) == {0, 1}  # stratified: both halves keep both classes
    expected = (float(syn_1.images.mean()) + float(syn_2.images.mean())) / 2
    assert values["spy_mean"]["value"] == pytest.approx(expected)


# -- informative or not ----------------------------------------------------------


def refs(real, noise, copies, replicates=()):
    return {REAL: {"v": {"value": real, "replicates": list(replicates)}}, NOISE: {"v": {"value": noise}}, COPIES: {"v": {"value": copies}}}


@pytest.mark.parametrize("ideal, question, rows, expected", [
    ("lower", "fidelity", refs(50, 300, 30), True),  # copies beat real on fidelity: no test of fidelity
    ("lower", "fidelity", refs(50, 40, 30), False),  # noise scores better than real: uninformative
    ("higher", "fidelity", refs(0.9, 0.95, 1.0), False),
    ("higher", "utility", refs(0.9, 0.5, 1.0), True),
    ("lower", "privacy", refs(0.05, 0.0, 1.0), True),  # noise is private: no merit, not a failure
    ("lower", "privacy", refs(0.05, 0.0, 0.01), False),  # copies look as private as real images: the audit misses them
    ("real", "diversity", refs(0.40, 0.05, 0.39, replicates=[0.38, 0.42, 0.41, 0.39]), True),
    ("real", "diversity", refs(0.40, 0.405, 0.39, replicates=[0.38, 0.42, 0.41, 0.39]), False),  # noise inside real's spread
])
def test_a_value_is_informative_when_real_images_beat_the_reference_it_must_beat(ideal, question, rows, expected):
    value = MetricValue("v", 0.0, ideal=ideal, question=question)
    entry = {"ideal": value.ideal, "must_beat": list(value.must_beat)}
    verdict, why = informative(entry, rows, "v")
    assert verdict is expected
    assert (why == "") is expected
    if not expected:
        assert why.startswith(("noise scores", "copies scores")) and "real (held-out)" in why


def test_metric_value_ideals_follow_higher_is_better_and_refuse_contradictions():
    assert MetricValue("a", 1.0, higher_is_better=True).ideal == "higher"
    assert MetricValue("a", 1.0, higher_is_better=False).ideal == "lower"
    assert MetricValue("a", 1.0, ideal="real").higher_is_better is None
    assert MetricValue("a", 1.0, ideal="lower").higher_is_better is False
    assert MetricValue("a", 1.0, question="privacy").must_beat == ("copies",)
    with pytest.raises(ValueError, match="contradicts higher_is_better"):
        MetricValue("a", 1.0, higher_is_better=True, ideal="lower")
    with pytest.raises(ValueError, match="ideal must be one of"):
        MetricValue("a", 1.0, ideal="biggest")
    with pytest.raises(ValueError, match="question must be one of"):
        MetricValue("a", 1.0, higher_is_better=True, question="beauty")


def test_every_metric_ranks_real_images_ahead_of_noise_or_is_marked_uninformative(plugins, data, tmp_path, monkeypatch):
    """The built-in metrics on real data: real held-out images must score better than noise by each value's ideal."""
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", str(tmp_path / "cache"))
    metrics = [("swd", metric(plugins, data, "swd")), ("ms_ssim", metric(plugins, data, "ms_ssim")),
               ("fid", metric(plugins, data, "fid", embedding="domain", domain_embedding=FAST_DOMAIN)),
               ("prdc", metric(plugins, data, "prdc", domain_embedding=FAST_DOMAIN)),
               ("memorization", metric(plugins, data, "memorization", domain_embedding=FAST_DOMAIN)),
               ("utility", metric(plugins, data, "utility", seeds=1, steps=100))]
    n = len(data.train)
    rows = measure_references(metrics, [{"name": name} for name, _ in metrics], data.train, data.held_out, n,
                              data.train.labels, resamples=0, seed=0)
    checked = 0
    for name, entry in rows[REAL].items():
        verdict, _ = informative(entry, rows, name)
        if entry["ideal"] == "none":
            assert verdict is None
            continue
        for ref in entry["must_beat"]:
            real, other = entry["value"], rows[ref][name]["value"]
            better = {"higher": real > other, "lower": real < other, "real": other != real}[entry["ideal"]]
            assert verdict is False or better, (name, real, other)
            checked += 1
    assert checked >= 15
    # noise does not game the classifier: chance-level TSTR (balanced accuracy first)
    assert rows[NOISE]["utility_tstr_balanced_accuracy"]["value"] == pytest.approx(0.5, abs=0.1)
    # the perfect memorizer is caught by the audit, real held-out images are not
    assert rows[COPIES]["copy_rate_pixel"]["value"] > 0.9 and rows[REAL]["copy_rate_pixel"]["value"] < 0.25
    # and a second call with the same inputs is read from the cache, not measured again
    calls = []
    monkeypatch.setattr(type(metrics[0][1]), "compute", lambda *a, **k: calls.append(1) or [])
    assert measure_references(metrics, [{"name": name} for name, _ in metrics], data.train, data.held_out, n,
                              data.train.labels, resamples=0, seed=0) == rows
    assert calls == []


# -- intervals ------------------------------------------------------------------


class MeanMetric(Metric):
    def __init__(self):
        super().__init__(None, None)

    def compute(self, train, held_out, synthetic):
        return [MetricValue("mean", float(synthetic.images.double().mean()), ideal="lower")]


def test_half_samples_are_disjoint_halves_and_their_spread_is_the_full_sets_standard_error():
    halves = half_samples(101, 5, seed=3)
    assert all(len(h) == 50 and len(set(h.tolist())) == 50 for h in halves)
    assert not all(torch.equal(halves[0], h) for h in halves[1:])
    # The mean of one intensity per image: half-sample spread ~ sigma / sqrt(n), the standard error of the full mean.
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((400, 1, 2, 2), generator=generator) * 0.3
    synthetic = ImageSet(images=images)
    replicates = half_sample_values([("mean", MeanMetric())], synthetic, synthetic, synthetic, count=400, seed=1)["mean"]
    standard_error = float(images.double().mean((1, 2, 3)).std()) / math.sqrt(400)
    assert statistics.stdev(replicates) == pytest.approx(standard_error, rel=0.15)


def test_cell_intervals_are_student_t_over_seeds_or_the_half_sample_spread():
    seeds = [RunValue(1.0), RunValue(1.4), RunValue(0.9)]
    low, high = cell_interval(seeds)
    half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev([1.0, 1.4, 0.9]) / math.sqrt(3)
    assert (low, high) == pytest.approx((statistics.mean([1.0, 1.4, 0.9]) - half, statistics.mean([1.0, 1.4, 0.9]) + half))
    low, high = cell_interval([RunValue(2.0, [1.9, 2.1, 2.0, 2.2])])
    assert (low, high) == pytest.approx((2.0 - 1.959964 * statistics.stdev([1.9, 2.1, 2.0, 2.2]), 2.0 + 1.959964 * statistics.stdev([1.9, 2.1, 2.0, 2.2])), rel=1e-5)
    assert cell_interval([RunValue(2.0)]) is None and cell_interval([RunValue(float("nan")), RunValue(1.0)]) is None


def test_scores_are_oriented_so_higher_is_better():
    assert score(3.0, "higher") == 3.0 and score(3.0, "lower") == -3.0
    assert score(0.3, "real", real=0.4) == pytest.approx(-0.1) and score(0.5, "real", real=0.4) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="needs the real"):
        score(0.3, "real")


def test_compare_on_hand_made_samples():
    same = [RunValue(1.0, [0.9, 1.1, 1.0]), RunValue(1.0, [0.95, 1.05, 1.0])]
    assert compare(same, same, "lower").p_value == 1.0
    far = [RunValue(5.0, [4.9, 5.1, 5.0])]
    result = compare(same, far, "lower")
    assert result.significant and result.difference == pytest.approx(4.0) and result.p_value < 0.01
    assert compare([RunValue(1.0)], [RunValue(2.0)], "lower").p_value is None  # one seed each, no half-samples: not testable
    # closest to real: 0.41 beats 0.10 when real images score 0.40
    assert compare([RunValue(0.41, [0.40, 0.42])], [RunValue(0.10, [0.09, 0.11])], "real", real=0.40).difference > 0


# -- the test on real runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory, plugins):
    """Six tiny real runs of one config that differ only in their seed."""
    import toy_plugin
    from raresynth.registry import load_plugins

    registry = load_plugins(extra=[("toy", toy_plugin)])
    root = tmp_path_factory.mktemp("toy_runs")
    runs = []
    for seed in range(6):
        config = load_config({
            "run_dir": str(root / f"seed-{seed}"), "seed": seed, "generator": {"name": "toy"},
            "data": {"format": "embedded", "resolution": 16, "channels": 1,
                     "format_options": {"train_per_class": 24, "held_out_per_class": 10, "crop_size": 32}},
            "budget": {"kimg": 0.256}, "batch_size": 16,
            "schedule": {"tick_kimg": 0.128, "snapshot_kimg": 0.256, "keep_checkpoints": 1, "grid_size": 4},
        }, registry=registry)
        runs.append(train(config, registry=registry, progress_bar=False))
    return registry, runs


def measured(swd, dataset, synthetic) -> RunValue:
    replicates = half_sample_values([("swd", swd)], dataset.train, dataset.held_out, synthetic, count=8, seed=0)
    return RunValue(metric_values([("swd", swd)], dataset.train, dataset.held_out, synthetic)["swd"]["value"], replicates["swd"])


def run_values(registry, runs, swd, dataset, scale):
    out = []
    for run in runs:
        generator, *_ = load_run_generator(run.run_dir, registry=registry)
        synthetic = synthetic_like_train(generator, dataset, 96, options=generator.SampleParams(scale=scale))
        out.append(measured(swd, dataset, synthetic))
    return out


def test_the_test_finds_no_difference_between_seeds_of_one_config_and_one_for_a_collapsed_model(toy_runs, plugins):
    from raresynth.data import load_dataset

    registry, runs = toy_runs
    dataset = load_dataset(runs[0].config.data, registry)
    swd = metric(plugins, dataset, "swd")
    good = run_values(registry, runs, swd, dataset, scale=1.0)
    same_config = compare(good[:3], good[3:], "lower", draws=4000, seed=0)
    assert same_config.p_value > 0.05 and not same_config.significant
    # A collapsed model (the toy runs sampled without noise: every image the same mean image) against a good one
    # (a near-perfect generator: training images under seed-dependent noise of 0.05), three seeds each.
    collapsed = run_values(registry, runs[:3], swd, dataset, scale=0.0)
    assert all(len(torch.unique(load_run_generator(r.run_dir, registry=registry)[0].sample([0, 1], options=None).round(decimals=3), dim=0)) == 2
               for r in runs[:1])  # with noise the toy's samples differ; scale 0 removes it
    near_perfect = []
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        index = torch.randint(len(dataset.train), (96,), generator=generator)
        images = (dataset.train.images[index] + 0.05 * torch.randn(dataset.train.images[index].shape, generator=generator)).clamp(-1, 1)
        near_perfect.append(measured(swd, dataset, ImageSet(images=images, labels=dataset.train.labels[index])))
    assert max(r.value for r in near_perfect) < min(r.value for r in collapsed)
    against_collapsed = compare(near_perfect, collapsed, "lower", draws=4000, seed=0)
    assert against_collapsed.p_value < 0.05 and against_collapsed.difference > 0  # the good model is the better one


def test_a_run_writes_values_with_intervals_and_reference_rows(tmp_path, monkeypatch, registry, toy_config):
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", str(tmp_path / "cache"))
    config = load_config(toy_config(metrics=[{"name": "swd"}, {"name": "mean_gap"}], evaluation={"resamples": 4}), registry=registry)
    run = train(config, registry=registry, progress_bar=False)
    import json

    values = json.loads((run.run_dir / "metrics.json").read_text())
    swd = values["swd"]
    assert swd["ideal"] == "lower" and swd["question"] == "fidelity" and len(swd["replicates"]) == 4
    low, high = swd["interval"]
    assert low < swd["value"] < high
    assert set(swd["references"]) == {REAL, COPIES, NOISE}
    assert swd["references"][NOISE] > swd["references"][REAL] and swd["informative"] is True
    assert values["mean_gap"]["references"][COPIES] < values["mean_gap"]["references"][NOISE] + 1
    # without references and resamples the values are what the metrics returned
    config = load_config(toy_config(run_dir=str(tmp_path / "plain"), metrics=[{"name": "swd"}],
                                    evaluation={"resamples": 0, "references": False}), registry=registry)
    plain = json.loads((train(config, registry=registry, progress_bar=False).run_dir / "metrics.json").read_text())
    assert plain["swd"]["replicates"] == [] and plain["swd"]["interval"] is None and "references" not in plain["swd"]


def test_evaluate_gives_each_value_its_references(data, plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", "")
    metrics = [("swd", metric(plugins, data, "swd"))]
    values = evaluate(metrics, [{"name": "swd"}], data.train, data.held_out, data.held_out, resamples=0)
    assert values["swd"]["references"][REAL] == pytest.approx(values["swd"]["value"])  # the held-out set is the real row

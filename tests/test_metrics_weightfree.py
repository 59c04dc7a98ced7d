"""The weight-free metrics: SWD, MS-SSIM diversity, PRDC, and FRD's optional registration."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pydantic
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from helpers import assert_setting_bounds, embedded_data, metric, noisy, values
from raresynth import ConfigError, ImageSet
from raresynth.evaluation.similarity import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, ssim
from raresynth.plugins.weightfree import frd_available
from raresynth.plugins.weightfree.prdc import prdc
from raresynth.plugins.weightfree.swd import laplacian_pyramid, pyr_up, pyramid_resolutions, sliced_wasserstein, wasserstein_1d

SIGMAS = (0.0, 0.1, 0.2, 0.4)
FAST_DOMAIN = {"epochs": 3}


pytestmark = pytest.mark.usefixtures("isolated_features")  # conftest: fresh cache, no weights, one thread


@pytest.fixture(scope="module", params=[3, 1], ids=["rgb", "gray"])
def data(request, plugins):
    return embedded_data(plugins, resolution=32, channels=request.param, train_per_class=32, held_out_per_class=8, crop_size=64)


@pytest.fixture(scope="module")
def gray(plugins):
    """FRD computes radiomics on gray images: its tests run on the gray crops only."""
    return embedded_data(plugins, resolution=32, channels=1, train_per_class=32, held_out_per_class=8, crop_size=64)


# -- SWD ---------------------------------------------------------------------


def test_swd_of_a_set_with_itself_is_zero_and_grows_with_noise(plugins, data):
    swd = metric(plugins, data, "swd")
    results = [values(swd, data, noisy(data.train, sigma)) for sigma in SIGMAS]
    assert set(results[0]) == {"swd", "swd_32", "swd_16"}  # 32 px and 16 px pyramid levels, and their mean
    assert results[0]["swd"] == pytest.approx(0.0, abs=1e-9)
    scores = [r["swd"] for r in results]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_swd_defaults_are_the_papers_settings(plugins, data):
    """Karras et al. 2018, appendix D: levels down to 16 px, 7x7 neighbourhoods, 128 per image and level, 4 x 128 directions."""
    p = metric(plugins, data, "swd").params
    assert (p.min_resolution, p.neighbourhood, p.per_image, p.repeats, p.directions) == (16, 7, 128, 4, 128)
    with pytest.raises(pydantic.ValidationError, match=r"neighbourhood\n.*must be odd \(got 6\)"):  # a centre pixel each
        metric(plugins, data, "swd", neighbourhood=6)
    assert "swd" in values(metric(plugins, data, "swd", neighbourhood=3, per_image=8), data, data.train)
    with pytest.raises(ConfigError, match=r"^swd: a pyramid level of 16x16 pixels is smaller than the 17x17 neighbourhood$"):
        metric(plugins, data, "swd", neighbourhood=17).compute(data.train, data.held_out, data.train)
    smallest = {"min_resolution": 8, "neighbourhood": 3, "per_image": 1, "repeats": 1, "directions": 1}
    assert_setting_bounds(lambda **setting: metric(plugins, data, "swd", **setting), smallest,
                          {name: (value - 1, f"greater than or equal to {value}") for name, value in smallest.items()})
    declared = {v.name: v.ideal for v in metric(plugins, data, "swd", per_image=8).compute(data.train, data.held_out, data.train)}
    assert declared == {"swd": "lower", "swd_32": "lower", "swd_16": "lower"}  # what the report ranks by


def test_swd_is_deterministic_for_a_seed_and_compares_sets_of_different_sizes(plugins, data):
    synthetic = noisy(ImageSet(data.train.images[:20], data.train.labels[:20]), 0.1)
    first = values(metric(plugins, data, "swd", seed=5), data, synthetic)
    assert values(metric(plugins, data, "swd", seed=5), data, synthetic) == first
    assert values(metric(plugins, data, "swd", seed=6), data, synthetic) != first


def test_swd_reuses_the_real_projections_and_gives_a_fresh_metrics_values(plugins, data, monkeypatch):
    import raresynth.plugins.weightfree.swd as module

    calls = []
    original = module.descriptors
    monkeypatch.setattr(module, "descriptors", lambda level, *args: calls.append(len(level)) or original(level, *args))
    swd = metric(plugins, data, "swd")
    sets = [noisy(data.train, 0.2), ImageSet(data.train.images[:20]), noisy(ImageSet(data.held_out.images), 0.1)]
    cached = [values(swd, data, s) for s in sets]
    # the 64 training images' descriptors were drawn once per level; every synthetic set's each call
    assert calls == [64, 64, 64, 64, 20, 20, 16, 16]
    assert cached == [values(metric(plugins, data, "swd"), data, s) for s in sets]


def test_swd_measured_against_another_training_set_is_not_served_from_the_cache(plugins, data):
    """The real projections are kept for the next call only when the reference images are the same (either order)."""
    other = ImageSet(noisy(data.train, 0.3).images, data.train.labels)
    synthetic = noisy(data.train, 0.1)
    fresh = {}
    for train in (data.train, other):
        fresh[id(train)] = values(metric(plugins, data, "swd", per_image=16), SimpleNamespace(train=train, held_out=data.held_out), synthetic)
    assert fresh[id(data.train)] != fresh[id(other)]
    for first, second in ((data.train, other), (other, data.train)):
        swd = metric(plugins, data, "swd", per_image=16)
        swd.compute(first, data.held_out, synthetic)
        assert values(swd, SimpleNamespace(train=second, held_out=data.held_out), synthetic) == fresh[id(second)]


def test_swd_against_the_held_out_set(plugins, data):
    """``reference: held_out`` compares with the held-out images: the held-out set itself then scores 0."""
    assert values(metric(plugins, data, "swd", reference="held_out", per_image=16), data, data.held_out)["swd"] == pytest.approx(0.0, abs=1e-9)
    assert values(metric(plugins, data, "swd", per_image=16), data, data.held_out)["swd"] > 1.0


def test_swd_neighbourhood_as_large_as_its_level_is_the_whole_image():
    from raresynth.plugins.weightfree.swd import descriptors

    level = torch.rand(2, 3, 7, 7)
    desc = descriptors(level, 4, 7, torch.Generator().manual_seed(0))
    assert desc.shape == (8, 3 * 7 * 7)
    whole = level.double()
    whole = (whole - whole.mean(dim=(0, 2, 3), keepdim=True)) / whole.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    assert torch.allclose(desc, whole.repeat_interleave(4, dim=0).reshape(8, -1).float(), atol=1e-6)


def test_swd_of_a_flat_synthetic_set_is_finite_and_far(plugins, data):
    """A collapsed generator's flat images: every Laplacian detail level is 0 (std 0), normalized without dividing by 0."""
    flat = ImageSet(torch.full_like(data.train.images, 0.25), data.train.labels)
    result = values(metric(plugins, data, "swd", per_image=16), data, flat)
    assert all(math.isfinite(v) for v in result.values()), result
    assert result["swd"] > values(metric(plugins, data, "swd", per_image=16), data, noisy(data.train, 0.1))["swd"]


def test_wasserstein_of_samples_of_different_sizes_equals_scipys():
    """W1 between empirical distributions of n and m values, exact for any n and m (not a subsample of the larger)."""
    from scipy.stats import wasserstein_distance

    generator = np.random.default_rng(3)
    for n, m in ((12, 12), (12, 6), (12, 4), (7, 5), (40, 9), (40, 16), (11, 5)):  # 11 = 2 x 5 + 1: not divisible
        a, b = np.sort(generator.normal(size=(4, n)), axis=1), np.sort(generator.normal(0.5, 2.0, size=(4, m)), axis=1)
        expected = [wasserstein_distance(x, y) for x, y in zip(a, b)]
        assert wasserstein_1d(a, b) == pytest.approx(expected, rel=1e-12)
        assert wasserstein_1d(b, a) == pytest.approx(expected, rel=1e-12)
    from raresynth.plugins.weightfree.swd import _merged_steps

    assert not any(array.flags.writeable for array in _merged_steps(7, 5))  # cached: shared by every later call


def test_laplacian_pyramid_reconstructs_the_image():
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    pyramid = laplacian_pyramid(images, 3)
    assert [level.shape[-1] for level in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, images)
    assert pyramid_resolutions(32, 16) == [32, 16] and pyramid_resolutions(8, 16) == [8]
    assert pyramid_resolutions(128, 16) == [128, 64, 32, 16] and pyramid_resolutions(64, 8) == [64, 32, 16, 8]
    assert pyramid_resolutions(16, 10) == [16] and pyramid_resolutions(64, 24) == [64, 32]  # never a level below the coarsest


# -- MS-SSIM -----------------------------------------------------------------


def test_ms_ssim_of_identical_images_is_one_and_drops_with_noise():
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.allclose(ms_ssim(images, images), torch.ones(4, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(ssim(images, images), torch.ones(4, dtype=torch.float32), atol=1e-5)
    assert ms_ssim_scales(16) == 1 and ms_ssim_scales(32) == 2 and ms_ssim_scales(256) == 5 and ms_ssim_scales(1024) == 5
    assert ms_ssim_scales(22) == 2 and ms_ssim_scales(21) == 1  # a scale is used while its side is at least the 11 px window
    assert ms_ssim_scales(8) == 1  # smaller than the window: one scale, the window shrunk to fit
    assert (ms_ssim(images, (images + 0.5 * torch.randn_like(images)).clamp(-1, 1)) < 0.9).all()


def test_ms_ssim_diversity_against_the_real_pairs_baseline(plugins, data):
    m = metric(plugins, data, "ms_ssim")
    same = values(m, data, data.train)
    assert same["ms_ssim_synthetic"] == pytest.approx(same["ms_ssim_real"]) and same["ms_ssim_gap"] == pytest.approx(0.0)
    # A collapsed generator: the same image over and over, labelled like the training set.
    collapsed = values(m, data, ImageSet(data.train.images[:1].expand_as(data.train.images).clone(), data.train.labels))
    assert collapsed["ms_ssim_synthetic"] == pytest.approx(1.0, abs=1e-4)
    assert collapsed["ms_ssim_gap"] > 0.3


def test_ms_ssim_keeps_the_real_mean_only_for_the_same_real_set(plugins, data, monkeypatch):
    import raresynth.plugins.weightfree.msssim as module

    calls = []
    original = module.mean_pair_ms_ssim
    monkeypatch.setattr(module, "mean_pair_ms_ssim", lambda images, *args: calls.append(len(images)) or original(images, *args))
    other = noisy(data.train, 0.3)
    sets = [noisy(data.train, 0.2), ImageSet(data.train.images[:20], data.train.labels[:20])]
    fresh = {id(train): [values(metric(plugins, data, "ms_ssim"), SimpleNamespace(train=train, held_out=data.held_out), s) for s in sets]
             for train in (data.train, other)}
    calls.clear()
    m = metric(plugins, data, "ms_ssim")
    assert [values(m, data, s) for s in sets] == fresh[id(data.train)]
    assert calls == [64, 64, 20]  # the real set's pairs once, each synthetic set's every call
    for first, second in ((data.train, other), (other, data.train)):  # another real set: measured again, either order
        m = metric(plugins, data, "ms_ssim")
        values(m, SimpleNamespace(train=first, held_out=data.held_out), sets[0])
        assert values(m, SimpleNamespace(train=second, held_out=data.held_out), sets[0]) == fresh[id(second)][0]
    m = metric(plugins, data, "ms_ssim")
    m.params = m.Params.model_validate({"max_pairs": 100})  # other settings, the same object: measured again
    assert values(m, data, sets[0])["ms_ssim_real"] != fresh[id(data.train)][0]["ms_ssim_real"]



def test_ms_ssim_pairs_within_each_class_of_two_or_more_images():
    """A class of exactly 2 images gives its one pair; the mean is over all pairs, class by class (Odena et al.)."""
    from raresynth.plugins.weightfree.msssim import mean_pair_ms_ssim

    images = (torch.rand(7, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    images[6] = (images[5] + 0.1).clamp(-1, 1)  # class 1's pair: nearly the same image, MS-SSIM near 1
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    i, j = torch.triu_indices(5, 5, offset=1)
    expected = torch.cat([ms_ssim(images[i], images[j]), ms_ssim(images[5:6], images[6:7])]).mean()
    assert mean_pair_ms_ssim(images, labels, 100, 11, torch.Generator().manual_seed(0)) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ConfigError, match="ms_ssim: needs at least 2 images"):
        mean_pair_ms_ssim(images[:2], torch.tensor([0, 1]), 100, 11, torch.Generator())


def test_ms_ssim_splits_its_pair_budget_between_the_classes(monkeypatch):
    """``max_pairs`` pairs per set in all: each of 2 classes of 10 images (45 pairs) gives 10 of max_pairs = 20."""
    import raresynth.plugins.weightfree.msssim as module

    scored = []
    original = module.ms_ssim
    monkeypatch.setattr(module, "ms_ssim", lambda x, y, **kw: scored.append(len(x)) or original(x, y, **kw))
    images = torch.rand(20, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    module.mean_pair_ms_ssim(images, torch.tensor([0] * 10 + [1] * 10), 20, 11, torch.Generator().manual_seed(0))
    assert scored == [10, 10]
    scored.clear()
    module.mean_pair_ms_ssim(images, None, 20, 11, torch.Generator().manual_seed(0))  # one group: all 20 from it
    assert scored == [20]
    scored.clear()
    module.mean_pair_ms_ssim(images, torch.tensor([0] * 10 + [1] * 10), 1, 11, torch.Generator().manual_seed(0))
    assert scored == [1, 1]  # fewer pairs than classes: one pair from each class


def test_ms_ssim_defaults_and_within_class_false(plugins, data):
    """docs/metrics.md's defaults; within_class: false pairs images across classes, as if the sets had no labels."""
    p = metric(plugins, data, "ms_ssim").params
    assert (p.reference, p.max_pairs, p.within_class, p.window) == ("train", 1000, True, 11)
    unlabelled = SimpleNamespace(train=ImageSet(data.train.images), held_out=data.held_out)
    synthetic = noisy(data.train, 0.2)
    across = values(metric(plugins, data, "ms_ssim", within_class=False), data, synthetic)
    assert across == values(metric(plugins, data, "ms_ssim"), unlabelled, ImageSet(synthetic.images))
    assert across["ms_ssim_real"] != values(metric(plugins, data, "ms_ssim"), data, synthetic)["ms_ssim_real"]


def test_ms_ssim_reference_held_out_measures_the_held_out_pairs(plugins, data):
    """``reference: held_out``: ms_ssim_real is the held-out set's own mean, as the training set's is by default."""
    synthetic = noisy(data.train, 0.2)
    on_held_out = values(metric(plugins, data, "ms_ssim", reference="held_out"), data, synthetic)
    swapped = SimpleNamespace(train=data.held_out, held_out=data.train)
    assert on_held_out == values(metric(plugins, data, "ms_ssim"), swapped, synthetic)
    assert on_held_out["ms_ssim_real"] != values(metric(plugins, data, "ms_ssim"), data, synthetic)["ms_ssim_real"]


def test_ms_ssim_smallest_settings_and_an_odd_window(plugins, data):
    assert_setting_bounds(lambda **setting: metric(plugins, data, "ms_ssim", **setting), {"window": 3, "max_pairs": 1},
                          {"max_pairs": (0, "greater than or equal to 1")})
    for window, message in ((10, r"must be odd \(got 10\)"), (1, "greater than or equal to 3")):
        with pytest.raises(pydantic.ValidationError, match=f"window\n.*{message}"):
            metric(plugins, data, "ms_ssim", window=window)

# -- PRDC --------------------------------------------------------------------


def test_prdc_of_identical_sets_is_one_for_all_four(plugins, data):
    result = values(metric(plugins, data, "prdc", domain_embedding=FAST_DOMAIN), data, data.train)
    assert result == {"precision_domain": 1.0, "recall_domain": 1.0, "density_domain": 1.0, "coverage_domain": 1.0}
    pixels = values(metric(plugins, data, "prdc", embedding="pixels"), data, data.train)
    assert pixels == {"precision_pixels": 1.0, "recall_pixels": 1.0, "density_pixels": 1.0, "coverage_pixels": 1.0}


def test_prdc_drops_for_a_distant_set(plugins, data):
    far = values(metric(plugins, data, "prdc", embedding="pixels"), data, noisy(data.train, 0.8))
    assert far["precision_pixels"] < 0.5 and far["coverage_pixels"] < 0.5


def test_prdc_matches_the_definition_on_points():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = torch.tensor([[0.1], [2.9], [20.0], [21.0], [22.0]])
    # k=1 radii of the real points: 1, 1, 1, 1, 7. Fake 0.1 and 2.9 fall in real balls; 20-22 in none.
    values = prdc(real, fake, k=1)
    assert values["precision"] == pytest.approx(2 / 5)
    assert values["density"] == pytest.approx((2 + 2) / 5)  # 0.1 in balls of 0 and 1; 2.9 in balls of 2 and 3
    assert values["coverage"] == pytest.approx(4 / 5)  # every real ball but 10's (radius 7, nearest fake 7.1 away) holds a fake
    assert values["recall"] == pytest.approx(4 / 5)  # fake radii 2.8, 2.8, 1, 1, 1: only real 10 is in no fake ball
    with pytest.raises(ConfigError, match="nearest_k=5 needs more than 5"):
        prdc(real, fake, k=5)


def test_prdc_against_the_held_out_set(plugins, data):
    """``reference: held_out`` compares with the held-out images: the held-out set itself then scores 1 on all four."""
    against_held_out = values(metric(plugins, data, "prdc", embedding="pixels", reference="held_out"), data, data.held_out)
    assert set(against_held_out.values()) == {1.0}
    against_train = values(metric(plugins, data, "prdc", embedding="pixels"), data, data.held_out)
    assert against_train["precision_pixels"] < 1.0 and against_train["coverage_pixels"] < 1.0


def test_prdc_on_sets_of_different_sizes():
    """Density averages over the synthetic samples: with 5 real and 3 synthetic points it is not the per-real average."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # k=1 radii 1, 1, 1, 1, 7
    fake = torch.tensor([[0.1], [2.9], [20.0]])  # k=1 radii 2.8, 2.8, 17.1
    values = prdc(real, fake, k=1)
    assert values["precision"] == pytest.approx(2 / 3)
    assert values["density"] == pytest.approx((2 + 2 + 0) / 3)  # real balls per synthetic point (per real point: 4 / 5)
    assert values["coverage"] == pytest.approx(4 / 5)
    assert values["recall"] == 1.0  # real 10 lies 10 from synthetic 20, inside its 17.1


def test_prdc_balls_are_open_as_in_the_reference_code():
    """A point exactly at a ball's radius is outside it, for the real balls and the synthetic ones (k=1, exact distances)."""
    real, fake = torch.tensor([[0.0], [4.0]]), torch.tensor([[8.0], [12.0]])  # every radius 4; real 4 and fake 8 are 4 apart
    assert prdc(real, fake, k=1) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert prdc(real, torch.tensor([[7.5], [12.0]]), k=1) == {"precision": 0.5, "recall": 0.5, "density": 0.5, "coverage": 0.5}


def test_prdc_needs_more_samples_than_k_in_each_set(plugins, data):
    sets = {n: torch.arange(n, dtype=torch.float64)[:, None] for n in (1, 2, 3)}
    for n_real, n_fake in ((1, 3), (2, 3), (3, 1), (3, 2)):
        with pytest.raises(ConfigError, match=rf"^prdc: nearest_k=2 needs more than 2 real and synthetic samples \(got {n_real} and {n_fake}\)$"):
            prdc(sets[n_real], sets[n_fake], k=2)
    assert set(prdc(sets[3], sets[3], k=2)) == {"precision", "recall", "density", "coverage"}
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
        metric(plugins, data, "prdc", nearest_k=0)
    assert metric(plugins, data, "prdc").params.nearest_k == 5  # Naeem et al.'s k
    real, fake = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)), torch.randn(30, 3, generator=torch.Generator().manual_seed(1))
    assert prdc(real, fake) == prdc(real, fake, k=5) != prdc(real, fake, k=4)  # the function's default too


def test_prdc_values_carry_no_suffix_only_in_the_papers_vgg16_features(plugins, data, monkeypatch):
    """Naeem et al.'s VGG16 features at their default layer give plain names; another layer, or another embedding, a suffix."""
    import raresynth.plugins.weightfree.prdc as module

    pixels = metric(plugins, data, "prdc", embedding="pixels").params.build_embedding(data.train)
    monkeypatch.setattr(module, "check_embedding", lambda *args: None)  # no VGG16 weights here: the pixels stand in
    monkeypatch.setattr(module.PRDCParams, "build_embedding", lambda self, train, metric: pixels)
    vgg16 = "".join(["vgg", "16"])  # as read from a config file: equal to the constant, not the same object
    assert set(values(metric(plugins, data, "prdc", embedding=vgg16), data, data.train)) == {"precision", "recall", "density", "coverage"}
    in_layer = values(metric(plugins, data, "prdc", embedding=vgg16, feature_layer="fc1"), data, data.train)
    assert set(in_layer) == {f"{name}_{pixels.tag}" for name in ("precision", "recall", "density", "coverage")}


# -- FRD ---------------------------------------------------------------------


def test_frd_is_registered_only_when_frd_score_is_installed(plugins):
    assert ("frd" in plugins.names("metric")) == frd_available()


def _itk_threads_here(_=None) -> int:
    import SimpleITK as sitk

    return sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()


@pytest.mark.skipif(not frd_available(), reason="frd-score is not installed (pip install 'raresynth[frd]')")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_frd_extraction_processes_use_the_threads_set_and_the_setting_is_restored(method, monkeypatch):
    import multiprocessing

    from raresynth.plugins.weightfree.frd import itk_threads

    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "3")
    before = _itk_threads_here()
    with itk_threads(1), multiprocessing.get_context(method).Pool(1) as pool:  # frd-score's pool starts inside
        assert (_itk_threads_here(), pool.map(_itk_threads_here, [0])) == (1, [1])
    assert (_itk_threads_here(), os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"]) == (before, "3")
    monkeypatch.delenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    with pytest.raises(KeyError), itk_threads(2):  # restored after an error too, and an unset variable stays unset
        raise KeyError
    assert (_itk_threads_here(), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" in os.environ) == (before, False)


@pytest.mark.skipif(not frd_available(), reason="frd-score is not installed (pip install 'raresynth[frd]')")
@pytest.mark.slow
def test_frd_is_lowest_for_a_set_with_itself(plugins, gray):
    data = gray
    frd = plugins.metric("frd")(plugins.metric("frd").Params(num_workers=1), data.spec)
    few = ImageSet(data.train.images[::4], data.train.labels[::4])  # 16 images: radiomic features take a while
    same = frd.compute(few, data.held_out, few)[0]
    assert same.name == "frd" and same.higher_is_better is False
    assert same.value < frd.compute(few, data.held_out, noisy(few, 0.5))[0].value


def test_sets_of_other_shapes_are_refused(plugins, data):
    other = ImageSet(torch.zeros(4, 3, 16, 16))
    with pytest.raises(ConfigError, match="synthetic images are 16x16 with 3 channels but the .* images are 32x32"):
        metric(plugins, data, "swd").compute(data.train, data.held_out, other)


@pytest.mark.skipif(not frd_available(), reason="frd-score is not installed (pip install 'raresynth[frd]')")
@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v0"])
def test_frd_equals_frd_scores_own_computation_and_reuses_the_real_features(plugins, gray, version, monkeypatch, tmp_path):
    import contextlib
    import io

    import frd_score

    import raresynth.plugins.weightfree.frd as module

    data = gray
    real = ImageSet(data.train.images[::4], data.train.labels[::4])  # 16 images
    fake = noisy(real, 0.3)
    module.write_pngs(real, tmp_path / "real")
    module.write_pngs(fake, tmp_path / "fake")
    with contextlib.redirect_stdout(io.StringIO()):
        expected = frd_score.compute_frd([str(tmp_path / "real"), str(tmp_path / "fake")], frd_version=version, num_workers=1)

    extracted = []
    original = module.radiomic_features
    monkeypatch.setattr(module, "radiomic_features", lambda images, *args: extracted.append(len(images)) or original(images, *args))
    frd = plugins.metric("frd")(plugins.metric("frd").Params(frd_version=version, num_workers=1), data.spec)
    assert frd.compute(real, data.held_out, fake)[0].value == pytest.approx(float(expected), rel=1e-5)
    frd.compute(real, data.held_out, real)
    half = ImageSet(fake.images[::2], fake.labels[::2])
    halves = frd.compute(real, data.held_out, half)[0].value
    assert extracted == [16, 16]  # each image's features once: copies of the real images and half-samples come from memory
    fresh = plugins.metric("frd")(plugins.metric("frd").Params(frd_version=version, num_workers=1), data.spec)
    assert halves == pytest.approx(fresh.compute(real, data.held_out, half)[0].value, rel=1e-9)


@pytest.mark.parametrize("n", [500, 40, 8])  # more samples than dimensions, then fewer: singular covariances
def test_frechet_distance_equals_the_matrix_square_root_formula(n):
    """Dowson & Landau: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's sqrtm as frd-score computes it."""
    from raresynth.plugins.weightfree.frd import frechet_distance

    generator = np.random.default_rng(n)
    mixing = generator.normal(size=(60, 60))
    a = generator.normal(size=(n, 60)) @ mixing
    b = generator.normal(0.3, 1.5, size=(n, 60)) @ mixing + 0.2
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


@pytest.mark.skipif(not frd_available(), reason="frd-score is not installed (pip install 'raresynth[frd]')")
def test_frd_keeps_no_features_when_frd_score_leaves_an_image_out(plugins, gray, monkeypatch):
    """frd-score drops an image whose extraction failed: its rows no longer match the images, so none is kept."""
    import raresynth.plugins.weightfree.frd as module

    calls = []

    def losing_the_last(images, *args):
        calls.append(len(images))
        rows = np.arange(len(images) * 3, dtype=np.float64).reshape(len(images), 3) + float(images.images.mean())
        return rows[:-1]

    monkeypatch.setattr(module, "radiomic_features", losing_the_last)
    frd = plugins.metric("frd")(plugins.metric("frd").Params(num_workers=1), gray.spec)
    few = ImageSet(gray.train.images[:5])
    assert frd.image_features(few).shape == (4, 3)  # as extracted, for the whole set
    assert len(frd._features) == 0 and calls == [5, 5]
    assert frd.image_features(few).shape == (4, 3) and calls == [5, 5, 5, 5]  # nothing kept: extracted again


# -- against independent computations ------------------------------------------------
# Each test below recomputes a metric from its paper's definition with numpy / scipy /
# scikit-image, sharing nothing with the plugin but the random draws (positions and
# directions come from the same seeded torch generators, so both sides see one sample).

BINOMIAL_2D = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _scipy_blur(images: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The 5x5 binomial filter with mirrored borders, per image and channel (scipy ``mode='mirror'``)."""
    return ndimage.convolve(images, (BINOMIAL_2D * gain)[None, None], mode="mirror")


def _scipy_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Burt & Adelson's Laplacian pyramid: band = image - expand(reduce(image)), expand by zero insertion and 4x the kernel."""
    pyramid = [images]
    for _ in range(1, levels):
        down = _scipy_blur(pyramid[-1])[:, :, ::2, ::2]
        up = np.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - _scipy_blur(up, gain=4.0)
        pyramid.append(down)
    return pyramid


def test_pyr_up_of_a_constant_is_the_constant_and_the_pyramid_matches_scipy():
    constant = torch.full((1, 2, 8, 8), 0.7, dtype=torch.float64)
    assert torch.allclose(pyr_up(constant), torch.full((1, 2, 16, 16), 0.7, dtype=torch.float64))  # expand keeps the DC gain
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = laplacian_pyramid(images, 3)
    for level, (mine, reference) in enumerate(zip(ours, _scipy_pyramid(images.numpy(), 3))):
        assert np.allclose(mine.numpy(), reference, atol=1e-12), level


def test_sliced_wasserstein_of_a_shifted_cloud_is_the_mean_projected_shift():
    """W1 between a 1-D sample and itself shifted by t is |t|: the sliced distance of a pure shift v is E|<v, theta>|."""
    generator = torch.Generator().manual_seed(1)
    cloud = torch.randn(300, 5, dtype=torch.float64, generator=generator)
    shift = torch.tensor([3.0, 0.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    distance = sliced_wasserstein(cloud, cloud + shift, repeats=4, directions=512, generator=torch.Generator().manual_seed(2))
    draws = torch.Generator().manual_seed(2)
    projected = []
    for _ in range(4):
        dirs = torch.randn(5, 512, generator=draws, dtype=torch.float64).numpy()
        projected.append(np.abs(shift.numpy() @ (dirs / np.linalg.norm(dirs, axis=0))))
    assert distance == pytest.approx(float(np.mean(projected)), rel=1e-9)  # exactly, for these directions
    d, norm = 5, float(shift.norm())
    expected = norm * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))  # E|<v, theta>| on the unit sphere
    assert distance == pytest.approx(expected, rel=0.05)


def _numpy_swd(real: np.ndarray, fake: np.ndarray, resolutions, per_image, size, repeats, directions, seed) -> dict[str, float]:
    """Karras et al. 2018, appendix D, from scratch: pyramid, normalized 7x7 descriptors, sliced W1, times 1e3."""
    gen_real, gen_fake, gen_dirs = (torch.Generator().manual_seed(seed) for _ in range(3))
    out = {}
    for resolution, level_real, level_fake in zip(resolutions, _scipy_pyramid(real, len(resolutions)),
                                                  _scipy_pyramid(fake, len(resolutions))):
        sets = []
        for level, generator in ((level_real, gen_real), (level_fake, gen_fake)):
            n, c, h, w = level.shape
            half = size // 2
            y = torch.randint(half, h - half, (n * per_image,), generator=generator).numpy()
            x = torch.randint(half, w - half, (n * per_image,), generator=generator).numpy()
            image = np.repeat(np.arange(n), per_image)
            patches = np.stack([level[i, :, r - half : r + half + 1, q - half : q + half + 1] for i, r, q in zip(image, y, x)])
            patches = (patches - patches.mean(axis=(0, 2, 3), keepdims=True)) / patches.std(axis=(0, 2, 3), keepdims=True)
            sets.append(patches.reshape(len(patches), -1))
        per_repeat = []
        for _ in range(repeats):
            dirs = torch.randn(sets[0].shape[1], directions, generator=gen_dirs, dtype=torch.float64).numpy()
            dirs = dirs / np.linalg.norm(dirs, axis=0)
            a, b = np.sort(sets[0] @ dirs, axis=0), np.sort(sets[1] @ dirs, axis=0)
            per_repeat.append(np.mean(np.abs(a - b)))  # W1 of two equal-size 1-D samples: mean gap of the sorted values
        out[f"swd_{resolution}"] = 1e3 * float(np.mean(per_repeat))
    out["swd"] = float(np.mean([out[f"swd_{r}"] for r in resolutions]))
    return out


def test_swd_equals_the_papers_definition_computed_with_numpy_and_scipy(plugins, data):
    channels = data.spec.channels
    generator = torch.Generator().manual_seed(4)
    # 8-bit images (the metric quantizes to 8 bits first), channels on very different scales: per-channel normalization matters
    levels = torch.randint(0, 256, (12, channels, 32, 32), generator=generator).double()
    if channels == 3:
        levels[:, 1] = levels[:, 1] // 16 + 120
    real = ImageSet((levels / 127.5 - 1).float())
    fake = ImageSet((torch.randint(0, 256, (12, channels, 32, 32), generator=generator).double() / 127.5 - 1).float())
    params = {"per_image": 16, "repeats": 2, "directions": 32, "seed": 3}
    train = ImageSet(real.images)
    data_like = SimpleNamespace(train=train, held_out=ImageSet(real.images[:4]), spec=data.spec)
    ours = values(metric(plugins, data, "swd", **params), data_like, fake)
    expected = _numpy_swd(real.images.double().numpy(), fake.images.double().numpy(), [32, 16], 16, 7, 2, 32, 3)
    assert ours == pytest.approx(expected, rel=1e-6)  # float32 8-bit levels on one side, float64 on the other
    assert 10 < ours["swd"] < 1e4  # reported x 1e3 (normalized descriptors are O(1) apart)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_equals_scikit_image_with_the_papers_settings(channels):
    """Wang et al. 2004: Gaussian weights, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population covariances."""
    from skimage import data as skdata
    from skimage.metrics import structural_similarity

    camera = torch.from_numpy(skdata.camera()[::8, ::8].astype(np.float64) / 127.5 - 1)[None, None]  # 64x64, a real photograph
    generator = torch.Generator().manual_seed(0)
    x = camera.expand(3, channels, 64, 64).clone()
    y = (0.6 * x + 0.1 + 0.15 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(-1, 1)
    y[1] = y[1] * 0.2 - 0.5  # dark and flat: the stabilizing constants decide
    x[2] = -1 + 0.02 * torch.rand(x[2].shape, generator=generator, dtype=torch.float64)  # both nearly black: means
    y[2] = -1 + 0.02 * torch.rand(y[2].shape, generator=generator, dtype=torch.float64)  # near 0, where K1 decides
    ours = ssim(x, y).double().numpy()
    for i in range(3):
        a, b = ((x[i].numpy() + 1) / 2).transpose(1, 2, 0), ((y[i].numpy() + 1) / 2).transpose(1, 2, 0)
        reference = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                                          K1=0.01, K2=0.03, channel_axis=2)
        assert ours[i] == pytest.approx(reference, abs=1e-4), i  # ours runs in float32



def _ssim_by_hand(a: np.ndarray, b: np.ndarray, size: int, sigma: float = 1.5) -> float:
    """SSIM of two gray images in [0, 1], window by window: a ``size``-tap Gaussian window over every valid position."""
    taps = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()
    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for r in range(a.shape[0] - size + 1):
        for c in range(a.shape[1] - size + 1):
            pa, pb = a[r : r + size, c : c + size], b[r : r + size, c : c + size]
            mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
            var_a, var_b = (window * (pa - mu_a) ** 2).sum(), (window * (pb - mu_b) ** 2).sum()
            cov = (window * (pa - mu_a) * (pb - mu_b)).sum()
            scores.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(scores))


def _assert_ssim_by_hand(step: int, shape: tuple[int, int], size: int) -> None:
    """``ssim`` of a ``shape`` crop of the camera photograph (every ``step``-th pixel) and a distorted copy, against
    :func:`_ssim_by_hand` with a ``size``-tap window."""
    from skimage import data as skdata

    camera = skdata.camera()[::step, ::step][: shape[0], : shape[1]].astype(np.float64) / 255
    other = np.clip(0.7 * camera + 0.1 + 0.1 * np.random.default_rng(0).standard_normal(camera.shape), 0, 1)
    x, y = (torch.from_numpy(v * 2 - 1)[None, None] for v in (camera, other))
    assert float(ssim(x, y)[0]) == pytest.approx(_ssim_by_hand(camera, other, size), abs=1e-5)


@pytest.mark.parametrize("side, size", [(2, 1), (8, 7), (9, 9), (10, 9), (12, 11)])
def test_ssim_window_shrinks_to_the_largest_odd_size_that_fits(side, size):
    """Images smaller than the 11-pixel window (the audit matches at 8 px and up): the window becomes the largest odd size
    that fits, here checked against SSIM computed window by window."""
    _assert_ssim_by_hand(16, (side, side), size)


@pytest.mark.parametrize("shape, size", [((40, 64), 11), ((9, 40), 9), ((40, 9), 9)])
def test_ssim_of_images_that_are_not_square(shape, size):
    """``ssim`` is public: rows and columns are blurred with their own lengths, and the window fits the shorter side."""
    _assert_ssim_by_hand(8, shape, size)


def test_ssim_and_ms_ssim_of_single_pixels_are_the_luminance_term():
    """The smallest images: a 1-tap window, no variance (the contrast-structure term is c2 / c2 = 1) and one scale."""
    x = torch.tensor([-0.5, 0.2, 1.0, -1.0]).view(4, 1, 1, 1)
    y = torch.tensor([0.5, 0.2, 0.0, -0.96]).view(4, 1, 1, 1)
    mx, my, c1 = (x.flatten().double() + 1) / 2, (y.flatten().double() + 1) / 2, 0.01**2
    luminance = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    assert ms_ssim_scales(1, 1) == 1
    for score in (ssim(x, y), ms_ssim(x, y)):
        assert score.double().numpy() == pytest.approx(luminance.numpy(), abs=1e-6)


def _skimage_cs(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM's contrast-structure term from scikit-image: a huge K1 makes the luminance factor 1."""
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                                 K1=1e6, K2=0.03, channel_axis=2)


@pytest.mark.parametrize("step, rows, scales", [(16, None, 2), (8, None, 3), (4, None, 4), (8, 40, 2)])
def test_ms_ssim_equals_its_definition_on_scikit_image_ssim(step, rows, scales):
    """Wang et al. 2003, eq. 7: cs at the finer scales, SSIM at the coarsest, 2x2 mean pooling, the paper's exponents
    renormalized over the scales used (2, 3 and 4 at 32, 64 and 128 px; 40x64 images: the shorter side decides)."""
    from skimage import data as skdata
    from skimage.metrics import structural_similarity

    assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the paper's exponents, fine to coarse
    astronaut = skdata.astronaut()[::step, ::step][:rows].astype(np.float64)  # 512 / step pixels a side, RGB
    side = astronaut.shape[0]
    x = torch.from_numpy(astronaut / 127.5 - 1).permute(2, 0, 1)[None]
    y = (x * 0.7 + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(-1, 1)
    ours = float(ms_ssim(x, y)[0])
    a, b = ((x[0].numpy() + 1) / 2).transpose(1, 2, 0), ((y[0].numpy() + 1) / 2).transpose(1, 2, 0)
    assert ms_ssim_scales(side) == scales
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    factors = []
    for scale in range(scales):
        if scale == scales - 1:
            factors.append(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                 data_range=1.0, K1=0.01, K2=0.03, channel_axis=2))
        else:
            factors.append(_skimage_cs(a, b))
            a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).mean(axis=(1, 3))
            b = b.reshape(b.shape[0] // 2, 2, b.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    assert ours == pytest.approx(float(np.prod(np.clip(factors, 0, None) ** weights)), abs=1e-5)


def _constant_images(offsets, channels: int) -> ImageSet:
    """Flat 32x32 images at 8-bit grey levels 20 + offset: in pixel space, points on a line (distances scale by sqrt(D))."""
    levels = torch.tensor([20.0 + o for o in offsets])
    return ImageSet((levels / 127.5 - 1).view(-1, 1, 1, 1).expand(-1, channels, 32, 32).contiguous())


# Real points 0, 10, 20, 30, 100; synthetic 1, 29, 200, 210, 220 (k = 1). Real radii: 10, 10, 10, 10, 70;
# synthetic radii: 28, 28, 10, 10, 10. Two synthetic points lie in real balls, four real points in synthetic ones.
REAL_POINTS, FAKE_POINTS = (0, 10, 20, 30, 100), (1, 29, 200, 210, 220)


def test_prdc_metric_on_asymmetric_sets_with_known_answers(plugins, data):
    real, fake = _constant_images(REAL_POINTS, data.spec.channels), _constant_images(FAKE_POINTS, data.spec.channels)
    data_like = SimpleNamespace(train=real, held_out=real, spec=data.spec)
    result = values(metric(plugins, data, "prdc", embedding="pixels", nearest_k=1), data_like, fake)
    assert result == {"precision_pixels": pytest.approx(2 / 5), "recall_pixels": pytest.approx(4 / 5),
                      "density_pixels": pytest.approx(4 / 5),  # 1 in the balls of 0 and 10, 29 in those of 20 and 30
                      "coverage_pixels": pytest.approx(4 / 5)}  # every real ball but 100's holds a synthetic point

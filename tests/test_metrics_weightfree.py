"""The weight-free metrics: SWD, MS-SSIM diversity, PRDC, and FRD's optional registration."""

from __future__ import annotations

import pytest
import torch

from helpers import embedded_data, metric, noisy, values
from raresynth import ConfigError, ImageSet
from raresynth.evaluation.features import CACHE_ENV
from raresynth.evaluation.similarity import ms_ssim, ms_ssim_scales, ssim
from raresynth.plugins.weightfree import frd_available
from raresynth.plugins.weightfree.prdc import prdc
from raresynth.plugins.weightfree.swd import laplacian_pyramid, pyr_up, pyramid_resolutions

SIGMAS = (0.0, 0.1, 0.2, 0.4)
FAST_DOMAIN = {"epochs": 3}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=[3, 1], ids=["rgb", "gray"])
def data(request, plugins):
    return embedded_data(plugins, resolution=32, channels=request.param, train_per_class=32, held_out_per_class=8, crop_size=64)


# -- SWD ---------------------------------------------------------------------


def test_swd_of_a_set_with_itself_is_zero_and_grows_with_noise(plugins, data):
    swd = metric(plugins, data, "swd")
    results = [values(swd, data, noisy(data.train, sigma)) for sigma in SIGMAS]
    assert set(results[0]) == {"swd", "swd_32", "swd_16"}  # 32 px and 16 px pyramid levels, and their mean
    assert results[0]["swd"] == pytest.approx(0.0, abs=1e-9)
    scores = [r["swd"] for r in results]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_swd_is_deterministic_for_a_seed_and_compares_sets_of_different_sizes(plugins, data):
    synthetic = noisy(ImageSet(data.train.images[:20], data.train.labels[:20]), 0.1)
    first = values(metric(plugins, data, "swd", seed=5), data, synthetic)
    assert values(metric(plugins, data, "swd", seed=5), data, synthetic) == first
    assert values(metric(plugins, data, "swd", seed=6), data, synthetic) != first


def test_laplacian_pyramid_reconstructs_the_image():
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    pyramid = laplacian_pyramid(images, 3)
    assert [level.shape[-1] for level in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, images)
    assert pyramid_resolutions(32, 16) == [32, 16] and pyramid_resolutions(8, 16) == [8]


# -- MS-SSIM -----------------------------------------------------------------


def test_ms_ssim_of_identical_images_is_one_and_drops_with_noise():
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.allclose(ms_ssim(images, images), torch.ones(4, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(ssim(images, images), torch.ones(4, dtype=torch.float32), atol=1e-5)
    assert ms_ssim_scales(16) == 1 and ms_ssim_scales(32) == 2 and ms_ssim_scales(256) == 5
    assert (ms_ssim(images, (images + 0.5 * torch.randn_like(images)).clamp(-1, 1)) < 0.9).all()


def test_ms_ssim_diversity_against_the_real_pairs_baseline(plugins, data):
    m = metric(plugins, data, "ms_ssim")
    same = values(m, data, data.train)
    assert same["ms_ssim_synthetic"] == pytest.approx(same["ms_ssim_real"]) and same["ms_ssim_gap"] == pytest.approx(0.0)
    # A collapsed generator: the same image over and over, labelled like the training set.
    collapsed = values(m, data, ImageSet(data.train.images[:1].expand_as(data.train.images).clone(), data.train.labels))
    assert collapsed["ms_ssim_synthetic"] == pytest.approx(1.0, abs=1e-4)
    assert collapsed["ms_ssim_gap"] > 0.3


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


# -- FRD ---------------------------------------------------------------------


def test_frd_is_registered_only_when_frd_score_is_installed(plugins):
    assert ("frd" in plugins.names("metric")) == frd_available()


@pytest.mark.skipif(not frd_available(), reason="frd-score is not installed (pip install 'raresynth[frd]')")
def test_frd_is_lowest_for_a_set_with_itself(plugins, data):
    if data.spec.channels == 3:
        pytest.skip("radiomics are computed on gray images: the gray variant covers it (and FRD is slow)")
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
@pytest.mark.parametrize("version", ["v1", "v0"])
def test_frd_equals_frd_scores_own_computation_and_reuses_the_real_features(plugins, data, version, monkeypatch, tmp_path):
    import contextlib
    import io

    import frd_score

    import raresynth.plugins.weightfree.frd as module

    if data.spec.channels == 3:
        pytest.skip("radiomics are computed on gray images: the gray variant covers it (and FRD is slow)")
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
    assert extracted == [16, 16, 16]  # the real set's features once, each synthetic set's once

"""The torch-fidelity metrics (fid, kid, prc, isc) with a tiny random extractor, and the offline-weights errors."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pydantic
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from helpers import embedded_data, metric, noisy, values
from raresynth import ConfigError, ImageSet, features
from raresynth.evaluation.features import KNOWN_WEIGHTS, WEIGHTS_ENV, default_cache, resolve_weights

TINY = "raresynth-test-tiny"
T = "_raresynth_test_tiny"  # value names in a non-standard extractor carry its tag


class TinyRandomExtractor(FeatureExtractorBase):
    """Two random conv layers: mean- and std-pooled features (64-d) and 10 'logits'. No download, ever."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(64, 10)
        if feature_extractor_weights_path is not None:
            from safetensors.torch import load_file

            self.load_state_dict(load_file(feature_extractor_weights_path))

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3, "torch-fidelity's contract: uint8 RGB"
        h = F.interpolate(x.float() / 127.5 - 1, size=(32, 32), mode="bilinear", align_corners=False)
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(h))))
        pool = torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)
        features = {"pool": pool, "logits": self.head(pool)}
        return tuple(features[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "pool", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "pool"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TINY, TinyRandomExtractor)


pytestmark = pytest.mark.usefixtures("isolated_features")  # conftest: fresh cache, no weights, one thread


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=32, channels=3, train_per_class=32, held_out_per_class=8, crop_size=64)


SIGMAS = (0.0, 0.1, 0.2, 0.4)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(plugins, data):
    fid = metric(plugins, data, "fid", embedding=TINY)
    scores = [values(fid, data, noisy(data.train, sigma))[f"fid{T}"] for sigma in SIGMAS]
    assert abs(scores[0]) < 1e-6
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_kid_of_a_set_with_itself_is_about_zero_and_grows_with_noise(plugins, data):
    kid = metric(plugins, data, "kid", embedding=TINY, kid_subsets=20)
    results = [values(kid, data, noisy(data.train, sigma)) for sigma in SIGMAS]
    means = [r[f"kid_mean{T}"] for r in results]
    assert set(results[0]) == {f"kid_mean{T}", f"kid_std{T}"}
    assert abs(means[0]) < 1e-3  # unbiased MMD² of two equal subsets' draws: about 0, either sign
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_kid_subset_size_fits_small_sets_and_an_explicit_one_is_checked(plugins, data):
    small = ImageSet(data.train.images[:10], data.train.labels[:10])
    assert f"kid_mean{T}" in values(metric(plugins, data, "kid", embedding=TINY, kid_subsets=5), data, small)
    with pytest.raises(ConfigError, match="kid_subset_size: 50 is more than the smaller set holds \\(10 images\\)"):
        metric(plugins, data, "kid", embedding=TINY, kid_subset_size=50).compute(data.train, data.held_out, small)


def test_prc_and_isc_through_torch_fidelity(plugins, data):
    prc = values(metric(plugins, data, "prc", embedding=TINY), data, data.train)
    assert prc == {f"prc_precision{T}": 1.0, f"prc_recall{T}": 1.0, f"prc_f_score{T}": pytest.approx(1.0)}
    isc = values(metric(plugins, data, "isc", embedding=TINY, splits=4), data, data.train)
    assert set(isc) == {f"isc_mean{T}", f"isc_std{T}"}
    assert isc[f"isc_mean{T}"] >= 1.0  # exp(KL) >= 1


def test_results_are_deterministic_and_real_features_are_cached(plugins, data):
    kid = metric(plugins, data, "kid", embedding=TINY, kid_subsets=10, seed=3)
    synthetic = noisy(data.train, 0.1)
    cache = default_cache()
    first = values(kid, data, synthetic)
    misses = cache.misses
    assert values(kid, data, synthetic) == first
    assert cache.misses == misses  # both sets' features came from the cache
    assert values(metric(plugins, data, "kid", embedding=TINY, kid_subsets=10, seed=4), data, synthetic) != first


def test_the_domain_embedding_labels_its_values(plugins, data):
    fid = metric(plugins, data, "fid", embedding="domain", domain_embedding={"epochs": 2})
    result = values(fid, data, data.train)
    assert list(result) == ["fid_domain"] and abs(result["fid_domain"]) < 1e-6
    with pytest.raises(pydantic.ValidationError, match="Inception Score needs a classifier's logits"):
        metric(plugins, data, "isc", embedding="domain")


def test_a_custom_extractor_gets_its_weights_file(plugins, data, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    weights = {k: v.contiguous() for k, v in TinyRandomExtractor(TINY, ["pool"]).state_dict().items()}
    save_file(weights, str(tmp_path / "tiny.safetensors"))
    random_init = values(metric(plugins, data, "fid", embedding=TINY), data, noisy(data.train, 0.2))
    loaded = values(metric(plugins, data, "fid", embedding=TINY, weights_path=str(tmp_path / "tiny.safetensors")), data,
                    noisy(data.train, 0.2))
    assert random_init[f"fid{T}"] != loaded[f"fid{T}"]


# -- offline weights ---------------------------------------------------------


def test_missing_inception_weights_say_which_file_its_checksum_where_to_get_and_put_it(plugins, data, tmp_path):
    with pytest.raises(ConfigError, match="never downloads") as info:
        metric(plugins, data, "fid")  # the default extractor: Inception, from a local file only
    message = str(info.value)
    known = KNOWN_WEIGHTS["inception-v3-compat"]
    assert "\n" not in message
    assert known.filename in message and f"sha256 {known.sha256}" in message
    assert known.url in message  # where to get it
    assert WEIGHTS_ENV in message and str(tmp_path / "weights") in message and "weights_path" in message  # where to put it
    assert "never downloads" in message


def test_missing_vgg_weights_for_prc(plugins, data):
    with pytest.raises(ConfigError, match=r"vgg16-397923af\.pth .*sha256 397923af[0-9a-f]{56}.*download\.pytorch\.org"):
        metric(plugins, data, "prc")


def test_weights_are_found_in_the_weights_dir_and_checked(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    fake = folder / KNOWN_WEIGHTS["inception-v3-compat"].filename
    fake.write_bytes(b"not the real weights")
    with pytest.raises(ConfigError, match="is not the expected weights-inception-2015-12-05-6726825d.pth: its sha256 is "
                                          + hashlib.sha256(b"not the real weights").hexdigest()):
        resolve_weights("inception-v3-compat", None)
    assert resolve_weights("inception-v3-compat", None, verify=False) == fake
    assert resolve_weights("inception-v3-compat", str(folder), verify=False) == fake  # weights_path may name the folder
    assert resolve_weights(TINY, None) is None  # a custom extractor without a file builds its own weights


def test_unknown_extractor_is_a_config_error(plugins, data):
    with pytest.raises(ConfigError, match="embedding: unknown 'inceptoin'"):
        metric(plugins, data, "fid", embedding="inceptoin")


def test_the_standard_inception_path_runs_offline_from_a_local_file(plugins, data, tmp_path, monkeypatch):
    """torch-fidelity's own Inception, with randomly initialized weights saved where the real file would be."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as patch:  # build the network without any weights, then save its random ones
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], verbose=False)
    (tmp_path / "weights").mkdir()
    torch.save(network.state_dict(), tmp_path / "weights" / KNOWN_WEIGHTS["inception-v3-compat"].filename)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: pytest.fail("tried to download"))
    few = ImageSet(data.train.images[::16], data.train.labels[::16])  # 4 images: Inception at 299 px is slow on a CPU
    kid = metric(plugins, data, "kid", verify_weights=False, kid_subsets=2)  # random weights do not match the real checksum
    result = {v.name: v.value for v in kid.compute(few, few, few)}
    assert list(result) == ["kid_mean", "kid_std"]  # the standard extractor: no suffix
    named = metric(plugins, data, "kid", verify_weights=False, embedding="-".join(["inception", "v3", "compat"]))
    assert named.suffix(SimpleNamespace(tag="inception")) == ""  # named explicitly (a string read from a config): no suffix either
    with pytest.raises(ConfigError, match="is not the expected"):
        metric(plugins, data, "kid")  # verify_weights (the default) refuses a file that is not the published one


# -- against independent computations ------------------------------------------------


def _extractor_features(m, data, image_set) -> np.ndarray:
    """The features the metric's extractor gives ``image_set`` (float64), as torch-fidelity would see them."""
    embedding = m.params.build_embedding(data.train, m.extractor, m.metric)
    return features(image_set, embedding).double().numpy()


def _numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al. 2017, eq. 6: |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))."""
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2 * np.trace(root))


def _numpy_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Bińkowski et al. 2018, eq. 4: the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3."""
    d = real.shape[1]
    k_rr, k_ff, k_rf = ((a @ b.T / d + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    m, n = len(real), len(fake)
    return float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) + (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
                 - 2 * k_rf.mean())


@pytest.mark.parametrize("reference", ["train", "held_out"])
def test_fid_equals_numpy_and_scipy_sqrtm_on_the_extractors_features(plugins, data, reference):
    fid = metric(plugins, data, "fid", embedding=TINY, reference=reference)
    real_set = data.train if reference == "train" else data.held_out
    synthetic = noisy(ImageSet(data.train.images[:40], data.train.labels[:40]), 0.2)
    expected = _numpy_fid(_extractor_features(fid, data, real_set), _extractor_features(fid, data, synthetic))
    assert values(fid, data, synthetic)[f"fid{T}"] == pytest.approx(expected, rel=1e-6)
    assert expected > 1e-3  # a real difference, not two zeros


def test_kid_equals_the_unbiased_mmd_computed_with_numpy(plugins, data):
    """With subsets as large as the sets, every subset is the whole set: the mean is the MMD^2 itself, the spread 0."""
    kid = metric(plugins, data, "kid", embedding=TINY, kid_subsets=3)
    synthetic = noisy(data.train, 0.3)
    result = values(kid, data, synthetic)
    expected = _numpy_kid(_extractor_features(kid, data, data.train), _extractor_features(kid, data, synthetic))
    assert result[f"kid_mean{T}"] == pytest.approx(expected, rel=1e-6)
    assert result[f"kid_std{T}"] == pytest.approx(0.0, abs=1e-12)
    assert expected > 1e-4


def _constant_images(offsets) -> ImageSet:
    """Flat 32x32 RGB images at 8-bit grey levels 20 + offset: in pixel space, points on a line (distances scale by sqrt(D))."""
    levels = torch.tensor([20.0 + o for o in offsets])
    return ImageSet((levels / 127.5 - 1).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous())


def test_prc_on_asymmetric_sets_with_known_answers(plugins, data):
    """Kynkäänniemi et al. 2019, k = 1: real points 0, 10, 20, 30, 100 (radii 10, 10, 10, 10, 70) and synthetic
    1, 29, 200, 210, 220 (radii 28, 28, 10, 10, 10). Precision: 1 and 29 lie in real balls (2/5); recall: every real
    point but 100 lies in a synthetic ball (4/5). Real and synthetic swapped would give 4/5 and 2/5."""
    real, fake = _constant_images((0, 10, 20, 30, 100)), _constant_images((1, 29, 200, 210, 220))
    result = values(metric(plugins, data, "prc", embedding="pixels", neighborhood=1),
                    SimpleNamespace(train=real, held_out=real, spec=data.spec), fake)
    f_score = 2 * (2 / 5) * (4 / 5) / (2 / 5 + 4 / 5)
    assert result == {"prc_precision_pixels": pytest.approx(2 / 5), "prc_recall_pixels": pytest.approx(4 / 5),
                      "prc_f_score_pixels": pytest.approx(f_score)}


# -- directions, sizes and defaults (gaps the mutation run found: docs/testing.md) ------------------


def test_every_value_declares_its_direction_and_question(plugins, data):
    """The report ranks by these: FID and KID lower, precision, recall, F-score and IS higher, spreads not at all."""
    synthetic = noisy(data.train, 0.2)
    declared = {}
    for name, options in (("fid", {}), ("kid", {"kid_subsets": 5}), ("prc", {}), ("isc", {"splits": 4})):
        m = metric(plugins, data, name, embedding=TINY, **options)
        declared.update({v.name: (v.ideal, v.question) for v in m.compute(data.train, data.held_out, synthetic)})
    assert declared == {
        f"fid{T}": ("lower", "fidelity"), f"kid_mean{T}": ("lower", "fidelity"), f"kid_std{T}": ("none", "fidelity"),
        f"prc_precision{T}": ("higher", "fidelity"), f"prc_recall{T}": ("higher", "diversity"),
        f"prc_f_score{T}": ("higher", "fidelity"), f"isc_mean{T}": ("higher", "fidelity"), f"isc_std{T}": ("none", "fidelity"),
    }


@pytest.mark.parametrize("name, options, fewest", [("fid", {}, 2), ("kid", {"kid_subsets": 2}, 2),
                                                   ("prc", {"neighborhood": 3}, 4), ("prc", {"neighborhood": 1}, 2)])
def test_each_metric_computes_from_the_fewest_images_it_needs_and_names_them_below(plugins, data, name, options, fewest):
    m = metric(plugins, data, name, embedding=TINY, **options)
    few = ImageSet(data.train.images[:fewest], data.train.labels[:fewest])
    assert all(np.isfinite(list(values(m, data, few).values())))
    too_few = ImageSet(data.train.images[:fewest - 1], data.train.labels[:fewest - 1])
    what = "synthetic" if name == "fid" else name
    with pytest.raises(ConfigError, match=f"^{what}: needs at least {fewest} images in each set, got {fewest - 1}$"):
        m.compute(data.train, data.held_out, too_few)


def test_fid_names_a_real_set_that_is_too_small(plugins, data):
    one = ImageSet(data.train.images[:1], data.train.labels[:1])
    with pytest.raises(ConfigError, match="^fid: needs at least 2 images in each set, got 1$"):
        metric(plugins, data, "fid", embedding=TINY, reference="held_out").compute(data.train, one, data.train)


def test_an_explicit_kid_subset_size_may_be_the_smaller_sets_size_or_less(plugins, data):
    small = ImageSet(data.train.images[:10], data.train.labels[:10])
    for size in (10, 5):
        assert f"kid_mean{T}" in values(metric(plugins, data, "kid", embedding=TINY, kid_subsets=2, kid_subset_size=size), data, small)
    with pytest.raises(ConfigError, match="kid_subset_size: 11 is more than the smaller set holds"):
        metric(plugins, data, "kid", embedding=TINY, kid_subset_size=11).compute(data.train, data.held_out, small)


def test_kid_subsets_default_to_torch_fidelitys_1000_images_on_large_sets(plugins, data, monkeypatch):
    import torch_fidelity.metric_kid as metric_kid

    seen = {}

    def record(fake, real, **kwargs):
        seen.update(kwargs, real=len(real), fake=len(fake))
        return {metric_kid.KEY_METRIC_KID_MEAN: 0.0, metric_kid.KEY_METRIC_KID_STD: 0.0}

    monkeypatch.setattr(metric_kid, "kid_features_to_metric", record)
    large = ImageSet(data.train.images.repeat(16, 1, 1, 1)[:1001])  # 1001 images: one more than the default subset
    kid = metric(plugins, data, "kid", embedding=TINY)
    kid.compute(large, data.held_out, large)
    assert (seen["kid_subset_size"], seen["real"], seen["fake"]) == (1000, 1001, 1001)


def test_defaults_are_torch_fidelitys_and_the_smallest_settings_are_allowed(plugins, data):
    from torch_fidelity.defaults import DEFAULTS

    kid, prc, isc = (metric(plugins, data, name, embedding=TINY) for name in ("kid", "prc", "isc"))
    assert (kid.params.kid_subsets, prc.params.neighborhood, isc.params.splits) == (
        DEFAULTS["kid_subsets"], DEFAULTS["prc_neighborhood"], DEFAULTS["isc_splits"])
    smallest = [("kid", {"kid_subsets": 1, "kid_subset_size": 2}), ("prc", {"neighborhood": 1}), ("isc", {"splits": 1})]
    for name, options in smallest:
        assert metric(plugins, data, name, embedding=TINY, **options).params.model_dump(include=set(options)) == options
    for name, options in [("kid", {"kid_subsets": 0}), ("kid", {"kid_subset_size": 1}), ("prc", {"neighborhood": 0}),
                          ("isc", {"splits": 0})]:
        with pytest.raises(pydantic.ValidationError, match=f"{next(iter(options))}\n  Input should be greater than or equal"):
            metric(plugins, data, name, embedding=TINY, **options)

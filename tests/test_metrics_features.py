"""Shared metric machinery: preprocessing, the feature cache, the domain embedding, image folders, the end-of-run path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from helpers import embedded_data
from raresynth import ConfigError, DataError, ImageSet, PerImageCache
from raresynth.config import load_config
from raresynth.evaluation import domain_embedding as domain
from raresynth.evaluation import features as feats
from raresynth.evaluation.domain_embedding import DomainEmbeddingParams, domain_embedding
from raresynth.evaluation.features import CACHE_ENV, FeatureCache, PixelEmbedding, Preprocessing, content_hash
from raresynth.evaluation.imagesets import check_compatible, concat, load_image_folder, sample_image_set
from raresynth.evaluation.similarity import kth_neighbour_distances, normalized_correlation, pairs_of, pairwise_distances
from raresynth.training import load_run_generator, sample_to_folder, train

FAST_DOMAIN = DomainEmbeddingParams(epochs=2, batch_size=16)


pytestmark = pytest.mark.usefixtures("isolated_features")  # conftest: fresh cache, no weights, one thread


@pytest.fixture(autouse=True)
def _no_encoder_from_an_earlier_test(monkeypatch):
    monkeypatch.setattr(domain, "_ENCODERS", {})  # no encoder from an earlier test


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=16, channels=1, train_per_class=16, held_out_per_class=4, crop_size=32)


# -- preprocessing -------------------------------------------------------------


def test_gray_is_repeated_to_rgb_and_rgb_becomes_luma():
    gray = torch.rand(2, 1, 8, 8) * 2 - 1
    rgb = Preprocessing(channels=3).apply(gray)
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert torch.allclose(Preprocessing(channels=1).apply(rgb), Preprocessing().apply(gray), atol=1e-6)
    assert Preprocessing(channels=3).uint8(gray).dtype == torch.uint8


def test_preprocessing_quantizes_to_8_bits_then_resizes_like_the_data_pipeline():
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    out = Preprocessing(resolution=16).apply(images)
    quantized = torch.round((images + 1) * 127.5) / 127.5 - 1
    expected = torch.nn.functional.interpolate(quantized, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(out, expected.clamp(-1, 1), atol=1e-6)
    assert Preprocessing().id != Preprocessing(resolution=16).id != Preprocessing(channels=3).id


# -- the cache -----------------------------------------------------------------


def test_features_are_cached_by_content_and_stored_as_safetensors(tmp_path, data):
    cache = FeatureCache(tmp_path / "features")
    embedding = PixelEmbedding()
    first = cache.features(data.train.images, embedding)
    assert (cache.hits, cache.misses) == (0, 1)
    assert torch.equal(cache.features(data.train.images.clone(), embedding), first) and cache.hits == 1  # same content, same key
    files = list((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as handle:  # plain safetensors, with the key it was stored under
        assert handle.metadata()["key"].startswith(content_hash(data.train.images))
    fresh = FeatureCache(tmp_path / "features")  # a new process: read from disk
    assert torch.equal(fresh.features(data.train.images, embedding), first) and fresh.hits == 1
    changed = data.train.images.clone()
    changed[0, 0, 0, 0] = -changed[0, 0, 0, 0] + 0.5
    fresh.features(changed, embedding)  # a changed dataset never reuses stale features
    assert fresh.misses == 1 and len(list((tmp_path / "features").glob("*.safetensors"))) == 2


def test_cache_dir_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "")
    assert feats.cache_root() is None and feats.default_cache().directory is None


# -- the domain embedding --------------------------------------------------------


def test_domain_embedding_is_trained_on_train_only_deterministic_and_cached(tmp_path, data, monkeypatch):
    first = domain_embedding(data.train, FAST_DOMAIN, device="cpu")
    assert first.dataset_specific and first.tag == "domain"
    weights = tmp_path / "cache" / "embeddings" / f"{first.key}.safetensors"
    assert weights.is_file()
    f1 = first.embed(data.held_out.images)
    assert f1.shape == (len(data.held_out), FAST_DOMAIN.dim)
    assert torch.allclose(f1.norm(dim=1), torch.ones(len(f1)), atol=1e-5)

    monkeypatch.setattr(domain, "_ENCODERS", {})
    weights.unlink()
    retrained = domain_embedding(data.train, FAST_DOMAIN, device="cpu")  # same seed: the same encoder
    assert torch.allclose(retrained.embed(data.held_out.images), f1, atol=1e-5)

    monkeypatch.setattr(domain, "_ENCODERS", {})
    monkeypatch.setattr(domain, "train_domain_encoder", lambda *args: pytest.fail("should have loaded the cached weights"))
    loaded = domain_embedding(data.train, FAST_DOMAIN, device="cpu")
    assert torch.allclose(loaded.embed(data.held_out.images), f1, atol=1e-5)

    other_train = ImageSet(data.train.images[1:], data.train.labels[1:])
    assert domain.domain_embedding_key(other_train, FAST_DOMAIN) != first.key  # per dataset
    assert domain.domain_embedding_key(data.train, FAST_DOMAIN.model_copy(update={"seed": 1})) != first.key


def test_domain_embedding_modes(data):
    unlabelled = ImageSet(data.train.images)
    assert domain_embedding(unlabelled, FAST_DOMAIN, device="cpu").embed(data.held_out.images).shape[0] == len(data.held_out)
    with pytest.raises(ConfigError, match="'supervised' needs a labelled training set"):
        domain_embedding(unlabelled, FAST_DOMAIN.model_copy(update={"mode": "supervised"}), device="cpu")


def test_metric_options_are_validated_with_the_run_config(toy_config, registry):
    metrics = [{"name": "prdc", "domain_embedding": {"epoch": 3}}, {"name": "memorization", "percentile": 120}]
    with pytest.raises(ConfigError, match="metrics.0.domain_embedding.epoch: unknown field") as info:
        load_config(toy_config(metrics=metrics), registry=registry)
    message = str(info.value)
    assert "metrics.0.domain_embedding.epoch: unknown field" in message
    assert "metrics.1.percentile" in message


def test_even_windows_are_refused_when_the_config_is_loaded(toy_config, registry):
    """Before any training: an SWD neighbourhood or an MS-SSIM window needs a centre pixel."""
    metrics = [{"name": "swd", "neighbourhood": 8}, {"name": "ms_ssim", "window": 10}]
    with pytest.raises(ConfigError) as info:
        load_config(toy_config(metrics=metrics), registry=registry)
    assert str(info.value).splitlines() == ["config: metrics.0.neighbourhood: must be odd (got 8)",
                                            "config: metrics.1.window: must be odd (got 10)"]


# -- small helpers ---------------------------------------------------------------


def test_neighbours_and_pairs():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert kth_neighbour_distances(points, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert kth_neighbour_distances(points, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    assert kth_neighbour_distances(points, 3).tolist() == [7.0, 6.0, 4.0, 7.0]  # k = n - 1: the farthest other point
    for k in (4, 5):  # k others needed: refused at n = k and beyond
        with pytest.raises(ConfigError, match=f"k-nearest neighbours: 4 samples, need more than k={k}"):
            kth_neighbour_distances(points, k)
    assert pairwise_distances(torch.zeros(0, 3), points.expand(4, 3)).shape == (0, 4)  # an empty set: no rows
    flat, other = torch.full((1, 1, 4, 4), 0.3), torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert normalized_correlation(flat, other).tolist() == [[0.0, 0.0]]  # a flat image correlates with nothing (not NaN)
    brighter = other[:1] * 0.5 + 0.4  # Pearson correlation ignores gain and offset
    assert float(normalized_correlation(other[:1], brighter)[0, 0]) == pytest.approx(1.0, abs=1e-5)
    faint = 1e-4 * other  # a faint image correlates with itself fully: the norm's guard only stops a division by 0
    assert normalized_correlation(faint, other)[[0, 1], [0, 1]] == pytest.approx(torch.ones(2, dtype=torch.float64), abs=1e-5)
    generator = torch.Generator().manual_seed(0)
    assert pairs_of(4, 100, generator).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert pairs_of(4, 6, generator).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]  # exactly max_pairs: all
    sampled = pairs_of(50, 10, generator)
    assert sampled.shape == (10, 2) and (sampled[:, 0] != sampled[:, 1]).all()
    sampled = pairs_of(5, 9, generator)  # fewer than the 10 pairs: sampled
    assert sampled.shape == (9, 2)
    many = torch.cat([pairs_of(5, 9, generator) for _ in range(1200)])  # 10800 draws, each unordered pair 1080 times on average
    assert (many[:, 0] != many[:, 1]).all() and ((0 <= many) & (many < 5)).all()
    counts = torch.bincount(many.min(dim=1).values * 5 + many.max(dim=1).values, minlength=25).view(5, 5)
    pair_counts = counts[torch.triu_indices(5, 5, offset=1).unbind()]
    assert (pair_counts > 900).all() and (pair_counts < 1260).all(), pair_counts  # uniform over the 10 pairs (about 5 sd)


def test_check_compatible_names_the_set():
    a = ImageSet(torch.zeros(2, 1, 8, 8), name="train")
    check_compatible(a, synthetic=ImageSet(torch.zeros(3, 1, 8, 8)))
    with pytest.raises(ConfigError, match="the held_out image set is empty"):
        check_compatible(a, held_out=ImageSet(torch.zeros(0, 1, 8, 8)))
    with pytest.raises(ConfigError, match="concat: some image sets have labels and some do not"):
        concat([ImageSet(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.int64)), ImageSet(torch.zeros(1, 1, 8, 8))])


# -- image folders and the end-of-run path -----------------------------------------


def test_a_run_reports_metrics_and_its_sampled_folder_loads_back(toy_config, registry, tmp_path):
    metrics = [
        {"name": "swd"},
        {"name": "ms_ssim"},
        {"name": "prdc", "domain_embedding": {"epochs": 2}},
        {"name": "memorization", "domain_embedding": {"epochs": 2}, "artifacts_dir": str(tmp_path / "audit")},
        {"name": "utility", "steps": 5, "seeds": 1, "resolution": 16},
    ]
    run = train(load_config(toy_config(metrics=metrics), registry=registry), registry=registry, progress_bar=False)
    results = json.loads((run.run_dir / "metrics.json").read_text())
    # 16 px images: one pyramid level, so the average is that level's value; a toy generator is no copy of the data
    assert results["swd"]["value"] == pytest.approx(results["swd_16"]["value"])
    assert (results["swd"]["higher_is_better"], results["swd"]["ideal"], results["swd"]["metric"]) == (False, "lower", "swd")
    assert results["swd"]["value"] > 1.0
    assert results["coverage_domain"]["higher_is_better"] is True and results["coverage_domain"]["metric"] == "prdc"
    assert results["copy_rate_pixel"]["higher_is_better"] is False and results["meehan_z_domain"]["metric"] == "memorization"
    assert results["utility_tstr_accuracy"]["metric"] == "utility" and "ms_ssim_gap" in results
    assert (tmp_path / "audit" / "memorization_pixel_pairs.png").is_file()

    out = tmp_path / "samples"
    sample_to_folder(run.run_dir, out, n=6, seed=10, registry=registry)
    folder = load_image_folder(out, resolution=16, channels=1, class_names=run.spec.class_names)
    assert folder.labels.tolist() == [0, 1, 0, 1, 0, 1]  # from manifest.json
    generator = load_run_generator(run.run_dir, None, registry)[0]
    direct = sample_image_set(generator, 6, torch.tensor([0, 1, 0, 1, 0, 1]), first_seed=10)
    assert torch.allclose(folder.images, Preprocessing().apply(direct.images), atol=1e-6)  # a PNG holds the 8-bit image
    cache = FeatureCache(None)
    assert torch.equal(cache.features(folder.images, PixelEmbedding()), cache.features(direct.images, PixelEmbedding()))
    with pytest.raises(DataError, match="is not class 0 of"):
        load_image_folder(out, resolution=16, channels=1, class_names=("a", "b"))


def test_load_image_folder_labels_from_class_subfolders_or_one_label(tmp_path):
    from PIL import Image

    for name, value in (("benign", 40), ("malignant", 200)):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (32, 32), value + i).save(tmp_path / "set" / name / f"{i}.png")
    loaded = load_image_folder(tmp_path / "set", resolution=16, channels=3, class_names=("benign", "malignant"))
    assert loaded.images.shape == (4, 3, 16, 16) and loaded.labels.tolist() == [0, 0, 1, 1]
    assert loaded.images[0, 0, 0, 0].item() == pytest.approx(40 / 255 * 2 - 1, abs=1e-6)
    with pytest.raises(ConfigError, match="pass class_names"):
        load_image_folder(tmp_path / "set", resolution=16, channels=1)
    one = load_image_folder(tmp_path / "set" / "benign", resolution=16, channels=1, label=1)
    assert one.labels.tolist() == [1, 1]
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(tmp_path, resolution=16, channels=1)


# -- PerImageCache ---------------------------------------------------------------------------------


def _offsets(images: torch.Tensor) -> list[float]:
    return [float(image.flatten()[0]) for image in images]


def test_per_image_rows_are_computed_once_per_image_and_tag():
    calls = []

    def compute(images):
        calls.append(len(images))
        return _offsets(images)

    cache = PerImageCache(budget=100)
    images = torch.arange(6.0).reshape(6, 1, 1, 1)
    assert cache.rows(images, compute) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    repeated = images[torch.tensor([5, 5, 0, 1, 5])]  # copies drawn with replacement
    assert cache.rows(repeated, compute) == [5.0, 5.0, 0.0, 1.0, 5.0]
    assert calls == [6] and cache.computed == 6  # all from memory
    new = torch.tensor([9.0, 9.0, 2.0]).reshape(3, 1, 1, 1)
    assert cache.rows(new, compute) == [9.0, 9.0, 2.0] and calls == [6, 1]  # one new image, computed once
    assert cache.rows(images[:2], lambda x: [-v for v in _offsets(x)], tag="other") == [-0.0, -1.0]  # another tag: computed


def test_per_image_rows_stay_within_the_budget_least_recently_used_leaving_first():
    cache = PerImageCache(budget=30, size=len)  # rows of 10 numbers: 3 fit
    images = torch.arange(5.0).reshape(5, 1, 1, 1)

    def compute(x):
        return [[v] * 10 for v in _offsets(x)]

    cache.rows(images[:3], compute)
    cache.rows(images[:1], compute)  # image 0 used again: image 1 is now the least recent
    cache.rows(images[3:4], compute)  # a fourth row: image 1 leaves
    assert len(cache) == 3 and cache.computed == 4
    cache.rows(images[torch.tensor([0, 2, 3])], compute)
    assert cache.computed == 4  # kept
    assert cache.rows(images[1:2], compute) == [[1.0] * 10] and cache.computed == 5  # evicted: computed again, right


def test_per_image_rows_refuse_a_compute_that_loses_rows():
    with pytest.raises(ValueError, match="compute returned 1 rows for 2 images"):
        PerImageCache(budget=10).rows(torch.zeros(2, 1, 2, 2).add(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)), lambda x: [0.0])

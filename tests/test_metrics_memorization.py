"""The memorization audit flags planted copies and calibrates against held-out images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import embedded_data
from raresynth import ConfigError, ImageSet
from raresynth.evaluation.features import CACHE_ENV
from raresynth.plugins.memorization.audit import mann_whitney_z

PLANTED = [0, 7, 19, 33, 50]  # training images copied into the synthetic set
FAST_DOMAIN = {"epochs": 3}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=32, channels=3, train_per_class=32, held_out_per_class=20, crop_size=64)


def audit(plugins, data, **params):
    cls = plugins.metric("memorization")
    return cls(cls.Params.model_validate({"domain_embedding": FAST_DOMAIN, **params}), data.spec)


def with_planted_copies(data) -> ImageSet:
    """The held-out images (honest new images) with 5 training images inserted at the end."""
    held_out = data.held_out
    return ImageSet(torch.cat([held_out.images, data.train.images[PLANTED]]), torch.cat([held_out.labels, data.train.labels[PLANTED]]))


@pytest.mark.parametrize("pixel_similarity", ["ncc", "ssim"])
def test_planted_training_images_are_flagged_as_copies(plugins, data, pixel_similarity):
    metric = audit(plugins, data, pixel_similarity=pixel_similarity)
    synthetic = with_planted_copies(data)
    planted_at = list(range(len(data.held_out), len(synthetic)))
    for space in metric.audits(data.train, data.held_out, synthetic):
        flagged = set(torch.nonzero(space.copies).flatten().tolist())
        assert set(planted_at) <= flagged, space.space
        assert space.nearest_train[planted_at].tolist() == PLANTED  # and they point at the right training images
        assert not space.authentic[planted_at].any()  # Alaa et al.: a copy is never authentic
    values = {v.name: v.value for v in metric.compute(data.train, data.held_out, synthetic)}
    for space in ("pixel", "domain"):
        assert values[f"copy_rate_{space}"] * len(synthetic) >= len(PLANTED)
        assert values[f"meehan_z_{space}"] < 0  # closer to the training set than held-out data is


def test_held_out_images_report_a_copy_rate_near_the_percentile(plugins, data):
    for percentile in (5.0, 20.0):
        values = {v.name: v.value for v in audit(plugins, data, percentile=percentile).compute(data.train, data.held_out, data.held_out)}
        for space in ("pixel", "domain"):
            assert values[f"copy_rate_{space}"] == pytest.approx(percentile / 100, abs=0.05)
            assert values[f"meehan_z_{space}"] == pytest.approx(0.0)  # the same distances on both sides
            assert values[f"authenticity_{space}"] == values[f"authenticity_held_out_{space}"]


def test_closest_pairs_are_saved_as_a_png_grid_and_json(plugins, data, tmp_path):
    metric = audit(plugins, data, artifacts_dir=str(tmp_path / "audit"), grid_pairs=8)
    metric.compute(data.train, data.held_out, with_planted_copies(data))
    for space in ("pixel", "domain"):
        grid = np.asarray(Image.open(tmp_path / "audit" / f"memorization_{space}_pairs.png"))
        assert grid.shape == (2 * 32, 8 * 32, 3)  # 8 pairs, 4 (synthetic, training) pairs per row
        assert np.array_equal(grid[:32, :32], grid[:32, 32:64])  # the closest pair is a planted copy: identical tiles
        summary = json.loads((tmp_path / "audit" / f"memorization_{space}_pairs.json").read_text())
        assert len(summary["pairs"]) == 8 and summary["pairs"][0]["distance"] <= summary["pairs"][-1]["distance"]
        assert {pair["train"] for pair in summary["pairs"][:5]} == set(PLANTED)


def test_pixel_space_only_and_meehan_cells(plugins, data):
    values = {v.name: v.value for v in audit(plugins, data, embedding=None, meehan_cells=2).compute(
        data.train, data.held_out, with_planted_copies(data))}
    assert set(values) == {"copy_rate_pixel", "meehan_z_pixel", "authenticity_pixel", "authenticity_held_out_pixel"}
    assert values["meehan_z_pixel"] < 0
    with pytest.raises(ConfigError, match="meehan_cells: 500 cells for 64 training images"):
        audit(plugins, data, embedding=None, meehan_cells=500).compute(data.train, data.held_out, data.held_out)


def test_the_audit_is_deterministic(plugins, data):
    synthetic = with_planted_copies(data)
    first = audit(plugins, data, seed=2).compute(data.train, data.held_out, synthetic)
    assert audit(plugins, data, seed=2).compute(data.train, data.held_out, synthetic) == first


def test_meehan_z_sign():
    near, far = np.linspace(0.0, 1.0, 50), np.linspace(0.5, 1.5, 50)
    assert mann_whitney_z(near, far) < -3  # synthetic closer than held-out: data-copying
    assert mann_whitney_z(far, near) > 3  # farther: underfitting
    assert mann_whitney_z(near, near) == pytest.approx(0.0)

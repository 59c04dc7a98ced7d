"""The memorization audit flags planted copies and calibrates against held-out images."""

from __future__ import annotations

import json
import math

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from scipy.stats import mannwhitneyu

from helpers import assert_setting_bounds, embedded_data
from raresynth import ConfigError, ImageSet
from raresynth.cli import main
from raresynth.config import load_config
from raresynth.data import load_dataset
from raresynth.data.images import to_uint8
from raresynth.plugins.memorization.audit import (
    audit_space,
    copy_threshold,
    kmeans_cells,
    mann_whitney_z,
    measured_fpr,
    meehan_ct,
    pixel_distances,
)
from raresynth.training import train

PLANTED = [0, 7, 19, 33, 50]  # training images copied into the synthetic set
FAST_DOMAIN = {"epochs": 3}


pytestmark = pytest.mark.usefixtures("isolated_features")  # conftest: fresh cache, no weights, one thread


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
    held_out = len(data.held_out)  # 40
    for percentile in (5.0, 20.0):
        values = {v.name: v.value for v in audit(plugins, data, percentile=percentile).compute(data.train, data.held_out, data.held_out)}
        k = math.floor(percentile / 100 * (held_out + 1))  # the threshold is the k-th smallest held-out distance
        for space in ("pixel", "domain"):
            # the held-out set against its own threshold: exactly the k - 1 distances strictly below the k-th (2 and 8 of 41 here)
            assert values[f"copy_rate_{space}"] == pytest.approx((k - 1) / held_out)
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
    assert set(values) == {"copy_rate_pixel", "copy_threshold_fpr_pixel", "meehan_z_pixel", "authenticity_pixel",
                           "authenticity_held_out_pixel"}
    assert values["meehan_z_pixel"] < 0
    in_embedding = {v.name: v.value for v in audit(plugins, data, meehan_cells=2).compute(data.train, data.held_out, with_planted_copies(data))}
    assert in_embedding["meehan_z_pixel"] == values["meehan_z_pixel"] and in_embedding["meehan_z_domain"] < 0  # cells in the embedding too
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


# -- near-copies: the self-test ------------------------------------------------------


def near_copies(images: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    """Training images exactly, flipped, shifted, noised and intensity-scaled: what a memorizing generator emits."""
    generator = torch.Generator().manual_seed(seed)
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    side = images.shape[-1]
    return {
        "exact": images,
        "hflip": images.flip(-1),
        "vflip": images.flip(-2),
        "shifted": padded[..., 0:side, 3 : 3 + side],  # 2 pixels down, 1 left, the border repeated
        "noised": (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(-1, 1),
        "scaled": images * 0.8 + 0.1,
        "cropped": F.interpolate(images[..., 2:-2, 2:-2], size=(side, side), mode="bilinear", align_corners=False),
    }


@pytest.fixture(scope="module")
def wide(plugins):
    """More held-out images: half calibrate the audit, half are the honest synthetic images."""
    return embedded_data(plugins, resolution=32, channels=3, train_per_class=32, held_out_per_class=30, crop_size=64)


def test_near_copies_are_flagged_and_honest_images_are_not(plugins, wide):
    order = torch.randperm(len(wide.held_out), generator=torch.Generator().manual_seed(0))
    calibration = ImageSet(wide.held_out.images[order[:30]])
    honest = wide.held_out.images[order[30:]]
    copied = torch.arange(0, len(wide.train), 4)  # 16 training images, both classes
    planted = near_copies(wide.train.images[copied])
    synthetic = ImageSet(torch.cat([honest, *planted.values()]))
    metric = audit(plugins, wide)
    pixel, domain = metric.audits(wide.train, calibration, synthetic)
    for space in (pixel, domain):
        assert float(space.copies[: len(honest)].double().mean()) <= 0.1, space.space  # honest images
        assert space.nominal_fpr == pytest.approx(1 / 31)  # k = 1 of 30 held-out images
        assert 0 < space.measured_fpr <= 0.1  # calibrated on 15 images, k = 1: about 1/16 flagged on the other half
        flags = space.copies[len(honest):].view(len(planted), len(copied))
        assert flags[:3].all(), space.space  # exact and flipped copies, in both spaces
    # Pixel space is the invariant one: nine in ten near-copies, every kind at least half.
    flags = pixel.copies[len(honest):].view(len(planted), len(copied))
    rates = {kind: float(flags[i].double().mean()) for i, kind in enumerate(planted)}
    assert float(flags.double().mean()) >= 0.9 and min(rates.values()) >= 0.5, rates
    hits = torch.nonzero(flags.flatten()).flatten()
    assert (pixel.nearest_train[len(honest):][hits] == copied.repeat(len(planted))[hits]).all()  # the right image
    assert pixel.transforms[len(honest) + len(copied)].startswith("hflip")  # and how it was changed


# -- raresynth audit -----------------------------------------------------------------


def write_pngs(images: torch.Tensor, folder, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for array, name in zip(to_uint8(images), names):
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / name)


def test_audit_command_flags_copies_in_a_folder_against_a_data_config(plugins, wide, tmp_path, capsys):
    data_section = {"format": "embedded", "resolution": 32, "channels": 3,
                    "format_options": {"train_per_class": 32, "held_out_per_class": 30, "crop_size": 64}}
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": data_section}))
    honest = wide.held_out.images[:12]
    copies = near_copies(wide.train.images[[3, 40]])
    folder = tmp_path / "made-elsewhere"
    write_pngs(honest, folder, [f"honest-{i}.png" for i in range(12)])
    write_pngs(torch.cat([copies["exact"], copies["hflip"]]), folder, ["copy-a.png", "copy-b.png", "flipped-a.png", "flipped-b.png"])
    out = tmp_path / "audit"
    assert main(["audit", str(folder), "--against", str(config), "--out", str(out), "embedding=null"]) == 0
    summary = json.loads((out / "audit.json").read_text())
    (pixel,) = summary["spaces"]
    flagged = {f["file"]: f for f in pixel["flagged"]}
    assert {"copy-a.png", "copy-b.png", "flipped-a.png", "flipped-b.png"} <= set(flagged)
    assert flagged["copy-b.png"]["train_index"] == 40 and flagged["flipped-a.png"]["transform"].startswith("hflip")
    assert pixel["copy_rate"] == len(flagged) / 16 and summary["train"] == 64 and summary["held_out"] == 60
    assert pixel["copy_threshold_fpr_nominal"] == pytest.approx(3 / 61)  # k = floor(0.05 * 61) = 3 of 60 held-out images
    assert Image.open(out / pixel["grid"]).size == (8 * 32, 4 * 32)  # all 16 pairs, 4 a row
    printed = capsys.readouterr().out
    assert "copy-a.png" in printed and f"{pixel['copy_rate']:.3f}" in printed


def test_audit_command_against_a_run_directory(toy_config, registry, tmp_path, capsys):
    run = train(load_config(toy_config(), registry=registry), registry=registry, progress_bar=False)
    data = load_dataset(load_config(run.run_dir / "config.yaml", registry=registry).data, registry)
    folder = tmp_path / "samples"
    write_pngs(torch.cat([data.train.images[:2], data.held_out.images[:2]]), folder, ["t0.png", "t1.png", "h0.png", "h1.png"])
    assert main(["audit", str(folder), "--against", str(run.run_dir), "embedding=null"]) == 0
    summary = json.loads((tmp_path / "samples-audit" / "audit.json").read_text())
    assert {"t0.png", "t1.png"} <= {f["file"] for f in summary["spaces"][0]["flagged"]}
    assert summary["train"] == len(data.train) and summary["held_out"] == len(data.held_out)
    (folder / "h1.png").unlink()  # audited again into the same folder: the report replaced
    assert main(["audit", str(folder), "--against", str(run.run_dir), "embedding=null"]) == 0
    assert json.loads((tmp_path / "samples-audit" / "audit.json").read_text())["synthetic"] == 3
    assert main(["audit", str(folder), "--against", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run directory (no config.yaml)" in capsys.readouterr().err


# -- the audit on hand-built distances ------------------------------------------------------

INF = float("inf")


def test_the_audit_on_hand_built_distance_matrices():
    """Threshold, copies, authenticity and Z worked out by hand for 3 training, 4 held-out and 4 synthetic images."""
    train_to_train = torch.tensor([[INF, 1.0, 4.0], [1.0, INF, 2.0], [4.0, 2.0, INF]], dtype=torch.float64)  # nearest others: 1, 1, 2
    held_out_to_train = torch.tensor([[0.5, 9, 9], [9, 3, 9], [9, 9, 5], [7, 9, 9]], dtype=torch.float64)  # 0.5, 3, 5, 7
    synthetic_to_train = torch.tensor([[0.2, 9, 9], [9, 2.5, 9], [9, 9, 3], [8, 9, 9]], dtype=torch.float64)
    space = audit_space("hand", synthetic_to_train, held_out_to_train, train_to_train, percentile=50.0)
    # k = floor(0.5 * (4 + 1)) = 2: the 2nd smallest held-out distance; its nominal rate k / (H + 1)
    assert space.threshold == 3.0 and space.nominal_fpr == pytest.approx(2 / 5)
    assert space.nearest_train.tolist() == [0, 1, 2, 0]
    assert space.train_distance.tolist() == [1.0, 1.0, 2.0]
    assert space.copies.tolist() == [True, True, False, False]  # strictly below the threshold: 3 is not a copy
    # Alaa et al.: authentic when farther than the nearest training image's own nearest neighbour (1, 1, 2, 1)
    assert space.authentic.tolist() == [False, True, True, True]
    assert space.held_out_authentic.tolist() == [False, True, True, True]
    assert space.copy_rate == 0.5 and space.authenticity == 0.75
    # Mann-Whitney U: pairs with a synthetic distance above a held-out one (ties 1/2): 0 + 1 + 1.5 + 4
    assert space.meehan_z == pytest.approx((6.5 - 8) / math.sqrt(4 * 4 * 9 / 12))


def test_copy_threshold_percentiles_by_the_rank_rule():
    held_out = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0])  # H = 9
    assert copy_threshold(held_out, 10.0) == (1.0, 1 / 10)  # k = floor(0.1 * 10) = 1
    assert copy_threshold(held_out, 30.0) == (3.0, 3 / 10)
    assert copy_threshold(held_out, 1.0) == (1.0, 1 / 10)  # k is at least 1: the rate says it is above the percentile
    # k = floor(0.5 * 99) = 49 of H = 98 (49.5 rounds down; a percentile read as a share of 99 would give 50)
    assert copy_threshold(torch.arange(98.0, 0.0, -1.0), 50.0) == (49.0, 49 / 99)


def _hand_u(synthetic: np.ndarray, held_out: np.ndarray) -> float:
    """U by counting: pairs with the synthetic distance above the held-out one, ties counted 1/2."""
    diff = synthetic[:, None] - held_out[None, :]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum())


def test_meehan_z_is_the_normalized_mann_whitney_u_counted_by_hand():
    rng = np.random.default_rng(0)
    synthetic = np.round(rng.normal(0.8, 0.3, 37), 1)  # rounded: ties on both sides
    held_out = np.round(rng.normal(1.0, 0.3, 23), 1)
    u = _hand_u(synthetic, held_out)
    assert u == mannwhitneyu(synthetic, held_out).statistic  # the same U as scipy.stats
    m, n = len(synthetic), len(held_out)
    assert mann_whitney_z(synthetic, held_out) == pytest.approx((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12), rel=1e-12)
    assert mann_whitney_z(synthetic, held_out) < 0  # closer than held-out data: the data-copying side
    odd = synthetic[:36]  # m + n odd as well as even: the variance's m + n + 1
    u, m = _hand_u(odd, held_out), len(odd)
    assert mann_whitney_z(odd, held_out) == pytest.approx((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12), rel=1e-12)


def test_meehan_ct_weights_each_cells_z_by_its_held_out_share_and_skips_sparse_cells():
    """C_T (Meehan et al. 2020, eq. 4) by hand: cells 0 and 1 hold enough images; cell 2 only 2 synthetic, cell 3 only 2
    held-out ones."""
    rng = np.random.default_rng(4)
    synthetic, held_out = rng.normal(0.9, 0.3, 26), rng.normal(1.0, 0.3, 32)
    synthetic_cells = np.array([0] * 12 + [1] * 8 + [2] * 2 + [3] * 4)
    held_out_cells = np.array([0] * 10 + [1] * 15 + [2] * 5 + [3] * 2)
    z = [mann_whitney_z(synthetic[synthetic_cells == c], held_out[held_out_cells == c]) for c in (0, 1)]
    shares = [10 / 32, 15 / 32]
    expected = (shares[0] * z[0] + shares[1] * z[1]) / (shares[0] + shares[1])
    assert meehan_ct(synthetic, held_out, synthetic_cells, held_out_cells, cells=4) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError, match="meehan_cells: no cell holds 13 synthetic and 13 held-out images"):
        meehan_ct(synthetic, held_out, synthetic_cells, held_out_cells, cells=4, min_per_cell=13)
    # a cell with exactly min_per_cell images on either side counts: cell 1's 8 synthetic at 8, cell 0's 10 held-out at 10
    assert meehan_ct(synthetic, held_out, synthetic_cells, held_out_cells, cells=4, min_per_cell=8) == pytest.approx(expected, rel=1e-12)
    only_cell_0 = mann_whitney_z(synthetic[synthetic_cells == 0], held_out[held_out_cells == 0])
    assert meehan_ct(synthetic, held_out, synthetic_cells, held_out_cells, cells=4, min_per_cell=10) == pytest.approx(only_cell_0, rel=1e-12)
    # by default a cell needs 3 synthetic and 3 held-out images (docs/metrics.md): one of exactly 3 and 3 counts
    three_s, three_h = np.array([0] * 3 + [1] * 23), np.array([0] * 3 + [1] * 29)
    z3 = [mann_whitney_z(synthetic[three_s == c], held_out[three_h == c]) for c in (0, 1)]
    assert meehan_ct(synthetic, held_out, three_s, three_h, cells=2) == pytest.approx(3 / 32 * z3[0] + 29 / 32 * z3[1], rel=1e-12)


def test_meehan_cells_may_be_as_many_as_the_training_images():
    """The error says "use at most that many": as many cells as training images is accepted, one more refused."""
    train = torch.tensor([[0.0], [10.0], [20.0]])
    (cells,) = kmeans_cells(train, [torch.tensor([[1.0], [19.0], [9.0]])], 3, 0)
    assert sorted(cells.tolist()) == [0, 1, 2]  # each training point its own centroid: every point in a cell of its own
    with pytest.raises(ConfigError, match="meehan_cells: 4 cells for 3 training images; use at most that many"):
        kmeans_cells(train, [train], 4, 0)


def test_the_audit_reports_c_t_from_two_cells_on():
    """audit_space's Z is C_T over k-means cells of the points for cells >= 2 (Z_U over all images only for 1 cell)."""
    rng = np.random.default_rng(5)
    train_v, synthetic_v, held_out_v = (torch.from_numpy(rng.normal(size=(n, 2))) for n in (30, 40, 40))
    synthetic_v[:20] += 4.0  # two clusters, so the cells differ from the whole
    held_out_v[:20] += 4.0
    train_v[:15] += 4.0
    to_train = [torch.cdist(x, train_v) for x in (synthetic_v, held_out_v)]
    train_to_train = torch.cdist(train_v, train_v).fill_diagonal_(INF)
    s, h = (d.min(dim=1).values.numpy() for d in to_train)
    for cells in (1, 2, 3):
        space = audit_space("hand", *to_train, train_to_train, 5.0, cells, (train_v, synthetic_v, held_out_v), seed=0)
        if cells == 1:
            assert space.meehan_z == pytest.approx(mann_whitney_z(s, h))
        else:
            expected = meehan_ct(s, h, *kmeans_cells(train_v, [synthetic_v, held_out_v], cells, 0), cells)
            assert space.meehan_z == pytest.approx(expected) and space.meehan_z != pytest.approx(mann_whitney_z(s, h))


def test_the_audits_defaults_are_the_documented_ones(plugins, data):
    """docs/metrics.md states these defaults; Meehan's Z_U over all images unless cells are asked for."""
    p = audit(plugins, data).params
    assert (p.percentile, p.max_shift, p.crop, p.smoothing, p.match_resolution, p.fpr_splits, p.meehan_cells, p.grid_pairs) == (
        5.0, 2, 2, 1.5, 32, 20, 1, 16)
    smallest = {"crop": 0, "fpr_splits": 1, "max_shift": 0, "match_resolution": 8, "smoothing": 0.0, "meehan_cells": 1, "grid_pairs": 1}
    at_least = "greater than or equal to"
    refused = {"crop": (-1, f"{at_least} 0"), "fpr_splits": (0, f"{at_least} 1"), "max_shift": (-1, f"{at_least} 0"),
               "match_resolution": (7, f"{at_least} 8"), "smoothing": (-0.5, f"{at_least} 0"), "meehan_cells": (0, f"{at_least} 1"),
               "grid_pairs": (0, f"{at_least} 1")}
    assert_setting_bounds(lambda **setting: audit(plugins, data, **setting), smallest, refused)
    assert_setting_bounds(lambda **setting: audit(plugins, data, **setting), {"percentile": 0.5},
                          {"percentile": (0.0, "greater than 0")})
    assert_setting_bounds(lambda **setting: audit(plugins, data, **setting), {"percentile": 99.5},
                          {"percentile": (100.0, "less than 100")})


def test_a_single_synthetic_image_is_audited(plugins, data):
    """One image is a valid set (a clinician checking one sample): its nearest training image, and whether it is a copy."""
    (space,) = audit(plugins, data, embedding=None).audits(data.train, data.held_out, ImageSet(data.train.images[7:8]))
    assert space.nearest_train.tolist() == [7] and space.copies.tolist() == [True] and space.transforms[0].startswith("none")


def _flat_images(offsets) -> ImageSet:
    """Flat 32x32 RGB images at grey levels 20 + offset: in the pixel embedding, points on a line (distances x sqrt(D))."""
    levels = torch.tensor([20.0 + o for o in offsets])
    return ImageSet((levels / 127.5 - 1).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous())


def test_the_embedding_audit_excludes_a_training_images_own_match(plugins, data):
    """Training images at 0, 10, 30: their nearest *other* training images are 10, 10 and 20 away, never 0 (themselves)."""
    train, held_out, synthetic = _flat_images((0, 10, 30)), _flat_images((5, 55, 60, 70)), _flat_images((12, 45))
    cls = plugins.metric("memorization")
    metric = cls(cls.Params.model_validate({"embedding": "pixels", "percentile": 50.0}), data.spec)
    _, space = metric.audits(train, held_out, synthetic)
    unit = (1 / 127.5) * math.sqrt(3 * 32 * 32)  # one grey level in the pixel embedding
    assert space.space == "pixels"
    assert (space.train_distance / unit).tolist() == pytest.approx([10, 10, 20])
    assert (space.synthetic_distance / unit).tolist() == pytest.approx([2, 15]) and space.nearest_train.tolist() == [1, 2]
    # 12 is 2 from training image 10, whose own nearest neighbour is 10 away: not authentic; 45 is 15 beyond 30 (20): not either
    assert space.authentic.tolist() == [False, False]
    assert space.held_out_authentic.tolist() == [False, True, True, True]  # 5 is nearer 0 or 10 than they are to each other


def test_distances_are_computed_once_per_image_and_equal_a_fresh_audit(plugins, data):
    """Half-samples and repeated calls reuse each image's distance rows; the values are those of a fresh metric."""
    from raresynth.evaluation.measure import half_samples, subset

    synthetic = with_planted_copies(data)
    cached = audit(plugins, data)
    full = {v.name: v.value for v in cached.compute(data.train, data.held_out, synthetic)}
    first = cached._rows.computed
    # each distinct image compared once, in pixel space and in the embedding: the synthetic set is
    # the held-out images plus training images, so only the held-out and training rows are computed
    assert first == 2 * (len(data.held_out) + len(data.train))
    for index in half_samples(len(synthetic), 3, seed=1):
        half = subset(synthetic, index)
        again = {v.name: v.value for v in cached.compute(data.train, data.held_out, half)}
        fresh = {v.name: v.value for v in audit(plugins, data).compute(data.train, data.held_out, half)}
        assert again == pytest.approx(fresh, nan_ok=True)
    assert cached._rows.computed == first  # the halves' rows all came from memory
    assert {v.name: v.value for v in cached.compute(data.train, data.held_out, synthetic)} == full


def test_the_distance_rows_stay_within_their_budget(plugins, data, monkeypatch):
    """The rows' budget counts distances: with room for fewer rows than a call holds, evicted rows are computed again."""
    monkeypatch.setattr(plugins.metric("memorization"), "ROW_BUDGET", 10 * len(data.train))  # 10 rows of len(train) distances
    m = audit(plugins, data)
    synthetic = with_planted_copies(data)
    full = {v.name: v.value for v in m.compute(data.train, data.held_out, synthetic)}
    assert len(m._rows) <= 10
    computed = m._rows.computed
    assert {v.name: v.value for v in m.compute(data.train, data.held_out, synthetic)} == pytest.approx(full, nan_ok=True)
    assert m._rows.computed > computed  # evicted: computed again


@pytest.mark.parametrize("n, percentile", [(4, 50.0), (8, 5.0), (9, 5.0), (9, 50.0)])
def test_measured_fpr_is_the_average_over_halvings_of_the_rate_on_the_other_half(n, percentile):
    """Exact expectation by enumerating every halving (calibrate on one half, count the other below its threshold,
    both ways) against the random halvings the audit draws."""
    from itertools import combinations

    distances = torch.arange(n, dtype=torch.float64)
    rates = []
    for first in combinations(range(n), n // 2):
        rest = [i for i in range(n) if i not in first]
        for calibration, check in ((distances[list(first)], distances[rest]), (distances[rest], distances[list(first)])):
            threshold, _ = copy_threshold(calibration, percentile)
            rates.append(float((check < threshold).double().mean()))
    assert measured_fpr(distances, percentile, splits=3000, seed=0) == pytest.approx(np.mean(rates), abs=0.01)
    assert math.isnan(measured_fpr(distances[:3], percentile, splits=10, seed=0))  # too few to halve


def test_measured_fpr_flags_below_the_threshold_as_the_copy_rule_does():
    """An image exactly at the threshold is not flagged (``distance < threshold``, as for synthetic images): all ties, rate 0."""
    assert measured_fpr(torch.ones(8), 50.0, splits=5, seed=0) == 0.0
    assert measured_fpr(torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 50.0, splits=200, seed=0) < 0.5


@pytest.mark.parametrize("similarity, matched", [("ncc", True), ("ncc", False), ("ssim", False)])
def test_pixel_distance_is_one_minus_the_similarity_zero_for_the_image_itself(plugins, data, similarity, matched):
    from raresynth.plugins.memorization.matching import Matching

    images = data.train.images[:4]
    distance, _ = pixel_distances(images, images, similarity, matching=Matching() if matched else None)
    assert torch.diagonal(distance).abs().max() < 1e-5  # similarity 1 with itself
    assert (distance > 1e-3).sum() == 12 and distance.max() <= 2.0  # every other pair farther; at most 1 - (-1)
    inverted = pixel_distances(images[:1], -images[:1], "ncc")[0]  # NCC of x and -x is -1
    if similarity == "ssim":  # 1 - SSIM itself (NCC would pass the checks above), and a Matching changes nothing
        from raresynth import Preprocessing
        from raresynth.evaluation.similarity import ssim

        x = Preprocessing().apply(images)  # as every pixel distance is measured
        expected = 1.0 - ssim(x.repeat_interleave(4, dim=0), x.repeat(4, 1, 1, 1)).double().view(4, 4)
        assert distance == pytest.approx(expected, abs=1e-6)
        with_matching, which = pixel_distances(images, images.flip(-1), "ssim", matching=Matching())
        assert which is None and torch.equal(with_matching, pixel_distances(images, images.flip(-1), "ssim")[0])
    assert float(inverted) == pytest.approx(2.0, abs=1e-5)


def test_meehan_cells_cluster_standardized_pixel_vectors(data):
    """In pixel space, C_T's cells are k-means cells of each image centred and scaled to unit norm (what NCC compares)."""
    from raresynth.plugins.memorization.metric import _standardized

    vectors = _standardized(data.train.images[:6])
    assert torch.allclose(vectors.mean(1), torch.zeros(6, dtype=vectors.dtype), atol=1e-12)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(6, dtype=vectors.dtype))
    assert not torch.allclose(vectors.mean(0), torch.zeros(vectors.shape[1], dtype=vectors.dtype), atol=1e-3)  # per image, not per pixel
    faint = torch.zeros(2, 3, 32, 32)
    faint[0, :, :, :16] = 0.02  # two 8-bit steps of contrast on half the image: a centred norm below 1
    unit, flat = _standardized(faint)
    assert float(unit.norm()) == pytest.approx(1.0) and torch.equal(flat, torch.zeros_like(flat))  # a flat image: zeros, not NaN


def test_cached_distance_rows_of_an_empty_set_are_an_empty_matrix():
    """A set with no image gets a (0, training images) distance matrix, computed directly, nothing kept."""
    from raresynth import PerImageCache
    from raresynth.plugins.memorization.metric import _cached_rows

    train = torch.rand(5, 3, 8, 8)
    calls = []

    def to_train(images):
        calls.append(len(images))
        return torch.cdist(images.flatten(1), train.flatten(1)), None

    cache = PerImageCache(10)
    distance, which = _cached_rows(cache, torch.empty(0, 3, 8, 8), "pixel", to_train)
    assert distance.shape == (0, 5) and which is None and calls == [0] and len(cache) == 0
    distance, _ = _cached_rows(cache, train[:2], "pixel", to_train)
    assert distance.shape == (2, 5) and torch.diagonal(distance[:, :2]).abs().max() < 1e-6 and len(cache) == 2


def test_the_fewest_images_the_audit_accepts():
    """2 training and 2 held-out images are enough (the threshold is the smaller held-out distance); 1 of either is refused."""
    two_train = torch.tensor([[INF, 1.0], [1.0, INF]], dtype=torch.float64)
    space = audit_space("hand", torch.tensor([[0.1, 5.0]], dtype=torch.float64), torch.tensor([[2.0, 9.0], [9.0, 3.0]], dtype=torch.float64),
                        two_train, percentile=5.0)
    assert space.threshold == 2.0 and space.copies.tolist() == [True]
    with pytest.raises(ConfigError, match="^memorization: needs at least 2 held-out images to calibrate the copy threshold$"):
        audit_space("hand", torch.ones(1, 2), torch.ones(1, 2), two_train, percentile=5.0)
    with pytest.raises(ConfigError, match="^memorization: needs at least 2 training images$"):
        audit_space("hand", torch.ones(1, 1), torch.ones(2, 1), torch.full((1, 1), INF), percentile=5.0)


def test_authenticity_is_strict_for_synthetic_and_held_out_images():
    """Alaa et al.: authentic only when *farther* than the nearest training image's own nearest neighbour; a tie is not."""
    two_train = torch.tensor([[INF, 1.0], [1.0, INF]], dtype=torch.float64)  # each one's nearest other: 1 away
    ties = torch.tensor([[1.0, 9.0], [9.0, 2.0]], dtype=torch.float64)  # the first exactly 1 from training image 0
    space = audit_space("hand", ties, ties, two_train, percentile=50.0)
    assert space.authentic.tolist() == [False, True] and space.held_out_authentic.tolist() == [False, True]


def test_a_folder_audit_of_more_than_256_images(plugins, data, tmp_path):
    """One name per image, compared by value (a folder of 300 files is not refused for want of names)."""
    m = audit(plugins, data, embedding=None, flips=False, max_shift=0, crop=0, match_resolution=None, grid_pairs=2)
    many = ImageSet(torch.cat([data.held_out.images.repeat(7, 1, 1, 1), data.train.images[PLANTED]]),
                    torch.cat([data.held_out.labels.repeat(7), data.train.labels[PLANTED]]))  # 280 honest, 5 copies at the end
    names = [f"{i:03d}.png" for i in range(len(many))]
    summary = m.audit_folder(data.train, data.held_out, many, names, tmp_path / "new" / "audit")  # folders made as needed
    assert (tmp_path / "new" / "audit" / "audit.json").is_file()
    assert summary["synthetic"] == 285 and [space["space"] for space in summary["spaces"]] == ["pixel"]
    assert {"280.png", "284.png"} <= {pair["file"] for pair in summary["spaces"][0]["flagged"]}
    for wrong in (names[:-1], [*names, "extra.png"]):
        with pytest.raises(ValueError, match="one name per synthetic image"):
            m.audit_folder(data.train, data.held_out, many, wrong, tmp_path)


def test_the_embedding_audit_without_flips_and_its_use_of_the_held_out_set(plugins, data):
    """flips: false matches the images as they are (in the embedding too); the audit declares it reads the held-out set,
    so reference rows give it held-out halves and never an image against itself."""
    m = audit(plugins, data, flips=False)
    planted_at = list(range(len(data.held_out), len(data.held_out) + len(PLANTED)))
    for space in m.audits(data.train, data.held_out, with_planted_copies(data)):
        assert space.copies[planted_at].all() and space.nearest_train[planted_at].tolist() == PLANTED, space.space
    assert type(m).uses_held_out is True


def test_flips_false_leaves_a_flipped_copy_unmatched_in_the_embedding(plugins, data):
    """A horizontally flipped training image is at distance 0 in the embedding when flips are tried, and not when they are off
    (the mutant that tried one flip anyway passed every test)."""
    flipped_copies = ImageSet(data.train.images[PLANTED].flip(-1), data.train.labels[PLANTED])
    by_flips = {}
    for flips in (True, False):
        (space,) = [s for s in audit(plugins, data, flips=flips).audits(data.train, data.held_out, flipped_copies) if s.space != "pixel"]
        by_flips[flips] = space.synthetic_distance
    assert (by_flips[True] < 1e-6).all()  # the flip of the flipped copy is the training image: the same features
    assert (by_flips[False] > 1e-5).all()  # the domain embedding, trained with flips, is nearly but not exactly flip-invariant

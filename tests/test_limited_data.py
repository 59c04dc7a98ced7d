"""LeCam and DiffAugment as plugins, combined with stylegan2_ada by config alone, and the
limited-data benchmark (ADA + R1, + LeCam, DiffAugment instead of ADA) scaled down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import embedded_data
from raresynth import ConfigError, DataSpec, PenaltyInputs
from raresynth.bench import prepare_benchmark, run_benchmark
from raresynth.config import load_config
from raresynth.plugins.diffaugment import DiffAugment, color, cutout, translation
from raresynth.plugins.lecam import LeCam
from raresynth.testing import TINY_STYLEGAN2
from raresynth.training import train
from raresynth.training.checkpoint import list_checkpoints, load_state

ROOT = Path(__file__).parent.parent
SPEC = DataSpec(resolution=16, channels=3)


def lecam(**params):
    return LeCam(LeCam.Params(**params), SPEC, name="lecam")


def test_lecam_is_eq3_of_tseng_et_al_with_moving_anchors():
    reg = lecam(weight=0.5, ema_decay=0.9)
    real1, fake1 = torch.tensor([[1.0], [3.0]]), torch.tensor([[-2.0], [0.0]])
    first = reg.penalty(PenaltyInputs(step=0, real_logits=real1, fake_logits=fake1))
    # first batch: the anchors are its means, alpha_R = 2, alpha_F = -1
    assert (reg.anchor_real, reg.anchor_fake) == (2.0, -1.0)
    expected = 0.5 * (((real1 - -1.0) ** 2).mean() + ((fake1 - 2.0) ** 2).mean())
    assert torch.isclose(first, expected)
    real2, fake2 = torch.tensor([[4.0], [4.0]]), torch.tensor([[-3.0], [-3.0]])
    second = reg.penalty(PenaltyInputs(step=1, real_logits=real2, fake_logits=fake2))
    alpha_r, alpha_f = 0.9 * 2 + 0.1 * 4, 0.9 * -1 + 0.1 * -3
    assert reg.anchor_real == pytest.approx(alpha_r) and reg.anchor_fake == pytest.approx(alpha_f)
    assert torch.isclose(second, 0.5 * (((real2 - alpha_f) ** 2).mean() + ((fake2 - alpha_r) ** 2).mean()))


def test_lecam_calls_the_discriminator_when_given_no_logits_and_its_gradient_reaches_it():
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 1))
    reg = lecam(interval=3)
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    value = reg.penalty(PenaltyInputs(step=0, model=lambda x, labels: d(x), real=real, fake=fake))
    value.backward()
    assert d[1].weight.grad is not None and d[1].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match=r"'lecam' \(LeCam\) needs D's logits"):
        reg.penalty(PenaltyInputs(step=0, real=real))


def test_diffaugment_ops_do_what_the_paper_says_on_real_images(plugins):
    images = embedded_data(plugins, channels=3, train_per_class=4, held_out_per_class=2, resolution=16).train.images
    torch.manual_seed(0)
    shifted = translation(images, 0.125)  # up to 2 px at 16 px: every image a shifted copy with zero fill
    for original, moved in zip(images, shifted):
        found = any(torch.equal(moved[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)],
                                original[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)])
                    for dy in range(-2, 3) for dx in range(-2, 3))
        assert found
    cut = cutout(images + 2, 0.5)  # + 2: no pixel is zero before the cutout
    zeros = (cut == 0).all(dim=1).flatten(1).sum(dim=1)
    assert ((zeros > 0) & (zeros <= 64)).all()  # at most one 8 x 8 square, clipped at the border
    gray = images[:, :1]
    torch.manual_seed(1)
    coloured = color(gray)
    assert coloured.shape == gray.shape and not torch.equal(coloured, gray)


def test_stylegan2_ada_applies_diffaugment_to_what_d_sees_by_config_alone(registry, toy_config):
    config = toy_config(generator={"name": "stylegan2_ada", **TINY_STYLEGAN2, "augment": "none"},
                        regularizers=[{"name": "r1", "interval": 2}, {"name": "lecam"}, {"name": "diffaugment", "policy": ["cutout"]}],
                        budget={"kimg": 0.032})
    run = train(load_config(config, registry=registry), registry=registry, progress_bar=False)
    backend = run.generator
    images = torch.rand(4, 1, 16, 16) + 1  # no zero pixel
    torch.manual_seed(0)
    seen = backend.augment(images)
    assert ((seen == 0).flatten(1).sum(dim=1) > 0).all()  # each image lost a square: DiffAugment's cutout
    lines = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    assert all("penalty_lecam" in line and "penalty_r1" in line for line in lines)
    saved = load_state(list_checkpoints(run.run_dir / "checkpoints")[-1])["regularizers"]
    assert saved[1]["anchor_real"] == pytest.approx(run.generator.regularizers[1].anchor_real)
    assert isinstance(saved[1]["anchor_fake"], float)
    diffaugment = run.generator.regularizers[2]
    assert isinstance(diffaugment, DiffAugment) and diffaugment.role == "augment"


def test_a_backend_without_the_augment_role_refuses_diffaugment(registry, toy_config):
    with pytest.raises(ConfigError, match=r"regularizers.0.name: regularizer 'diffaugment' applies to the augment"):
        load_config(toy_config(regularizers=[{"name": "diffaugment"}]), registry=registry)


def test_the_limited_data_benchmark_runs_scaled_down(tmp_path, registry, one_thread):
    path = ROOT / "benchmarks" / "limited_data_regularizers.yaml"
    tiny = [f"base.generator.{key}={value}" for key, value in TINY_STYLEGAN2.items()]
    benchmark = prepare_benchmark(path, [f"out_dir={tmp_path / 'out'}", "seeds=[0]", "base.data.resolution=16", "base.precision=no",
                                         "base.budget.kimg=0.032", "base.batch_size=8", "base.schedule.tick_kimg=0.016",
                                         "base.schedule.snapshot_kimg=0.032", "base.schedule.grid_size=4",
                                         "base.data.format_options.train_per_class=8", "base.data.format_options.held_out_per_class=4",
                                         "base.data.format_options.crop_size=32", "metrics=[swd]", "synthetic_images=16", "grid_size=4",
                                         *tiny], registry=registry)
    budgets = {run.config.budget.kimg for run in benchmark.runs}
    assert budgets == {0.032} and len(benchmark.runs) == 3
    configs = {run.variant.name: run.config for run in benchmark.runs}
    assert [r.name for r in configs["ada_r1_lecam"].regularizers] == ["r1", "lecam"]
    assert configs["diffaug_r1"].generator.params["augment"] == "none" and configs["ada_r1"].generator.params["augment"] == "ada"
    results = run_benchmark(benchmark, progress_bar=False, log=lambda message: None)
    runs = {v["name"]: v["runs"] for v in results["variants"]}
    assert set(runs) == {"ada_r1", "ada_r1_lecam", "diffaug_r1"}
    assert all(r[0]["status"] == "done" and "swd" in r[0]["values"] for r in runs.values())


@pytest.mark.slow
def test_stylegan2_ada_with_r1_lecam_and_diffaugment_stays_in_sync_on_two_processes(registry, tmp_path):
    from raresynth.testing import check_generator

    regularizers = [{"name": "r1", "interval": 2}, {"name": "lecam"}, {"name": "diffaugment"}]
    check_generator(registry.generator("stylegan2_ada"), TINY_STYLEGAN2, specs=[(3, True)], regularizers=regularizers, processes=2,
                    registry=registry, tmp_path=tmp_path)


@pytest.mark.slow
def test_lecam_anchors_kept_per_rank_fail_the_two_process_check(tmp_path):
    import broken_plugins
    import dcgan_plugin
    import toy_plugin
    from raresynth.registry import load_plugins
    from raresynth.testing import ConformanceError, check_generator

    registry = load_plugins(extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin), ("broken", broken_plugins)])
    with pytest.raises(ConformanceError, match=r"rank 0 and rank 1 hold different regularizer state \(first at regularizers/1/anchor_"):
        check_generator(registry.generator("stylegan2_ada"), TINY_STYLEGAN2, specs=[(3, True)], steps=2, processes=2, registry=registry,
                        regularizers=[{"name": "r1", "interval": 2}, {"name": "local_lecam"}], tmp_path=tmp_path)

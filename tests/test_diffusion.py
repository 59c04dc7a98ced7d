"""The ``ddpm`` diffusion backend on CPU at 16 pixels: training, samplers, resume, errors."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import pytest
import torch

from raresynth import ConfigError, DataSpec
from raresynth.cli import main
from raresynth.config import load_config, validate_params
from raresynth.plugins.diffusion.augment import augment
from raresynth.plugins.diffusion.backend import DDPM, DDPMParams, DDPMSampleParams, ema_decay
from raresynth.registry import load_plugins, set_registry
from raresynth.training import load_run_generator, train
from raresynth.training.checkpoint import list_checkpoints, load_state

# diffusers' DPM-Solver calls np.array(tensor, copy=False), which numpy 2 flags; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SCHEDULERS = {"ddpm": 30, "ddim": 10, "dpmsolver++": 8}  # scheduler -> steps (few: CPU)


def ddpm_config(run_dir, labels="none", channels=1, **generator):
    """A tiny run: 16 embedded crops (8 per class) at 16x16, a tiny UNet, 100 timesteps."""
    return {
        "run_dir": str(run_dir),
        "seed": 3,
        "data": {"format": "embedded", "resolution": 16, "channels": channels, "labels": labels,
                 "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
        "generator": {"name": "ddpm", "preset": "tiny", "num_train_timesteps": 100, "lr": 2e-3, "lr_warmup_steps": 0,
                      **generator},
        "budget": {"kimg": 0.32},
        "batch_size": 8,
        "schedule": {"tick_kimg": 0.08, "snapshot_kimg": 0.16, "keep_checkpoints": 2, "grid_size": 4},
    }


def run_ddpm(config, registry, *overrides, resume=False):
    return train(load_config(config, list(overrides), registry=registry), resume=resume, registry=registry, progress_bar=False)


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory, plugins):
    """40 steps on 16 grayscale images without labels."""
    run_dir = tmp_path_factory.mktemp("ddpm") / "run"
    run_ddpm(ddpm_config(run_dir), plugins)
    return run_dir


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, plugins):
    """A class-conditional RGB model (fundus / histology) with label dropout for guidance."""
    run_dir = tmp_path_factory.mktemp("ddpm") / "cond"
    run_ddpm(ddpm_config(run_dir, labels="auto", channels=3, p_uncond=0.2), plugins, "budget.kimg=0.08")
    return run_dir


def test_ddpm_is_registered_with_documented_defaults(plugins):
    assert plugins.generator("ddpm") is DDPM
    defaults = DDPMParams().model_dump(mode="json")
    assert defaults["num_train_timesteps"] == 1000 and defaults["prediction"] == "epsilon"
    assert DDPMSampleParams().scheduler == "dpmsolver++"


def test_training_loss_decreases_on_16_real_images(unlabelled_run):
    lines = [json.loads(line) for line in (unlabelled_run / "log.jsonl").read_text().splitlines()]
    assert [line["kimg"] for line in lines] == [0.08, 0.16, 0.24, 0.32]
    assert all(math.isfinite(line["loss"]) and line["grad_norm"] > 0 for line in lines)
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"], [line["loss"] for line in lines]
    assert (unlabelled_run / "samples" / "grid-000000320.png").is_file()
    split = json.loads((unlabelled_run / "split.json").read_text())
    assert len(split["train"]) == 16
    state = load_state(list_checkpoints(unlabelled_run / "checkpoints")[-1])["generator"]
    assert state["steps"] == 40 and set(state) == {"unet", "ema", "steps", "opt"}
    # the EMA lags the live weights
    assert any(not torch.equal(state["unet"][key], state["ema"][key]) for key in state["unet"])


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_each_sampler_gives_deterministic_images_in_range(unlabelled_run, scheduler):
    generator, *_ = load_run_generator(unlabelled_run)
    options = DDPMSampleParams(scheduler=scheduler, steps=SCHEDULERS[scheduler])
    images = generator.sample([4, 5, 6], None, options)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
    assert torch.equal(generator.sample([4, 5, 6], None, options), images)  # the same seeds: the same images
    alone = generator.sample([5], None, options)  # a seed's image does not depend on the rest of the batch
    torch.testing.assert_close(alone[0], images[1], atol=1e-5, rtol=0)
    assert (images[0] - images[2]).abs().mean() > 0.05  # other seeds: other images


def test_default_sampler_is_dpmsolver_with_25_steps(unlabelled_run):
    generator, *_ = load_run_generator(unlabelled_run)
    default = generator.sample([1], None, None)
    assert torch.equal(default, generator.sample([1], None, DDPMSampleParams(scheduler="dpmsolver++", steps=25)))


def test_resume_after_checkpoint_equals_uninterrupted_run(tmp_path):
    import toy_plugin

    registry = load_plugins(extra=[("toy", toy_plugin)])
    # every source of randomness at once: noise, timesteps, label dropout, dropout, augmentation,
    # plus v-prediction, min-SNR, lr warm-up, EMA warm-up and a (toy) regularizer. (Not the cosine lr
    # schedule: it follows the kimg budget, which the interrupted run changes.)
    options = dict(labels="auto", channels=3, p_uncond=0.3, dropout=0.1, prediction="v", beta_schedule="cosine",
                   min_snr_gamma=5.0, lr_warmup_steps=4, aug_hflip=True, aug_translate=0.1,
                   aug_rotate=10.0, aug_scale=0.1, ema_max_decay=0.99)
    schedule = ["budget.kimg=0.128", "schedule.snapshot_kimg=0.064", "schedule.tick_kimg=0.032", "regularizers=[shrink]"]
    whole = run_ddpm(ddpm_config(tmp_path / "whole", **options), registry, *schedule)
    half = ddpm_config(tmp_path / "half", **options)
    run_ddpm(half, registry, *schedule, "budget.kimg=0.072")  # stops between two snapshots
    resumed = run_ddpm(half, registry, *schedule, resume=True)
    assert resumed.progress.nimg == whole.progress.nimg == 128
    a = load_state(list_checkpoints(tmp_path / "whole" / "checkpoints")[-1])
    b = load_state(list_checkpoints(tmp_path / "half" / "checkpoints")[-1])
    ga, gb = a["generator"], b["generator"]
    assert ga["steps"] == gb["steps"] == 16
    for part in ("unet", "ema"):
        for key in ga[part]:
            assert torch.equal(ga[part][key], gb[part][key]), f"{part}.{key}"
    for index, slot in ga["opt"]["state"].items():
        assert torch.equal(slot["exp_avg"], gb["opt"]["state"][index]["exp_avg"])
    assert a["regularizers"] == b["regularizers"]
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert log[0]["penalty_shrink"] > 0 and log[0]["lr"] < log[-1]["lr"] == pytest.approx(2e-3)  # warm-up


def test_classifier_free_guidance(labelled_run):
    generator, *_ = load_run_generator(labelled_run)
    assert generator.num_classes == 2 and generator.null_label == 2
    labels = torch.tensor([0, 1])
    plain = generator.sample([1, 2], labels, DDPMSampleParams(steps=8))
    guided = generator.sample([1, 2], labels, DDPMSampleParams(steps=8, guidance_scale=3.0))
    assert plain.shape == guided.shape == (2, 3, 16, 16)
    assert (plain - guided).abs().max() > 1e-3
    unconditional = generator.sample([1, 2], None, DDPMSampleParams(steps=8))  # the null class
    assert (unconditional - plain).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="sample option.guidance_scale: classifier-free guidance needs class labels"):
        generator.sample([1], None, DDPMSampleParams(guidance_scale=2.0))
    with pytest.raises(ConfigError, match=r"labels must be class indices 0\.\.1"):
        generator.sample([1], torch.tensor([2]))


def test_guidance_on_an_unlabelled_run_is_a_clear_error(unlabelled_run, tmp_path, capsys):
    assert main(["sample", str(unlabelled_run), "--n", "1", "--out", str(tmp_path / "g"), "guidance_scale=2"]) == 2
    err = capsys.readouterr().err
    assert "error: sample option.guidance_scale: classifier-free guidance needs a class-conditional model" in err
    assert "trained without labels" in err


def test_sample_options_are_validated(unlabelled_run, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(unlabelled_run), "--n", "2", "--out", str(out), "scheduler=ddim", "steps=5"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"] == {"scheduler": "ddim", "steps": 5, "guidance_scale": 1.0, "eta": 0.0}
    assert main(["sample", str(unlabelled_run), "--out", str(tmp_path / "x"), "scheduler=euler"]) == 2
    assert "error: sample option.scheduler: Input should be 'ddpm', 'ddim' or 'dpmsolver++' (got 'euler')" in capsys.readouterr().err
    assert main(["sample", str(unlabelled_run), "--out", str(tmp_path / "x"), "eta=0.5"]) == 2
    assert "sample option.eta: eta applies to scheduler ddim only (scheduler is dpmsolver++)" in capsys.readouterr().err
    assert main(["sample", str(unlabelled_run), "--out", str(tmp_path / "x"), "scheduler=ddpm", "steps=101"]) == 2
    assert "sample option.steps: 101 steps, but the model was trained with 100 timesteps" in capsys.readouterr().err
    # DDIM with eta > 0 draws noise too, still per seed
    generator, *_ = load_run_generator(unlabelled_run)
    stochastic = validate_params(DDPMSampleParams, {"scheduler": "ddim", "steps": 5, "eta": 1.0}, "sample option")
    first = generator.sample([3], None, stochastic)
    assert torch.equal(first, generator.sample([3], None, stochastic))


@pytest.mark.parametrize(
    ("params", "spec", "message"),
    [
        ({"preset": "64"}, DataSpec(16, 1), r"generator.preset: preset '64' has 6 levels \(5 halvings\), which needs images of at least 32x32 pixels; the data is 16x16"),
        ({}, DataSpec(16, 1), r"generator.preset: auto finds no UNet preset for 16x16 images .* set generator.preset: tiny"),
        ({"preset": "tiny", "attention_resolutions": [12]}, DataSpec(16, 1), r"generator.attention_resolutions: 12 is not a feature-map size .* \(its sizes: 16, 8\)"),
        ({"preset": "tiny", "block_out_channels": [24, 36]}, DataSpec(16, 1), r"generator.norm_num_groups: 8 group\(s\) do not divide 36 channels"),
        ({"preset": "tiny", "conditional": True}, DataSpec(16, 1), r"generator.conditional: true, but the data has no labels"),
        ({"init_from": "somewhere", "preset": "tiny"}, DataSpec(16, 1), r"generator.preset: the architecture comes from generator.init_from"),
    ],
)
def test_bad_configs_are_clear_errors(params, spec, message):
    with pytest.raises(ConfigError, match=message):
        DDPM(DDPMParams(**params), spec)


def test_bad_config_through_the_cli(tmp_path, capsys):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(ddpm_config(tmp_path / "run", preset="256")))
    set_registry(None)
    assert main(["train", str(path), "--no-progress"]) == 2
    assert "error: generator.preset: preset '256' has 6 levels" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(ddpm_config(tmp_path / "run", prediction="x0")))
    assert main(["train", str(path), "--dry-run"]) == 2
    assert "generator.prediction: Input should be 'epsilon' or 'v' (got 'x0')" in capsys.readouterr().err


def test_presets_at_their_resolutions():
    from raresynth.plugins.diffusion.unet import unet_kwargs

    kwargs = unet_kwargs(DDPMParams(), DataSpec(64, 3), None)  # the train_unconditional example's UNet
    assert kwargs["block_out_channels"] == (128, 128, 256, 256, 512, 512)
    assert kwargs["down_block_types"] == ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D")
    assert kwargs["up_block_types"] == ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4
    assert unet_kwargs(DDPMParams(), DataSpec(32, 1), 3)["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert unet_kwargs(DDPMParams(), DataSpec(256, 1), None)["down_block_types"][4] == "AttnDownBlock2D"
    # a preset at another size keeps its attention level (the second level of "32", also at 64 px)
    assert unet_kwargs(DDPMParams(preset="32"), DataSpec(64, 1), None)["down_block_types"][1] == "AttnDownBlock2D"
    custom = unet_kwargs(DDPMParams(preset="tiny", block_out_channels=(16, 32, 32), attention_resolutions=(4,)), DataSpec(16, 1), 3)
    assert custom["down_block_types"] == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D") and custom["num_class_embeds"] == 3


def test_augmentation_is_seeded_and_shape_preserving():
    images = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    assert torch.equal(augment(images), images)
    torch.manual_seed(0)
    flipped = augment(images, hflip=True, vflip=True)
    assert flipped.shape == images.shape and torch.equal(flipped.flatten().sort().values, images.flatten().sort().values)
    assert torch.allclose(augment(images, translate=0.2, rotate=20, scale=0.2, p=0.0), images, atol=1e-5)
    torch.manual_seed(1)
    a = augment(images, hflip=True, translate=0.2, rotate=20, scale=0.2)
    torch.manual_seed(1)
    b = augment(images, hflip=True, translate=0.2, rotate=20, scale=0.2)
    assert torch.equal(a, b) and not torch.allclose(a, images) and a.abs().max() <= 1 + 1e-6


def test_learning_rate_warm_up_and_cosine():
    from raresynth import Progress

    generator = DDPM(DDPMParams(preset="tiny", lr=1.0, lr_warmup_steps=10, lr_schedule="cosine"), DataSpec(16, 1))
    assert generator.learning_rate(Progress(nimg=0, step=0, total_kimg=1.0)) == pytest.approx(0.1)
    assert generator.learning_rate(Progress(nimg=500, step=9, total_kimg=1.0)) == pytest.approx(0.5)
    assert generator.learning_rate(Progress(nimg=1000, step=99, total_kimg=1.0)) == pytest.approx(0.0)


def test_ema_decay_warm_up():
    assert ema_decay(0, 0.9999, 0.75, 1.0) == 0.0  # the first update copies the weights
    assert ema_decay(1, 0.9999, 0.75, 1.0) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(10_000, 0.9999, 0.75, 1.0) == pytest.approx(0.999, abs=2e-6)
    assert ema_decay(10**9, 0.9999, 0.75, 1.0) == 0.9999
    assert ema_decay(50, 0.0, 0.75, 1.0) == 0.0  # no averaging


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path):
    """DDP through torchrun (gloo, CPU): both ranks end with the same UNet, EMA and optimizer state."""
    import yaml

    from helpers import flat, torchrun_two_processes

    config = ddpm_config(tmp_path / "run", labels="auto", aug_hflip=True)
    config["budget"] = {"kimg": 0.032}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = torchrun_two_processes(tmp_path / "config.yaml", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_state(tmp_path / "rank0.safetensors"), load_state(tmp_path / "rank1.safetensors")
    assert rank0["world"] == rank1["world"] == 2 and rank0["nimg"] == 32
    weights0, weights1 = dict(flat(rank0["weights"])), dict(flat(rank1["weights"]))
    assert weights0.keys() == weights1.keys() and any(key.startswith("/ema/") for key in weights0)
    for key, tensor in weights0.items():
        assert torch.equal(tensor, weights1[key]), key


def test_more_sampling_steps_than_training_timesteps_give_finite_images(registry, toy_config):
    """dpmsolver++ with as many steps as training timesteps (the default on a 10-step schedule) returned NaN images."""
    from raresynth.config import load_config
    from raresynth.training import load_run_generator, train

    config = load_config(toy_config(generator={"name": "ddpm", "preset": "tiny", "num_train_timesteps": 10}), registry=registry)
    run = train(config, registry=registry, progress_bar=False)
    generator, *_ = load_run_generator(run.run_dir, registry=registry)
    images = generator.sample([0, 1], None, generator.SampleParams(scheduler="dpmsolver++", steps=10))
    assert torch.isfinite(images).all() and images.abs().max() <= 1


@pytest.mark.parametrize("scheduler_name", ["dpmsolver++", "ddim", "ddpm"])
@pytest.mark.parametrize("train_timesteps, steps", [(10, 10), (20, 20), (100, 25), (10, 3)])
def test_sampling_timesteps_are_distinct(scheduler_name, train_timesteps, steps):
    from raresynth.plugins.diffusion.samplers import make_scheduler, set_distinct_timesteps

    scheduler = make_scheduler(scheduler_name, {"num_train_timesteps": train_timesteps})
    set_distinct_timesteps(scheduler, steps)
    timesteps = scheduler.timesteps.tolist()
    assert len(set(timesteps)) == len(timesteps) and 1 <= len(timesteps) <= min(steps, train_timesteps)

"""The ``stylegan2_ada`` backend on CPU at tiny sizes: shapes, state, resume, transfer,
the generic regularizer interface, learning, and two processes."""

from __future__ import annotations

import json
import math
import shutil
import typing

import pytest
import torch

from helpers import flat, torchrun_two_processes
from raresynth import Batch, ConfigError, DataSpec, PenaltyInputs, Progress, Regularizer
from raresynth.config import load_config
from raresynth.plugins.r1 import R1, R1Params
from raresynth.plugins.stylegan2_ada import StyleGAN2ADA
from raresynth.plugins.stylegan2_ada.augment import ALL_OPS
from raresynth.plugins.stylegan2_ada.loss import lazy_adam, lazy_fraction
from raresynth.plugins.stylegan2_ada.presets import AugmentOp, recommended_batch, recommended_r1_gamma
from raresynth.training import build_generator, make_accelerator, train
from raresynth.training.checkpoint import list_checkpoints, load_state, save_state

TINY = {"z_dim": 16, "w_dim": 16, "mapping_layers": 1, "channel_base": 128, "channel_max": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_backend(resolution=16, channels=1, classes=(), regularizers=(), seed=0, **params) -> StyleGAN2ADA:
    spec = DataSpec(resolution=resolution, channels=channels, class_names=tuple(classes), num_train=16)
    backend = StyleGAN2ADA(StyleGAN2ADA.Params(**{**TINY, **params}), spec, list(regularizers))
    torch.manual_seed(seed)
    backend.setup(make_accelerator("no"))
    return backend


def real_batch(n=8, resolution=16, channels=1, classes=0, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.interpolate(torch.rand(n, channels, 4, 4, generator=g) * 2 - 1, size=resolution, mode="bilinear")
    return Batch(images=images, labels=torch.randint(0, classes, (n,), generator=g) if classes else None)


def train_steps(backend, batch, steps, progress=None) -> dict:
    progress = progress or Progress()
    for _ in range(steps):
        stats = backend.train_step(batch, progress)
        progress.nimg += batch.images.shape[0]
        progress.step += 1
    return stats


def assert_same_state(a, b):
    fa, fb = dict(flat(a, all_leaves=True)), dict(flat(b, all_leaves=True))
    assert fa.keys() == fb.keys()
    for key, value in fa.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, fb[key]), key
        else:
            assert value == fb[key], key


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256) -> float:
    """Mean |quantile difference| of the two image sets along random directions of pixel space."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    dirs = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    levels = torch.linspace(0, 1, 65, dtype=torch.float64)
    return (torch.quantile(a @ dirs, levels, dim=0) - torch.quantile(b @ dirs, levels, dim=0)).abs().mean().item()


# ---------------------------------------------------------------------------
# Shapes, dtypes, options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("conditional", [False, True])
def test_shapes_and_dtypes(resolution, channels, conditional):
    classes = ("a", "b", "c") if conditional else ()
    backend = make_backend(resolution, channels, classes)
    G, D = backend.G_net, backend.D_net
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2  # [SG2]: two ws per resolution, minus two
    labels = torch.tensor([0, 2]) if conditional else None
    images = backend.sample([0, 1], labels)
    assert images.shape == (2, channels, resolution, resolution) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    logits = D(images, labels)
    assert logits.shape == (2,) and logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the GPU default (bf16) runs
        raw = G(torch.randn(2, 16), labels)
        assert raw.dtype == torch.bfloat16 and D(raw, labels).shape == (2,)
    if resolution <= 32:  # one full training step (D main + R1 + G main + path length)
        backend = make_backend(resolution, channels, classes, regularizers=[R1(R1Params(interval=1), backend.spec, "r1")],
                               augment="fixed", augment_p=0.5)
        stats = train_steps(backend, real_batch(4, resolution, channels, len(classes)), 1)
        assert all(math.isfinite(float(v)) for v in stats.values())
        assert {"loss_d", "loss_g", "penalty_r1", "penalty_pl", "augment_p", "ada_rt"} <= set(stats)


def test_sample_options_and_determinism():
    backend = make_backend(16, 1, ("a", "b"))
    train_steps(backend, real_batch(classes=2), 2)
    a = backend.sample([5, 6, 7], torch.tensor([0, 1, 0]))
    b = backend.sample([7], torch.tensor([0]))
    assert torch.allclose(a[2], b[0], atol=1e-6)  # an image depends on its seed and label only
    Opts = StyleGAN2ADA.SampleParams
    centre = backend.sample([1, 2, 3], torch.tensor([1, 1, 1]), Opts(truncation_psi=0.0))
    assert torch.allclose(centre[0], centre[1], atol=1e-5) and torch.allclose(centre[0], centre[2], atol=1e-5)  # psi 0: the class centre
    noisy = backend.sample([5, 5], torch.tensor([0, 0]), Opts(noise_mode="random"))
    assert torch.equal(noisy[0], noisy[1]) and torch.equal(noisy, backend.sample([5, 5], torch.tensor([0, 0]), Opts(noise_mode="random")))
    assert not torch.equal(backend.sample([5], torch.tensor([0]), Opts(noise_mode="none")), a[:1])


def test_config_errors(registry, toy_config):
    def load(*overrides):
        return load_config(toy_config(), ["generator.name=stylegan2_ada", *overrides], registry=registry)

    for resolution in (8, 2048):
        with pytest.raises(ConfigError, match=f"data.resolution: stylegan2_ada needs a power of two from 16 to 1024 \\(got {resolution}\\)"):
            StyleGAN2ADA(StyleGAN2ADA.Params(), DataSpec(resolution=resolution, channels=1))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="generator.precision: fp16 needs a CUDA GPU"):
            load("generator.precision=fp16")
    with pytest.raises(ConfigError, match=r"generator.augment_ops.0: Input should be 'xflip'"):
        load("generator.augment_ops=[blur]")
    with pytest.raises(ConfigError, match="generator.freeze_d: D has 2 blocks at 16 px, cannot freeze 3"):
        build_generator(load("generator.freeze_d=3"), DataSpec(16, 1), registry)
    with pytest.raises(ConfigError, match="generator.conditional: true, but the data has no labels"):
        StyleGAN2ADA(StyleGAN2ADA.Params(conditional=True), DataSpec(resolution=16, channels=1))
    backend = StyleGAN2ADA(StyleGAN2ADA.Params(**TINY, precision="fp32"), DataSpec(resolution=16, channels=1))
    with pytest.raises(ConfigError, match="generator.precision: fp32 conflicts with the run's precision: bf16"):
        backend.setup(make_accelerator("bf16"))
    config = load()
    assert config.generator.params["preset"] == "auto" and config.generator.params["augment"] == "ada"


def test_presets():
    assert typing.get_args(AugmentOp) == ALL_OPS  # the option lists exactly the pipeline's ops
    assert recommended_batch(256) == 16 and recommended_batch(128) == 32 and recommended_batch(64) == 32
    assert recommended_r1_gamma(256) == pytest.approx(0.0002 * 256**2 / 16)
    auto = make_backend(16, 1, channel_base=None, mapping_layers=None, channel_max=8)
    assert auto.settings.mapping_layers == 2 and auto.settings.channel_base == 16384 and auto.settings.lr_g == 0.0025
    paper = StyleGAN2ADA(StyleGAN2ADA.Params(preset="paper", mapping_layers=3), DataSpec(resolution=1024, channels=3))
    assert paper.settings.mapping_layers == 3  # the config wins over the preset
    assert paper.settings.channel_base == 32768 and paper.settings.lr_d == 0.002 and paper.settings.ema_kimg == 10.0


# ---------------------------------------------------------------------------
# Regularizers: generic interface and lazy correction
# ---------------------------------------------------------------------------


class SpyRegularizer(Regularizer):
    """A third-party discriminator regularizer: records what the backend hands it."""

    role = "discriminator"

    def __init__(self, spec, every):
        super().__init__(Regularizer.Params(), spec, name="spy")
        self.every, self.calls = every, []

    @property
    def interval(self):
        return self.every

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        self.calls.append(inputs)
        return inputs.model(inputs.real, inputs.labels).square().mean() * 0.1 * self.interval


def test_regularizers_are_generic_and_lazy_correction_follows_their_intervals():
    assert lazy_fraction([16]) == 1 / 16 and lazy_fraction([]) == 0
    assert lazy_fraction([4, 2]) == 0.5  # steps 0 and 2 of every 4
    lr, betas = lazy_adam(0.0025, (0.0, 0.99), [16])
    assert lr == pytest.approx(0.0025 * 16 / 17) and betas == (0.0, pytest.approx(0.99 ** (16 / 17)))  # [SG2] appendix B

    spec = DataSpec(resolution=16, channels=1, class_names=("a", "b"))
    spy = SpyRegularizer(spec, every=3)
    backend = make_backend(16, 1, ("a", "b"), regularizers=[spy], augment="none", pl_interval=4)
    d_group, g_group = backend.opt_d.param_groups[0], backend.opt_g.param_groups[0]
    assert d_group["lr"] == pytest.approx(0.0025 * 3 / 4) and d_group["betas"][1] == pytest.approx(0.99 ** 0.75)
    assert g_group["lr"] == pytest.approx(0.0025 * 4 / 5)  # path length every 4 G steps

    batch = real_batch(classes=2)
    stats = train_steps(backend, batch, 4)
    assert [inputs.step for inputs in spy.calls] == [0, 3]  # every 3rd D step
    inputs = spy.calls[-1]
    assert torch.equal(inputs.real, batch.images) and torch.equal(inputs.labels, batch.labels)
    # with augmentation off, "D as trained" is D itself; the spy's penalty reached the log
    assert torch.allclose(inputs.model(batch.images, batch.labels), backend.D_net(batch.images, batch.labels))
    assert "penalty_spy" in stats

    import toy_plugin  # a generator regularizer from another plugin, every 2 G steps, with path length every 4

    shrink = toy_plugin.ShrinkRegularizer(toy_plugin.ShrinkParams(every=2), spec, "shrink")
    backend = make_backend(16, 1, ("a", "b"), regularizers=[shrink], augment="fixed", augment_p=1.0)
    assert backend.opt_g.param_groups[0]["lr"] == pytest.approx(0.0025 / 1.5)
    train_steps(backend, batch, 4)
    assert shrink.calls == 2
    # with augmentation on, regularizers see D(aug(x)): a different draw gives different logits
    torch.manual_seed(0)
    first = backend._d_model(batch.images, batch.labels)
    assert not torch.allclose(first, backend._d_model(batch.images, batch.labels))


def test_freeze_d_keeps_the_first_blocks():
    backend = make_backend(32, 1, freeze_d=1)
    frozen = {k: v.clone() for k, v in backend.D_net.blocks[0].state_dict().items()}
    trained = {k: v.clone() for k, v in backend.D_net.blocks[1].state_dict().items()}
    train_steps(backend, real_batch(resolution=32), 2)
    assert all(torch.equal(v, backend.D_net.blocks[0].state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(v, backend.D_net.blocks[1].state_dict()[k]) for k, v in trained.items())


# ---------------------------------------------------------------------------
# State: round trip, resume, transfer
# ---------------------------------------------------------------------------


def test_state_round_trip_gives_identical_samples(tmp_path):
    regs = [R1(R1Params(interval=2), DataSpec(16, 3, ("a", "b")), "r1")]
    a = make_backend(16, 3, ("a", "b"), regularizers=regs, augment="ada", augment_p=0.3, ada_interval=1)
    train_steps(a, real_batch(channels=3, classes=2), 3)
    save_state(a.state_dict(), tmp_path / "state.safetensors")  # safetensors + JSON, as the core stores it
    b = make_backend(16, 3, ("a", "b"), regularizers=regs, seed=99, augment="ada")
    b.load_state_dict(load_state(tmp_path / "state.safetensors"))
    assert_same_state(a.state_dict(), b.state_dict())
    assert b.ada.p == a.ada.p != 0.3
    labels = torch.tensor([0, 1, 1, 0])
    for options in (None, StyleGAN2ADA.SampleParams(truncation_psi=0.7, noise_mode="random")):
        assert torch.equal(a.sample([0, 1, 2, 3], labels, options), b.sample([0, 1, 2, 3], labels, options))


def sg_config(toy_config, **changes):
    config = toy_config(**changes)
    config["generator"] = {"name": "stylegan2_ada", **TINY, "pl_interval": 2, "augment_p": 0.3, "ada_kimg": 0.5, "ada_interval": 3}
    config["regularizers"] = [{"name": "r1", "interval": 4}]
    return config


def test_resume_equals_uninterrupted_run(toy_config, registry, tmp_path):
    def run(config, *overrides, resume=False):
        return train(load_config(config, list(overrides), registry=registry), resume=resume, registry=registry, progress_bar=False)

    whole = run(sg_config(toy_config, run_dir=str(tmp_path / "whole")))
    half = sg_config(toy_config, run_dir=str(tmp_path / "half"))
    run(half, "budget.kimg=0.072")  # stops mid ADA interval, mid R1 interval
    resumed = run(half, resume=True)
    assert resumed.progress.nimg == whole.progress.nimg == 128
    a = load_state(list_checkpoints(whole.run_dir / "checkpoints")[-1])
    b = load_state(list_checkpoints(resumed.run_dir / "checkpoints")[-1])
    assert a["generator"]["augment"]["p"] not in (0.0, 0.3)  # ADA augmented and moved p, so its state mattered
    assert_same_state(a, b)


def test_transfer_learning(tmp_path):
    source = make_backend(16, 1, seed=1)
    train_steps(source, real_batch(), 2)
    checkpoint = tmp_path / "source" / "checkpoints" / "checkpoint-000000016.safetensors"
    save_state({"generator": source.state_dict(), "regularizers": [], "progress": {"nimg": 16, "step": 2}}, checkpoint)

    target = make_backend(16, 1, seed=2, transfer=str(tmp_path / "source"), freeze_d=1)
    target.train_step(real_batch(), Progress())  # transfer happens before the first step
    assert torch.equal(target.D_net.blocks[0].conv0.weight, source.D_net.blocks[0].conv0.weight)  # frozen: as transferred
    assert target.ada.p == 0.0 and target.d_steps == 1  # optimizer, ADA and counters start afresh

    fresh = make_backend(16, 1, seed=2, transfer=str(checkpoint))
    fresh._start(per_process_batch=8)
    assert_same_state({"G": source.G_net.state_dict(), "D": source.D_net.state_dict(), "G_ema": source.G_ema.state_dict()},
                      {"G": fresh.G_net.state_dict(), "D": fresh.D_net.state_dict(), "G_ema": fresh.G_ema.state_dict()})

    wrong_resolution = make_backend(32, 1, transfer=str(checkpoint))
    with pytest.raises(ConfigError, match=rf"generator.transfer: checkpoint {checkpoint} has resolution=16, this run has resolution=32 \(data.resolution\)"):
        wrong_resolution.train_step(real_batch(resolution=32), Progress())
    wider = make_backend(16, 1, transfer=str(checkpoint), channel_max=32)
    with pytest.raises(ConfigError, match=r"has channel_max=16, this run has channel_max=32 \(generator.channel_max\)"):
        wider._start(8)
    save_state({"generator": {"net": {}}, "regularizers": [], "progress": {}}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="other.safetensors is not a stylegan2_ada checkpoint"):
        make_backend(16, 1, transfer=str(tmp_path / "other.safetensors"))._start(8)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        make_backend(16, 1, transfer=str(tmp_path))._start(8)


# ---------------------------------------------------------------------------
# Learning and several processes
# ---------------------------------------------------------------------------


def test_short_training_run_brings_samples_closer_to_the_data(toy_config, registry, tmp_path):
    """16 real images at 16x16: after 0.8 kimg the samples are much closer to them than the untrained G's."""
    config = load_config(toy_config(), ["generator.name=stylegan2_ada", "generator.z_dim=32", "generator.w_dim=32",
                                        "generator.channel_base=512", "generator.channel_max=32", "regularizers=[r1]",
                                        "budget.kimg=0.8", "schedule.snapshot_kimg=10", "schedule.tick_kimg=0.2", "seed=1"],
                         registry=registry)
    from raresynth.data import load_dataset

    dataset = load_dataset(config.data, registry)
    real = dataset.train.images
    assert real.shape == (16, 1, 16, 16)
    untrained = build_generator(config, dataset.spec, registry)
    torch.manual_seed(config.seed)
    untrained.setup(make_accelerator("no"))
    seeds = list(range(100, 164))
    before = sliced_wasserstein(untrained.sample(seeds, torch.arange(64) % 2), real)
    run = train(config, registry=registry, progress_bar=False)
    after = sliced_wasserstein(run.generator.sample(seeds, torch.arange(64) % 2), real)
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_two_processes_end_with_identical_state(tmp_path, toy_config):
    config = sg_config(toy_config, run_dir=str(tmp_path / "run"))
    config["regularizers"] = [{"name": "r1", "interval": 2}]
    config["generator"].update(ada_interval=1)
    config["budget"] = {"kimg": 0.064}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    result = torchrun_two_processes(config_path, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_state(tmp_path / "rank0.safetensors"), load_state(tmp_path / "rank1.safetensors")
    assert rank0["world"] == rank1["world"] == 2 and rank0["nimg"] == rank1["nimg"] == 64
    assert_same_state(rank0["weights"], rank1["weights"])  # weights, G_ema, both Adam states, ADA, path length
    assert rank0["weights"]["augment"]["p"] != 0.3  # p moved, in step on both ranks
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["penalty_r1"] > 0 and lines[-1]["penalty_pl"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_passes_compute_what_the_eager_ones_do(registry, tmp_path):
    # Inductor draws its own random numbers, so the passes are compared on fixed inputs:
    # G with layer noise at its initial strength 0 and no style mixing, D as it is.
    import torch._dynamo

    torch._dynamo.reset()
    spec = DataSpec(resolution=16, channels=1, class_names=("a", "b"))
    backend = make_backend(16, 1, ("a", "b"), regularizers=[R1(R1Params(gamma=1.0, interval=1), spec, "r1")], compile=True,
                           style_mixing=0.0, pl_interval=1)
    z, labels = torch.randn(8, TINY["z_dim"]), torch.tensor([0, 1] * 4)
    for compiled, eager in ((backend.G_main, backend.G_net), (backend.G_fakes, backend.G_net)):
        a, b = compiled(z=z, labels=labels), eager(z=z, labels=labels)
        assert torch.allclose(a, b, atol=1e-5)
        # and the gradients, at half the batch (the path-length pass's size); a noise strength's
        # gradient is the noise itself, drawn differently by each
        a[:4].square().mean().backward()
        grads = {name: q.grad.clone() for name, q in backend.G_net.named_parameters() if q.grad is not None}
        backend.G_net.zero_grad()
        b[:4].square().mean().backward()
        for name, q in backend.G_net.named_parameters():
            if q.grad is not None and not name.endswith("noise_strength"):
                assert torch.allclose(grads[name], q.grad, atol=1e-5), name
        backend.G_net.zero_grad()
    images = real_batch(classes=2).images
    assert torch.allclose(backend.D_main(images, labels), backend.D_net(images, labels), atol=1e-5)
    assert torch.allclose(backend.D_main(images[:4], labels[:4]), backend.D_net(images[:4], labels[:4]), atol=1e-5)

    # Training with compiled passes through the loop, at a shape where Inductor's
    # dynamic-shape recompile of the backward failed (64x64, batch 4, ADA, conditional).
    config = {"run_dir": str(tmp_path / "run"), "data": {"format": "embedded", "resolution": 64, "channels": 3,
              "format_options": {"train_per_class": 8, "held_out_per_class": 2, "crop_size": 128}},
              "generator": {"name": "stylegan2_ada", "compile": True, "channel_base": 256, "channel_max": 8, "z_dim": 16, "w_dim": 16},
              "regularizers": [{"name": "r1"}], "budget": {"kimg": 0.032}, "batch_size": 4,
              "schedule": {"tick_kimg": 0.008, "snapshot_kimg": 1, "grid_size": 2}}
    run = train(load_config(config, registry=registry), registry=registry, progress_bar=False)
    lines = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert len(lines) == 4 and all(math.isfinite(value) for line in lines for value in line.values())

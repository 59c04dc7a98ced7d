"""The shared training loop, end to end, driven by the test-only toy generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raresynth import hookimpl
from raresynth.config import load_config
from raresynth.errors import RunDirError, TrainingError
from raresynth.registry import load_plugins
from raresynth.training import train
from raresynth.training.checkpoint import list_checkpoints, load_state


class Observer:
    """Records the lifecycle hooks the loop calls."""

    def __init__(self):
        self.events = []

    @hookimpl
    def raresynth_run_start(self, run, config):
        self.events.append(("start", run.progress.nimg, config["generator"]["name"]))

    @hookimpl
    def raresynth_tick(self, run, stats):
        self.events.append(("tick", stats["kimg"]))

    @hookimpl
    def raresynth_checkpoint_written(self, run, path):
        self.events.append(("checkpoint", path.name))

    @hookimpl
    def raresynth_run_end(self, run, status, error):
        self.events.append(("end", status, error))


def run_toy(toy_config, registry, *overrides, resume=False, overwrite=False, **changes):
    config = load_config(toy_config(**changes), list(overrides), registry=registry)
    return train(config, resume=resume, overwrite=overwrite, registry=registry, progress_bar=False)


def final_weights(run_dir):
    return load_state(list_checkpoints(run_dir / "checkpoints")[-1])


def test_end_to_end_run_writes_everything_and_learns(toy_config, tmp_path):
    import toy_plugin

    observer = Observer()
    registry = load_plugins(extra=[("toy", toy_plugin), ("observer", observer)])
    run = run_toy(toy_config, registry, "regularizers=[shrink]")
    run_dir = tmp_path / "run"
    assert run.progress.nimg == 128 and run.progress.step == 16

    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["kimg"] for line in lines] == [0.032, 0.064, 0.096, 0.128]
    # throughput is logged consistently (its value is a benchmark's business, not a test's)
    assert all(line["img_per_s"] == pytest.approx(1000 / line["sec_per_kimg"]) and np.isfinite(line["loss"]) for line in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    assert lines[0]["penalty_shrink"] > 0

    # last K checkpoints kept, as safetensors, with regularizer state
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint-000000064.safetensors", "checkpoint-000000128.safetensors"]
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    state = load_state(checkpoints[-1])
    assert state["progress"] == {"nimg": 128, "step": 16}  # wall-clock time stays out of checkpoints (it is in the log)
    assert state["regularizers"] == [{"calls": 8}]  # every 2nd of 16 steps

    grid = Image.open(run_dir / "samples" / "grid-000000128.png")
    assert grid.size == (32, 32) and grid.mode == "L"  # 4 images of 16x16, 1 channel
    saved = load_config(run_dir / "config.yaml", registry=registry)
    assert saved.generator.params == {"lr": 0.05, "nan_at_step": -1} and saved.regularizers[0].params["every"] == 2
    data = json.loads((run_dir / "data.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) == 16 and len(split["held_out"]) == 8
    assert not set(split["train"]) & set(split["held_out"])
    assert data["spec"] == {"resolution": 16, "channels": 1, "class_names": ["fundus", "histology"], "num_train": 16}

    kinds = [event[0] for event in observer.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("tick") == 4 and kinds.count("checkpoint") == 2
    assert observer.events[-1] == ("end", "completed", None)


def test_resume_continues_exactly(toy_config, registry, tmp_path):
    whole = run_toy(toy_config, registry, "regularizers=[shrink]", run_dir=str(tmp_path / "whole"))
    half = toy_config(run_dir=str(tmp_path / "half"))
    run_toy(lambda: half, registry, "regularizers=[shrink]", "budget.kimg=0.072")  # stops mid-snapshot interval
    resumed = run_toy(lambda: half, registry, "regularizers=[shrink]", resume=True)
    assert resumed.progress.nimg == whole.progress.nimg == 128
    a, b = final_weights(whole.run_dir), final_weights(resumed.run_dir)
    for key in ("mean", "log_scale"):
        assert torch.equal(a["generator"]["net"][key], b["generator"]["net"][key]), key
    assert a["generator"]["opt"]["state"][0]["exp_avg"].equal(b["generator"]["opt"]["state"][0]["exp_avg"])
    assert a["regularizers"] == b["regularizers"]
    # the resumed run appended to the same log
    kimgs = [json.loads(line)["kimg"] for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert kimgs[-1] == 0.128 and 0.072 in kimgs


def test_run_dir_is_protected(toy_config, registry, tmp_path):
    run_toy(toy_config, registry, "budget.kimg=0.016")
    with pytest.raises(RunDirError, match="run directory already exists; pass --resume to continue it or --overwrite"):
        run_toy(toy_config, registry, "budget.kimg=0.016")
    with pytest.raises(RunDirError, match="cannot resume with a changed data, seed; start a new run_dir"):
        run_toy(toy_config, registry, "budget.kimg=0.032", "data.resolution=32", "seed=4", resume=True)
    run = run_toy(toy_config, registry, "budget.kimg=0.016", overwrite=True)
    assert run.progress.nimg == 16
    (tmp_path / "run" / "my_notes.txt").write_text("mine")
    run_toy(toy_config, registry, "budget.kimg=0.016", overwrite=True)  # the notes stay where they are
    assert (tmp_path / "run" / "my_notes.txt").read_text() == "mine"
    assert len(list((tmp_path / "run" / "trash").iterdir())) == 2  # each overwrite moved the previous run aside
    with pytest.raises(RunDirError, match="no run to resume here; start the run without --resume"):
        run_toy(toy_config, registry, run_dir=str(tmp_path / "fresh"), resume=True)
    assert not (tmp_path / "fresh").exists()  # refused: nothing left behind


def test_non_finite_loss_stops_with_last_good_checkpoint_intact(toy_config, registry, tmp_path, capsys):
    with pytest.raises(TrainingError, match="training stopped at .*loss is nan") as excinfo:
        run_toy(toy_config, registry, "generator.nan_at_step=10")
    message = str(excinfo.value)
    assert "training stopped at" in message and "loss is nan" in message
    assert "the last good checkpoint is" in message and "checkpoint-000000064.safetensors" in message
    assert "\n" not in message
    (good,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    state = load_state(good)
    assert all(torch.isfinite(t).all() for t in state["generator"]["net"].values())
    # and the run can be resumed from it once the cause is fixed (options may change on resume)
    run = run_toy(toy_config, registry, "generator.lr=0.02", "generator.nan_at_step=-1", resume=True)
    assert run.progress.nimg == 128
    assert "generator.lr: 0.05 -> 0.02; generator.nan_at_step: 10 -> -1" in capsys.readouterr().err


def test_bf16_mixed_precision_runs_on_cpu(toy_config, registry):
    run = run_toy(toy_config, registry, "precision=bf16", "budget.kimg=0.032")
    assert run.progress.nimg == 32


def test_tensorboard_scalars_are_written_when_installed(toy_config, registry, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_toy(toy_config, registry, "budget.kimg=0.064")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "loss" in events.Tags()["scalars"] and "img_per_s" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("loss")] == [32, 64]


def test_metrics_run_at_the_end_and_write_artifacts_into_the_run(toy_config, registry, tmp_path):
    run_toy(toy_config, registry, "budget.kimg=0.032", "metrics=[{name: memorization, embedding: pixels}]")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["copy_rate_pixel"]["higher_is_better"] is False and metrics["copy_rate_pixel"]["metric"] == "memorization"
    assert (tmp_path / "run" / "metrics" / "memorization_pixel_pairs.png").is_file()
    pairs = json.loads((tmp_path / "run" / "metrics" / "memorization_pixel_pairs.json").read_text())
    assert pairs["copy_rate"] == metrics["copy_rate_pixel"]["value"]  # the artifact beside the run describes the same audit
    assert pairs["pairs"] and all(pair["copy"] == (pair["distance"] < pairs["threshold"]) for pair in pairs["pairs"])


def test_a_metric_that_needs_labels_fails_before_training(toy_config, registry, tmp_path):
    from raresynth.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics.0.name: metric 'utility' needs class labels and the data has none"):
        run_toy(toy_config, registry, "data.labels=none", "metrics=[utility]")
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")

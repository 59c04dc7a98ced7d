"""The benchmark harness: variants and sweeps, fairness checks, resumability, failures, results."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import raresynth.bench.run as bench
from helpers import fixture_plugins_env
from raresynth import ConfigError, RunDirError
from raresynth.bench import default_metrics, expand_variants, load_benchmark, prepare_benchmark, run_benchmark
from raresynth.cli import main
from raresynth.config import DataConfig
from raresynth.data import load_dataset
from raresynth.training import load_run_generator, synthetic_like_train
from raresynth.training.checkpoint import list_checkpoints


def write_benchmark(tmp_path, **changes):
    """A benchmark of the toy backend on 24 embedded crops at 16x16; ``changes`` replace top-level keys."""
    config = {
        "name": "toy benchmark",
        "out_dir": str(tmp_path / "out"),
        "seeds": [0, 1],
        "base": {
            "data": {"format": "embedded", "resolution": 16, "channels": 1,
                     "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
            "budget": {"kimg": 0.064},
            "batch_size": 8,
            "schedule": {"tick_kimg": 0.032, "snapshot_kimg": 0.032, "keep_checkpoints": 1, "grid_size": 4},
        },
        "variants": {
            "toy": {"generator": {"name": "toy"}},
            "lr_sweep": {"generator": {"name": "toy"}, "sweep": {"generator.lr": [0.01, 0.2]}},
        },
        "metrics": ["mean_gap"],
        "synthetic_images": 12,
    }
    config.update(changes)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def quiet(message):  # the harness's progress lines
    pass


def run(path, registry, *overrides, **options):
    return run_benchmark(prepare_benchmark(path, overrides, registry=registry, rerun=options.pop("rerun", ())),
                         progress_bar=False, log=quiet, **options)


def runs_of(results):
    return {(variant["name"], r["seed"]): r for variant in results["variants"] for r in variant["runs"]}


def count_calls(monkeypatch, name):
    """Wrap ``raresynth.benchmark.<name>`` and record each call's keyword arguments."""
    calls = []
    original = getattr(bench, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(bench, name, wrapper)
    return calls


# -- reading the config ---------------------------------------------------------


def test_a_sweep_is_one_config_line_per_value(tmp_path, registry):
    path = write_benchmark(tmp_path, variants={
        "r1_sweep": {"generator": {"name": "stylegan2_ada"}, "regularizers": ["r1"],
                     "sweep": {"regularizers.0.gamma": [0.01, 0.1, 1.0]}},
    }, seeds=[0, 1])
    benchmark = prepare_benchmark(path, registry=registry)
    assert [v.label for v in benchmark.variants] == ["r1_sweep (gamma=0.01)", "r1_sweep (gamma=0.1)", "r1_sweep (gamma=1.0)"]
    assert len({v.name for v in benchmark.variants}) == 3
    gammas = [(run.config.regularizers[0].params["gamma"], run.seed) for run in benchmark.runs]
    assert gammas == [(g, s) for g in (0.01, 0.1, 1.0) for s in (0, 1)]
    assert len({run.run_dir for run in benchmark.runs}) == 6
    assert all(run.config.data == benchmark.runs[0].config.data and run.config.budget.kimg == 0.064 for run in benchmark.runs)
    assert benchmark.variants[1].settings["regularizers.0.gamma"] == 0.1


def test_variant_options_merge_with_base_unless_the_backend_changes(tmp_path):
    base_generator = {"name": "stylegan2_ada", "z_dim": 64, "channel_max": 32}
    path = write_benchmark(tmp_path, base={**yaml.safe_load(write_benchmark(tmp_path).read_text())["base"], "generator": base_generator},
                           variants={"no_ada": {"generator": {"augment": "none"}}, "ddpm": {"generator": {"name": "ddpm"}}})
    no_ada, ddpm = expand_variants(load_benchmark(path))
    assert no_ada.config["generator"] == {**base_generator, "augment": "none"}
    assert ddpm.config["generator"] == {"name": "ddpm"}  # stylegan2 options mean nothing to ddpm


@pytest.mark.parametrize("field", ["data", "budget", "seed", "run_dir", "metrics"])
def test_a_variant_cannot_change_what_must_be_equal(tmp_path, registry, field):
    path = write_benchmark(tmp_path, variants={"unfair": {"generator": "toy", field: {"kimg": 9} if field == "budget" else 1}})
    with pytest.raises(ConfigError, match=rf"variants\.unfair\.{field}: a variant may not set it; .*(base|top-level|harness)"):
        prepare_benchmark(path, registry=registry)


def test_base_cannot_hold_per_run_fields(tmp_path, registry):
    config = yaml.safe_load(write_benchmark(tmp_path).read_text())
    path = write_benchmark(tmp_path, base={**config["base"], "seed": 3})
    with pytest.raises(ConfigError, match=r"bench\.yaml: base\.seed: .*top-level 'seeds'"):
        prepare_benchmark(path, registry=registry)


def test_every_bad_variant_is_reported_before_anything_runs(tmp_path, registry):
    path = write_benchmark(tmp_path, variants={
        "typo": {"generator": {"name": "toy", "lrr": 0.1}},
        "unknown": {"generator": "stylegan3"},
        "bad_sample": {"generator": "toy", "sample": {"scale": "big"}},
    })
    with pytest.raises(ConfigError, match="variant 'typo': generator.lrr: unknown field") as error:
        prepare_benchmark(path, registry=registry)
    message = str(error.value)
    assert "variant 'typo': generator.lrr: unknown field" in message and "Did you mean 'lr'" in message
    assert "variant 'unknown': generator.name: unknown generator 'stylegan3'" in message
    assert "variants.bad_sample.sample.scale" in message
    assert all(line.startswith(str(path)) for line in message.splitlines())
    assert not (tmp_path / "out").exists()


def test_metric_names_and_options_are_checked_up_front(tmp_path, registry):
    path = write_benchmark(tmp_path, metrics=["mean_gapp"])
    with pytest.raises(ConfigError, match=r"metrics\.0\.name: unknown metric 'mean_gapp'.*Did you mean 'mean_gap'"):
        prepare_benchmark(path, registry=registry)
    path = write_benchmark(tmp_path, metrics=["swd"], metric_options={"swd": {"repeatz": 2}})
    with pytest.raises(ConfigError, match=r"metric_options\.swd\.repeatz: unknown field.*Did you mean 'repeats'"):
        prepare_benchmark(path, registry=registry)
    path = write_benchmark(tmp_path, metrics=["swd"], metric_options={"utilty": {"seeds": 2}})
    with pytest.raises(ConfigError, match=r"metric_options\.utilty: no metric 'utilty' is installed.*Did you mean 'utility'"):
        prepare_benchmark(path, registry=registry)
    path = write_benchmark(tmp_path, metrics=["swd"], metric_options={"utility": {"seeds": 2}})  # not listed: unused
    assert prepare_benchmark(path, registry=registry).runs


def test_default_metrics_need_no_download_and_use_frd_when_installed(registry):
    labelled = [ref.name for ref in default_metrics(2, registry)]
    unlabelled = [ref.name for ref in default_metrics(0, registry)]
    assert {"swd", "ms_ssim", "fid", "prdc", "memorization"} <= set(unlabelled)
    assert "utility" in labelled and "utility" not in unlabelled
    assert ("frd" in labelled) == ("frd" in registry.names("metric"))
    fid = next(ref for ref in default_metrics(2, registry) if ref.name == "fid")
    assert fid.params["embedding"] == "domain"  # the Inception weights are a download


# -- running --------------------------------------------------------------------


def test_benchmark_trains_every_variant_and_seed_and_measures_them_alike(tmp_path, registry, one_thread):
    path = write_benchmark(tmp_path)
    results = run(path, registry)
    out = tmp_path / "out"
    runs = runs_of(results)
    assert set(runs) == {(name, seed) for name in ("toy", "lr_sweep--lr-0.01", "lr_sweep--lr-0.2") for seed in (0, 1)}
    assert all(r["status"] == "done" and r["kimg"] >= 0.064 for r in runs.values())
    for record in runs.values():  # training time: the log's ticks, summed
        ticks = [json.loads(line) for line in (tmp_path / "out" / record["run_dir"] / "log.jsonl").read_text().splitlines()]
        kimg = [0.0] + [tick["kimg"] for tick in ticks]
        expected = sum(tick["sec_per_kimg"] * (kimg[i + 1] - kimg[i]) for i, tick in enumerate(ticks))
        assert record["train_seconds"] == pytest.approx(expected) and record["img_per_s"] == pytest.approx(kimg[-1] * 1000 / expected)

    # Every run saw the same split; every value is what the metric gives on that run's synthetic set.
    splits = {(out / r["run_dir"] / "split.json").read_text() for r in runs.values()}
    assert len(splits) == 1
    data = load_dataset(DataConfig(**yaml.safe_load(path.read_text())["base"]["data"]), registry)
    metric = registry.metric("mean_gap")(registry.metric("mean_gap").Params(), data.spec)
    for (name, seed), record in runs.items():
        generator, config, _, _ = load_run_generator(out / record["run_dir"], registry=registry)
        assert config.seed == seed
        synthetic = synthetic_like_train(generator, data, 12, first_seed=1_000_000)
        assert record["values"]["mean_gap"] == pytest.approx(metric.compute(data.train, data.held_out, synthetic)[0].value, abs=1e-7)
    learning_rates = {name: config for name, config in [(v["name"], v["settings"].get("generator.lr")) for v in results["variants"]]}
    assert learning_rates == {"toy": None, "lr_sweep--lr-0.01": 0.01, "lr_sweep--lr-0.2": 0.2}
    # Different learning rates, different generators: the sweep is not a no-op.
    assert runs[("lr_sweep--lr-0.01", 0)]["values"]["mean_gap"] != runs[("lr_sweep--lr-0.2", 0)]["values"]["mean_gap"]

    saved = json.loads((out / "results.json").read_text())
    assert saved["values"]["mean_gap"] == {"metric": "mean_gap", "higher_is_better": False, "dataset_specific": False, "ideal": "lower",
                                           "question": "fidelity", "must_beat": ["noise"], "informative": False,
                                           "uninformative_because": saved["values"]["mean_gap"]["uninformative_because"]}
    # noise at the training pixels' mean has the training mean: a mean gap cannot tell it from real images
    assert saved["values"]["mean_gap"]["uninformative_because"].startswith("noise scores")
    assert saved["references"]["noise"]["mean_gap"]["value"] < saved["references"]["real"]["mean_gap"]["value"]
    assert saved["data"]["num_train"] == 16 and saved["data"]["split_id"] == results["data"]["split_id"]
    report = (out / "report.md").read_text()
    assert "lr_sweep (lr=0.2)" in report and "mean_gap ↓" in report
    assert all((out / variant["grid"]).is_file() for variant in results["variants"])


def test_running_again_reuses_finished_runs_and_a_higher_budget_continues_them(tmp_path, registry, monkeypatch, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}})
    first = runs_of(run(path, registry))
    trains, measures = count_calls(monkeypatch, "train"), count_calls(monkeypatch, "measure")
    again = runs_of(run(path, registry))
    assert trains == [] and measures == []
    assert {key: r["values"] for key, r in again.items()} == {key: r["values"] for key, r in first.items()}

    longer = runs_of(run(path, registry, "base.budget.kimg=0.128"))
    assert [call["resume"] for call in trains] == [True, True]
    assert len(measures) == 2  # new weights, new measurement
    for key, record in longer.items():
        assert record["kimg"] >= 0.128
        assert list_checkpoints(tmp_path / "out" / record["run_dir"] / "checkpoints")[-1].name == "checkpoint-000000128.safetensors"
        assert record["values"]["mean_gap"] != first[key]["values"]["mean_gap"]


def test_changed_metric_settings_measure_again_without_training(tmp_path, registry, monkeypatch, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}}, seeds=[0])
    run(path, registry)
    trains, measures = count_calls(monkeypatch, "train"), count_calls(monkeypatch, "measure")
    results = run(path, registry, "synthetic_images=8", "metrics=[mean_gap, swd]")
    assert trains == [] and len(measures) == 1
    assert {"mean_gap", "swd"} <= set(runs_of(results)[("toy", 0)]["values"])


def test_an_interrupted_benchmark_resumes_where_it_stopped(tmp_path, registry, monkeypatch, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}})
    original = bench.train
    started = []

    def train_then_interrupt(config, **kwargs):
        started.append(config.seed)
        if len(started) == 2:
            raise KeyboardInterrupt("Ctrl-C during the second run")
        return original(config, **kwargs)

    monkeypatch.setattr(bench, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C during the second run"):
        run(path, registry)
    monkeypatch.setattr(bench, "train", original)
    trains = count_calls(monkeypatch, "train")
    results = run(path, registry)
    assert len(trains) == 1  # only seed 1: seed 0 had finished
    assert all(r["status"] == "done" for r in runs_of(results).values())


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path, registry, capsys, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}, "diverges": {"generator": {"name": "toy", "nan_at_step": 2}}},
                           seeds=[0])
    code = main(["bench", str(path), "--no-progress"])
    assert code == 1
    assert "1 run(s) failed: diverges seed 0" in capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = runs_of(results)
    assert runs[("toy", 0)]["status"] == "done" and "mean_gap" in runs[("toy", 0)]["values"]
    failed = runs[("diverges", 0)]
    assert failed["status"] == "failed" and "loss is nan" in failed["error"] and failed["values"] == {}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures and pending runs" in report and "loss is nan" in report


def test_changed_variant_settings_are_refused_unless_rerun(tmp_path, registry, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": {"name": "toy", "lr": 0.05}}}, seeds=[0])
    first = runs_of(run(path, registry))
    path = write_benchmark(tmp_path, variants={"toy": {"generator": {"name": "toy", "lr": 0.1}}}, seeds=[0])
    with pytest.raises(RunDirError, match=r"other settings than the benchmark now asks for \(generator\.lr: 0\.05 -> 0\.1\); .*--rerun toy"):
        prepare_benchmark(path, registry=registry)
    again = runs_of(run(path, registry, rerun=["toy"]))
    run_dir = tmp_path / "out" / again[("toy", 0)]["run_dir"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["generator"]["lr"] == 0.1
    assert again[("toy", 0)]["values"] != first[("toy", 0)]["values"]


def test_only_some_variants_now_the_rest_pending(tmp_path, registry, one_thread):
    path = write_benchmark(tmp_path, seeds=[0])
    results = run(path, registry, only=["toy"])
    statuses = {key: r["status"] for key, r in runs_of(results).items()}
    assert statuses == {("toy", 0): "done", ("lr_sweep--lr-0.01", 0): "pending", ("lr_sweep--lr-0.2", 0): "pending"}
    assert "pending" in (tmp_path / "out" / "report.md").read_text()
    results = run(path, registry, only=["lr_sweep"])  # the name before the sweep selects all its values
    assert all(r["status"] == "done" for r in runs_of(results).values())


def test_a_folder_that_is_not_the_harnesss_is_left_alone(tmp_path, registry):
    path = write_benchmark(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"out: exists and is not a raresynth benchmark folder"):
        run(path, registry)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_cli_dry_run_lists_what_each_run_needs(tmp_path, registry, capsys, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}})
    assert main(["bench", str(path), "--dry-run", "seeds=[0]"]) == 0
    out = capsys.readouterr().out
    assert "1 variant(s) x 1 seed(s)" in out and "toy  seed 0: train" in out
    assert not (tmp_path / "out").exists()
    assert main(["bench", str(path), "--only", "tyo"]) == 2
    assert "--only tyo: no such variant; variants: toy" in capsys.readouterr().err
    run(path, registry, "seeds=[0]")
    assert main(["bench", str(path), "--dry-run", "seeds=[0]"]) == 0
    assert "trained (0.064 kimg), measured" in capsys.readouterr().out
    assert main(["bench", str(path), "--dry-run", "seeds=[0]", "synthetic_images=5"]) == 0
    assert "measured with other settings" in capsys.readouterr().out


def test_results_hold_no_tensors_and_survive_report_only(tmp_path, registry, monkeypatch, one_thread):
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}}, seeds=[0])
    results = run(path, registry)
    (tmp_path / "out" / "report.md").unlink()
    trains, measures = count_calls(monkeypatch, "train"), count_calls(monkeypatch, "measure")
    again = run(path, registry, report_only=True)
    assert trains == [] and measures == []
    assert (tmp_path / "out" / "report.md").is_file()
    assert runs_of(again)[("toy", 0)]["values"] == runs_of(results)[("toy", 0)]["values"]
    json.dumps(again)  # plain data only
    assert not any(isinstance(v, torch.Tensor) for v in runs_of(again)[("toy", 0)].values())


@pytest.mark.slow
def test_runs_train_on_two_processes_and_the_harness_measures_alone(tmp_path):
    import subprocess
    import sys

    path = write_benchmark(tmp_path, variants={"dcgan": {"generator": {"name": "dcgan", "base_channels": 8, "max_channels": 16}}},
                           metrics=["swd"])
    env = fixture_plugins_env(OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "raresynth", "bench", str(path), "--processes", "2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("measuring") == 2  # two seeds
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = runs_of(results)
    assert {r["status"] for r in runs.values()} == {"done"} and all("swd" in r["values"] for r in runs.values())
    assert {r["processes"] for r in runs.values()} == {2}
    assert not list((tmp_path / "out" / "runs" / "dcgan").glob("*.yaml"))  # the children's config files are cleaned up

    # A failing run on two processes: its error line is recorded, the harness goes on.
    path = write_benchmark(tmp_path, variants={"odd": {"generator": "dcgan", "batch_size": 7}}, metrics=["swd"], seeds=[0])
    done = subprocess.run([sys.executable, "-m", "raresynth", "bench", str(path), "--processes", "2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    failed = runs_of(json.loads((tmp_path / "out" / "results.json").read_text()))[("odd", 0)]
    assert failed["status"] == "failed" and "batch_size 7 is not divisible by the 2 processes" in failed["error"]


def test_the_harness_refuses_to_be_launched_on_several_processes(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="pass --processes N"):
        run(write_benchmark(tmp_path), registry)


def test_a_missing_weights_file_fails_before_any_training(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("RARESYNTH_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    path = write_benchmark(tmp_path, metrics=["fid"])
    with pytest.raises(ConfigError, match=r"weights"):
        run(path, registry)
    assert not (tmp_path / "out" / "runs").exists()


def test_a_metric_that_fails_on_one_run_is_recorded_and_measured_again_next_time(tmp_path, registry, monkeypatch, one_thread):
    import toy_plugin

    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}})
    original = toy_plugin.MeanGapMetric.compute
    calls = []

    def fails_once(self, train, held_out, synthetic):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("synthetic images are all NaN")
        return original(self, train, held_out, synthetic)

    monkeypatch.setattr(toy_plugin.MeanGapMetric, "compute", fails_once)
    runs = runs_of(run(path, registry))
    assert runs[("toy", 0)]["status"] == "failed" and runs[("toy", 0)]["error"] == "measuring: synthetic images are all NaN"
    assert runs[("toy", 1)]["status"] == "done" and "mean_gap" in runs[("toy", 1)]["values"]
    trains = count_calls(monkeypatch, "train")
    runs = runs_of(run(path, registry))
    assert trains == [] and all(r["status"] == "done" and "mean_gap" in r["values"] for r in runs.values())


@pytest.mark.slow
def test_the_default_benchmark_runs_end_to_end_scaled_down(tmp_path, registry, one_thread):
    from pathlib import Path

    default = Path(__file__).parent.parent / "benchmarks" / "default.yaml"
    results = run(default, registry, f"out_dir={tmp_path / 'out'}", "base.budget.kimg=0.064", "base.batch_size=16",
                  "base.schedule.tick_kimg=0.032", "base.schedule.snapshot_kimg=0.064", "base.schedule.grid_size=4",
                  "base.data.format_options.train_per_class=16", "base.data.format_options.held_out_per_class=8",
                  "metrics=[swd, memorization]", "synthetic_images=16", "grid_size=4")
    runs = runs_of(results)
    assert set(runs) == {("stylegan2_ada", 0), ("ddpm", 0)}
    assert all(r["status"] == "done" and {"swd", "copy_rate_pixel"} <= set(r["values"]) for r in runs.values())
    ddpm = next(v for v in results["variants"] if v["name"] == "ddpm")
    assert ddpm["sample_options"] == {"scheduler": "dpmsolver++", "steps": 25}
    assert results["variants"][0]["regularizers"] == ["r1(gamma=auto)"]
    assert "## Samples" in (tmp_path / "out" / "report.md").read_text()


def test_a_relative_data_source_is_relative_to_the_benchmark_file(tmp_path, registry, monkeypatch, one_thread):
    import shutil

    from medical_files import ANATOMICAL

    (tmp_path / "data").mkdir()
    for name in ("subject_a.nii", "subject_b.nii"):  # two volumes: the split keeps each one whole
        shutil.copy(ANATOMICAL, tmp_path / "data" / name)
    (tmp_path / "configs").mkdir()
    config = yaml.safe_load(write_benchmark(tmp_path).read_text())
    config["base"]["data"] = {"format": "nifti", "source": "../data", "resolution": 16, "channels": 1,
                              "split": {"held_out_fraction": 0.5}}
    config["variants"] = {"toy": {"generator": "toy"}}
    config["seeds"] = [0]
    (tmp_path / "configs" / "bench.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = run(tmp_path / "configs" / "bench.yaml", registry)
    assert results["data"]["source"] == str(tmp_path / "data")
    assert results["data"]["format"] == "nifti" and results["data"]["num_train"] > 0 and results["data"]["num_held_out"] > 0
    assert runs_of(results)[("toy", 0)]["status"] == "done"


def test_an_equal_wall_clock_budget_stops_every_run_on_time_and_counts_as_done(tmp_path, registry, monkeypatch, one_thread):
    """budget.minutes: each run stops when its training time is spent, the kimg reached is reported, nothing retrains."""
    path = write_benchmark(tmp_path, variants={"toy": {"generator": "toy"}}, seeds=[0])
    config = yaml.safe_load(path.read_text())
    config["base"]["budget"] = {"kimg": 500, "minutes": 0.02}  # 1.2 s of training: far from 500 kimg
    config["base"]["schedule"].update(tick_kimg=0.008, snapshot_kimg=1000)
    path.write_text(yaml.safe_dump(config))
    results = run(path, registry)
    record = runs_of(results)[("toy", 0)]
    assert record["status"] == "done" and 0 < record["kimg"] < 500
    lines = [json.loads(line) for line in (tmp_path / "out" / record["run_dir"] / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["train_seconds"] >= 1.2 and all(line["train_seconds"] < 1.2 for line in lines[:-1])
    assert round(lines[-1]["kimg"] * 1000) == round(record["kimg"] * 1000)  # the last checkpoint is where it stopped
    report = (tmp_path / "out" / "report.md").read_text()
    assert "500 kimg or 0.02 minutes of training per run, whichever came first" in report
    trains = count_calls(monkeypatch, "train")
    run(path, registry)
    assert trains == []  # stopped by its clock: done, not resumed
    # more minutes: the run continues from where it stopped
    config["base"]["budget"]["minutes"] = 0.04
    path.write_text(yaml.safe_dump(config))
    again = runs_of(run(path, registry))[("toy", 0)]
    assert len(trains) == 1 and trains[0]["resume"] is True and again["kimg"] > record["kimg"]

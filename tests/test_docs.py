"""The docs stay true: every hook documented, the tutorial's plugin really works."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from raresynth import hookspecs
from raresynth.config import load_config
from raresynth.registry import load_plugins
from raresynth.training import train

ROOT = Path(__file__).parent.parent
HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("raresynth_")]
EXAMPLE = ROOT / "docs" / "examples" / "raresynth_example_plugin"


def test_there_are_hooks():
    assert len(HOOKS) == 8


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_parameters(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{hook} docstring lacks :param {parameter}:"
    assert f"`{hook}(" in (ROOT / "docs" / "plugins.md").read_text(), f"{hook} missing from docs/plugins.md"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    """The tutorial's plugin as a real installed distribution (entry point and all)."""
    dist = tmp_path / "raresynth_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raresynth-example-plugin\nVersion: 0.1.0\n")
    entry_points = re.search(r"\[project.entry-points.raresynth\]\n(.+?)\n", (EXAMPLE / "pyproject.toml").read_text()).group(1)
    (dist / "entry_points.txt").write_text("[raresynth]\n" + entry_points.replace('"', "") + "\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_tutorial_plugin_installs_lists_and_trains(example_installed, tmp_path, capsys):
    registry = load_plugins()
    info = {p.name: p for p in registry.plugins}["example"]
    assert info.distribution == "raresynth-example-plugin" and not info.broken
    assert info.registers == {"generator": ["pixel_gaussian"], "regularizer": ["smoothness"], "metric": ["mean_abs_gap"]}
    assert info.hooks == sorted(["raresynth_register_generators", "raresynth_register_regularizers", "raresynth_register_metrics", "raresynth_tick"])
    config = load_config(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"format": "embedded", "resolution": 16, "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
            "generator": {"name": "pixel_gaussian", "lr": 0.05},
            "regularizers": [{"name": "smoothness", "weight": 0.05}],
            "metrics": ["mean_abs_gap"],
            "budget": {"kimg": 0.2},
            "batch_size": 8,
            "schedule": {"tick_kimg": 0.05},
        },
        registry=registry,
    )
    run = train(config, registry=registry, progress_bar=False)
    lines = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["nll"] < lines[0]["nll"]
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["mean_abs_gap"]["higher_is_better"] is False and metrics["mean_abs_gap"]["metric"] == "mean_abs_gap"
    assert "[example] 0.20 kimg" in capsys.readouterr().out


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)$", quick_start, flags=re.M)
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "examples").glob("*.yaml")) + sorted((ROOT / "benchmarks" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_run_configs_are_valid(path, registry):
    config = load_config(path, registry=registry)
    assert config.budget.kimg > 0


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_benchmark_configs_are_valid(path, registry, tmp_path):
    from raresynth.bench import prepare_benchmark

    benchmark = prepare_benchmark(path, [f"out_dir={tmp_path / 'out'}"], registry=registry)
    assert benchmark.runs and all(run.state == "new" for run in benchmark.runs)


def test_the_benchmark_guides_example_config_is_valid(registry, tmp_path):
    from raresynth.bench import prepare_benchmark

    text = (ROOT / "docs" / "benchmark.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "bench.yaml").write_text(example)
    benchmark = prepare_benchmark(tmp_path / "bench.yaml", [f"out_dir={tmp_path / 'out'}"], registry=registry)
    assert [v.label for v in benchmark.variants] == [
        "ddpm", "stylegan2_ada", "r1_gamma (gamma=0.01)", "r1_gamma (gamma=0.1)", "r1_gamma (gamma=1)", "r1_gamma (gamma=10)", "no_ada"]
    assert len(benchmark.runs) == 7 * 3

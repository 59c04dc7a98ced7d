"""The docs stay true: every hook documented, the tutorial's plugin really works."""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def section(title: str) -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return text.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    """The tutorial's plugin installed by pip, offline (no build isolation), into a folder of its own."""
    work = tmp_path_factory.mktemp("example")
    source = work / "source"
    shutil.copytree(EXAMPLE, source)  # pip may leave build files beside the sources: not in the repository
    target = work / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                             "--target", str(target), str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (target / "raresynth_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


@pytest.fixture
def example_installed(example_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(example_dir))


def subprocess_env(example_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(example_dir), os.environ.get("PYTHONPATH", "")])),
            "OMP_NUM_THREADS": "1", "RARESYNTH_PLUGIN_MODULES": ""}


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


def tutorial_commands() -> list[tuple[list[str], list[str]]]:
    """``(argv, expected output lines)`` of every ``$`` command in section 7's console block."""
    block = section("7. Install").split("```console\n", 1)[1].split("```", 1)[0]
    commands: list[tuple[list[str], list[str]]] = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        if line.startswith("$ "):
            commands.append((shlex.split(line[2:]), []))
        else:
            commands[-1][1].append(line)
    return commands


def test_the_tutorial_commands_run_as_printed(example_dir, tmp_path):
    """Section 7 from a copy of the repository's docs: pip install, plugins, train, bench."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    env = subprocess_env(example_dir)
    commands = tutorial_commands()
    assert [argv[:2] for argv, _ in commands] == [["pip", "install"], ["raresynth", "plugins"], ["raresynth", "train"], ["raresynth", "bench"]]
    for argv, expected in commands:
        if argv[0] == "pip":  # as printed, into the test's own folder: the repository's environment stays as it is
            argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), *argv[2:]]
        else:
            argv = [sys.executable, "-m", "raresynth", *argv[1:]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
        if expected:
            assert "\n".join(expected) in result.stdout, result.stdout
    assert (tmp_path / "site" / "raresynth_example_plugin.py").is_file()
    log = [json.loads(line) for line in (tmp_path / "runs" / "pg" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["nll"] < log[0]["nll"] and log[-1]["kimg"] >= 2
    assert "mean_abs_gap" in json.loads((tmp_path / "runs" / "pg" / "metrics.json").read_text())
    results = json.loads((tmp_path / "runs" / "bench" / "example_plugin" / "results.json").read_text())
    statuses = {variant["name"]: [r["status"] for r in variant["runs"]] for variant in results["variants"]}
    assert statuses == {"pixel_gaussian": ["done"], "stylegan2_ada": ["done"]}


def write_tutorial_test_file(folder: Path) -> Path:
    code = section("8. Test it").split("```python\n", 1)[1].split("```", 1)[0]
    path = folder / code.splitlines()[0].lstrip("# ").strip()
    path.write_text(code)
    return path


def run_tutorial_tests(example_dir: Path, folder: Path, selection: str) -> subprocess.CompletedProcess:
    path = write_tutorial_test_file(folder)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection, str(path)], cwd=folder,
                          env=subprocess_env(example_dir), capture_output=True, text=True, timeout=600, check=False)


def test_the_tutorials_kit_tests_pass_with_the_installed_example(example_dir, tmp_path):
    result = run_tutorial_tests(example_dir, tmp_path, "not processes")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout[-1000:]


@pytest.mark.slow
def test_the_tutorials_two_process_kit_test_passes(example_dir, tmp_path):
    result = run_tutorial_tests(example_dir, tmp_path, "processes")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-1000:]


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


@pytest.mark.parametrize("interface", ["Generator", "Regularizer", "Augmentation", "Metric", "DataFormat"])
def test_the_interface_reference_names_every_public_member(interface):
    import raresynth

    cls = getattr(raresynth, interface)
    reference = section("4. Interface reference")
    own = {name for klass in cls.__mro__ if klass.__module__ == "raresynth.interfaces" for name in vars(klass)}
    members = sorted(name for name in own if not name.startswith("_") or name == "__init__")
    missing = [name for name in members if not re.search(rf"`{re.escape(name)}[`(]", reference)
               and not (name == "__init__" and "constructor" in reference)]
    assert missing == [], f"docs/plugins.md section 4 does not document {interface}.{', '.join(missing)}"

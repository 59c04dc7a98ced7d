"""The benchmark harness: several backends and regularizer settings, one dataset, one report.

``raresynth bench CONFIG`` trains every *variant* of a benchmark config once per seed,
measures every finished run with the same metrics on the same synthetic-set size,
seeds and class balance, and writes ``report.md`` (plus ``results.json``,
``results.csv``, plots and sample grids) into ``out_dir``::

    name: embedded-32
    out_dir: runs/bench/embedded-32
    seeds: [0, 1, 2]
    base:                                   # a run config shared by every variant
      data: {format: embedded, resolution: 32, channels: 3}
      budget: {kimg: 50}
      batch_size: 32
    variants:
      ddpm: {generator: {name: ddpm, preset: tiny}, sample: {scheduler: dpm_solver, steps: 25}}
      stylegan2:
        generator: {name: stylegan2_ada}
        regularizers: [{name: r1, gamma: auto}]
      r1_sweep:                             # one line sweeps R1's gamma: three variants
        generator: {name: stylegan2_ada}
        regularizers: [{name: r1}]
        sweep: {regularizers.0.gamma: [0.01, 0.1, 1.0]}
    metrics: default                        # or a list, as in a run config

Fairness is enforced, not assumed: variants cannot change the data, the budget, the
seeds or the metrics (only the backend, its regularizers and options, batch size,
precision and schedule), every run's split is checked against the benchmark's, and
every run is measured on the same synthetic seeds.

Resumable: each run lives in ``out_dir/runs/<variant>/seed-<n>``. Running the same
command again skips finished runs and finished measurements, resumes interrupted
runs from their last checkpoint, and retries failed ones; raising ``base.budget.kimg``
continues every run from where it stopped. A failing run is recorded in the report
and the others go on.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
import yaml
from pydantic import Field, field_validator

from . import __version__
from . import checkpoint as ckpt
from .config import (
    save_config,
    PluginRef,
    RunConfig,
    apply_overrides,
    format_validation_error,
    load_config,
    read_yaml,
    set_dotted,
    unknown_plugin_names,
    validate_params,
)
from .interfaces import DataSpec
from .data import Dataset, check_split, load_dataset, load_split
from .errors import ConfigError, RaresynthError, RunDirError, TrainingError, did_you_mean
from .features import content_hash
from .images import save_grid
from .registry import Registry, get_registry
from .training import (
    build_metrics,
    compute_metrics,
    config_differences,
    cycled_labels,
    load_run_generator,
    read_data_spec,
    synthetic_like_train,
    train,
)

#: Run-config fields a variant may not set, and where they belong instead.
SHARED_FIELDS = {
    "data": "every variant trains on the same data: set it in base.data",
    "budget": "every variant gets the same budget: set it in base.budget",
    "seed": "set the list of seeds in the benchmark's top-level 'seeds'",
    "run_dir": "the harness puts each run in <out_dir>/runs/<variant>/seed-<n>",
    "metrics": "every run is measured the same way: set the benchmark's top-level 'metrics'",
}
#: Keys of a variant that are the harness's, not the run config's.
VARIANT_KEYS = {"sample", "sweep", "description"}
METRICS_FILE = "benchmark_metrics.json"  # in each run dir: the run's measured values
ERROR_FILE = "benchmark_error.txt"  # in a run dir whose last training attempt failed: why
MARKER_FILE = "benchmark.yaml"  # in out_dir: the benchmark config as last run (marks the folder as the harness's)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BenchmarkConfig(pydantic.BaseModel):
    """A benchmark: a base run config, the variants that differ from it, seeds and metrics."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = ""  # the report's title; default: the config file's name
    out_dir: str = "runs/bench"  # runs, results and the report go here
    seeds: list[int] = Field([0], min_length=1)  # every variant trains once per seed
    base: dict[str, Any] = Field(default_factory=dict)  # a run config without run_dir, seed, metrics
    variants: dict[str, dict[str, Any]] = Field(min_length=1)  # name -> run-config fields that differ from base
    metrics: Literal["default"] | list[PluginRef] = "default"  # "default": see default_metrics()
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # metric name -> options, over the list's
    synthetic_images: int = Field(0, ge=0)  # images sampled per run for the metrics; 0: as many as the training split
    sampling_seed: int = 1_000_000  # synthetic image i comes from seed sampling_seed + i, in every run
    grid_size: int = Field(16, ge=1, le=256)  # images in each variant's sample grid (seeds 0..grid_size-1)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be different from each other (got {value})")
        return value

    @field_validator("variants")
    @classmethod
    def _names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"variant name '{name}': use letters, digits, '_', '-' and '.' (it names a folder)")
        return value


@dataclass
class Variant:
    """One backend setting to compare: a run config without run_dir and seed."""

    name: str  # unique, safe as a folder name
    label: str  # what the report shows
    config: dict[str, Any]  # run-config data (validated per seed in plan())
    settings: dict[str, Any]  # dotted fields in which it differs from base
    sample: dict[str, Any] = field(default_factory=dict)  # backend sampling options for the metrics and grid
    description: str = ""
    sample_params: Any = None  # ``sample`` validated by the backend's SampleParams (set by plan())


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    config: RunConfig
    run_dir: Path
    state: str = "new"  # new | resume | done | restart
    detail: str = ""


# ---------------------------------------------------------------------------
# Reading the benchmark config
# ---------------------------------------------------------------------------


def load_benchmark(path: str | Path, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Read and validate a benchmark config; a relative ``base.data.source`` is relative to the file."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    try:
        config = BenchmarkConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in format_validation_error(exc, model=BenchmarkConfig))) from None
    config.name = config.name or path.stem
    for key in ("seed", "run_dir", "metrics"):  # data and budget belong in base; these do not
        if key in config.base:
            raise ConfigError(f"{path}: base.{key}: not allowed in a benchmark; {SHARED_FIELDS[key]}")
    source = config.base.get("data", {}).get("source") if isinstance(config.base.get("data"), Mapping) else None
    if isinstance(source, str) and not Path(source).expanduser().is_absolute():
        config.base["data"]["source"] = os.path.normpath(path.resolve().parent / source)
    return config


def default_metrics(num_classes: int, registry: Registry) -> list[PluginRef]:
    """What ``metrics: default`` measures: nothing that needs a download.

    SWD and MS-SSIM diversity on pixels; FID and precision/recall/density/coverage in
    the domain embedding (trained on the training split, so dataset-specific); the
    memorization audit; downstream utility when the data has classes; FRD (radiomics,
    made for medical images) when the ``frd`` extra is installed.
    """
    names = ["swd", "ms_ssim", {"name": "fid", "embedding": "domain"}, "prdc", "memorization"]
    if num_classes:
        names.append("utility")
    if "frd" in registry.names("metric"):
        names.append("frd")
    refs = [PluginRef.model_validate(name) for name in names]
    return [ref for ref in refs if ref.name in registry.names("metric")]


def _normalized_refs(data: dict[str, Any]) -> dict[str, Any]:
    """``generator: ddpm`` -> ``{name: ddpm}`` (and for regularizers), so sweeps can address options."""
    data = copy.deepcopy(data)
    if isinstance(data.get("generator"), str):
        data["generator"] = {"name": data["generator"]}
    if isinstance(data.get("regularizers"), list):
        data["regularizers"] = [{"name": ref} if isinstance(ref, str) else ref for ref in data["regularizers"]]
    return data


def _merge(base: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """Variant fields over base fields: mappings merge key by key, everything else is replaced.

    A variant whose generator has another name than base's replaces the whole
    generator block (one backend's options mean nothing to another).
    """
    merged = copy.deepcopy(dict(base))
    for key, value in variant.items():
        old = merged.get(key)
        same_backend = key != "generator" or not isinstance(old, Mapping) or old.get("name") == value.get("name", old.get("name"))
        if isinstance(old, Mapping) and isinstance(value, Mapping) and same_backend:
            merged[key] = _merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` -> ``{"a.b.0": 1}`` (an empty mapping or list stays a value)."""
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else None
    if not items or not data:
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def expand_variants(config: BenchmarkConfig) -> list[Variant]:
    """The benchmark's variants, each ``sweep`` expanded into one variant per combination."""
    base = _normalized_refs(config.base)
    variants = []
    for name, raw in config.variants.items():
        shared = sorted(set(raw) & set(SHARED_FIELDS))
        if shared:
            raise ConfigError(f"variants.{name}.{shared[0]}: a variant may not set it; {SHARED_FIELDS[shared[0]]}")
        sample = raw.get("sample") or {}
        sweep = raw.get("sweep") or {}
        if not isinstance(sample, Mapping):
            raise ConfigError(f"variants.{name}.sample: expected a mapping of sampling options, e.g. {{steps: 25}}")
        if not isinstance(sweep, Mapping) or not all(isinstance(v, list) and v for v in sweep.values()):
            raise ConfigError(f"variants.{name}.sweep: expected dotted.field: [value, value, ...], e.g. {{regularizers.0.gamma: [0.1, 1]}}")
        own = _normalized_refs({key: value for key, value in raw.items() if key not in VARIANT_KEYS})
        merged = _merge(base, own)
        keys = list(sweep)
        short = [key.rsplit(".", 1)[-1] for key in keys]
        short = short if len(set(short)) == len(short) else keys
        for combination in itertools.product(*(sweep[key] for key in keys)) if keys else [()]:
            data = copy.deepcopy(merged)
            for key, value in zip(keys, combination):
                set_dotted(data, key, value, what=f"variants.{name}.sweep")
            tags = [f"{tag}={_short(value)}" for tag, value in zip(short, combination)]
            variant_name = name + "".join(f"--{re.sub(r'[^A-Za-z0-9_.-]+', '-', tag.replace('=', '-'))}" for tag in tags)
            label = name + (f" ({', '.join(tags)})" if tags else "")
            base_flat, data_flat = _flat(base), _flat(data)
            settings = {key: value for key, value in data_flat.items() if base_flat.get(key, object()) != value}
            variants.append(Variant(variant_name, label, data, settings, dict(sample), str(raw.get("description", ""))))
    names = [variant.name for variant in variants]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise ConfigError(f"variants: two variants are both named '{clash}' after expanding sweeps; rename one")
    return variants


# ---------------------------------------------------------------------------
# Planning: what each run needs
# ---------------------------------------------------------------------------


def run_dir_of(out_dir: Path, variant: str, seed: int) -> Path:
    return out_dir / "runs" / variant / f"seed-{seed}"


def plan(config: BenchmarkConfig, registry: Registry, origin: str = "benchmark") -> list[PlannedRun]:
    """Validate every (variant, seed) run config and its sampling options; one planned run each.

    All problems are collected and raised together, before anything trains.
    """
    out_dir = Path(config.out_dir)
    errors: list[str] = []
    runs: list[PlannedRun] = []
    try:
        variants = expand_variants(config)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    for variant in variants:
        for seed in config.seeds:
            data = {**variant.config, "seed": seed, "run_dir": str(run_dir_of(out_dir, variant.name, seed)), "metrics": []}
            try:
                run_config = load_config(data, registry=registry)
            except ConfigError as exc:
                errors += [f"{origin}: variant '{variant.label}': {line.removeprefix('config: ')}" for line in str(exc).splitlines()]
                break  # the same problem for every seed
            runs.append(PlannedRun(variant, seed, run_config, Path(run_config.run_dir)))
        if runs and runs[-1].variant is variant:
            try:
                generator_cls = registry.generator(runs[-1].config.generator.name)
                variant.sample_params = validate_params(generator_cls.SampleParams, variant.sample, f"variants.{variant.name}.sample")
            except ConfigError as exc:
                errors.append(f"{origin}: {exc}")
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    return runs


def _named(run: PlannedRun, names: Sequence[str]) -> bool:
    """Whether ``names`` selects the run: its variant's name, or a sweep's name before ``--``."""
    return run.variant.name in names or run.variant.name.split("--", 1)[0] in names


def check_variant_names(runs: Sequence[PlannedRun], names: Sequence[str], option: str) -> None:
    """Raise a one-line error for a name in ``names`` that selects no run (``option``: ``--only``, ``--rerun``)."""
    known = {run.variant.name for run in runs} | {run.variant.name.split("--", 1)[0] for run in runs}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{option} {unknown[0]}: no such variant; variants: {', '.join(sorted(known))}")


def _must_match(key: str) -> bool:
    """Whether a run-config field must be what the run was trained with.

    The budget may grow (runs continue), and the schedule (logging, snapshots, grids)
    does not change what is learned; everything else does, so a change is refused.
    """
    return key not in ("budget.kimg", "run_dir") and not key.startswith("schedule.")


def run_state(run: PlannedRun, rerun: bool = False) -> tuple[str, str]:
    """``(state, detail)``: new, resume (from some kimg), done, or restart (an earlier try left no checkpoint)."""
    run_dir = run.run_dir
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new", ""
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: exists but is not a raresynth run (no config.yaml); move it away or choose another out_dir")
    if rerun:
        return "restart", "--rerun"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    changed = [change for change in config_differences(saved, run.config.plain()) if _must_match(change[0])]
    if changed:
        shown = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise RunDirError(
            f"{run_dir}: this run was trained with other settings than the benchmark now asks for ({shown}{more}); "
            f"rerun it from scratch with --rerun {run.variant.name}, or give the changed variant a new name"
        )
    checkpoints = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        return "restart", "no checkpoint yet"
    nimg = ckpt.checkpoint_nimg(checkpoints[-1])
    if nimg >= int(round(run.config.budget.kimg * 1000)):
        return "done", f"{nimg / 1000:g} kimg"
    return "resume", f"from {nimg / 1000:g} kimg"


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


@dataclass
class Benchmark:
    """A loaded benchmark: its config, its runs and its dataset."""

    config: BenchmarkConfig
    runs: list[PlannedRun]
    registry: Registry
    config_file: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def variants(self) -> list[Variant]:
        return list({id(run.variant): run.variant for run in self.runs}.values())

    def metric_refs(self, spec: DataSpec) -> list[PluginRef]:
        """The metrics every run is measured with, options validated by each metric's ``Params``."""
        refs = default_metrics(spec.num_classes, self.registry) if self.config.metrics == "default" else self.config.metrics
        return [resolve_metric_ref(ref, self.config.metric_options, self.registry) for ref in refs]


def resolve_metric_ref(ref: PluginRef, metric_options: Mapping[str, Mapping[str, Any]], registry: Registry) -> PluginRef:
    """``ref`` with ``metric_options[ref.name]`` applied and all options validated (defaults filled in)."""
    options = {**ref.params, **metric_options.get(ref.name, {})}
    params = validate_params(registry.metric(ref.name).Params, options, f"metric_options.{ref.name}" if ref.name in metric_options else f"metrics.{ref.name}")
    return PluginRef.model_validate({"name": ref.name, **params.model_dump(mode="json")})


def prepare_benchmark(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None,
                      rerun: Sequence[str] = ()) -> Benchmark:
    """Load, validate and plan a benchmark; nothing is trained or written."""
    registry = registry or get_registry()
    config = load_benchmark(path, overrides)
    problems: list[str] = []
    if config.metrics != "default":  # check metric names now, not after training
        data = {"generator": "x", "budget": {"kimg": 1}, "metrics": [ref.plain() for ref in config.metrics]}
        problems += [line for line in unknown_plugin_names(data, registry) if line.startswith("metrics")]
    for name in config.metric_options:  # options of an installed metric that is not listed are unused, not wrong
        if name not in registry.names("metric"):
            installed = registry.names("metric")
            problems.append(f"metric_options.{name}: no metric '{name}' is installed; installed: {', '.join(sorted(installed))}."
                            + did_you_mean(name, installed))
    if not problems:
        refs = default_metrics(1, registry) if config.metrics == "default" else config.metrics
        for ref in refs:
            try:
                resolve_metric_ref(ref, config.metric_options, registry)
            except ConfigError as exc:
                problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(f"{path}: {line}" for line in problems))
    runs = plan(config, registry, origin=str(path))
    check_variant_names(runs, rerun, "--rerun")
    for run in runs:
        run.state, run.detail = run_state(run, rerun=_named(run, rerun))
    return Benchmark(config, runs, registry, str(path))


def plan_text(benchmark: Benchmark) -> str:
    """What ``--dry-run`` prints: one line per run."""
    lines = [f"benchmark '{benchmark.config.name}' in {benchmark.out_dir}: {len(benchmark.variants)} variant(s) x "
             f"{len(benchmark.config.seeds)} seed(s)"]
    for run in benchmark.runs:
        measured = "not measured"
        saved = _saved_measurement(run.run_dir) if run.state == "done" else None
        if saved is not None:
            refs = benchmark.metric_refs(read_data_spec(run.run_dir))
            expected = fingerprint(run, refs, benchmark.config, saved.get("fingerprint", {}).get("data_id", ""))
            measured = "measured" if _saved_measurement(run.run_dir, expected) else "measured with other settings: to measure again"
        what = {"new": "train", "resume": f"resume {run.detail}", "done": f"trained ({run.detail}), {measured}",
                "restart": f"train afresh ({run.detail})"}[run.state]
        lines.append(f"  {run.variant.label}  seed {run.seed}: {what}  [{run.config.generator.name}, "
                     f"{run.config.budget.kimg:g} kimg, batch {run.config.batch_size}]  {run.run_dir}")
    return "\n".join(lines) + "\n"


def _claim_out_dir(benchmark: Benchmark) -> None:
    """Make out_dir the harness's: refuse a folder that holds something else."""
    out_dir = benchmark.out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
        raise RunDirError(f"{out_dir}: exists and is not a raresynth benchmark folder (no {MARKER_FILE}); "
                          "choose another out_dir (nothing was changed)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_FILE).write_text(yaml.safe_dump(benchmark.config.model_dump(mode="json"), sort_keys=False))


def run_benchmark(benchmark: Benchmark, only: Sequence[str] = (), report_only: bool = False, progress_bar: bool = True,
                  log=None, processes: int = 1) -> dict[str, Any]:
    """Train what is missing, measure what is unmeasured, write results and the report; return the results.

    ``only``: variant names (or the name before a sweep's ``--``) to train and measure
    now; the others are reported as they are. ``report_only``: train and measure nothing.
    ``processes``: train each run on this many processes (one per GPU), launched with
    torchrun as a child process; 1 trains in this process.
    """
    from .report import write_report

    check_variant_names(benchmark.runs, only, "--only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("raresynth bench runs as one process and launches the training runs itself: start it without "
                          "torchrun / accelerate launch, and pass --processes N to train each run on N processes (GPUs)")
    log = log or (lambda message: print(f"raresynth bench: {message}", file=sys.stderr, flush=True))
    _claim_out_dir(benchmark)
    config = benchmark.config
    dataset = load_dataset(benchmark.runs[0].config.data, benchmark.registry)
    data_id = dataset_id(dataset)
    refs = benchmark.metric_refs(dataset.spec)
    # Built before any training, so that a missing weights file fails now; one object per
    # metric for the whole benchmark, so real-set features and embeddings are computed once.
    metrics = [] if report_only else build_metrics(_config_with_metrics(benchmark.runs[0].config, refs), dataset.spec,
                                                     benchmark.registry, benchmark.out_dir)
    selected = [] if report_only else [run for run in benchmark.runs if not only or _named(run, only)]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for run in benchmark.runs:
        error = None  # why this invocation's training or measuring failed
        if run in selected:
            where = f"[{selected.index(run) + 1}/{len(selected)}] {run.variant.label}, seed {run.seed}"
            if run.state != "done":
                error = _train_run(run, benchmark.registry, processes, progress_bar, log, where)
            if run.state == "done" and _saved_measurement(run.run_dir, fingerprint(run, refs, config, data_id)) is None:
                try:
                    check_split(dataset, load_split(run.run_dir / "split.json"))
                except RaresynthError as exc:
                    raise RunDirError(f"{run.run_dir}: its data split is not the benchmark's ({exc}); "
                                      f"rerun it with --rerun {run.variant.name}") from None
                log(f"{where}: measuring ({', '.join(name for name, _ in metrics) or 'no metrics'})")
                try:
                    measure(run, dataset, metrics, refs, config, data_id, benchmark.registry)
                except (RaresynthError, RuntimeError, ValueError) as exc:  # recorded; the next invocation measures again
                    error = f"measuring: {' '.join(str(exc).split())}"
                    log(f"{where}: {error}")
        record = records[(run.variant.name, run.seed)] = run_record(run, data_id, refs, config)
        if error:
            record.update(status="failed", error=error)
    grids = write_grids(benchmark, records, selected)
    results = collect_results(benchmark, dataset, data_id, refs, records, grids)
    (benchmark.out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    write_report(results, benchmark.out_dir)
    return results


def _train_run(run: PlannedRun, registry: Registry, processes: int, progress_bar: bool, log, where: str) -> str | None:
    """Train (or resume) one run; ``run.state`` becomes done or failed. Returns the error, if any.

    The error is also left in the run's ``benchmark_error.txt`` (a later report shows it).
    """
    log(f"{where}: " + {"new": "training", "resume": f"resuming {run.detail}", "restart": f"training afresh ({run.detail})"}[run.state])
    for own in (ERROR_FILE, METRICS_FILE):  # the harness's files: stale once training starts again
        (run.run_dir / own).unlink(missing_ok=True)
    try:
        if processes > 1:
            train_in_processes(run, processes, progress_bar)
        else:
            train(run.config, resume=run.state == "resume", overwrite=run.state == "restart", registry=registry, progress_bar=progress_bar)
    except (RaresynthError, RuntimeError, ValueError) as exc:  # diverged, a backend's own error, CUDA out of memory...
        message = " ".join(str(exc).split()) or type(exc).__name__
        run.state = "failed"
        if run.run_dir.is_dir():
            (run.run_dir / ERROR_FILE).write_text(message + "\n")
        log(f"{where}: FAILED: {message}")
        return message
    finally:
        _release_gpu_memory()
    run.state = "done"
    return None


def train_in_processes(run: PlannedRun, processes: int, progress_bar: bool) -> None:
    """Train one run with ``torchrun --standalone --nproc_per_node processes -m raresynth train``.

    The harness stays one process (it measures and reports); a crash of the training
    processes fails this run only. Raises :class:`TrainingError` with the run's error line.
    """
    config_file = run.run_dir.with_name(run.run_dir.name + ".yaml")  # the run's config, for the child processes
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    save_config(run.config, config_file)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "raresynth", "train", str(config_file)]
    command += ["--resume"] if run.state == "resume" else ["--overwrite"] if run.state == "restart" else []
    command += [] if progress_bar else ["--no-progress"]
    try:
        child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        tail: list[str] = []
        errors: list[str] = []  # the CLI's one-line errors ("error: ..."), from any rank
        for line in child.stderr:  # passed through (progress bars); kept for the error message
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-40:]
            if "error: " in line:
                errors.append(line.split("error: ", 1)[1].strip())
        code = child.wait()
    finally:
        config_file.unlink(missing_ok=True)
    if code:
        reason = errors[0] if errors else next((line for line in reversed(tail) if "Error" in line), f"exit code {code}")
        raise TrainingError(f"training on {processes} processes failed: {reason}")


def _config_with_metrics(config: RunConfig, refs: Sequence[PluginRef]) -> RunConfig:
    return config.model_copy(update={"metrics": list(refs)})


def dataset_id(dataset: Dataset) -> str:
    """Twelve hex digits naming the split's content: the same id means the same train and held-out images."""
    digest = hashlib.sha256()
    for image_set in (dataset.train, dataset.held_out):
        digest.update(content_hash(image_set.images, image_set.labels).encode())
    return digest.hexdigest()[:12]


def fingerprint(run: PlannedRun, refs: Sequence[PluginRef], config: BenchmarkConfig, data_id: str) -> dict[str, Any]:
    """What a measurement depends on besides the weights (the checkpoint's name stands for those)."""
    checkpoints = ckpt.list_checkpoints(run.run_dir / "checkpoints")
    return {
        "checkpoint": checkpoints[-1].name if checkpoints else None,
        "data_id": data_id,
        "metrics": [ref.plain() for ref in refs],
        "synthetic_images": config.synthetic_images,
        "sampling_seed": config.sampling_seed,
        "sample_options": run.variant.sample,
    }


def _saved_measurement(run_dir: Path, expected: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    path = run_dir / METRICS_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if expected is not None and saved.get("fingerprint") != json.loads(json.dumps(expected)):
        return None
    return saved


def measure(run: PlannedRun, dataset: Dataset, metrics, refs: Sequence[PluginRef], config: BenchmarkConfig, data_id: str,
            registry: Registry) -> dict[str, Any]:
    """Sample the run's synthetic set from its latest checkpoint and compute every metric into its run dir."""
    start = time.perf_counter()
    generator, _, _, _ = load_run_generator(run.run_dir, registry=registry)
    synthetic = synthetic_like_train(generator, dataset, config.synthetic_images, config.sampling_seed, run.variant.sample_params)
    del generator
    _release_gpu_memory()  # the next run's training processes need the GPU memory, not this process's cache
    for _, metric in metrics:
        metric.output_dir = run.run_dir / "metrics"
    values = compute_metrics(metrics, dataset, synthetic)
    saved = {"fingerprint": fingerprint(run, refs, config, data_id), "values": values, "seconds": time.perf_counter() - start}
    path = run.run_dir / METRICS_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(saved, indent=1, default=_json_default) + "\n")
    os.replace(temporary, path)
    return saved


def _release_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def training_figures(run_dir: Path) -> dict[str, Any]:
    """kimg reached, training seconds (summed over resumed sessions), overall img/s and peak memory, from log.jsonl."""
    figures: dict[str, Any] = {"kimg": 0.0, "train_seconds": None, "img_per_s": None, "peak_mem_gib": None, "processes": None}
    try:
        lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return figures
    seconds, previous, peak = 0.0, 0.0, None
    for line in lines:
        kimg = float(line.get("kimg", previous))
        if kimg < previous:  # a restart appended to an older log: count from zero again
            seconds, previous = 0.0, 0.0
        seconds += float(line.get("sec_per_kimg", 0.0)) * (kimg - previous)
        previous = kimg
        if "peak_mem_gib" in line:
            peak = max(peak or 0.0, float(line["peak_mem_gib"]))
        figures["processes"] = line.get("processes", figures["processes"])
    figures.update(kimg=previous, train_seconds=seconds if lines else None, peak_mem_gib=peak,
                   img_per_s=previous * 1000 / seconds if seconds > 0 else None)
    return figures


def run_record(run: PlannedRun, data_id: str, refs: Sequence[PluginRef], config: BenchmarkConfig) -> dict[str, Any]:
    """The run's entry in results.json, from what its folder holds.

    Values only from a measurement with the benchmark's current metrics, sampling and
    data: a run measured otherwise shows none until it is measured again.
    """
    record: dict[str, Any] = {"seed": run.seed, "run_dir": str(run.run_dir), "status": "done" if run.state == "done" else "pending",
                              "error": None, "metrics_seconds": None, "values": {}, "catalog": {}}
    record.update(training_figures(run.run_dir))
    error_file = run.run_dir / ERROR_FILE
    if run.state != "done" and error_file.is_file():
        record.update(status="failed", error=error_file.read_text().strip())
    saved = _saved_measurement(run.run_dir, fingerprint(run, refs, config, data_id)) if run.state == "done" else None
    if saved is not None:
        record["values"] = {name: entry["value"] for name, entry in saved["values"].items()}
        record["catalog"] = {name: {k: v for k, v in entry.items() if k != "value"} for name, entry in saved["values"].items()}
        record["metrics_seconds"] = saved.get("seconds")
    return record


def write_grids(benchmark: Benchmark, records: Mapping[tuple[str, int], dict[str, Any]], selected: Sequence[PlannedRun]) -> dict[str, str]:
    """One sample grid per variant (its first finished seed), the same seeds and labels for every variant."""
    grids: dict[str, str] = {}
    selected_ids = {id(run) for run in selected}
    for variant in benchmark.variants:
        path = benchmark.out_dir / "grids" / f"{variant.name}.png"
        done = [run for run in benchmark.runs if run.variant is variant and records[(variant.name, run.seed)]["status"] == "done"]
        if done and (id(done[0]) in selected_ids or not path.is_file()):
            generator, _, _, _ = load_run_generator(done[0].run_dir, registry=benchmark.registry)
            seeds = list(range(benchmark.config.grid_size))
            save_grid(generator.sample(seeds, cycled_labels(generator.spec, len(seeds)), variant.sample_params).float().cpu(), path)
            del generator
            _release_gpu_memory()
        if done and path.is_file():
            grids[variant.name] = str(path.relative_to(benchmark.out_dir))
    return grids


def collect_results(benchmark: Benchmark, dataset: Dataset, data_id: str, refs: Sequence[PluginRef],
                    records: Mapping[tuple[str, int], dict[str, Any]], grids: Mapping[str, str]) -> dict[str, Any]:
    """Everything the report shows, as plain data (``results.json``)."""
    config = benchmark.config
    out_dir = benchmark.out_dir
    catalog: dict[str, dict[str, Any]] = {}
    variants = []
    for variant in benchmark.variants:
        runs = [run for run in benchmark.runs if run.variant is variant]
        first = runs[0].config
        entries = []
        for run in runs:
            record = dict(records[(variant.name, run.seed)])
            for name, info in record.pop("catalog", {}).items():
                catalog.setdefault(name, {"metric": info["metric"], "higher_is_better": info["higher_is_better"],
                                          "dataset_specific": name.endswith("_domain")})
            record["run_dir"] = str(Path(record["run_dir"]).relative_to(out_dir)) if Path(record["run_dir"]).is_relative_to(out_dir) else record["run_dir"]
            entries.append(record)
        variants.append({
            "name": variant.name, "label": variant.label, "description": variant.description,
            "generator": first.generator.name,
            "regularizers": [_describe_ref(ref) for ref in variant.config.get("regularizers", [])],
            "settings": variant.settings, "batch_size": first.batch_size, "precision": first.precision,
            "sample_options": variant.sample, "grid": grids.get(variant.name), "runs": entries,
        })
    notes = []
    if "frd" not in benchmark.registry.names("metric") and config.metrics == "default":
        notes.append("frd (Fréchet Radiomics Distance) is not installed: pip install 'raresynth[frd]' to add it to the default metrics")
    spec = dataset.spec
    return {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": benchmark.config_file,
        "environment": environment(),
        "data": {"format": dataset.format, "source": benchmark.runs[0].config.data.source, "resolution": spec.resolution,
                 "channels": spec.channels, "class_names": list(spec.class_names), "num_train": len(dataset.train),
                 "num_held_out": len(dataset.held_out), "split_id": data_id},
        "budget_kimg": benchmark.runs[0].config.budget.kimg,
        "seeds": list(config.seeds),
        "synthetic_images": config.synthetic_images or len(dataset.train),
        "sampling_seed": config.sampling_seed,
        "metrics": [ref.plain() for ref in refs],
        "notes": notes,
        "values": catalog,
        "variants": variants,
    }


def _describe_ref(ref: Mapping[str, Any]) -> str:
    """``r1(gamma=auto)``: a plugin and the options the config sets (defaults left out)."""
    options = ", ".join(f"{key}={_short(value)}" for key, value in ref.items() if key != "name")
    return f"{ref['name']}({options})"


def environment() -> dict[str, str]:
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    else:
        device = f"CPU {platform.machine()} x {torch.get_num_threads()} threads"
    return {"raresynth": __version__, "torch": torch.__version__, "python": platform.python_version(), "device": device}


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

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
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field, field_validator

from ..config import (
    EvaluationConfig,
    PluginRef,
    RunConfig,
    apply_overrides,
    format_validation_error,
    is_labels_file,
    load_config,
    read_yaml,
    set_dotted,
    validate_params,
)
from ..errors import ConfigError, RunDirError
from ..registry import Registry
from ..training import checkpoint as ckpt
from ..files import LOCK_NAME
from ..training.rundir import JOB_LOGS, config_differences, logged_train_seconds

#: Run-config fields a variant may not set, and where they belong instead.
SHARED_FIELDS = {
    "data": "every variant trains on the same data: set it in base.data",
    "budget": "every variant gets the same budget: set it in base.budget",
    "seed": "set the list of seeds in the benchmark's top-level 'seeds'",
    "run_dir": "the harness puts each run in <out_dir>/runs/<variant>/seed-<n>",
    "metrics": "every run is measured the same way: set the benchmark's top-level 'metrics'",
    "evaluation": "every run is measured the same way: set the benchmark's top-level 'evaluation'",
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
    evaluation: EvaluationConfig = EvaluationConfig()  # reference rows and half-samples for intervals and tests
    executor: Literal["local", "slurm", "ray"] = "local"  # where runs train: here, SLURM jobs, Ray tasks (--executor)
    executor_options: dict[str, Any] = Field(default_factory=dict)  # see raresynth.bench.executors.ExecutorOptions

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
    data_section = config.base.get("data") if isinstance(config.base.get("data"), Mapping) else {}
    for key in ("source", "labels"):  # files named relative to the benchmark file
        value = data_section.get(key)
        if isinstance(value, str) and (key == "source" or is_labels_file(value)) and not Path(value).expanduser().is_absolute():
            config.base["data"][key] = os.path.normpath(path.resolve().parent / value)
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
    return key not in ("budget.kimg", "budget.minutes", "run_dir") and not key.startswith("schedule.")


def _out_of_time(run_dir: Path, nimg: int, minutes: float | None) -> bool:
    """Whether the run stopped at ``nimg`` because its ``budget.minutes`` ran out (its log says so)."""
    return bool(minutes) and logged_train_seconds(run_dir, nimg) >= minutes * 60


def run_state(run: PlannedRun, rerun: bool = False) -> tuple[str, str]:
    """``(state, detail)``: new, resume (from some kimg), done, or restart (an earlier try left no checkpoint)."""
    run_dir = run.run_dir
    if not run_dir.exists() or not any(p.name not in (JOB_LOGS, LOCK_NAME, ERROR_FILE) for p in run_dir.iterdir()):
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
    if _out_of_time(run_dir, nimg, run.config.budget.minutes):
        return "done", f"{nimg / 1000:g} kimg in {run.config.budget.minutes:g} minutes"
    return "resume", f"from {nimg / 1000:g} kimg"

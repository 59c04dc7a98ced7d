"""Running a planned benchmark: train each run (here or on N processes), measure it, collect the results and write the report."""

from __future__ import annotations

import hashlib
import math
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import (
    PluginRef,
    RunConfig,
    save_config,
    unknown_plugin_names,
    validate_params,
)
from ..data.dataset import Dataset, check_split, load_dataset, load_split
from ..data.images import save_grid
from ..errors import (
    ConfigError,
    RaresynthError,
    RunDirError,
    TrainingError,
    did_you_mean,
)
from ..evaluation.evaluate import with_replicates
from ..evaluation.features import content_hash
from ..evaluation.imagesets import sample_image_set
from ..evaluation.references import REAL, informative, measure_references, reference_key
from ..evaluation.statistics import ALPHA, TEST_METHOD, RunValue, compare, score
from ..interfaces import DataSpec
from ..registry import Registry, get_registry
from ..training import checkpoint as ckpt
from ..training.loop import (
    build_metrics,
    cycled_labels,
    synthetic_like_train,
    train,
)
from ..training.rundir import read_data_spec
from ..training.sampling import load_run_generator
from ..version import __version__
from .plan import (
    ERROR_FILE,
    MARKER_FILE,
    METRICS_FILE,
    BenchmarkConfig,
    PlannedRun,
    Variant,
    _named,
    _short,
    check_variant_names,
    default_metrics,
    load_benchmark,
    plan,
    run_state,
)
from .report import write_report

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
    references = benchmark_references(benchmark, dataset, refs, metrics, compute=not report_only, log=log)
    results = collect_results(benchmark, dataset, data_id, refs, records, grids, references)
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
        "resamples": config.evaluation.resamples,
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
    values = with_replicates(metrics, dataset.train, dataset.held_out, synthetic, config.evaluation.resamples, seed=run.seed)
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
        record["replicates"] = {name: entry["replicates"] for name, entry in saved["values"].items() if entry.get("replicates")}
        record["catalog"] = {name: {k: v for k, v in entry.items() if k not in ("value", "replicates", "interval")}
                             for name, entry in saved["values"].items()}
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
            save_grid(sample_image_set(generator, len(seeds), cycled_labels(generator.spec, len(seeds)), 0, options=variant.sample_params).images, path)
            del generator
            _release_gpu_memory()
        if done and path.is_file():
            grids[variant.name] = str(path.relative_to(benchmark.out_dir))
    return grids


REFERENCES_FILE = "references.json"  # in out_dir: the reference rows as last measured, for --report-only


def benchmark_references(benchmark: Benchmark, dataset: Dataset, refs: Sequence[PluginRef], metrics, compute: bool,
                         log=None) -> dict[str, Any] | None:
    """The reference rows (real held-out, copies, noise) for this benchmark's metrics and synthetic-set size.

    Measured with the benchmark's own metric objects (so real-set features are shared),
    cached per dataset (:func:`raresynth.evaluation.references.measure_references`) and
    kept in ``out_dir/references.json``, which ``--report-only`` reads instead of measuring.
    """
    config = benchmark.config
    if not config.evaluation.references:
        return None
    n = config.synthetic_images or len(dataset.train)
    labels = dataset.train.labels[torch.arange(n) % len(dataset.train)] if dataset.train.labels is not None else None  # as synthetic_like_train
    key = reference_key(dataset.train, dataset.held_out, [ref.plain() for ref in refs], n, labels, config.evaluation.resamples, config.sampling_seed)
    path = benchmark.out_dir / REFERENCES_FILE
    if not compute or not metrics:
        try:
            saved = json.loads(path.read_text())
            return saved["references"] if saved.get("key") == key else None
        except (OSError, ValueError, KeyError):
            return None
    references = measure_references(metrics, [ref.plain() for ref in refs], dataset.train, dataset.held_out, n, labels,
                                    config.evaluation.resamples, config.sampling_seed, log=log)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps({"key": key, "references": references}, indent=1) + "\n")
    os.replace(partial, path)
    return references


def value_comparisons(variants: Sequence[Mapping[str, Any]], catalog: Mapping[str, Mapping[str, Any]],
                      references: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """For each ranked value: the best variant (by its ideal) and a test of it against every other variant."""
    real_row = (references or {}).get(REAL, {})
    out: dict[str, dict[str, Any]] = {}
    for name, info in catalog.items():
        ideal = info.get("ideal", "none")
        real = real_row.get(name, {}).get("value")
        if ideal == "none" or (ideal == "real" and real is None):
            continue
        samples = {}
        for variant in variants:
            runs = [RunValue(float(run["values"][name]), (run.get("replicates") or {}).get(name, []))
                    for run in variant["runs"] if run["status"] == "done" and run["values"].get(name) is not None]
            if runs and all(math.isfinite(r.value) for r in runs):
                samples[variant["name"]] = runs
        if len(samples) < 2:
            continue
        scores = {v: sum(score(r.value, ideal, real) for r in runs) / len(runs) for v, runs in samples.items()}
        best = max(scores, key=scores.get)
        tests = {}
        for other, runs in samples.items():
            if other != best:
                result = compare(samples[best], runs, ideal, real)
                tests[other] = {"difference": result.difference, "p_value": result.p_value, "significant": result.significant,
                                "seeds": [len(samples[best]), len(runs)]}
        out[name] = {"best": best, "tests": tests}
    return out


def collect_results(benchmark: Benchmark, dataset: Dataset, data_id: str, refs: Sequence[PluginRef],
                    records: Mapping[tuple[str, int], dict[str, Any]], grids: Mapping[str, str],
                    references: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
                                          "ideal": info.get("ideal", "none"), "question": info.get("question", "fidelity"),
                                          "must_beat": info.get("must_beat", ["noise"]), "dataset_specific": name.endswith("_domain")})
            record["run_dir"] = str(Path(record["run_dir"]).relative_to(out_dir)) if Path(record["run_dir"]).is_relative_to(out_dir) else record["run_dir"]
            entries.append(record)
        variants.append({
            "name": variant.name, "label": variant.label, "description": variant.description,
            "generator": first.generator.name,
            "regularizers": [_describe_ref(ref) for ref in variant.config.get("regularizers", [])],
            "settings": variant.settings, "batch_size": first.batch_size, "precision": first.precision,
            "sample_options": variant.sample, "grid": grids.get(variant.name), "runs": entries,
        })
    if references:
        for name, info in catalog.items():
            verdict, why = informative(info, references, name)
            info["informative"] = verdict
            if why:
                info["uninformative_because"] = why
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
        "references": references,
        "comparisons": value_comparisons(variants, catalog, references),
        "test": {"method": TEST_METHOD, "alpha": ALPHA},
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

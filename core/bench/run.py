"""Running a planned benchmark: train each run (here or on N processes), measure it, collect the results and write the report."""

from __future__ import annotations

import hashlib
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
from ..evaluation.references import informative, measure_references, reference_key
from ..evaluation.statistics import ALPHA, TEST_METHOD
from ..interfaces import DataSpec, Metric
from ..registry import Registry, get_registry
from ..training import checkpoint as ckpt
from ..training.loop import (
    build_metrics,
    cycled_labels,
    synthetic_labels,
    synthetic_like_train,
    train,
)
from ..files import DirectoryLock, write_text_atomic
from ..training.rundir import JOB_LOGS, RunManifest, read_data_spec
from ..training.sampling import load_run_generator
from ..version import __version__
from .executors import (
    JOBS_FILE,
    PASSED_ENV,
    Executor,
    ExecutorOptions,
    Job,
    TrainJob,
    executor_options,
    log_tail,
    make_executor,
    train_command,
    wait_for,
)
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
from .report import comparisons, write_report

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

    def build_metrics(self, dataset: Dataset, out_dir: Path) -> list[tuple[str, Metric]]:
        """One object per metric of :meth:`metric_refs`, for the whole benchmark (real-set features and embeddings computed once).

        ``out_dir`` is where metrics that write files (the audit's closest-pair grids) put them.
        """
        config = self.runs[0].config.model_copy(update={"metrics": self.metric_refs(dataset.spec)})
        return build_metrics(config, dataset.spec, self.registry, out_dir)


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


def _refuse_foreign_out_dir(benchmark: Benchmark) -> None:
    """Refuse an out_dir that holds something other than a benchmark of the harness's."""
    out_dir = benchmark.out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
        raise RunDirError(f"{out_dir}: exists and is not a raresynth benchmark folder (no {MARKER_FILE}); "
                          "choose another out_dir (nothing was changed)")


def _claim_out_dir(benchmark: Benchmark) -> None:
    """Mark out_dir as the harness's (checked by :func:`_refuse_foreign_out_dir` before the lock is taken)."""
    out_dir = benchmark.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / MARKER_FILE, yaml.safe_dump(benchmark.config.model_dump(mode="json"), sort_keys=False))


def run_benchmark(benchmark: Benchmark, only: Sequence[str] = (), report_only: bool = False, progress_bar: bool = True,
                  log=None, processes: int = 1, executor: str | None = None, executor_options_: Mapping[str, Any] | None = None,
                  confirm=None) -> dict[str, Any]:
    """Train what is missing, measure what is unmeasured, write results and the report; return the results.

    ``only``: variant names (or the name before a sweep's ``--``) to train and measure
    now; the others are reported as they are. ``report_only``: train and measure nothing.
    ``processes``: train each run on this many processes (one per GPU), launched with
    torchrun as a child process; 1 trains in this process.
    ``executor``: ``local`` (train here, one run after another), ``slurm`` or ``ray``
    (one job per run, all submitted at once; see :mod:`raresynth.bench.executors`); default
    the config's ``executor``. ``executor_options_``: over the config's ``executor_options``.
    ``confirm(question) -> bool``: asked on Ctrl-C whether to cancel the submitted jobs
    (default: ask on the terminal).
    """

    check_variant_names(benchmark.runs, only, "--only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("raresynth bench runs as one process and launches the training runs itself: start it without "
                          "torchrun / accelerate launch, and pass --processes N to train each run on N processes (GPUs)")
    log = log or (lambda message: print(f"raresynth bench: {message}", file=sys.stderr, flush=True))
    executor = executor or benchmark.config.executor
    options = executor_options({**benchmark.config.executor_options, **(executor_options_ or {})}, benchmark.config_file or "benchmark")
    if executor != "local" and processes > 1 and options.gpus_per_run not in (0, processes):
        raise ConfigError(f"--processes {processes} with --executor {executor}: each job trains on its gpus_per_run GPUs "
                          f"({options.gpus_per_run}); pass --executor-option gpus_per_run={processes} instead")
    _refuse_foreign_out_dir(benchmark)
    with DirectoryLock(benchmark.out_dir, what="benchmark"):  # one harness per benchmark folder
        _claim_out_dir(benchmark)
        config = benchmark.config
        dataset = load_dataset(benchmark.runs[0].config.data, benchmark.registry)
        data_id = dataset_id(dataset)
        refs = benchmark.metric_refs(dataset.spec)
        # Built before any training, so that a missing weights file fails now; one object per
        # metric for the whole benchmark, so real-set features and embeddings are computed once.
        metrics = [] if report_only else benchmark.build_metrics(dataset, benchmark.out_dir)
        selected = [] if report_only else [run for run in benchmark.runs if not only or _named(run, only)]
        records: dict[tuple[str, int], dict[str, Any]] = {}

        def where(run: PlannedRun) -> str:
            return f"[{selected.index(run) + 1}/{len(selected)}] {run.variant.label}, seed {run.seed}"

        def measure_if_needed(run: PlannedRun) -> str | None:
            """Measure a finished run on this process (unless measured with these settings); the error, if any."""
            if _saved_measurement(run.run_dir, fingerprint(run, refs, config, data_id)) is not None:
                return None
            try:
                check_split(dataset, load_split(run.run_dir / "split.json"))
            except RaresynthError as exc:
                raise RunDirError(f"{run.run_dir}: its data split is not the benchmark's ({exc}); "
                                  f"rerun it with --rerun {run.variant.name}") from None
            log(f"{where(run)}: measuring ({', '.join(name for name, _ in metrics) or 'no metrics'})")
            try:
                measure(run, dataset, metrics, refs, config, data_id, benchmark.registry)
            except (RaresynthError, RuntimeError, ValueError) as exc:  # recorded; the next invocation measures again
                error = f"measuring: {' '.join(str(exc).split())}"
                log(f"{where(run)}: {error}")
                return error
            return None

        errors: dict[tuple[str, int], str] = {}  # why this invocation's training or measuring failed
        to_train = [run for run in selected if run.state != "done"]
        references: dict[str, Any] = {}

        def references_while_jobs_train() -> None:  # the harness would only wait: measure the reference rows meanwhile
            try:
                references["rows"] = benchmark_references(benchmark, dataset, refs, metrics, compute=True, log=log)
            except (RaresynthError, RuntimeError, ValueError) as exc:  # the jobs go on; tried again once they end
                log(f"reference rows: {' '.join(str(exc).split())}; measuring them again after the jobs")

        if executor != "local" and to_train:  # one job per run, measured here as each one ends
            errors = train_as_jobs(benchmark, to_train, executor, options, processes, log, where, measure_if_needed, confirm,
                                   while_waiting=references_while_jobs_train if metrics else None)
        for run in benchmark.runs:
            error = errors.get((run.variant.name, run.seed))
            if run in selected:
                if run.state not in ("done", "failed"):
                    error = _train_run(run, benchmark.registry, processes, progress_bar, log, where(run))
                if run.state == "done" and error is None:  # (a job's run is measured as its job ends)
                    error = measure_if_needed(run)
            record = records[(run.variant.name, run.seed)] = run_record(run, data_id, refs, config)
            if error:
                record.update(status="failed", error=error)
        grids = write_grids(benchmark, records, selected)
        if "rows" not in references:
            references["rows"] = benchmark_references(benchmark, dataset, refs, metrics, compute=not report_only, log=log)
        results = collect_results(benchmark, dataset, data_id, refs, records, grids, references["rows"])
        write_text_atomic(benchmark.out_dir / "results.json", json.dumps(results, indent=1, default=_json_default) + "\n")
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
            _write_own(run.run_dir, ERROR_FILE, message + "\n")
        log(f"{where}: FAILED: {message}")
        return message
    finally:
        _release_gpu_memory()
    run.state = "done"
    return None


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _load_jobs(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
        return dict(saved["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal: leave the jobs running (a re-run re-attaches to them)
        return False


def train_as_jobs(benchmark: Benchmark, runs: Sequence[PlannedRun], name: str, options: ExecutorOptions, processes: int,
                  log, where, on_done, confirm=None, while_waiting=None) -> dict[tuple[str, int], str]:
    """Train ``runs`` as one job each on the ``name`` executor; measure each (``on_done``) as soon as its job ends.

    ``while_waiting()``, when given, runs once after every job is submitted, before the
    first wait: work of the harness's own (the reference rows) done while the jobs train.

    Re-attaches to a job an earlier harness submitted and that still runs (by its id in
    ``out_dir/jobs.json``), submits the others. A job that ends without the run reaching
    its budget fails the run, with its log tail in ``benchmark_error.txt``. On Ctrl-C,
    ``confirm`` (default: a question on the terminal) decides whether the jobs still
    running are cancelled. Returns the errors by (variant, seed); each run's ``state``
    becomes done or failed.
    """
    executor: Executor = make_executor(name, options, benchmark.out_dir)
    path = benchmark.out_dir / JOBS_FILE
    jobs = _load_jobs(path)
    job_processes = options.gpus_per_run or processes  # one process per GPU; without GPUs, --processes CPU ranks
    cwd = os.getcwd()
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    errors: dict[tuple[str, int], str] = {}
    active: dict[str, tuple[PlannedRun, Job]] = {}

    def save() -> None:  # the harness is the only writer of out_dir, so of jobs.json
        write_text_atomic(path, json.dumps({"executor": name, "runs": jobs}, indent=1) + "\n")

    try:
        for run in runs:
            key = f"{run.variant.name}/seed-{run.seed}"
            old = jobs.get(key) or {}
            job = None
            if old.get("status") == "submitted" and old.get("executor") == name and executor.reattaches and run.detail != "--rerun":
                job = executor.attach(str(old["job_id"]), Path(old["log"]))
                if job is not None:
                    log(f"{where(run)}: re-attached to job {job.id} (submitted {old.get('submitted')})")
            if job is None:
                for own in (ERROR_FILE, METRICS_FILE):  # the harness's files: stale once training starts again
                    (run.run_dir / own).unlink(missing_ok=True)
                logs = run.run_dir / JOB_LOGS
                logs.mkdir(parents=True, exist_ok=True)
                config_file = logs / "config.yaml"  # what the job trains (the run writes its own config.yaml)
                save_config(run.config, config_file)
                log_file = logs / f"train-{_utc_stamp()}.log"
                train_job = TrainJob(str(config_file), str(run.run_dir), str(log_file), job_processes, cwd,
                                     overwrite=run.detail == "--rerun", env=env)
                job = executor.submit(train_job, f"raresynth-{benchmark.config.name}-{key}".replace(" ", "_"))
                jobs[key] = {"executor": name, "job_id": job.id, "status": "submitted", "submitted": _utc_stamp(),
                             "attempt": int(old.get("attempt", 0)) + 1, "log": str(log_file), "processes": job_processes,
                             "command": train_command(config_file, run.run_dir, job_processes, train_job.overwrite)}
                save()
                log(f"{where(run)}: {'resubmitted' if old else 'submitted'} as {name} job {job.id} (log: {log_file})")
            active[key] = (run, job)
        if while_waiting is not None and active:
            while_waiting()
        while active:
            ended = wait_for(executor, [job for _, job in active.values()], options.poll_seconds)
            for key, (run, job) in list(active.items()):
                if job not in ended:
                    continue
                del active[key]
                code = executor.exit_code(job)
                run.state, run.detail = run_state(run)
                if run.state == "done":
                    jobs[key].update(status="done", ended=_utc_stamp())
                    save()
                    log(f"{where(run)}: job {job.id} finished ({run.detail})")
                    error = on_done(run)
                else:
                    tail = log_tail(Path(cwd, jobs[key]["log"]))
                    lines = [line.split("error: ", 1)[1].strip() for line in tail.splitlines() if "error: " in line]
                    reason = lines[0] if lines else next((line for line in reversed(tail.splitlines()) if "Error" in line),
                                                         f"exit code {code}" if code is not None else "the run did not reach its budget")
                    error = f"job {job.id} failed: {reason} (log: {jobs[key]['log']})"
                    jobs[key].update(status="failed", ended=_utc_stamp(), error=error, log_tail=tail)
                    save()
                    run.state = "failed"
                    run.run_dir.mkdir(parents=True, exist_ok=True)
                    _write_own(run.run_dir, ERROR_FILE, error + "\n" + tail + "\n")
                    log(f"{where(run)}: FAILED: {error}")
                if error:
                    errors[(run.variant.name, run.seed)] = error
    except KeyboardInterrupt:
        running = [(key, job) for key, (_, job) in active.items()]
        if running and (confirm or _ask)(f"\ncancel the {len(running)} {name} job(s) this benchmark submitted? [y/N] "):
            for key, job in running:
                executor.cancel(job)
                jobs[key].update(status="cancelled", ended=_utc_stamp())
            save()
            log(f"cancelled {len(running)} job(s)")
        elif running:
            log(f"left {len(running)} job(s) running: run the same command again to re-attach to them")
        raise
    finally:
        executor.close()
    return errors


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
    _write_own(run.run_dir, METRICS_FILE, json.dumps(saved, indent=1, default=_json_default) + "\n")
    return saved


def _write_own(run_dir: Path, name: str, text: str) -> None:
    """Write one of the harness's files into a run directory, atomically, listed in the run's manifest first."""
    manifest = RunManifest.load(run_dir)
    if manifest is not None:
        manifest.add(name)
    write_text_atomic(run_dir / name, text)


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
        error, _, tail = error_file.read_text().strip().partition("\n")  # a job's error: one line, then its log tail
        record.update(status="failed", error=error, log_tail=tail or None)
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
    labels = synthetic_labels(dataset, n)
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
    write_text_atomic(path, json.dumps({"key": key, "references": references}, indent=1) + "\n")
    return references


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
            "memorization_pairs": _pair_grids(out_dir, runs, records, variant.name),
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
    results = {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": benchmark.config_file,
        "environment": environment(),
        "data": {"format": dataset.format, "source": benchmark.runs[0].config.data.source, "resolution": spec.resolution,
                 "channels": spec.channels, "class_names": list(spec.class_names), "num_train": len(dataset.train),
                 "num_held_out": len(dataset.held_out), "split_id": data_id},
        "budget_kimg": benchmark.runs[0].config.budget.kimg,
        "budget_minutes": benchmark.runs[0].config.budget.minutes,
        "seeds": list(config.seeds),
        "synthetic_images": config.synthetic_images or len(dataset.train),
        "sampling_seed": config.sampling_seed,
        "metrics": [ref.plain() for ref in refs],
        "notes": notes,
        "values": catalog,
        "variants": variants,
        "references": references,
        "test": {"method": TEST_METHOD, "alpha": ALPHA},
    }
    results["comparisons"] = comparisons(results)
    return results


def _pair_grids(out_dir: Path, runs: Sequence[PlannedRun], records: Mapping[tuple[str, int], dict[str, Any]], name: str) -> list[str]:
    """The memorization audit's closest-pair grids of the variant's first measured run, relative to out_dir."""
    for run in runs:
        if records[(name, run.seed)]["status"] == "done" and records[(name, run.seed)]["values"]:
            found = sorted((run.run_dir / "metrics").glob("memorization_*_pairs.png"))
            return [str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p) for p in found]
    return []


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

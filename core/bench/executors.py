"""Where a benchmark's training runs execute: here (``local``), as SLURM jobs (``slurm``, through submitit) or as Ray tasks (``ray``).

An :class:`Executor` knows four things: submit one planned run as a job, say whether a
job has ended, cancel it, and re-attach to a job a previous harness submitted (by the id
recorded in ``out_dir/jobs.json``). Everything else stays with the harness
(:mod:`raresynth.bench.run`): it is the single writer of ``out_dir`` (it holds the
benchmark's :class:`~raresynth.files.DirectoryLock`), it writes ``jobs.json``, and it
measures each run on the head process once its job has ended, with one set of metric
objects for the whole benchmark (real-set features, the domain embedding and the
reference rows are computed once, not once per job).

A job writes only its own run directory: the training run, and its logs in
``<run_dir>/job_logs/``. What a job does (:class:`TrainJob`) is decided when it starts,
from the run directory it finds: continue from the newest checkpoint (``--resume``),
start afresh over a run that stopped before its first checkpoint (``--overwrite``), or
start. So a job that SLURM preempts and requeues, or that the harness resubmits after it
died, continues from its last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from pydantic import Field

from ..config import format_validation_error
from ..errors import ConfigError, RaresynthError
from ..files import LOCK_NAME
from ..training import checkpoint as ckpt
from ..training.rundir import JOB_LOGS

EXECUTORS = ("local", "slurm", "ray")
JOBS_FILE = "jobs.json"  # in out_dir: the job of each run, as the harness last saw it
# Variables a job needs to load the same plugins as the harness (a test suite's fixture plugins, say).
PASSED_ENV = ("PYTHONPATH", "RARESYNTH_PLUGINS", "RARESYNTH_PLUGIN_MODULES")


# ---------------------------------------------------------------------------
# What runs inside a job
# ---------------------------------------------------------------------------


def train_command(config_file: Path, run_dir: Path, processes: int, overwrite: bool = False) -> list[str]:
    """``python -m raresynth train CONFIG`` (or torchrun on ``processes``), with the flag the run directory calls for."""
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    else:
        command = [sys.executable]
    command += ["-m", "raresynth", "train", str(config_file), "--no-progress"]
    entries = [p for p in run_dir.iterdir() if p.name not in (LOCK_NAME, JOB_LOGS)] if run_dir.is_dir() else []
    if overwrite and entries:
        return command + ["--overwrite"]
    if ckpt.list_checkpoints(run_dir / "checkpoints"):
        return command + ["--resume"]
    return command + (["--overwrite"] if entries else [])


@dataclass
class TrainJob:
    """The callable a job runs: train one run in a child process, its output appended to ``log_file``.

    Returns the child's exit code. ``overwrite``: the run was asked to start afresh
    (``--rerun``); only when no checkpoint of this job's own attempt exists yet does it
    overwrite, so a requeued job still resumes.
    """

    config_file: str
    run_dir: str
    log_file: str
    processes: int = 1
    cwd: str = "."
    overwrite: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> int:
        run_dir = Path(self.cwd, self.run_dir)
        started = Path(self.cwd, self.log_file).with_suffix(".started")
        overwrite = self.overwrite and not started.exists()  # a requeued or resubmitted attempt resumes
        command = train_command(Path(self.cwd, self.config_file), run_dir, self.processes, overwrite)
        log_file = Path(self.cwd, self.log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(" ".join(command) + "\n")  # the job's own marker, in its own run directory
        with open(log_file, "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            return subprocess.call(command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})

    def checkpoint(self) -> Any:
        """submitit calls this on preemption or timeout: requeue the same job (it resumes from its last checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------


@dataclass
class Job:
    """A submitted run: its id (as the engine names it) and the engine's handle, when this process has one."""

    id: str
    log_file: Path
    handle: Any = None


class Executor:
    """Runs training jobs for the harness. Subclasses: :class:`SubmititExecutor`, :class:`RayExecutor`.

    ``local`` has no executor object: the harness trains each run itself, as before.
    """

    name = ""
    reattaches = False  # whether a job submitted by an earlier harness can be found again by its id

    def submit(self, job: TrainJob, name: str) -> Job:
        raise NotImplementedError

    def attach(self, job_id: str, log_file: Path) -> Job | None:
        """The job of that id if it still runs (a harness that died left it), else None."""
        return None

    def done(self, job: Job) -> bool:
        raise NotImplementedError

    def exit_code(self, job: Job) -> int | None:
        """The training process's exit code once done, where the engine reports one (None: unknown)."""
        return None

    def cancel(self, job: Job) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ExecutorOptions(pydantic.BaseModel):
    """``executor_options`` of a benchmark config (or ``--executor-option key=value``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    gpus_per_run: int = Field(1, ge=0)  # GPUs of each job, one training process each (torchrun when > 1); 0: CPU, --processes ranks
    cpus_per_task: int = Field(8, ge=1)  # CPU cores of each job (data loading, the CPU side of training)
    time_limit_min: int = Field(24 * 60, ge=1)  # SLURM: --time; a run that needs longer is requeued and resumes
    partition: str | None = None  # SLURM: --partition
    account: str | None = None  # SLURM: --account
    mem_gb: int | None = Field(None, ge=1)  # SLURM: --mem
    sbatch: dict[str, Any] = Field(default_factory=dict)  # SLURM: further #SBATCH options, e.g. {qos: high, constraint: h100}
    setup: list[str] = Field(default_factory=list)  # SLURM: shell lines before the run starts, e.g. "module load cuda"
    cluster: str = "slurm"  # slurm; local: submitit's LocalExecutor, jobs as processes on this machine (testing a config)
    ray_address: str | None = None  # Ray: the cluster to join ("auto", "ray://head:10001"); None: start a local Ray
    ray_num_cpus: int | None = Field(None, ge=1)  # Ray: CPUs of the local Ray started when ray_address is None
    poll_seconds: float = Field(10.0, gt=0)  # how often the harness looks at its jobs


def executor_options(options: Mapping[str, Any], origin: str) -> ExecutorOptions:
    try:
        parsed = ExecutorOptions.model_validate(dict(options))
    except pydantic.ValidationError as exc:
        lines = format_validation_error(exc, model=ExecutorOptions)
        raise ConfigError("\n".join(f"{origin}: executor_options.{line}" for line in lines)) from None
    if parsed.cluster not in ("slurm", "local"):
        raise ConfigError(f"{origin}: executor_options.cluster: '{parsed.cluster}' is neither slurm nor local")
    return parsed


def make_executor(name: str, options: ExecutorOptions, out_dir: Path) -> Executor:
    if name == "slurm":
        return SubmititExecutor(options)
    if name == "ray":
        return RayExecutor(options)
    raise ConfigError(f"executor '{name}': choose one of {', '.join(EXECUTORS)}")


# ---------------------------------------------------------------------------
# SLURM, through submitit
# ---------------------------------------------------------------------------


class SubmititExecutor(Executor):
    """One SLURM job per run (``cluster: local``: submitit's LocalExecutor, the same path without sbatch)."""

    name = "slurm"
    reattaches = True

    def __init__(self, options: ExecutorOptions):
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor slurm needs submitit: pip install 'raresynth[slurm]'") from None
        self.submitit = submitit
        self.options = options

    def _executor(self, folder: Path) -> Any:
        o = self.options
        if o.cluster == "local":
            executor = self.submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=o.time_limit_min, gpus_per_node=o.gpus_per_run)
            return executor
        try:
            executor = self.submitit.SlurmExecutor(folder=folder)
        except RuntimeError:  # submitit looks for srun
            raise RaresynthError("--executor slurm: no 'srun' on PATH: start raresynth bench on a SLURM login node "
                                 "(or test the config on this machine with --executor-option cluster=local)") from None
        parameters: dict[str, Any] = {
            "time": o.time_limit_min, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": o.cpus_per_task,
            "gpus_per_node": o.gpus_per_run or None, "partition": o.partition, "account": o.account,
            "mem": f"{o.mem_gb}GB" if o.mem_gb else None, "setup": list(o.setup) or None,
            "additional_parameters": {key.replace("_", "-"): value for key, value in o.sbatch.items()} or None,
        }
        executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
        return executor

    def submit(self, job: TrainJob, name: str) -> Job:
        folder = Path(job.cwd, job.log_file).parent
        executor = self._executor(folder / "%j")
        if self.options.cluster == "slurm":
            executor.update_parameters(job_name=name)
        try:
            handle = executor.submit(job)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            raise RaresynthError(f"submitting {name} to SLURM failed: {' '.join(str(exc).split())}") from None
        return Job(str(handle.job_id), Path(job.log_file), handle)

    def attach(self, job_id: str, log_file: Path) -> Job | None:
        if self.options.cluster == "local":  # a LocalExecutor job is a process of this machine: its id is its PID
            return Job(job_id, log_file, None) if _pid_runs(int(job_id)) else None
        handle = self.submitit.SlurmJob(folder=log_file.parent / "%j", job_id=job_id)
        return None if handle.done() else Job(job_id, log_file, handle)

    def done(self, job: Job) -> bool:
        if job.handle is None:
            return not _pid_runs(int(job.id))
        return bool(job.handle.done())

    def cancel(self, job: Job) -> None:
        if job.handle is not None:
            job.handle.cancel(check=False)
        elif _pid_runs(int(job.id)):
            os.kill(int(job.id), 2)  # SIGINT, as submitit's LocalJob.cancel


def _pid_runs(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a job a previous harness started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# ---------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------


def _run_train_job(job: TrainJob) -> int:
    return job()


class RayExecutor(Executor):
    """One Ray task per run with ``num_gpus = gpus_per_run``.

    A task belongs to the driver that submitted it: when the harness dies its tasks end
    too, so a re-run resubmits the unfinished runs (each resumes from its last
    checkpoint) instead of re-attaching.
    """

    name = "ray"
    reattaches = False

    def __init__(self, options: ExecutorOptions):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'raresynth[ray]'") from None
        self.ray = ray
        self.options = options
        self._started = False
        if not ray.is_initialized():
            env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False}
            if options.ray_address:
                _check_reachable(options.ray_address)
                kwargs["address"] = options.ray_address
            elif options.ray_num_cpus:
                kwargs["num_cpus"] = options.ray_num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RaresynthError(f"--ray-address {options.ray_address or '(a local Ray)'}: cannot connect to Ray: "
                                     f"{' '.join(str(exc).split())}") from None
            self._started = True
        self._task = ray.remote(_run_train_job)

    def submit(self, job: TrainJob, name: str) -> Job:
        ref = self._task.options(num_gpus=self.options.gpus_per_run, num_cpus=min(self.options.cpus_per_task, _cluster_cpus(self.ray)),
                                 max_retries=0, name=name).remote(job)
        return Job(ref.hex(), Path(job.log_file), ref)

    def done(self, job: Job) -> bool:
        ready, _ = self.ray.wait([job.handle], timeout=0)
        return bool(ready)

    def exit_code(self, job: Job) -> int | None:
        try:
            return int(self.ray.get(job.handle, timeout=0))
        except Exception:  # noqa: BLE001 - a cancelled or crashed task: the log says why
            return None

    def cancel(self, job: Job) -> None:
        self.ray.cancel(job.handle, force=True)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` or ``ray://host:port`` address.

    ``ray.init`` would retry a wrong address for minutes before giving up; ``auto`` (the
    cluster started on this machine) is left to Ray, which answers at once.
    """
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RaresynthError(f"--ray-address {address}: cannot connect to Ray: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                             "start the cluster (ray start --head) or correct the address") from None


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def wait_for(executor: Executor, jobs: Sequence[Job], poll_seconds: float) -> list[Job]:
    """Block until at least one of ``jobs`` has ended; return those that have."""
    while True:
        ended = [job for job in jobs if executor.done(job)]
        if ended:
            return ended
        time.sleep(poll_seconds)

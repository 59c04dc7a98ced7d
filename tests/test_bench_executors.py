"""Benchmark runs as jobs: submitit (its LocalExecutor: real jobs as processes; sbatch scripts) and Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import raresynth.bench.run as bench
from helpers import HERE
from raresynth import ConfigError, RaresynthError
from raresynth.bench import prepare_benchmark, run_benchmark
from raresynth.bench.executors import JOBS_FILE, ExecutorOptions, SubmititExecutor, TrainJob, executor_options, train_command

submitit = pytest.importorskip("submitit")
JOB_OPTIONS = {"cluster": "local", "gpus_per_run": 0, "cpus_per_task": 1, "poll_seconds": 0.3}


def write_benchmark(tmp_path, name="out", **changes):
    """Two toy variants, one seed, 16 px, 0.128 kimg: two small real runs."""
    config = {
        "name": "jobs",
        "out_dir": str(tmp_path / name),
        "seeds": [0],
        "base": {
            "data": {"format": "embedded", "resolution": 16, "channels": 1,
                     "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
            "generator": {"name": "toy"},
            "budget": {"kimg": 0.128},
            "batch_size": 8,
            "schedule": {"tick_kimg": 0.064, "snapshot_kimg": 0.064, "keep_checkpoints": 1, "grid_size": 4},
        },
        "variants": {"slow": {"generator": {"lr": 0.01}}, "fast": {"generator": {"lr": 0.2}}},
        "metrics": ["mean_gap"],
        "synthetic_images": 12,
        "evaluation": {"references": False},
    }
    config.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def job_env(monkeypatch):
    """Jobs are other processes: they load the toy plugin through RARESYNTH_PLUGIN_MODULES."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")])))
    monkeypatch.setenv("RARESYNTH_PLUGIN_MODULES", "toy_plugin")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def values_of(results):
    return {(variant["name"], r["seed"]): (r["status"], r["values"]) for variant in results["variants"] for r in variant["runs"]}


def run(path, registry, messages=None, **options):
    log = messages.append if messages is not None else (lambda message: None)
    return run_benchmark(prepare_benchmark(path, registry=registry), progress_bar=False, log=log, **options)


def test_submitit_jobs_give_the_local_executors_results(tmp_path, registry, job_env, one_thread):
    local = run(write_benchmark(tmp_path, "local"), registry)
    messages = []
    jobs = run(write_benchmark(tmp_path, "jobs"), registry, messages, executor="slurm", executor_options_=JOB_OPTIONS)
    assert all(status == "done" for status, _ in values_of(local).values())
    assert values_of(jobs) == values_of(local)  # the same seeds, the same values, trained in other processes
    assert values_of(jobs)[("slow", 0)][1] != values_of(jobs)[("fast", 0)][1]
    recorded = json.loads((tmp_path / "jobs" / JOBS_FILE).read_text())
    assert recorded["executor"] == "slurm" and set(recorded["runs"]) == {"slow/seed-0", "fast/seed-0"}
    for key, job in recorded["runs"].items():
        assert job["status"] == "done" and job["attempt"] == 1
        assert job["command"][1:4] == ["-m", "raresynth", "train"]  # one process: no torchrun
        log = Path(job["log"])
        assert log.parent == tmp_path / "jobs" / "runs" / key / "job_logs" and "run finished at 0.13 kimg" in log.read_text()
    assert sum("submitted as slurm job" in m for m in messages) == 2 and sum("measuring" in m for m in messages) == 2
    # The job logs live in the run directory without making it someone else's folder: the run is reused.
    again = []
    run(write_benchmark(tmp_path, "jobs"), registry, again, executor="slurm", executor_options_=JOB_OPTIONS)
    assert not any("submitted" in m or "measuring" in m for m in again)


def test_the_reference_rows_are_measured_while_the_jobs_train(tmp_path, registry, job_env, one_thread, monkeypatch):
    """The harness would only wait for its jobs: it measures the reference rows meanwhile, once, with the same values."""
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", str(tmp_path / "cache-local"))
    local = run(write_benchmark(tmp_path, "local", evaluation={"references": True, "resamples": 3}), registry)
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", str(tmp_path / "cache-jobs"))  # measured afresh, not read from the cache
    messages = []
    jobs = run(write_benchmark(tmp_path, "jobs", evaluation={"references": True, "resamples": 3}), registry, messages,
               executor="slurm", executor_options_=JOB_OPTIONS)
    rows = [i for i, m in enumerate(messages) if m.startswith("reference rows:")]
    finished = [i for i, m in enumerate(messages) if "finished" in m]
    assert len(rows) == 1 and len(finished) == 2 and rows[0] < finished[0]  # before the first job ended
    assert jobs["references"] == local["references"] and set(jobs["references"]) == {"real", "copies", "noise"}
    assert values_of(jobs) == values_of(local)


def test_a_killed_harness_is_re_attached_to_its_running_jobs(tmp_path, registry, job_env):
    path = write_benchmark(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "raresynth", "bench", str(path), "--no-progress", "--executor", "slurm",
               *(f"--executor-option={key}={value}" for key, value in JOB_OPTIONS.items())]
    harness = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until both jobs are submitted
        try:
            recorded = json.loads((out / JOBS_FILE).read_text())["runs"]
        except (OSError, ValueError, KeyError):
            recorded = {}
        if len(recorded) == 2:
            break
        time.sleep(0.2)
    harness.send_signal(signal.SIGKILL)  # the submitting process dies; its jobs go on
    harness.wait()
    assert len(recorded) == 2 and not (out / "results.json").exists()

    messages = []
    results = run(path, registry, messages, executor="slurm", executor_options_=JOB_OPTIONS)
    assert all(status == "done" for status, _ in values_of(results).values())
    attached = [m for m in messages if "re-attached" in m or "finished" in m and "job" in m]
    recorded_after = json.loads((out / JOBS_FILE).read_text())["runs"]
    for key, job in recorded_after.items():
        assert job["attempt"] == 1 and job["job_id"] == recorded[key]["job_id"]  # nothing submitted twice
        logs = list((out / "runs" / key / "job_logs").glob("train-*.log"))
        assert len(logs) == 1 and logs[0].read_text().count("$ ") == 1  # trained once
    # a job still running was re-attached to; one that had finished was only measured
    assert not any("submitted as" in m or "resubmitted" in m for m in messages) and attached


def test_a_failed_job_is_recorded_with_its_log_tail(tmp_path, registry, monkeypatch, job_env):
    monkeypatch.delenv("RARESYNTH_PLUGIN_MODULES")  # the job cannot find the toy backend
    path = write_benchmark(tmp_path, variants={"slow": {"generator": {"lr": 0.01}}})
    results = run(path, registry, executor="slurm", executor_options_=JOB_OPTIONS)
    record = results["variants"][0]["runs"][0]
    assert record["status"] == "failed"
    assert "unknown generator 'toy'" in record["error"] and "job_logs/train-" in record["error"]
    assert "raresynth train" in record["log_tail"] and "unknown generator 'toy'" in record["log_tail"]
    job = json.loads((tmp_path / "out" / JOBS_FILE).read_text())["runs"]["slow/seed-0"]
    assert job["status"] == "failed" and job["log_tail"] == record["log_tail"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- failed: slow, seed 0" in report and "  ```text" in report

    monkeypatch.setenv("RARESYNTH_PLUGIN_MODULES", "toy_plugin")  # fixed: the next run resubmits and succeeds
    results = run(path, registry, executor="slurm", executor_options_=JOB_OPTIONS)
    assert results["variants"][0]["runs"][0]["status"] == "done"
    assert json.loads((tmp_path / "out" / JOBS_FILE).read_text())["runs"]["slow/seed-0"]["attempt"] == 2


def test_ctrl_c_cancels_the_jobs_it_owns_when_confirmed(tmp_path, registry, monkeypatch, job_env):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "wait_for", interrupted)
    questions = []
    with pytest.raises(KeyboardInterrupt):
        run(write_benchmark(tmp_path), registry, executor="slurm", executor_options_=JOB_OPTIONS,
            confirm=lambda question: questions.append(question) or True)
    assert "cancel the 2 slurm job(s)" in questions[0]
    recorded = json.loads((tmp_path / "out" / JOBS_FILE).read_text())["runs"]
    assert {job["status"] for job in recorded.values()} == {"cancelled"}
    for job in recorded.values():  # each job's process ends
        pid = int(job["job_id"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _runs(pid):
            time.sleep(0.2)
        assert not _runs(pid)


def _runs(pid):
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_sbatch_script_asks_slurm_for_what_the_run_needs(tmp_path, monkeypatch):
    """submitit's real SLURM path, with an ``sbatch`` on PATH that keeps the script it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists before it writes a script
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = executor_options({"partition": "gpu", "gpus_per_run": 2, "cpus_per_task": 16, "time_limit_min": 600,
                                "account": "lab", "mem_gb": 64, "sbatch": {"qos": "high"}, "setup": ["module load cuda/12.4"]}, "b.yaml")
    run_dir = tmp_path / "runs" / "r1" / "seed-0"
    train_job = TrainJob(str(run_dir / "job_logs" / "config.yaml"), str(run_dir), str(run_dir / "job_logs" / "train.log"),
                         processes=2, cwd=str(tmp_path))
    job = SubmititExecutor(options).submit(train_job, "raresynth-r1-seed-0")
    assert job.id == "4242"
    script = (tmp_path / "submitted.sh").read_text()
    sbatch = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH --"))
    assert {key: sbatch[key] for key in ("partition", "gpus-per-node", "cpus-per-task", "time", "account", "mem", "qos",
                                         "nodes", "ntasks-per-node", "job-name")} == {
        "partition": "gpu", "gpus-per-node": "2", "cpus-per-task": "16", "time": "600", "account": "lab", "mem": "64GB",
        "qos": "high", "nodes": "1", "ntasks-per-node": "1", "job-name": "raresynth-r1-seed-0"}
    assert sbatch["output"].startswith(str(run_dir / "job_logs" / "%j"))  # logs under the run directory
    assert sbatch["signal"].startswith("USR2@")  # preemption warning: submitit requeues the job, which resumes
    lines = script.splitlines()
    launch = next(line for line in lines if line.startswith("srun"))
    assert lines.index("module load cuda/12.4") < lines.index(launch)
    assert f"{sys.executable} -u -m submitit.core._submit {run_dir / 'job_logs' / '%j'}" in launch  # SLURM fills in %j
    # what the job then runs on its GPUs: torchrun, one process per GPU; --resume once a checkpoint exists
    command = train_command(run_dir / "job_logs" / "config.yaml", run_dir, 2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert command[6:9] == ["-m", "raresynth", "train"] and "--resume" not in command
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-000000064.safetensors").write_bytes(b"")
    (run_dir / "config.yaml").write_text("seed: 0\n")
    assert train_command(run_dir / "job_logs" / "config.yaml", run_dir, 2)[-1] == "--resume"
    assert hasattr(train_job, "checkpoint")  # submitit requeues checkpointable jobs on preemption


def test_bad_executor_options_are_one_line_errors(tmp_path, registry):
    with pytest.raises(ConfigError, match=r"b\.yaml: executor_options\.gpus_per_runn: unknown field.*gpus_per_run"):
        executor_options({"gpus_per_runn": 1}, "b.yaml")
    path = write_benchmark(tmp_path, executor="sge")
    with pytest.raises(ConfigError, match=r"executor"):
        prepare_benchmark(path, registry=registry)
    assert ExecutorOptions().gpus_per_run == 1
    with pytest.raises(ConfigError, match=r"--processes 4 with --executor slurm: .*gpus_per_run=4"):
        run(write_benchmark(tmp_path), registry, executor="slurm", executor_options_={"gpus_per_run": 1}, processes=4)
    assert not (tmp_path / "out").exists()  # refused before anything was written


RAY_OPTIONS = {"gpus_per_run": 0, "cpus_per_task": 1, "poll_seconds": 0.3}


def meet_in_jobs(monkeypatch, folder: Path, runs: int) -> None:
    """Jobs load the rendezvous plugin: each run waits at its first tick until ``runs`` runs are training."""
    folder.mkdir()
    monkeypatch.setenv("RARESYNTH_PLUGIN_MODULES", "toy_plugin,rendezvous_plugin")
    monkeypatch.setenv("RARESYNTH_TEST_RENDEZVOUS", f"{folder}:{runs}")


def test_ray_tasks_run_in_parallel_and_give_the_local_executors_results(tmp_path, registry, job_env, one_thread, monkeypatch):
    ray = pytest.importorskip("ray")
    local = run(write_benchmark(tmp_path, "local"), registry)
    # Both runs must be training at once to pass their first tick (tests/rendezvous_plugin.py): one
    # after the other, the first would wait for the second in vain and fail.
    meet_in_jobs(monkeypatch, tmp_path / "meet", 2)
    messages = []
    try:
        results = run(write_benchmark(tmp_path, "ray"), registry, messages, executor="ray",
                      executor_options_={**RAY_OPTIONS, "ray_num_cpus": 2})
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert values_of(results) == values_of(local)
    assert len(list((tmp_path / "meet").iterdir())) == 2  # two training processes met
    recorded = json.loads((tmp_path / "ray" / JOBS_FILE).read_text())
    assert recorded["executor"] == "ray" and {job["status"] for job in recorded["runs"].values()} == {"done"}
    assert sum("submitted as ray job" in m for m in messages) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path, job_env, monkeypatch):
    """A Ray head started apart from the test (``ray start --head``), as a lab's cluster is: its address."""
    pytest.importorskip("ray")
    import tempfile

    meet_in_jobs(monkeypatch, tmp_path / "meet", 2)  # the cluster's workers inherit this environment
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rs-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    start = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={temp_dir}"], capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)


def test_a_running_ray_cluster_is_joined_by_its_address(tmp_path, registry, ray_cluster, one_thread, monkeypatch):
    import ray

    monkeypatch.setenv("RARESYNTH_TEST_RENDEZVOUS", "")  # the in-process local run must not wait for anyone
    local = run(write_benchmark(tmp_path, "local"), registry)
    monkeypatch.setenv("RARESYNTH_TEST_RENDEZVOUS", f"{tmp_path / 'meet'}:2")
    try:
        results = run(write_benchmark(tmp_path, "ray"), registry, executor="ray",
                      executor_options_={**RAY_OPTIONS, "ray_address": ray_cluster})
        assert not ray.is_initialized()  # the harness disconnected from the cluster; the cluster lives on
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert values_of(results) == values_of(local)
    assert len(list((tmp_path / "meet").iterdir())) == 2  # both runs trained at once, on the cluster's workers


def test_an_unreachable_ray_address_is_a_one_line_error(tmp_path, registry, job_env):
    pytest.importorskip("ray")
    with pytest.raises(RaresynthError, match=r"--ray-address 127\.0\.0\.1:\d+: cannot connect to Ray") as info:
        run(write_benchmark(tmp_path, "ray"), registry, executor="ray",
            executor_options_={**RAY_OPTIONS, "ray_address": f"127.0.0.1:{_free_port()}"})
    assert "\n" not in str(info.value)


def test_the_guides_executor_options_are_valid(tmp_path, registry):
    text = (HERE.parent / "docs" / "benchmark.md").read_text()
    block = next(part.split("```", 1)[0] for part in text.split("```yaml\n")[1:] if part.startswith("executor:"))
    data = yaml.safe_load(block)
    options = executor_options(data["executor_options"], "docs/benchmark.md")
    assert data["executor"] == "slurm" and options.sbatch == {"qos": "high", "constraint": "h100"}
    path = write_benchmark(tmp_path, **data)  # and a benchmark config takes them
    assert prepare_benchmark(path, registry=registry).config.executor_options["partition"] == "gpu"


def test_a_resubmitted_job_continues_from_the_runs_last_checkpoint(tmp_path, registry, job_env, one_thread):
    path = write_benchmark(tmp_path, variants={"slow": {"generator": {"lr": 0.01}}})
    run(path, registry, executor="slurm", executor_options_=JOB_OPTIONS)
    config = yaml.safe_load(path.read_text())
    config["base"]["budget"]["kimg"] = 0.192  # the run stopped short of the budget: the next job must resume it
    path.write_text(yaml.safe_dump(config))
    results = run(path, registry, executor="slurm", executor_options_=JOB_OPTIONS)
    assert results["variants"][0]["runs"][0]["status"] == "done"
    run_dir = tmp_path / "out" / "runs" / "slow" / "seed-0"
    job = json.loads((tmp_path / "out" / JOBS_FILE).read_text())["runs"]["slow/seed-0"]
    assert job["attempt"] == 2 and job["command"][-1] == "--resume"
    second = Path(job["log"]).read_text()
    assert second.splitlines()[0].endswith("--no-progress --resume") and "run finished at 0.19 kimg" in second
    assert not (run_dir / "trash").exists()  # nothing was started afresh (that would move the old run into trash/)
    assert len(list((run_dir / "job_logs").glob("train-*.log"))) == 2

"""Nothing the user owns is lost (issue 11, the training wing): each case provoked, not assumed.

--overwrite after validation and only on what raresynth wrote, atomic writes under a
kill or a full disk, one writer per run directory, checkpoints with checksums, and
one-line errors for the careless cases.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import HERE
from raresynth.cli import main
from raresynth.config import load_config, read_yaml, save_config
from raresynth.errors import ConfigError, DataError, FileWriteError, LockError, RunDirError, TrainingError
from raresynth.files import LOCK_NAME, DirectoryLock, atomic_path, write_text_atomic
from raresynth.training import checkpoint as ckpt
from raresynth.training import train


def run_toy(toy_config, registry, *overrides, resume=False, overwrite=False, resume_from=None, **changes):
    config = load_config(toy_config(**changes), list(overrides), registry=registry)
    return train(config, resume=resume, overwrite=overwrite, resume_from=resume_from, registry=registry, progress_bar=False)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> content); symbolic links are not followed."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_state(path)["generator"]["net"]


def log_kimgs(run_dir: Path) -> list[float]:
    return [json.loads(line)["kimg"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def finished_run(toy_config, registry, tmp_path):
    """A finished toy run (checkpoints at 64 and 128 images) with the user's notes in it."""
    run_toy(toy_config, registry)
    run_dir = tmp_path / "run"
    (run_dir / "NOTES.txt").write_text("patient 7 looks odd")
    return run_dir


# -- --overwrite ---------------------------------------------------------------


def test_overwrite_with_a_data_error_changes_nothing(finished_run, toy_config, registry, tmp_path):
    before = tree(finished_run)
    with pytest.raises(DataError, match="typo"):
        run_toy(toy_config, registry, "data.format=auto", f"data.source={tmp_path / 'typo'}", overwrite=True)
    assert tree(finished_run) == before  # checkpoints, grids, config, the notes: all as they were
    assert not (finished_run / "trash").exists()


def test_overwrite_moves_the_old_run_into_the_trash_and_leaves_foreign_files(finished_run, toy_config, registry, capsys):
    (finished_run / "samples" / "patient.png").write_bytes(b"not raresynth's")
    before = tree(finished_run)
    run = run_toy(toy_config, registry, "budget.kimg=0.064", overwrite=True)
    assert run.progress.nimg == 64
    (trash,) = (finished_run / "trash").iterdir()
    assert f"moved the previous run's files into {trash}" in capsys.readouterr().err
    moved = tree(trash)
    assert set(moved) == {name for name in before if name not in ("NOTES.txt", "samples/patient.png")}
    assert all(moved[name] == before[name] for name in moved)  # the old run, byte for byte
    after = tree(finished_run)
    assert after["NOTES.txt"] == before["NOTES.txt"] and after["samples/patient.png"] == before["samples/patient.png"]
    assert [p.name for p in ckpt.list_checkpoints(finished_run / "checkpoints")] == ["checkpoint-000000064.safetensors"]
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert "NOTES.txt" not in manifest["files"] and "samples/patient.png" not in manifest["files"]
    assert {"config.yaml", "checkpoints/checkpoint-000000064.safetensors", "samples/grid-000000064.png"} <= set(manifest["files"])
    assert not (finished_run / LOCK_NAME).exists()  # released at the end of the run


def test_overwrite_refuses_files_raresynth_did_not_write(toy_config, registry, tmp_path):
    folder = tmp_path / "run"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "patient.png").write_bytes(b"a patient's image")
    (folder / "config.yaml").write_text("my own config\n")
    (folder / "metrics.json").write_text("{}")
    before = tree(folder)
    with pytest.raises(RunDirError, match=r"--overwrite would replace config.yaml, metrics.json, which raresynth did not write") as excinfo:
        run_toy(toy_config, registry, overwrite=True)
    assert "\n" not in str(excinfo.value)
    assert tree(folder) == before


def test_overwrite_refuses_a_symlinked_checkpoints_folder(finished_run, toy_config, registry, tmp_path):
    elsewhere = tmp_path / "big_disk"
    shutil.move(finished_run / "checkpoints", elsewhere)
    (finished_run / "checkpoints").symlink_to(elsewhere)
    before, outside = tree(finished_run), tree(elsewhere)
    with pytest.raises(RunDirError, match="checkpoints is a symbolic link .*; --overwrite moves only what lies inside run_dir"):
        run_toy(toy_config, registry, overwrite=True)
    assert tree(finished_run) == before and tree(elsewhere) == outside
    assert (finished_run / "checkpoints").is_symlink()


def test_a_run_from_before_manifests_is_adopted_on_resume(finished_run, toy_config, registry):
    (finished_run / "manifest.json").unlink()
    run = run_toy(toy_config, registry, "budget.kimg=0.192", resume=True)
    assert run.progress.nimg == 192
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert {"config.yaml", "log.jsonl", "checkpoints/checkpoint-000000192.safetensors", "samples/grid-000000064.png"} <= set(manifest["files"])
    assert "NOTES.txt" not in manifest["files"]
    # the adopted checkpoint 64 was pruned like the run's own
    assert [p.name for p in ckpt.list_checkpoints(finished_run / "checkpoints")] == [
        "checkpoint-000000128.safetensors", "checkpoint-000000192.safetensors"]


def test_run_dir_that_is_a_file_is_a_one_line_error(toy_config, registry, tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(RunDirError, match="run_dir is a file, not a folder; choose another run_dir"):
        run_toy(toy_config, registry)
    assert (tmp_path / "run").read_text() == "a file"


def test_a_run_killed_before_its_first_checkpoint_gets_the_right_advice(toy_config, registry, tmp_path, capsys):
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        run_toy(toy_config, registry, "generator.nan_at_step=2")
    run_dir = tmp_path / "run"
    assert (run_dir / "config.yaml").is_file() and not ckpt.list_checkpoints(run_dir / "checkpoints")
    with pytest.raises(RunDirError, match="stopped before its first checkpoint") as plain:
        run_toy(toy_config, registry)
    with pytest.raises(RunDirError, match="stopped before its first checkpoint") as resumed:
        run_toy(toy_config, registry, resume=True)
    for message in (str(plain.value), str(resumed.value)):
        assert "stopped before its first checkpoint" in message and "pass --overwrite" in message, message
    assert "--resume" not in str(plain.value)
    run = run_toy(toy_config, registry, overwrite=True)  # as advised
    assert run.progress.nimg == 128
    (trash,) = (run_dir / "trash").iterdir()
    assert (trash / "config.yaml").is_file() and (trash / "log.jsonl").is_file()


# -- atomic writes ---------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old: 1\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # like open(): not a temp file's 0600

    def crash(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(FileWriteError, match=r"config.yaml: could not write it \(Input/output error\); the previous version is unchanged"):
        write_text_atomic(path, "new: 2\n")
    with pytest.raises(FileWriteError, match=r"grid\.png: could not write it \(Input/output error\)"), \
            atomic_path(tmp_path / "grid.png") as temporary:
        temporary.write_bytes(b"png")
    assert path.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary file left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_config_yaml_survives_a_kill_in_the_middle_of_its_write(toy_config, registry, tmp_path):
    """A real interrupted write: the file size limit stops the process mid-write (as SIGKILL or a full disk would)."""
    run_toy(toy_config, registry, "budget.kimg=0.064")
    run_dir = tmp_path / "run"
    saved = (run_dir / "config.yaml").read_bytes()
    assert len(saved) > 400
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from raresynth.config import load_config, save_config\n"
        "config = load_config(sys.argv[1], ['budget.kimg=0.128'])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))\n"
        "save_config(config, Path(sys.argv[1]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE), "RARESYNTH_PLUGIN_MODULES": "toy_plugin"}
    result = subprocess.run([sys.executable, "-c", script, str(run_dir / "config.yaml")], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert (run_dir / "config.yaml").read_bytes() == saved  # the old file, whole
    assert not list(run_dir.glob(".config.yaml.*"))
    run = run_toy(toy_config, registry, resume=True)  # and the run resumes
    assert run.progress.nimg == 128


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(toy_config, registry, tmp_path, monkeypatch, capsys):
    real_save_file = ckpt.save_file
    calls = []

    def fills_the_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:
            return real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 100)  # what fitted before the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", fills_the_disk)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "checkpoint-000000128.safetensors: could not write it (No space left on device)" in err[0]
    assert "the disk is full" in err[0] and "the last good checkpoint is" in err[0] and "checkpoint-000000064" in err[0]
    run_dir = tmp_path / "run"
    (good,) = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert ckpt.load_training_state(good)["progress"]["nimg"] == 64  # intact, checksum and all
    assert not list((run_dir / "checkpoints").glob(".*"))  # the torn temporary file is gone
    monkeypatch.setattr(ckpt, "save_file", real_save_file)  # space freed: the run resumes
    assert main(["train", str(config_path), "--resume", "--no-progress"]) == 0


@pytest.mark.parametrize("message", [
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
    "Error while serializing: IoError(No space left on device)",  # each of the three signs alone is enough
    "I/O error: os error 28",
    "Error while serializing: IoError(Custom { kind: StorageFull })",
])
def test_a_full_disk_reported_by_safetensors_itself_is_one_line(tmp_path, monkeypatch, message):
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError(message)

    path = tmp_path / "checkpoint-000000064.safetensors"
    ckpt.save_state({"x": torch.ones(3)}, path)
    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(FileWriteError, match="the previous version is unchanged; the disk is full") as excinfo:
        ckpt.save_state({"x": torch.zeros(3)}, path)
    assert "\n" not in str(excinfo.value)
    assert torch.equal(ckpt.load_state(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_another_write_error_from_safetensors_is_not_called_a_full_disk(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def denied(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: IoError(Os { code: 13, kind: PermissionDenied })")

    monkeypatch.setattr(ckpt, "save_file", denied)
    with pytest.raises(FileWriteError, match=r"kind: PermissionDenied \}\)\); check the folder and run again$"):
        ckpt.save_state({"x": torch.zeros(3)}, tmp_path / "checkpoint-000000064.safetensors")


def test_sample_output_is_written_atomically(toy_config, registry, tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "budget.kimg=0.064", "--no-progress"]) == 0
    out = tmp_path / "out"
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--out", str(out)]) == 0
    before = tree(out)
    real_replace = os.replace

    def fails_for_the_manifest(source, target):
        if Path(target).name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fails_for_the_manifest)
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--seed", "0", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: could not write it (No space left on device); the previous version is unchanged" in err[0]
    assert tree(out) == before  # the same seeds gave the same PNGs; the old manifest is whole; no temporary file


def test_an_os_error_anywhere_in_a_command_is_one_line(toy_config, registry, tmp_path, monkeypatch, capsys):
    from raresynth.training import loop

    def disk_full(self, line):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "log.jsonl"))

    monkeypatch.setattr(loop.RunLogger, "log", disk_full)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'run' / 'log.jsonl'}: No space left on device (errno 28); check the disk and the folder, then run again"]
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# -- one writer per run directory ------------------------------------------------


def test_a_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(toy_config, registry, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, "PYTHONPATH": str(HERE), "RARESYNTH_PLUGIN_MODULES": "toy_plugin,pause_plugin", "RARESYNTH_TEST_PAUSE": str(pause),
           "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "raresynth", "train", str(config_path), "--no-progress"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # a guard against hanging, not a measurement
        while not (pause / "paused").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first trainer never reached its first tick"
            time.sleep(0.1)
        run_dir = tmp_path / "run"
        before = tree(run_dir)
        for second in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(LockError, match=rf"another trainer writes here \(pid {first.pid} on {socket.gethostname()}, since .*\); "
                                                "wait for it to end or stop it"):
                run_toy(toy_config, registry, **second)
        assert tree(run_dir) == before  # the second trainer wrote nothing
        first.send_signal(signal.SIGKILL)  # an orphaned trainer that died: its lock file stays
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == first.pid
    run = run_toy(toy_config, registry, overwrite=True)
    assert run.progress.nimg == 128
    assert f"taking over the lock of pid {first.pid} on {socket.gethostname()}" in capsys.readouterr().err
    assert not (run_dir / LOCK_NAME).exists()


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time\nfrom raresynth.files import DirectoryLock\n"
                                "DirectoryLock(sys.argv[1], what='benchmark').acquire()\nprint('held', flush=True)\ntime.sleep(600)\n"),
         str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=rf"another benchmark writes here \(pid {holder.pid} on "):
            DirectoryLock(folder, what="benchmark").acquire()
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(folder, what="benchmark") as lock:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(LockError, match=rf"pid {os.getpid()}"):  # also within one process: one holder
            DirectoryLock(folder).acquire()
    assert f"taking over the lock of pid {holder.pid}" in capsys.readouterr().err
    assert not (folder / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "since": "2025-01-01T00:00:00Z", "what": "trainer"}))
    with pytest.raises(LockError, match=rf"another trainer writes here \(pid 1 on gpu-node-7, since 2025-01-01T00:00:00Z\); "
                                        rf"wait for it to end, or, if nothing runs there any more, delete {tmp_path / LOCK_NAME}"):
        DirectoryLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()


# -- checkpoints ---------------------------------------------------------------


def flip_a_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # the file ends with tensor bytes: the header still parses
    path.write_bytes(bytes(data))


def test_resume_skips_a_corrupt_latest_checkpoint_and_continues_exactly(toy_config, registry, tmp_path, capsys):
    whole = run_toy(toy_config, registry, "budget.kimg=0.192", run_dir=str(tmp_path / "whole"))
    half = toy_config(run_dir=str(tmp_path / "half"))
    run_toy(lambda: half, registry)  # checkpoints at 64 and 128 images
    run_dir = tmp_path / "half"
    corrupt = ckpt.checkpoint_path(run_dir / "checkpoints", 128)
    flip_a_tensor_byte(corrupt)
    capsys.readouterr()
    resumed = run_toy(lambda: half, registry, "budget.kimg=0.192", resume=True)
    err = capsys.readouterr().err
    assert "warning: " in err and "checkpoint-000000128.safetensors: checkpoint is corrupt" in err
    assert "resuming from the newest good checkpoint, checkpoint-000000064.safetensors" in err
    assert resumed.progress.nimg == whole.progress.nimg == 192
    a = weights(ckpt.list_checkpoints(whole.run_dir / "checkpoints")[-1])
    b = weights(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert all(torch.equal(a[key], b[key]) for key in a)  # as if never interrupted
    assert log_kimgs(run_dir) == log_kimgs(whole.run_dir)  # no tick logged twice
    (trash,) = (run_dir / "trash").iterdir()
    assert (trash / "checkpoints" / corrupt.name).is_file()  # moved aside, not deleted


def test_resume_from_a_chosen_checkpoint_on_the_command_line(toy_config, registry, tmp_path, capsys):
    whole = run_toy(toy_config, registry, "budget.kimg=0.192", run_dir=str(tmp_path / "whole"))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config(run_dir=str(tmp_path / "run"))))
    assert main(["train", str(config_path), "--no-progress"]) == 0
    run_dir = tmp_path / "run"
    with (run_dir / "log.jsonl").open("a") as log:
        log.write('{"kimg": 0.16, "step": 2')  # a line torn by a kill
    assert main(["train", str(config_path), "budget.kimg=0.192", "--resume-from", "checkpoint-000000064.safetensors", "--no-progress"]) == 0
    a = weights(ckpt.list_checkpoints(whole.run_dir / "checkpoints")[-1])
    b = weights(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert log_kimgs(run_dir) == log_kimgs(whole.run_dir)
    assert list((run_dir / "trash").glob("*/checkpoints/checkpoint-000000128.safetensors"))
    capsys.readouterr()
    other = ckpt.list_checkpoints(whole.run_dir / "checkpoints")[0]  # another run's
    assert main(["train", str(config_path), "--resume-from", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--resume-from {other}: not one of this run's checkpoints" in err[0], err


def test_pruning_never_deletes_a_checkpoint_raresynth_did_not_write(toy_config, registry, tmp_path):
    run_toy(toy_config, registry, "budget.kimg=0.064")
    checkpoints = tmp_path / "run" / "checkpoints"
    kept_by_hand = checkpoints / "checkpoint-000000008.safetensors"
    shutil.copy(checkpoints / "checkpoint-000000064.safetensors", kept_by_hand)
    run_toy(toy_config, registry, "budget.kimg=0.256", resume=True)  # writes 128, 192, 256 and keeps 2 of its own
    assert [p.name for p in ckpt.list_checkpoints(checkpoints)] == [
        "checkpoint-000000008.safetensors", "checkpoint-000000192.safetensors", "checkpoint-000000256.safetensors"]


def test_checkpoints_carry_a_checksum_that_catches_a_flipped_bit(tmp_path):
    path = tmp_path / "checkpoint-000000005.safetensors"
    state = {"w": torch.arange(1000.0), "h": torch.ones(4, dtype=torch.bfloat16), "flag": torch.tensor([True])}
    ckpt.save_state(state, path)
    assert all(torch.equal(ckpt.load_state(path)[key], state[key]) for key in state)
    flip_a_tensor_byte(path)
    with pytest.raises(RunDirError, match="checkpoint is corrupt \\(its tensors do not match their sha256\\)"):
        ckpt.load_state(path)


def test_a_checkpoint_from_before_checksums_still_loads(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    tensors, skeleton = ckpt.flatten({"w": torch.ones(2)})
    save_file(tensors, str(path), metadata={ckpt.STATE_KEY: json.dumps(skeleton), "format_version": "1"})
    assert torch.equal(ckpt.load_state(path)["w"], torch.ones(2))


@pytest.mark.parametrize("state, skeleton, problem", [
    ({"generator": {}}, None, "no 'progress' with integer 'nimg' and 'step'"),
    ({"progress": {"nimg": 1, "step": 1}}, None, "no 'generator' state"),
    ({"w": torch.ones(1)}, {"__dict__": [["generator", {"__tensor__": "missing"}]]}, "checkpoint metadata is not raresynth's \\(KeyError"),
    ({"w": torch.ones(1)}, "{not json", "checkpoint metadata is not raresynth's \\(JSONDecodeError"),
])
def test_hand_made_checkpoint_metadata_is_a_one_line_error(tmp_path, state, skeleton, problem):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint-000000016.safetensors"
    tensors, made = ckpt.flatten(state)
    text = skeleton if isinstance(skeleton, str) else json.dumps(skeleton if skeleton is not None else made)
    save_file(tensors, str(path), metadata={ckpt.STATE_KEY: text, "format_version": "1"})
    with pytest.raises(RunDirError, match=problem) as excinfo:
        ckpt.load_training_state(path)
    assert "\n" not in str(excinfo.value)


def test_hand_made_checkpoints_are_one_line_errors_on_the_command_line(toy_config, registry, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "budget.kimg=0.064", "--no-progress"]) == 0
    made = tmp_path / "made.safetensors"
    ckpt.save_state({"generator": {"weights": torch.ones(2)}, "progress": {"nimg": 1, "step": 1}}, made)
    assert main(["sample", str(tmp_path / "run"), "--checkpoint", str(made), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made.safetensors: the checkpoint does not fit this run's backend (KeyError" in err[0], err
    (tmp_path / "a_file").write_text("x")
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "a_file")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'a_file'}: --out is a file, not a folder; choose another --out"
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "--out is a run directory" in capsys.readouterr().err


# -- configs ---------------------------------------------------------------------


def test_duplicate_yaml_keys_are_an_error_naming_file_key_and_line(toy_config, registry, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    text = yaml.safe_dump(toy_config(), sort_keys=False)
    config_path.write_text(text.replace("budget:\n  kimg: 0.128\n", "budget:\n  kimg: 0.128\n  kimg: 50\n"))
    line = config_path.read_text().splitlines().index("  kimg: 50") + 1
    with pytest.raises(ConfigError, match=rf"{config_path}: line {line}: key 'kimg' is given twice \(first on line {line - 1}\)"):
        read_yaml(config_path)
    assert main(["train", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {config_path}: line {line}: key 'kimg' is given twice (first on line {line - 1}); keep one of them"]
    assert not (tmp_path / "run").exists()
    merged = tmp_path / "merged.yaml"  # a YAML merge key that one key then overrides is not a duplicate
    merged.write_text("base: &b {kimg: 1, x: 2}\nbudget:\n  <<: *b\n  kimg: 5\n")
    assert read_yaml(merged)["budget"] == {"kimg": 5, "x": 2}


def test_the_saved_config_round_trips_atomically(toy_config, registry, tmp_path):
    config = load_config(toy_config(), registry=registry)
    path = tmp_path / "saved.yaml"
    save_config(config, path)
    assert load_config(path, registry=registry).plain() == config.plain()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.yaml"]

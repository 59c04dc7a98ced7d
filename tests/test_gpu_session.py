"""The one-shot GPU benchmark kit (benchmarks/gpu_session.*): its parts that need no GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def load_helper():
    spec = importlib.util.spec_from_file_location("gpu_session", ROOT / "benchmarks" / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_session_script_parses_and_refuses_an_unknown_part():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    result = subprocess.run(["bash", str(SCRIPT), "nonsense"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "usage" in result.stderr


def test_report_gives_each_row_its_target_and_verdict(tmp_path):
    helper = load_helper()
    json_dir, logs = tmp_path / "json", tmp_path / "logs"
    json_dir.mkdir()
    logs.mkdir()
    row = {"generator": "stylegan2_ada", "resolution": 64, "sec_per_kimg": 1.5, "img_per_s": 666.7, "peak_mem_gib": 3.2,
           "ticks_measured": 4, "machine": "NVIDIA H100 80GB HBM3, torch 2.11.0"}
    (json_dir / "sg64.json").write_text(json.dumps([row]))
    (json_dir / "ddpm64_fp32.json").write_text(json.dumps([{**row, "generator": "ddpm", "img_per_s": 800.0}]))
    (json_dir / "sampling64.json").write_text(json.dumps({"machine": row["machine"], "rows": [
        {"scheduler": "ddpm", "steps": 1000, "seconds": 20.0, "speedup_vs_first": 1.0},
        {"scheduler": "dpmsolver++", "steps": 25, "seconds": 0.5, "speedup_vs_first": 40.0}]}))
    (logs / "sg256.log").write_text("compiling\ntorch.OutOfMemoryError: CUDA out of memory\nmore\n")
    (tmp_path / "status.tsv").write_text("".join(f"{name}\t{rc}\t{secs}\t{limit}\t{logs / name}.log\n" for name, rc, secs, limit in [
        ("sg64", 0, 40, 90), ("ddpm64_fp32", 0, 30, 120), ("sampling64", 0, 60, 240), ("sg256", 1, 20, 120),
        ("sg128_compile", 124, 210, 210), ("sg256_compile", "-", 0, 0)]))

    helper.report(tmp_path / "status.tsv", json_dir, tmp_path, "all", smoke=False)

    summary = (tmp_path / "summary-all.txt").read_text()
    lines = {line.split()[0]: line for line in summary.splitlines()[2:]}
    assert "<= 2 s/kimg" in lines["sg64"] and lines["sg64"].endswith("MET")
    assert ">= 1000 img/s" in lines["ddpm64_fp32"] and lines["ddpm64_fp32"].endswith("MISSED")
    assert "40.0x" in lines["sampling64"] and lines["sampling64"].endswith("MET")
    assert "failed" in lines["sg256"] and "CUDA out of memory" in lines["sg256"]
    assert "timeout" in lines["sg128_compile"] and "skipped" in lines["sg256_compile"]
    assert "GPU_SESSION_STEPS='sg128_compile sg256_compile'" in summary
    results = json.loads((tmp_path / "results-all.json").read_text())
    assert results["machine"].startswith("NVIDIA H100") and [s["state"] for s in results["steps"]] == [
        "ok", "ok", "ok", "failed", "timeout", "skipped"]


def test_link_install_registers_the_built_in_plugins(tmp_path):
    """The fallback install (no build): raresynth imports from the site and its entry points load every plugin."""
    helper = load_helper()
    assert helper.link_install(ROOT, tmp_path) == 0
    code = ("import raresynth, raresynth.plugins.diffusion; from raresynth.registry import get_registry; "
            "r = get_registry(); print(raresynth.__file__); print(sorted(r.names('generator')), [p.name for p in r.broken])")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RARESYNTH_PLUGINS": "r1,stylegan2_ada,diffusion"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith(str(tmp_path))
    assert out.splitlines()[1] == "['ddpm', 'stylegan2_ada'] []"

"""Training throughput of a backend: s/kimg, img/s and peak memory, through the real loop.

Runs ``raresynth train`` on a config (with overrides) for a short budget, skips the
first ticks as warm-up (compilation, cuDNN autotuning, allocator growth), and reports
the steady-state figures read from the run's ``log.jsonl``. Prints a table and
writes JSON.

    python benchmarks/throughput.py docs/examples/demo.yaml budget.kimg=6 --warmup-ticks 2 \
        --json benchmarks/results/stylegan2_ada-cpu.json

Several configurations in one call (one row each): repeat ``--set 'a=1 b=2'``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from raresynth.config import load_config
from raresynth.registry import get_registry
from raresynth.training import train


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x {torch.get_num_threads()} threads, torch {torch.__version__}"


def measure(config_path: str, overrides: list[str], warmup_ticks: int) -> dict:
    registry = get_registry()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(config_path, [*overrides, f"run_dir={tmp}/run"], registry=registry)
        run = train(config, registry=registry, progress_bar=False)
        lines = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    steady = lines[warmup_ticks:] or lines[-1:]
    sec_per_kimg = statistics.median(line["sec_per_kimg"] for line in steady)
    return {
        "config": config_path,
        "overrides": overrides,
        "generator": config.generator.name,
        "resolution": config.data.resolution,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "ticks_measured": len(steady),
        "sec_per_kimg": sec_per_kimg,
        "img_per_s": 1000.0 / sec_per_kimg,
        "peak_mem_gib": max((line.get("peak_mem_gib", 0.0) for line in lines), default=0.0),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every row")
    parser.add_argument("--set", action="append", default=[], metavar="'a=1 b=2'", help="one row's extra overrides (repeatable)")
    parser.add_argument("--warmup-ticks", type=int, default=1, help="ticks to skip before measuring (default 1)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    rows = [measure(args.config, [*args.overrides, *shlex.split(extra)], args.warmup_ticks) for extra in (args.set or [""])]
    print(f"{'generator':<12} {'res':>4} {'batch':>5} {'prec':>5} {'s/kimg':>8} {'img/s':>8} {'peak GiB':>8}  overrides")
    for row in rows:
        print(f"{row['generator']:<12} {row['resolution']:>4} {row['batch_size']:>5} {row['precision']:>5} "
              f"{row['sec_per_kimg']:>8.2f} {row['img_per_s']:>8.1f} {row['peak_mem_gib']:>8.2f}  {' '.join(row['overrides'])}")
    print(f"machine: {rows[0]['machine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

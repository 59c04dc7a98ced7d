"""Sampling speed of the ddpm backend: images/s per scheduler and step count.

Times ``generator.sample`` (the code path of ``raresynth sample``) for ``--n`` images
in one batch, after a short warm-up, for each ``--sampler SCHEDULER:STEPS``. The model
is a trained run (``--run``) or a freshly initialized UNet of a preset (``--preset``,
``--resolution``, ``--channels``): the speed does not depend on the weights. Prints a
table (with each row's speed-up over the first) and writes JSON.

    python benchmarks/sampling.py --preset 64 --resolution 64 --channels 3 --n 64 \
        --sampler ddpm:1000 --sampler ddim:50 --sampler dpmsolver++:25 --json benchmarks/results/sampling-64.json
    python benchmarks/sampling.py --run runs/ddpm-32 --n 64 --sampler dpmsolver++:25 --guidance 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from raresynth import DataSpec
from raresynth.plugins.diffusion.backend import DDPM, DDPMParams, DDPMSampleParams
from raresynth.training import load_run_generator, make_accelerator

DEFAULT_SAMPLERS = ["ddpm:1000", "ddim:50", "dpmsolver++:25"]


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x {torch.get_num_threads()} threads, torch {torch.__version__}"


def build(args: argparse.Namespace) -> DDPM:
    if args.run is not None:
        generator, *_ = load_run_generator(args.run)
        return generator
    spec = DataSpec(resolution=args.resolution, channels=args.channels,
                    class_names=tuple(f"class{i}" for i in range(args.classes)))
    generator = DDPM(DDPMParams(preset=args.preset), spec)
    torch.manual_seed(0)
    generator.setup(make_accelerator(mixed_precision="no"))
    return generator


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_sampler(generator: DDPM, scheduler: str, steps: int, n: int, guidance: float, repeats: int) -> dict:
    options = DDPMSampleParams(scheduler=scheduler, steps=steps, guidance_scale=guidance)
    labels = torch.arange(n) % generator.num_classes if generator.num_classes else None
    seeds = list(range(n))
    generator.sample(seeds[:n], labels, DDPMSampleParams(scheduler=scheduler, steps=2, guidance_scale=guidance))  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        generator.sample(seeds, labels, options)
        synchronize()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    return {
        "scheduler": scheduler,
        "steps": steps,
        "n": n,
        "guidance_scale": guidance,
        "seconds": seconds,
        "img_per_s": n / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained ddpm run (default: a fresh model of --preset)")
    parser.add_argument("--preset", default="64", help="UNet preset of the fresh model (default 64)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=0, help="classes of the fresh model (0: unconditional)")
    parser.add_argument("--n", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--sampler", action="append", metavar="SCHEDULER:STEPS",
                        help=f"repeatable (default: {' '.join(DEFAULT_SAMPLERS)})")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance_scale (conditional models)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repetitions per row; the fastest counts")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    generator = build(args)
    source = str(args.run) if args.run else f"fresh preset {args.preset}"
    rows = []
    for entry in args.sampler or DEFAULT_SAMPLERS:
        scheduler, _, steps = entry.partition(":")
        rows.append(time_sampler(generator, scheduler, int(steps), args.n, args.guidance, args.repeats))
    spec = generator.spec
    print(f"{'scheduler':<12} {'steps':>5} {'n':>4} {'seconds':>9} {'img/s':>9} {'ms/step':>8} {'speed-up':>8} {'peak GiB':>8}")
    for row in rows:
        row["speedup_vs_first"] = rows[0]["seconds"] / row["seconds"]
        print(f"{row['scheduler']:<12} {row['steps']:>5} {row['n']:>4} {row['seconds']:>9.3f} {row['img_per_s']:>9.2f} "
              f"{row['ms_per_step']:>8.2f} {row['speedup_vs_first']:>7.1f}x {row['peak_mem_gib']:>8.2f}")
    print(f"model: {source}, {spec.resolution}x{spec.resolution}x{spec.channels}, "
          f"{sum(p.numel() for p in generator.ema.parameters()) / 1e6:.1f}M parameters; machine: {machine()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": source, "resolution": spec.resolution, "channels": spec.channels,
                                         "machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

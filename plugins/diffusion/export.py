"""Command line: export a ``ddpm`` run as a diffusers ``DDPMPipeline`` folder.

    python -m raresynth.plugins.diffusion.export RUN OUT [--checkpoint FILE] [--scheduler ddpm|ddim|dpmsolver++] [--overwrite]

Errors are one line (``error: ...``) and exit with status 2, as with ``raresynth``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raresynth import RaresynthError

from .pipeline import export_pipeline, is_conditional_export
from .samplers import SCHEDULERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raresynth.plugins.diffusion.export",
                                     description="Export a ddpm run's EMA network as a diffusers DDPMPipeline folder.")
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument("out", type=Path, help="output folder (DDPMPipeline.from_pretrained(out) loads it)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the run's latest)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddpm", help="scheduler the pipeline loads with (default ddpm)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")
    args = parser.parse_args(argv)
    try:
        out = export_pipeline(args.run, args.out, checkpoint=args.checkpoint, scheduler=args.scheduler, overwrite=args.overwrite)
    except RaresynthError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(f"exported {args.run} to {out}: DDPMPipeline.from_pretrained('{out}')")
    if is_conditional_export(out):
        print("note: the network is class-conditional; DDPMPipeline passes no class labels, so call the UNet with "
              "class_labels=... in a loop of your own (raresynth.json names the classes and the null class)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

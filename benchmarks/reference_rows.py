"""What the reference rows (real held-out, copies, noise) cost, per metric, in a benchmark.

Loads a benchmark's dataset and metrics exactly as ``raresynth bench`` does, measures one
stand-in run first (a noise set of another seed, with its half-samples) so that whatever
the metrics keep between calls (real-set features, the domain embedding, the real-only
classifiers) is computed as it is in a benchmark before its reference rows, then times
the reference rows metric by metric. ``RARESYNTH_CACHE_DIR`` is a fresh folder, so no
row comes from an earlier measurement. Prints a table; ``--json`` writes it.

    python benchmarks/reference_rows.py benchmarks/default.yaml --json benchmarks/results/reference-rows-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from raresynth import write_text_atomic
from raresynth.bench.run import prepare_benchmark
from raresynth.data.dataset import load_dataset
from raresynth.evaluation.evaluate import with_replicates
from raresynth.evaluation.references import measure_references, noise_set
from raresynth.training.loop import synthetic_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", help="a benchmark YAML, e.g. benchmarks/default.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    os.environ["RARESYNTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="raresynth-refbench-")
    benchmark = prepare_benchmark(args.benchmark, args.overrides)
    config = benchmark.config
    dataset = load_dataset(benchmark.runs[0].config.data, benchmark.registry)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = benchmark.build_metrics(dataset, Path(tmp))
        for _, metric in metrics:
            metric.output_dir = None
        n = config.synthetic_images or len(dataset.train)
        labels = synthetic_labels(dataset, n)
        resamples, seed = config.evaluation.resamples, config.sampling_seed

        rows = []
        start = time.perf_counter()
        stand_in = noise_set(dataset.train, n, labels, seed + 1000)
        for name, metric in metrics:  # a run's measurement first, as in a benchmark
            t0 = time.perf_counter()
            with_replicates([(name, metric)], dataset.train, dataset.held_out, stand_in, resamples, seed=0)
            rows.append({"metric": name, "run_s": time.perf_counter() - t0})
        for row, (name, metric) in zip(rows, metrics):
            t0 = time.perf_counter()
            # keyed by this metric alone, in a fresh cache folder: never a cached row
            measure_references([(name, metric)], [{"name": name}], dataset.train, dataset.held_out, n,
                               labels, resamples, seed)
            row["references_s"] = time.perf_counter() - t0
        total = time.perf_counter() - start

    machine = f"CPU {platform.processor() or platform.machine()} x {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"{benchmark.config.name}: {len(dataset.train)} training, {len(dataset.held_out)} held-out images, "
          f"{n} per synthetic set, {resamples} half-samples; {machine}")
    print(f"{'metric':<14} {'one run (s)':>12} {'reference rows (s)':>19}")
    for row in rows:
        print(f"{row['metric']:<14} {row['run_s']:>12.1f} {row['references_s']:>19.1f}")
    references = sum(row["references_s"] for row in rows)
    print(f"{'total':<14} {sum(row['run_s'] for row in rows):>12.1f} {references:>19.1f}   (script {total:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), json.dumps({"benchmark": args.benchmark, "overrides": args.overrides, "machine": machine,
                                                       "rows": rows, "references_s": references}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

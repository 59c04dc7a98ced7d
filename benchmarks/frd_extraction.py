"""How fast FRD's radiomic features are extracted, with raresynth's ITK thread setting and without.

frd-score starts one extraction process per core; raresynth runs SimpleITK's filters on
``cores // processes`` threads in each (:func:`raresynth.plugins.weightfree.frd.itk_threads`)
instead of ITK's default of one thread per core in every process. This times
:func:`~raresynth.plugins.weightfree.frd.radiomic_features` on the embedded dataset's
training images and on the default benchmark's noise reference set, both ways, alternating
so that a drift of the machine's speed falls on both, and checks the features are identical.

    python benchmarks/frd_extraction.py --images 120 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

import raresynth.plugins.weightfree.frd as frd
from raresynth import ImageSet
from raresynth.bench.run import prepare_benchmark
from raresynth.data.dataset import load_dataset
from raresynth.evaluation.references import noise_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="images per extraction")
    parser.add_argument("--repeats", type=int, default=2, help="extractions per set and setting")
    args = parser.parse_args(argv)

    benchmark = prepare_benchmark("benchmarks/default.yaml", [])
    dataset = load_dataset(benchmark.runs[0].config.data, benchmark.registry)
    train = ImageSet(dataset.train.images[: args.images])
    sets = {"training images": train, "noise": noise_set(train, args.images, None, 0)}
    own_setting = frd.itk_threads
    settings = {"ITK default (a thread per core in each process)": lambda threads: contextlib.nullcontext(),
                "raresynth (cores // processes threads each)": own_setting}
    frd.radiomic_features(ImageSet(train.images[:4]), "v1")  # imports and the first pool, untimed
    print(f"{args.images} images of {tuple(train.images.shape[1:])}, {os.cpu_count()} cores, {args.repeats} repeats")
    for name, images in sets.items():
        times: dict[str, list[float]] = {setting: [] for setting in settings}
        features = {}
        for _ in range(args.repeats):
            for setting, context in settings.items():
                frd.itk_threads = context
                start = time.perf_counter()
                features[setting] = frd.radiomic_features(images, "v1")
                times[setting].append(time.perf_counter() - start)
        frd.itk_threads = own_setting
        first, second = features.values()
        same = np.array_equal(first, second, equal_nan=True)
        for setting, seconds in times.items():
            print(f"{name:<16} {setting:<50} {min(seconds):6.2f} s best, {np.mean(seconds):6.2f} s mean "
                  f"({1000 * min(seconds) / args.images:.0f} ms an image)")
        print(f"{name:<16} features identical: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

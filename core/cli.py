"""The ``raresynth`` command line.

::

    raresynth plugins                       installed plugins, what each registers, broken ones
    raresynth train CONFIG [a.b=value ...]  train (--resume, --resume-from CKPT, --overwrite, --dry-run)
    raresynth sample RUN --n 16 --out DIR   PNG files plus manifest.json
    raresynth data inspect PATH             what a reader sees in a file or folder
    raresynth bench CONFIG [a.b=value ...]  train and compare variants on one dataset, write report.md
    raresynth audit DIR --against RUN       are the images in DIR copies of the run's training images?
    raresynth review create|add-reader|serve|results STUDY_DIR ...   a blinded reader study in the browser

Errors the user can fix are printed as one line, without a traceback, exit code 2.
Several processes: ``accelerate launch -m raresynth train ...`` or
``torchrun --nproc_per_node 2 -m raresynth train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import DataError, RaresynthError
from .registry import (
    PLUGINS_ENV,
    Registry,
    get_registry,
    load_plugins,
    parse_plugin_list,
    set_registry,
)
from .version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raresynth", description="Synthetic medical images from small datasets.")
    parser.add_argument("--version", action="version", version=f"raresynth {__version__}")
    parser.add_argument("--plugins", metavar="A,B", help=f"load only these plugins (entry-point names); same as {PLUGINS_ENV}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    train = commands.add_parser("train", help="train a generator from a run config")
    train.add_argument("config", type=Path, help="run config (YAML)")
    train.add_argument("overrides", nargs="*", metavar="a.b=value", help="dotted overrides, e.g. generator.name=dcgan budget.kimg=5")
    train.add_argument("--resume", action="store_true", help="continue the run in run_dir from its newest good checkpoint")
    train.add_argument("--resume-from", type=Path, metavar="CHECKPOINT",
                       help="continue from this checkpoint of the run (newer ones are moved into run_dir/trash/)")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an existing run_dir: once the config and data check out, the old run's files "
                            "are moved into run_dir/trash/<time>/ (nothing is deleted)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (log.jsonl is written anyway)")

    sample = commands.add_parser("sample", help="generate images from a trained run")
    sample.add_argument("run", type=Path, help="run directory")
    sample.add_argument("options", nargs="*", metavar="key=value", help="backend sampling options (e.g. truncation=0.7)")
    sample.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    sample.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i (default 0)")
    sample.add_argument("--out", type=Path, required=True, help="output folder for PNG files and manifest.json")
    sample.add_argument("--label", help="class name or index (default: cycle through the classes)")
    sample.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the run's latest)")
    sample.add_argument("--overwrite", action="store_true", help="replace files of the same names in --out")

    data = commands.add_parser("data", help="data tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    inspect = data_commands.add_parser("inspect", help="what a reader sees: count, sizes, channels, labels, problems")
    inspect.add_argument("path", type=Path, help="file or folder")
    inspect.add_argument("--format", default="auto", help="data format (default: detect)")
    inspect.add_argument("--option", action="append", default=[], metavar="key=value", help="format option, e.g. axis=1")
    inspect.add_argument("--labels", default="auto", help="'auto', 'none' or a CSV file")
    inspect.add_argument("--group-by", default=None, metavar="GROUP_BY",
                         help="try a data.split.group_by: a header attribute (PatientID), column:NAME, regex:PATTERN or format")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    bench = commands.add_parser("bench", help="compare backends and regularizer settings on one dataset; writes a report")
    bench.add_argument("config", type=Path, help="benchmark config (YAML)")
    bench.add_argument("overrides", nargs="*", metavar="a.b=value", help="dotted overrides, e.g. seeds=[0,1] base.budget.kimg=5")
    bench.add_argument("--only", metavar="A,B", help="train and measure only these variants now (the report shows all)")
    bench.add_argument("--rerun", metavar="A,B", help="retrain these variants from scratch (their earlier runs are replaced)")
    bench.add_argument("--report-only", action="store_true", help="train and measure nothing; rewrite the report from what exists")
    bench.add_argument("--dry-run", action="store_true", help="print what each run needs (train, resume, measure) and exit")
    bench.add_argument("--processes", type=int, default=1, metavar="N",
                       help="train each run on N processes, e.g. one per GPU (launched with torchrun; default 1: in this process)")
    bench.add_argument("--executor", choices=["local", "slurm", "ray"],
                       help="where runs train: local (here, one after another; the default), slurm (one job per run, "
                            "through submitit) or ray (one task per run); default: the config's executor")
    bench.add_argument("--executor-option", action="append", default=[], metavar="key=value",
                       help="over the config's executor_options, e.g. partition=gpu gpus_per_run=1 time_limit_min=600")
    bench.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")

    audit = commands.add_parser("audit", help="memorization audit of a folder of images made by any tool")
    audit.add_argument("synthetic", type=Path, help="folder of PNG / JPEG / BMP images")
    audit.add_argument("--against", type=Path, required=True, metavar="RUN_OR_CONFIG",
                       help="a run directory (its training split) or a data config file (its train split)")
    audit.add_argument("--out", type=Path, help="folder for audit.json and the closest-pair grids (default: SYNTHETIC-audit beside it)")
    audit.add_argument("options", nargs="*", metavar="key=value", help="memorization metric options, e.g. percentile=1 embedding=null")

    review = commands.add_parser("review", help="a blinded real-vs-synthetic reader study in the browser")
    review_commands = review.add_subparsers(dest="review_command", required=True, metavar="SUBCOMMAND")
    create = review_commands.add_parser("create", help="draw real held-out and synthetic images into a new study")
    create.add_argument("study_dir", type=Path, help="folder for the study (study.sqlite)")
    create.add_argument("--real", type=Path, required=True, metavar="DATA_CONFIG_OR_RUN", help="its held-out images are the real ones")
    create.add_argument("--synthetic", type=Path, action="append", required=True, metavar="RUN_DIR_OR_FOLDER",
                        help="a run directory (sampled now) or a folder of images; repeat for several generators")
    create.add_argument("--n", type=int, default=100, help="images in the study, half real, half synthetic (default 100)")
    create.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    reader = review_commands.add_parser("add-reader", help="add a reader; prints their private link")
    reader.add_argument("study_dir", type=Path)
    reader.add_argument("name", help="the reader's name (shown on the admin page and in the results)")
    reader.add_argument("--url", default="http://127.0.0.1:8000", help="the address readers reach the server at (default http://127.0.0.1:8000)")
    serve = review_commands.add_parser("serve", help="serve the study to its readers")
    serve.add_argument("study_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    results = review_commands.add_parser("results", help="accuracy, AUC and agreement; writes STUDY_DIR/results/")
    results.add_argument("study_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value words may come after options too (`sample RUN --n 4 truncation=0.7`);
    # argparse leaves those over, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    target = {"train": "overrides", "sample": "options", "bench": "overrides", "audit": "options"}.get(args.command)
    stray = [word for word in extra if target is None or "=" not in word or word.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if target:
        getattr(args, target).extend(extra)
    try:
        if args.plugins is not None:
            set_registry(load_plugins(only=parse_plugin_list(args.plugins)))
        registry = get_registry()
        if args.command != "plugins":
            warn_broken(registry)
        return COMMANDS[args.command](args, registry)
    except RaresynthError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's, not the user's input: a full disk, a vanished folder, no permission
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (errno {exc.errno}); check the disk and the folder, then run again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def warn_broken(registry: Registry) -> None:
    for info in registry.broken:
        source = f" (from {info.distribution})" if info.distribution else ""
        print(f"warning: plugin '{info.name}'{source} is broken and was not loaded: {info.error}", file=sys.stderr)


def cmd_plugins(args: argparse.Namespace, registry: Registry) -> int:
    if args.json:
        payload = [
            {"name": p.name, "module": p.module, "distribution": p.distribution, "version": p.version,
             "hooks": p.hooks, "registers": p.registers, "error": p.error}
            for p in registry.plugins
        ]
        print(json.dumps(payload, indent=1))
        return 0
    if not registry.plugins:
        print("no plugins loaded" + (f" ({PLUGINS_ENV} is set)" if os.environ.get(PLUGINS_ENV) is not None else ""))
    for p in registry.plugins:
        origin = f"{p.distribution} {p.version}" if p.distribution else p.module
        print(f"{p.name}  ({origin})" + ("  BROKEN" if p.broken else ""))
        if p.broken:
            print(f"    error: {p.error}")
            continue
        for kind, names in sorted(p.registers.items()):
            print(f"    {kind.replace('_', ' ')}s: {', '.join(names)}")
        lifecycle = [h for h in p.hooks if not h.startswith("raresynth_register_")]
        if lifecycle:
            print(f"    hooks: {', '.join(lifecycle)}")
    return 1 if registry.broken else 0


def cmd_train(args: argparse.Namespace, registry: Registry) -> int:
    from .config import load_config
    from .training import dry_run_text, train

    config = load_config(args.config, args.overrides, registry=registry)
    if args.dry_run:
        print(dry_run_text(config), end="")
        return 0
    run = train(config, resume=args.resume, overwrite=args.overwrite, resume_from=args.resume_from, registry=registry,
                progress_bar=not args.no_progress)
    if run.num_processes == 1 or int(os.environ.get("RANK", "0")) == 0:
        print(f"run finished at {run.progress.kimg:.2f} kimg: {run.run_dir}")
    return 0


def cmd_sample(args: argparse.Namespace, registry: Registry) -> int:
    from .training import sample_to_folder

    if args.n < 1:
        raise RaresynthError("--n must be at least 1")
    manifest = sample_to_folder(args.run, args.out, n=args.n, seed=args.seed, label=args.label, options=args.options,
                                checkpoint=args.checkpoint, overwrite=args.overwrite, registry=registry)
    print(f"wrote {args.n} images and {manifest}")
    return 0


def cmd_data(args: argparse.Namespace, registry: Registry) -> int:
    from .config import apply_overrides
    from .data import inspect_source

    options = apply_overrides({}, args.option)
    report = inspect_source(args.path, format=args.format, registry=registry, options=options, labels=args.labels, group_by=args.group_by)
    text = json.dumps(report.to_dict(), indent=1) if args.json else report.to_text()
    print(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))  # a file name that is not UTF-8 prints, as U+FFFD
    if report.num_readable == 0:  # the report above says why; a script must not take this source for usable
        first = f"; first problem: {report.problems[0][1]}" if report.problems else ""
        raise DataError(f"{args.path}: none of the {report.num_records} image(s) is readable{first}")
    return 0


def cmd_bench(args: argparse.Namespace, registry: Registry) -> int:
    from .bench import (
        check_variant_names,
        plan_text,
        prepare_benchmark,
        run_benchmark,
    )

    only, rerun = parse_plugin_list(args.only) or [], parse_plugin_list(args.rerun) or []
    benchmark = prepare_benchmark(args.config, args.overrides, registry=registry, rerun=rerun)
    check_variant_names(benchmark.runs, only, "--only")  # before --dry-run too
    if args.dry_run:
        print(plan_text(benchmark), end="")
        return 0
    if args.processes < 1:
        raise RaresynthError("--processes must be at least 1")
    from .config import apply_overrides

    executor_options = apply_overrides({}, args.executor_option)
    if args.ray_address:
        executor_options["ray_address"] = args.ray_address
    results = run_benchmark(benchmark, only=only, report_only=args.report_only, progress_bar=not args.no_progress,
                            processes=args.processes, executor=args.executor, executor_options_=executor_options)
    failed = [f"{v['label']} seed {r['seed']}" for v in results["variants"] for r in v["runs"] if r["status"] == "failed"]
    print(f"report: {benchmark.out_dir / 'report.md'}")
    if failed:
        print(f"{len(failed)} run(s) failed: {'; '.join(failed)} (see the report; run the same command again to retry)", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace, registry: Registry) -> int:
    from .config import apply_overrides, validate_plugin_params
    from .evaluation.imagesets import image_files, load_image_folder
    from .evaluation.training_data import load_training_data

    dataset = load_training_data(args.against, registry)
    spec = dataset.spec
    synthetic = load_image_folder(args.synthetic, spec.resolution, spec.channels, class_names=spec.class_names)
    names = [str(p.relative_to(args.synthetic.expanduser())) for p in image_files(args.synthetic, spec.class_names)]
    cls = registry.metric("memorization")
    if not hasattr(cls, "audit_folder"):
        raise RaresynthError("the installed 'memorization' metric has no audit_folder method; reinstall raresynth's memorization plugin")
    params = validate_plugin_params(cls, apply_overrides({}, args.options), "memorization")
    out = args.out or args.synthetic.expanduser().resolve().with_name(args.synthetic.expanduser().resolve().name + "-audit")
    summary = cls(params, spec).audit_folder(dataset.train, dataset.held_out, synthetic, names, out)
    print(f"{summary['synthetic']} images against {summary['train']} training images, threshold calibrated on "
          f"{summary['held_out']} held-out images at percentile {summary['percentile']:g}")
    print(f"{'space':<10} {'copy rate':>9} {'threshold':>10} {'FPR':>6} {'nominal':>8}  flagged")
    for space in summary["spaces"]:
        flagged = ", ".join(f["file"] for f in space["flagged"][:10]) + (" ..." if len(space["flagged"]) > 10 else "")
        print(f"{space['space']:<10} {space['copy_rate']:>9.3f} {space['threshold']:>10.4f} {space['copy_threshold_fpr']:>6.3f} "
              f"{space['copy_threshold_fpr_nominal']:>8.3f}  {flagged or '-'}")
    print(f"wrote {out / 'audit.json'}")
    return 0


def cmd_review(args: argparse.Namespace, registry: Registry) -> int:
    try:
        from . import review
    except ImportError as exc:
        raise RaresynthError(f"raresynth review needs the web app's packages ({exc.name} is missing): "
                             "pip install 'raresynth[review]'") from None

    if args.review_command == "create":
        summary = review.create_study(args.study_dir, args.real, args.synthetic, registry, n=args.n, seed=args.seed)
        print(f"study of {summary['images']} images in {summary['study_dir']}: "
              + ", ".join(f"{name} {count}" for name, count in summary["counts"].items()))
        print(f"next: raresynth review add-reader {args.study_dir} NAME")
    elif args.review_command == "add-reader":
        token = review.add_reader(args.study_dir, args.name)
        print(f"{args.url.rstrip('/')}/r/{token}")
    elif args.review_command == "serve":
        from .review.app import links

        print(f"serving {args.study_dir} on http://{args.host}:{args.port}; admin page: {links(args.study_dir, args.host, args.port)['admin']}",
              flush=True)
        review.serve(args.study_dir, host=args.host, port=args.port)
    else:
        out, results = review.write_results(args.study_dir)
        overall = results["overall"]
        print(f"{overall['answers']} answers: accuracy {overall['accuracy']:.3f} (p {overall['p_value']:.3g}), "
              f"AUC {overall['auc'] if overall['auc'] is None else round(overall['auc'], 3)}; wrote {out}/results.md")
    return 0


COMMANDS = {"plugins": cmd_plugins, "train": cmd_train, "sample": cmd_sample, "data": cmd_data, "bench": cmd_bench,
            "audit": cmd_audit, "review": cmd_review}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The benchmark report: summary statistics, the markdown table, results.csv, plots."""

from __future__ import annotations

import copy
import csv
import math
import re
import statistics
from collections.abc import Mapping

import pytest
from scipy import stats as scipy_stats
from PIL import Image

from raresynth import RaresynthError
from raresynth.bench.report import format_duration, format_number, summarize, write_report

VALUES = {
    "swd": {"metric": "swd", "higher_is_better": False, "dataset_specific": False},
    "precision_domain": {"metric": "prdc", "higher_is_better": True, "dataset_specific": True},
    "copy_rate": {"metric": "memorization", "higher_is_better": False, "dataset_specific": False, "question": "privacy"},
    "utility_accuracy": {"metric": "utility", "higher_is_better": True, "dataset_specific": False, "question": "utility"},
}


def run(variant: str, seed: int, status: str = "done", values: dict | None = None, seconds: float = 190.2, error: str | None = None) -> dict:
    done = status == "done"
    return {
        "seed": seed, "run_dir": f"runs/{variant}/seed-{seed}", "status": status, "error": error,
        "kimg": 8.0 if done else (3.2 if status == "failed" else None),
        "train_seconds": seconds if status != "pending" else None, "img_per_s": 4000 / seconds if status != "pending" else None,
        "peak_mem_gib": None, "metrics_seconds": 31.0 if done else None, "values": values or {},
    }


def variant(name: str, label: str, runs: list[dict], **settings) -> dict:
    return {
        "name": name, "label": label, "generator": name.split("[")[0], "regularizers": ["r1(gamma=auto)"],
        "settings": settings, "batch_size": 32, "precision": "no", "sample_options": {"truncation": 1.0},
        "grid": f"grids/{name}.png", "runs": runs,
    }


def make_results() -> dict:
    """Three variants x three seeds: a failed and a pending run, a value only some runs have.

    Best swd (lower) is r1_sweep, which has neither the largest nor the first mean;
    best precision_domain (higher) is ddpm; utility_accuracy only stylegan2_ada seed 0 and ddpm have.
    """
    return {
        "name": "embedded-32 demo", "created": "2026-11-22T14:03:00+00:00", "config_file": "benchmarks/default.yaml",
        "environment": {"raresynth": "0.1.0", "torch": "2.14.1", "python": "3.11.9", "device": "CPU x86_64 x 2 threads"},
        "data": {"format": "embedded", "source": None, "resolution": 32, "channels": 3, "class_names": ["fundus", "histology"],
                 "num_train": 300, "num_held_out": 60, "split_id": "3f2a9c1e0b7d"},
        "budget_kimg": 8.0, "seeds": [0, 1, 2], "synthetic_images": 300, "sampling_seed": 1000000,
        "metrics": [{"name": "swd"}, {"name": "prdc", "embedding": "domain"}, {"name": "memorization"}, {"name": "utility"}],
        "notes": ["frd is not installed: pip install 'raresynth[frd]' to add the Fréchet Radiomics Distance"],
        "values": copy.deepcopy(VALUES),
        "variants": [
            variant("stylegan2_ada", "stylegan2_ada", [
                run("stylegan2_ada", 0, values={"swd": 41.7, "precision_domain": 0.61, "copy_rate": 0.0, "utility_accuracy": 0.71}),
                run("stylegan2_ada", 1, values={"swd": 45.2, "precision_domain": 0.58, "copy_rate": 0.0}, seconds=185.0),
                run("stylegan2_ada", 2, values={"swd": 39.9, "precision_domain": 0.64, "copy_rate": 0.0033}, seconds=201.5),
            ]),
            variant("r1_sweep[gamma=0.1]", "r1_sweep | gamma=0.1", [
                run("r1_sweep[gamma=0.1]", 0, values={"swd": 30.1, "precision_domain": 0.52, "copy_rate": 0.0067}),
                run("r1_sweep[gamma=0.1]", 1, "failed", seconds=80.0, error="training stopped at 3.2 kimg: loss is nan; lower the learning rate"),
                run("r1_sweep[gamma=0.1]", 2, values={"swd": 33.4, "precision_domain": 0.55, "copy_rate": 0.01}, seconds=230.0),
            ], **{"regularizers.0.gamma": 0.1}),
            variant("ddpm", "ddpm (dpm++ 25 steps)", [
                run("ddpm", 0, values={"swd": 52.0, "precision_domain": 0.80, "copy_rate": 0.02, "utility_accuracy": 0.66}, seconds=3700.0),
                run("ddpm", 1, values={"swd": 55.5, "precision_domain": 0.78, "copy_rate": 0.0133, "utility_accuracy": 0.69}, seconds=3820.0),
                run("ddpm", 2, "pending"),
            ], **{"generator.sampler": "dpm++"}),
        ],
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report of make_results(), written once for the module (plots take a moment)."""
    out = tmp_path_factory.mktemp("bench")
    report = write_report(make_results(), out)
    return out, report.read_text()


def cells(line: str) -> list[str]:
    """A markdown table row's cells, split on unescaped '|'."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def results_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of the Results section, parsed."""
    blocks = section(text, "Results").split("\n\n")
    return [[cells(line) for line in block.strip().splitlines()] for block in blocks if block.strip().startswith("|")]


def results_table(text: str) -> list[list[str]]:
    """The Results tables as one: variant, every metric's columns, then runs / train time / img/s (/ peak mem)."""
    overview, *per_metric = results_tables(text)
    return [[row[0]] + [cell for table in per_metric for cell in table[i][1:]] + row[1:] for i, row in enumerate(overview)]


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_summarize_means_and_stds_match_statistics():
    results = make_results()
    rows = summarize(results)
    assert [row["variant"] for row in rows] == ["stylegan2_ada", "r1_sweep[gamma=0.1]", "ddpm"]
    for row, var in zip(rows, results["variants"]):
        finished = [r for r in var["runs"] if r["status"] == "done"]
        for name in VALUES:
            numbers = [r["values"][name] for r in finished if name in r["values"]]
            stats = row["values"][name]
            assert stats["n"] == len(numbers)
            if not numbers:
                assert stats["mean"] is None and stats["std"] is None
                continue
            assert stats["mean"] == pytest.approx(statistics.mean(numbers), rel=1e-12)
            if len(numbers) == 1:
                assert stats["std"] is None
            else:
                assert stats["std"] == pytest.approx(statistics.stdev(numbers), rel=1e-12)
        assert row["train_seconds"] == pytest.approx(statistics.mean(r["train_seconds"] for r in finished))
        assert row["img_per_s"] == pytest.approx(statistics.mean(r["img_per_s"] for r in finished))
    assert rows[0]["values"]["utility_accuracy"] == {"mean": 0.71, "std": None, "n": 1, "interval": None}  # one seed, no half-samples
    assert rows[1]["values"]["utility_accuracy"] == {"mean": None, "std": None, "n": 0, "interval": None}
    # several seeds: Student's t interval of the mean
    swd = rows[1]["values"]["swd"]
    numbers = [r["values"]["swd"] for r in results["variants"][1]["runs"] if r["status"] == "done"]
    half = scipy_stats.t.ppf(0.975, len(numbers) - 1) * statistics.stdev(numbers) / len(numbers) ** 0.5
    assert swd["interval"] == pytest.approx((statistics.mean(numbers) - half, statistics.mean(numbers) + half))
    assert rows[1]["runs"] == {"done": 2, "failed": 1, "pending": 0} and rows[2]["runs"] == {"done": 2, "failed": 0, "pending": 1}


def test_table_has_arrows_and_bolds_the_best_mean_per_direction(written):
    _, text = written
    header, _, *body = results_table(text)
    assert header[:5] == ["variant", "swd ↓", "precision_domain ↑ †", "copy_rate ↓", "utility_accuracy ↑"]
    assert header[5:] == ["runs", "train time", "img/s"]
    column = {name: header.index(title) for name, title in zip(VALUES, header[1:5])}
    bold = {name: [i for i, row in enumerate(body) if row[column[name]].startswith("**")] for name in VALUES}
    assert bold == {"swd": [1], "precision_domain": [2], "copy_rate": [0], "utility_accuracy": [0]}
    rows = summarize(make_results())
    swd = rows[1]["values"]["swd"]
    low, high = swd["interval"]
    assert body[1][column["swd"]] == f"**{format_number(swd['mean'])} ± {format_number(swd['std'])}** [{format_number(low)}, {format_number(high)}]"
    assert body[0][column["utility_accuracy"]] == "**0.71**"  # one seed: the mean alone
    assert body[1][column["utility_accuracy"]] == "—"
    assert [row[-3] for row in body] == ["3/3 done", "2/3 done, 1 failed", "2/3 done, 1 pending"]
    assert body[0][-2] == format_duration(statistics.mean([190.2, 185.0, 201.5])) == "3m 12s"
    assert "↓ lower is better, ↑ higher is better" in text and "mean ± sample standard deviation over the finished seeds" in text
    # One table per metric (after the runs and cost table), so many values stay readable.
    assert re.findall(r"^### (.+)$", section(text, "Results"), flags=re.M) == ["swd", "prdc", "memorization", "utility"]
    assert all(table[0][0] == "variant" and len(table) == 5 for table in results_tables(text))


def test_a_single_metric_gets_a_single_table(tmp_path):
    results = make_results()
    results["values"] = {"swd": VALUES["swd"]}
    for var in results["variants"]:
        for r in var["runs"]:
            r["values"] = {k: v for k, v in r["values"].items() if k == "swd"}
    text = write_report(results, tmp_path).read_text()
    (table,) = results_tables(text)
    assert table[0] == ["variant", "swd ↓", "runs", "train time", "img/s"]
    assert "###" not in section(text, "Results")


def test_dagger_footnote_appears_exactly_with_a_dataset_specific_value(written, tmp_path):
    _, text = written
    footnote = "† computed in an embedding trained on this dataset's training split: compare variants within this benchmark only, never across datasets."
    assert footnote in text
    results = make_results()
    results["values"]["precision_domain"]["dataset_specific"] = False
    plain = write_report(results, tmp_path).read_text()
    assert "†" not in plain and "embedding trained on this dataset" not in plain


def test_sections_in_order_with_failures_pending_and_notes(written):
    _, text = written
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert text.startswith("# Benchmark: embedded-32 demo\n")
    assert headings == ["Results", "Settings", "Plots", "Samples", "Failures and pending runs", "Notes"]
    overview = text.split("\n\n")[1]
    for fact in ("300 training / 60 held-out", "32×32", "fundus, histology", "8 kimg", "seeds 0, 1, 2", "300 synthetic", "2026-11-22", "torch 2.14.1"):
        assert fact in overview
    failures = section(text, "Failures and pending runs").strip().splitlines()
    assert len(failures) == 2
    assert "seed 1" in failures[0] and "`runs/r1_sweep[gamma=0.1]/seed-1`" in failures[0]
    assert "training stopped at 3.2 kimg: loss is nan; lower the learning rate" in failures[0]
    assert failures[1].startswith("- pending: ddpm (dpm++ 25 steps), seed 2") and "runs/ddpm/seed-2" in failures[1]
    notes = section(text, "Notes")
    assert "- frd is not installed" in notes and "split id `3f2a9c1e0b7d`" in notes and "`raresynth bench benchmarks/default.yaml`" in notes
    settings = [cells(line) for line in section(text, "Settings").strip().splitlines()]
    assert settings[4][3] == "generator.sampler=dpm++" and settings[2][6] == "truncation=1.0"
    assert settings[3][3] == "base config"  # its gamma is the regularizers column's to show


def test_no_failures_section_when_every_run_finished(tmp_path):
    results = make_results()
    results["variants"] = results["variants"][:1]
    text = write_report(results, tmp_path).read_text()
    assert "## Failures" not in text
    assert "**" not in "".join(results_table(text)[2][1:])  # one variant: nothing to compare


def test_results_csv_is_tidy_with_one_row_per_finished_run_and_value(written):
    out, _ = written
    with open(out / "results.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["variant", "seed", "status", "value", "number", "higher_is_better", "dataset_specific", "ideal", "ci_low", "ci_high"]
    expected = {
        (var["name"], str(r["seed"]), name): number
        for var in make_results()["variants"] for r in var["runs"] if r["status"] == "done" for name, number in r["values"].items()
    }
    assert len(rows) == len(expected) == 24
    assert {(row["variant"], row["seed"], row["value"]): float(row["number"]) for row in rows} == expected
    assert {row["status"] for row in rows} == {"done"}
    for row in rows:
        assert row["higher_is_better"] == str(VALUES[row["value"]]["higher_is_better"]).lower()
        assert row["dataset_specific"] == ("true" if row["value"] == "precision_domain" else "false")


def test_every_plot_in_the_report_is_a_png(written):
    out, text = written
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section(text, "Plots"))
    assert links == ["plots/swd.png", "plots/prdc.png", "plots/memorization.png", "plots/utility.png", "plots/train_time.png"]
    for link in links:
        path = out / link
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    samples = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section(text, "Samples"))
    assert samples == ["grids/stylegan2_ada.png", "grids/r1_sweep%5Bgamma%3D0.1%5D.png", "grids/ddpm.png"]


def test_label_with_a_pipe_does_not_add_a_column(written):
    _, text = written
    table = results_table(text)
    assert len({len(row) for row in table}) == 1
    assert table[3][0] == r"r1_sweep \| gamma=0.1"
    settings = [cells(line) for line in section(text, "Settings").strip().splitlines()]
    assert len({len(row) for row in settings}) == 1


def test_write_report_is_deterministic_and_keeps_other_files(written):
    out, text = written
    (out / "results.json").write_text("{}")
    again = write_report(make_results(), out).read_text()
    assert again == text
    assert (out / "results.json").read_text() == "{}"


def test_unfinished_variants_odd_values_and_safe_plot_names(tmp_path):
    results = make_results()
    stylegan2, _, ddpm = results["variants"]
    stylegan2["runs"][1]["values"]["swd"] = math.nan  # a diverged seed: the mean is nan, never the best
    results["variants"].append(variant("dcgan", "dcgan *smoke*", [run("dcgan", 0, "failed", error="out of memory"), run("dcgan", 1, "pending")]))
    results["values"]["fid/inception v3"] = {"higher_is_better": False, "dataset_specific": False}  # no metric: grouped alone
    ddpm["runs"][0]["values"]["fid/inception v3"] = 0.000123
    for r in ddpm["runs"][:2]:
        r["peak_mem_gib"] = 12.5  # a GPU run: the table gains a column
    text = write_report(results, tmp_path).read_text()
    header, _, *body = results_table(text)
    assert len(body) == 4 and body[3][0] == r"dcgan \*smoke\*"
    assert body[3][1:6] == ["—"] * 5 and body[3][6] == "0/2 done, 1 failed, 1 pending" and body[3][7] == "—"
    assert body[0][1] == "nan ± nan" and [i for i, row in enumerate(body) if row[1].startswith("**")] == [1]
    assert header[5] == "fid/inception v3 ↓" and body[2][5] == "1.23e-04"
    assert header[-1] == "peak mem" and [row[-1] for row in body] == ["—", "—", "12.5 GiB", "—"]
    plots = re.findall(r"\]\((plots/[^)]+)\)", text)
    assert "plots/fid_inception_v3.png" in plots
    for link in plots:
        assert re.fullmatch(r"plots/[A-Za-z0-9_.-]+\.png", link) and (tmp_path / link).is_file()


def test_no_plots_before_any_run_finished(tmp_path):
    results = make_results()
    for var in results["variants"]:
        for r in var["runs"]:
            r.update(status="pending", values={}, train_seconds=None, img_per_s=None)
    text = write_report(results, tmp_path).read_text()
    assert "No finished run yet" in section(text, "Plots") and not (tmp_path / "plots").exists()
    assert all(row[1:5] == ["—"] * 4 for row in results_table(text)[2:])


def test_number_and_duration_formats():
    assert [format_number(x) for x in (41.73, 0.61, 0.000123, 0.0, 1234.5, 999.7, 2.5e7, math.nan, -math.inf, None)] == [
        "41.7", "0.61", "1.23e-04", "0", "1234", "1000", "2.50e+07", "nan", "-inf", "—"
    ]
    assert [format_duration(s) for s in (4.24, 45.0, 190.2, 3750.0)] == ["4.2s", "45s", "3m 10s", "1h 02m"]


def test_malformed_results_name_what_is_missing(tmp_path):
    results = make_results()
    del results["variants"][1]["runs"][0]["status"]
    with pytest.raises(RaresynthError, match=r"variant 'r1_sweep\[gamma=0.1\]' runs\[0\] needs a 'seed' and a 'status'"):
        write_report(results, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written
    results = make_results()
    results["variants"][0]["runs"][0]["values"]["swd"] = "n/a"
    with pytest.raises(RaresynthError, match="variant 'stylegan2_ada' seed 0: swd is not a number"):
        summarize(results)


def test_a_metric_with_many_values_is_transposed_without_its_own_spreads_and_baselines_are_not_bold(tmp_path):
    results = make_results()
    results["variants"] = results["variants"][::2]  # two variants: stylegan2_ada, ddpm
    regimes = {"utility_trtr_accuracy": 0.9, "utility_tstr_accuracy": None, "utility_tmtr_accuracy": None}
    for name in regimes:
        for suffix in ("", "_std"):
            results["values"][name + suffix] = {"metric": "utility", "higher_is_better": not suffix, "dataset_specific": False}
    for i, var in enumerate(results["variants"]):
        for r in var["runs"]:
            if r["status"] == "done":
                r["values"].update({"utility_trtr_accuracy": 0.9, "utility_trtr_accuracy_std": 0.01,  # the real-only baseline
                                    "utility_tstr_accuracy": 0.5 + 0.3 * i, "utility_tstr_accuracy_std": 0.02,
                                    "utility_tmtr_accuracy": 0.8, "utility_tmtr_accuracy_std": 0.03})
    results["values"].pop("utility_accuracy")
    text = write_report(results, tmp_path).read_text()
    utility = section(text, "Results").split("### utility\n\n", 1)[1].split("\n\n", 1)[0]
    table = [cells(line) for line in utility.splitlines()]
    assert table[0] == ["value", "stylegan2_ada", "ddpm (dpm++ 25 steps)"]  # 3 values > 2 variants: a row per value
    assert [row[0] for row in table[2:]] == ["utility_trtr_accuracy ↑", "utility_tstr_accuracy ↑", "utility_tmtr_accuracy ↑"]
    assert table[2][1:] == ["0.9 ± 0 [0.9, 0.9]", "0.9 ± 0 [0.9, 0.9]"]  # the same for every variant: no bold
    assert table[3][2].startswith("**0.8") and not table[3][1].startswith("**")
    assert "_std" not in section(text, "Results").split("Spreads that", 1)[0]
    assert "(`..._std`) are in results.csv" in text
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as file:
        assert any(row["value"] == "utility_tstr_accuracy_std" for row in csv.DictReader(file))


# -- reference rows, ideals, the noise gate ------------------------------------------


def verdict_results() -> dict:
    """Two variants on a dataset with reference rows: a learning GAN and a noise-like model that wins some values."""
    values = {
        "swd": {"metric": "swd", "ideal": "lower", "question": "fidelity", "must_beat": ["noise"], "dataset_specific": False},
        "precision": {"metric": "prdc", "ideal": "higher", "question": "fidelity", "must_beat": ["noise"], "dataset_specific": False},
        "recall": {"metric": "prdc", "ideal": "higher", "question": "diversity", "must_beat": ["noise"], "dataset_specific": False},
        "ms_ssim_synthetic": {"metric": "ms_ssim", "ideal": "real", "question": "diversity", "must_beat": ["noise"], "dataset_specific": False},
        "mean_gap": {"metric": "mean_gap", "ideal": "lower", "question": "fidelity", "must_beat": ["noise"], "dataset_specific": False,
                     "informative": False, "uninformative_because": "noise scores 0.001, real (held-out) 0.06"},
        "copy_rate": {"metric": "memorization", "ideal": "lower", "question": "privacy", "must_beat": ["copies"], "dataset_specific": False},
    }
    for name in ("swd", "precision", "recall", "ms_ssim_synthetic", "copy_rate"):
        values[name]["informative"] = True
    gan = {"swd": 120.0, "precision": 0.7, "recall": 0.5, "ms_ssim_synthetic": 0.35, "mean_gap": 0.02, "copy_rate": 0.06}
    noisy = {"swd": 110.0, "precision": 0.2, "recall": 0.95, "ms_ssim_synthetic": 0.05, "mean_gap": 0.01, "copy_rate": 0.0}
    replicates = {name: [v * 0.98, v * 1.02, v * 0.99, v * 1.01] for name, v in gan.items()}
    results = make_results()
    results["values"] = values
    results["variants"] = [
        variant("gan", "gan", [dict(run("gan", 0, values=gan), replicates=replicates)]),
        variant("noisy", "noisy", [dict(run("noisy", 0, values=noisy), replicates={n: [v * 0.98, v * 1.02, v, v] for n, v in noisy.items()})]),
    ]
    results["references"] = {
        "real": {"swd": {"value": 60.0}, "precision": {"value": 0.95}, "recall": {"value": 0.9}, "ms_ssim_synthetic": {"value": 0.40, "replicates": [0.39, 0.41, 0.40, 0.42]},
                 "mean_gap": {"value": 0.06}, "copy_rate": {"value": 0.05}},
        "copies": {"swd": {"value": 30.0}, "precision": {"value": 1.0}, "recall": {"value": 1.0}, "ms_ssim_synthetic": {"value": 0.39},
                   "mean_gap": {"value": 0.0}, "copy_rate": {"value": 1.0}},
        "noise": {"swd": {"value": 320.0}, "precision": {"value": 0.1}, "recall": {"value": 0.4}, "ms_ssim_synthetic": {"value": 0.05},
                  "mean_gap": {"value": 0.001}, "copy_rate": {"value": 0.0}},
    }
    return results


def test_a_noise_like_model_is_never_crowned_and_reference_rows_are_shown(tmp_path):
    from raresynth.bench.report import fidelity_position

    results = verdict_results()
    rows = summarize(results)
    # fidelity position: median of (score - noise) / (real - noise) over informative fidelity values (mean_gap is not)
    gan_position = statistics.median([(320 - 120) / (320 - 60), (0.7 - 0.1) / (0.95 - 0.1)])
    noisy_position = statistics.median([(320 - 110) / (320 - 60), (0.2 - 0.1) / (0.95 - 0.1)])
    assert fidelity_position(results, rows[0]) == pytest.approx(gan_position)
    assert fidelity_position(results, rows[1]) == pytest.approx(noisy_position) and noisy_position < 0.5 < gan_position
    text = write_report(results, tmp_path).read_text()
    overview = results_tables(text)[0]
    assert overview[0][-1] == "fidelity (noise 0, real 1)"
    assert overview[2][-1] == format_number(gan_position) and overview[3][-1].endswith("⚠ noise-like")
    body = {row[0]: row for table in results_tables(text)[1:] for row in table[2:]}
    # reference rows in every metric table, italic, never bold
    assert "*real (held-out)* (reference)" in body and "*noise* (reference)" in body and "*copies* (reference)" in body
    assert not any("**" in cell for label, row in body.items() if "(reference)" in label for cell in row)
    swd_table = next(t for t in results_tables(text) if t[0][1].startswith("swd"))
    # swd prefers the noise-like model (110 < 120): nothing is marked best
    assert not any(row[1].startswith("**") for row in swd_table[2:])
    assert "`swd`: best mean noisy (not marked best: its samples look like noise, see the fidelity position); vs gan: p < 0.001, significant" in text
    assert "`recall`: best mean noisy (not marked best: its samples look like noise, and the diversity of noise is no merit" in text
    prdc = next(t for t in results_tables(text) if t[0][1].startswith("precision"))
    header = prdc[0]
    recall = header.index("recall ↑")
    # recall (diversity): noise covers everything, no merit: the best of the others is marked
    assert prdc[2][recall].startswith("**0.5") and not prdc[3][recall].startswith("**")
    assert prdc[2][header.index("precision ↑")].startswith("**0.7")
    ms_ssim = next(t for t in results_tables(text) if t[0][1].startswith("ms_ssim"))
    assert ms_ssim[0][1] == "ms_ssim_synthetic ≈" and ms_ssim[2][1].startswith("**0.35")  # closest to real's 0.40
    mean_gap = next(t for t in results_tables(text) if t[0][1].startswith("mean_gap"))
    assert mean_gap[0][1].endswith("⚠") and not any(row[1].startswith("**") for row in mean_gap[2:])
    assert "⚠ `mean_gap` is uninformative on this dataset (noise scores 0.001, real (held-out) 0.06)" in text
    copy_rate = next(t for t in results_tables(text) if t[0][1].startswith("copy"))
    assert copy_rate[2][1].startswith("**0.06")  # privacy: the noise-like model's 0 copies is no merit
    # one seed each, with half-samples: cells carry the half-sample interval
    swd_cell = swd_table[2][1]
    spread = 1.959964 * statistics.stdev([v * 120 for v in (0.98, 1.02, 0.99, 1.01)])
    assert swd_cell == f"120 [{format_number(120 - spread)}, {format_number(120 + spread)}]"
    # results.csv holds the reference rows too
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as file:
        refs = [row for row in csv.DictReader(file) if row["status"] == "reference"]
    assert {(row["variant"], row["value"]) for row in refs} >= {("real", "swd"), ("noise", "swd"), ("copies", "copy_rate")}
    assert (tmp_path / "plots" / "swd.png").is_file()


def two_variant_results(names: Mapping[str, tuple[str, str, str]], a: Mapping[str, float], b: Mapping[str, float],
                        real: Mapping[str, float], noise: Mapping[str, float]) -> dict:
    """Variants a and b, one seed each, and reference rows; ``names``: value -> (metric, ideal, question), all informative."""
    results = make_results()
    results["values"] = {n: {"metric": m, "ideal": i, "question": q, "must_beat": ["noise"], "informative": True, "dataset_specific": False}
                         for n, (m, i, q) in names.items()}
    results["variants"] = [variant("a", "a", [run("a", 0, values=dict(a))]), variant("b", "b", [run("b", 0, values=dict(b))])]
    results["references"] = {"real": {n: {"value": v} for n, v in real.items()}, "noise": {n: {"value": v} for n, v in noise.items()},
                             "copies": {n: {"value": v} for n, v in real.items()}}
    return results


def test_a_value_that_disagrees_with_its_questions_majority_is_not_bold(tmp_path):
    """Neither model looks like noise; the blurrier one (a) wins most fidelity and diversity metrics, the noisier one (b)
    wins SWD and recall: those two are not bold, and the report says why."""
    names = {"swd": ("swd", "lower", "fidelity"), "precision": ("prdc", "higher", "fidelity"), "fid": ("fid", "lower", "fidelity"),
             "recall": ("prdc", "higher", "diversity"), "coverage": ("prdc", "higher", "diversity"),
             "ms_ssim_gap": ("ms_ssim", "lower", "diversity")}
    a = {"swd": 200.0, "precision": 0.9, "fid": 0.10, "recall": 0.70, "coverage": 0.53, "ms_ssim_gap": 0.10}
    b = {"swd": 185.0, "precision": 0.76, "fid": 0.17, "recall": 0.99, "coverage": 0.51, "ms_ssim_gap": 0.37}
    real = {"swd": 64.0, "precision": 0.97, "fid": 0.006, "recall": 0.99, "coverage": 0.58, "ms_ssim_gap": 0.02}
    noise = {"swd": 321.0, "precision": 0.47, "fid": 1.42, "recall": 0.42, "coverage": 0.22, "ms_ssim_gap": 0.35}
    results = two_variant_results(names, a, b, real, noise)
    from raresynth.bench.report import question_verdicts

    rows = summarize(results)
    verdicts = question_verdicts(results, rows)
    assert verdicts["fidelity"] == {"metrics": 3, "wins": {"b": 1, "a": 2}, "winner": "a"}  # swd: b; prdc (precision), fid: a
    # prdc's diversity values split (recall b, coverage a): prdc casts no diversity vote; ms_ssim's goes to a
    assert verdicts["diversity"] == {"metrics": 1, "wins": {"a": 1}, "winner": "a"}
    text = write_report(results, tmp_path).read_text()
    table = results_table(text)
    header = [cell.split(" ")[0] for cell in table[0]]
    bold = {name: [row[0] for row in table[2:] if row[header.index(name)].startswith("**")] for name in names}
    assert bold == {"swd": [], "precision": ["a"], "fid": ["a"], "recall": [], "coverage": ["a"], "ms_ssim_gap": ["a"]}
    assert "`swd`: best mean b (not marked best: the fidelity verdict goes to a, 2 of 3 metric votes, and this one disagrees)" in text
    assert "`recall`: best mean b (not marked best: the diversity verdict goes to a, 1 of 1 metric votes, and this one disagrees)" in text
    assert "- fidelity: **a** (a 2, b 1, of 3)" in text and "- diversity: **a** (a 1, of 1)" in text
    # without MS-SSIM, diversity has only prdc's split values: no metric votes, and nothing is held back from bold
    for where in [results["values"], *(r["values"] for v in results["variants"] for r in v["runs"]), *results["references"].values()]:
        where.pop("ms_ssim_gap")
    verdicts = question_verdicts(results, summarize(results))
    assert verdicts["diversity"] == {"metrics": 0, "wins": {}, "winner": None}
    text = write_report(results, tmp_path).read_text()
    assert "- diversity: no majority (each metric's diversity values split between variants: no metric voted)" in text
    table = results_table(text)
    header = [cell.split(" ")[0] for cell in table[0]]
    assert [row[0] for row in table[2:] if row[header.index("recall")].startswith("**")] == ["b"]


def test_one_metric_one_vote_in_the_verdict_and_the_fidelity_position(tmp_path):
    """A metric that reports a value per scale (SWD: the average and two levels, all preferring the noisier b) weighs as
    much as a metric with one value: it does not outvote FID and PRDC, and counts once in the fidelity position, where a
    value whose ideal is the real images' value (density) counts by its distance from real."""
    from raresynth.bench.report import fidelity_position, question_verdicts

    names = {"swd": ("swd", "lower", "fidelity"), "swd_32": ("swd", "lower", "fidelity"), "swd_16": ("swd", "lower", "fidelity"),
             "fid": ("fid", "lower", "fidelity"), "precision": ("prdc", "higher", "fidelity"), "density": ("prdc", "real", "fidelity")}
    a = {"swd": 219.0, "swd_32": 254.0, "swd_16": 186.0, "fid": 0.14, "precision": 0.87, "density": 0.72}
    b = {"swd": 185.0, "swd_32": 185.0, "swd_16": 184.0, "fid": 0.26, "precision": 0.73, "density": 0.51}
    real = {"swd": 62.4, "swd_32": 28.4, "swd_16": 96.3, "fid": 0.0066, "precision": 0.93, "density": 0.96}
    noise = {"swd": 321.0, "swd_32": 280.0, "swd_16": 362.0, "fid": 0.98, "precision": 0.09, "density": 0.022}
    results = two_variant_results(names, a, b, real, noise)
    rows = summarize(results)
    # value by value, b would win 3 of 6 (the three SWD values) and tie with a; metric by metric, a wins 2 of 3
    assert question_verdicts(results, rows)["fidelity"] == {"metrics": 3, "wins": {"a": 2, "b": 1}, "winner": "a"}

    def position(values, name):
        metric, ideal, _ = names[name]
        if ideal == "real":
            return 1 - abs(values[name] - real[name]) / abs(noise[name] - real[name])
        sign = 1 if ideal == "higher" else -1
        return (sign * values[name] - sign * noise[name]) / (sign * real[name] - sign * noise[name])

    for row, values in zip(rows, (a, b)):
        swd = statistics.median(position(values, n) for n in ("swd", "swd_32", "swd_16"))
        prdc = statistics.median(position(values, n) for n in ("precision", "density"))
        assert fidelity_position(results, row) == pytest.approx(statistics.median([swd, position(values, "fid"), prdc]))
    assert fidelity_position(results, rows[0]) > fidelity_position(results, rows[1])
    # counted value by value (the median of all six), b's three SWD values would put it ahead of a
    by_value = [statistics.median(position(values, n) for n in names if names[n][1] != "real") for values in (a, b)]
    assert by_value[1] > by_value[0]
    text = write_report(results, tmp_path).read_text()
    assert "- fidelity: **a** (a 2, b 1, of 3)" in text
    assert "`swd_32`: best mean b (not marked best: the fidelity verdict goes to a, 2 of 3 metric votes, and this one disagrees)" in text

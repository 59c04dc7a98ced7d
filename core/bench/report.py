"""A readable report of a benchmark: summary table, settings, plots, samples, failures.

``raresynth bench`` trains several variants x several seeds and collects everything in
one plain ``results`` dict (also saved as ``results.json``). :func:`summarize` reduces
it to one row per variant; :func:`write_report` writes, into the benchmark folder::

    report.md          results tables (mean ± std over seeds with a 95% interval, the reference
                       rows real (held-out) / copies / noise, the best by each value's ideal
                       in bold, tests of the best against the others), settings, plots,
                       sample grids, failed and pending runs, notes
    results.csv        tidy: one row per run x value, and per reference row x value
    plots/<value>.png  one bar chart per value (seeds as points, reference lines), and train_time.png

A value is bolded only when it is informative on this dataset (it ranks real held-out
images ahead of the trivial reference it must beat) and the best variant also beats
that reference: a model whose samples score like noise is never crowned.

Only finished runs (``status: done``) count in means and plots; failed and pending
runs are listed, never averaged. Structure is required (``variants``, each with
``name`` and ``runs``, each run with ``seed`` and ``status``); everything else is read
with a default, so a report can still be written for an interrupted benchmark.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..errors import RaresynthError
from ..files import atomic_path, write_text_atomic
from ..evaluation.references import COPIES, LABELS, NOISE, REAL, REFERENCES
from ..evaluation.statistics import RunValue, cell_interval, compare, score

REPORT_FILE = "report.md"
HTML_FILE = "report.html"
CSV_FILE = "results.csv"
PLOTS_DIR = "plots"
TRAIN_TIME_PLOT = "train_time"
CSV_FIELDS = ("variant", "seed", "status", "value", "number", "higher_is_better", "dataset_specific", "ideal", "ci_low", "ci_high")
DAGGER_NOTE = (
    "computed in an embedding trained on this dataset's training split: "
    "compare variants within this benchmark only, never across datasets"
)


# ---------------------------------------------------------------------------
# Reading the results dict
# ---------------------------------------------------------------------------


def _variants(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The variants, with the keys the report cannot do without checked."""
    variants = results.get("variants")
    if not isinstance(variants, list):
        raise RaresynthError("benchmark results: 'variants' must be a list of variants")
    for i, variant in enumerate(variants):
        if "name" not in variant or not isinstance(variant.get("runs"), list):
            raise RaresynthError(f"benchmark results: variants[{i}] needs a 'name' and a 'runs' list")
        for j, run in enumerate(variant["runs"]):
            if "seed" not in run or "status" not in run:
                raise RaresynthError(f"benchmark results: variant '{variant['name']}' runs[{j}] needs a 'seed' and a 'status'")
    return variants


def _label(variant: Mapping[str, Any]) -> str:
    return str(variant.get("label") or variant["name"])


def _value_names(results: Mapping[str, Any]) -> list[str]:
    """Value names in the order of ``results['values']``, then any other reported name, sorted."""
    names = list(results.get("values") or {})
    extra = {name for variant in _variants(results) for run in variant["runs"] for name in (run.get("values") or {})}
    return names + sorted(extra - set(names))


def _value_info(results: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``{"higher_is_better": bool | None, "dataset_specific": bool, ...}`` for one value name."""
    return (results.get("values") or {}).get(name) or {}


def _metric_of(results: Mapping[str, Any], name: str) -> str:
    """The metric plugin that reported value ``name`` (the value's own name when unknown): the unit of one vote."""
    return str(_value_info(results, name).get("metric") or name)


def _groups(results: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Value names grouped by the metric plugin that reported them, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_metric_of(results, name), []).append(name)
    return list(groups.items())


def _number(run: Mapping[str, Any], key: str, where: str) -> float | None:
    value = run.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RaresynthError(f"benchmark results: {where}: {key} is not a number ({value!r})") from None


def _run_values(variant: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, float]:
    """A run's values as floats; ``None`` entries (value not computed) are left out."""
    where = f"variant '{variant['name']}' seed {run['seed']}"
    values = run.get("values") or {}
    return {name: number for name in values if (number := _number(values, name, where)) is not None}


def _finished(variant: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [run for run in variant["runs"] if run["status"] == "done"]


def _mean_std(numbers: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for one number).

    A non-finite number makes the mean non-finite (nan, or inf) and the std nan:
    the table shows it rather than hiding a diverged seed.
    """
    if not numbers:
        return None, None
    if all(math.isfinite(x) for x in numbers):
        return statistics.mean(numbers), (statistics.stdev(numbers) if len(numbers) > 1 else None)
    return sum(numbers) / len(numbers), (math.nan if len(numbers) > 1 else None)


def _seed_values(variant: Mapping[str, Any], name: str) -> list[float]:
    """One number per finished run that reported value ``name``."""
    return [values[name] for run in _finished(variant) if name in (values := _run_values(variant, run))]


def _run_samples(variant: Mapping[str, Any], name: str) -> list[RunValue]:
    """Each finished run's value of ``name`` with its half-sample replicates."""
    samples = []
    for run in _finished(variant):
        values = _run_values(variant, run)
        if name in values:
            samples.append(RunValue(values[name], [float(x) for x in (run.get("replicates") or {}).get(name, [])]))
    return samples


def ideal_of(info: Mapping[str, Any]) -> str:
    """A value's ideal (``higher``, ``lower``, ``real``, ``none``), from ``ideal`` or the older ``higher_is_better``."""
    return info.get("ideal") or {True: "higher", False: "lower"}.get(info.get("higher_is_better"), "none")


def reference_rows(results: Mapping[str, Any]) -> list[dict]:
    """The reference rows (real held-out, copies, noise) in :func:`summarize`'s shape, ``reference`` set."""
    references = results.get("references") or {}
    rows = []
    for ref in REFERENCES:
        measured = references.get(ref)
        if not measured:
            continue
        values = {}
        for name in _value_names(results):
            entry = measured.get(name)
            if entry is None or entry.get("value") is None:
                values[name] = {"mean": None, "std": None, "n": 0, "interval": None}
                continue
            value = float(entry["value"])
            interval = cell_interval([RunValue(value, [float(x) for x in entry.get("replicates") or []])])
            values[name] = {"mean": value, "std": None, "n": 1, "interval": interval}
        rows.append({"variant": ref, "label": LABELS[ref], "reference": True, "values": values})
    return rows


def reference_value(results: Mapping[str, Any], ref: str, name: str) -> float | None:
    entry = ((results.get("references") or {}).get(ref) or {}).get(name)
    return None if entry is None or entry.get("value") is None else float(entry["value"])


#: A variant whose fidelity values lie closer to the noise reference than to real images
#: (median position below this, on a scale noise = 0, real (held-out) = 1) "looks like noise".
NOISE_LIKE_BELOW = 0.5
#: Merits that mean nothing without fidelity: the diversity, privacy or utility of noise.
GATED_QUESTIONS = ("diversity", "privacy", "utility")


def fidelity_position(results: Mapping[str, Any], row: Mapping[str, Any]) -> float | None:
    """Where a variant's fidelity lies between the noise (0) and real (held-out) (1) rows: a median over metrics.

    Per informative fidelity value with both references, the position is
    ``(score - score(noise)) / (score(real) - score(noise))`` with each value oriented by its
    ideal; for an ideal of ``real`` that is ``1 - |value - real| / |noise - real|``. Each
    metric counts once, with the median of its values' positions: SWD's per-level values
    and their average are one metric, not three votes. ``None`` without any such value.
    """
    per_metric: dict[str, list[float]] = {}
    for name, stats in row["values"].items():
        info = _value_info(results, name)
        ideal = ideal_of(info)
        if info.get("question", "fidelity") != "fidelity" or ideal == "none" or info.get("informative") is not True:
            continue
        real, noise, mean = reference_value(results, REAL, name), reference_value(results, NOISE, name), stats.get("mean")
        if real is None or noise is None or mean is None or not all(math.isfinite(x) for x in (real, noise, mean)) or real == noise:
            continue
        best, worst = score(real, ideal, real), score(noise, ideal, real)
        per_metric.setdefault(_metric_of(results, name), []).append((score(mean, ideal, real) - worst) / (best - worst))
    return statistics.median(statistics.median(p) for p in per_metric.values()) if per_metric else None


def noise_like(results: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    position = fidelity_position(results, row)
    return position is not None and position < NOISE_LIKE_BELOW


def _seed_field(variant: Mapping[str, Any], key: str) -> list[float]:
    """One number per finished run that has run field ``key`` (``train_seconds``, ...)."""
    numbers = [_number(run, key, f"variant '{variant['name']}' seed {run['seed']}") for run in _finished(variant)]
    return [x for x in numbers if x is not None]


def summarize(results: dict) -> list[dict]:
    """One row per variant, in the benchmark's order.

    Each row: ``variant`` (name), ``label``, ``runs`` (count per status; ``done``,
    ``failed`` and ``pending`` always present), ``total_runs``, ``values`` (for every
    value name: ``mean``, ``std`` -- sample std, ddof=1, ``None`` for one seed -- and
    ``n``, the finished runs with that value), and the means over finished runs of
    ``train_seconds``, ``img_per_s`` and ``peak_mem_gib`` (``None`` when no finished
    run has one). Failed and pending runs count in ``runs`` only.
    """
    names = _value_names(results)
    rows = []
    for variant in _variants(results):
        runs = {"done": 0, "failed": 0, "pending": 0}
        for run in variant["runs"]:
            runs[str(run["status"])] = runs.get(str(run["status"]), 0) + 1
        values = {}
        for name in names:
            numbers = _seed_values(variant, name)
            mean, std = _mean_std(numbers)
            interval = cell_interval(_run_samples(variant, name)) if numbers else None
            values[name] = {"mean": mean, "std": std, "n": len(numbers), "interval": interval}
        row = {"variant": variant["name"], "label": _label(variant), "runs": runs, "total_runs": len(variant["runs"]), "values": values}
        for key in ("train_seconds", "img_per_s", "peak_mem_gib", "kimg"):
            row[key] = _mean_std(_seed_field(variant, key))[0]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def format_number(x: float | None) -> str:
    """Three significant digits; scientific notation for very small or large numbers."""
    if x is None:
        return "—"
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    size = abs(x)
    if size < 1e-3 or size >= 1e6:
        return f"{x:.2e}"
    if size >= 999.5:  # '.3g' would write 1234 as 1.23e+03
        return f"{x:.0f}"
    return f"{x:.3g}"


def format_duration(seconds: float | None) -> str:
    """``4.2s``, ``45s``, ``3m 10s``, ``2h 05m``."""
    if seconds is None or not math.isfinite(seconds):
        return format_number(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes == 0:
        return f"{secs}s"
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _md(text: Any) -> str:
    """Text that cannot break a table row or turn into markup."""
    text = " ".join(str(text).split())  # a newline would end the table row
    text = re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\_", text)  # intraword '_' (stylegan2_ada) is never emphasis


def _link(path: str) -> str:
    return quote(str(path).replace("\\", "/"), safe="/")


def _options(options: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{key}={value}" for key, value in (options or {}).items())


def _metric_ref(ref: Any) -> str:
    if isinstance(ref, Mapping):
        rest = {k: v for k, v in ref.items() if k != "name"}
        return f"{ref.get('name')} ({_options(rest)})" if rest else str(ref.get("name"))
    return str(ref)


def _direction(info: Mapping[str, Any]) -> str:
    return {"higher": " ↑", "lower": " ↓", "real": " ≈"}.get(ideal_of(info), "")


def question_verdicts(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question (fidelity, diversity, privacy, utility): how many metrics each variant wins; one metric, one vote.

    ``{question: {"metrics": n, "wins": {variant: k}, "winner": variant | None}}``. A value
    counts when it has a single best variant (:func:`_value_winners`); a metric votes for
    the variant that wins most of its counted values in that question (none on a tie), so
    a metric that reports one value per scale or per score (SWD's levels, utility's three
    scores) weighs as much as one that reports a single number. The winner has more votes
    than any other variant (``None`` on a tie, or when every metric's values split).
    """
    tallies: dict[str, dict[str, dict[str, int]]] = {}
    names = _value_names(results)
    for name in names:
        if name.endswith("_std") and name.removesuffix("_std") in names:
            continue
        info = _value_info(results, name)
        winners = _value_winners(rows, name, info, results)
        if len(winners) != 1:
            continue
        metric = tallies.setdefault(info.get("question", "fidelity"), {}).setdefault(_metric_of(results, name), {})
        winner = rows[next(iter(winners))]["variant"]
        metric[winner] = metric.get(winner, 0) + 1
    verdicts: dict[str, dict[str, Any]] = {}
    for question, metrics in tallies.items():
        votes = [vote for vote in map(_ranked, metrics.values()) if vote is not None]
        wins = dict(Counter(votes))
        verdicts[question] = {"metrics": len(votes), "wins": wins, "winner": _ranked(wins)}
    return verdicts


def _ranked(counts: Mapping[str, int]) -> str | None:
    """The key with the highest count; ``None`` when there is none or two share it."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
        return ranked[0][0]
    return None


def _best_rows(rows: Sequence[Mapping[str, Any]], name: str, info: Mapping[str, Any], results: Mapping[str, Any] | None = None,
               verdicts: Mapping[str, Mapping[str, Any]] | None = None) -> set[int]:
    """The rows to bold for value ``name``: its best variant (:func:`_value_winners`), unless its question's
    verdict (:func:`question_verdicts`) goes to another variant.

    A value whose best variant is not the one most metrics of its question vote for (SWD
    preferring high-frequency noise over a blurry but faithful model, say) disagrees
    with them: nothing is marked, and the verdict line under the table says so.
    """
    best = _value_winners(rows, name, info, results)
    verdict = (verdicts if verdicts is not None else question_verdicts(results or {}, rows)).get(info.get("question", "fidelity"))
    if best and verdict and verdict.get("winner") is not None and verdict["winner"] not in {rows[i]["variant"] for i in best}:
        return set()
    return best


def _value_winners(rows: Sequence[Mapping[str, Any]], name: str, info: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> set[int]:
    """Indices of the variant rows with the best finite mean by the value's ideal (all of them on a tie).

    None when fewer than two variants have the value, all are equal (a shared
    baseline), the value is uninformative on this dataset, its ideal is the real
    images' value and there is no real (held-out) row, or the best variant does not
    beat the trivial reference the value must beat (it scores like noise). A variant
    whose samples look like noise (:func:`noise_like`) is never marked best: it is left
    out on diversity, privacy and utility values (noise is diverse and private, and that
    is no merit), and where it has the best mean of a fidelity value nothing is marked.
    """
    results = results or {}
    ideal = ideal_of(info)
    if ideal == "none" or info.get("informative") is False:
        return set()
    real = reference_value(results, REAL, name)
    if ideal == "real" and real is None:
        return set()
    gated = info.get("question", "fidelity") in GATED_QUESTIONS
    looks_like_noise = {i for i, row in enumerate(rows) if not row.get("reference") and noise_like(results, row)}
    means = {i: row["values"][name]["mean"] for i, row in enumerate(rows) if not row.get("reference")}
    finite = {i: float(score(m, ideal, real)) for i, m in means.items() if m is not None and math.isfinite(m)}
    if len(finite) < 2 or len(set(finite.values())) == 1:  # nothing to compare, or a shared baseline
        return set()
    finite = {i: s for i, s in finite.items() if not (gated and i in looks_like_noise)}
    if not finite:
        return set()
    best = max(finite.values())
    if any(s == best and i in looks_like_noise for i, s in finite.items()):
        return set()  # a fidelity value that prefers a noise-like variant disagrees with the others: crown no one
    for ref in info.get("must_beat") or (NOISE,):
        trivial = reference_value(results, ref, name)
        if trivial is not None and math.isfinite(trivial) and best <= score(trivial, ideal, real):
            return set()
    return {i for i, s in finite.items() if s == best}


def _cell(stats: Mapping[str, Any], bold: bool, reference: bool = False) -> str:
    if stats["mean"] is None:
        return "—"
    text = format_number(stats["mean"]) if stats["std"] is None else f"{format_number(stats['mean'])} ± {format_number(stats['std'])}"
    text = f"**{text}**" if bold else f"*{text}*" if reference else text
    interval = stats.get("interval")
    if interval is not None:
        text += f" [{format_number(interval[0])}, {format_number(interval[1])}]"
    return text


def _runs_cell(row: Mapping[str, Any]) -> str:
    parts = [f"{row['runs']['done']}/{row['total_runs']} done"]
    parts += [f"{count} {status}" for status, count in row["runs"].items() if status != "done" and count]
    return ", ".join(parts)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


# ---------------------------------------------------------------------------
# Plots (matplotlib's Figure directly: no pyplot state, no GUI backend)
# ---------------------------------------------------------------------------


def _plot_name(name: str, taken: set[str]) -> str:
    """A file stem made of letters, digits, '_', '-', '.', unique (case-insensitively) among ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "value"
    candidate, i = stem, 2
    while candidate.lower() in taken:
        candidate, i = f"{stem}-{i}", i + 1
    taken.add(candidate.lower())
    return candidate


def _mpl(text: str, width: int = 40) -> str:
    """Plain text for matplotlib: '$' would start mathtext; long labels are cut."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


REFERENCE_STYLES = {REAL: ("tab:green", "-"), COPIES: ("0.45", "--"), NOISE: ("tab:red", ":")}


def _bar_axes(axes, labels: Sequence[str], numbers: Sequence[Sequence[float]], title: str, ylabel: str,
              references: Mapping[str, float] | None = None) -> None:
    """A bar per variant at the mean, std error bars, one point per seed on top; reference rows as horizontal lines."""
    for ref, value in (references or {}).items():
        if value is not None and math.isfinite(value):
            color, style = REFERENCE_STYLES[ref]
            axes.axhline(value, color=color, linestyle=style, linewidth=1.4, label=LABELS[ref], zorder=1)
    if references:
        axes.legend(fontsize=7, loc="best")
    for i, seeds in enumerate(numbers):
        mean, std = _mean_std(seeds)  # as in the table: a non-finite seed leaves no bar
        if mean is not None and math.isfinite(mean):
            axes.bar(i, mean, width=0.6, color=f"C{i % 10}", alpha=0.55, yerr=std, capsize=4, ecolor="0.25")
        finite = [x for x in seeds if math.isfinite(x)]
        if len(finite) < len(seeds):
            axes.text(i, 0.02, f"{len(seeds) - len(finite)} non-finite", transform=axes.get_xaxis_transform(), ha="center", fontsize=8)
        spread = [-0.15 + 0.3 * k / (len(finite) - 1) for k in range(len(finite))] if len(finite) > 1 else [0.0] * len(finite)
        axes.scatter([i + dx for dx in spread], finite, s=16, color="black", zorder=3)
    axes.set_xlim(-0.6, len(labels) - 0.4)  # the same margins with or without bars
    axes.set_xticks(range(len(labels)), [_mpl(label) for label in labels], rotation=30, ha="right")
    axes.set_title(_mpl(title, 60), fontsize=10)
    axes.set_ylabel(_mpl(ylabel))
    axes.grid(axis="y", alpha=0.3)


def _bar_figure(path: Path, labels: Sequence[str], panels: Sequence[tuple]) -> None:
    """One PNG with a bar panel per (numbers, title, ylabel), at most three panels a row."""
    from matplotlib.figure import Figure

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    width = max(4.0, 1.0 + 0.9 * len(labels))
    figure = Figure(figsize=(width * columns, 3.8 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (numbers, title, ylabel, *references) in zip(grid.flat, panels):
        _bar_axes(axes, labels, numbers, title, ylabel, references[0] if references else None)
    for axes in list(grid.flat)[len(panels):]:
        axes.set_visible(False)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """Write ``out_dir/plots/``: one PNG per metric (a panel per value), and train_time.png.

    A value gets a panel when a finished run has a finite number for it; spreads that a
    metric reports about itself (``..._std``) are left to the table. Returns (caption,
    link relative to ``out_dir``) pairs in report order; nothing when no run finished.
    """
    plots_dir = out_dir / PLOTS_DIR
    variants = _variants(results)
    labels = [_label(v) for v in variants]
    taken = {TRAIN_TIME_PLOT}
    figures = []
    for metric, names in _groups(results, _value_names(results)):
        panels = []
        shown = [name for name in names if not (name.endswith("_std") and name.removesuffix("_std") in names)]
        for name in shown:
            numbers = [_seed_values(v, name) for v in variants]
            if not any(math.isfinite(x) for seeds in numbers for x in seeds):
                continue
            ideal = ideal_of(_value_info(results, name))
            title = name + {"higher": " (higher is better)", "lower": " (lower is better)", "real": " (closest to real is best)"}.get(ideal, "")
            if _value_info(results, name).get("informative") is False:
                title += " - uninformative here"
            lines = {ref: reference_value(results, ref, name) for ref in REFERENCES if reference_value(results, ref, name) is not None}
            panels.append((numbers, title, name, lines))
        if panels:
            figures.append((metric, plots_dir / f"{_plot_name(metric, taken)}.png", panels))
    seconds = [_seed_field(v, "train_seconds") for v in variants]
    if any(seconds):
        figures.append(("train time", plots_dir / f"{TRAIN_TIME_PLOT}.png", [(seconds, "training time per run", "train seconds")]))
    if figures:
        plots_dir.mkdir(parents=True, exist_ok=True)
    for _, path, panels in figures:
        _bar_figure(path, labels, panels)
    return [(caption, path.relative_to(out_dir).as_posix()) for caption, path, _ in figures]


# ---------------------------------------------------------------------------
# report.md and results.csv
# ---------------------------------------------------------------------------


def _overview(results: Mapping[str, Any]) -> str:
    data = results.get("data") or {}
    parts = [f"Dataset `{data.get('format', '?')}`" + (f" from `{data['source']}`" if data.get("source") else "")]
    if "num_train" in data:
        parts.append(f"{data['num_train']} training / {data.get('num_held_out', '?')} held-out images")
    if "resolution" in data:
        parts.append(f"{data['resolution']}×{data['resolution']} px, {data.get('channels', '?')} channel(s)")
    classes = data.get("class_names") or []
    parts.append("classes: " + ", ".join(map(_md, classes)) if classes else "unlabelled")
    text = "; ".join(parts) + "."
    run_parts = [f"Budget {results['budget_kimg']:g} kimg per run"] if results.get("budget_kimg") is not None else []
    if run_parts and results.get("budget_minutes"):
        run_parts = [f"Budget {results['budget_kimg']:g} kimg or {results['budget_minutes']:g} minutes of training per run, whichever "
                     "came first (an equal wall-clock budget: the kimg each variant reached is in the table)"]
    seeds = results.get("seeds") or sorted({run["seed"] for v in _variants(results) for run in v["runs"]})
    run_parts.append(f"seeds {', '.join(map(str, seeds))}")
    if results.get("synthetic_images"):
        run_parts.append(f"{results['synthetic_images']} synthetic images per run for the metrics")
    text += " " + "; ".join(run_parts) + "."
    if results.get("created"):
        text += f" Created {results['created']}."
    environment = results.get("environment") or {}
    if environment:
        text += " Environment: " + ", ".join(f"{key} {_md(value)}" for key, value in environment.items()) + "."
    return text


def _row_label(row: Mapping[str, Any]) -> str:
    return f"*{_md(row['label'])}* (reference)" if row.get("reference") else _md(row["label"])


def _value_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], infos: Mapping[str, Mapping[str, Any]],
                 extra: bool, results: Mapping[str, Any] | None = None, verdicts: Mapping[str, Any] | None = None) -> list[str]:
    """Variants (then reference rows) x values (mean ± std [95% interval], best bold); ``extra`` adds runs, train time, img/s (and peak mem)."""
    header = ["variant"] + [_header(n, infos[n]) for n in names]
    show_memory = extra and any(row.get("peak_mem_gib") is not None for row in rows)  # GPU runs report it, CPU runs do not
    positions = {i: fidelity_position(results or {}, row) for i, row in enumerate(rows) if not row.get("reference")} if extra else {}
    show_position = any(p is not None for p in positions.values())
    show_kimg = extra and bool((results or {}).get("budget_minutes"))
    header += (["runs", "train time", "img/s"] + (["kimg"] if show_kimg else []) + (["peak mem"] if show_memory else [])
               + (["fidelity (noise 0, real 1)"] if show_position else []) if extra else [])
    best = {name: _best_rows(rows, name, infos[name], results, verdicts) for name in names}
    body = []
    for i, row in enumerate(rows):
        cells = [_row_label(row)] + [_cell(row["values"][n], i in best[n], bool(row.get("reference"))) for n in names]
        if extra and row.get("reference"):
            cells += ["reference", "—", "—"] + (["—"] if show_kimg else []) + (["—"] if show_memory else []) + (["—"] if show_position else [])
        elif extra:
            cells += [_runs_cell(row), format_duration(row["train_seconds"]), format_number(row["img_per_s"])]
            cells += [format_number(row["kimg"])] if show_kimg else []
            cells += [f"{format_number(row['peak_mem_gib'])} GiB" if row["peak_mem_gib"] is not None else "—"] if show_memory else []
            if show_position:
                position = positions[i]
                cells.append("—" if position is None else format_number(position) + (" ⚠ noise-like" if position < NOISE_LIKE_BELOW else ""))
        body.append(cells)
    return _table(header, body)


def _header(name: str, info: Mapping[str, Any]) -> str:
    warning = " ⚠" if info.get("informative") is False else ""
    return f"{_md(name)}{_direction(info)}{' †' if info.get('dataset_specific') else ''}{warning}"


def _metric_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], infos: Mapping[str, Mapping[str, Any]],
                  results: Mapping[str, Any] | None = None, verdicts: Mapping[str, Any] | None = None) -> list[str]:
    """One metric's values: a row per variant, or a row per value when there are more values than variants."""
    if len(names) <= len(rows):
        return _value_table(rows, names, infos, extra=False, results=results, verdicts=verdicts)
    best = {name: _best_rows(rows, name, infos[name], results, verdicts) for name in names}
    header = ["value"] + [_row_label(row) for row in rows]
    body = [[_header(name, infos[name])] + [_cell(row["values"][name], i in best[name], bool(row.get("reference"))) for i, row in enumerate(rows)]
            for name in names]
    return _table(header, body)


def comparisons(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """For each ranked value: the variant with the best mean by its ideal, tested against every other variant.

    ``{value name: {"best": variant, "tests": {other: {"difference", "p_value", "significant", "seeds"}}}}``,
    with :func:`raresynth.evaluation.statistics.compare` on each finished run's value and half-samples.
    """
    out: dict[str, dict[str, Any]] = {}
    variants = _variants(results)
    for name in _value_names(results):
        info = _value_info(results, name)
        ideal = ideal_of(info)
        real = reference_value(results, REAL, name)
        if ideal == "none" or (ideal == "real" and real is None):
            continue
        samples = {}
        for variant in variants:
            runs = _run_samples(variant, name)
            if runs and all(math.isfinite(r.value) for r in runs):
                samples[variant["name"]] = runs
        if len(samples) < 2:
            continue
        scores = {v: sum(score(r.value, ideal, real) for r in runs) / len(runs) for v, runs in samples.items()}
        best = max(scores, key=scores.get)
        tests = {}
        for other, runs in samples.items():
            if other != best:
                result = compare(samples[best], runs, ideal, real)
                tests[other] = {"difference": result.difference, "p_value": result.p_value, "significant": result.significant,
                                "seeds": [len(samples[best]), len(runs)]}
        out[name] = {"best": best, "tests": tests}
    return out


def _verdict_lines(results: Mapping[str, Any], names: Sequence[str], infos: Mapping[str, Mapping[str, Any]],
                   rows: Sequence[Mapping[str, Any]], tested: Mapping[str, Mapping[str, Any]],
                   verdicts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per value: uninformative here (with the numbers), or the best variant and its test against each other."""
    labels = {v["name"]: _label(v) for v in _variants(results)}
    lines = []
    for name in names:
        info = infos[name]
        if info.get("informative") is False:
            lines.append(f"- ⚠ `{name}` is uninformative on this dataset ({_md(info.get('uninformative_because', ''))}): "
                         "it does not rank real images ahead of that reference, so no variant is marked best on it.")
            continue
        comparison = tested.get(name)
        if not comparison or not comparison.get("tests"):
            continue
        best = comparison["best"]
        parts = []
        for other, test in comparison["tests"].items():
            p = test.get("p_value")
            if p is None:
                parts.append(f"vs {_md(labels.get(other, other))}: not testable (one seed each and no half-samples)")
            elif test.get("significant"):
                parts.append(f"vs {_md(labels.get(other, other))}: p {_p(p)}, significant")
            else:
                parts.append(f"vs {_md(labels.get(other, other))}: p {_p(p)}, no significant difference")
        bolded = ""
        best_row = next((row for row in rows if row["variant"] == best), None)
        if best_row is not None and noise_like(results, best_row):
            gated = info.get("question", "fidelity") in GATED_QUESTIONS
            bolded = (f" (not marked best: its samples look like noise, and the {info.get('question')} of noise is no merit; the best of the "
                      "others is marked)" if gated else " (not marked best: its samples look like noise, see the fidelity position)")
        elif _value_winners(rows, name, info, results) and not _best_rows(rows, name, info, results, verdicts):
            verdict = verdicts[info.get("question", "fidelity")]
            majority = labels.get(verdict["winner"], verdict["winner"])
            bolded = (f" (not marked best: the {info.get('question', 'fidelity')} verdict goes to {_md(majority)}, "
                      f"{verdict['wins'][verdict['winner']]} of {verdict['metrics']} metric votes, and this one disagrees)")
        elif not _best_rows(rows, name, info, results, verdicts):
            means = {row["values"][name]["mean"] for row in rows if row["values"][name]["mean"] is not None}
            if len(means) == 1:
                lines.append(f"- `{name}`: every variant scores {format_number(means.pop())}: nothing to mark.")
                continue
            bolded = " (not marked best: it does not beat the " + " / ".join(LABELS[r] for r in info.get("must_beat") or (NOISE,)) + " reference)"
        lines.append(f"- `{name}`: best mean {_md(labels.get(best, best))}{bolded}; " + "; ".join(parts) + ".")
    return lines


def _summary_lines(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], verdicts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The verdict by question, from the metric votes each variant wins (:func:`question_verdicts`)."""
    if not verdicts:
        return []
    labels = {row["variant"]: row["label"] for row in rows}
    lines = ["", "**Verdict by question** (one vote per metric: the variant that wins most of its informative values; "
             "votes each variant has, of the metrics that voted):", ""]
    for question in ("fidelity", "diversity", "privacy", "utility"):
        verdict = verdicts.get(question)
        if not verdict:
            continue
        if not verdict["metrics"]:
            lines.append(f"- {question}: no majority (each metric's {question} values split between variants: no metric voted)")
            continue
        wins = ", ".join(f"{_md(labels.get(v, v))} {k}" for v, k in sorted(verdict["wins"].items(), key=lambda item: -item[1]))
        winner = f"**{_md(labels.get(verdict['winner'], verdict['winner']))}**" if verdict["winner"] else "no majority"
        lines.append(f"- {question}: {winner} ({wins}, of {verdict['metrics']})")
    fidelity = verdicts.get("fidelity", {}).get("winner")
    noise_like_rows = [row for row in rows if noise_like(results, row)]
    if noise_like_rows:
        lines.append("- noise-like (fidelity position below 0.5): " + ", ".join(_md(row["label"]) for row in noise_like_rows))
    if fidelity:
        lines += ["", f"Fidelity comes first: diversity, privacy or utility without it is no merit. By the majority of the "
                  f"metrics with informative fidelity values, the most faithful variant here is {_md(labels.get(fidelity, fidelity))}; "
                  "see each value's test below before trusting a small difference."]
    return lines


def _p(p: float) -> str:
    """``= 0.034`` or ``< 0.001``."""
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


def _results_section(results: Mapping[str, Any]) -> list[str]:
    """One table when there is one metric; else runs and cost first, then a table per metric.

    A metric's spread over its own repetitions (``x_std`` next to ``x``, e.g. utility's
    classifier seeds) stays out of the tables and plots: it is in results.csv.
    """
    rows = summarize(results)
    references = reference_rows(results)
    tested = comparisons(results)
    verdicts = question_verdicts(results, rows)
    all_names = _value_names(results)
    names = [n for n in all_names if not (n.endswith("_std") and n.removesuffix("_std") in all_names)]
    infos = {name: _value_info(results, name) for name in all_names}
    groups = _groups(results, names)
    lines = ["## Results", ""]
    if len(groups) <= 1:
        lines += _value_table(rows + references, names, infos, extra=True, results=results, verdicts=verdicts)
        lines += _summary_lines(results, rows, verdicts)
        notes = _verdict_lines(results, names, infos, rows, tested, verdicts)
        lines += ["", *notes] if notes else []
    else:
        lines += _value_table(rows, [], infos, extra=True, results=results, verdicts=verdicts)
        lines += _summary_lines(results, rows, verdicts)
        for metric, members in groups:
            lines += ["", f"### {_md(metric)}", ""] + _metric_table(rows + references, members, infos, results, verdicts)
            notes = _verdict_lines(results, members, infos, rows, tested, verdicts)
            lines += ["", *notes] if notes else []
    lines += ["", "↓ lower is better, ↑ higher is better, ≈ closest to the *real (held-out)* reference is best. Cells: mean ± "
              "sample standard deviation over the finished seeds (the mean alone with one seed; — when no finished run has "
              "the value), then its 95% interval in brackets: Student's t over seeds, or with one seed the spread over "
              "half-samples of the synthetic set (which covers the synthetic sample, not training randomness). **bold**: the "
              "best mean by the value's ideal, only where the value is informative on this dataset, the best variant beats "
              "the noise reference (copies, for privacy values) and it agrees with the majority of the metrics voting on its "
              "question; ⚠: uninformative here. Train time and img/s: mean over "
              "finished runs."]
    if any(fidelity_position(results, row) is not None for row in rows):
        lines += ["", "Fidelity (noise 0, real 1): where a variant's informative fidelity values lie between the *noise* row (0) "
                  "and the *real (held-out)* row (1), the median over metrics of each metric's median (one metric, one vote; "
                  "for a value whose ideal is the real images' value, 1 - its distance from real / noise's). Below 0.5 (⚠ noise-like) its samples are closer to noise "
                  "than to real images, and it is never marked best on a diversity, privacy or utility value: noise is diverse "
                  "and private, and that is no merit."]
    if references:
        lines += ["", "Reference rows, measured like a generator's synthetic set: *real (held-out)* is the held-out real images "
                  "(the best a generator can reach on this dataset; metrics that use the held-out set themselves get one half "
                  "as synthetic and the other as held-out, averaged over both ways), *copies* are training images drawn with "
                  "replacement (a perfect memorizer), *noise* is per-pixel Gaussian noise at the training mean and std."]
    test = results.get("test") or {}
    if tested:
        lines += ["", f"Tests: {_md(test.get('method', 'bootstrap'))}; significant at p < {test.get('alpha', 0.05)}. "
                  "With one seed per variant a test covers the synthetic sample only: train more seeds to include training randomness."]
    if len(names) < len(all_names):
        lines += ["", "Spreads that a metric reports about its own repetitions (`..._std`) are in results.csv."]
    if any(infos[n].get("dataset_specific") for n in names):
        lines += ["", f"† {DAGGER_NOTE}."]
    return lines


def _own_settings(variant: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's settings without what the other Settings columns show (backend, regularizers, batch, precision)."""
    shown = ("generator.name", "batch_size", "precision")
    return {k: v for k, v in (variant.get("settings") or {}).items() if k not in shown and not k.startswith("regularizers.")}


def _settings_section(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["variant", "generator", "regularizers", "settings", "batch size", "precision", "sample options"]
    body = [
        [_label(v), v.get("generator", "—"), ", ".join(v.get("regularizers") or []) or "—", _options(_own_settings(v)) or "base config",
         v.get("batch_size", "—"), v.get("precision", "—"), _options(v.get("sample_options")) or "—"]
        for v in variants
    ]
    return ["## Settings", ""] + _table(header, [[_md(cell) for cell in cells] for cells in body])


def _plots_section(plots: Sequence[tuple[str, str]]) -> list[str]:
    if not plots:
        return ["## Plots", "", "No finished run yet: nothing to plot."]
    lines = ["## Plots", ""]
    for caption, link in plots:
        lines += [f"![{_md(caption)}]({_link(link)})", ""]
    return lines + ["Bars: mean over finished seeds, error bars: std, points: one per seed; lines: the reference rows "
                    "(green: real held-out, grey dashed: copies, red dotted: noise)."]


def _samples_section(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    grids = [(_md(_label(v)), v["grid"]) for v in variants if v.get("grid")]
    if not grids:
        return []
    lines = ["## Samples", "", "The same seeds and class labels for every variant."]
    for label, grid in grids:
        lines += ["", f"### {label}", "", f"![{label} samples]({_link(grid)})"]
    return lines


def _pairs_section(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    shown = [(v, v["memorization_pairs"]) for v in variants if v.get("memorization_pairs")]
    if not shown:
        return []
    lines = ["## Memorization: closest pairs", "", "Each row: synthetic images beside their nearest training image, nearest "
             "first (the memorization audit's grids of the variant's first seed). Look for copies here before trusting any number."]
    for variant, grids in shown:
        lines += ["", f"### {_md(_label(variant))}"]
        for grid in grids:
            space = Path(grid).name.removeprefix("memorization_").removesuffix("_pairs.png")
            lines += ["", f"![{_md(_label(variant))}: closest pairs in {_md(space)} space]({_link(grid)})"]
    return lines


def _problems_section(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for variant in variants:
        for run in variant["runs"]:
            where = f"{_md(_label(variant))}, seed {run['seed']} (" + (f"`{run['run_dir']}`" if run.get("run_dir") else "no run folder") + ")"
            if run["status"] == "failed":
                lines.append(f"- failed: {where}: {_md(run.get('error') or 'no error message')}")
                if run.get("log_tail"):  # a job's last log lines (--executor slurm|ray)
                    lines += ["", "  ```text", *(f"  {line}" for line in run["log_tail"].replace("```", "'''").splitlines()), "  ```", ""]
            elif run["status"] == "pending":
                lines.append(f"- pending: {where}: not trained yet")
            elif run["status"] != "done":
                lines.append(f"- {_md(run['status'])}: {where}")
    return ["## Failures and pending runs", ""] + lines if lines else []


def _notes_section(results: Mapping[str, Any]) -> list[str]:
    data = results.get("data") or {}
    metrics = "; ".join(_metric_ref(ref) for ref in results.get("metrics") or []) or "none"
    budget = f"{results['budget_kimg']:g} kimg budget" if results.get("budget_kimg") is not None else "budget"
    sampling = f" (first seed {results['sampling_seed']})" if results.get("sampling_seed") is not None else ""
    lines = ["## Notes", ""] + [f"- {' '.join(str(note).split())}" for note in results.get("notes") or []]
    return lines + [
        f"- Every run uses the same data split (split id `{data.get('split_id', '?')}`), the same {budget}, "
        f"the same number of synthetic images ({results.get('synthetic_images', '?')}) sampled from the same seeds{sampling} "
        f"with the training set's class balance, and the same metric settings ({_md(metrics)}).",
        "- Only finished runs enter the means and plots; failed and pending runs are listed above.",
        f"- Reproduce: `raresynth bench {results.get('config_file') or 'CONFIG'}`.",
    ]


def render_report(results: Mapping[str, Any], plots: Sequence[tuple[str, str]] = ()) -> str:
    """The text of report.md; ``plots`` are (caption, link relative to the report) pairs."""
    variants = _variants(results)
    sections = [
        [f"# Benchmark: {_md(results.get('name', 'unnamed'))}", "", _overview(results)],
        _results_section(results),
        _settings_section(variants),
        _plots_section(plots),
        _samples_section(variants),
        _pairs_section(variants),
        _problems_section(variants),
        _notes_section(results),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def csv_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    """The tidy table (header first): one row per (run, value) that a run reported, whatever its status."""
    rows: list[list[Any]] = [list(CSV_FIELDS)]
    names = _value_names(results)

    def fields(name: str, interval: tuple[float, float] | None) -> list[str]:
        info = _value_info(results, name)
        higher = info.get("higher_is_better")
        low, high = (repr(interval[0]), repr(interval[1])) if interval else ("", "")
        return ["" if higher is None else str(bool(higher)).lower(), str(bool(info.get("dataset_specific"))).lower(), ideal_of(info), low, high]

    for variant in _variants(results):
        for run in variant["runs"]:
            values = _run_values(variant, run)
            for name in (n for n in names if n in values):
                replicates = [float(x) for x in (run.get("replicates") or {}).get(name, [])]
                interval = cell_interval([RunValue(values[name], replicates)]) if math.isfinite(values[name]) else None
                rows.append([variant["name"], run["seed"], run["status"], name, repr(values[name]), *fields(name, interval)])
    for row in reference_rows(results):  # seed left empty: a reference row is measured once
        for name in names:
            stats = row["values"][name]
            if stats["mean"] is not None:
                rows.append([row["variant"], "", "reference", name, repr(stats["mean"]), *fields(name, stats["interval"])])
    return rows


def write_report(results: dict, out_dir: Path) -> Path:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` into ``out_dir``; return the report's path.

    Overwrites only these files (the harness's own outputs); other files in
    ``out_dir`` and ``plots/`` stay. The same results give the same report.md.
    Malformed results raise :class:`RaresynthError` before any file is written.
    """
    out_dir = Path(out_dir)
    summarize(results)  # checks the structure and every finished run's numbers
    rows = csv_rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    write_text_atomic(out_dir / CSV_FILE, table.getvalue())
    plots = write_plots(results, out_dir)
    report = out_dir / REPORT_FILE
    text = render_report(results, plots)
    write_text_atomic(report, text)
    write_text_atomic(out_dir / HTML_FILE, render_html(text, out_dir, str(results.get("name") or "benchmark")))
    return report


# ---------------------------------------------------------------------------
# report.html: the same report, one self-contained file
# ---------------------------------------------------------------------------

HTML_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0 auto; padding: 1rem;
       max-width: 72rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2rem; }
.table { overflow-x: auto; margin: .6rem 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #e0e0e0; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
@media print { body { max-width: none; font-size: 11px; } h2 { break-after: avoid; } img, table { break-inside: avoid; } .table { overflow: visible; } }
"""


def render_html(markdown_text: str, out_dir: Path, title: str) -> str:
    """``report.md`` as one self-contained HTML page: images inlined as data URIs, readable on a phone, printable.

    A missing image is shown as its alt text with a note, never as a broken link to a file
    the page cannot reach.
    """
    import base64
    import html

    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    body = body.replace("<table>", '<div class="table"><table>').replace("</table>", "</table></div>")

    def inline(match: re.Match) -> str:
        alt, source = match.group(1), match.group(2)
        path = out_dir / unquote(html.unescape(source))
        if source.startswith(("data:", "http:", "https:")) or not path.is_file():
            return f'<em>[{alt}: image not found]</em>'
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'

    body = re.sub(r'<img alt="([^"]*)" src="([^"]*)"\s*/?>', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)} - raresynth benchmark</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")

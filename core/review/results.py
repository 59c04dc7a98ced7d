"""What the readers' answers say: can they tell real from synthetic?

The task is detection: "synthetic" is the positive class. For a group of answers
(one reader, all readers pooled, one generator against the real images, one class):

* accuracy, with an exact two-sided binomial test against 50% (chance in a balanced
  study; scipy's ``binomtest``). A visual Turing test "passes" when accuracy is not
  above chance. Pooled answers are not independent (the same images, several readers):
  the pooled p-value is a description, the per-reader ones are the tests.
* sensitivity (synthetic images called synthetic) and specificity (real called real).
* AUC from the confidence ratings: each answer becomes a 10-point score,
  ``5 + confidence`` when called synthetic and ``6 - confidence`` when called real, so
  that higher means "more surely synthetic"; AUC is the Mann-Whitney statistic, ties
  counted half (Hanley & McNeil 1982, Radiology 143:29), and the ROC curve is the
  empirical one over the score's thresholds.
* agreement between readers on the call: Cohen's kappa for each pair on the images both
  answered (Cohen 1960, Educ Psychol Meas 20:37) and Fleiss' kappa over the images every
  reader answered (Fleiss 1971, Psychol Bull 76:378).

Written to ``STUDY_DIR/results/``: ``results.json``, ``results.md``, ``roc.png`` and
``imrmc.csv`` (the iMRMC input layout: a header with NR / N0 / N1 / NM, ``BEGIN DATA:``, then
``reader,case,modality,score`` rows; truth rows have reader ``-1`` and score 1 for synthetic).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from .study import REAL, SYNTHETIC, StudyError, connect, settings

RESULTS = "results"


@dataclass(frozen=True)
class Rated:
    """One answer joined with the key."""

    reader: str
    image_id: str
    truth: str
    source: str
    class_name: str | None
    call: str
    confidence: int

    @property
    def score(self) -> int:
        """1 (surely real) .. 10 (surely synthetic)."""
        return 5 + self.confidence if self.call == SYNTHETIC else 6 - self.confidence


def load_answers(study_dir: str | Path) -> tuple[list[Rated], dict[str, Any], list[str]]:
    """Every answer with its key, the study's settings and the readers' names (in the order they were added)."""
    connection = connect(study_dir)
    try:
        rows = connection.execute(
            "SELECT r.name, a.image_id, i.truth, i.source, i.class_name, a.call, a.confidence FROM answers a "
            "JOIN readers r ON r.id = a.reader_id JOIN images i ON i.id = a.image_id ORDER BY r.id, a.answered").fetchall()
        readers = [row[0] for row in connection.execute("SELECT name FROM readers ORDER BY id")]
        return [Rated(*row) for row in rows], settings(connection), readers
    finally:
        connection.close()


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a positive scores above a negative) + half P(tie): the Mann-Whitney form of the ROC area (Hanley & McNeil 1982)."""
    if not positives or not negatives:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def roc_points(positives: Sequence[float], negatives: Sequence[float]) -> list[tuple[float, float]]:
    """The empirical ROC curve: ``(false-positive rate, true-positive rate)`` for each threshold, from (0, 0) to (1, 1)."""
    points = [(0.0, 0.0)]
    for threshold in sorted(set(positives) | set(negatives), reverse=True):
        points.append((sum(q >= threshold for q in negatives) / len(negatives), sum(p >= threshold for p in positives) / len(positives)))
    return points


def summarize(answers: Sequence[Rated]) -> dict[str, Any]:
    """Accuracy (binomial test vs 0.5), sensitivity, specificity and AUC of a group of answers."""
    from scipy.stats import binomtest

    n = len(answers)
    correct = sum(a.call == a.truth for a in answers)
    synthetic = [a for a in answers if a.truth == SYNTHETIC]
    real = [a for a in answers if a.truth == REAL]
    return {
        "answers": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "p_value": binomtest(correct, n, 0.5).pvalue if n else None,
        "synthetic": len(synthetic),
        "real": len(real),
        "sensitivity": sum(a.call == SYNTHETIC for a in synthetic) / len(synthetic) if synthetic else None,
        "specificity": sum(a.call == REAL for a in real) / len(real) if real else None,
        "auc": auc([a.score for a in synthetic], [a.score for a in real]),
    }


def cohen_kappa(first: dict[str, str], second: dict[str, str]) -> tuple[float | None, int]:
    """Cohen's kappa of two readers' calls on the images both answered, and how many those were."""
    common = sorted(set(first) & set(second))
    if not common:
        return None, 0
    observed = sum(first[i] == second[i] for i in common) / len(common)
    expected = sum((sum(first[i] == c for i in common) / len(common)) * (sum(second[i] == c for i in common) / len(common))
                   for c in (REAL, SYNTHETIC))
    return ((observed - expected) / (1 - expected) if expected < 1 else None), len(common)


def fleiss_kappa(calls: Sequence[dict[str, str]]) -> tuple[float | None, int]:
    """Fleiss' kappa over the images every reader answered (two categories), and how many those were."""
    if len(calls) < 2:
        return None, 0
    common = sorted(set.intersection(*(set(c) for c in calls)))
    if not common:
        return None, 0
    raters = len(calls)
    counts = [[sum(c[i] == category for c in calls) for category in (REAL, SYNTHETIC)] for i in common]
    agreement = sum((sum(k * k for k in row) - raters) / (raters * (raters - 1)) for row in counts) / len(common)
    shares = [sum(row[j] for row in counts) / (len(common) * raters) for j in range(2)]
    expected = sum(p * p for p in shares)
    return ((agreement - expected) / (1 - expected) if expected < 1 else None), len(common)


def compute_results(study_dir: str | Path) -> dict[str, Any]:
    """Every number of the study, as the JSON ``results.json`` holds."""
    answers, study, readers = load_answers(study_dir)
    if not answers:
        raise StudyError(f"{study_dir}: no answers yet; readers answer through `raresynth review serve`")
    by_reader = {name: [a for a in answers if a.reader == name] for name in readers}
    calls = {name: {a.image_id: a.call for a in rows} for name, rows in by_reader.items() if rows}
    generators = sorted({a.source for a in answers if a.truth == SYNTHETIC})
    classes = sorted({a.class_name for a in answers if a.class_name is not None})
    fleiss, fleiss_n = fleiss_kappa(list(calls.values()))
    return {
        "study": {key: study[key] for key in ("n", "seed", "resolution", "channels", "class_names", "generators")},
        "overall": summarize(answers),
        "readers": {name: summarize(rows) for name, rows in by_reader.items() if rows},
        # a generator's images against all the real ones: its sensitivity is how often its images were caught
        "generators": {g: summarize([a for a in answers if a.truth == REAL or a.source == g]) for g in generators},
        "classes": {c: summarize([a for a in answers if a.class_name == c]) for c in classes},
        "cohen_kappa": [{"readers": [x, y], "kappa": k, "images": m}
                        for x, y in combinations(calls, 2) for k, m in [cohen_kappa(calls[x], calls[y])]],
        "fleiss_kappa": {"kappa": fleiss, "images": fleiss_n, "readers": len(calls)},
        "roc": {name: roc_points([a.score for a in rows if a.truth == SYNTHETIC], [a.score for a in rows if a.truth == REAL])
                for name, rows in [("all readers", answers), *by_reader.items()]
                if any(a.truth == SYNTHETIC for a in rows) and any(a.truth == REAL for a in rows)},
    }


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def imrmc_csv(study_dir: str | Path) -> str:
    """The answers in iMRMC's input layout: one modality (``1``), cases numbered by image id, scores 1-10."""
    answers, _, readers = load_answers(study_dir)
    truth = {a.image_id: a.truth for a in answers}
    cases = {image: i + 1 for i, image in enumerate(sorted(truth))}
    reader_ids = {name: i + 1 for i, name in enumerate(readers)}
    lines = ["raresynth reader study: real (0) vs synthetic (1); score 1 = surely real .. 10 = surely synthetic",
             f"NR: {len({a.reader for a in answers})}", f"N0: {sum(t == REAL for t in truth.values())}",
             f"N1: {sum(t == SYNTHETIC for t in truth.values())}", "NM: 1", "", "BEGIN DATA:"]
    lines += [f"-1,{cases[image]},0,{int(truth[image] == SYNTHETIC)}" for image in sorted(truth)]
    lines += [f"{reader_ids[a.reader]},{cases[a.image_id]},1,{a.score}" for a in answers]
    return "\n".join(lines) + "\n"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"## {title}", "", "| | answers | accuracy | p (binomial vs 0.5) | sensitivity | specificity | AUC |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {s['answers']} | {_number(s['accuracy'])} | {_number(s['p_value'], 4)} | {_number(s['sensitivity'])} | "
              f"{_number(s['specificity'])} | {_number(s['auc'])} |" for name, s in groups.items()]
    return lines + [""]


def results_markdown(results: dict[str, Any]) -> str:
    study = results["study"]
    lines = ["# Reader study results", "",
             (f"{study['n']} images ({study['resolution']}x{study['resolution']} px), half real held-out images, half synthetic "
             f"from {', '.join(study['generators'])}. Positive class: synthetic. Accuracy at 0.5 is chance: readers could not "
             "tell the images apart. The pooled p-value treats answers as independent, which they are not (several readers, "
             "the same images); the per-reader tests are the ones to quote."), ""]
    lines += _table("Overall and per reader", {"all readers": results["overall"], **results["readers"]})
    lines += _table("Per generator (its images against all real ones)", results["generators"])
    if results["classes"]:
        lines += _table("Per class", results["classes"])
    lines += ["## Agreement between readers (on the call real / synthetic)", ""]
    fleiss = results["fleiss_kappa"]
    lines.append(f"Fleiss' kappa: {_number(fleiss['kappa'])} over {fleiss['images']} images answered by all {fleiss['readers']} readers.")
    lines.append("")
    if results["cohen_kappa"]:
        lines += ["| readers | Cohen's kappa | images |", "| --- | ---: | ---: |"]
        lines += [f"| {' / '.join(k['readers'])} | {_number(k['kappa'])} | {k['images']} |" for k in results["cohen_kappa"]]
        lines.append("")
    lines += ["![ROC curves from the confidence ratings](roc.png)", "",
              "`imrmc.csv` holds the ratings in iMRMC's input layout for a multi-reader multi-case analysis.", ""]
    return "\n".join(lines)


def roc_png(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, points in results["roc"].items():
        summary = results["overall"] if name == "all readers" else results["readers"][name]
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker=".", linewidth=2.5 if name == "all readers" else 1.2, label=f"{name} (AUC {_number(summary['auc'], 2)})")
    axes.set(xlabel="false-positive rate (real called synthetic)", ylabel="true-positive rate (synthetic caught)",
             xlim=(0, 1), ylim=(0, 1), title="Detecting synthetic images")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_results(study_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Compute the results and write ``results/`` (json, md, roc.png, imrmc.csv) atomically; the folder and the results."""
    results = compute_results(study_dir)
    out = Path(study_dir).expanduser() / RESULTS
    out.mkdir(exist_ok=True)
    _write(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    _write(out / "results.md", results_markdown(results).encode())
    _write(out / "roc.png", roc_png(results))
    _write(out / "imrmc.csv", imrmc_csv(study_dir).encode())
    return out, results

"""Re-run issue 11's data, weights and DICOM cases (part 2) as a careless user would, and tabulate the outcomes.

    python benchmarks/reliability_audit_data.py            # a Markdown table on stdout

Each case builds its input in a fresh temporary folder and runs raresynth in a
subprocess (the CLI, or a few lines of Python where the CLI has no command for it),
so a traceback is seen as the user sees it. A case's outcome is one of:

* ``handled``: the right result, and what was left out is reported;
* ``one-line error``: refused with a single ``error:`` line that names the file (a
  raresynth error raised to a case's Python lines counts: the CLI prints it so);
* ``traceback``: a Python traceback reached the user;
* ``silent``: a wrong result without a word.

"Data lost" compares a sha256 of every file under the case's folder before and after.
Nothing here needs a network or a GPU.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CLI = [sys.executable, "-m", "raresynth"]


@dataclass
class Outcome:
    case: str
    provoked: str
    outcome: str  # handled / one-line error / traceback / silent
    detail: str
    data_lost: bool = False


LOST: list[str] = []  # files of the current case that a raresynth command changed or removed


def run(args: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    before = fingerprint(cwd)
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess(args, 124, "", "timed out (hung)")
    after = fingerprint(cwd)
    LOST.extend(name for name, digest in before.items() if after.get(name) != digest)
    return result


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", textwrap.dedent(code)], cwd)


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (links, FIFOs and the link loop's second paths not followed)."""
    found = {}
    for folder, dirs, files in os.walk(root):  # os.walk does not follow links to folders
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def classify(result: subprocess.CompletedProcess, ok: Callable[[subprocess.CompletedProcess], bool]) -> tuple[str, str]:
    err = result.stderr.strip()
    if "Traceback (most recent call last)" in err:
        last = err.splitlines()[-1]
        if last.startswith("raresynth.errors."):  # raised to the case's script: the CLI prints it as one `error:` line
            return "one-line error", last.split(": ", 1)[1][:200]
        return "traceback", last[:160]
    if ok(result):
        return "handled", (result.stdout.strip().splitlines() or [""])[-1][:160]
    lines = [line for line in err.splitlines() if line.strip()]
    if result.returncode != 0 and len(lines) == 1:
        return "one-line error", lines[0][:200]
    return "silent", f"exit {result.returncode}; {(lines or [''])[-1][:160]}"


def class_folders(root: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("c1" if i < count // 2 else "c2")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


SPLIT = """
from raresynth.config import DataConfig
from raresynth.data import load_dataset
from raresynth.registry import load_plugins
d = load_dataset(DataConfig(source={source!r}, resolution=16, split={{"held_out_fraction": 0.5}}{extra}), load_plugins(only=["formats"]))
ids = d.split["train"] + d.split["held_out"]
both = set(d.split["train"]) & set(d.split["held_out"])
print(f"records={{len(ids)}} on_both_sides={{len(both)}} skipped={{[i for i, _ in d.skipped]}}")
"""


# -- the cases -------------------------------------------------------------------


def symlink_loop(tmp: Path) -> Outcome:
    source = class_folders(tmp / "d")
    (source / "c2" / "up").symlink_to("..")
    result = python(SPLIT.format(source=str(source), extra=""), tmp)
    kind, detail = classify(result, lambda r: "records=4 on_both_sides=0 skipped=['c2/up']" in r.stdout)
    return Outcome("2", "`ln -s .. d/c2/up` in a 4-image class folder, then load and split", kind, detail)


def dangling_and_fifo(tmp: Path) -> Outcome:
    source = class_folders(tmp / "d")
    (source / "c1" / "gone.png").symlink_to("never-there.png")
    os.mkfifo(source / "c2" / "pipe.png")
    result = run([*CLI, "data", "inspect", str(source)], tmp, timeout=60)
    kind, detail = classify(result, lambda r: "gone.png: dangling symbolic link" in r.stdout and "pipe.png: a FIFO" in r.stdout)
    return Outcome("7", "a dangling `gone.png` link and a FIFO `pipe.png` in class folders; `data inspect`", kind, detail)


def same_file_twice(tmp: Path) -> Outcome:
    source = class_folders(tmp / "d")
    (source / "c1" / "a.png").symlink_to(source / "c2" / "3.png")
    os.link(source / "c1" / "0.png", source / "c2" / "copy.png")
    result = python(SPLIT.format(source=str(source), extra=""), tmp)
    kind, detail = classify(result, lambda r: "records=4 on_both_sides=0" in r.stdout)
    return Outcome("2", "one file reached twice (a file link across classes, a hard link); load and split", kind, detail)


def labels_not_utf8(tmp: Path) -> Outcome:
    source = class_folders(tmp / "d")
    (tmp / "labels.csv").write_bytes("file,label\nc1/0.png,b\xe9nin\nc1/1.png,a\nc2/2.png,a\nc2/3.png,a\n".encode("latin-1"))
    result = run([*CLI, "data", "inspect", str(source), "--labels", str(tmp / "labels.csv")], tmp)
    kind, detail = classify(result, lambda r: False)
    return Outcome("6", "a labels CSV saved as Latin-1 (`b\\xe9nin`); `data inspect --labels`", kind, detail)


def name_with_0xff(tmp: Path) -> Outcome:
    source = tmp / "d"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(os.fsencode(source) + f"/img{i}\xff.png".encode("latin-1"))
    result = python(SPLIT.format(source=str(source), extra=""), tmp)
    inspect = run([*CLI, "data", "inspect", str(source)], tmp)
    kind, detail = classify(result, lambda r: "records=4" in r.stdout and inspect.returncode == 0)
    return Outcome("6", "four PNGs whose names hold byte 0xFF; load, split (hashing ids) and `data inspect`", kind, detail)


def nothing_readable(tmp: Path) -> Outcome:
    (tmp / "d").mkdir()
    (tmp / "d" / "a.png").write_text("not an image\n")
    result = run([*CLI, "data", "inspect", str(tmp / "d")], tmp)
    kind, detail = classify(result, lambda r: False)
    if kind == "silent" and result.returncode != 0:
        kind = "one-line error"  # the report on stdout, then one error line on stderr
    return Outcome("7", "`data inspect` of a folder whose only image is a text file", kind, f"exit {result.returncode}; {detail}")


def labels_relative(tmp: Path) -> Outcome:
    project = tmp / "project"
    class_folders(project / "d")
    (project / "labels.csv").write_text("file,label\nc1/0.png,x\nc1/1.png,y\nc2/2.png,x\nc2/3.png,y\n")
    (project / "run.yaml").write_text("run_dir: r\ngenerator: toy\nbudget: {kimg: 1}\ndata: {source: d, labels: labels.csv}\n")
    result = python(f"""
        from raresynth.config import load_config
        from raresynth.data import load_dataset
        from raresynth.registry import load_plugins
        c = load_config({str(project / 'run.yaml')!r}).data
        print("classes", load_dataset(c.model_copy(update={{"resolution": 16}}), load_plugins(only=["formats"])).spec.class_names)
        """, tmp)  # run from the parent folder: not the config's
    kind, detail = classify(result, lambda r: "classes ('x', 'y')" in r.stdout)
    return Outcome("7", "`data.labels: labels.csv` next to the config, run from another folder", kind, detail)


def animated_gif(tmp: Path) -> Outcome:
    source = class_folders(tmp / "d")
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(source / "c1" / "movie.png", format="GIF", save_all=True, append_images=frames[1:])
    result = python(SPLIT.format(source=str(source), extra=""), tmp)
    kind, detail = classify(result, lambda r: False)
    return Outcome("7", "an animated 3-frame GIF renamed `movie.png`; load", kind, detail)


def malicious_weights(tmp: Path) -> Outcome:
    marker = tmp / "marker.txt"
    python(f"""
        import torch
        class Evil:
            def __reduce__(self):
                return (exec, ("open({str(marker)!r}, 'w').write('code ran')",))
        torch.save({{"fc.weight": torch.zeros(2), "x": Evil()}}, {str(tmp / 'evil.pth')!r})
        """, tmp)
    result = python(f"""
        import torch
        from raresynth import ConfigError
        from raresynth.evaluation.features import TorchFidelityEmbedding
        e = TorchFidelityEmbedding("inception-v3-compat", weights_path={str(tmp / 'evil.pth')!r}, verify_weights=False, device="cpu")
        try:
            e.embed(torch.zeros(1, 3, 8, 8))
        except ConfigError as exc:
            raise SystemExit(f"error: {{exc}}")
        """, tmp)
    kind, detail = classify(result, lambda r: False)
    if marker.exists():
        kind, detail = "silent", "the marker file was written: pickled code ran"
    return Outcome("4", "a crafted `.pth` whose unpickling writes a marker file, `verify_weights: false`, Inception FID features",
                   kind, detail)


def dicom_decoders(tmp: Path) -> Outcome:
    source = tmp / "d"
    source.mkdir()
    for name in ("MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                 "SC_rgb_jpeg_dcmtk.dcm"):
        (source / name).write_bytes((PYDICOM_FILES / name).read_bytes())
    result = run([*CLI, "data", "inspect", str(source)], tmp)
    kind, detail = classify(result, lambda r: "images:   5 (5 readable)" in r.stdout)
    return Outcome("8", "JPEG-LS, 12-bit JPEG Extended, JPEG 2000, RLE and JPEG Baseline files (pydicom's); `data inspect`", kind,
                   next((line for line in result.stdout.splitlines() if line.startswith("images:")), detail))


def dicom_undecodable(tmp: Path) -> Outcome:
    path = tmp / "JPEG-lossy.dcm"
    path.write_bytes((PYDICOM_FILES / "JPEG-lossy.dcm").read_bytes())
    result = python(SPLIT.format(source=str(path), extra=""), tmp)
    kind, detail = classify(result, lambda r: False)
    return Outcome("8", "pydicom's `JPEG-lossy.dcm` (12-bit JPEG Extended that libjpeg rejects); load", kind, detail)


CASES = [symlink_loop, same_file_twice, dangling_and_fifo, labels_not_utf8, name_with_0xff, nothing_readable, labels_relative,
         animated_gif, malicious_weights, dicom_decoders, dicom_undecodable]


def main() -> int:
    outcomes = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            LOST.clear()
            outcome = case(Path(folder))
            outcome.data_lost = bool(LOST)
            outcomes.append(outcome)
    print("| issue case | provoked by | outcome | what the user sees |")
    print("| --- | --- | --- | --- |")
    for o in outcomes:
        print(f"| {o.case} | {o.provoked} | {o.outcome}{' (data lost)' if o.data_lost else ''} | {o.detail.replace('|', '/')} |")
    counts = {kind: sum(o.outcome == kind for o in outcomes) for kind in ("handled", "one-line error", "traceback", "silent")}
    print(f"\ncases {len(outcomes)}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items())
          + f", data lost {sum(o.data_lost for o in outcomes)}")
    return 0 if counts["traceback"] == counts["silent"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Helpers of the one-shot GPU benchmark session (``benchmarks/gpu_session.sh``).

Standard library only at import time: the session runs it before raresynth, and
``check-wheels`` runs here, where the wheels are fetched.

    python benchmarks/gpu_session.py check-wheels .whl          # are the wheels' needs covered?
    python benchmarks/gpu_session.py older typing_extensions 4.16.0   # exit 0: missing or older here
    python benchmarks/gpu_session.py link-install . /tmp/site   # raresynth without setuptools (fallback)
    python benchmarks/gpu_session.py env                        # machine and package versions
    python benchmarks/gpu_session.py report --status S --json-dir D --out O --part P [--smoke]
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import zipfile
from pathlib import Path

# What the lent GPU machines have (the device notes' package list, 2026-11); a version
# where it was read. ``check-wheels`` counts a wheel's need as met by these.
DEVICE_HAS = {
    "accelerate": "1.15.0", "filelock": None, "huggingface-hub": "1.33.0", "numpy": "2.5.2", "packaging": None,
    "pillow": None, "pluggy": None, "pyyaml": None, "regex": None, "requests": None, "safetensors": "0.8.0",
    "scikit-image": None, "scipy": None, "setuptools": None, "tifffile": None, "torch": "2.11.0",
    "torchvision": "0.26.0", "tqdm": None, "typing-extensions": None, "wheel": None, "zipp": None, "matplotlib": None,
}
DEVICE_PYTHON = "3.12"

# The targets of docs/performance.md, one H100.
STYLEGAN2_SEC_PER_KIMG = {64: 2.0, 128: 3.5, 256: 8.0}  # at most
DDPM_IMG_PER_S = 1000.0  # at least, 64x64, batch 64
SAMPLING_SPEEDUP = 30.0  # DPM-Solver++ 25 steps over DDPM 1000 steps, at least


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------
# check-wheels: run where the wheels are fetched
# ---------------------------------------------------------------------------


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(archive.read(name).decode())


def check_wheels(folder: Path) -> int:
    """Print each wheel's needs and whether the wheels or the device meet them; 1 if any is unmet."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # a Python with pip but without packaging
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version

    wheels = sorted(folder.glob("*.whl"))
    fallback = {normalize(wheel_metadata(w)["Name"]): wheel_metadata(w)["Version"] for w in folder.glob("if-older/*.whl")}
    have: dict[str, str] = {}
    problems = []
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        name = normalize(meta["Name"])
        if name in have:
            problems.append(f"two versions of {name}: {have[name]} and {meta['Version']} (pip refuses to install both)")
        have[name] = meta["Version"]
    marker_env = {"python_version": DEVICE_PYTHON, "python_full_version": DEVICE_PYTHON + ".3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        print(f"{wheel.name}")
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(marker_env):
                continue  # an extra, or another Python
            name = normalize(req.name)
            if name in have:
                where, version = "in the wheels", have[name]
            elif name in DEVICE_HAS:
                where, version = "on the device", DEVICE_HAS[name]
            else:
                problems.append(f"{wheel.name} needs {req}: neither in the wheels nor on the device")
                print(f"    {req}: MISSING")
                continue
            if name in fallback and name not in have:  # the device's version is checked there, at install
                version = fallback[name]
                where = "on the device, or if-older/ where the device's is older"
            if version is not None and req.specifier and not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{wheel.name} needs {req}, {where} is {version}")
                where += f" at {version}: TOO OLD"
            print(f"    {req}: {where}" + (f" ({version})" if version and "TOO OLD" not in where else ""))
    size = sum(w.stat().st_size for w in folder.rglob("*.whl"))
    print(f"{len(wheels)} wheels (+ {len(list(folder.glob('*/*.whl')))} conditional), {size / 2**20:.1f} MiB")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


# ---------------------------------------------------------------------------
# older / link-install: run on the device before raresynth is importable
# ---------------------------------------------------------------------------


def version_key(version: str) -> tuple:
    try:
        from packaging.version import Version
        return (Version(version),)
    except ImportError:  # a plain comparison of the leading numbers
        return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def older(dist: str, version: str) -> int:
    """Exit status 0 when ``dist`` is missing here or older than ``version``."""
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return 0
    return 0 if version_key(have) < version_key(version) else 1


def link_install(repo: Path, site: Path) -> int:
    """Make raresynth importable from ``site`` with links into ``repo`` and a dist-info with its entry points.

    The fallback when ``pip install`` of the repository cannot build it (no setuptools
    recent enough): the package-dir mapping and entry points come from pyproject.toml.
    """
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())
    name, version = project["project"]["name"], project["project"]["version"]
    mapping = project["tool"]["setuptools"]["package-dir"]  # {"raresynth": "core", "raresynth.plugins": "plugins"}
    for old in [site / name, *site.glob(f"{name}-*.dist-info")]:
        if old.is_symlink() or old.is_file():
            old.unlink()
        elif old.exists():
            shutil.rmtree(old)
    for package, source in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        dest = site / package.replace(".", "/")
        if package.count("."):  # a sub-package: one link to its folder
            if dest.is_symlink():
                dest.unlink()
            dest.symlink_to((repo / source).resolve(), target_is_directory=True)
        else:  # the top package: a folder of links, so that sub-packages can live beside
            dest.mkdir(parents=True)
            for entry in (repo / source).iterdir():
                if entry.name != "__pycache__":
                    (dest / entry.name).symlink_to(entry.resolve())
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = dict(project.get("project", {}).get("entry-points", {}))
    if "scripts" in project["project"]:
        groups["console_scripts"] = project["project"]["scripts"]
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) + "\n"
                for group, points in groups.items()))
    (info / "INSTALLER").write_text("gpu_session link-install\n")
    print(f"raresynth linked into {site} (fallback install)")
    return 0


# ---------------------------------------------------------------------------
# env: what the session ran on
# ---------------------------------------------------------------------------

PACKAGES = ["torch", "torchvision", "triton", "accelerate", "diffusers", "torch-fidelity", "huggingface-hub",
            "safetensors", "pydantic", "pydantic-core", "typing-extensions", "numpy", "scikit-image", "pluggy",
            "pydicom", "nibabel", "setuptools", "raresynth"]


def env() -> int:
    print(f"python {platform.python_version()} at {sys.executable}; {os.cpu_count()} CPUs; {platform.platform()}")
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    for package in PACKAGES:
        try:
            dist = importlib.metadata.distribution(package)
            print(f"  {package:<18} {dist.version:<14} {dist.locate_file('')}")
        except importlib.metadata.PackageNotFoundError:
            print(f"  {package:<18} MISSING")
    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"GPU 0: {props.name}, capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB, "
              f"{props.multi_processor_count} SMs; bf16 supported: {torch.cuda.is_bf16_supported()}; "
              f"matmul tf32: {torch.backends.cuda.matmul.allow_tf32}, cudnn tf32: {torch.backends.cudnn.allow_tf32}")
    return 0


# ---------------------------------------------------------------------------
# report: results.json and summary.txt from the steps' JSON files
# ---------------------------------------------------------------------------


def read_status(path: Path) -> list[dict]:
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit, log = line.split("\t")
        steps.append({"name": name, "rc": None if rc == "-" else int(rc), "seconds": int(seconds), "limit": int(limit), "log": log})
    return steps


def step_state(step: dict) -> str:
    if step["rc"] is None:
        return "skipped"
    if step["rc"] == 0:
        return "ok"
    return "timeout" if step["rc"] in (124, 137) else "failed"


def last_error(log: str) -> str:
    """The log's last line that looks like an error, else its last line."""
    path = Path(log)
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    errors = [line for line in lines if re.search(r"(Error|Exception|error:|Killed|Terminated)", line)]
    return (errors or lines or [""])[-1][:160]


def throughput_cells(row: dict, smoke: bool) -> tuple[str, str, str]:
    result = (f"{row['sec_per_kimg']:.2f} s/kimg, {row['img_per_s']:.0f} img/s, {row['peak_mem_gib']:.1f} GiB, "
              f"{row['ticks_measured']} ticks")
    if row["generator"] == "stylegan2_ada" and row["resolution"] in STYLEGAN2_SEC_PER_KIMG:
        target = STYLEGAN2_SEC_PER_KIMG[row["resolution"]]
        return result, f"<= {target:g} s/kimg", "n/a" if smoke else ("MET" if row["sec_per_kimg"] <= target else "MISSED")
    if row["generator"] == "ddpm" and row["resolution"] == 64:
        return result, f">= {DDPM_IMG_PER_S:g} img/s", "n/a" if smoke else ("MET" if row["img_per_s"] >= DDPM_IMG_PER_S else "MISSED")
    return result, "", ""


def sampling_cells(data: dict, smoke: bool) -> tuple[str, str, str]:
    rows = data["rows"]
    result = "; ".join(f"{r['scheduler']}:{r['steps']} {r['seconds']:.2f}s ({r['speedup_vs_first']:.1f}x)" for r in rows)
    fast = [r for r in rows if r["scheduler"] == "dpmsolver++"]
    if not fast or rows[0]["scheduler"] != "ddpm":
        return result, "", ""
    speedup = fast[-1]["speedup_vs_first"]
    return result, f"DPM-Solver++ >= {SAMPLING_SPEEDUP:g}x", "n/a" if smoke else ("MET" if speedup >= SAMPLING_SPEEDUP else "MISSED")


def report(status: Path, json_dir: Path, out: Path, part: str, smoke: bool) -> int:
    steps = read_status(status)
    table = []
    machine = ""
    for step in steps:
        state = step_state(step)
        path = json_dir / f"{step['name']}.json"
        data = json.loads(path.read_text()) if path.is_file() else None
        step["state"], step["data"] = state, data
        if isinstance(data, list) and data:  # throughput.py: one row per configuration
            machine = machine or data[0].get("machine", "")
            cells = [throughput_cells(row, smoke) for row in data]
        elif isinstance(data, dict) and "rows" in data:  # sampling.py
            machine = machine or data.get("machine", "")
            cells = [sampling_cells(data, smoke)]
        elif state == "skipped":
            cells = [("not started: the session's deadline was near", "", "")]
        else:
            why = last_error(step["log"]) if state != "ok" else "no JSON written"
            cells = [(why or ("stopped at its time limit" if state == "timeout" else "no output"), "", "")]
        for result, target, verdict in cells:
            table.append((step["name"], state, f"{step['seconds']}s/{step['limit']}s", result, target, verdict))
    results = {"part": part, "smoke": smoke, "machine": machine,
               "steps": [{key: step[key] for key in ("name", "state", "rc", "seconds", "limit", "data")} for step in steps]}
    (out / f"results-{part}.json").write_text(json.dumps(results, indent=1))
    widths = [max(len(row[i]) for row in table + [("step", "state", "time/limit", "result", "target", "verdict")]) for i in range(6)]
    lines = [f"GPU session, part {part}{' (CPU smoke: tiny budgets, targets not applicable)' if smoke else ''}; machine: {machine or '?'}"]
    for row in [("step", "state", "time/limit", "result", "target", "verdict"), *table]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    unfinished = [step["name"] for step in steps if step["state"] in ("skipped", "timeout")]
    if unfinished:
        lines.append(f"not finished; to run only these: GPU_SESSION_STEPS='{' '.join(unfinished)}' "
                     "bash benchmarks/gpu_session.sh all")
    text = "\n".join(lines) + "\n"
    (out / f"summary-{part}.txt").write_text(text)
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-wheels", help="are the wheels' requirements met by the wheels or the device?")
    check.add_argument("folder", type=Path)
    old = commands.add_parser("older", help="exit 0 when DIST is missing or older than VERSION")
    old.add_argument("dist")
    old.add_argument("version")
    link = commands.add_parser("link-install", help="raresynth into SITE as links (no build)")
    link.add_argument("repo", type=Path)
    link.add_argument("site", type=Path)
    commands.add_parser("env", help="print machine and package versions")
    rep = commands.add_parser("report", help="write results-PART.json and summary-PART.txt")
    rep.add_argument("--status", type=Path, required=True, help="the session's status.tsv")
    rep.add_argument("--json-dir", type=Path, required=True)
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--part", required=True)
    rep.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check-wheels":
        return check_wheels(args.folder)
    if args.command == "older":
        return older(args.dist, args.version)
    if args.command == "link-install":
        return link_install(args.repo, args.site)
    if args.command == "env":
        return env()
    return report(args.status, args.json_dir, args.out, args.part, args.smoke)


if __name__ == "__main__":
    sys.exit(main())

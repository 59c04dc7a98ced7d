"""Run a session's surviving mutants again, against the tests as they are now.

After tests are added for survivors, re-running the whole session takes hours; this
applies each survivor (``cosmic-ray apply``) to the working tree in turn, runs the
config's test command, restores the module, and prints the mutants that still survive.

    python mutation/recheck.py mutation/split.toml SESSION.sqlite

cosmic-ray names a mutant by its operator and occurrence (the n-th place in the module
that operator applies to), so an edit to the module since the session was made can shift
the numbers. Each mutant is therefore checked by its change: the lines it removes and
adds must be the ones the session recorded. When they are not, the other occurrences of
the operator are searched for that change (``moved``); a change that no longer exists
anywhere is reported ``gone`` (the code it mutated was rewritten) and not counted.

Run it in a checkout no one else is editing (it rewrites the modules in place).
"""

from __future__ import annotations

import difflib
import shlex
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

SEARCH_LIMIT = 60  # how far from the recorded occurrence a change is looked for before it is called gone


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """The removed and added lines of a unified diff, stripped of their indentation (the change, wherever it is)."""
    lines = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
    return [line[1:].strip() for line in lines if line.startswith("-")], [line[1:].strip() for line in lines if line.startswith("+")]


NO_SUCH_OCCURRENCE = object()


def apply(module: str, operator: str, occurrence: int, original: bytes):
    """Apply one mutant to the restored module: its change, or ``NO_SUCH_OCCURRENCE``. The caller restores the module."""
    Path(module).write_bytes(original)
    subprocess.run(["cosmic-ray", "apply", module, operator, str(occurrence)], capture_output=True, check=True)
    mutated = Path(module).read_bytes()
    if mutated == original:  # cosmic-ray applies nothing, and says nothing, past the last occurrence
        return NO_SUCH_OCCURRENCE
    diff = difflib.unified_diff(original.decode().splitlines(), mutated.decode().splitlines(), lineterm="")
    return changed_lines("\n".join(diff))


def place(module: str, operator: str, occurrence: int, recorded: tuple[list[str], list[str]], original: bytes) -> int | None:
    """The occurrence that makes the recorded change now, applied: the recorded one, else the nearest of the same operator
    (an edit above it shifts the numbers by a few)."""
    if apply(module, operator, occurrence, original) == recorded:
        return occurrence
    below, above = occurrence - 1, occurrence + 1
    while (below >= 0 or above is not None) and max(occurrence - below, (above or 0) - occurrence) <= SEARCH_LIMIT:
        if above is not None:
            change = apply(module, operator, above, original)
            if change == recorded:
                return above
            above = None if change is NO_SUCH_OCCURRENCE else above + 1  # past the operator's last occurrence
        if below >= 0:
            if apply(module, operator, below, original) == recorded:
                return below
            below -= 1
    return None


def main(config_path: str, session: str) -> int:
    config = tomllib.loads(Path(config_path).read_text())["cosmic-ray"]
    test_command = config["test-command"]
    rows = sqlite3.connect(session).execute(
        "select s.module_path, s.operator_name, s.occurrence, s.start_pos_row, r.diff from work_results r "
        "join mutation_specs s on s.job_id = r.job_id where r.test_outcome = 'SURVIVED' order by s.module_path, s.start_pos_row").fetchall()
    still, gone = [], 0
    for module, operator, occurrence, line, diff in rows:
        original = Path(module).read_bytes()
        try:
            now = place(module, operator, occurrence, changed_lines(diff or ""), original)
            if now is None:
                gone += 1
                print(f"gone     {module}:{line} {operator} #{occurrence} (the code it changed is no longer there)", flush=True)
                continue
            try:
                survived = subprocess.run(shlex.split(test_command), capture_output=True, check=False,
                                          timeout=float(config.get("timeout", 300))).returncode == 0
            except subprocess.TimeoutExpired:  # as cosmic-ray counts it: the tests did not pass
                survived = False
        finally:
            Path(module).write_bytes(original)
        moved = "" if now == occurrence else f" (now #{now})"
        print(f"{'SURVIVED' if survived else 'killed':8s} {module}:{line} {operator} #{occurrence}{moved}", flush=True)
        if survived:
            still.append((module, line, operator))
    checked = len(rows) - gone
    print(f"{len(rows)} earlier survivors: {checked - len(still)} killed now, {len(still)} still survive"
          + (f", {gone} gone (their code rewritten)" if gone else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

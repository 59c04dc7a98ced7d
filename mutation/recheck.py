"""Run a session's surviving mutants again, against the tests as they are now.

After tests are added for survivors, re-running the whole session takes hours; this
applies each survivor (``cosmic-ray apply``) to the working tree in turn, runs the
config's test command, restores the module, and prints the mutants that still survive.

    python mutation/recheck.py mutation/split.toml SESSION.sqlite

Run it in a checkout no one else is editing (it rewrites the modules in place).
"""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path


def main(config_path: str, session: str) -> int:
    config = tomllib.loads(Path(config_path).read_text())["cosmic-ray"]
    test_command = config["test-command"]
    rows = sqlite3.connect(session).execute(
        "select s.module_path, s.operator_name, s.occurrence, s.start_pos_row from work_results r "
        "join mutation_specs s on s.job_id = r.job_id where r.test_outcome = 'SURVIVED' order by s.module_path, s.start_pos_row").fetchall()
    still = []
    for module, operator, occurrence, line in rows:
        original = Path(module).read_bytes()
        try:
            subprocess.run(["cosmic-ray", "apply", module, operator, str(occurrence)], check=True, capture_output=True)
            result = subprocess.run(shlex.split(test_command), capture_output=True, timeout=float(config.get("timeout", 300)))
        finally:
            Path(module).write_bytes(original)
        verdict = "killed" if result.returncode != 0 else "SURVIVED"
        print(f"{verdict:8s} {module}:{line} {operator} #{occurrence}", flush=True)
        if result.returncode == 0:
            still.append((module, line, operator))
    print(f"{len(rows)} earlier survivors: {len(rows) - len(still)} killed now, {len(still)} still survive")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

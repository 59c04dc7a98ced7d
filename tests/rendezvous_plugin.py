"""A test-only plugin that proves training runs overlap in time: each waits at its first tick for the others.

With ``RARESYNTH_TEST_RENDEZVOUS=DIR:N`` set, the first ``raresynth_tick`` of a run
writes ``DIR/<pid>`` and waits until ``N`` such files exist. Runs that an executor runs
one after another never meet: the first one gives up after ``TIMEOUT`` seconds and
fails with an error that says so, so a test asserting that every run finished has shown
that ``N`` of them were running at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from raresynth import TrainingError, hookimpl

TIMEOUT = 180.0  # seconds: far longer than starting a second worker takes, even on a loaded machine
_met: set[str] = set()


@hookimpl
def raresynth_tick(run, stats):
    setting = os.environ.get("RARESYNTH_TEST_RENDEZVOUS")
    if not setting or setting in _met:
        return
    folder, count = setting.rsplit(":", 1)
    Path(folder, str(os.getpid())).write_text(str(run.run_dir))
    deadline = time.monotonic() + TIMEOUT
    while len(list(Path(folder).iterdir())) < int(count):
        if time.monotonic() > deadline:
            raise TrainingError(f"rendezvous: no other run reached its first tick within {TIMEOUT:.0f} s: the runs did not overlap")
        time.sleep(0.05)
    _met.add(setting)

"""A test-only plugin that holds a training run at its first tick until the test lets it go.

With ``RARESYNTH_TEST_PAUSE=DIR`` set, the first ``raresynth_tick`` writes ``DIR/paused``
(the trainer's PID) and waits until ``DIR/go`` exists: a test can then act while a real
trainer is in the middle of its run (start a second one, kill it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from raresynth import hookimpl


@hookimpl
def raresynth_tick(run, stats):
    folder = os.environ.get("RARESYNTH_TEST_PAUSE")
    if not folder or (Path(folder) / "paused").exists():
        return
    (Path(folder) / "paused").write_text(str(os.getpid()))
    while not (Path(folder) / "go").exists():
        time.sleep(0.05)

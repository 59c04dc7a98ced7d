"""Shared fixtures: a registry with the installed plugins plus the test-only toy and dcgan plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import dcgan_plugin  # noqa: E402
import toy_plugin  # noqa: E402
from raresynth.registry import load_plugins, set_registry  # noqa: E402


@pytest.fixture
def registry():
    """Installed plugins + the toy and dcgan fixture plugins, also installed as the process-wide registry."""
    reg = load_plugins(only=None, extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
    set_registry(reg)
    yield reg
    set_registry(None)


@pytest.fixture(scope="module")
def format_registry():
    """The installed data formats only (the data tests need no backend or metric)."""
    return load_plugins(only=["formats"])


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one thread avoids oversubscription and is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_features(tmp_path, monkeypatch, one_thread):
    """A fresh feature cache, no weights anywhere and no torch hub (nothing is ever downloaded), one CPU thread.

    Every metric test module uses it: ``pytestmark = pytest.mark.usefixtures("isolated_features")``.
    """
    from raresynth.evaluation.features import CACHE_ENV, WEIGHTS_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.fixture(scope="module")
def plugins():
    """All installed plugins, loaded once per module."""
    return load_plugins()


@pytest.fixture
def toy_config(tmp_path):
    """A tiny run on 16 embedded crops at 16x16 pixels, driven by the toy generator."""

    def make(**changes):
        config = {
            "run_dir": str(tmp_path / "run"),
            "seed": 3,
            "data": {
                "format": "embedded",
                "resolution": 16,
                "channels": 1,
                "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32},
            },
            "generator": {"name": "toy"},
            "budget": {"kimg": 0.128},
            "batch_size": 8,
            "schedule": {"tick_kimg": 0.032, "snapshot_kimg": 0.064, "keep_checkpoints": 2, "grid_size": 4},
        }
        for dotted, value in changes.items():
            node = config
            *parents, last = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return config

    return make

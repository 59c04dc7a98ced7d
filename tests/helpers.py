"""Small helpers shared by several test modules (``tests/`` is on ``sys.path`` via conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import torch

from raresynth import ImageSet
from raresynth.config import DataConfig
from raresynth.data import load_dataset

HERE = Path(__file__).parent


def save_png(path: Path, pixels) -> Path:
    """Write a uint8 array as a PNG file, creating its folder."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def fixture_plugins_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that must see the fixture plugin ``dcgan`` (tests/dcgan_plugin)."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "RARESYNTH_PLUGIN_MODULES": "dcgan_plugin", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flat(state, prefix="", *, all_leaves=False):
    """Walk a nested state, yielding ``(path, tensor)``; with ``all_leaves`` also ``(path, value)`` for non-tensor leaves."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from flat(value, f"{prefix}/{key}", all_leaves=all_leaves)
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from flat(value, f"{prefix}/{i}", all_leaves=all_leaves)
    elif all_leaves:
        yield prefix, state


def torchrun_two_processes(config_path, out_dir) -> subprocess.CompletedProcess:
    """``two_process_train.py`` on two CPU processes (gloo) through torchrun; each rank writes its state to ``out_dir``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(HERE / "two_process_train.py"), str(config_path), str(out_dir)],
        env=env, capture_output=True, text=True, timeout=300,
    )


# -- metrics -------------------------------------------------------------------


def embedded_data(plugins, channels=3, train_per_class=32, held_out_per_class=8, crop_size=64, resolution=32):
    """The embedded medical crops, loaded through the plugins' ``embedded`` format."""
    config = DataConfig(format="embedded", resolution=resolution, channels=channels,
                        format_options={"train_per_class": train_per_class, "held_out_per_class": held_out_per_class,
                                        "crop_size": crop_size})
    return load_dataset(config, plugins)


def metric(plugins, data, name, **params):
    cls = plugins.metric(name)
    return cls(cls.Params.model_validate(params), data.spec)


def noisy(image_set: ImageSet, sigma: float, seed: int = 1) -> ImageSet:
    noise = torch.randn(image_set.images.shape, generator=torch.Generator().manual_seed(seed))
    return ImageSet((image_set.images + sigma * noise).clamp(-1, 1), image_set.labels, f"noisy{sigma}")


def values(m, data, synthetic) -> dict[str, float]:
    return {v.name: v.value for v in m.compute(data.train, data.held_out, synthetic)}


def assert_setting_bounds(build, smallest: dict, refused: dict[str, tuple[object, str]]) -> None:
    """Each setting in ``smallest`` is accepted as given, one at a time; each in ``refused`` is refused, naming the field and its bound.

    ``build(**{name: value})`` returns the plugin object (its ``params`` are read back);
    ``refused`` maps a field to a value just past its bound and pydantic's wording of the
    bound, for example ``{"crop": (-1, "greater than or equal to 0")}``.
    """
    assert {name: getattr(build(**{name: value}).params, name) for name, value in smallest.items()} == smallest
    for name, (value, bound) in refused.items():
        with pytest.raises(pydantic.ValidationError, match=f"{name}\n  Input should be {bound}"):
            build(**{name: value})


# -- a real headless browser: Debian's Chromium driven by Selenium through chromium-driver ------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = "no Chromium browser: apt-get install chromium chromium-driver (.ci/run does)"


def headless_chromium(window: str = "1100,800", timeout: float = 30):
    """A headless Chromium (Selenium WebDriver) with page and script timeouts; the caller quits it."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={window}",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(timeout)
    driver.set_script_timeout(timeout)
    return driver

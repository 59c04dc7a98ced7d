"""report.html in a real browser: one self-contained file whose every image loads, with nothing fetched from elsewhere."""

from __future__ import annotations

import shutil

import pytest
import yaml

from helpers import CHROMEDRIVER, CHROMIUM, NO_BROWSER, headless_chromium
from raresynth.bench import prepare_benchmark, run_benchmark

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[review]'")
from selenium.webdriver.common.by import By  # noqa: E402


def test_report_html_is_self_contained_and_every_image_loads(tmp_path, registry, monkeypatch, one_thread):
    monkeypatch.setenv("RARESYNTH_CACHE_DIR", str(tmp_path / "cache"))
    config = {
        "name": "html report", "out_dir": str(tmp_path / "out"), "seeds": [0],
        "base": {"data": {"format": "embedded", "resolution": 16, "channels": 1,
                          "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
                 "budget": {"kimg": 0.064}, "batch_size": 8,
                 "schedule": {"tick_kimg": 0.032, "snapshot_kimg": 0.032, "keep_checkpoints": 1, "grid_size": 4}},
        "variants": {"toy": {"generator": "toy"}, "collapsed": {"generator": "toy", "sample": {"scale": 0.0}}},
        "metrics": ["swd", {"name": "memorization", "embedding": None}], "synthetic_images": 12,
        "evaluation": {"resamples": 3},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    run_benchmark(prepare_benchmark(path, registry=registry), progress_bar=False, log=lambda message: None)
    out = tmp_path / "out"
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    images_in_markdown = markdown.count("![")
    assert images_in_markdown >= 5  # plots, train time, two sample grids, closest-pair grids
    assert "## Memorization: closest pairs" in markdown and "*real (held-out)* (reference)" in markdown

    driver = headless_chromium(window="420,900")  # a phone's width
    try:
        moved = tmp_path / "elsewhere" / "report.html"  # the file alone, away from its folder: nothing may depend on it
        moved.parent.mkdir()
        shutil.copy(out / "report.html", moved)
        driver.get(moved.as_uri())
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == images_in_markdown
        for image in images:
            assert image.get_attribute("src").startswith("data:image/png;base64,")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image), image.get_attribute("alt")
        # the page fetched nothing but itself
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources == []
        # readable on a phone: the page is no wider than the window (wide tables scroll inside their box)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        tables = driver.find_elements(By.TAG_NAME, "table")
        assert len(tables) >= 3 and "real (held-out)" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
    assert "<script" not in html

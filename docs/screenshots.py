"""Remake the screenshots in docs/images/ of `raresynth review`'s pages, in headless Chromium.

    .venv/bin/python docs/screenshots.py

Builds a throw-away study in a temporary folder (the embedded data's held-out crops and a
toy generator from the test suite's fixture plugin, trained for a few steps: the page is
the point, not the images), serves it on 127.0.0.1, answers a few images as a reader and
saves ``review-reader.png`` (the reader page mid-study), ``review-admin.png`` (progress per
reader) and ``review-error.png`` (an answer sent twice). Needs ``chromium`` and
``chromedriver`` (``apt-get install chromium chromium-driver``) and the ``review`` extra.

    .venv/bin/python docs/screenshots.py --report runs/bench/default/report.html

instead screenshots a benchmark's ``report.html`` (after ``make demo``): ``report.png`` (the top
of the page at a laptop's width) and ``report-phone.png`` (at a phone's width).
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import torch
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import dcgan_plugin
    import toy_plugin
    from raresynth.registry import load_plugins, set_registry
    from raresynth.review import add_reader, create_study
    from review_helpers import ProcessServer, tiny_run

    torch.set_num_threads(1)
    ignored = (StaleElementReferenceException, NoSuchElementException)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = load_plugins(only=None, extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
        set_registry(registry)
        run = tiny_run(tmp, registry)
        create_study(tmp / "study", run, [run], registry, n=24, seed=0)
        token = add_reader(tmp / "study", "Dr. A. Reader")
        add_reader(tmp / "study", "Dr. B. Second")
        with sqlite3.connect(tmp / "study" / "study.sqlite") as db:
            admin = db.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()[0]

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,760", "--hide-scrollbars"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
        try:
            with ProcessServer(tmp / "study") as server:
                driver.get(f"{server.base}/r/{token}")
                for i in range(5):
                    shown = driver.find_element(By.NAME, "image_id").get_attribute("value")
                    driver.find_element(By.ID, f"call-{'real' if i % 2 else 'synthetic'}").click()
                    driver.find_element(By.ID, f"confidence-{1 + i % 5}").click()
                    driver.find_element(By.ID, "save").click()
                    WebDriverWait(driver, 30, ignored_exceptions=ignored).until(lambda d, shown=shown: d.find_element(By.NAME, "image_id").get_attribute("value") != shown)
                old_form = driver.find_element(By.NAME, "image_id").get_attribute("value")
                driver.find_element(By.ID, "call-synthetic").click()
                driver.find_element(By.ID, "confidence-4").click()
                driver.find_element(By.ID, "realism-2").click()
                driver.find_element(By.CSS_SELECTOR, "input[value='checkerboard']").click()
                driver.find_element(By.ID, "note").send_keys("grid pattern in the background")
                driver.save_screenshot(str(OUT / "review-reader.png"))
                driver.get(f"{server.base}/admin/{admin}")
                driver.save_screenshot(str(OUT / "review-admin.png"))
                # an answer for an image already answered: what a replayed form gets
                driver.get(f"{server.base}/r/{token}")
                driver.execute_script("document.getElementsByName('image_id')[0].value = arguments[0];"
                                      "document.getElementById('call-real').checked = true;"
                                      "document.getElementById('confidence-3').checked = true;"
                                      "document.getElementById('answer').submit();", shown)
                WebDriverWait(driver, 30, ignored_exceptions=ignored).until(lambda d: d.find_elements(By.ID, "error"))
                driver.save_screenshot(str(OUT / "review-error.png"))
                assert old_form != shown
        finally:
            driver.quit()
            set_registry(None)
    for name in ("review-reader.png", "review-admin.png", "review-error.png"):
        print(f"wrote {OUT / name}")


def report_screenshots(report: Path) -> None:
    from helpers import headless_chromium

    for name, window, height in (("report.png", "1200,900", 2600), ("report-phone.png", "420,900", 2000)):
        driver = headless_chromium(window=window)
        try:
            driver.get(Path(report).resolve().as_uri())
            width = int(window.split(",")[0])
            driver.set_window_size(width, height)
            driver.save_screenshot(str(OUT / name))
        finally:
            driver.quit()
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        OUT.mkdir(parents=True, exist_ok=True)
        report_screenshots(Path(sys.argv[2]))
    else:
        main()

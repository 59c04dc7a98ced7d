"""`raresynth review` in a real browser: Debian's Chromium, headless, driven by Selenium through chromium-driver.

One study (the embedded data's held-out crops and a tiny trained toy run, 24 images
at 32 px), the server in its own process on 127.0.0.1. Two readers answer at the same
time, one by keyboard and one by mouse; the server is killed (SIGKILL, as a crash)
mid-study and started again; no answer is lost and both readers resume where they
stopped. The page, the image bytes and the response headers are checked for anything
that could unblind, and the results against numbers computed here from the key.

Skipped, with the reason, only when no Chromium / chromedriver is installed (`.ci/run`
installs them).
"""

from __future__ import annotations

import math
import sqlite3
import threading

import pytest

from helpers import CHROMEDRIVER, CHROMIUM, NO_BROWSER, headless_chromium
from review_helpers import ProcessServer, key, png_chunks, request, stored_answers, tiny_run

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[review]'")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

N_IMAGES = 24
TIMEOUT = 30  # seconds for any one page to load or change


def make_browser():
    return headless_chromium(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import dcgan_plugin
    import toy_plugin
    from raresynth.registry import load_plugins, set_registry
    from raresynth.review import add_reader, create_study

    tmp = tmp_path_factory.mktemp("review-browser")
    registry = load_plugins(only=None, extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
    set_registry(registry)
    try:
        run = tiny_run(tmp, registry)
        create_study(tmp / "study", run, [run], registry, n=N_IMAGES, seed=0)
    finally:
        set_registry(None)
    tokens = {name: add_reader(tmp / "study", name) for name in ("ann", "bob")}
    return {"dir": tmp / "study", "tokens": tokens}


@pytest.fixture
def browsers():
    drivers = [make_browser(), make_browser()]
    yield drivers
    for driver in drivers:
        driver.quit()


def shown_image(driver) -> str:
    return driver.find_element(By.NAME, "image_id").get_attribute("value")


def wait_for_next(driver, previous: str) -> None:
    """Until the page shows another image than ``previous``, or the done page."""
    def changed(d):
        # one script reads the page as it is now: an element found in one call and read in the next can belong to the
        # page the form submission replaced (Chromium then answers "Node with given id does not belong to the document")
        shown = d.execute_script("if (document.getElementById('done')) return true;"
                                 "const fields = document.getElementsByName('image_id');"
                                 "return fields.length ? fields[0].value : null;")
        return shown is True or (shown is not None and shown != previous)
    WebDriverWait(driver, TIMEOUT).until(changed)


def decide(truth: str, position: int, reader: str) -> tuple[str, int]:
    """What a reader answers: right except at every third position (ann) or every fourth (bob); confidence cycles 1-5."""
    wrong = position % (3 if reader == "ann" else 4) == 0
    call = truth if not wrong else ("real" if truth == "synthetic" else "synthetic")
    return call, 1 + position % 5


def answer_pages(driver, base: str, reader: str, token: str, truth: dict[str, str], count: int, given: dict, seen: list,
                 by_keyboard: bool) -> None:
    """Answer ``count`` images through the page, recording what was shown and answered."""
    for _ in range(count):
        image_id = shown_image(driver)
        # the image really loaded: decoded by the browser at its own 32 px, shown at an integer zoom
        assert driver.execute_script("const i = document.getElementById('image'); return i.complete && i.naturalWidth") == 32
        position = len(seen)
        seen.append(image_id)
        call, confidence = decide(truth[image_id], position, reader)
        if by_keyboard:
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys("s" if call == "synthetic" else "r")
            body.send_keys(str(confidence))
            body.send_keys("\n")
        else:
            driver.find_element(By.ID, f"call-{call}").click()
            driver.find_element(By.ID, f"confidence-{confidence}").click()
            if position % 2:
                driver.find_element(By.ID, "realism-3").click()
                driver.find_element(By.ID, "note").send_keys("edges look soft")
            driver.find_element(By.ID, "save").click()
        given[image_id] = (call, confidence)
        wait_for_next(driver, image_id)


def test_two_readers_a_crash_and_a_restart_lose_no_answer(study, browsers):
    study_dir, tokens = study["dir"], study["tokens"]
    images = key(study_dir)
    truth = {image_id: entry["truth"] for image_id, entry in images.items()}
    given = {"ann": {}, "bob": {}}
    seen = {"ann": [], "bob": []}
    server = ProcessServer(study_dir).start()
    try:
        for driver, name in zip(browsers, ("ann", "bob")):
            driver.get(f"{server.base}/r/{tokens[name]}")

        errors = []

        def half(driver, name, count):
            try:
                answer_pages(driver, server.base, name, tokens[name], truth, count, given[name], seen[name], by_keyboard=name == "ann")
            except Exception as exc:  # noqa: BLE001 - reported by the main thread below
                errors.append(exc)

        # both readers at once, each in its own browser and thread
        threads = [threading.Thread(target=half, args=(d, n, 10 if n == "ann" else 7)) for d, n in zip(browsers, ("ann", "bob"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        if errors:
            raise errors[0]
        assert (len(given["ann"]), len(given["bob"])) == (10, 7)

        server.kill()  # a crash: no shutdown, no flush
        assert stored_answers(study_dir) == {(n, i): a for n in given for i, a in given[n].items()}
        server.start()

        # a reader who closed the tab and comes back: the same link resumes at the first unanswered image
        browsers[0].quit()
        browsers[0] = make_browser()
        for driver, name in zip(browsers, ("ann", "bob")):
            driver.get(f"{server.base}/r/{tokens[name]}")
        assert browsers[0].find_element(By.ID, "count").text == f"10 / {N_IMAGES} answered"
        assert browsers[1].find_element(By.ID, "progress").get_attribute("value") == "7"
        with sqlite3.connect(study_dir / "study.sqlite") as db:
            orders = {name: [r[0] for r in db.execute("SELECT a.image_id FROM assignments a JOIN readers r ON r.id = a.reader_id "
                                                      "WHERE r.name = ? ORDER BY a.position", (name,))] for name in tokens}
        assert shown_image(browsers[0]) == orders["ann"][10] and shown_image(browsers[1]) == orders["bob"][7]

        unblinding_checks(browsers[0], server.base, tokens["ann"], study_dir, images)
        # Z shows the image at its own 32 px and back at the integer zoom
        body = browsers[0].find_element(By.TAG_NAME, "body")
        width = "return document.getElementById('image').getBoundingClientRect().width"
        assert browsers[0].execute_script(width) == 512
        body.send_keys("z")
        assert browsers[0].execute_script(width) == 32
        body.send_keys("z")
        assert browsers[0].execute_script(width) == 512

        for driver, name in zip(browsers, ("ann", "bob")):
            answer_pages(driver, server.base, name, tokens[name], truth, N_IMAGES - len(given[name]), given[name], seen[name],
                         by_keyboard=name == "ann")
            assert driver.find_element(By.ID, "done").text.startswith(f"Thank you, {name}")
    finally:
        server.kill()

    # every answer given is stored exactly once, as given; each reader saw every image once, in an order of their own
    assert stored_answers(study_dir) == {(n, i): a for n in given for i, a in given[n].items()}
    assert seen["ann"] == orders["ann"] and seen["bob"] == orders["bob"] and seen["ann"] != seen["bob"]
    assert sorted(seen["ann"]) == sorted(images)
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        notes = db.execute("SELECT COUNT(*) FROM answers WHERE note = 'edges look soft' AND realism = 3").fetchone()[0]
    assert notes == sum(p % 2 for p in range(N_IMAGES))  # bob's clicks on realism and typed notes arrived
    check_results(study_dir, given, truth)


def unblinding_checks(driver, base: str, token: str, study_dir, images: dict[str, dict]) -> None:
    """Nothing in the page, the URLs, the image bytes or the headers tells a real image from a synthetic one."""
    page = driver.page_source
    for entry in images.values():
        for value in (entry["origin"], entry["source"] if entry["source"] != "real" else None, entry["class_name"]):
            assert value is None or value not in page, value
    assert "seed" not in page and ".png" not in page and "toy" not in page
    # every resource the page loaded came from this server (no CDN): the browser's own record of them
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(base + "/") for url in loaded)

    header_sets, ihdrs = {}, set()
    for image_id, entry in images.items():
        status, headers, body = request(f"{base}/r/{token}/image/{image_id}")
        assert status == 200
        names = tuple(sorted(name.lower() for name in headers if name.lower() not in ("date", "content-length")))
        header_sets.setdefault(names, set()).add(entry["truth"])
        assert {k.lower(): v for k, v in headers.items()}["content-type"] == "image/png"
        chunks = png_chunks(body)
        assert [kind for kind, _ in chunks if kind != b"IDAT"] == [b"IHDR", b"IEND"]
        ihdrs.add(chunks[0][1])
    # one set of headers for all images (no file name, no date of the file, no ETag), one size and pixel format
    (names,) = header_sets
    assert not {"content-disposition", "last-modified", "etag", "server"} & set(names)
    assert {k.lower(): v for k, v in headers.items()}["cache-control"] == "no-store"
    assert len(ihdrs) == 1


def check_results(study_dir, given: dict, truth: dict[str, str]) -> None:
    from raresynth.review import write_results

    out, results = write_results(study_dir)
    for name, answers in given.items():
        n = len(answers)
        correct = sum(call == truth[i] for i, (call, _) in answers.items())
        synthetic = [i for i in answers if truth[i] == "synthetic"]
        real = [i for i in answers if truth[i] == "real"]
        pmf = [math.comb(n, k) / 2**n for k in range(n + 1)]
        scores = {i: (5 + c if call == "synthetic" else 6 - c) for i, (call, c) in answers.items()}
        pairs = [(scores[p] > scores[q]) + 0.5 * (scores[p] == scores[q]) for p in synthetic for q in real]
        got = results["readers"][name]
        assert got["accuracy"] == pytest.approx(correct / n)
        assert got["p_value"] == pytest.approx(min(1.0, sum(p for p in pmf if p <= pmf[correct] * (1 + 1e-7))))
        assert got["sensitivity"] == pytest.approx(sum(answers[i][0] == "synthetic" for i in synthetic) / len(synthetic))
        assert got["specificity"] == pytest.approx(sum(answers[i][0] == "real" for i in real) / len(real))
        assert got["auc"] == pytest.approx(sum(pairs) / len(pairs))
    agree = sum(given["ann"][i][0] == given["bob"][i][0] for i in truth) / len(truth)
    share = {c: sum(given[r][i][0] == c for r in given for i in truth) / (2 * len(truth)) for c in ("real", "synthetic")}
    scott = (agree - sum(s * s for s in share.values())) / (1 - sum(s * s for s in share.values()))
    assert results["fleiss_kappa"]["kappa"] == pytest.approx(scott)
    for name in ("results.md", "results.json", "roc.png", "imrmc.csv"):
        assert (out / name).stat().st_size > 0

"""`raresynth review` without a browser: drawing and blinding a study, readers, the server's answers to bad input, results.

The browser tests (two readers through the page, a server killed mid-study) are in
test_review_browser.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

from raresynth.cli import main
from raresynth.errors import ConfigError
from raresynth.review import add_reader, create_study, write_results
from raresynth.review.study import Answer, StudyError, connect, record_answer
from raresynth.training import sample_to_folder
from review_helpers import ThreadServer, json_body, key, png_chunks, post_form, request, stored_answers, tiny_run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 16-image study: 8 real held-out crops, 4 sampled from a toy run now and 4 from a folder of its samples."""
    import dcgan_plugin
    import toy_plugin
    from raresynth.registry import load_plugins, set_registry

    tmp = tmp_path_factory.mktemp("review")
    registry = load_plugins(only=None, extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
    set_registry(registry)
    try:
        run = tiny_run(tmp, registry)
        folder = tmp / "exported"
        sample_to_folder(run, folder, n=8, seed=500, registry=registry)
        summary = create_study(tmp / "study", run, [run, folder], registry, n=16, seed=1)
    finally:
        set_registry(None)
    return {"dir": tmp / "study", "run": run, "folder": folder, "summary": summary, "tmp": tmp, "registry": registry}


def test_a_study_is_balanced_per_source_and_class(study):
    images = key(study["dir"])
    assert len(images) == 16
    counts = {}
    for entry in images.values():
        counts[(entry["source"], entry["class_name"])] = counts.get((entry["source"], entry["class_name"]), 0) + 1
    assert counts == {("real", "fundus"): 4, ("real", "histology"): 4, ("toy-run", "fundus"): 2, ("toy-run", "histology"): 2,
                      ("exported", "fundus"): 2, ("exported", "histology"): 2}
    assert {e["truth"] for e in images.values() if e["source"] == "real"} == {"real"}
    assert {e["truth"] for e in images.values() if e["source"] != "real"} == {"synthetic"}
    # the real images are held-out ones, never training images
    split = json.loads((study["run"] / "split.json").read_text())
    real_origins = {e["origin"] for e in images.values() if e["truth"] == "real"}
    assert real_origins <= set(split["held_out"]) and not real_origins & set(split["train"])
    # the folder's images are its files, by name (in the key only)
    assert {e["origin"] for e in images.values() if e["source"] == "exported"} <= {p.name for p in study["folder"].glob("*.png")}


def test_every_image_is_encoded_alike_with_opaque_ids_and_no_metadata(study):
    with sqlite3.connect(study["dir"] / "study.sqlite") as db:
        rows = db.execute("SELECT id, png, truth FROM images").fetchall()
    headers = set()
    for image_id, png, _ in rows:
        assert len(image_id) == 16 and int(image_id, 16) >= 0  # 64 random bits in hex, nothing else
        chunks = png_chunks(png)
        assert {kind for kind, _ in chunks} == {b"IHDR", b"IDAT", b"IEND"}  # no tEXt, tIME, iCCP, pHYs, eXIf ...
        headers.add(chunks[0][1])
    # one IHDR for all: 32 x 32, bit depth 8, colour type 2 (RGB), no interlace
    assert headers == {bytes.fromhex("00000020" "00000020" "08" "02" "00" "00" "00")}
    # the real ones carry the held-out crop's own pixels (8-bit), nothing else changed
    from raresynth.data.images import to_uint8
    from raresynth.evaluation.training_data import load_training_data

    dataset = load_training_data(study["run"], study["registry"])
    held_out = {record: to_uint8(dataset.held_out.images[i : i + 1])[0] for i, record in enumerate(dataset.split["held_out"])}
    origins = key(study["dir"])
    for image_id, png, truth in rows:
        if truth == "real":
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), held_out[origins[image_id]["origin"]])


def test_study_creation_refuses_bad_input(study):
    registry = study["registry"]
    run, tmp = study["run"], study["tmp"]
    with pytest.raises(StudyError, match="a study exists there already"):
        create_study(study["dir"], run, [study["folder"]], registry, n=4)
    with pytest.raises(ConfigError, match="--n 5: must be even"):
        create_study(tmp / "odd", run, [study["folder"]], registry, n=5)
    with pytest.raises(ConfigError, match="real: the study needs 10 class 'fundus' but there are only 8"):
        create_study(tmp / "big", run, [study["folder"]], registry, n=40)
    with pytest.raises(ConfigError, match="neither a run directory .* nor a folder of images"):
        create_study(tmp / "missing", run, [tmp / "no-such-folder"], registry, n=4)
    assert not (tmp / "odd" / "study.sqlite").exists() and not (tmp / "big" / "study.sqlite").exists()


def test_each_reader_gets_a_token_and_an_order_of_their_own(study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    first, second = add_reader(copy, "ann"), add_reader(copy, "bob")
    assert first != second and len(first) >= 32
    with pytest.raises(StudyError, match="a reader named 'ann' exists already"):
        add_reader(copy, "ann")
    with sqlite3.connect(copy / "study.sqlite") as db:
        orders = [[row[0] for row in db.execute("SELECT image_id FROM assignments WHERE reader_id = ? ORDER BY position", (r,))]
                  for r in (1, 2)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(key(copy))
    assert orders[0] != orders[1]  # 16! orders: equal by chance once in 2e13


@pytest.fixture
def served(study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    token = add_reader(copy, "ann")
    with ThreadServer(copy) as server:
        yield {"dir": copy, "token": token, "base": server.base}


def current_image(served) -> str:
    status, _, body = request(f"{served['base']}/r/{served['token']}")
    assert status == 200
    return body.decode().split('name="image_id" value="')[1].split('"')[0]


def test_the_server_refuses_bad_input_with_clear_errors_and_keeps_the_database_consistent(served):
    base, token = served["base"], served["token"]
    answer_url = f"{base}/r/{token}/answer"
    image = current_image(served)
    good = {"image_id": image, "call": "synthetic", "confidence": "4", "realism": "2", "artefact": "blur", "note": "edges"}

    status, _, body = request(f"{base}/r/not-a-token")
    assert status == 404 and b"no reader has this token" in body and b'id="resume"' not in body
    assert post_form(f"{base}/r/not-a-token/answer", urlencode(good))[0] == 404
    assert request(f"{base}/r/{token}/image/0123456789abcdef")[0] == 404
    status, headers, body = request(f"{base}/r/{token}/image/nope", headers={"Accept": "application/json"})
    assert status == 404 and headers["content-type"] == "application/json" and json_body(body)["error"] == "image 'nope' is not in this study"

    bad_forms = [
        ({**good, "call": "maybe"}, 400, "field &#39;call&#39; is &#39;maybe&#39;"),
        ({k: v for k, v in good.items() if k != "confidence"}, 400, "field &#39;confidence&#39; is missing"),
        ({**good, "confidence": "7"}, 400, "give a whole number from 1 to 5"),
        ({**good, "artefact": "sparkles"}, 400, "&#39;sparkles&#39; is not one of"),
        ({**good, "note": "x" * 2001}, 400, "at most 2000"),
        ({**good, "image_id": "0123456789abcdef"}, 404, "is not in this study"),
    ]
    for form, status_expected, message in bad_forms:
        status, _, body = post_form(answer_url, urlencode(form))
        assert (status, message in body.decode()) == (status_expected, True), form
    status, _, body = post_form(answer_url, urlencode(good) + "&image_id=" + image)
    assert status == 400 and "given 2 times" in body.decode()
    status, _, body = post_form(answer_url, urlencode({**good, "note": "x" * 9000}))
    assert status == 413 and "larger than 8192 bytes" in body.decode()
    status, _, body = request(answer_url, json.dumps(good).encode(), {"Content-Type": "application/json"}, "POST")
    assert status == 415
    status, _, body = post_form(answer_url, "%ff%fe=%80")
    assert status == 400 and "cannot be read" in body.decode()
    assert stored_answers(served["dir"]) == {}  # none of that reached the database

    status, headers, _ = post_form(answer_url, urlencode(good))
    assert status == 303 and headers["location"] == f"/r/{token}"
    assert stored_answers(served["dir"]) == {("ann", image): ("synthetic", 4)}
    # the same form again (a double click, a replayed request): refused, the first answer kept
    status, _, body = post_form(answer_url, urlencode({**good, "call": "real"}), accept="application/json")
    assert status == 409 and "answered already" in json_body(body)["error"]
    # an image of the study that is not the one asked about now
    later = next(i for i in key(served["dir"]) if i not in (image, current_image(served)))
    status, _, body = post_form(answer_url, urlencode({**good, "image_id": later}))
    assert status == 409 and "not the image you are asked about now" in body.decode()
    assert f'<a id="resume" href="/r/{token}">' in body.decode()  # the way on, for a reader whose token is known
    assert stored_answers(served["dir"]) == {("ann", image): ("synthetic", 4)}
    with connect(served["dir"]) as db:
        row = db.execute("SELECT realism, artefacts, note FROM answers").fetchone()
    assert (row[0], json.loads(row[1]), row[2]) == (2, ["blur"], "edges")


def test_the_admin_page_shows_progress_and_nothing_of_the_key(served):
    base = served["base"]
    with connect(served["dir"]) as db:
        admin = db.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()[0]
    post_form(f"{base}/r/{served['token']}/answer", urlencode({"image_id": current_image(served), "call": "real", "confidence": "2"}))
    status, _, body = request(f"{base}/admin/{admin}")
    page = body.decode()
    assert status == 200 and "<td>ann</td><td>1</td><td>16</td>" in page
    assert not [i for i in key(served["dir"]) if i in page] and "fundus" not in page and served["token"] not in page
    assert request(f"{base}/admin/{served['token']}")[0] == 404  # a reader's token opens no admin page


# ---------------------------------------------------------------------------
# Results, against the same numbers computed here another way
# ---------------------------------------------------------------------------


def planned_answers(images: dict[str, dict], reader: int) -> dict[str, tuple[str, int]]:
    """A reader who is right about 3 images in 4 (which ones depends on the reader), confidences 1-5 cycling."""
    answers = {}
    for i, image_id in enumerate(sorted(images)):
        truth = images[image_id]["truth"]
        right = (i + reader) % 4 != 0
        call = truth if right else ("real" if truth == "synthetic" else "synthetic")
        answers[image_id] = (call, 1 + (i * (reader + 2)) % 5)
    return answers


def binomial_p(k: int, n: int) -> float:
    """Exact two-sided binomial test against 1/2: the probability of outcomes no likelier than k."""
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[k] * (1 + 1e-7)))


def trapezoid_auc(scored: list[tuple[int, bool]]) -> float:
    """The ROC area by sweeping the threshold and summing trapezoids (a second way to get Mann-Whitney's number)."""
    positives = sum(p for _, p in scored)
    negatives = len(scored) - positives
    area, tpr, fpr = 0.0, 0.0, 0.0
    for threshold in sorted({s for s, _ in scored}, reverse=True):
        new_tpr = sum(p for s, p in scored if s >= threshold) / positives
        new_fpr = sum(not p for s, p in scored if s >= threshold) / negatives
        area += (new_fpr - fpr) * (tpr + new_tpr) / 2
        tpr, fpr = new_tpr, new_fpr
    return area


def expected_summary(answers: dict[str, tuple[str, int]], images: dict[str, dict]) -> dict[str, float]:
    ids = list(answers)
    correct = sum(answers[i][0] == images[i]["truth"] for i in ids)
    synthetic = [i for i in ids if images[i]["truth"] == "synthetic"]
    real = [i for i in ids if images[i]["truth"] == "real"]
    score = {i: (5 + c if call == "synthetic" else 6 - c) for i, (call, c) in answers.items()}
    return {"answers": len(ids), "accuracy": correct / len(ids), "p_value": binomial_p(correct, len(ids)),
            "sensitivity": sum(answers[i][0] == "synthetic" for i in synthetic) / len(synthetic),
            "specificity": sum(answers[i][0] == "real" for i in real) / len(real),
            "auc": trapezoid_auc([(score[i], images[i]["truth"] == "synthetic") for i in ids])}


def check_summary(got: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_results_match_an_independent_computation(study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    images = key(copy)
    plans = {}
    with connect(copy) as db:
        for reader, name in enumerate(["ann", "bob"]):
            add_reader(copy, name)
            plans[name] = planned_answers(images, reader)
            reader_id = db.execute("SELECT id FROM readers WHERE name = ?", (name,)).fetchone()[0]
            order = [r[0] for r in db.execute("SELECT image_id FROM assignments WHERE reader_id = ? ORDER BY position", (reader_id,))]
            for image_id in order[: 12 if name == "bob" else 16]:  # bob stops after 12
                call, confidence = plans[name][image_id]
                record_answer(db, reader_id, image_id, Answer(call, confidence))
            plans[name] = {i: plans[name][i] for i in order[: 12 if name == "bob" else 16]}
    out, results = write_results(copy)

    pooled = {(name, i): a for name, plan in plans.items() for i, a in plan.items()}
    pooled_images = {(name, i): images[i] for name, i in pooled}
    check_summary(results["overall"], expected_summary(pooled, pooled_images))
    for name, plan in plans.items():
        check_summary(results["readers"][name], expected_summary(plan, images))
    for generator in ("toy-run", "exported"):
        subset = {k: a for k, a in pooled.items() if images[k[1]]["truth"] == "real" or images[k[1]]["source"] == generator}
        check_summary(results["generators"][generator], expected_summary(subset, pooled_images))
    for class_name in ("fundus", "histology"):
        subset = {k: a for k, a in pooled.items() if images[k[1]]["class_name"] == class_name}
        check_summary(results["classes"][class_name], expected_summary(subset, pooled_images))

    # agreement on the 12 images both answered: Cohen's kappa from the 2 x 2 table; for two readers Fleiss' kappa
    # is Scott's pi (chance agreement from the pooled shares)
    common = sorted(set(plans["ann"]) & set(plans["bob"]))
    table = np.zeros((2, 2))
    for i in common:
        table[int(plans["ann"][i][0] == "synthetic"), int(plans["bob"][i][0] == "synthetic")] += 1
    table /= table.sum()
    observed = np.trace(table)
    cohen = (observed - table.sum(1) @ table.sum(0)) / (1 - table.sum(1) @ table.sum(0))
    pooled_share = (table.sum(1) + table.sum(0)) / 2
    scott = (observed - pooled_share @ pooled_share) / (1 - pooled_share @ pooled_share)
    (pair,) = results["cohen_kappa"]
    assert pair["readers"] == ["ann", "bob"] and pair["images"] == 12 and pair["kappa"] == pytest.approx(cohen)
    assert results["fleiss_kappa"]["images"] == 12 and results["fleiss_kappa"]["kappa"] == pytest.approx(scott)

    # the files: the JSON as returned, the ROC plot, the iMRMC layout
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert Image.open(out / "roc.png").size[0] > 200
    markdown = (out / "results.md").read_text()
    assert f"| ann | 16 | {results['readers']['ann']['accuracy']:.3f} |" in markdown
    lines = (out / "imrmc.csv").read_text().splitlines()
    assert {"NR: 2", "N0: 8", "N1: 8", "NM: 1"} <= set(lines)
    rows = list(csv.reader(lines[lines.index("BEGIN DATA:") + 1 :]))
    truth_rows = [r for r in rows if r[0] == "-1"]
    assert len(truth_rows) == 16 and sorted(int(r[3]) for r in truth_rows) == [0] * 8 + [1] * 8
    assert len(rows) - len(truth_rows) == 28
    case_truth = {r[1]: int(r[3]) for r in truth_rows}
    ann_rows = [r for r in rows if r[0] == "1"]
    # a case's truth and the score given to it agree with the plan: mean score of synthetic cases above real ones for ann
    assert sum(int(r[3]) for r in ann_rows if case_truth[r[1]]) / 8 > sum(int(r[3]) for r in ann_rows if not case_truth[r[1]]) / 8


def test_review_on_the_command_line(study, tmp_path, capsys, registry):
    target = tmp_path / "cli-study"
    assert main(["review", "create", str(target), "--real", str(study["run"]), "--synthetic", str(study["folder"]), "--n", "4"]) == 0
    assert "study of 4 images" in capsys.readouterr().out
    assert main(["review", "add-reader", str(target), "ann", "--url", "http://10.0.0.5:8000/"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://10.0.0.5:8000/r/") and len(link.rsplit("/", 1)[1]) >= 32
    assert main(["review", "results", str(target)]) == 2
    assert "no answers yet" in capsys.readouterr().err
    assert main(["review", "results", str(tmp_path / "nothing")]) == 2
    assert "not a review study" in capsys.readouterr().err


def test_an_unlabelled_study_from_a_data_config_and_a_flat_folder(study, tmp_path):
    from skimage import data as skimage_data

    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    astronaut = skimage_data.astronaut()  # a real photograph, cut into 20 crops
    for i in range(20):
        y, x = divmod(i, 5)
        Image.fromarray(astronaut[y * 96 : y * 96 + 64, x * 96 : x * 96 + 64]).save(real / f"crop{i:02d}.png")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(fake / f"noise{i}.png")
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  format: image_folder\n  source: {real.name}\n  labels: none\n  resolution: 32\n  channels: 3\n")
    create_study(tmp_path / "study", config, [fake], study["registry"], n=8, seed=0)
    images = key(tmp_path / "study")
    assert sorted((e["source"], e["class_name"]) for e in images.values()) == [("fake", None)] * 4 + [("real", None)] * 4
    assert {e["origin"] for e in images.values() if e["source"] == "real"} <= {f"crop{i:02d}.png" for i in range(20)}
    # labelled real data needs labelled synthetic images, to balance the classes
    with pytest.raises(ConfigError, match="the real data has classes .* but these images have no labels"):
        create_study(tmp_path / "mixed", study["run"], [fake], study["registry"], n=4)

"""The ``embedded`` data format: counts, determinism, disjoint splits, errors, registry."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydantic
import pytest

from raresynth import DataError, Record, load_plugins
from raresynth.plugins.embedded import EmbeddedMedical
from raresynth.plugins.embedded import crops


def boxes(records: list[Record]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(r.label, r.split, tuple(r.meta["box"])) for r in records]


def overlap_or_touch(a, b) -> bool:
    """Whether two half-open (y0, x0, y1, x1) boxes share or border a pixel."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


@pytest.fixture(scope="module")
def dataset() -> EmbeddedMedical:
    return EmbeddedMedical(EmbeddedMedical.Params())


@pytest.fixture(scope="module")
def records(dataset) -> list[Record]:
    return dataset.scan(None)


def test_counts_per_class_and_split_match_params(records):
    params = EmbeddedMedical.Params()
    counts = Counter((r.label, r.split) for r in records)
    expected = {}
    for name in params.classes:
        expected[(name, "train")] = params.train_per_class
        expected[(name, "held_out")] = params.held_out_per_class
    assert counts == expected
    assert len({r.id for r in records}) == len(records)
    first = records[0]
    assert first.id == "fundus/train/0000" and first.group == first.id
    assert first.source.name == "retina.jpg" and first.meta["source_image"] == "retina"


def test_other_counts_and_a_single_class():
    fmt = EmbeddedMedical(EmbeddedMedical.Params(classes=["histology"], train_per_class=7, held_out_per_class=3, crop_size=64))
    records = fmt.scan(None)
    assert Counter(r.split for r in records) == {"train": 7, "held_out": 3}
    assert {r.label for r in records} == {"histology"}
    assert all(r.source.name == "ihc.png" and r.source.is_file() for r in records)


def test_same_seed_same_crops_other_seed_other_crops():
    small = dict(train_per_class=20, held_out_per_class=5)
    first = EmbeddedMedical(EmbeddedMedical.Params(seed=3, **small)).scan(None)
    again = EmbeddedMedical(EmbeddedMedical.Params(seed=3, **small)).scan(None)
    other = EmbeddedMedical(EmbeddedMedical.Params(seed=4, **small)).scan(None)
    assert boxes(first) == boxes(again)
    assert [r.id for r in first] == [r.id for r in again]
    for name in ("fundus", "histology"):
        for split in ("train", "held_out"):
            a = {b for label, s, b in boxes(first) if (label, s) == (name, split)}
            b = {b for label, s, b in boxes(other) if (label, s) == (name, split)}
            assert a != b


def test_held_out_boxes_are_disjoint_from_training_boxes_and_region(records):
    params = EmbeddedMedical.Params()
    for name, source in crops.CLASSES.items():
        train = [tuple(r.meta["box"]) for r in records if r.label == name and r.split == "train"]
        held_out = [tuple(r.meta["box"]) for r in records if r.label == name and r.split == "held_out"]
        height, width = source.shape[:2]
        regions = crops.split_regions(height, width, params.held_out_fraction_of_area, params.crop_size)
        for box in train:
            assert box[0] >= regions["train"][0] and box[2] <= regions["train"][2]
        for h in held_out:
            assert not overlap_or_touch(h, regions["train"]), (name, h)
            assert not any(overlap_or_touch(h, t) for t in train), (name, h)
            assert h[2] - h[0] == params.crop_size and h[3] - h[1] == params.crop_size
            assert 0 <= h[0] and h[2] <= height and 0 <= h[1] and h[3] <= width


def test_crops_are_not_mostly_background(dataset, records):
    for record in records:
        pixels = dataset.read(record).pixels
        near_black = (pixels.max(axis=-1) < crops.NEAR_BLACK).mean()
        assert near_black <= crops.MAX_BACKGROUND_FRACTION, record.id
        assert pixels.mean() > 60, record.id


def test_read_returns_uint8_crops_of_the_crop_size(dataset, records):
    for record in records[::10]:
        pixels = dataset.read(record).pixels
        assert pixels.dtype == np.uint8
        assert pixels.shape == (128, 128, 3)
    # The cached source image is not handed out: changing a crop changes nothing.
    dataset.read(records[0]).pixels[:] = 0
    assert dataset.read(records[0]).pixels.any()


def test_no_held_out_crop_equals_a_train_crop(dataset, records):
    train = {dataset.read(r).pixels.tobytes() for r in records if r.split == "train"}
    held_out = [dataset.read(r).pixels.tobytes() for r in records if r.split == "held_out"]
    assert len(train) == sum(r.split == "train" for r in records)
    assert not train.intersection(held_out)


def test_registry_lists_embedded_as_a_data_format():
    registry = load_plugins(only=["embedded"])
    assert "embedded" in registry.names("data_format")
    registration = registry.get("data_format", "embedded")
    assert registration.plugin == "embedded"
    assert registration.cls is EmbeddedMedical
    assert not registry.broken


def test_format_needs_no_source_and_is_never_auto_detected(tmp_path):
    assert EmbeddedMedical.needs_source is False
    assert EmbeddedMedical.description and "\n" not in EmbeddedMedical.description
    assert EmbeddedMedical.can_read(tmp_path) is False


def test_unknown_class_names_the_available_ones():
    with pytest.raises(pydantic.ValidationError, match="'xray'") as info:
        EmbeddedMedical.Params(classes=["fundus", "xray"])
    message = str(info.value)
    assert "'xray'" in message and "fundus" in message and "histology" in message


@pytest.mark.parametrize(("options", "why"), [
    ({"classes": []}, "classes\n.*choose at least one class; available classes: fundus, histology"),
    ({"classes": ["fundus", "fundus"]}, "classes\n.*class 'fundus' is listed twice"),
    ({"train_per_class": 0}, "train_per_class\n.*greater than or equal to 1"),
    ({"held_out_fraction_of_area": 1.0}, "held_out_fraction_of_area\n.*less than 1"),
    ({"seed": -1}, "seed\n.*greater than or equal to 0"),
    ({"unknown": 1}, "unknown\n.*Extra inputs are not permitted"),
])
def test_bad_options_are_rejected(options, why):
    with pytest.raises(pydantic.ValidationError, match=why):
        EmbeddedMedical.Params(**options)


def test_crop_too_large_names_the_class_and_the_maximum():
    with pytest.raises(pydantic.ValidationError, match="maximum is 128") as info:
        EmbeddedMedical.Params(crop_size=200)
    message = str(info.value)
    assert "'histology'" in message and "maximum is 128" in message
    # Fundus alone is larger: 200 fits there.
    assert EmbeddedMedical.Params(classes=["fundus"], crop_size=200).crop_size == 200


def test_too_many_crops_is_a_data_error():
    fmt = EmbeddedMedical(EmbeddedMedical.Params(classes=["histology"], crop_size=128, held_out_per_class=1000))
    with pytest.raises(DataError, match="held_out"):
        fmt.scan(None)


def test_read_rejects_foreign_records(dataset, tmp_path):
    with pytest.raises(DataError, match="embedded"):
        dataset.read(Record(id="x", source=tmp_path / "x.png"))

"""The defect-free class: declared or detected, labelled ``no_defect`` from ingest to training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.box_settings import whole_image_fallback
from cascade_defect.chapters.c01_data import card_overview, run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, write_pseudo_labels
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import NO_DEFECT, DatasetError, data_card
from cascade_defect.data.split import SplitLayout, read_labelled_listing, read_pool_ground_truth
from cascade_defect.settings import load_config
from cascade_defect.train.classify import image_classes
from cascade_defect.train.sources import (
    build_source,
    holdout_ids,
    pseudo_training_labels,
    read_pool_truth,
    read_split_inputs,
)
from tests.synthetic import make_byo_dataset, make_mask_dataset, make_production_like


@pytest.mark.parametrize("layout", ["parallel", "beside"])
def test_a_class_without_boxes_or_mask_pixels_is_detected_as_no_defect(
    tmp_path: Path, layout: str
) -> None:
    root = make_production_like(tmp_path / "line", layout=layout)
    dataset = load_dataset(root, class_names=None, progress=False)

    assert dataset.class_names == ["blow hole", "crack", "fray"]
    assert dataset.label_names == ["blow hole", "crack", "fray", NO_DEFECT]
    assert dataset.no_defect == {"from_classes": ["Free"], "how": "detected"}
    free = [r for r in dataset.images if r.class_name == NO_DEFECT]
    assert len(free) == 30 and all(not r.boxes for r in free)
    assert all(isinstance(r.image_id, str) and r.image_id.isdigit() for r in dataset.images)
    card = data_card(dataset)
    assert card["images_per_class"] == {"blow hole": 6, "crack": 12, "fray": 4, NO_DEFECT: 30}
    assert card["no_defect"]["n_images"] == 30
    # The crack image with an empty mask stays a crack, reported for the user to check.
    assert card["quirks"] == {"defect_image_without_boxes": 1}
    assert (
        "30 (class Free, detected"
        in card_overview({**card, "subsampled_per_class": None})["defect-free images"]
    )


def test_declared_by_one_word_of_its_name_and_refused_when_unclear(tmp_path: Path) -> None:
    masks = {
        "MT_Crack": {"c1": np.pad(np.full((8, 8), 255, np.uint8), 10)},
        "MT_Free": {"f1": np.zeros((28, 28), np.uint8)},
    }
    root = make_mask_dataset(tmp_path / "mt", masks)
    declared = load_dataset(root, class_names=None, progress=False, no_defect_class="Free")
    assert declared.no_defect == {"from_classes": ["MT_Free"], "how": "declared"}
    assert declared.class_names == ["MT_Crack"]

    kept = load_dataset(root, class_names=None, progress=False, no_defect_class="none")
    assert kept.class_names == ["MT_Crack", "MT_Free"]
    assert NO_DEFECT not in {r.class_name for r in kept.images}

    with pytest.raises(DatasetError, match="several classes"):
        load_dataset(root, class_names=None, progress=False, no_defect_class="MT")
    with pytest.raises(DatasetError, match="matches none of the classes"):
        load_dataset(root, class_names=None, progress=False, no_defect_class="good")


def test_a_declared_class_with_boxes_loses_them_and_says_so(tmp_path: Path) -> None:
    masks = {
        "crack": {"c1": np.pad(np.full((8, 8), 255, np.uint8), 10)},
        "ok": {"o1": np.pad(np.full((6, 6), 255, np.uint8), 10)},
    }
    root = make_mask_dataset(tmp_path / "d", masks)
    dataset = load_dataset(root, class_names=None, progress=False, no_defect_class="ok")
    free = next(r for r in dataset.images if r.image_id == "o1")
    assert free.class_name == NO_DEFECT and free.boxes == []
    assert [q.kind for q in dataset.quirks] == ["boxes_on_no_defect_image"]


def test_image_level_datasets_detect_nothing_but_accept_a_declared_class(tmp_path: Path) -> None:
    classes = ("good", "oil stain", "scratch")
    root = make_byo_dataset(tmp_path / "byo", layout="classfolders", classes=classes, per_class=8)
    assert load_dataset(root, class_names=None, progress=False).no_defect["how"] == "none"

    config = load_config("smoke", data_dir=root, work_dir=tmp_path / "work", no_defect_class="good")
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    assert layout.class_names() == ["oil stain", "scratch"]
    assert layout.label_names() == ["oil stain", "scratch", NO_DEFECT]
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    free_seeds = seeds.loc[seeds["class_name"] == NO_DEFECT, "image_id"]
    assert len(free_seeds) >= 1
    # Whole-image boxes stand in for image-level labels, but never on a defect-free image.
    assert not set(free_seeds) & set(seed_boxes["image_id"])
    for image_id in free_seeds:
        assert (layout.yolo_dir("seed") / "labels" / f"{image_id}.txt").read_text() == ""


@pytest.fixture
def production_split(tmp_path: Path) -> SplitLayout:
    root = make_production_like(tmp_path / "line", n_free=40)
    config = load_config("smoke", data_dir=root, work_dir=tmp_path / "work")
    run_data_strategy(config)
    run_split(config)
    return SplitLayout(config.paths.split_dir)


def test_the_split_stratifies_no_defect_and_writes_it_as_background(
    production_split: SplitLayout,
) -> None:
    layout = production_split
    classes = json.loads(layout.classes_file.read_text())
    assert classes["class_names"] == ["blow hole", "crack", "fray"]
    assert classes["no_defect"]["from_classes"] == ["Free"]
    manifest = pd.read_csv(layout.split_manifest, dtype={"image_id": str})
    free = manifest[manifest["class_name"] == NO_DEFECT]
    assert set(free["split"]) == {"seed", "pool", "test"}
    assert "no_defect" not in (layout.yolo_dir("seed") / "data.yaml").read_text()
    for row in free.itertuples():
        folder = (
            layout.pool_labels_dir if row.split == "pool" else layout.yolo_dir(row.split) / "labels"
        )
        assert (folder / f"{row.image_id}.txt").read_text() == ""


def pseudo_tables(layout: SplitLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Perfect pseudo-labels from the pool's truth: classes, confidence 0.9, the true boxes."""
    truth, boxes = read_pool_ground_truth(layout)
    labels = pd.DataFrame(
        {
            "image_id": truth["image_id"].astype(str),
            "status": "ok",
            "defect_class": truth["class_name"],
            "confidence": 0.9,
        }
    )
    sizes = pd.read_csv(layout.pool_listing, dtype={"image_id": str}).set_index("image_id")
    ids = boxes["image_id"].astype(str)
    width, height = sizes.loc[ids, "width"].to_numpy(), sizes.loc[ids, "height"].to_numpy()
    pseudo_boxes = pd.DataFrame(
        {
            "image_id": ids,
            "strategy": "seed_detector",
            "class_name": boxes["class_name"],
            "x1": boxes["xmin"].to_numpy() / width,
            "y1": boxes["ymin"].to_numpy() / height,
            "x2": boxes["xmax"].to_numpy() / width,
            "y2": boxes["ymax"].to_numpy() / height,
        }
    )
    return labels, pseudo_boxes


def test_no_defect_answers_train_as_background_only_where_the_data_has_defect_free_images(
    production_split: SplitLayout,
) -> None:
    layout = production_split
    labels, boxes = pseudo_tables(layout)
    free_ids = set(labels.loc[labels["defect_class"] == NO_DEFECT, "image_id"])
    names = layout.class_names()
    _, left_out = pseudo_training_labels(labels, boxes, names, strategy="seed_detector")
    assert free_ids <= set(left_out.loc[left_out["reason"] == "no_defect", "image_id"])
    yolo, kept_out = pseudo_training_labels(
        labels, boxes, names, strategy="seed_detector", no_defect_as_background=True
    )
    assert not free_ids & set(kept_out["image_id"])
    assert not free_ids & set(yolo["image_id"])

    split = read_split_inputs(layout)
    assert split.no_defect and split.label_names[-1] == NO_DEFECT
    holdout = holdout_ids(list(split.pool["image_id"]), 0.1, seed=0)
    pseudo = build_source("pseudo", split, holdout=holdout, pseudo=(labels, boxes))
    assert free_ids <= set(pseudo.images["image_id"])  # background images are in
    truth = read_pool_truth(layout, names)
    human = build_source("human", split, holdout=holdout, truth=truth)
    assert free_ids <= set(human.images["image_id"])
    assert set(truth.image_classes[list(free_ids)]) == {len(names)}
    # The classification track names the defect-free images no_defect under both sources.
    for source in (human, pseudo):
        named = image_classes(source, split, truth if source is human else None)
        assert set(named[named.index.isin(free_ids)]) == {NO_DEFECT}
    noisy = build_source("noise_0.50", split, holdout=holdout, truth=truth)
    assert len(noisy.flips) and not set(noisy.flips["image_id"]) & free_ids


@pytest.mark.parametrize(
    ("setting", "has_no_defect", "expected"),
    [
        ("auto", True, False),
        ("auto", False, True),
        ("always", True, True),
        ("never", False, False),
    ],
)
def test_the_whole_image_fallback_is_off_by_default_only_where_images_may_be_defect_free(
    setting: str, has_no_defect: bool, expected: bool
) -> None:
    assert whole_image_fallback(setting, has_no_defect=has_no_defect) is expected


def test_an_unknown_fallback_setting_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole_image_fallback"):
        whole_image_fallback("sometimes", has_no_defect=True)
    with pytest.raises(ValueError, match="whole_image_fallback"):
        load_config(
            "smoke", work_dir=tmp_path, overrides={"annotation": {"whole_image_fallback": "x"}}
        )


def test_a_defective_answer_without_a_box_gets_no_label_file_and_leaves_training(
    production_split: SplitLayout, tmp_path: Path
) -> None:
    """Without the whole-image fallback, a defect-labelled image the strategy found nothing on
    must not become a background image (an empty label file) in chapter 03's YOLO folders or in
    chapter 05's pseudo source: it is left out, as ``no_boxes``."""
    layout = production_split
    labels, boxes = pseudo_tables(layout)
    defective = labels.loc[labels["defect_class"] != NO_DEFECT, "image_id"].tolist()
    free_ids = labels.loc[labels["defect_class"] == NO_DEFECT, "image_id"].tolist()
    boxes = boxes[~boxes["image_id"].isin(defective[:3])]
    # The three emptied here, and the generated defect image whose mask is empty.
    boxless = sorted(set(defective) - set(boxes["image_id"]))
    assert len(boxless) == 4
    outputs = AnnotationOutputs(tmp_path / "03_annotation")
    written = write_pseudo_labels(
        outputs, labels, boxes, layout.class_names(), no_defect_as_background=True
    )
    folder = outputs.yolo_labels_dir("seed_detector")
    assert written["seed_detector"] == len(labels) - len(boxless)
    assert not any((folder / f"{image_id}.txt").exists() for image_id in boxless)
    assert all((folder / f"{image_id}.txt").read_text() == "" for image_id in free_ids)
    kept = sorted(set(defective) - set(boxless))
    assert kept and all((folder / f"{image_id}.txt").read_text().strip() for image_id in kept)
    _, left_out = pseudo_training_labels(
        labels, boxes, layout.class_names(), strategy="seed_detector", no_defect_as_background=True
    )
    assert set(left_out["image_id"]) == set(boxless)
    assert set(left_out["reason"]) == {"no_boxes"}


def test_a_strategy_that_found_no_box_still_writes_its_background_files(
    production_split: SplitLayout, tmp_path: Path
) -> None:
    """A requested strategy with no box anywhere (a one-epoch detector, or every answer
    ``no_defect``) still gets its folder: the defect-free answers as background files."""
    labels, boxes = pseudo_tables(production_split)
    free_ids = labels.loc[labels["defect_class"] == NO_DEFECT, "image_id"].tolist()
    outputs = AnnotationOutputs(tmp_path / "03_annotation")
    written = write_pseudo_labels(
        outputs,
        labels,
        boxes.iloc[:0],
        production_split.class_names(),
        no_defect_as_background=True,
        strategies=["seed_detector"],
    )
    folder = outputs.yolo_labels_dir("seed_detector")
    assert written == {"seed_detector": len(free_ids)} and free_ids
    assert sorted(p.stem for p in folder.glob("*.txt")) == sorted(free_ids)
    assert all((folder / f"{image_id}.txt").read_text() == "" for image_id in free_ids)

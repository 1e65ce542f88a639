"""Review exports: COCO and Label Studio files that standard tools can read."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cascade_defect.annotate.review_export import (
    LOCAL_FILES_PREFIX,
    choose_review_strategy,
    coco_dataset,
    label_studio_config,
    label_studio_image_url,
    label_studio_tasks,
    pixel_bbox,
    rectangle_result,
    write_review_export,
)

CLASSES = ["crazing", "inclusion"]
BOX_COLUMNS = ["image_id", "class_name", "x1", "y1", "x2", "y2"]


def test_pixel_bbox_is_top_left_corner_and_size() -> None:
    assert pixel_bbox(0.1, 0.2, 0.5, 0.6, 200, 100) == [20.0, 20.0, 80.0, 40.0]


def test_coco_structure_and_bbox_arithmetic() -> None:
    images = pd.DataFrame(
        {
            "image_id": ["i1", "i2"],
            "file_name": ["a.jpg", "b.jpg"],
            "width": [200, 100],
            "height": [100, 50],
        }
    )
    boxes = pd.DataFrame(
        [
            ("i1", "inclusion", 0.25, 0.5, 0.75, 1.0, 0.8, "annotator"),
            ("i2", "crazing", 0.0, 0.0, 1.0, 1.0, 0.4, "annotator"),
            ("i2", "unknown_class", 0.0, 0.0, 1.0, 1.0, 0.4, "annotator"),
            ("not_listed", "crazing", 0.0, 0.0, 1.0, 1.0, 0.4, "annotator"),
        ],
        columns=[*BOX_COLUMNS, "confidence", "strategy"],
    )
    coco = coco_dataset(images, boxes, CLASSES, source="pseudo")
    assert set(coco) >= {"images", "annotations", "categories"}
    assert coco["categories"] == [
        {"id": 1, "name": "crazing", "supercategory": "defect"},
        {"id": 2, "name": "inclusion", "supercategory": "defect"},
    ]
    image_ids = {image["id"] for image in coco["images"]}
    assert len(image_ids) == 2
    assert len(coco["annotations"]) == 2  # unknown class and unknown image left out
    first, second = coco["annotations"]
    assert first["image_id"] in image_ids and first["category_id"] == 2
    assert first["bbox"] == [50.0, 50.0, 100.0, 50.0]
    assert first["area"] == 5000.0
    assert first["score"] == 0.8 and first["source"] == "pseudo" and first["iscrowd"] == 0
    assert second["bbox"] == [0.0, 0.0, 100.0, 50.0]
    assert len({a["id"] for a in coco["annotations"]}) == 2
    json.dumps(coco, allow_nan=False)


def test_ground_truth_annotations_have_no_score() -> None:
    images = pd.DataFrame(
        {"image_id": ["i1"], "file_name": ["a.jpg"], "width": [10], "height": [10]}
    )
    boxes = pd.DataFrame([("i1", "crazing", 0.0, 0.0, 0.5, 0.5)], columns=BOX_COLUMNS)
    annotation = coco_dataset(images, boxes, CLASSES, source="ground_truth")["annotations"][0]
    assert "score" not in annotation and annotation["source"] == "ground_truth"


def test_label_studio_rectangles_are_in_percent() -> None:
    result = rectangle_result("r1", "crazing", (0.1, 0.2, 0.4, 0.7), 200, 100)
    assert result["type"] == "rectanglelabels"
    assert result["from_name"] == "label" and result["to_name"] == "image"
    assert result["value"]["x"] == pytest.approx(10.0)
    assert result["value"]["y"] == pytest.approx(20.0)
    assert result["value"]["width"] == pytest.approx(30.0)
    assert result["value"]["height"] == pytest.approx(50.0)
    assert result["value"]["rectanglelabels"] == ["crazing"]
    assert (result["original_width"], result["original_height"]) == (200, 100)


def test_label_studio_tasks_hold_pseudo_and_truth_predictions() -> None:
    items = pd.DataFrame(
        {
            "image_id": ["i1", "i2"],
            "image": ["/data/local-files/?d=a.jpg", "/data/local-files/?d=b.jpg"],
            "width": [200, 200],
            "height": [200, 200],
            "true_class": ["crazing", "inclusion"],
            "predicted": ["inclusion", "no_defect"],
            "confidence": [0.9, float("nan")],
            "reasoning": ["dots", None],
        }
    )
    gt = pd.DataFrame([("i1", "crazing", 0.0, 0.0, 0.5, 0.5)], columns=BOX_COLUMNS)
    pseudo = pd.DataFrame(
        [("i1", "inclusion", 0.5, 0.5, 1.0, 1.0), ("i1", "inclusion", 0.0, 0.0, 0.1, 0.1)],
        columns=BOX_COLUMNS,
    )
    tasks = label_studio_tasks(items, gt, pseudo, model_version="pseudo:annotator")
    assert len(tasks) == 2
    first = tasks[0]
    assert first["data"]["image"] == "/data/local-files/?d=a.jpg"
    pseudo_prediction, truth_prediction = first["predictions"]
    assert pseudo_prediction["model_version"] == "pseudo:annotator"
    assert pseudo_prediction["score"] == 0.9
    kinds = [r["type"] for r in pseudo_prediction["result"]]
    assert kinds == ["choices", "rectanglelabels", "rectanglelabels"]
    assert pseudo_prediction["result"][0]["value"]["choices"] == ["inclusion"]
    assert pseudo_prediction["result"][1]["value"]["x"] == pytest.approx(50.0)
    assert truth_prediction["model_version"] == "ground_truth"
    assert truth_prediction["result"][0]["value"]["choices"] == ["crazing"]
    ids = [r["id"] for p in first["predictions"] for r in p["result"]]
    assert len(ids) == len(set(ids))
    second = tasks[1]
    assert second["data"]["confidence"] is None and second["data"]["reasoning"] is None
    assert [r["type"] for r in second["predictions"][0]["result"]] == ["choices"]
    json.dumps(tasks, allow_nan=False)


def test_label_studio_config_names_match_the_results() -> None:
    config = label_studio_config(CLASSES)
    assert 'RectangleLabels name="label" toName="image"' in config
    assert 'Choices name="defect_class"' in config
    assert '<Choice value="no_defect"/>' in config and '<Label value="inclusion"/>' in config


def test_image_urls(tmp_path: Path) -> None:
    image = tmp_path / "runs" / "x y.jpg"
    image.parent.mkdir()
    image.touch()
    assert label_studio_image_url(image, tmp_path) == LOCAL_FILES_PREFIX + "runs/x%20y.jpg"
    assert label_studio_image_url(image, None).startswith("file://")
    assert (
        label_studio_image_url(image, tmp_path, "http://host/img/") == "http://host/img/x%20y.jpg"
    )


def test_choose_review_strategy() -> None:
    assert choose_review_strategy(["whole_image", "annotator"]) == "annotator"
    assert choose_review_strategy(["whole_image", "seed_detector"]) == "seed_detector"
    assert choose_review_strategy(["other"]) == "other"
    assert choose_review_strategy([]) is None
    assert choose_review_strategy(["annotator", "whole_image"], "whole_image") == "whole_image"
    with pytest.raises(ValueError, match="not in the pseudo-boxes"):
        choose_review_strategy(["annotator"], "seed_detector")


def test_written_export_resolves_images_and_validates(tmp_path: Path) -> None:
    image_dir = tmp_path / "split" / "images"
    image_dir.mkdir(parents=True)
    for name in ("i1", "i2"):
        Image.new("L", (200, 100)).save(image_dir / f"{name}.jpg")
    pool = pd.DataFrame(
        {
            "image_id": ["i1", "i2"],
            "path": [str(image_dir / "i1.jpg"), str(image_dir / "i2.jpg")],
            "width": [200, 200],
            "height": [100, 100],
        }
    )
    items = pd.DataFrame(
        {
            "image_id": ["i2"],
            "true_class": ["crazing"],
            "predicted": ["inclusion"],
            "confidence": [0.8],
            "reasoning": ["spots"],
        }
    )
    gt = pd.DataFrame(
        [("i2", "crazing", 0.0, 0.0, 0.5, 0.5), ("i1", "crazing", 0.0, 0.0, 1.0, 1.0)],
        columns=BOX_COLUMNS,
    )
    pseudo = pd.DataFrame(
        [("i2", "annotator", "inclusion", 0.5, 0.5, 1.0, 1.0, 0.8)],
        columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"],
    )
    out = tmp_path / "audit" / "review"
    paths = write_review_export(out, items, pool, gt, pseudo, CLASSES, document_root=tmp_path)
    for path in paths.values():
        assert path.exists()
    coco_gt = json.loads(paths["coco_ground_truth"].read_text())
    coco_pseudo = json.loads(paths["coco_pseudo"].read_text())
    assert coco_gt["images"] == coco_pseudo["images"] and len(coco_gt["images"]) == 1
    assert (out / coco_gt["images"][0]["file_name"]).resolve() == (image_dir / "i2.jpg").resolve()
    assert [a["bbox"] for a in coco_gt["annotations"]] == [[0.0, 0.0, 100.0, 50.0]]
    assert coco_pseudo["annotations"][0]["strategy"] == "annotator"
    tasks = json.loads(paths["label_studio_tasks"].read_text())
    assert tasks[0]["data"]["image"] == LOCAL_FILES_PREFIX + "split/images/i2.jpg"
    assert tasks[0]["predictions"][0]["model_version"] == "pseudo:annotator"
    table = pd.read_csv(paths["disagreements"])
    assert table["image_id"].tolist() == ["i2"] and "file_name" in table
    absolute = write_review_export(
        out, items, pool, gt, pseudo, CLASSES, document_root=tmp_path, absolute_paths=True
    )
    file_name = json.loads(absolute["coco_pseudo"].read_text())["images"][0]["file_name"]
    assert Path(file_name).is_absolute() and Path(file_name).exists()


def test_export_refuses_images_outside_the_pool(tmp_path: Path) -> None:
    pool = pd.DataFrame({"image_id": ["i1"], "path": ["x.jpg"], "width": [1], "height": [1]})
    items = pd.DataFrame(
        {"image_id": ["nope"], "true_class": ["a"], "predicted": ["b"], "confidence": [0.5]}
    )
    empty = pd.DataFrame(columns=BOX_COLUMNS)
    with pytest.raises(ValueError, match="not in the pool"):
        write_review_export(tmp_path, items, pool, empty, empty, CLASSES)

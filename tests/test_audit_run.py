"""The chapter end to end: a real split of generated images, pseudo-labels with planted errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.annotate.schema import AnnotationRecord, BoxPrediction, DefectPrediction
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, write_pseudo_labels
from cascade_defect.chapters.c04_audit import AuditOutputs, read_audit_summary, run_label_audit
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.manifest import MissingInputError, read_manifest
from cascade_defect.settings import StudyConfig, load_config
from tests.synthetic import make_neu_like

WRONG_CONFIDENCE = 0.95
RIGHT_CONFIDENCE = 0.8


@pytest.fixture(scope="module")
def split_config(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    data = make_neu_like(tmp_path_factory.mktemp("neu"), per_class=20, size=64)
    config = load_config("smoke", data_dir=data, work_dir=tmp_path_factory.mktemp("work"))
    run_data_strategy(config)
    run_split(config)
    return config


def plant_pseudo_labels(config: StudyConfig) -> dict[str, int]:
    """Every 6th pool image fails, the next is confidently wrong, the rest are right.

    Boxes copy the ground truth's geometry with the answered class, so box quality is known:
    perfect overlap, and a class mismatch exactly on the wrong answers.
    """
    layout = SplitLayout(config.paths.split_dir)
    classes = layout.class_names()
    pool = read_pool_listing(layout).sort_values("image_id").reset_index(drop=True)
    truth, gt = read_pool_ground_truth(layout)
    true_class = dict(zip(truth["image_id"], truth["class_name"], strict=True))
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    outputs.root.mkdir(parents=True, exist_ok=True)
    outputs.predictions.unlink(missing_ok=True)
    store = AnnotationStore(outputs.predictions)
    labels, boxes = [], []
    counts = {"failed": 0, "wrong": 0, "right": 0, "gt_boxes_answered": 0, "gt_boxes_right": 0}
    for k, image in enumerate(pool.itertuples(index=False)):
        base = {
            "key": f"key-{k}",
            "image_id": image.image_id,
            "image_sha256": image.sha256,
            "annotator": "planted",
            "model": "none",
            "prompt_hash": "p",
        }
        if k % 6 == 0:
            store.append(
                AnnotationRecord(
                    **base, status="failed", failure_kind="refusal", raw_text="I cannot help."
                )
            )
            labels.append(
                {"image_id": image.image_id, "status": "failed", "failure_kind": "refusal"}
            )
            counts["failed"] += 1
            continue
        truth_class = true_class[image.image_id]
        wrong = k % 6 == 1
        answer = classes[(classes.index(truth_class) + 1) % len(classes)] if wrong else truth_class
        confidence = WRONG_CONFIDENCE if wrong else RIGHT_CONFIDENCE
        image_boxes = []
        for row in gt[gt["image_id"] == image.image_id].itertuples(index=False):
            box = [
                row.xmin / image.width,
                row.ymin / image.height,
                row.xmax / image.width,
                row.ymax / image.height,
            ]
            image_boxes.append(BoxPrediction(defect_class=answer, box=box))
            boxes.append(
                {
                    "image_id": image.image_id,
                    "strategy": "annotator",
                    "class_name": answer,
                    "x1": box[0],
                    "y1": box[1],
                    "x2": box[2],
                    "y2": box[3],
                    "confidence": confidence,
                }
            )
            counts["gt_boxes_answered"] += 1
            counts["gt_boxes_right"] += not wrong
        prediction = DefectPrediction(
            defect_class=answer,
            confidence=confidence,
            reasoning="planted answer",
            bounding_box_present=bool(image_boxes),
            boxes=image_boxes,
        )
        store.append(AnnotationRecord(**base, status="ok", prediction=prediction))
        labels.append(
            {
                "image_id": image.image_id,
                "status": "ok",
                "defect_class": answer,
                "confidence": confidence,
                "reasoning": "planted answer",
                "annotator": "planted",
                "model": "none",
            }
        )
        counts["wrong" if wrong else "right"] += 1
    write_pseudo_labels(outputs, pd.DataFrame(labels), pd.DataFrame(boxes), classes)
    counts["n_images"] = len(pool)
    return counts


def test_audit_measures_the_planted_errors(split_config: StudyConfig) -> None:
    planted = plant_pseudo_labels(split_config)
    result = run_label_audit(split_config, confidence_threshold=0.9)
    summary = json.loads(AuditOutputs(split_config.paths.audit_dir).summary.read_text())
    assert summary == result.summary
    n, answered = planted["n_images"], planted["n_images"] - planted["failed"]
    assert summary["n_images"] == n and summary["n_failed"] == planted["failed"]
    assert summary["accuracy"] == pytest.approx(planted["right"] / n)
    assert summary["accuracy_answered"] == pytest.approx(planted["right"] / answered)
    assert summary["confidence_threshold"] == 0.9
    # Only the planted wrong answers are that confident.
    assert summary["at_threshold"]["n_kept"] == planted["wrong"]
    assert summary["at_threshold"]["accuracy"] == 0.0
    # Stated 0.8 with hit rate 1, stated 0.95 with hit rate 0.
    expected_ece = (planted["right"] * 0.2 + planted["wrong"] * 0.95) / answered
    assert summary["ece"] == pytest.approx(expected_ece)
    boxes = summary["box_metrics"]["annotator"]["all"]
    assert boxes["mean_best_iou"] == pytest.approx(1.0)
    assert boxes["recall_agnostic"] == pytest.approx(1.0)
    assert boxes["recall_aware"] == pytest.approx(
        planted["gt_boxes_right"] / planted["gt_boxes_answered"]
    )
    assert summary["failures"]["by_kind"]["refusal"]["failed_attempts"] == planted["failed"]
    assert summary["n_disagreements"] == planted["wrong"]
    assert len(result.failed_attempts) == planted["failed"]
    assert (result.failed_attempts["raw_text"] == "I cannot help.").all()

    tasks = json.loads(result.review_files["label_studio_tasks"].read_text())
    assert len(tasks) == planted["wrong"]
    coco = json.loads(result.review_files["coco_ground_truth"].read_text())
    for image in coco["images"]:
        assert (result.outputs.review_dir / image["file_name"]).exists()
    manifest = read_manifest(split_config.paths.audit_dir)
    assert manifest["parameters"]["confidence_threshold"] == 0.9
    assert {"pseudo_labels", "pool_truth", "predictions"} <= set(manifest["inputs"])
    assert read_audit_summary(split_config.paths.audit_dir)["n_images"] == n


def test_missing_pseudo_labels_name_notebook_03(split_config: StudyConfig, tmp_path: Path) -> None:
    config = load_config("smoke", data_dir=split_config.data_dir, work_dir=tmp_path)
    shutil.copytree(split_config.paths.split_dir, config.paths.split_dir)
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        run_label_audit(config)
    with pytest.raises(MissingInputError, match="notebook 04"):
        read_audit_summary(config.paths.audit_dir)


def test_missing_split_names_notebook_02(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path)
    with pytest.raises(MissingInputError, match="notebook 02"):
        run_label_audit(config)


def test_threshold_defaults_to_the_one_training_applies(split_config: StudyConfig) -> None:
    plant_pseudo_labels(split_config)
    expected = split_config.profile.training.pseudo_confidence_threshold
    summary = run_label_audit(split_config).summary
    assert summary["confidence_threshold"] == expected
    assert summary["confidence_threshold_source"] == "profile"
    stricter = split_config.model_copy(deep=True)
    stricter.profile.training.pseudo_confidence_threshold = 0.9
    summary = run_label_audit(stricter).summary
    assert summary["confidence_threshold"] == 0.9
    assert summary["at_threshold"]["n_kept"] < summary["n_answered"]


def test_threshold_outside_the_unit_interval_is_refused(split_config: StudyConfig) -> None:
    with pytest.raises(ValueError, match="confidence_threshold"):
        run_label_audit(split_config, confidence_threshold=1.2)

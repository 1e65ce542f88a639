"""Audit metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cascade_defect.annotate.labels import LABEL_COLUMNS
from cascade_defect.annotate.schema import NO_DEFECT, AnnotationRecord
from cascade_defect.chapters.c04_audit import (
    build_summary,
    disagreements,
    failed_attempts,
    failure_counts,
    image_table,
)
from cascade_defect.metrics.box_quality import (
    FALSE_BOX_KINDS,
    box_quality,
    match_boxes,
    match_strategy,
    normalise_gt_boxes,
    summarise_matches,
)
from cascade_defect.metrics.calibration import (
    bin_index,
    coverage_at,
    coverage_curve,
    expected_calibration_error,
    reliability_table,
)
from cascade_defect.metrics.classification import (
    NOT_ANSWERED,
    accuracy_metrics,
    confusion_table,
    macro_scores,
    per_class_metrics,
)
from cascade_defect.metrics.detection import box_iou

CLASSES = ["a", "b", "c"]


def make_images(
    rows: list[tuple[str, str, str | None, float | None]],
    gt_boxes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``(image_id, true_class, answer, confidence)``; answer None means a failed request."""
    truth = pd.DataFrame([(i, t) for i, t, _, _ in rows], columns=["image_id", "class_name"])
    # Built row by row, an empty table would lack its columns: name them.
    labels = pd.DataFrame(
        [
            {
                "image_id": i,
                "status": "ok" if answer is not None else "failed",
                "defect_class": answer,
                "confidence": conf,
                "reasoning": f"because {i}",
                "annotator": "fake",
                "model": "m",
                "failure_kind": None if answer is not None else "refusal",
                "cost_usd": 0.0,
            }
            for i, _, answer, conf in rows
        ],
        columns=LABEL_COLUMNS,
    )
    boxes = (
        gt_boxes
        if gt_boxes is not None
        else pd.DataFrame(columns=["image_id", "class_name", "xmin", "ymin", "xmax", "ymax"])
    )
    return image_table(truth, boxes, labels)


# -- class quality ----------------------------------------------------------------------------


def test_all_right_gives_perfect_scores() -> None:
    images = make_images([("1", "a", "a", 0.9), ("2", "b", "b", 0.8), ("3", "c", "c", 0.7)])
    metrics = accuracy_metrics(images)
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_answered"] == 1.0
    per_class = per_class_metrics(images, CLASSES)
    assert (per_class[["precision", "recall", "f1"]] == 1.0).all().all()
    assert macro_scores(per_class)["macro_f1"] == 1.0
    assert np.trace(confusion_table(images, CLASSES).to_numpy()) == 3


def test_all_wrong_gives_zero_scores() -> None:
    images = make_images([("1", "a", "b", 0.9), ("2", "b", "c", 0.8), ("3", "c", "a", 0.7)])
    assert accuracy_metrics(images)["accuracy"] == 0.0
    per_class = per_class_metrics(images, CLASSES)
    assert (per_class[["precision", "recall", "f1"]] == 0.0).all().all()
    assert disagreements(images)["image_id"].tolist() == ["1", "2", "3"]


def test_hand_computed_precision_recall_f1_with_a_failure() -> None:
    images = make_images(
        [("1", "a", "a", 0.9), ("2", "a", "b", 0.9), ("3", "b", "b", 0.9), ("4", "b", None, None)]
    )
    per_class = per_class_metrics(images, ["a", "b"])
    assert per_class.loc["a", "precision"] == 1.0
    assert per_class.loc["a", "recall"] == 0.5
    assert per_class.loc["a", "f1"] == pytest.approx(2 / 3)
    assert per_class.loc["b", "precision"] == 0.5  # the failure is no prediction of b
    assert per_class.loc["b", "recall"] == 0.5  # but it is a miss of b
    metrics = accuracy_metrics(images)
    assert metrics["accuracy"] == 0.5  # 2 of 4 pool images
    assert metrics["accuracy_answered"] == pytest.approx(2 / 3)
    assert metrics["n_failed"] == 1 and metrics["n_answered"] == 3


def test_no_defect_is_wrong_and_has_its_own_column() -> None:
    images = make_images([("1", "a", NO_DEFECT, 0.95), ("2", "b", "b", 0.6)])
    assert accuracy_metrics(images)["accuracy"] == 0.5
    assert accuracy_metrics(images)["n_no_defect"] == 1
    confusion = confusion_table(images, CLASSES)
    assert confusion.loc["a", NO_DEFECT] == 1
    assert list(confusion.columns[-2:]) == [NO_DEFECT, NOT_ANSWERED]


def test_confusion_rows_add_up_and_unexpected_classes_get_a_column() -> None:
    images = make_images(
        [("1", "a", "a", 0.9), ("2", "a", "zzz", 0.9), ("3", "a", None, None), ("4", "c", "b", 0.5)]
    )
    confusion = confusion_table(images, CLASSES)
    assert confusion.loc["a"].sum() == 3 and confusion.loc["a", "zzz"] == 1
    assert confusion.loc["a", NOT_ANSWERED] == 1
    assert confusion.loc["b"].sum() == 0


def test_labels_without_a_row_are_missing_and_foreign_rows_are_dropped() -> None:
    truth = pd.DataFrame({"image_id": ["1", "2"], "class_name": ["a", "b"]})
    labels = pd.DataFrame(
        {
            "image_id": ["1", "other"],
            "status": ["ok", "ok"],
            "defect_class": ["a", "a"],
            "confidence": [0.9, 0.9],
        }
    )
    images = image_table(truth, pd.DataFrame(columns=["image_id", "class_name"]), labels)
    assert images["image_id"].tolist() == ["1", "2"]
    assert images.set_index("image_id").loc["2", "status"] == "missing"
    assert images.set_index("image_id").loc["2", "failure_kind"] == "missing"
    assert accuracy_metrics(images)["n_missing"] == 1


def test_duplicate_label_rows_are_refused() -> None:
    truth = pd.DataFrame({"image_id": ["1"], "class_name": ["a"]})
    labels = pd.DataFrame(
        {"image_id": ["1", "1"], "status": ["ok", "ok"], "defect_class": ["a", "b"]}
    )
    with pytest.raises(ValueError, match="several rows"):
        image_table(truth, pd.DataFrame(columns=["image_id", "class_name"]), labels)


def test_a_class_present_in_the_boxes_is_acceptable_but_not_correct() -> None:
    gt = pd.DataFrame(
        {
            "image_id": ["1", "1", "2"],
            "class_name": ["a", "b", "a"],
            "xmin": [0, 10, 0],
            "ymin": [0, 10, 0],
            "xmax": [5, 20, 5],
            "ymax": [5, 20, 5],
        }
    )
    images = make_images([("1", "a", "b", 0.9), ("2", "a", "b", 0.9)], gt)
    assert images["cross_class"].tolist() == [True, False]
    assert images["acceptable"].tolist() == [True, False]
    metrics = accuracy_metrics(images)
    assert metrics["accuracy"] == 0.0 and metrics["accuracy_any_box_class"] == 0.5
    assert metrics["n_cross_class_images"] == 1


def test_empty_pool_gives_undefined_not_crashing_metrics() -> None:
    images = make_images([])
    metrics = accuracy_metrics(images)
    assert metrics["n_images"] == 0 and metrics["accuracy"] is None
    assert (per_class_metrics(images, CLASSES)["support"] == 0).all()
    assert coverage_curve(images).empty


# -- calibration ------------------------------------------------------------------------------


def test_ece_on_a_constructed_case() -> None:
    confidence = [0.9, 0.9, 0.9, 0.9, 0.6, 0.6]
    correct = [True, True, True, False, True, False]
    # bin 9: |0.75 - 0.9| * 4/6; bin 6: |0.5 - 0.6| * 2/6
    assert expected_calibration_error(confidence, correct, 10) == pytest.approx(
        0.15 * 4 / 6 + 0.1 * 2 / 6
    )
    table = reliability_table(confidence, correct, 10)
    assert table["n"].tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 4]
    assert table.loc[9, "accuracy"] == 0.75


def test_ece_is_zero_when_confidence_matches_hit_rate_and_nan_when_empty() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.5, 0.5], [True, False], n_bins=4) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_bins_are_half_open_with_one_in_the_last_bin() -> None:
    assert bin_index(np.array([0.0, 0.1, 0.7, 0.6999, 0.99, 1.0]), 10).tolist() == [
        0,
        1,
        7,
        6,
        9,
        9,
    ]
    with pytest.raises(ValueError):
        bin_index(np.array([0.5]), 0)


def test_calibration_rejects_out_of_range_confidence() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [True])


# -- coverage ---------------------------------------------------------------------------------


def test_coverage_curve_keeps_tied_confidences_together_and_never_covers_failures() -> None:
    images = make_images(
        [
            ("1", "a", "a", 0.9),
            ("2", "a", "a", 0.8),
            ("3", "b", "a", 0.8),
            ("4", "b", "c", 0.5),
            ("5", "c", None, None),
        ]
    )
    curve = coverage_curve(images)
    assert curve["threshold"].tolist() == [0.9, 0.8, 0.5]
    assert curve["n_kept"].tolist() == [1, 3, 4]
    assert curve["coverage"].tolist() == pytest.approx([0.2, 0.6, 0.8])
    assert curve["accuracy"].tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    at = coverage_at(images, 0.8)
    assert at["n_kept"] == 3 and at["coverage"] == pytest.approx(0.6)
    assert coverage_at(images, 0.85)["n_kept"] == 1
    nothing = coverage_at(images, 0.95)
    assert nothing["n_kept"] == 0 and nothing["accuracy"] is None and nothing["coverage"] == 0.0
    with pytest.raises(ValueError):
        coverage_at(images, 1.5)


def test_no_defect_answers_are_kept_and_counted_apart() -> None:
    images = make_images([("1", "a", NO_DEFECT, 0.9), ("2", "a", "a", 0.9)])
    at = coverage_at(images, 0.5)
    assert at["n_kept"] == 2 and at["n_no_defect_kept"] == 1 and at["accuracy"] == 0.5


# -- boxes ------------------------------------------------------------------------------------


def test_iou_on_hand_computed_boxes() -> None:
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [2, 0, 4, 2], [5, 5, 6, 6], [0, 0, 1, 2]])
    assert box_iou(a, b)[0].tolist() == [1 / 7, 1.0, 0.0, 0.0, 0.5]
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)
    assert box_iou(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))[0, 0] == 0.0
    # An inverted box is empty: it overlaps nothing, even a box it "spans".
    assert box_iou(np.array([[2, 2, 0, 0]]), a)[0, 0] == 0.0


def test_matching_with_equal_ious_finds_the_most_matches() -> None:
    # Prediction 0 overlaps both ground-truth boxes equally; prediction 1 only the first.
    allowed = np.array([[True, True], [True, False]])
    iou = np.array([[0.6, 0.6], [0.6, 0.0]])
    assert match_boxes(allowed, iou) == [(0, 1), (1, 0)]
    assert match_boxes(np.zeros((2, 0), dtype=bool)) == []
    assert match_boxes(np.zeros((2, 2), dtype=bool)) == []


def test_matching_prefers_higher_iou_among_maximal_matchings() -> None:
    allowed = np.ones((2, 2), dtype=bool)
    iou = np.array([[0.9, 0.6], [0.6, 0.9]])
    assert match_boxes(allowed, iou) == [(0, 0), (1, 1)]


def gt_and_predictions() -> tuple[pd.DataFrame, pd.DataFrame]:
    gt = pd.DataFrame(
        [("img", "x", 0, 0, 0.5, 0.5), ("img", "y", 0.5, 0.5, 1.0, 1.0)],
        columns=["image_id", "class_name", "x1", "y1", "x2", "y2"],
    )
    predictions = pd.DataFrame(
        [
            ("img", "s", "x", 0, 0, 0.5, 0.5, 0.9),  # IoU 1 with the x box
            ("img", "s", "x", 0.5, 0.5, 1.0, 0.9, 0.9),  # IoU 0.8 with the y box, wrong class
            ("img", "s", "y", 0, 0.6, 0.3, 0.9, 0.9),  # overlaps nothing
        ],
        columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"],
    )
    return gt, predictions


def test_precision_and_recall_at_half_iou_on_a_small_case() -> None:
    gt, predictions = gt_and_predictions()
    table = summarise_matches(match_strategy(gt, predictions, ["img"]), ["x", "y"]).set_index(
        "class_name"
    )
    overall = table.loc["all"]
    assert overall["n_gt"] == 2 and overall["n_pred"] == 3
    assert overall["mean_best_iou"] == pytest.approx(0.9)
    assert overall["recall_aware"] == 0.5 and overall["precision_aware"] == pytest.approx(1 / 3)
    assert overall["recall_agnostic"] == 1.0 and overall["precision_agnostic"] == pytest.approx(
        2 / 3
    )
    assert table.loc["y", "recall_aware"] == 0.0 and table.loc["y", "recall_agnostic"] == 1.0
    assert table.loc["y", "mean_best_iou_same_class"] == 0.0
    assert table.loc["x", "precision_aware"] == 0.5  # one of the two x predictions matches an x box
    # the hits' IoU: the x box found exactly; the y box has no class-aware hit, so no value
    assert overall["matched_iou_aware"] == 1.0 and math.isnan(table.loc["y", "matched_iou_aware"])


def test_the_hits_iou_measures_tightness_apart_from_recall() -> None:
    """Two strategies with the same recall: the one whose hits sit looser shows it."""
    gt, _ = gt_and_predictions()
    columns = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    boxes = pd.DataFrame(
        [
            ("img", "tight", "x", 0, 0, 0.5, 0.5, 0.9),  # IoU 1
            ("img", "tight", "y", 0.5, 0.5, 1.0, 1.0, 0.9),  # IoU 1
            ("img", "loose", "x", 0, 0, 0.5, 0.4, 0.9),  # IoU 0.8
            ("img", "loose", "y", 0.5, 0.5, 1.0, 0.8, 0.9),  # IoU 0.6
        ],
        columns=columns,
    )
    table = box_quality(gt, boxes, ["img"], ["x", "y"]).set_index(["strategy", "class_name"])
    assert (
        table.loc[("tight", "all"), "recall_aware"] == table.loc[("loose", "all"), "recall_aware"]
    )
    assert table.loc[("tight", "all"), "matched_iou_aware"] == pytest.approx(1.0)
    assert table.loc[("loose", "all"), "matched_iou_aware"] == pytest.approx(0.7)
    assert table.loc[("loose", "y"), "matched_iou_aware"] == pytest.approx(0.6)


def test_each_false_box_is_told_apart_by_what_it_covers() -> None:
    """One box of each kind on hand-placed truth, and the counts add up to the boxes drawn."""
    gt = pd.DataFrame(
        [
            ("img", "x", 0, 0, 0.5, 0.5),
            ("img", "y", 0.5, 0.5, 1.0, 1.0),
            ("img", "z", 0.8, 0.0, 0.85, 0.05),  # a small defect
        ],
        columns=["image_id", "class_name", "x1", "y1", "x2", "y2"],
    )
    columns = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    kinds = {
        "hit": (0, 0, 0.5, 0.5),  # IoU 1 with the x box
        "duplicate": (0, 0, 0.5, 0.45),  # IoU 0.9 with the x box, already found
        "other_class": (0.5, 0.5, 1.0, 0.9),  # IoU 0.8 with the y box
        "fragment": (0.1, 0.1, 0.2, 0.2),  # all inside the x box, IoU 0.04
        "loose": (0.3, 0.0, 0.9, 0.5),  # IoU 0.22 with the x box, a third of it inside
        "loose_around": (0.6, 0.0, 1.0, 0.4),  # IoU 0.016 with z, but holds all of it
        "background": (0.6, 0.1, 0.7, 0.2),  # touches no truth box
    }
    boxes = pd.DataFrame([("img", "s", "x", *box, 0.9) for box in kinds.values()], columns=columns)
    matches = match_strategy(gt, boxes, ["img"])
    assert matches.predictions["kind"].tolist() == [
        "hit", "duplicate", "other_class", "fragment", "loose", "loose", "background"
    ]  # fmt: skip
    overall = summarise_matches(matches, ["x", "y", "z"]).set_index("class_name").loc["all"]
    counts = [overall[f"n_{kind}"] for kind in FALSE_BOX_KINDS]
    assert counts == [1, 1, 1, 2, 1, 0] and overall["n_hit"] == 1
    assert sum(counts) + overall["precision_aware"] * overall["n_pred"] == overall["n_pred"]
    # no truth in the image: every box is on a defect-free image
    alone = match_strategy(gt.iloc[:0], boxes, ["img"]).predictions["kind"]
    assert set(alone) == {"defect_free"}


def test_images_without_predictions_or_without_ground_truth() -> None:
    gt, predictions = gt_and_predictions()
    none = summarise_matches(match_strategy(gt, predictions.iloc[:0], ["img"]), ["x", "y"])
    overall = none.set_index("class_name").loc["all"]
    assert overall["mean_best_iou"] == 0.0 and overall["recall_aware"] == 0.0
    assert math.isnan(overall["precision_aware"])
    moved = predictions.assign(image_id="other")
    only_fp = summarise_matches(match_strategy(gt.iloc[:0], moved, ["other"]), ["x", "y"])
    overall = only_fp.set_index("class_name").loc["all"]
    assert overall["n_pred"] == 3 and overall["precision_agnostic"] == 0.0
    assert math.isnan(overall["recall_agnostic"])


def test_box_quality_reports_each_strategy_within_the_scope() -> None:
    gt, predictions = gt_and_predictions()
    whole = pd.DataFrame(
        [("img", "whole_image", "x", 0.0, 0.0, 1.0, 1.0, 0.9)], columns=predictions.columns
    )
    table = box_quality(gt, pd.concat([predictions, whole]), ["img"], ["x", "y"])
    assert sorted(table["strategy"].unique()) == ["s", "whole_image"]
    whole_all = table[(table["strategy"] == "whole_image") & (table["class_name"] == "all")].iloc[0]
    assert whole_all["mean_best_iou"] == pytest.approx(0.25)
    assert whole_all["recall_agnostic"] == 0.0
    out_of_scope = box_quality(gt, predictions, [], ["x", "y"])
    assert (out_of_scope.loc[out_of_scope["class_name"] == "all", "n_gt"] == 0).all()


def test_ground_truth_pixels_are_normalised_by_the_image_size() -> None:
    gt = pd.DataFrame(
        {
            "image_id": ["1"],
            "class_name": ["a"],
            "xmin": [20],
            "ymin": [40],
            "xmax": [100],
            "ymax": [200],
        }
    )
    sizes = pd.DataFrame({"image_id": ["1"], "width": [200], "height": [400]})
    row = normalise_gt_boxes(gt, sizes).iloc[0]
    assert [row.x1, row.y1, row.x2, row.y2] == pytest.approx([0.1, 0.1, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown size"):
        normalise_gt_boxes(gt.assign(image_id="2"), sizes)


# -- failures, ordering and the summary -------------------------------------------------------


def failure(image_id: str, sha: str, kind: str, raw: str | None = None) -> AnnotationRecord:
    return AnnotationRecord(
        key=f"{image_id}-{kind}",
        image_id=image_id,
        image_sha256=sha,
        annotator="fake",
        model="m",
        prompt_hash="p",
        status="failed",
        failure_kind=kind,
        raw_text=raw,
    )


def test_failed_attempts_keep_this_pool_and_excerpt_raw_text() -> None:
    records = [
        failure("old-name", "sha1", "refusal", "I can't " + "x" * 1000),
        failure("elsewhere", "sha9", "timeout"),
        failure("2", "sha2", "http_error"),
    ]
    attempts = failed_attempts(records, {"sha1": "1", "sha2": "2"})
    assert attempts["image_id"].tolist() == ["1", "2"]
    assert (
        attempts.loc[0, "raw_text"].startswith("I can't")
        and len(attempts.loc[0, "raw_text"]) == 300
    )
    images = make_images([("1", "a", None, None), ("2", "a", "a", 0.9)])
    counts = failure_counts(images, attempts)
    assert counts.loc["refusal"].tolist() == [1, 1]
    assert counts.loc["http_error"].tolist() == [1, 0]  # retried and then answered


def test_disagreements_put_the_most_confident_first_and_break_ties_by_id() -> None:
    images = make_images(
        [("b", "a", "c", 0.7), ("a", "a", "c", 0.7), ("c", "a", "b", 0.95), ("d", "a", "a", 0.99)]
    )
    assert disagreements(images)["image_id"].tolist() == ["c", "a", "b"]


def test_summary_is_strict_json_and_carries_the_threshold() -> None:
    gt, predictions = gt_and_predictions()
    images = make_images([("img", "x", "x", 0.9), ("two", "y", None, None)])
    per_class = per_class_metrics(images, ["x", "y"])
    boxes = box_quality(gt, predictions, ["img"], ["x", "y"])
    counts = failure_counts(images, failed_attempts([]))
    summary = build_summary(images, per_class, boxes, counts, confidence_threshold=0.75)
    text = json.dumps(summary, allow_nan=False)
    loaded = json.loads(text)
    assert loaded["confidence_threshold"] == 0.75
    assert loaded["at_threshold"]["coverage"] == 0.5
    assert loaded["n_images"] == 2 and loaded["failures"]["images_without_label"] == 1
    assert loaded["box_metrics"]["s"]["all"]["n_gt"] == 2
    assert loaded["per_class"]["y"]["recall"] == 0.0

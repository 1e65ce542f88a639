"""Defect against no defect on tiny hand-made tables: the rates, the audit, the comparison, the cascade."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.chapters.c04_audit import build_summary, failed_attempts, failure_counts
from cascade_defect.costs.cascade import cascade_curve
from cascade_defect.metrics.box_quality import box_quality
from cascade_defect.metrics.classification import (
    confusion_table,
    image_accuracy,
    per_class_metrics,
)
from cascade_defect.metrics.defect_rates import (
    DEFAULT_DETECTOR_CONFIDENCE,
    NO_DEFECT_FREE_NOTE,
    called_defective,
    class_defect_rates,
    defect_rates,
    detector_defect_curve,
    detector_defect_rates,
    detector_defect_table,
    has_defect_free,
    operating_thresholds,
    wilson_interval,
)
from cascade_defect.metrics.detection import NO_DETECTION
from cascade_defect.plots.audit import confusion_heatmap
from cascade_defect.plots.audit import defect_rate_table as audit_defect_table
from cascade_defect.plots.comparison import (
    cascade_defect_rates,
    cascade_summary,
    cascade_table,
    defect_rate_table,
    defect_tradeoff,
)
from tests.test_audit import make_images

CLASSES = ["a", "b"]


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# -- the rates ---------------------------------------------------------------------------------


def test_every_image_defective_leaves_the_false_alarm_rate_undefined() -> None:
    """The NEU-DET case: no defect-free image, so no false-alarm rate (not 0)."""
    rates = class_defect_rates(["a", "b", "a", "b"], ["a", NO_DEFECT, "b", None])
    assert rates["n_defective"] == 4 and rates["n_defect_free"] == 0
    assert rates["n_defects_found"] == 3  # a missing answer clears nothing: it counts as a call
    assert rates["defect_recall"] == pytest.approx(0.75)
    assert rates["false_alarm_rate"] is None
    assert rates["false_alarm_rate_ci_low"] is None and rates["false_alarm_rate_ci_high"] is None
    assert not has_defect_free(["a", "b"])
    json.dumps(rates, allow_nan=False)


def test_defect_free_majority_counts_and_wilson_intervals() -> None:
    truth = ["a"] * 3 + [NO_DEFECT] * 7
    answers = ["a", "b", NO_DEFECT] + ["a", "a"] + [NO_DEFECT] * 5
    rates = class_defect_rates(truth, answers)
    assert (rates["n_defective"], rates["n_defect_free"]) == (3, 7)
    assert (rates["n_defects_found"], rates["n_defects_missed"]) == (2, 1)
    assert (rates["n_false_alarms"], rates["n_cleared_correctly"]) == (2, 5)
    assert rates["defect_recall"] == pytest.approx(2 / 3)
    assert rates["false_alarm_rate"] == pytest.approx(2 / 7)
    low, high = _wilson_by_hand(2, 7)
    assert rates["false_alarm_rate_ci_low"] == pytest.approx(low)
    assert rates["false_alarm_rate_ci_high"] == pytest.approx(high)
    assert has_defect_free(truth)


def test_wilson_interval_is_wilson_and_stays_inside_zero_one() -> None:
    assert wilson_interval(8, 10) == pytest.approx(_wilson_by_hand(8, 10))
    low, high = wilson_interval(0, 5)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 1
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_calling_every_image_defective_finds_every_defect_and_alarms_on_every_good_part() -> None:
    rates = defect_rates([True, True, False, False, False], [True] * 5)
    assert rates["defect_recall"] == 1.0 and rates["false_alarm_rate"] == 1.0
    assert rates["n_false_alarms"] == 3 and rates["n_cleared_correctly"] == 0


def test_empty_inputs_give_zero_counts_and_undefined_rates() -> None:
    rates = defect_rates([], [])
    assert rates["n_images"] == 0 and rates["n_defective"] == 0 and rates["n_defect_free"] == 0
    assert rates["defect_recall"] is None and rates["false_alarm_rate"] is None
    assert class_defect_rates([], [])["defect_recall"] is None
    with pytest.raises(ValueError):
        defect_rates([True], [True, False])


def test_no_defect_and_no_detection_clear_an_image_a_missing_answer_does_not() -> None:
    called = called_defective(pd.Series(["a", NO_DEFECT, NO_DETECTION, None, np.nan]))
    assert called.tolist() == [True, False, False, True, True]


# -- detectors ---------------------------------------------------------------------------------


def _image_level(confidences: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(confidences))],
            "predicted_class": ["a" if c > 0 else NO_DETECTION for c in confidences],
            "top_confidence": confidences,
        }
    )


def test_a_detector_calls_an_image_defective_at_or_above_its_threshold() -> None:
    frame = _image_level([0.9, 0.5, 0.2, 0.0, 0.5, 0.1])
    truth = dict(
        zip(frame["image_id"], ["a", "a", "b", NO_DEFECT, NO_DEFECT, NO_DEFECT], strict=True)
    )
    rates = detector_defect_rates(frame, truth, threshold=0.5)
    assert rates["threshold"] == 0.5
    assert rates["defect_recall"] == pytest.approx(2 / 3)  # 0.5 counts, 0.2 does not
    assert rates["false_alarm_rate"] == pytest.approx(1 / 3)  # the defect-free image at 0.5


def test_operating_thresholds_take_the_kpi_threshold_or_the_default() -> None:
    kpi = pd.DataFrame({"threshold": [0.4, None]}, index=["human", "pseudo"])
    chosen = operating_thresholds(kpi, ["human", "pseudo", "seed_only"])
    assert chosen == {
        "human": 0.4,
        "pseudo": DEFAULT_DETECTOR_CONFIDENCE,
        "seed_only": DEFAULT_DETECTOR_CONFIDENCE,
    }
    assert operating_thresholds(pd.DataFrame(), ["human"]) == {"human": DEFAULT_DETECTOR_CONFIDENCE}


def test_detector_tables_on_a_dataset_without_defect_free_images() -> None:
    frame = _image_level([0.9, 0.3, 0.0])
    truth = dict(zip(frame["image_id"], ["a", "b", "a"], strict=True))
    table = detector_defect_table({"human": frame}, truth, {"human": 0.25})
    assert table.loc["human", "defect_recall"] == pytest.approx(2 / 3)
    assert table.loc["human", "false_alarm_rate"] is None
    curve = detector_defect_curve({"human": frame}, truth)
    assert curve["false_alarm_rate"].isna().all()
    assert curve["defect_recall"].is_monotonic_decreasing
    shown = defect_rate_table(table, pd.DataFrame({"map50": [0.7]}, index=["human"]))
    assert (shown["false-alarm rate"] == NO_DEFECT_FREE_NOTE).all()
    assert shown.loc["human", "mAP50"] == 0.7
    assert isinstance(defect_tradeoff(curve, table), Figure)
    plt.close("all")


def test_detector_tables_with_defect_free_images_and_empty_input() -> None:
    frame = _image_level([0.9, 0.6, 0.1, 0.7])
    truth = dict(zip(frame["image_id"], ["a", NO_DEFECT, NO_DEFECT, NO_DEFECT], strict=True))
    table = detector_defect_table({"pseudo": frame}, truth, {"pseudo": 0.5})
    assert table.loc["pseudo", "false_alarm_rate"] == pytest.approx(2 / 3)
    shown = defect_rate_table(table, pd.DataFrame())
    assert shown.loc["pseudo", "false alarms / defect-free images"] == "2 / 3"
    assert isinstance(
        defect_tradeoff(detector_defect_curve({"pseudo": frame}, truth), table), Figure
    )
    empty = detector_defect_table({}, {}, {})
    assert empty.empty and "defect_recall" in empty.columns
    assert defect_rate_table(empty, pd.DataFrame()).empty
    assert detector_defect_curve({}, {}).empty
    assert isinstance(defect_tradeoff(pd.DataFrame(), empty), Figure)
    plt.close("all")


def test_no_detection_is_right_on_a_defect_free_image_only() -> None:
    frame = _image_level([0.9, 0.0, 0.0])
    truth = {"i0": "a", "i1": NO_DEFECT, "i2": "b"}
    assert image_accuracy(frame, truth) == pytest.approx(2 / 3)


# -- the cascade -------------------------------------------------------------------------------


def test_the_cascade_without_clearing_keeps_its_numbers_and_adds_defect_recall() -> None:
    """Every image defective (NEU-DET): no clearing, no false-alarm rate, no new columns of it."""
    yolo = pd.DataFrame(
        {
            "image_id": ["i1", "i2", "i3", "i4"],
            "predicted_class": ["a", "b", "a", NO_DETECTION],
            "top_confidence": [0.9, 0.6, 0.3, 0.0],
        }
    )
    truth = {"i1": "a", "i2": "a", "i3": "a", "i4": "b"}
    answers = {"i1": "b", "i2": "a", "i3": "a", "i4": NO_DEFECT}
    curve = cascade_curve(yolo, truth, answers, thresholds=[0.0, 0.5, 1.0]).set_index("threshold")
    assert curve["accuracy"].tolist() == [0.5, 0.5, 0.5]  # i4: no box, then a wrong no_defect
    assert "n_cleared" not in curve and curve["false_alarm_rate"].isna().all()
    assert curve.loc[0.0, "defect_recall"] == pytest.approx(0.75)  # i4: no box at all
    assert curve.loc[1.0, "defect_recall"] == pytest.approx(0.75)  # i4: annotator's no_defect
    assert "false_alarm_rate" not in cascade_table(curve.reset_index())
    assert "false_alarm_rate" not in cascade_summary(curve.reset_index())


def test_the_cascade_clears_defect_free_images_and_escalates_only_uncertain_ones() -> None:
    """A defect-free majority: the detector passes images without a box above 0.3 as no_defect."""
    yolo = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(6)],
            "predicted_class": ["a", "b", "a", "a", NO_DETECTION, "b"],
            "top_confidence": [0.9, 0.5, 0.4, 0.2, 0.0, 0.1],
        }
    )
    truth = dict(
        zip(yolo["image_id"], ["a", "a", NO_DEFECT, "b", NO_DEFECT, NO_DEFECT], strict=True)
    )
    asked: list[list[str]] = []

    def annotator(ids: list[str]) -> dict[str, str]:
        asked.append(sorted(ids))
        return {"i1": "a", "i2": NO_DEFECT}

    curve = cascade_curve(yolo, truth, annotator, thresholds=[0.0, 0.6], clear_below=0.3)
    assert asked == [["i1", "i2"]]  # cleared images (i3, i4, i5) never reach the annotator
    rows = curve.set_index("threshold")
    assert (rows["n_cleared"] == 3).all() and (rows["clear_below"] == 0.3).all()
    # YOLO alone: i0 right, i1 wrong class, i2 false alarm, i3 missed, i4 and i5 cleared right.
    assert rows.loc[0.0, "accuracy"] == pytest.approx(3 / 6)
    assert rows.loc[0.0, "defect_recall"] == pytest.approx(2 / 3)
    assert rows.loc[0.0, "false_alarm_rate"] == pytest.approx(1 / 3)
    # Escalating i1 and i2: both answered right; i3 stays missed.
    assert rows.loc[0.6, "n_escalated"] == 2
    assert rows.loc[0.6, "accuracy"] == pytest.approx(5 / 6)
    assert rows.loc[0.6, "defect_recall"] == pytest.approx(2 / 3)
    assert rows.loc[0.6, "false_alarm_rate"] == 0.0
    assert {"n_cleared", "false_alarm_rate"} <= set(cascade_summary(curve))
    assert isinstance(cascade_defect_rates(curve), Figure)
    assert isinstance(cascade_defect_rates(pd.DataFrame()), Figure)
    plt.close("all")


def test_the_cascade_default_thresholds_spread_over_the_images_not_cleared() -> None:
    yolo = _image_level([0.0, 0.05, 0.6, 0.7, 0.8, 0.9])
    truth = dict(zip(yolo["image_id"], [NO_DEFECT, NO_DEFECT, "a", "a", "a", "a"], strict=True))
    curve = cascade_curve(yolo, truth, {}, clear_below=0.5)
    assert curve["escalated_share"].iloc[0] == 0.0
    assert curve["n_escalated"].iloc[-1] == 4  # every image not cleared, never a cleared one
    assert (curve["false_alarm_rate"] == 0.0).all()


# -- the audit ---------------------------------------------------------------------------------


def test_the_audit_confusion_has_a_no_defect_row_only_when_there_are_defect_free_images() -> None:
    neu = make_images([("1", "a", "a", 0.9), ("2", "b", NO_DEFECT, 0.8)])
    assert list(confusion_table(neu, CLASSES).index) == CLASSES
    tiles = make_images(
        [
            ("1", "a", "a", 0.9),
            ("2", NO_DEFECT, NO_DEFECT, 0.8),
            ("3", NO_DEFECT, "b", 0.7),
            ("4", NO_DEFECT, None, None),
        ]
    )
    confusion = confusion_table(tiles, CLASSES)
    assert list(confusion.index) == [*CLASSES, NO_DEFECT]
    assert confusion.loc[NO_DEFECT].to_dict() == {
        "a": 0,
        "b": 1,
        NO_DEFECT: 1,
        "not_answered": 1,
    }
    assert confusion.to_numpy().sum() == 4
    assert isinstance(confusion_heatmap(confusion), Figure)
    plt.close("all")


def _summary(images: pd.DataFrame) -> dict:
    per_class = per_class_metrics(images, CLASSES)
    boxes = box_quality(
        pd.DataFrame(columns=["image_id", "class_name", "x1", "y1", "x2", "y2"]),
        pd.DataFrame(columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2"]),
        [],
        CLASSES,
    )
    counts = failure_counts(images, failed_attempts([]))
    return json.loads(
        json.dumps(
            build_summary(images, per_class, boxes, counts, confidence_threshold=0.5),
            allow_nan=False,
        )
    )


def test_the_audit_summary_reports_defect_rates_over_answered_images() -> None:
    images = make_images(
        [
            ("1", "a", "a", 0.9),
            ("2", "b", NO_DEFECT, 0.6),
            ("3", NO_DEFECT, NO_DEFECT, 0.8),
            ("4", NO_DEFECT, "a", 0.7),
            ("5", NO_DEFECT, NO_DEFECT, 0.9),
            ("6", "a", None, None),  # failed: out of the defect scope, as for boxes
        ]
    )
    summary = _summary(images)
    rates = summary["defect_rates"]
    assert summary["defect_scope"] == "answered images"
    assert (rates["n_defective"], rates["n_defect_free"]) == (2, 3)
    assert rates["defect_recall"] == 0.5 and rates["false_alarm_rate"] == pytest.approx(1 / 3)
    assert summary["accuracy"] == pytest.approx(3 / 6)  # no_defect is right on defect-free images
    table = audit_defect_table(summary)
    assert table.loc["false-alarm rate", "images"] == "1 of 3 defect-free images"


def test_the_audit_summary_without_defect_free_images_says_so() -> None:
    summary = _summary(make_images([("1", "a", "a", 0.9), ("2", "b", NO_DEFECT, 0.6)]))
    assert summary["defect_rates"]["false_alarm_rate"] is None
    table = audit_defect_table(summary)
    assert table.loc["false-alarm rate", "images"] == NO_DEFECT_FREE_NOTE
    assert table.loc["defect recall", "value"] == 0.5
    assert audit_defect_table(_summary(make_images([])))["value"].isna().all()

"""Audit figures: each returns a Figure on small inputs, including empty ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cascade_defect.chapters.c04_audit import (
    disagreements,
    failed_attempts,
    failure_counts,
    image_table,
)
from cascade_defect.metrics.box_quality import box_quality
from cascade_defect.metrics.calibration import coverage_at, coverage_curve, reliability_table
from cascade_defect.metrics.classification import confusion_table, per_class_metrics
from cascade_defect.plots import audit as plots_audit

CLASSES = ["crazing", "inclusion"]


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def images() -> pd.DataFrame:
    truth = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "class_name": ["crazing", "inclusion", "crazing"]}
    )
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "status": ["ok", "ok", "failed"],
            "defect_class": ["crazing", "crazing", None],
            "confidence": [0.9, 0.7, None],
            "reasoning": ["fine cracks " * 30, None, None],
            "annotator": ["x", "x", "x"],
            "model": ["m", "m", "m"],
            "failure_kind": [None, None, "timeout"],
            "cost_usd": [0.0, 0.0, 0.0],
        }
    )
    gt = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "class_name": ["crazing", "inclusion"],
            "xmin": [0, 5],
            "ymin": [0, 5],
            "xmax": [10, 15],
            "ymax": [10, 15],
        }
    )
    return image_table(truth, gt, labels)


def normalised_boxes() -> tuple[pd.DataFrame, pd.DataFrame]:
    gt = pd.DataFrame(
        [("a", "crazing", 0.0, 0.0, 0.5, 0.5), ("b", "inclusion", 0.2, 0.2, 0.6, 0.6)],
        columns=["image_id", "class_name", "x1", "y1", "x2", "y2"],
    )
    pseudo = pd.DataFrame(
        [
            ("b", "annotator", "crazing", 0.25, 0.2, 0.6, 0.7, 0.7),
            ("b", "whole_image", "crazing", 0.0, 0.0, 1.0, 1.0, 0.7),
        ],
        columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"],
    )
    return gt, pseudo


def test_class_quality_figures(images: pd.DataFrame) -> None:
    assert isinstance(plots_audit.confusion_heatmap(confusion_table(images, CLASSES)), Figure)
    assert isinstance(plots_audit.per_class_bars(per_class_metrics(images, CLASSES)), Figure)
    answered = images[images["answered"]]
    table = reliability_table(answered["confidence"], answered["correct"], 5)
    assert isinstance(plots_audit.reliability_diagram(table, 0.1), Figure)
    assert isinstance(plots_audit.reliability_diagram(reliability_table([], [], 5)), Figure)


def test_coverage_figure_with_and_without_answers(images: pd.DataFrame) -> None:
    curve = coverage_curve(images)
    figure = plots_audit.coverage_accuracy_plot(curve, 0.8, coverage_at(images, 0.8))
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert isinstance(plots_audit.coverage_accuracy_plot(curve.iloc[:0], 0.5), Figure)


def test_box_and_failure_figures(images: pd.DataFrame) -> None:
    gt, pseudo = normalised_boxes()
    table = box_quality(gt, pseudo, ["a", "b"], CLASSES)
    assert isinstance(plots_audit.box_quality_plot(table), Figure)
    assert isinstance(plots_audit.box_quality_plot(table.iloc[:0]), Figure)
    counts = failure_counts(images, failed_attempts([]))
    assert isinstance(plots_audit.failure_bars(counts), Figure)
    assert isinstance(plots_audit.failure_bars(counts.iloc[:0]), Figure)


def test_box_kinds_split_each_strategys_boxes_into_shares_that_add_up() -> None:
    gt, pseudo = normalised_boxes()
    fragment = ("a", "annotator", "crazing", 0.1, 0.1, 0.2, 0.2, 0.5)  # inside a's crazing box
    hit = ("a", "annotator", "crazing", 0.0, 0.0, 0.5, 0.45, 0.9)  # IoU 0.9
    boxes = pd.concat([pseudo, pd.DataFrame([fragment, hit], columns=pseudo.columns)])
    table = box_quality(gt, boxes, ["a", "b"], CLASSES)
    shares = plots_audit.box_kind_shares(table, "annotator")
    # three annotator boxes: a hit, a piece of a's box, and a crazing box on b's inclusion (IoU 0.53)
    assert shares.loc["all", "n_boxes"] == 3
    assert shares.loc["all", ["hit", "fragment", "other_class"]].tolist() == pytest.approx(
        [1 / 3, 1 / 3, 1 / 3]
    )
    assert shares.drop(columns="n_boxes").sum(axis=1).loc["all"] == pytest.approx(1.0)
    figure = plots_audit.box_kind_bars(table, "annotator")
    assert len(figure.axes[0].patches) == 7 * len(shares)  # seven kinds, one bar per row
    empty = plots_audit.box_kind_bars(table, "seed_detector")  # a strategy this run lacks
    assert not empty.axes[0].patches


def test_disagreement_gallery_draws_images_and_boxes(images: pd.DataFrame, tmp_path: Path) -> None:
    paths = []
    for image_id in ("a", "b", "c"):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(np.full((20, 20), 128, dtype=np.uint8)).save(path)
        paths.append(str(path))
    pool = pd.DataFrame({"image_id": ["a", "b", "c"], "path": paths, "width": 20, "height": 20})
    gt, pseudo = normalised_boxes()
    wrong = disagreements(images)
    figure = plots_audit.disagreement_gallery(wrong, pool, gt, pseudo, CLASSES, n=4)
    assert isinstance(figure, Figure)
    drawn = figure.axes[0]
    assert len(drawn.patches) == 3  # one ground-truth box, two pseudo boxes
    assert isinstance(
        plots_audit.disagreement_gallery(wrong.iloc[:0], pool, gt, pseudo, CLASSES), Figure
    )


def test_box_strategy_sentence_names_the_trained_strategy() -> None:
    from cascade_defect.plots.audit import box_strategy_sentence

    metrics = pd.DataFrame(
        {
            "strategy": ["seed_detector", "self_training", "seed_detector"],
            "class_name": ["all", "all", "crazing"],
            "recall_aware": [0.62, 0.5, 0.9],
            "precision_aware": [0.21, 0.3, 0.9],
            "n_pred": [9937, 4000, 10],
        }
    )
    text = box_strategy_sentence(metrics, "seed_detector")
    assert text.index("`seed_detector` finds 62%") < text.index("`self_training` finds 50%")
    assert "21% precision (9,937 boxes) ← the pseudo detector" in text
    assert "30% precision (4,000 boxes)." in text
    assert box_strategy_sentence(metrics.iloc[:0], "x") == "No box strategy was scored in this run."

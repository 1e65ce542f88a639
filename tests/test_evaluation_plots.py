"""Every figure of chapters 05 and 06 draws from the tables the package produces."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cascade_defect.costs.cascade import cascade_costs, cascade_curve
from cascade_defect.metrics.bootstrap import bootstrap_indices, bootstrap_map50, bootstrap_table
from cascade_defect.metrics.classification import image_predictions
from cascade_defect.metrics.detection import detection_metrics, match_detections
from cascade_defect.metrics.kpi import threshold_sweep
from cascade_defect.plots.comparison import (
    cascade_tradeoff,
    difference_distribution,
    kpi_sweep,
    map_with_intervals,
    noise_curve,
    per_class_heatmap,
)
from cascade_defect.plots.training import learning_curves, training_time
from tests.test_evaluation import CLASSES, random_case


@pytest.fixture(scope="module")
def chapter_tables() -> dict:
    dets, truth, ids = random_case(40, seed=9)
    matched = match_detections(dets, truth, ids, CLASSES)
    draws = bootstrap_indices(len(ids), 50, seed=0)
    samples = {s: bootstrap_map50(matched, draws) for s in ("human", "pseudo", "noise_0.3")}
    estimates = {s: detection_metrics(matched)["map50"] for s in samples}
    boot, comparison = bootstrap_table(estimates, samples)
    metrics = pd.DataFrame(
        {"map50": estimates, "noise_rate": {"human": None, "pseudo": None, "noise_0.3": 0.3}}
    ).join(boot[["ci_low", "ci_high"]].add_prefix("map50_"))
    thresholds = threshold_sweep(matched, np.arange(0.05, 1, 0.1)).assign(source="pseudo")
    yolo = image_predictions(matched)
    truth_classes = dict(zip(ids, np.array(CLASSES)[np.arange(len(ids)) % 3], strict=True))
    cascade = cascade_costs(
        cascade_curve(yolo, truth_classes, truth_classes),
        annotator_usd_per_image=0.002,
        yolo_latency_s=0.03,
        vm_usd_per_hour=0.08,
    )
    history = pd.DataFrame(
        {
            "source": ["human"] * 3 + ["pseudo"] * 3,
            "epoch": [1, 2, 3] * 2,
            "map50": [0.2, 0.4, 0.5, 0.1, 0.3, 0.45],
            "train_box_loss": [2.0, 1.8, 1.6, 2.1, 1.9, 1.7],
        }
    )
    summary = pd.DataFrame(
        {"wall_minutes": [3.0, 2.5], "cpu_minutes": [4.0, 3.5]}, index=["human", "pseudo"]
    )
    per_class = pd.DataFrame({"human": [0.5, 0.7, 0.9], "pseudo": [0.4, 0.6, 0.9]}, index=CLASSES)
    return {
        "metrics": metrics,
        "samples": samples,
        "thresholds": thresholds,
        "cascade": cascade,
        "history": history,
        "summary": summary,
        "per_class": per_class,
        "comparison": comparison,
    }


def test_every_figure_draws(chapter_tables: dict) -> None:
    t = chapter_tables
    figures = [
        learning_curves(t["history"]),
        learning_curves(pd.DataFrame()),
        training_time(t["summary"]),
        map_with_intervals(t["metrics"], target_ratio=0.97),
        difference_distribution(t["samples"]),
        difference_distribution({}),
        per_class_heatmap(t["per_class"]),
        noise_curve(t["metrics"]),
        kpi_sweep(t["thresholds"], source="pseudo"),
        cascade_tradeoff(t["cascade"]),
        cascade_tradeoff(pd.DataFrame()),
    ]
    for figure in figures:
        assert isinstance(figure, Figure)
        assert figure.axes
        plt.close(figure)


def test_noise_curve_keeps_the_full_schedule_models_off_the_noise_line(
    chapter_tables: dict,
) -> None:
    metrics = chapter_tables["metrics"].assign(epochs=[10, 10, 4])
    figure = noise_curve(metrics)
    ax = figure.axes[0]
    assert list(ax.lines[0].get_xdata()) == [0.3]  # the noise sources only
    labels = ax.get_legend_handles_labels()[1]
    assert "human labels + noise, 4 epochs" in labels and "human, 10 epochs" in labels
    plt.close(figure)
    same = noise_curve(chapter_tables["metrics"].assign(epochs=[10, 10, 10]))
    assert list(same.axes[0].lines[0].get_xdata()) == [0.0, 0.3]  # human joins the sweep
    plt.close(same)

"""Every figure of chapters 05 and 06 draws from the tables the package produces."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cascade_defect import evaluation as ev
from cascade_defect import plots_training as pt
from tests.test_evaluation import CLASSES, random_case


@pytest.fixture(scope="module")
def chapter_tables() -> dict:
    dets, truth, ids = random_case(40, seed=9)
    matched = ev.match_detections(dets, truth, ids, CLASSES)
    draws = ev.bootstrap_indices(len(ids), 50, seed=0)
    samples = {s: ev.bootstrap_map50(matched, draws) for s in ("human", "pseudo", "noise_0.3")}
    estimates = {s: ev.detection_metrics(matched)["map50"] for s in samples}
    boot, comparison = ev.bootstrap_table(estimates, samples)
    metrics = pd.DataFrame(
        {"map50": estimates, "noise_rate": {"human": None, "pseudo": None, "noise_0.3": 0.3}}
    ).join(boot[["ci_low", "ci_high"]].add_prefix("map50_"))
    thresholds = ev.threshold_sweep(matched, np.arange(0.05, 1, 0.1)).assign(source="pseudo")
    yolo = ev.image_predictions(matched)
    truth_classes = dict(zip(ids, np.array(CLASSES)[np.arange(len(ids)) % 3], strict=True))
    cascade = ev.cascade_costs(
        ev.cascade_curve(yolo, truth_classes, truth_classes),
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
        pt.learning_curves(t["history"]),
        pt.learning_curves(pd.DataFrame()),
        pt.training_time(t["summary"]),
        pt.map_with_intervals(t["metrics"], target_ratio=0.97),
        pt.difference_distribution(t["samples"]),
        pt.difference_distribution({}),
        pt.per_class_heatmap(t["per_class"]),
        pt.noise_curve(t["metrics"]),
        pt.kpi_sweep(t["thresholds"], source="pseudo"),
        pt.cascade_tradeoff(t["cascade"]),
        pt.cascade_tradeoff(pd.DataFrame()),
    ]
    for figure in figures:
        assert isinstance(figure, Figure)
        assert figure.axes
        plt.close(figure)


def test_noise_curve_keeps_the_full_schedule_models_off_the_noise_line(
    chapter_tables: dict,
) -> None:
    metrics = chapter_tables["metrics"].assign(epochs=[10, 10, 4])
    figure = pt.noise_curve(metrics)
    ax = figure.axes[0]
    assert list(ax.lines[0].get_xdata()) == [0.3]  # the noise sources only
    labels = ax.get_legend_handles_labels()[1]
    assert "human labels + noise, 4 epochs" in labels and "human, 10 epochs" in labels
    plt.close(figure)
    same = pt.noise_curve(chapter_tables["metrics"].assign(epochs=[10, 10, 10]))
    assert list(same.axes[0].lines[0].get_xdata()) == [0.0, 0.3]  # human joins the sweep
    plt.close(same)

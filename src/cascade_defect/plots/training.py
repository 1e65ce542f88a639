"""Figures and tables for chapter 05: learning curves and training time per label source."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cascade_defect.plots.common import _source_colours

_METRIC_LABELS = {"map50": "mAP50", "top1": "top-1 accuracy"}


_LOSS_LABELS = {"train_box_loss": "Training box loss", "train_loss": "Training loss"}


def learning_curves(
    history: pd.DataFrame, metric: str = "map50", loss: str = "train_box_loss"
) -> Figure:
    """Hold-out ``metric`` and training ``loss`` per epoch, one line per label source.

    Each source is validated on its own labels of the same hold-out images, so a noisy source
    can look worse here partly because its validation labels are noisy too; chapter 06 judges
    all of them on human labels. Classifiers use ``metric="top1", loss="train_loss"``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    if history.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center")
        return fig
    sources = list(dict.fromkeys(history["source"]))
    colours = _source_colours(sources)
    for source, group in history.groupby("source", sort=False):
        axes[0].plot(
            group["epoch"], group[metric], marker="o", ms=3, label=source, color=colours[source]
        )
        if loss in group:
            axes[1].plot(group["epoch"], group[loss], marker="o", ms=3, color=colours[source])
    label = _METRIC_LABELS.get(metric, metric)
    axes[0].set_title(f"Hold-out {label} (each source's own labels)")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel(label)
    axes[0].legend(fontsize=8)
    axes[1].set_title(_LOSS_LABELS.get(loss, loss))
    axes[1].set_xlabel("epoch")
    fig.tight_layout()
    return fig


def training_time(summary: pd.DataFrame) -> Figure:
    """Wall-clock and CPU minutes per source: where the chapter's time budget goes.

    On a shared machine the wall time also counts the neighbours' load; the CPU time is the
    work itself (training process plus data-loader workers).
    """
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * max(len(summary), 1) + 1.3))
    if len(summary):
        ordered = summary.sort_values("wall_minutes")
        y = np.arange(len(ordered))
        ax.barh(y + 0.2, ordered["wall_minutes"], height=0.4, color="#4c72b0", label="wall")
        if "cpu_minutes" in ordered:
            ax.barh(y - 0.2, ordered["cpu_minutes"], height=0.4, color="#dd8452", label="CPU")
        for k, value in enumerate(ordered["wall_minutes"]):
            ax.text(value, k + 0.2, f" {value:.1f}", va="center", fontsize=8)
        ax.set_yticks(y, ordered.index)
        ax.legend(fontsize=8)
    ax.set_xlabel("minutes")
    ax.set_title("Training time per label source")
    fig.tight_layout()
    return fig


def training_totals(summary: pd.DataFrame) -> pd.DataFrame:
    """The chapter's training time in one figure, and how many sources it covers."""
    return pd.Series(
        {
            "total training minutes": round(summary["wall_minutes"].sum(), 1),
            "sources trained": len(summary),
        },
        name="value",
    ).to_frame()

"""Figures and tables for the label audit (chapter 04), so the notebook stays thin."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from cascade_defect.metrics.box_quality import BOX_KINDS
from cascade_defect.metrics.defect_rates import NO_DEFECT_FREE_NOTE
from cascade_defect.plots.common import class_colours

_BOX_METRICS = {
    "mean_best_iou": "mean best IoU",
    "recall_aware": "recall@0.5 (class)",
    "precision_aware": "precision@0.5 (class)",
    "recall_agnostic": "recall@0.5 (any class)",
    "precision_agnostic": "precision@0.5 (any class)",
    "matched_iou_aware": "IoU of class hits",
}


def confusion_heatmap(
    confusion: pd.DataFrame,
    predicted_label: str = "pseudo-label",
    title: str = "Confusion matrix (numbers: images)",
    ax: Axes | None = None,
) -> Figure:
    """True class against answer: colour is the share of the row, the number is the count.

    Row shares make classes of different sizes comparable; counts keep the absolute scale.
    """
    counts = confusion.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / totals, 0.0)
    n_rows, n_cols = confusion.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.95 * n_cols, 1.2 + 0.6 * max(n_rows, 1)))
    else:
        fig = ax.figure
    sns.heatmap(
        pd.DataFrame(shares, index=confusion.index, columns=confusion.columns),
        annot=confusion.to_numpy(dtype=int),
        fmt="d",
        cmap="Blues",
        vmin=0,
        vmax=1,
        cbar_kws={"label": "share of the true class"},
        linewidths=0.5,
        ax=ax,
    )
    ax.set_xlabel(predicted_label)
    ax.set_ylabel("true class (file)")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    fig.tight_layout()
    return fig


def reliability_diagram(reliability: pd.DataFrame, ece: float | None = None) -> Figure:
    """Accuracy per equal-width confidence bin against the diagonal, with the bin counts below.

    Bars under the diagonal mean over-confidence: the annotator says more than it delivers.
    """
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = (reliability["bin_upper"] - reliability["bin_lower"]).to_numpy(dtype=float)
    lower = reliability["bin_lower"].to_numpy(dtype=float)
    filled = reliability["n"].to_numpy() > 0
    accuracy = reliability["accuracy"].to_numpy(dtype=float)
    mean_conf = reliability["mean_confidence"].to_numpy(dtype=float)
    ax.bar(
        lower[filled],
        accuracy[filled],
        width=width[filled],
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy in bin",
    )
    ax.scatter(
        mean_conf[filled],
        accuracy[filled],
        color="#c44e52",
        s=14,
        zorder=3,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    title = "Reliability diagram"
    if ece is not None and not math.isnan(ece):
        title += f" (ECE {ece:.3f})"
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax_count.bar(
        lower,
        reliability["n"].to_numpy(),
        width=width,
        align="edge",
        color="#8c8c8c",
        edgecolor="white",
    )
    ax_count.set_xlabel("stated confidence")
    ax_count.set_ylabel("answers")
    fig.tight_layout()
    return fig


def coverage_accuracy_plot(
    curve: pd.DataFrame, threshold: float, at_threshold: Mapping[str, object] | None = None
) -> Figure:
    """What a confidence threshold trades: accuracy of the kept labels against pool coverage.

    The marked point is the threshold training uses; the right panel shows both quantities as
    the threshold moves.
    """
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    if curve.empty:
        for axis in (ax, ax_t):
            axis.text(0.5, 0.5, "no answered images", ha="center", va="center")
        return fig
    ax.step(curve["coverage"], curve["accuracy"], where="post", color="#4c72b0")
    ax.set_xlabel("coverage (share of the pool kept)")
    ax.set_ylabel("accuracy of kept labels")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Coverage against accuracy")
    ax_t.step(
        curve["threshold"], curve["coverage"], where="post", label="coverage", color="#55a868"
    )
    ax_t.step(
        curve["threshold"], curve["accuracy"], where="post", label="accuracy", color="#4c72b0"
    )
    ax_t.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1)
    ax_t.set_xlabel("confidence threshold (keep answers with confidence >= threshold)")
    ax_t.set_xlim(0, 1.02)
    ax_t.set_ylim(0, 1.02)
    ax_t.set_title("Against the threshold")
    ax_t.legend(fontsize=8)
    coverage = None if at_threshold is None else at_threshold.get("coverage")
    accuracy = None if at_threshold is None else at_threshold.get("accuracy")
    if coverage is not None and accuracy is not None:
        ax.scatter([coverage], [accuracy], color="#c44e52", zorder=3)
        ax.annotate(
            f"threshold {threshold:.2f}\ncoverage {coverage:.2f}, accuracy {accuracy:.2f}",
            (coverage, accuracy),
            textcoords="offset points",
            xytext=(-10, -30),
            ha="right",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


def per_class_bars(per_class: pd.DataFrame) -> Figure:
    """Precision, recall and F1 per class: which classes the annotator confuses or misses."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    per_class[["precision", "recall", "f1"]].plot.bar(
        ax=ax, color=["#4c72b0", "#55a868", "#dd8452"], width=0.8
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("")
    ax.set_ylabel("score")
    ax.set_title("Class quality per class")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    return fig


def box_quality_plot(box_metrics: pd.DataFrame) -> Figure:
    """Overall box metrics per strategy (left) and mean best IoU per class and strategy (right)."""
    fig, (ax, ax_heat) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    if box_metrics.empty:
        for axis in (ax, ax_heat):
            axis.text(0.5, 0.5, "no box strategies", ha="center", va="center")
        return fig
    overall = box_metrics[box_metrics["class_name"] == "all"].set_index("strategy")
    overall = overall[list(_BOX_METRICS)].rename(columns=_BOX_METRICS)
    overall.T.plot.bar(ax=ax, width=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Box quality, all classes")
    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    ax.legend(title="strategy", fontsize=8)
    per_class = box_metrics[box_metrics["class_name"] != "all"].pivot(
        index="class_name", columns="strategy", values="mean_best_iou"
    )
    sns.heatmap(
        per_class.astype(float),
        annot=True,
        fmt=".2f",
        vmin=0,
        vmax=1,
        cmap="viridis",
        ax=ax_heat,
        cbar_kws={"label": "mean best IoU"},
    )
    ax_heat.set_title("Mean best IoU per ground-truth class")
    ax_heat.set_xlabel("strategy")
    ax_heat.set_ylabel("")
    fig.tight_layout()
    return fig


_BOX_KIND_LABELS = {
    "hit": "finds a defect",
    "duplicate": "second box on a found defect",
    "other_class": "defect of another class",
    "fragment": "piece of a defect",
    "loose": "on a defect, too large or off it",
    "background": "off every defect of its image",
    "defect_free": "defect-free image",
}


def box_kind_shares(box_metrics: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """Per class (and ``all``), the share of one strategy's boxes of each kind: the class-aware
    hits, then the false boxes by :func:`~cascade_defect.metrics.box_quality.false_box_kind`."""
    rows = box_metrics[box_metrics["strategy"] == strategy].set_index("class_name")
    counts = pd.DataFrame({kind: rows[f"n_{kind}"] for kind in BOX_KINDS})
    shares = counts.div(rows["n_pred"].where(rows["n_pred"] > 0), axis=0)
    return shares.assign(n_boxes=rows["n_pred"].astype(int))


def box_kind_bars(box_metrics: pd.DataFrame, strategy: str) -> Figure:
    """What one strategy's boxes are, per class: the share that finds a defect of its class and
    the false ones by kind, since a detector trained on them pays for each kind differently."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    if box_metrics.empty or strategy not in set(box_metrics["strategy"]):
        ax.text(0.5, 0.5, f"no boxes of strategy {strategy!r}", ha="center", va="center")
        ax.set_axis_off()
        return fig
    shares = box_kind_shares(box_metrics, strategy)
    labels = [f"{name} ({n:,})" for name, n in zip(shares.index, shares["n_boxes"], strict=True)]
    colours = sns.color_palette("colorblind", len(_BOX_KIND_LABELS))
    left = np.zeros(len(shares))
    for (kind, label), colour in zip(_BOX_KIND_LABELS.items(), colours, strict=True):
        values = shares[kind].fillna(0).to_numpy()
        ax.barh(labels, values, left=left, color=colour, label=label)
        left += values
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the strategy's boxes (class-aware, IoU 0.5)")
    ax.set_title(f"What the {strategy} boxes are, per class (boxes in brackets)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def failure_bars(counts: pd.DataFrame) -> Figure:
    """Failed attempts and images left without a label, per failure kind."""
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * max(len(counts), 2)))
    if counts.empty or not counts.to_numpy().any():
        ax.text(0.5, 0.5, "no failed or missing requests", ha="center", va="center")
        ax.set_axis_off()
        return fig
    counts[["failed_attempts", "images_without_label"]].plot.barh(
        ax=ax, color=["#dd8452", "#c44e52"]
    )
    ax.set_xlabel("count")
    ax.set_ylabel("")
    ax.set_title("Failures by kind")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _draw_normalised(
    ax: plt.Axes, boxes: pd.DataFrame, width: int, height: int, colours: dict, linestyle: str
) -> None:
    for row in boxes.itertuples(index=False):
        ax.add_patch(
            Rectangle(
                (row.x1 * width, row.y1 * height),
                (row.x2 - row.x1) * width,
                (row.y2 - row.y1) * height,
                fill=False,
                edgecolor=colours.get(row.class_name, "red"),
                linewidth=1.5,
                linestyle=linestyle,
            )
        )


def disagreement_gallery(
    disagreements: pd.DataFrame,
    pool: pd.DataFrame,
    gt_boxes: pd.DataFrame,
    pseudo_boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    n: int = 12,
    ncols: int = 4,
    reasoning_chars: int = 140,
) -> Figure:
    """The first ``n`` disagreements (most confident first) with both sets of boxes.

    Solid boxes are the ground truth, dashed boxes the pseudo-label, coloured by class; the
    caption gives truth, answer, confidence and the start of the model's reasoning.
    """
    shown = disagreements.head(n)
    if shown.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no disagreements", ha="center", va="center")
        ax.set_axis_off()
        return fig
    colours = class_colours(class_names)
    listing = pool.set_index("image_id")
    gt_by_image = dict(tuple(gt_boxes.groupby("image_id"))) if len(gt_boxes) else {}
    pr_by_image = dict(tuple(pseudo_boxes.groupby("image_id"))) if len(pseudo_boxes) else {}
    ncols = max(1, min(ncols, len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.3 * ncols, 4.0 * nrows + 1.2),
        squeeze=False,
        gridspec_kw={"hspace": 0.4, "wspace": 0.08},
    )
    empty = pd.DataFrame(columns=["class_name", "x1", "y1", "x2", "y2"])
    for ax, item in zip(axes.flat, shown.itertuples(index=False), strict=False):
        entry = listing.loc[item.image_id]
        width, height = int(entry["width"]), int(entry["height"])
        with Image.open(entry["path"]) as image:
            ax.imshow(np.asarray(image.convert("L")), cmap="gray", vmin=0, vmax=255)
        _draw_normalised(ax, gt_by_image.get(item.image_id, empty), width, height, colours, "-")
        _draw_normalised(ax, pr_by_image.get(item.image_id, empty), width, height, colours, "--")
        confidence = "?" if pd.isna(item.confidence) else f"{item.confidence:.2f}"
        ax.set_title(
            f"{item.image_id}\ntrue {item.true_class} / said {item.predicted} ({confidence})",
            fontsize=7,
        )
        reasoning = "" if pd.isna(item.reasoning) else str(item.reasoning)
        if len(reasoning) > reasoning_chars:
            reasoning = reasoning[: reasoning_chars - 1] + "…"
        ax.set_xlabel(textwrap.fill(reasoning, 52), fontsize=6, va="top")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_axis_off()
    handles = [
        Line2D([0], [0], color=colours[name], linewidth=2, label=name) for name in class_names
    ]
    handles += [
        Line2D([0], [0], color="black", linestyle="-", label="ground truth"),
        Line2D([0], [0], color="black", linestyle="--", label="pseudo-label"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7)
    inches = fig.get_figheight()
    fig.suptitle("Most confident wrong answers", fontsize=10, y=1 - 0.12 / inches)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.75 / inches, bottom=0.95 / inches)
    return fig


def per_class_table(per_class: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall and F1 per class, to three decimals."""
    return per_class.round(3)


def cross_class_table(images: pd.DataFrame) -> pd.DataFrame:
    """Accuracy on images whose boxes include a second class, next to the others.

    ``correct`` scores against the file's class; ``acceptable`` also accepts any class present
    in the image's boxes.
    """
    return (
        images.groupby("cross_class")
        .agg(
            images=("image_id", "size"),
            correct=("correct", "mean"),
            acceptable=("acceptable", "mean"),
        )
        .round(3)
    )


def reliability_table(reliability: pd.DataFrame) -> pd.DataFrame:
    """The reliability diagram's bins as numbers, to three decimals."""
    return reliability.round(3)


def coverage_table(coverage_rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Coverage and accuracy at a few confidence thresholds (the summary's ``coverage_table``)."""
    return pd.DataFrame(list(coverage_rows)).set_index("threshold").round(3)


def box_quality_table(box_metrics: pd.DataFrame, by_class: bool = False) -> pd.DataFrame:
    """Box quality per strategy over all classes, or per strategy and class with ``by_class``."""
    if by_class:
        return box_metrics.set_index(["strategy", "class_name"]).round(3)
    overall = box_metrics[box_metrics["class_name"] == "all"]
    return overall.set_index("strategy").drop(columns=["class_name"]).round(3)


def box_strategy_sentence(box_metrics: pd.DataFrame, trained_on: str) -> str:
    """One line per strategy (class-aware recall and precision at IoU 0.5, the measure the
    targets use), naming the one chapter 05's pseudo detector trains on."""
    overall = box_metrics[box_metrics["class_name"] == "all"]
    if overall.empty:
        return "No box strategy was scored in this run."
    parts = [
        f"`{row.strategy}` finds {row.recall_aware:.0%} of the true boxes at "
        f"{row.precision_aware:.0%} precision ({row.n_pred:,} boxes)"
        + (" ← the pseudo detector trains on these" if row.strategy == trained_on else "")
        for row in overall.sort_values("recall_aware", ascending=False).itertuples()
    ]
    return "Class-aware, at IoU 0.5: " + "; ".join(parts) + "."


def failed_attempt_table(failed_attempts: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The first ``n`` failed requests with what the model sent back."""
    return failed_attempts[["image_id", "failure_kind", "attempt", "error", "raw_text"]].head(n)


def disagreement_table(disagreements: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` most confident wrong answers, with the model's reasoning."""
    columns = ["image_id", "true_class", "predicted", "confidence", "box_classes", "reasoning"]
    return disagreements[columns].head(n)


def defect_rate_table(summary: Mapping[str, object]) -> pd.DataFrame:
    """Defect against no defect, from the audit summary: how many defect images the annotator
    let through as ``no_defect`` and how many defect-free images it gave a defect class.

    Rows are the two rates with their 95% Wilson interval and the counts behind them; without
    defect-free images the false-alarm row says so instead of showing a number.
    """
    rates = dict(summary.get("defect_rates") or {})  # type: ignore[call-overload]
    scope = summary.get("defect_scope", "answered images")
    rows = {
        "defect recall": (
            rates.get("defect_recall"),
            rates.get("defect_recall_ci_low"),
            rates.get("defect_recall_ci_high"),
            f"{rates.get('n_defects_found', 0)} of {rates.get('n_defective', 0)} defect images",
        ),
        "false-alarm rate": (
            rates.get("false_alarm_rate"),
            rates.get("false_alarm_rate_ci_low"),
            rates.get("false_alarm_rate_ci_high"),
            f"{rates.get('n_false_alarms', 0)} of {rates.get('n_defect_free', 0)} defect-free images"
            if rates.get("n_defect_free")
            else NO_DEFECT_FREE_NOTE,
        ),
    }
    table = pd.DataFrame.from_dict(
        rows, orient="index", columns=["value", "ci_low", "ci_high", "images"]
    )
    table.index.name = f"defect vs no defect ({scope})"
    return table.round(4)

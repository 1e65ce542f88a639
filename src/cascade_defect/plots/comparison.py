"""Figures and tables for chapter 06; each takes a table of chapter 06's results.

Kept apart from the computations so the numbers can be tested without matplotlib and the
figures restyled without touching them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cascade_defect.metrics.defect_rates import NO_DEFECT_FREE_NOTE
from cascade_defect.plots.training import _METRIC_LABELS
from cascade_defect.train.sources import HUMAN, PSEUDO


def headline_source(metrics: pd.DataFrame) -> str:
    """The model the chapter's single-model figures show: pseudo if trained, else human."""
    for source in (PSEUDO, HUMAN):
        if source in metrics.index:
            return source
    return str(metrics.index[0])


def map_with_intervals(
    metrics: pd.DataFrame,
    target_ratio: float | None = None,
    column: str = "map50",
    low_column: str | None = None,
    high_column: str | None = None,
) -> Figure:
    """Test mAP50 (or another ``column``) per model with its bootstrap 95% interval.

    With ``target_ratio`` (e.g. 0.97) a dashed line marks that share of the human model's score,
    the bar the pseudo-labelled model has to clear. The classification track passes
    ``column="accuracy", low_column="ci_low", high_column="ci_high"``.
    """
    low_column = low_column or f"{column}_ci_low"
    high_column = high_column or f"{column}_ci_high"
    if metrics.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no models scored", ha="center", va="center")
        ax.set_axis_off()
        return fig
    frame = metrics.sort_values(column)
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(frame), 1) + 1.4))
    y = np.arange(len(frame))
    low = frame[column] - frame.get(low_column, frame[column])
    high = frame.get(high_column, frame[column]) - frame[column]
    ax.errorbar(frame[column], y, xerr=[low, high], fmt="o", color="#4c72b0", capsize=4)
    ax.set_yticks(y, frame.index)
    if target_ratio is not None and "human" in metrics.index:
        bar = target_ratio * float(metrics.loc["human", column])
        ax.axvline(bar, ls="--", color="#c44e52", lw=1)
        ax.text(bar, len(frame) - 0.5, f" {target_ratio:.0%} of human", color="#c44e52", fontsize=8)
    label = _METRIC_LABELS.get(column, column)
    ax.set_xlabel(f"test {label} (95% bootstrap interval over test images)")
    ax.set_title("Golden test set")
    fig.tight_layout()
    return fig


def difference_distribution(
    samples: Mapping[str, np.ndarray], reference: str = "human", candidate: str = "pseudo"
) -> Figure:
    """Bootstrap distribution of mAP50(candidate) − mAP50(reference), paired over images."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    if reference not in samples or candidate not in samples:
        ax.text(0.5, 0.5, f"needs both {reference!r} and {candidate!r}", ha="center", va="center")
        return fig
    diff = np.asarray(samples[candidate]) - np.asarray(samples[reference])
    ax.hist(diff[np.isfinite(diff)], bins=40, color="#8172b3", alpha=0.85)
    low, high = np.nanquantile(diff, [0.025, 0.975])
    for value in (low, high):
        ax.axvline(value, ls="--", color="k", lw=1)
    ax.axvline(0, color="#c44e52", lw=1.5)
    ax.set_xlabel(f"mAP50 {candidate} − {reference}")
    ax.set_ylabel("bootstrap samples")
    ax.set_title(f"Paired difference, 95% interval [{low:+.3f}, {high:+.3f}]")
    fig.tight_layout()
    return fig


def per_class_heatmap(per_class: pd.DataFrame) -> Figure:
    """AP50 per class (rows) and model (columns): which defects each label source gets wrong."""
    fig, ax = plt.subplots(
        figsize=(1.1 * max(per_class.shape[1], 1) + 3, 0.45 * len(per_class) + 1.5)
    )
    sns.heatmap(per_class, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax)
    ax.set_xlabel("model")
    ax.set_ylabel("")
    ax.set_title("Test AP50 per class")
    fig.tight_layout()
    return fig


def noise_curve(metrics: pd.DataFrame) -> Figure:
    """Test mAP50 against the share of pool images relabelled to a wrong class.

    When the noise sources train on ``human``'s schedule, human is the zero-noise point of the
    line. When they train on a shorter one, they are joined among themselves only and human is
    drawn apart, with the epochs in the legend, so a schedule difference is not read as a noise
    effect. The pseudo-labelled model is a horizontal band either way.
    """
    frame = metrics.copy()
    frame["noise_rate"] = pd.to_numeric(frame["noise_rate"], errors="coerce")
    has_ci = {"map50_ci_low", "map50_ci_high"} <= set(frame.columns)

    def epochs_of(rows: pd.DataFrame) -> str:
        if "epochs" not in rows or rows["epochs"].isna().all():
            return ""
        values = sorted({int(v) for v in rows["epochs"].dropna()})
        return f", {'/'.join(map(str, values))} epochs"

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    curve = frame.dropna(subset=["noise_rate"])
    same_schedule = bool(
        "human" in frame.index
        and "epochs" in frame
        and len(curve)
        and set(curve["epochs"].dropna()) == {frame.loc["human", "epochs"]}
    )
    if same_schedule:  # human labels are the zero-noise point of the same sweep
        curve = pd.concat([frame.loc[["human"]].assign(noise_rate=0.0), curve])
    curve = curve.sort_values("noise_rate")
    if len(curve):
        err = (
            [curve["map50"] - curve["map50_ci_low"], curve["map50_ci_high"] - curve["map50"]]
            if has_ci
            else None
        )
        ax.errorbar(
            curve["noise_rate"],
            curve["map50"],
            yerr=err,
            fmt="o-",
            capsize=4,
            label=f"human labels + noise{epochs_of(curve)}",
        )
    if "human" in frame.index and not same_schedule:
        row = frame.loc[["human"]]
        err = (
            [row["map50"] - row["map50_ci_low"], row["map50_ci_high"] - row["map50"]]
            if has_ci
            else None
        )
        ax.errorbar(
            [0.0],
            row["map50"],
            yerr=err,
            fmt="s",
            color="k",
            capsize=4,
            label=f"human{epochs_of(row)}",
        )
    if "pseudo" in frame.index:
        row = frame.loc["pseudo"]
        ax.axhline(row["map50"], color="#dd8452", label=f"pseudo{epochs_of(frame.loc[['pseudo']])}")
        if has_ci:
            ax.axhspan(row["map50_ci_low"], row["map50_ci_high"], color="#dd8452", alpha=0.2)
    ax.set_xlabel("share of pool images relabelled to a wrong class")
    ax.set_ylabel("test mAP50")
    ax.set_title("How much label noise the detector tolerates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def kpi_sweep(
    thresholds: pd.DataFrame, source: str, precision: float = 0.8, recall: float = 0.8
) -> Figure:
    """Pooled precision and recall against the confidence threshold, with the KPI bars."""
    frame = thresholds[thresholds["source"] == source]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(frame["threshold"], frame["precision"], label="precision")
    ax.plot(frame["threshold"], frame["recall"], label="recall")
    if "map50_kept" in frame:
        ax.plot(frame["threshold"], frame["map50_kept"], ls=":", label="mAP50 of kept detections")
    ax.axhline(precision, color="#c44e52", ls="--", lw=1)
    if recall != precision:
        ax.axhline(recall, color="#c44e52", ls="--", lw=1)
    ok = frame[(frame["precision"] >= precision) & (frame["recall"] >= recall)]
    if len(ok):
        ax.axvspan(
            ok["threshold"].min(),
            ok["threshold"].max(),
            color="#55a868",
            alpha=0.15,
            label="KPI P/R met",
        )
    ax.set_xlabel("confidence threshold")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Precision and recall vs threshold ({source}, IoU 0.5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cascade_tradeoff(cascade: pd.DataFrame) -> Figure:
    """Cascade accuracy against the share of images escalated and against cost per 1,000 images."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if cascade.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no cascade computed", ha="center", va="center")
        return fig
    axes[0].plot(cascade["escalated_share"], cascade["accuracy"], marker="o", ms=3)
    for _, row in cascade.iloc[:: max(1, len(cascade) // 6)].iterrows():
        axes[0].annotate(
            f"{row['threshold']:.2f}", (row["escalated_share"], row["accuracy"]), fontsize=7
        )
    axes[0].set_xlabel("share of images escalated to the annotator")
    axes[0].set_ylabel("image-level accuracy")
    axes[0].set_title("Accuracy vs escalation (labels: threshold)")
    if "usd_per_1000_cascade" in cascade:
        axes[1].plot(cascade["usd_per_1000_cascade"], cascade["accuracy"], marker="o", ms=3)
        axes[1].set_xlabel("USD per 1,000 images")
        axes[1].set_ylabel("image-level accuracy")
        axes[1].set_title("Accuracy vs cost")
    fig.tight_layout()
    return fig


def confusion_matrices(confusion: Mapping[str, pd.DataFrame]) -> Figure:
    """One confusion matrix per classifier, side by side: where each label source's model errs.

    Cells are coloured by the share of the true class and annotated with image counts.
    """
    from cascade_defect.plots.audit import confusion_heatmap

    sources = list(confusion)
    if not sources:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no classifiers", ha="center", va="center")
        return fig
    n_classes = max(len(table.columns) for table in confusion.values())
    fig, axes = plt.subplots(
        1,
        len(sources),
        figsize=(len(sources) * (1.4 + 0.75 * n_classes), 1.6 + 0.55 * n_classes),
        squeeze=False,
    )
    for ax, source in zip(axes[0], sources, strict=True):
        confusion_heatmap(confusion[source], predicted_label="predicted", title=source, ax=ax)
    fig.tight_layout()
    return fig


def metrics_table(metrics: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """Test metrics per model, rounded for reading."""
    return metrics.round(decimals)


def kpi_table(kpi: pd.DataFrame) -> pd.DataFrame:
    """Per model: mAP, the chosen threshold, pooled precision and recall there, and the verdict."""
    return kpi[["map", "threshold", "precision", "recall", "met", "verdict"]]


def cascade_table(cascade: pd.DataFrame) -> pd.DataFrame:
    """Every threshold of the cascade sweep, rounded for reading (columns with no value left out,
    such as the false-alarm rate of a dataset without defect-free images)."""
    return cascade.dropna(axis=1, how="all").round(4)


def cascade_summary(
    cascade: pd.DataFrame, shares: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
) -> pd.DataFrame:
    """A few rows of the cascade sweep: the threshold nearest each escalation share in
    ``shares`` (YOLO alone at 0, the annotator alone at 1) and the most accurate one."""
    if cascade.empty:
        return cascade
    picked = [(cascade["escalated_share"] - share).abs().idxmin() for share in shares]
    best = cascade[cascade["accuracy"] == cascade["accuracy"].max()]
    picked.append(best["escalated_share"].idxmin())
    shown = ["threshold", "escalated_share", "accuracy", "usd_per_1000_cascade"]
    if _has_values(cascade, "false_alarm_rate"):  # only where defect-free images exist
        shown[3:3] = ["n_cleared", "defect_recall", "false_alarm_rate"]
    columns = [c for c in shown if c in cascade]
    return cascade.loc[sorted(set(picked)), columns].round(4)


def classification_comparison_table(
    comparison: Mapping[str, object], latency: Mapping[str, object]
) -> pd.DataFrame:
    """The paired accuracy difference and the classifier's CPU latency, one figure per row."""
    values = {**comparison, **{f"latency.{k}": v for k, v in latency.items()}}
    return pd.Series(values, name="value").to_frame()


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


def _rate_text(rate: object, low: object, high: object) -> str:
    if rate is None or pd.isna(rate):  # type: ignore[arg-type]
        return "no images"
    if low is None or pd.isna(low):  # type: ignore[arg-type]
        return f"{rate:.3f}"
    return f"{rate:.3f} [{low:.3f}, {high:.3f}]"


def defect_rate_table(defect_rates: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per model: mAP50 next to defect recall and false-alarm rate (95% Wilson intervals) at the
    threshold that calls an image defective, with the image counts behind each rate."""
    if defect_rates.empty:
        return pd.DataFrame()
    table = pd.DataFrame(index=defect_rates.index)
    if "map50" in metrics:
        table["mAP50"] = metrics["map50"].reindex(table.index).round(4)
    table["threshold"] = defect_rates["threshold"]
    table["defect recall (95% interval)"] = [
        _rate_text(r.defect_recall, r.defect_recall_ci_low, r.defect_recall_ci_high)
        for r in defect_rates.itertuples()
    ]
    table["defects missed / defective images"] = [
        f"{r.n_defects_missed} / {r.n_defective}" for r in defect_rates.itertuples()
    ]
    if int(defect_rates["n_defect_free"].max()) == 0:
        table["false-alarm rate"] = NO_DEFECT_FREE_NOTE
        return table
    table["false-alarm rate (95% interval)"] = [
        _rate_text(r.false_alarm_rate, r.false_alarm_rate_ci_low, r.false_alarm_rate_ci_high)
        for r in defect_rates.itertuples()
    ]
    table["false alarms / defect-free images"] = [
        f"{r.n_false_alarms} / {r.n_defect_free}" for r in defect_rates.itertuples()
    ]
    return table


def defect_tradeoff(defect_curve: pd.DataFrame, defect_rates: pd.DataFrame) -> Figure:
    """Defect recall and false-alarm rate against the confidence threshold per model (left), and
    recall against false alarms (right), each model's operating threshold marked.

    Without defect-free images only the recall is drawn and the right panel says why.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if defect_curve.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no detector scored", ha="center", va="center")
        return fig
    alarms = _has_values(defect_curve, "false_alarm_rate")
    for i, (source, rows) in enumerate(defect_curve.groupby("source", sort=False)):
        colour = f"C{i}"
        axes[0].plot(rows["threshold"], rows["defect_recall"], color=colour, label=source)
        if alarms:
            axes[0].plot(rows["threshold"], rows["false_alarm_rate"], color=colour, ls="--")
            axes[1].plot(rows["false_alarm_rate"], rows["defect_recall"], color=colour)
        if source in defect_rates.index:
            point = defect_rates.loc[source]
            axes[0].axvline(point["threshold"], color=colour, lw=0.8, ls=":")
            if alarms and pd.notna(point["false_alarm_rate"]):
                axes[1].plot(point["false_alarm_rate"], point["defect_recall"], "o", color=colour)
    axes[0].set_xlabel("confidence threshold (an image is defective with a box at or above it)")
    axes[0].set_ylabel("rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("Defect recall (solid)" + (" and false alarms (dashed)" if alarms else ""))
    axes[0].legend(fontsize=8)
    if alarms:
        axes[1].set_xlabel("false-alarm rate on defect-free images")
        axes[1].set_ylabel("defect recall")
        axes[1].set_xlim(-0.02, 1.02)
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].set_title("Recall against false alarms (dot: operating threshold)")
    else:
        axes[1].text(0.5, 0.5, NO_DEFECT_FREE_NOTE.replace(": ", ":\n"), ha="center", va="center")
        axes[1].set_axis_off()
    fig.tight_layout()
    return fig


def cascade_defect_rates(cascade: pd.DataFrame) -> Figure:
    """The cascade's defect recall and false-alarm rate against the share of images escalated:
    what escalating buys on the two errors a production line counts."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if not _has_values(cascade, "defect_recall"):
        ax.text(0.5, 0.5, "no cascade computed", ha="center", va="center")
        return fig
    ax.plot(cascade["escalated_share"], cascade["defect_recall"], marker="o", ms=3, label="recall")
    if _has_values(cascade, "false_alarm_rate"):
        ax.plot(
            cascade["escalated_share"],
            cascade["false_alarm_rate"],
            marker="o",
            ms=3,
            ls="--",
            label="false-alarm rate",
        )
    else:
        ax.text(0.5, 0.3, NO_DEFECT_FREE_NOTE, ha="center", fontsize=8, transform=ax.transAxes)
    ax.set_xlabel("share of images escalated to the annotator")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Cascade: defect recall and false alarms vs escalation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

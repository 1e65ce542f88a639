"""The book's answer in one figure: pseudo-label models against human-label models, both tracks.

Chapter 06 shows it from its results and the preface opens with it, drawn from chapter 06's files
(``test_metrics.csv`` and ``classification/test_accuracy.csv``) by :func:`write_verdict`, which
also writes the figure's caption and a text alternative that states the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

REFERENCE = "human"
CANDIDATE = "pseudo"
VERDICT_FIGURE = Path("figures") / "verdict.png"
VERDICT_INCLUDE = "_verdict.md"

_COLOURS = {REFERENCE: "#4c72b0", CANDIDATE: "#dd8452"}
_OTHER = "#8c8c8c"


@dataclass(frozen=True)
class Track:
    """One panel: a metrics table indexed by label source, and which columns to read."""

    title: str
    metrics: pd.DataFrame
    column: str
    low: str
    high: str
    unit: str


def detection_track(metrics: pd.DataFrame) -> Track:
    return Track(
        "Detection (boxes)", _by_source(metrics), "map50", "map50_ci_low", "map50_ci_high", "mAP50"
    )


def classification_track(metrics: pd.DataFrame) -> Track:
    return Track(
        "Image class", _by_source(metrics), "accuracy", "ci_low", "ci_high", "top-1 accuracy"
    )


def _by_source(metrics: pd.DataFrame) -> pd.DataFrame:
    if "source" in metrics.columns:
        return metrics.set_index("source")
    return metrics


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    first = [s for s in (REFERENCE, CANDIDATE) if s in frame.index]
    return frame.loc[[*first, *(s for s in frame.index if s not in first)]]


def track_ratio(track: Track) -> float | None:
    """The candidate's score as a share of the reference's (point estimates), if both ran."""
    frame = track.metrics
    if not {REFERENCE, CANDIDATE} <= set(frame.index):
        return None
    reference = float(frame.loc[REFERENCE, track.column])
    return float(frame.loc[CANDIDATE, track.column]) / reference if reference > 0 else None


def track_sentence(track: Track, target_ratio: float) -> str:
    """The panel's verdict in words: the numbers a reader who cannot see the figure needs."""
    frame, ratio = track.metrics, track_ratio(track)
    if ratio is None:
        return f"{track.title}: no {CANDIDATE}-against-{REFERENCE} comparison in this run."

    def scored(source: str) -> str:
        row = frame.loc[source]
        interval = ""
        if {track.low, track.high} <= set(frame.columns) and pd.notna(row[track.low]):
            interval = f" (95% interval {row[track.low]:.3f} to {row[track.high]:.3f})"
        return f"{source} {row[track.column]:.3f}{interval}"

    outcome = "meets" if ratio >= target_ratio else "misses"
    return (
        f"{track.title}, test {track.unit}: {scored(CANDIDATE)} against {scored(REFERENCE)}; "
        f"{CANDIDATE} reaches {ratio:.1%} of {REFERENCE} and {outcome} the {target_ratio:.0%} target."
    )


def verdict(
    detection: pd.DataFrame,
    classification: pd.DataFrame | None = None,
    target_ratio: float = 0.97,
) -> Figure:
    """Test score with its 95% bootstrap interval per label source, one panel per track, and the
    line the pseudo-label model has to reach (``target_ratio`` of the human-label model)."""
    tracks = [detection_track(detection)]
    if classification is not None and len(classification):
        tracks.append(classification_track(classification))
    fig, axes = plt.subplots(
        1, len(tracks), figsize=(5.6 * len(tracks), 0.45 * len(detection) + 2.2), squeeze=False
    )
    for ax, track in zip(axes[0], tracks, strict=True):
        _draw_track(ax, track, target_ratio)
    fig.suptitle(
        "Golden test set: models trained on pseudo-labels against human labels", fontsize=11
    )
    fig.tight_layout()
    return fig


def _draw_track(ax: plt.Axes, track: Track, target_ratio: float) -> None:
    if track.metrics.empty:
        ax.text(0.5, 0.5, "no models scored", ha="center", va="center")
        ax.set_axis_off()
        return
    frame = _ordered(track.metrics)
    y = np.arange(len(frame))[::-1]
    for position, (source, row) in zip(y, frame.iterrows(), strict=True):
        value = float(row[track.column])
        low = float(row.get(track.low, value))
        high = float(row.get(track.high, value))
        ax.errorbar(
            value,
            position,
            xerr=[[value - low], [high - value]],
            fmt="o",
            capsize=4,
            color=_COLOURS.get(str(source), _OTHER),
        )
        ax.annotate(
            f"{value:.3f}",
            (value, position),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_yticks(y, frame.index)
    ax.set_ylim(-0.7, len(frame) - 0.3)
    ax.set_xlim(0, 1.02)
    ratio = track_ratio(track)
    if REFERENCE in frame.index:
        bar = target_ratio * float(frame.loc[REFERENCE, track.column])
        ax.axvline(bar, ls="--", color="#c44e52", lw=1)
        right = bar > 0.75  # keep the label inside the axes
        ax.text(
            bar,
            -0.6,
            f" {target_ratio:.0%} of {REFERENCE} ",
            color="#c44e52",
            fontsize=8,
            ha="right" if right else "left",
        )
    outcome = ""
    if ratio is not None:
        outcome = f"\n{CANDIDATE} = {ratio:.1%} of {REFERENCE}: " + (
            "target met" if ratio >= target_ratio else "target missed"
        )
    ax.set_title(f"{track.title}{outcome}", fontsize=10)
    ax.set_xlabel(f"test {track.unit} (95% bootstrap interval)")


def write_verdict(project_root: Path, comparison_dir: Path, target_ratio: float = 0.97) -> Path:
    """Draw the verdict from chapter 06's files into ``figures/verdict.png`` and write
    ``_verdict.md``, the figure with its caption and text alternative, which the preface includes.

    Before chapter 06 has run, ``_verdict.md`` says so and no figure is drawn.
    """
    include = Path(project_root) / VERDICT_INCLUDE
    metrics_file = Path(comparison_dir) / "test_metrics.csv"
    if not metrics_file.exists():
        include.write_text("*The verdict figure appears here once chapter 06 has run.*\n")
        return include
    detection = pd.read_csv(metrics_file, index_col=0)
    accuracy_file = Path(comparison_dir) / "classification" / "test_accuracy.csv"
    classification = pd.read_csv(accuracy_file, index_col=0) if accuracy_file.exists() else None
    figure = verdict(detection, classification, target_ratio=target_ratio)
    target = Path(project_root) / VERDICT_FIGURE
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110, metadata={"Software": None})
    plt.close(figure)
    tracks = [detection_track(detection)]
    if classification is not None and len(classification):
        tracks.append(classification_track(classification))
    panels = "one panel" if len(tracks) == 1 else "two panels, detection and image class"
    alt = (
        f"Dot plot with {panels}: one dot per label source with its 95% interval "
        f"and a dashed line at {target_ratio:.0%} of the human-label model. "
        + " ".join(track_sentence(t, target_ratio) for t in tracks)
    )
    caption = (
        "The verdict on the golden test set: each model trained on pseudo-labels against the "
        f"same model trained on human labels, with the {target_ratio:.0%} target (chapter 6)."
    )
    include.write_text(
        f'![{caption}]({VERDICT_FIGURE.as_posix()}){{#fig-verdict fig-alt="{_attribute(alt)}"}}\n'
    )
    return include


def _attribute(text: str) -> str:
    """Text safe inside a double-quoted Pandoc attribute."""
    return text.replace("\\", "\\\\").replace('"', "'")

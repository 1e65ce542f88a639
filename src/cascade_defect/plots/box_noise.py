"""The box-noise map: how good pseudo-boxes must be, read off the sweep of spoiled human boxes.

``scripts/bench_box_noise.py`` trains YOLOv8n on the pool's human boxes spoiled one way at a
time (boxes dropped, false boxes added, boxes jittered, neighbours merged) and writes a table
with each variant's box quality and its test mAP50 as a share of the clean anchor's, plus a
manifest beside it. Chapter 06 reads that table (when one is there), puts the pseudo source's
own box quality from chapter 04 on the same axes and its achieved share of the human model's
mAP50 next to it, so the reader sees which failure of the pseudo-boxes costs the detector most.
The reading of "quality needed" is :func:`~cascade_defect.train.box_noise.quality_needed`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from cascade_defect.data.tables import read_table
from cascade_defect.locations import PathAnchors
from cascade_defect.plots.book import BenchmarkTable, benchmark_files, message_figure
from cascade_defect.train.box_noise import BOX_NOISE_KINDS, MIX_KIND, QUALITY_AXIS, mix_text
from cascade_defect.train.simulated_verifier import VERIFIED
from cascade_defect.train.sources import HUMAN, PSEUDO

#: The shares of the anchor's mAP50 the map marks and the needed-quality table reads.
TARGETS: tuple[float, ...] = (0.9, 0.97)

#: Panel order and axis labels: each quality figure the sweep moves, as chapter 04 names it.
AXIS_LABELS: dict[str, str] = {
    "box_recall": "box recall",
    "box_precision": "box precision",
    "mean_iou": "mean best IoU",
}

#: Chapter 04's ``box_metrics.csv`` columns that place the pseudo source on each axis. Class-aware:
#: a pseudo-box of the wrong class teaches the detector that class, so it counts as a miss and a
#: false box; the sweep's spoiled boxes keep their true classes, so for them both readings agree.
PSEUDO_COLUMNS: dict[str, str] = {
    "box_recall": "recall_aware",
    "box_precision": "precision_aware",
    "mean_iou": "mean_best_iou_same_class",
}

_MIX_COLOUR = "black"
#: A mix whose box quality is this close to the pseudo source's on every axis is compared with it.
_CLOSE_QUALITY = 0.1
_KIND_COLOURS = {
    "drop": "#4c72b0",
    "merge": "#8172b3",
    "miss": "#64b5cd",
    "false_boxes": "#55a868",
    "fragments": "#937860",
    "jitter": "#c44e52",
    "replace": "#da8bc3",
}
_PSEUDO_COLOUR = "#dd8452"
_TARGET_STYLES = ("dotted", "dashed", "dashdot")


class PseudoBoxes(BaseModel):
    """The pseudo source's own boxes on the sweep's axes, and the mAP50 share it reached.

    ``ratio`` is pseudo mAP50 / human mAP50 on the golden test set (chapter 06), ``epochs`` the
    schedule both trained on (chapter 05), which may differ from the sweep's. ``sweep_ratio`` is
    the same share on the sweep's own schedule, when the sweep trained the pseudo source too
    (``bench_box_noise.py --pseudo``, a current row of kind ``pseudo``): the one comparable with
    the spoiled rows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str
    box_recall: float
    box_precision: float
    mean_iou: float
    ratio: float | None = None
    epochs: int | None = None
    sweep_ratio: float | None = None

    @property
    def ratio_on_map(self) -> float | None:
        """The share the map compares with the spoiled rows: the sweep's when it has one."""
        return self.sweep_ratio if self.sweep_ratio is not None else self.ratio

    def on(self, axis: str) -> float:
        """Its quality on one of :data:`AXIS_LABELS`' axes."""
        return float(getattr(self, axis))


@dataclass(frozen=True)
class BoxNoiseBenchmark(BenchmarkTable):
    """The sweep's table and manifest as chapter 06 shows them, and ``pseudo``: the pseudo
    source's own boxes, when chapter 04 measured them."""

    pseudo: PseudoBoxes | None = None


def read_box_noise_benchmark(
    table: str | Path | None,
    where: PathAnchors,
    box_metrics: Path | None = None,
    strategy: str | None = None,
    comparison: Mapping[str, Any] | None = None,
    epochs: int | None = None,
) -> BoxNoiseBenchmark:
    """The sweep's table and manifest at ``table``, with the pseudo source's boxes beside them.

    ``table`` is written as the record writes paths (relative to the project root, or
    ``$CASCADE_...``) and read from ``where``; without a file the benchmark has no table, so a
    run without the sweep (the smoke book) still shows the section. The pseudo source is placed
    by :func:`pseudo_box_quality` from chapter 04's ``box_metrics`` for ``strategy``.
    """
    pseudo = (
        pseudo_box_quality(box_metrics, strategy, comparison, epochs)
        if box_metrics is not None and strategy is not None
        else None
    )
    found = benchmark_files(table, where)
    if pseudo is not None and found.table is not None and not found.other_pseudo_labels:
        pseudo = pseudo.model_copy(update={"sweep_ratio": sweep_pseudo_ratio(found.table)})
    return BoxNoiseBenchmark(
        found.path,
        found.table,
        found.manifest,
        found.other_test_set,
        found.other_pseudo_labels,
        pseudo=pseudo,
    )


def pseudo_box_quality(
    box_metrics: Path | pd.DataFrame,
    strategy: str,
    comparison: Mapping[str, Any] | None = None,
    epochs: int | None = None,
) -> PseudoBoxes | None:
    """Chapter 04's overall (``class_name == "all"``) box quality of ``strategy``, with the
    pseudo/human mAP50 ratio from chapter 06's ``comparison`` when it compares exactly those.

    None when the audit file is missing or does not hold that strategy (a run with image-level
    labels only, or a strategy the audit did not score).
    """
    if isinstance(box_metrics, Path):
        if not box_metrics.is_file():
            return None
        box_metrics = read_table(box_metrics)
    if not {"strategy", "class_name", *PSEUDO_COLUMNS.values()} <= set(box_metrics.columns):
        return None
    rows = box_metrics[(box_metrics["strategy"] == strategy) & (box_metrics["class_name"] == "all")]
    if rows.empty:
        return None
    row = rows.iloc[0]
    compares = dict(comparison or {})
    same_pair = (compares.get("candidate"), compares.get("reference")) == (PSEUDO, HUMAN)
    ratio = compares.get("ratio")
    if not same_pair or compares.get("metric", "map50") != "map50" or ratio is None:
        ratio = None
    return PseudoBoxes(
        strategy=strategy,
        **{axis: float(row[column]) for axis, column in PSEUDO_COLUMNS.items()},
        ratio=None if ratio is None else float(ratio),
        epochs=epochs,
    )


def sweep_pseudo_ratio(table: pd.DataFrame) -> float | None:
    """The pseudo source's share of the anchor on the sweep's schedule (its ``pseudo`` row), or
    None when the sweep did not train it on the anchor's schedule."""
    rows, _ = sweep_rows(table)
    ratios = rows.loc[rows["kind"] == PSEUDO, "ratio"].dropna()
    return float(ratios.iloc[0]) if len(ratios) else None


def sweep_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The anchor and the variants trained on the anchor's schedule, and how many were left out.

    The sweep's table keeps rows of earlier runs; a variant trained for another number of epochs
    or at another image size is not comparable with this anchor.
    """
    anchor = table[table["kind"] == HUMAN]
    if anchor.empty:
        return table.iloc[0:0], len(table)
    same = np.ones(len(table), dtype=bool)
    for column in ("epochs", "imgsz"):
        if column in table:
            same &= (table[column] == anchor[column].iloc[0]).to_numpy()
    return table[same].reset_index(drop=True), int((~same).sum())


def box_noise_map(
    table: pd.DataFrame | None,
    pseudo: PseudoBoxes | None = None,
    targets: Sequence[float] = TARGETS,
) -> Figure:
    """mAP50 as a share of the anchor's against box quality, one panel per quality axis.

    Box recall carries ``drop``, ``miss`` and ``merge``, box precision ``false_boxes``, mean
    best IoU ``jitter`` (``fragments`` and ``replace`` too, on precision and recall); a mix of
    several kinds is a diamond on every panel at its own quality; each line runs from the anchor
    (clean boxes, share 1) through the levels tried,
    each point labelled with its level, and a cross marks where it falls below a target. The
    pseudo source's own quality is a vertical line on every panel with a star at its achieved
    share (a triangle on the axis when no share is known): filled at its share on the sweep's
    schedule when the sweep trained it, hollow at chapter 5's.
    """
    if table is None:
        return message_figure("no box-noise benchmark: run scripts/bench_box_noise.py")
    rows, _ = sweep_rows(table)
    if rows.empty or rows["ratio"].isna().all():
        return message_figure("the box-noise table has no anchor with a positive mAP50")
    anchor = rows[rows["kind"] == HUMAN].iloc[:1]
    mixes = rows[rows["kind"] == MIX_KIND].dropna(subset=["ratio"])
    needed = quality_needed(rows, targets)
    fig, axes = plt.subplots(1, len(AXIS_LABELS), figsize=(12, 3.9), sharey=True)
    shares = [*rows["ratio"].dropna()]
    if pseudo is not None:
        shares.extend(r for r in (pseudo.ratio, pseudo.sweep_ratio) if r is not None)
    low, high = min([*shares, *targets]) - 0.05, max([*shares, 1.0]) + 0.04
    for ax, (axis, label) in zip(axes, AXIS_LABELS.items(), strict=True):
        kinds = [k for k, a in QUALITY_AXIS.items() if a == axis and (rows["kind"] == k).any()]
        for kind in kinds:
            points = pd.concat([anchor, rows[rows["kind"] == kind]])
            points = points.dropna(subset=[axis, "ratio"]).sort_values(axis, ascending=False)
            colour = _KIND_COLOURS.get(kind)
            ax.plot(points[axis], points["ratio"], "o-", color=colour, label=kind, ms=4)
            for point in points[points["kind"] == kind].itertuples(index=False):
                ax.annotate(
                    f"{point.level:g}",
                    (getattr(point, axis), point.ratio),
                    textcoords="offset points",
                    xytext=(3, 4),
                    fontsize=7,
                    color=colour,
                )
            crossed = needed[(needed["kind"] == kind) & (needed["note"] == "interpolated")]
            ax.plot(crossed["quality_needed"], crossed["target"], "x", color=colour, ms=7, mew=2)
        for number, mix in enumerate(mixes.itertuples(index=False), start=1):
            ax.plot(
                [getattr(mix, axis)], [mix.ratio], "D", color=_MIX_COLOUR, ms=6,
                label="several kinds at once" if number == 1 else None,
            )  # fmt: skip
            ax.annotate(
                f"mix {number}",
                (getattr(mix, axis), mix.ratio),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=_MIX_COLOUR,
            )
        if not kinds and mixes.empty:
            ax.text(0.5, 0.5, "not in this sweep", transform=ax.transAxes, ha="center")
        for target, style in zip(targets, _TARGET_STYLES, strict=False):
            ax.axhline(target, color="grey", ls=style, lw=1, label=f"{target:.0%} of anchor")
        if pseudo is not None and math.isfinite(pseudo.on(axis)):
            value = pseudo.on(axis)
            ax.axvline(value, color=_PSEUDO_COLOUR, ls="-.", lw=1)
            name = f"pseudo ({pseudo.strategy}): {value:.2f}"
            if pseudo.sweep_ratio is not None:
                ax.plot([value], [pseudo.sweep_ratio], "*", color=_PSEUDO_COLOUR, ms=13, label=name)
            if pseudo.ratio is not None:
                ax.plot(
                    [value], [pseudo.ratio], "*", color=_PSEUDO_COLOUR, ms=13,
                    mfc="none" if pseudo.sweep_ratio is not None else _PSEUDO_COLOUR,
                    label=f"{name} (chapter 5)" if pseudo.sweep_ratio is not None else name,
                )  # fmt: skip
            if pseudo.ratio is None and pseudo.sweep_ratio is None:
                on_axis = ax.get_xaxis_transform()  # x in data, y in axes: on the x axis
                ax.plot(
                    [value],
                    [0.0],
                    "^",
                    color=_PSEUDO_COLOUR,
                    ms=10,
                    clip_on=False,
                    label=name,
                    transform=on_axis,
                )
        ax.set_xlabel(label)
        ax.set_xlim(right=1.02)
        ax.legend(fontsize=7, loc="best", framealpha=0.5)  # the stars show through
    axes[0].set_ylabel("test mAP50 / anchor's")
    axes[0].set_ylim(low, high)
    epochs = anchor["epochs"].iloc[0] if "epochs" in anchor else math.nan
    fig.suptitle(
        "Detector quality against box quality: human boxes spoiled one way at a time"
        + (" and several at once (diamonds)" if len(mixes) else "")
        + (f" ({epochs:g} epochs each)" if math.isfinite(epochs) else "")
    )
    fig.tight_layout()
    return fig


def _meets(pseudo_value: float, row: Any) -> str:
    """Whether a quality clears one line of the needed-quality table, in words."""
    if not math.isfinite(pseudo_value):
        return "not measured"
    if row.note == "anchor below target":
        return "no"
    if row.note == "not reached":
        if pseudo_value >= row.lowest_tried:
            return "yes"
        return "not known (below every level tried)"
    return "yes" if pseudo_value >= row.quality_needed else "no"


def needed_quality(
    table: pd.DataFrame, pseudo: PseudoBoxes | None = None, targets: Sequence[float] = TARGETS
) -> pd.DataFrame:
    """Per kind and target, the box quality that keeps that share of the anchor's mAP50.

    :func:`quality_needed` on the rows trained on the anchor's schedule, with the pseudo
    source's own quality on the same axis and whether it clears the bar.
    """
    rows, _ = sweep_rows(table)
    needed = quality_needed(rows, targets)
    if pseudo is not None:
        needed["pseudo_has"] = [pseudo.on(axis) for axis in needed["axis"]]
        needed["pseudo_meets"] = [
            _meets(pseudo.on(row.axis), row) for row in needed.itertuples(index=False)
        ]
    return needed


def needed_quality_table(
    table: pd.DataFrame | None,
    pseudo: PseudoBoxes | None = None,
    targets: Sequence[float] = TARGETS,
) -> pd.DataFrame | str:
    """:func:`needed_quality` for reading (rounded, axes and notes in words), or why there is none."""
    if table is None:
        return "No box-noise benchmark: no table of needed box quality."
    if not (table["kind"] == HUMAN).any():
        return "The box-noise table has no clean anchor row: no quality can be read off."
    needed = needed_quality(table, pseudo, targets)
    shown = pd.DataFrame(
        {
            "kind": needed["kind"],
            "axis": needed["axis"].map(AXIS_LABELS),
            "target": [f"{t:.0%} of anchor" for t in needed["target"]],
            "quality needed": needed["quality_needed"].round(3),
            "reading": needed["note"].map(
                {
                    "interpolated": "between two levels tried",
                    "not reached": "every level tried keeps it",
                    "anchor below target": "the anchor itself is below",
                }
            ),
            "lowest tried": needed["lowest_tried"].round(3),
        }
    )
    if pseudo is not None:
        shown[f"pseudo ({pseudo.strategy}) has"] = needed["pseudo_has"].round(3)
        shown["pseudo clears it"] = needed["pseudo_meets"]
    return shown


def _number(value: object) -> str:
    """A count from a manifest or a CSV column (int, float or missing) as text."""
    try:
        return f"{float(value):g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "an unknown number of"


def _schedule_words(benchmark: BoxNoiseBenchmark, anchor: pd.Series) -> str:
    """The sweep's schedule from its manifest, else from the table's own columns."""
    schedule = benchmark.manifest.get("parameters", {}).get("schedule", {})
    epochs = schedule.get("epochs", anchor.get("epochs"))
    imgsz = schedule.get("imgsz", anchor.get("imgsz"))
    words = f"{_number(epochs)} epochs at image size {_number(imgsz)}"
    if "batch" in schedule:
        words += f", batch {schedule['batch']}, device `{schedule.get('device')}`"
    extra = schedule.get("ultralytics_args") or {}
    if extra:
        words += ", " + ", ".join(f"`{k}={v}`" for k, v in extra.items())
    source = "its manifest" if schedule else "its table (no manifest beside it)"
    return f"{words} (read from {source})"


def _pseudo_words(pseudo: PseudoBoxes | None) -> str:
    if pseudo is None:
        return (
            "Chapter 4 measured no boxes for the pseudo source's box strategy, so it is not "
            "placed on the map."
        )
    quality = ", ".join(f"{label} {pseudo.on(axis):.2f}" for axis, label in AXIS_LABELS.items())
    words = (
        f"The pseudo source's own boxes (`{pseudo.strategy}`, chapter 4, class-aware): {quality}."
    )
    if pseudo.ratio is not None:
        words += f" Its detector reached {pseudo.ratio:.0%} of the human model's test mAP50"
        words += f" after {pseudo.epochs} epochs (chapter 5)." if pseudo.epochs else "."
    if pseudo.sweep_ratio is not None:
        words += (
            f" Trained on the sweep's schedule like every spoiled version (the same pseudo-labels"
            f", `--pseudo`), it kept {pseudo.sweep_ratio:.0%} of the anchor: the star the map "
            "compares with the spoiled rows."
        )
    return words


def _mix_words(variants: pd.DataFrame, pseudo: PseudoBoxes | None) -> list[str]:
    """One sentence per mix row: what it spoiled, the quality it left, the share it kept, and,
    when its boxes are about as good as the pseudo source's, how the two detectors compare."""
    words = []
    mixes = variants[variants["kind"] == MIX_KIND]
    for number, mix in enumerate(mixes.itertuples(index=False), start=1):
        steps = mix_text(str(mix.source)).replace("=", " ").replace("+", ", ")
        words.append(
            f"Mix {number} spoiled the boxes several ways at once ({steps}): box recall "
            f"{mix.box_recall:.2f}, precision {mix.box_precision:.2f}, mean best IoU "
            f"{mix.mean_iou:.2f}, and its detector kept {mix.ratio:.0%} of the anchor's mAP50."
        )
        gaps = [abs(getattr(mix, axis) - pseudo.on(axis)) for axis in AXIS_LABELS] if pseudo else []
        kept = pseudo.ratio_on_map if pseudo else None
        if kept is not None and gaps and max(gaps) <= _CLOSE_QUALITY:
            worse = kept < mix.ratio
            words.append(
                f"Its boxes are within {_CLOSE_QUALITY:.2f} of the pseudo-boxes' own quality on "
                f"every axis, {'yet' if worse else 'and'} the pseudo-label detector kept "
                f"{kept:.0%}: the pseudo-boxes' errors cost {'more' if worse else 'no more'} than "
                "the same amount of random spoiling, so which boxes go wrong matters as well as "
                "how many."
            )
    return words


def box_noise_summary(benchmark: BoxNoiseBenchmark, targets: Sequence[float] = TARGETS) -> Markdown:
    """What the sweep used and what it says about the pseudo source, or plainly that it is absent."""
    pseudo = _pseudo_words(benchmark.pseudo)
    if benchmark.table is None and benchmark.other_test_set:
        return Markdown(
            f"**{benchmark.absent_words('box-noise', 'scripts/bench_box_noise.py')}** The map "
            f"and the table below are empty. {pseudo}"
        )
    if benchmark.table is None:
        where = f"`{benchmark.path}`" if benchmark.path else "no file was named"
        return Markdown(
            f"**No box-noise benchmark in this run.** The sweep's table ({where}) is not there, "
            "so the map and the table below are empty. `scripts/bench_box_noise.py` writes it "
            f"(with its manifest beside it). {pseudo}"
        )
    rows, left_out = sweep_rows(benchmark.table)
    if rows.empty:
        return Markdown(f"**The box-noise table `{benchmark.path}` has no clean anchor row.**")
    anchor = rows[rows["kind"] == HUMAN].iloc[0]
    variants = rows[~rows["kind"].isin([HUMAN, PSEUDO, VERIFIED])]
    git = benchmark.manifest.get("git", {})
    lines = [
        f"The sweep (`{benchmark.path}`) trained YOLOv8n on {len(variants)} spoiled versions of "
        f"the pool's human boxes and on the clean boxes as the anchor, each for "
        f"{_schedule_words(benchmark, anchor)}; the anchor reached test mAP50 "
        f"{anchor['map50']:.3f}."
        + (f" Code at commit `{str(git['commit'])[:10]}`." if git.get("commit") else "")
    ]
    if left_out:
        lines.append(f"Rows of earlier runs on another schedule are left out ({left_out}).")
    if benchmark.manifest.get("complete") is False:
        lines.append("The manifest says the sweep was not complete when the table was written.")
    if benchmark.other_pseudo_labels:
        lines.append(
            f"Note: {benchmark.other_pseudo_labels}: its false boxes and fragments come from that "
            "annotation's seed-detector proposals rather than this run's (the other kinds spoil "
            "the human boxes alone)."
        )
    schedule_epochs = anchor.get("epochs")
    if benchmark.pseudo and benchmark.pseudo.epochs and schedule_epochs != benchmark.pseudo.epochs:
        lines.append(
            f"The sweep's schedule is not chapter 5's ({benchmark.pseudo.epochs} epochs): shares "
            "of each schedule's own anchor are compared, not mAP50 values."
        )
    lines.extend(_mix_words(variants, benchmark.pseudo))
    lines.append(pseudo)
    if benchmark.pseudo is not None:
        needed = needed_quality(benchmark.table, benchmark.pseudo, targets)
        top = needed[needed["target"] == max(targets)]
        bar = f"{max(targets):.0%}"
        short = [
            f"{AXIS_LABELS[row.axis]} for `{row.kind}` (needs {row.quality_needed:.2f}, has "
            f"{row.pseudo_has:.2f})"
            for row in top.itertuples(index=False)
            if row.pseudo_meets == "no"
        ]
        unknown = sorted(
            {
                AXIS_LABELS[row.axis]
                for row in top.itertuples(index=False)
                if row.pseudo_meets.startswith("not known")
            }
        )
        lines.append(
            f"Against the {bar} bar its boxes fall short on "
            + ("; ".join(short) if short else "none of the axes the sweep located a bar on")
            + "."
        )
        if unknown:
            lines.append(
                f"On {' and '.join(unknown)} the pseudo-boxes lie below every level tried while "
                f"the detector still kept {bar}: the sweep does not reach that low, so it cannot "
                "say there."
            )
    return Markdown(" ".join(lines))


def quality_needed(
    table: pd.DataFrame, targets: Sequence[float] = (0.9, 0.97), anchor: str = HUMAN
) -> pd.DataFrame:
    """Per kind and target share of the anchor's mAP50, the box quality that reaches it.

    ``table`` has one row per trained variant (``kind``, ``ratio`` to the anchor's mAP50 and the
    quality columns of :func:`pixel_box_quality`) plus the anchor's row (``kind == anchor``).
    Along each kind's :data:`QUALITY_AXIS`, points are taken from the best quality (the anchor)
    down; the quality where the ratio first falls below the target is interpolated linearly
    between the two points around it, so a dip at a mild level is not hidden by a recovery at a
    harsher one. When no level tried falls below the target, the target is ``not reached`` and
    ``quality_needed`` is NaN: the lowest quality tried (``lowest_tried``) is already enough.
    """
    anchor_rows = table[table["kind"] == anchor]
    if anchor_rows.empty:
        raise ValueError(f"the table has no {anchor!r} row to compare with")
    rows = []
    for kind in [k for k in BOX_NOISE_KINDS if (table["kind"] == k).any()]:
        axis = QUALITY_AXIS[kind]
        points = pd.concat([anchor_rows.iloc[:1], table[table["kind"] == kind]])
        points = points[[axis, "ratio"]].astype(float).dropna()
        points = points.sort_values(axis, ascending=False, kind="stable").to_numpy()
        for target in targets:
            needed, note = math.nan, "not reached"
            below = np.flatnonzero(points[:, 1] < target)
            if len(below) and below[0] == 0:
                needed, note = points[0, 0], "anchor below target"
            elif len(below):
                (q_hi, r_hi), (q_lo, r_lo) = points[below[0] - 1], points[below[0]]
                needed = q_hi + (r_hi - target) / (r_hi - r_lo) * (q_lo - q_hi)
                note = "interpolated"
            rows.append(
                {
                    "kind": kind,
                    "axis": axis,
                    "target": target,
                    "quality_needed": needed,
                    "note": note,
                    "lowest_tried": float(points[-1, 0]) if len(points) else math.nan,
                }
            )
    return pd.DataFrame(
        rows, columns=["kind", "axis", "target", "quality_needed", "note", "lowest_tried"]
    )

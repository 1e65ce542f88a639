"""The verdict over several draws of the seeds: chapter 06's small robustness table.

``scripts/bench_seed_draws.py`` repeats the pseudo-vs-human comparison with the seeds drawn again
(the golden test set unchanged) and writes one row per draw with a manifest beside it. The book
keeps one draw; this table says how far its ratio could move had other images been labelled.
"""

from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

from cascade_defect.locations import PathAnchors
from cascade_defect.plots.book import BenchmarkTable, benchmark_files

#: The benchmark's table, one row per draw (``record`` is the book's own draw).
CSV_COLUMNS: list[str] = [
    "draw",
    "seeds",
    "class_accuracy",
    "box_recall",
    "box_precision",
    "mean_iou",
    "pseudo_map50",
    "pseudo_map50_low",
    "pseudo_map50_high",
    "human_map50",
    "human",
    "ratio",
    "ratio_low",
    "ratio_high",
    "pseudo_train_wall_seconds",
    "chapter_03_seconds",
    "chapter_05_seconds",
]


SeedDraws = BenchmarkTable
"""The benchmark's table, one row per draw, and its manifest."""


def read_seed_draws(table: str | None, where: PathAnchors) -> SeedDraws:
    """The benchmark's table at ``table`` (as the record writes paths), or none when absent."""
    return benchmark_files(table, where, dtype={"draw": str})


def seed_draw_table(draws: SeedDraws) -> pd.DataFrame:
    """One row per draw: the annotator's image accuracy, the pool boxes' quality, the pseudo
    detector's test mAP50 and its share of human's, each with its 95% interval."""
    if draws.table is None or draws.table.empty:
        return pd.DataFrame()
    table = draws.table

    def interval(value: str, low: str, high: str, percent: bool = False) -> pd.Series:
        scale, unit = (100, "%") if percent else (1, "")
        return table.apply(
            lambda r: (
                f"{r[value] * scale:.{1 if percent else 3}f}{unit} "
                f"[{r[low] * scale:.{1 if percent else 3}f}, {r[high] * scale:.{1 if percent else 3}f}]"
            ),
            axis=1,
        )

    return pd.DataFrame(
        {
            "seed draw": table["draw"].astype(str),
            "image classes right": (table["class_accuracy"] * 100).round(1).astype(str) + "%",
            "box recall": table["box_recall"].round(2),
            "box precision": table["box_precision"].round(2),
            "mean best IoU": table["mean_iou"].round(2),
            "pseudo mAP50 [95% CI]": interval(
                "pseudo_map50", "pseudo_map50_low", "pseudo_map50_high"
            ),
            "share of human [95% CI]": interval("ratio", "ratio_low", "ratio_high", percent=True),
        }
    ).set_index("seed draw")


def seed_draw_summary(draws: SeedDraws, target: float = 0.70) -> Markdown:
    """What the table says: the mean and range of the ratio, and how the human anchor was trained."""
    if draws.table is None or draws.table.empty:
        return Markdown(
            draws.absent_words("seed-draw", "scripts/bench_seed_draws.py")
            + " It repeats this comparison with the seeds drawn again."
        )
    table = draws.table
    parameters = draws.manifest.get("parameters", {})
    human = parameters.get("human", "the record's model for every draw")
    below = table[table["ratio"] < target]
    commit = str(draws.manifest.get("git", {}).get("commit") or "")[:10]
    changed = [
        f"`{section}.{key}={value}`"
        for section, values in (parameters.get("profile_changes") or {}).items()
        for key, value in values.items()
    ]
    return Markdown(
        f"Over {len(table)} draws of the seeds (the golden test set unchanged; `{draws.path}`"
        + (f", code at commit `{commit}`" if commit else "")
        + f"), the pseudo detector reached on average **{table['ratio'].mean():.1%}** of the "
        f"human detector's test mAP50, from {table['ratio'].min():.1%} to "
        f"{table['ratio'].max():.1%}. Human reference: {human}. "
        + (
            f"The redrawn draws ran with {', '.join(changed)} (the record's profile otherwise). "
            if changed
            else ""
        )
        + _labelled_otherwise(parameters.get("annotation_settings") or {})
        + (
            f"Note: {draws.other_record}, so its `record` row is an earlier record's, not the "
            "chapters' above; `scripts/bench_seed_draws.py` makes the table again against this "
            "record (draws whose runs are kept are only scored again). "
            if draws.other_record
            else ""
        )
        + (
            f"Every draw reached {target:.0%}."
            if below.empty
            else f"{len(below)} of {len(table)} draws stayed below {target:.0%}."
        )
    )


def _labelled_otherwise(settings: dict[str, dict[str, object]]) -> str:
    """A sentence naming the draws whose chapter 03 ran with other ``annotation.*`` settings than
    the record's (a table made partly by an earlier version of the code), or nothing."""
    record = settings.get("record")
    if not record:
        return ""
    differing = {}
    for label, values in settings.items():
        keys = sorted(k for k in {*record, *values} if not _same_setting(record, values, k))
        if label != "record" and keys:
            differing[label] = keys
    if not differing:
        return ""
    keys = sorted({k for found in differing.values() for k in found})
    return (
        f"Draw{'s' if len(differing) > 1 else ''} {', '.join(differing)} labelled the pool with "
        f"other settings than the record's ({', '.join(f'`{k}`' for k in keys)}), so "
        f"{'they do' if len(differing) > 1 else 'it does'} not repeat the record's recipe exactly. "
    )


def _same_setting(record: dict[str, object], draw: dict[str, object], key: str) -> bool:
    """Whether both ran ``key`` alike. A setting one side's code did not have yet ran as off
    there, so it matches an off value (empty, none, false, ``enabled: false``) on the other:
    a draw made before test-time flips existed repeats a record with ``flips: []``."""
    if key in record and key in draw:
        return record[key] == draw[key]
    present = record[key] if key in record else draw[key]
    if isinstance(present, dict) and "enabled" in present:
        return present["enabled"] is False
    return present is None or present is False or present in ([], {}, ())

"""The offline annotator beyond NEU-DET: chapter 04's table of ``scripts/bench_offline_annotator.py``.

The record labels one pool with one seed draw. The benchmark labels three pools (NEU-DET,
NEU-DET made imbalanced by a fixed rule, and Magnetic-tile, a line with a defect-free majority)
over five seed draws each, in the annotator's shipped mode and against its seeds-only baseline,
so a reader can see where 18 labelled images go far and where they do not.
"""

from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

from cascade_defect.locations import PathAnchors
from cascade_defect.plots.book import BenchmarkTable, benchmark_files

METRICS: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "defect_recall": "defect recall",
    "false_alarm_rate": "false-alarm rate",
    "ece": "ECE",
    "mean_confidence": "mean confidence",
}
DATASET_NAMES = {
    "neu": "NEU-DET",
    "neu-imbalanced": "NEU-DET, imbalanced",
    "magnetic-tile": "Magnetic-tile",
}


OfflineBenchmark = BenchmarkTable
"""The benchmark's table, one row per pool, mode and draw, and its manifest."""


def read_offline_benchmark(table: str | None, where: PathAnchors) -> OfflineBenchmark:
    """The benchmark's table at ``table`` (as the record writes paths), or none when absent."""
    return benchmark_files(table, where)


def offline_benchmark_means(bench: OfflineBenchmark) -> pd.DataFrame:
    """Mean over the seed draws of each metric, one row per dataset and mode (the worst draw's
    accuracy beside it); defect recall and false alarms only where a pool has defect-free images."""
    if bench.table is None or bench.table.empty:
        return pd.DataFrame()
    table = bench.table
    grouped = table.groupby(["dataset", "mode"], sort=False)
    means = grouped[list(METRICS)].mean()
    means.insert(1, "worst draw", grouped["accuracy"].min())
    means["draws"] = grouped.size()
    means = means.rename(columns=METRICS).rename(index=DATASET_NAMES, level="dataset")
    return means.round(3).rename_axis(index=["pool", "mode"])


def offline_benchmark_summary(bench: OfflineBenchmark) -> Markdown:
    """One paragraph: what the shipped mode reaches on each pool against the baseline."""
    means = offline_benchmark_means(bench)
    if means.empty:
        return Markdown(
            f"No offline-annotator benchmark at `{bench.path or 'none'}`: run "
            "`scripts/bench_offline_annotator.py` to add this table."
        )
    commit = str(bench.manifest.get("git", {}).get("commit", ""))[:10]
    parts = []
    for pool in means.index.get_level_values("pool").unique():
        shipped = means.loc[(pool, "default")]
        baseline = means.loc[(pool, "inductive")]
        part = (
            f"on {pool}, balanced accuracy **{shipped['balanced accuracy']:.3f}** against "
            f"{baseline['balanced accuracy']:.3f} for the seeds-only baseline (ECE "
            f"{shipped['ECE']:.3f})"
        )
        if pd.notna(shipped["defect recall"]):
            part += (
                f", defect recall {shipped['defect recall']:.3f} at a false-alarm rate of "
                f"{shipped['false-alarm rate']:.3f}"
            )
        parts.append(part)
    draws = int(means["draws"].max())
    return Markdown(
        f"Over {draws} seed draws per pool (`{bench.path}`, code at commit `{commit}`), the "
        f"offline annotator as shipped reaches: {'; '.join(parts)}."
    )

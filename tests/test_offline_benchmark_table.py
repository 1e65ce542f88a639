"""Chapter 04's table of the offline-annotator benchmark, from a small written table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cascade_defect.plots.offline_benchmark import (
    offline_benchmark_means,
    offline_benchmark_summary,
    read_offline_benchmark,
)
from cascade_defect.settings import load_config


def write_benchmark(folder: Path) -> Path:
    rows = []
    for dataset, free in (("neu", False), ("magnetic-tile", True)):
        for mode, base in (("default", 0.9), ("inductive", 0.7)):
            for draw in range(2):
                rows.append(
                    {
                        "dataset": dataset,
                        "mode": mode,
                        "draw": draw,
                        "accuracy": base + 0.02 * draw,
                        "balanced_accuracy": base,
                        "macro_f1": base,
                        "defect_recall": 0.5 + 0.1 * draw if free else np.nan,
                        "false_alarm_rate": 0.2 if free else np.nan,
                        "ece": 0.05,
                        "mean_confidence": base,
                    }
                )
    table = folder / "offline_annotator.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(table, index=False)
    (folder / "offline_annotator.manifest.json").write_text(json.dumps({"git": {"commit": "abc"}}))
    return table


def test_means_per_pool_and_mode_with_defect_rates_only_where_defect_free(tmp_path: Path) -> None:
    table = write_benchmark(tmp_path / "benchmarks")
    config = load_config("smoke", work_dir=tmp_path / "work")
    bench = read_offline_benchmark(str(table), config)
    means = offline_benchmark_means(bench)
    assert list(means.index) == [
        ("NEU-DET", "default"),
        ("NEU-DET", "inductive"),
        ("Magnetic-tile", "default"),
        ("Magnetic-tile", "inductive"),
    ]
    assert means.loc[("NEU-DET", "default"), "accuracy"] == 0.91
    assert means.loc[("NEU-DET", "default"), "worst draw"] == 0.9
    assert np.isnan(means.loc[("NEU-DET", "default"), "defect recall"])
    assert means.loc[("Magnetic-tile", "default"), "defect recall"] == 0.55
    text = offline_benchmark_summary(bench).data
    assert "commit `abc`" in text and "defect recall 0.550" in text
    assert text.count("defect recall") == 1  # NEU-DET has no defect-free images


def test_without_the_table_the_chapter_says_how_to_make_it(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    bench = read_offline_benchmark(str(tmp_path / "absent.csv"), config)
    assert offline_benchmark_means(bench).empty
    assert "bench_offline_annotator.py" in offline_benchmark_summary(bench).data

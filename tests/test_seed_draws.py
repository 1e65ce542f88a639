"""Chapter 06's seed-draw table: read from the benchmark's CSV and manifest, summarised honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cascade_defect.plots.book import manifest_path
from cascade_defect.plots.seed_draws import (
    CSV_COLUMNS,
    read_seed_draws,
    seed_draw_summary,
    seed_draw_table,
)
from cascade_defect.settings import load_config


def write_table(folder: Path, ratios: list[float]) -> Path:
    rows = []
    for i, ratio in enumerate(ratios):
        rows.append(
            {
                "draw": "record" if i == 0 else str(i),
                "seeds": f"a_{i};b_{i}",
                "class_accuracy": 0.98,
                "box_recall": 0.6,
                "box_precision": 0.2,
                "mean_iou": 0.55,
                "pseudo_map50": 0.7 * ratio,
                "pseudo_map50_low": 0.7 * ratio - 0.02,
                "pseudo_map50_high": 0.7 * ratio + 0.02,
                "human_map50": 0.7,
                "human": "record",
                "ratio": ratio,
                "ratio_low": ratio - 0.05,
                "ratio_high": ratio + 0.05,
                "pseudo_train_wall_seconds": 600.0,
                "chapter_03_seconds": None,
                "chapter_05_seconds": None,
            }
        )
    path = folder / "seed_draws.csv"
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(path, index=False)
    manifest_path(path).write_text(
        json.dumps({"git": {"commit": "abcdef1234567"}, "parameters": {"human": "per draw"}})
    )
    return path


def test_the_table_and_summary_give_each_draw_and_the_ratio_range(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.5, 0.4, 0.8])
    draws = read_seed_draws(str(path), config)
    table = seed_draw_table(draws)
    assert list(table.index) == ["record", "1", "2"]
    assert table.loc["1", "share of human [95% CI]"] == "40.0% [35.0, 45.0]"
    assert table.loc["2", "pseudo mAP50 [95% CI]"] == "0.560 [0.540, 0.580]"
    text = seed_draw_summary(draws).data
    assert "**56.7%**" in text and "from 40.0% to 80.0%" in text
    assert "2 of 3 draws stayed below 70%" in text
    assert "Human reference: per draw" in text and "`abcdef1234`" in text


def test_every_draw_above_the_bar_is_said_so(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    draws = read_seed_draws(str(write_table(tmp_path, [0.75, 0.9])), config)
    assert "Every draw reached 70%." in seed_draw_summary(draws).data


def test_a_missing_table_says_which_file_and_how_to_make_it(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    draws = read_seed_draws(str(tmp_path / "absent.csv"), config)
    assert draws.table is None and seed_draw_table(draws).empty
    text = seed_draw_summary(draws).data
    assert "absent.csv" in text and "scripts/bench_seed_draws.py" in text
    assert "No seed-draw" in seed_draw_summary(read_seed_draws(None, config)).data

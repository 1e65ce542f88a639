"""The review budget as the book shows it: the curve's rows, the smallest k, and its price."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from cascade_defect.costs.review import ReviewPricing, review_budget_costs
from cascade_defect.hashing import sha256_file
from cascade_defect.plots.review_budget import (
    read_review_budget,
    review_budget_curve,
    review_budget_reading,
    review_budget_summary,
    review_cost_figure,
    review_cost_reading,
    review_cost_table,
    smallest_budget_table,
)
from cascade_defect.settings import load_config

matplotlib.use("Agg")


def budget_csv(folder: Path) -> Path:
    rows = [
        ("human", "", 100, 0.60, 1.0),
        ("pseudo", "", 100, 0.30, 0.5),
        ("review_random_10", "random", 10, 0.36, 0.6),
        ("review_random_40", "random", 40, 0.54, 0.9),
        ("review_disagreement_10", "disagreement", 10, 0.55, 0.92),
        ("review_disagreement_40", "disagreement", 40, 0.59, 0.98),
    ]
    frame = pd.DataFrame(
        [
            {
                "source": source,
                "order": order,
                "k": k if order else None,
                "epochs": 5,
                "imgsz": 256,
                "n_pool": 100,
                "map50": map50,
                "map50_low": map50 - 0.02,
                "map50_high": map50 + 0.02,
                "ratio": ratio,
                "ratio_low": ratio - 0.05,
                "ratio_high": ratio + 0.05,
                "same_as": "",
            }
            for source, order, k, map50, ratio in rows
        ]
    )
    path = folder / "review_budget.csv"
    frame.to_csv(path, index=False)
    path.with_name("review_budget.manifest.json").write_text(
        json.dumps({"git": {"commit": "1234567890abc"}})
    )
    return path


def test_each_order_runs_from_pseudo_to_human_and_the_smallest_k_is_read_off(
    tmp_path: Path,
) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    budget = read_review_budget(str(budget_csv(tmp_path)), config)
    rows = budget.budgets
    random_rows = rows[rows["order"] == "random"]
    assert random_rows["k"].tolist() == [0, 10, 40, 100]
    assert random_rows["ratio"].tolist() == [0.5, 0.6, 0.9, 1.0]
    table = smallest_budget_table(budget).set_index(["order", "target"])
    assert table.loc[("random", "90%"), "smallest k"] == "40"
    assert table.loc[("random", "97%"), "smallest k"] == "100"
    assert table.loc[("box strategies disagree first", "90%"), "smallest k"] == "10"
    assert table.loc[("box strategies disagree first", "97%"), "smallest k"] == "40"
    text = review_budget_summary(budget).data
    assert "0.600" in text and "50.0% of human" in text and "`1234567890`" in text
    assert review_budget_curve(budget).axes


def test_prices_follow_the_labour_formula_and_the_annotator_price(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    budget = read_review_budget(str(budget_csv(tmp_path)), config)
    pricing = ReviewPricing(
        n_pool=100,
        boxes_per_image=2.0,
        annotator_usd_per_image=0.01,
        seconds_per_box_drawn=36.0,
        seconds_per_box_corrected=6.0,
        hourly_rate=20.0,
    )
    costs = review_budget_costs(budget.table, pricing).set_index("option")
    # 100 images x 2 boxes x 36 s = 2 h at $20/h.
    assert costs.loc["all human (every box drawn)", "person_hours"] == pytest.approx(2.0)
    assert costs.loc["all human (every box drawn)", "total_usd"] == pytest.approx(40.0)
    assert costs.loc["pseudo only", "total_usd"] == pytest.approx(1.0)
    # 40 images x 2 boxes x 6 s = 480 s = 2/15 h -> $2.67, plus the annotator's $1.
    reviewed = costs.loc["pseudo + 40 reviewed (disagreement)"]
    assert reviewed["labour_usd"] == pytest.approx(480 / 3600 * 20)
    assert reviewed["total_usd"] == pytest.approx(1.0 + 480 / 3600 * 20)
    assert reviewed["ratio"] == pytest.approx(0.98)
    assert len(costs) == 3 + 4
    every = costs.loc["pseudo + all 100 reviewed"]
    assert every["ratio"] == 1.0 and every["total_usd"] == pytest.approx(
        1.0 + 100 * 2 * 6 / 3600 * 20
    )
    shown = review_cost_table(costs.reset_index())
    assert shown.loc["pseudo only", "share of human mAP50 [95% CI]"] == "50.0% [45.0%, 55.0%]"
    assert review_cost_figure(costs.reset_index()).axes
    # The reading is this table's: $2.67 of labour at k = 40, the cheapest option per target.
    reading = review_cost_reading(costs.reset_index()).data
    assert (
        "The largest partial review measured, 40 images, adds about $3 of a person's time to "
        "the annotator's $1 and takes the detector from 50% to 90%-98% of the human one "
        "(2 review orders)." in reading
    )
    assert (
        "reach 90% of it is *pseudo + 10 reviewed (disagreement)*: about $2, against "
        "about $40 for drawing every box" in reading
    )
    assert "reach 97% of it is *pseudo + 40 reviewed (disagreement)*: about $4," in reading
    assert "No review-budget table" in review_cost_reading(pd.DataFrame()).data


def test_no_table_is_said_plainly(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    budget = read_review_budget(str(tmp_path / "missing.csv"), config)
    assert budget.budgets.empty and smallest_budget_table(budget).empty
    assert "missing.csv" in review_budget_summary(budget).data


def test_without_a_table_each_figure_still_draws_one_image(tmp_path: Path) -> None:
    from cascade_defect.plots.review_budget import review_cost_figure

    config = load_config("smoke", work_dir=tmp_path / "work")
    budget = read_review_budget(None, config)
    for figure in (review_budget_curve(budget), review_cost_figure(pd.DataFrame())):
        assert figure.axes and "bench_review_budget.py" in figure.axes[0].texts[0].get_text()


def test_the_curve_is_read_from_the_table_and_its_labels(tmp_path: Path) -> None:
    """Chapter 06's reading comes from the table: shares at the largest partial budget, the
    straight line, the orders that clear random, and whether the labels are this run's."""
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = budget_csv(tmp_path)
    table = pd.read_csv(path)
    extra = table[table["source"] == "review_random_10"].assign(
        source="review_confidence_10", order="confidence", ratio=0.55
    )
    table = pd.concat([table, extra]).assign(errors_fixed=0, n_boxes=300)
    table.loc[table["source"] == "human", ["errors_fixed", "n_boxes"]] = [12, 150]
    table.loc[table["source"] == "review_confidence_10", "errors_fixed"] = 7
    # Two rows with the same training data (a fingerprint) were trained once.
    table["fingerprint"] = table["source"].replace({"review_confidence_10": "review_random_10"})
    table.to_csv(path, index=False)
    labels = config.paths.annotation_dir / "pseudo_labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text("image_id,defect_class\n1,scratch\n")
    named = "$CASCADE_WORK_DIR/runs/smoke/03_annotation/pseudo_labels.csv"
    manifest = {"inputs": {"pseudo_labels": {"path": named, "sha256": sha256_file(labels)}}}
    path.with_name("review_budget.manifest.json").write_text(json.dumps(manifest))

    text = review_budget_reading(read_review_budget(str(path), config)).data
    assert (
        "With no review the pseudo-labels keep 50% of the human model's mAP50 on this schedule. "
        "At 40 reviewed images (40% of the pool): box strategies disagree first 98% [93%, 103%]; "
        "random 90% [85%, 95%]; the straight line from pseudo-labels only to every image "
        "reviewed gives 70% there." in text
    )
    # Disagreement at 10 (low 87%) clears random's high 65%; at 40 (93% against 95%) it does not.
    assert (
        "wholly above random's at the same budget for box strategies disagree first at 10." in text
    )
    assert "fixes 7 of the pool's 12 wrong image classes within 10 images" in text
    assert "of the 100 pool images 90% about 80 and 97% about 94 would need a review" in text
    assert "trains on 300 boxes where the truth has 150" in text
    assert "other pseudo-labels" not in text
    summary = review_budget_summary(read_review_budget(str(path), config)).data
    assert "trained 6 models for its 7 rows" in summary

    labels.write_text("image_id,defect_class\n1,dent\n")  # the run annotated again since
    text = review_budget_reading(read_review_budget(str(path), config)).data
    assert "made on other pseudo-labels than this run's" in text
    empty = review_budget_reading(read_review_budget(None, config)).data
    assert "No review-budget table" in empty

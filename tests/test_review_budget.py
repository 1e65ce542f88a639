"""The review budget: which k images a person reviews, and the label sources that mix them in."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.annotate.review_budget import (
    box_agreement,
    confidence_order,
    disagreement_order,
    disagreement_table,
    parse_review_source,
    random_order,
    review_ranking,
    review_source,
    select_for_review,
    smallest_budget,
)
from cascade_defect.annotate.review_export import write_review_export
from cascade_defect.annotate.reviewed import import_review
from cascade_defect.chapters import c05_training
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c04_audit import AuditOutputs, disagreements, image_table
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.data.tables import read_table
from cascade_defect.manifest import MissingInputError
from cascade_defect.metrics.box_quality import normalise_gt_boxes
from cascade_defect.settings import load_config
from cascade_defect.train.sources import (
    GroundTruthAccessError,
    build_source,
    holdout_ids,
    read_pool_truth,
    read_split_inputs,
    source_descriptions,
    uses_pool_ground_truth,
    validate_source,
)
from tests.synthetic import make_neu_like, make_production_like

ROOT = Path(__file__).resolve().parents[1]
LABEL_KEY = ["image_id", "class_id", "cx", "cy"]

# --------------------------------------------------------------------------- names


def test_budget_source_names_round_trip_and_reject_typos() -> None:
    assert review_source("audit", 144) == "review_audit_144"
    assert parse_review_source("review_disagreement_36") == ("disagreement", 36)
    assert parse_review_source("reviewed") is None and parse_review_source("pseudo") is None
    for bad in ("review_best_3", "review_random", "review_random_-1", "review_random_x"):
        with pytest.raises(ValueError, match="malformed review source"):
            parse_review_source(bad)
    with pytest.raises(ValueError, match="unknown review order"):
        review_source("best", 3)
    assert validate_source("review_random_36") == "review_random_36"
    assert validate_source("reviewed") == "reviewed"
    assert uses_pool_ground_truth("review_audit_0") and not uses_pool_ground_truth("reviewed")


# --------------------------------------------------------------------------- orders


def test_confidence_order_puts_unanswered_images_first_then_the_least_confident() -> None:
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e"],
            "status": ["ok", "failed", "ok", "ok", "ok"],
            "confidence": [0.9, math.nan, 0.4, 0.95, 0.4],
        }
    )
    order = confidence_order(["a", "b", "c", "d", "e", "f"], labels)
    # b failed and f has no answer at all; c and e tie at 0.4 (by id), then a, then d.
    assert order == ["b", "f", "c", "e", "a", "d"]
    assert select_for_review("confidence", 3, list("abcdef"), labels=labels) == ["b", "f", "c"]


def test_random_order_is_not_the_validation_hold_out() -> None:
    """With the same seed, the first budget must not simply be the hold-out images."""
    ids = [f"img_{i}" for i in range(500)]
    holdout = holdout_ids(ids, 0.1, seed=0)
    first = random_order(ids, seed=0)[: len(holdout)]
    assert len(set(first) & holdout) < len(holdout) // 2


def test_random_order_is_seeded_reproducible_and_nested() -> None:
    ids = [f"{i:03d}" for i in range(50)]
    first = random_order(ids, seed=3)
    assert first == random_order(list(reversed(ids)), seed=3)  # listing order does not matter
    assert first != random_order(ids, seed=4)
    assert sorted(first) == sorted(ids)
    small = select_for_review("random", 5, ids, seed=3)
    large = select_for_review("random", 20, ids, seed=3)
    assert large[:5] == small and select_for_review("random", 0, ids) == []
    with pytest.raises(ValueError, match="does not fit a pool of 50"):
        select_for_review("random", 51, ids)


def audit_images() -> pd.DataFrame:
    """An audit image table: wrong answers with ties, failures, and right answers."""
    rows = [
        ("007", "crazing", "inclusion", 0.9, True, False),
        ("a", "crazing", "patches", 0.95, True, False),
        ("b", "crazing", "patches", 0.9, True, False),
        ("c", "crazing", None, math.nan, False, False),
        ("d", "crazing", "crazing", 0.6, True, True),
        ("e", "crazing", "crazing", 0.99, True, True),
        ("f", "crazing", "no_defect", 0.5, True, False),
    ]
    frame = pd.DataFrame(
        rows, columns=["image_id", "true_class", "predicted", "confidence", "answered", "correct"]
    )
    return frame.assign(
        box_classes=frame["true_class"],
        acceptable=False,
        reasoning="r",
        annotator="offline",
        model="m",
    )


def test_audit_order_is_the_review_exports_order(tmp_path: Path) -> None:
    images = audit_images()
    ids = list(images["image_id"])
    order = review_ranking("audit", ids, audit_images=images)
    assert order == ["a", "007", "b", "f", "c", "d", "e"]
    wrong = disagreements(images)
    assert list(wrong["image_id"]) == order[: len(wrong)]
    pool = pd.DataFrame(
        {
            "image_id": ids,
            "path": [str(tmp_path / f"{i}.jpg") for i in ids],
            "width": 10,
            "height": 10,
        }
    )
    empty = pd.DataFrame(columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2"])
    paths = write_review_export(tmp_path / "review", wrong, pool, empty, empty, ["crazing"])
    exported = read_table(paths["disagreements"])["image_id"].tolist()
    assert exported == order[: len(exported)]
    csv_path = tmp_path / "image_audit.csv"
    images.to_csv(csv_path, index=False)  # as chapter 04 writes it: flags read back as text
    read_back = read_table(csv_path, dtype={"answered": str, "correct": str})
    assert review_ranking("audit", ids, audit_images=read_back) == order
    with pytest.raises(ValueError, match="lacks 1 pool image"):
        review_ranking("audit", [*ids, "new"], audit_images=images)


def test_box_agreement_is_symmetric_mean_best_iou() -> None:
    a = np.array([[0.0, 0.0, 0.5, 0.5]])
    assert box_agreement(a, a) == pytest.approx(1.0)
    b = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    assert box_agreement(a, b) == pytest.approx(2 / 3)
    assert box_agreement(a, np.zeros((0, 4))) == 0.0


def test_disagreement_order_puts_conflicts_and_disagreeing_boxes_first() -> None:
    labels = pd.DataFrame(
        {
            "image_id": ["agree", "apart", "fallback", "failed", "foreign"],
            "status": ["ok", "ok", "ok", "failed", "ok"],
            "defect_class": ["crazing", "crazing", "crazing", None, "crazing"],
            "confidence": [0.9, 0.9, 0.9, math.nan, 0.8],
        }
    )
    box = (0.1, 0.1, 0.4, 0.4)
    rows = [
        ("agree", "seed_detector", "crazing", *box),
        ("agree", "self_training", "crazing", *box),
        ("apart", "seed_detector", "crazing", *box),
        ("apart", "self_training", "crazing", 0.6, 0.6, 0.9, 0.9),
        ("fallback", "seed_detector", "crazing", *box),
        ("fallback", "self_training", "crazing", 0.0, 0.0, 1.0, 1.0),
        ("foreign", "seed_detector", "crazing", *box),
        ("foreign", "self_training", "crazing", *box),
        ("foreign", "annotator", "patches", *box),
    ]
    boxes = pd.DataFrame(
        rows, columns=["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2"]
    )
    table = disagreement_table(list(labels["image_id"]), labels, boxes).set_index("image_id")
    assert table.loc["agree", "box_agreement"] == pytest.approx(1.0)
    assert table.loc["apart", "box_agreement"] == 0.0
    assert table["class_conflict"].to_dict() == {
        "agree": 0.0,
        "apart": 0.0,
        "fallback": 1.0,
        "failed": 1.0,
        "foreign": 1.0,
    }
    order = disagreement_order(list(labels["image_id"]), labels, boxes)
    assert order[:2] == ["failed", "fallback"] and order[-1] == "agree"
    assert order.index("foreign") < order.index("apart") < order.index("agree")
    only_one = boxes[boxes["strategy"] != "self_training"]
    table = disagreement_table(list(labels["image_id"]), labels, only_one)
    assert table["box_agreement"].eq(1.0).all()


def test_smallest_budget_reads_the_first_k_reaching_each_target() -> None:
    table = pd.DataFrame(
        {
            "order": ["random"] * 3 + ["audit"] * 3,
            "k": [0, 36, 144, 0, 36, 144],
            "ratio": [0.8, 0.85, 0.95, 0.8, 0.92, 0.98],
        }
    )
    found = smallest_budget(table).set_index(["order", "target"])
    assert found.loc[("audit", 0.9), "smallest_k"] == 36
    assert found.loc[("audit", 0.97), "smallest_k"] == 144
    assert found.loc[("random", 0.9), "smallest_k"] == 144
    assert found.loc[("random", 0.97), "note"] == "not reached"
    assert math.isnan(found.loc[("random", 0.97), "smallest_k"])


# --------------------------------------------------------------------------- sources on a split


@pytest.fixture(scope="module")
def budget_config(tmp_path_factory: pytest.TempPathFactory):
    """Chapters 01-02 on a generated NEU-like dataset, chapter 03's tables and 04's image table
    faked from the truth: every 4th image has the wrong class, one failed, the two detector
    strategies disagree on every 3rd image."""
    root = tmp_path_factory.mktemp("review_budget")
    data = make_neu_like(root / "neu", per_class=8, size=64)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    names = layout.class_names()
    truth, gt_pixels = read_pool_ground_truth(layout)
    gt = normalise_gt_boxes(gt_pixels, read_pool_listing(layout))
    truth = truth.sort_values("image_id").reset_index(drop=True)
    labels, boxes = [], []
    for i, row in truth.iterrows():
        cls = (
            names[(names.index(row.class_name) + 1) % len(names)] if i % 4 == 0 else row.class_name
        )
        ok = i != 1
        labels.append(
            {
                "image_id": row.image_id,
                "status": "ok" if ok else "failed",
                "defect_class": cls if ok else None,
                "confidence": 0.5 + 0.01 * i if ok else None,
            }
        )
        if not ok:
            continue
        for b in gt[gt["image_id"] == row.image_id].itertuples(index=False):
            corners = (b.x1, b.y1, b.x2, b.y2)
            shifted = (0.0, 0.0, 0.1, 0.1) if i % 3 == 0 else corners
            boxes.append((row.image_id, "seed_detector", cls, *corners, 0.5))
            boxes.append((row.image_id, "self_training", cls, *shifted, 0.5))
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    outputs.root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(labels).to_csv(outputs.labels, index=False)
    columns = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    pd.DataFrame(boxes, columns=columns).to_csv(outputs.boxes, index=False)
    audit = AuditOutputs(config.paths.audit_dir)
    audit.details_dir.mkdir(parents=True, exist_ok=True)
    pseudo_labels, _ = read_pseudo_labels(outputs)
    image_table(truth, gt_pixels, pseudo_labels).to_csv(audit.images, index=False)
    return config


def _inputs(config):
    layout = SplitLayout(config.paths.split_dir)
    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], 0.2, seed=0)
    truth = read_pool_truth(layout, split.class_names)
    pseudo = read_pseudo_labels(AnnotationOutputs(config.paths.annotation_dir))
    audit = read_table(AuditOutputs(config.paths.audit_dir).images)
    return split, holdout, truth, pseudo, audit


def _build(config, source: str, **kwargs):
    split, holdout, truth, pseudo, audit = _inputs(config)
    defaults = {
        "holdout": holdout,
        "truth": truth if uses_pool_ground_truth(source) else None,
        "pseudo": None if source == "human" else pseudo,
        "box_strategy": "seed_detector",
        "audit_images": audit,
    }
    return build_source(source, split, **(defaults | kwargs))


def _sorted(labels: pd.DataFrame) -> pd.DataFrame:
    return labels.sort_values(LABEL_KEY).reset_index(drop=True).astype({"class_id": int})


@pytest.mark.parametrize("order", ["random", "audit", "disagreement"])
def test_no_budget_is_pseudo_and_the_whole_pool_is_human(budget_config, order: str) -> None:
    pseudo = _build(budget_config, "pseudo")
    human = _build(budget_config, "human")
    n_pool = len(read_split_inputs(SplitLayout(budget_config.paths.split_dir)).pool)
    nothing = _build(budget_config, review_source(order, 0))
    pd.testing.assert_frame_equal(nothing.images, pseudo.images)
    pd.testing.assert_frame_equal(nothing.labels, pseudo.labels)
    pd.testing.assert_frame_equal(nothing.excluded, pseudo.excluded)
    everything = _build(budget_config, review_source(order, n_pool))
    pd.testing.assert_frame_equal(everything.images, human.images)
    pd.testing.assert_frame_equal(_sorted(everything.labels), _sorted(human.labels))
    assert everything.excluded.empty


@pytest.mark.parametrize("order", ["random", "audit", "disagreement"])
def test_a_budget_replaces_exactly_the_chosen_images_labels(budget_config, order: str) -> None:
    split, _, truth, pseudo, audit = _inputs(budget_config)
    pool_ids = list(split.pool["image_id"])
    chosen = select_for_review(
        order, 5, pool_ids, labels=pseudo[0], boxes=pseudo[1], audit_images=audit, seed=0
    )
    mixed = _build(budget_config, review_source(order, 5))
    plain = _build(budget_config, "pseudo")
    is_chosen = mixed.labels["image_id"].isin(chosen)
    pd.testing.assert_frame_equal(
        _sorted(mixed.labels[is_chosen]),
        _sorted(truth.labels[truth.labels["image_id"].isin(chosen)]),
    )
    pd.testing.assert_frame_equal(
        _sorted(mixed.labels[~is_chosen]),
        _sorted(plain.labels[~plain.labels["image_id"].isin(chosen)]),
    )
    assert not set(mixed.excluded["image_id"]) & set(chosen)
    kept = set(mixed.images.loc[mixed.images["origin"] == "pool", "image_id"])
    assert set(chosen) <= kept  # the failed image comes back when it is reviewed


def test_the_audit_budget_fixes_the_audit_disagreements_first(budget_config) -> None:
    split, _, _, _, audit = _inputs(budget_config)
    wrong = disagreements(audit)
    chosen = select_for_review(
        "audit", len(wrong), list(split.pool["image_id"]), audit_images=audit
    )
    assert chosen == list(wrong["image_id"])
    with pytest.raises(ValueError, match="notebook 04"):
        _build(budget_config, "review_audit_3", audit_images=None)


def test_budgets_need_the_truth_and_reviewed_must_not_see_it(budget_config) -> None:
    with pytest.raises(ValueError, match="needs the pool's ground truth"):
        _build(budget_config, "review_random_3", truth=None)
    _, _, truth, _, _ = _inputs(budget_config)
    with pytest.raises(GroundTruthAccessError):
        _build(budget_config, "reviewed", truth=truth)


def test_the_reviewed_source_trains_on_a_persons_boxes(budget_config, tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="cascade-defect review import FILE --run-dir"):
        c05_training.assemble_source(budget_config, "reviewed")
    split = _inputs(budget_config)[0]
    first, second = sorted(split.pool["image_id"])[:2]  # the first is planted wrong, second failed
    review = tmp_path / "review.csv"
    pd.DataFrame(
        {
            "image_id": [first, second],
            "corrected_class": ["patches", "scratches"],
            "corrected_boxes": ["patches 0 0 32 16", ""],
        }
    ).to_csv(review, index=False)
    import_review(review, budget_config.paths.run_dir)
    dataset, _, truth = c05_training.assemble_source(budget_config, "reviewed")
    assert truth is None
    names = split.class_names
    mine = dataset.labels[dataset.labels["image_id"] == first]
    assert mine[["class_id", "cx", "cy", "w", "h"]].to_numpy().tolist() == [
        [names.index("patches"), 0.25, 0.125, 0.5, 0.25]
    ]
    assert dataset.excluded.set_index("image_id").loc[second, "reason"] == "no_boxes"
    plain = _build(budget_config, "pseudo")
    others = ~dataset.labels["image_id"].isin([first, second])
    pd.testing.assert_frame_equal(
        _sorted(dataset.labels[others]),
        _sorted(plain.labels[~plain.labels["image_id"].isin([first, second])]),
    )
    described = source_descriptions(["reviewed", "review_audit_3"], budget_config.profile.training)
    assert described.loc["review_audit_3", "reads pool ground truth"]
    assert "3 images (audit order)" in described.loc["review_audit_3", "pool labels"]
    assert not described.loc["reviewed", "reads pool ground truth"]


def test_chapter_05_reads_the_audit_table_for_audit_budgets(budget_config) -> None:
    dataset, _, truth = c05_training.assemble_source(budget_config, "review_audit_4")
    assert truth is not None and dataset.counts()["n_pool"] > 0
    table = AuditOutputs(budget_config.paths.audit_dir).images
    aside = table.with_suffix(".aside")
    table.rename(aside)
    try:
        with pytest.raises(MissingInputError, match=r"audit_images.*notebook 04"):
            c05_training.assemble_source(budget_config, "review_audit_4")
        c05_training.assemble_source(budget_config, "review_random_4")  # needs no audit
    finally:
        aside.rename(table)


# --------------------------------------------------------------------------- the benchmark script


def _bench_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("bench_review_budget")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_bench_pieces_plan_count_and_read_off() -> None:
    bench = _bench_module()
    sources, left_out = bench.planned(["random", "audit"], [0, 36, 5000], 100)
    assert sources == [
        "human",
        "pseudo",
        "review_random_0",
        "review_random_36",
        "review_audit_0",
        "review_audit_36",
    ]
    assert left_out == [5000]
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "status": ["ok", "ok", "failed"],
            "defect_class": ["x", "y", None],
        }
    )
    assert bench.class_errors(labels, pd.Series({"a": 0, "b": 0, "c": 1}), ["x", "y"]) == {"b"}
    # On a line the image labels end with no_defect (index 2): a missed defect ("d", answered
    # no_defect) and a false alarm ("e", a defect-free tile answered "x") are errors too.
    line = pd.DataFrame(
        {
            "image_id": ["a", "d", "e", "f"],
            "status": ["ok", "ok", "ok", "ok"],
            "defect_class": ["x", "no_defect", "x", "no_defect"],
        }
    )
    truth = pd.Series({"a": 0, "d": 1, "e": 2, "f": 2})
    assert bench.class_errors(line, truth, ["x", "y", "no_defect"]) == {"d", "e"}
    # Without a defect-free class a no_defect answer is left out of training, not an error.
    assert bench.class_errors(line.iloc[:2], truth.iloc[:2], ["x", "y"]) == set()
    samples = {"human": np.array([0.5, 0.6, 0.7]), "f1": np.array([0.5, 0.6, 0.7])}
    samples["f2"] = samples["human"] / 2
    table = pd.DataFrame(
        {
            "source": ["human", "review_random_0", "review_random_10"],
            "order": ["", "random", "random"],
            "k": [math.nan, 0, 10],
            "map50": [0.6, 0.3, 0.6],
            "fingerprint": ["f1", "f2", "f1"],
        }
    )
    samples["human"] = samples["f1"]
    rated = bench.with_ratios(table, samples)
    assert rated["ratio"].tolist() == [1.0, 0.5, 1.0]
    assert rated.loc[1, "ratio_low"] == pytest.approx(0.5)
    lines = bench.budget_lines(rated)
    assert lines[0] == "random: 90% of human's mAP50 from k = 10 (ratio 1.000)"


def _script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_review_budget.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def test_the_bench_script_parses_its_options() -> None:
    done = _script("--help")
    assert done.returncode == 0, done.stderr
    for option in (
        "--run-dir",
        "--budgets",
        "--orders",
        "--epochs",
        "--imgsz",
        "--csv",
        "--dry-run",
    ):
        assert option in done.stdout


def test_the_dry_run_builds_every_dataset_and_trains_nothing(budget_config, tmp_path: Path) -> None:
    csv = tmp_path / "budget.csv"
    done = _script(
        "--run-dir",
        str(budget_config.paths.run_dir),
        "--budgets",
        "0",
        "3",
        "500",
        "--csv",
        str(csv),
        "--dry-run",
        "--json",
        str(tmp_path / "counts.json"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "budgets larger than the pool, left out: [500]" in done.stdout
    assert "nothing trained" in done.stdout and not csv.exists()
    counts = {
        row["source"]: row for row in json.loads((tmp_path / "counts.json").read_text())["datasets"]
    }
    assert set(counts) == {"human", "pseudo"} | {
        f"review_{o}_{k}" for o in ("random", "confidence", "disagreement", "audit") for k in (0, 3)
    }
    assert counts["review_audit_0"]["same_as"] == "pseudo"
    assert counts["review_audit_3"]["errors_fixed"] == 3
    assert (tmp_path / "budget_runs" / "datasets" / "review_random_3" / "data.yaml").exists()


def test_the_dry_run_on_a_line_counts_missed_defects_and_false_alarms(tmp_path: Path) -> None:
    """On a line with defect-free tiles (the pool truth's class index includes no_defect) the
    script builds every dataset and counts a missed defect and a false alarm as class errors."""
    data = make_production_like(tmp_path / "line", n_free=12)
    config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    truth, gt_pixels = read_pool_ground_truth(layout)
    gt = normalise_gt_boxes(gt_pixels, read_pool_listing(layout))
    truth = truth.sort_values("image_id").reset_index(drop=True)
    free = truth["class_name"].eq("no_defect")
    missed = truth.loc[~free, "image_id"].iloc[0]
    alarm = truth.loc[free, "image_id"].iloc[0]
    defect = str(truth.loc[~free, "class_name"].iloc[0])
    labels, boxes = [], []
    for row in truth.itertuples(index=False):
        answer = {missed: "no_defect", alarm: defect}.get(row.image_id, row.class_name)
        labels.append(
            {"image_id": row.image_id, "status": "ok", "defect_class": answer, "confidence": 0.8}
        )
        if answer == "no_defect":
            continue
        found = gt[gt["image_id"] == row.image_id]
        corners = [(b.x1, b.y1, b.x2, b.y2) for b in found.itertuples(index=False)]
        for strategy in ("seed_detector", "self_training"):
            for box in corners or [(0.4, 0.4, 0.5, 0.5)]:
                boxes.append((row.image_id, strategy, answer, *box, 0.5))
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    outputs.root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(labels).to_csv(outputs.labels, index=False)
    columns = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    pd.DataFrame(boxes, columns=columns).to_csv(outputs.boxes, index=False)
    done = _script(
        "--run-dir",
        str(config.paths.run_dir),
        "--orders",
        "random",
        "confidence",
        "disagreement",
        "--budgets",
        "0",
        "2",
        "--csv",
        str(tmp_path / "budget.csv"),
        "--dry-run",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"pool {len(truth)} images, 2 with a wrong pseudo class" in done.stdout
    assert "nothing trained" in done.stdout


def test_the_sweep_trains_each_distinct_dataset_once_scores_and_resumes(
    budget_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Training and ultralytics' validation faked: the bookkeeping around them is what is tested."""
    bench = _bench_module()
    from cascade_defect.chapters.c06_comparison import golden_test_truth

    _, truth, _ = golden_test_truth(SplitLayout(budget_config.paths.split_dir))
    trained: list[str] = []

    def fake_train(data_yaml: Path, *, weights: str, project_dir: Path, name: str, **_: object):
        trained.append(name)
        best = Path(project_dir) / name / "weights" / "best.pt"
        best.parent.mkdir(parents=True, exist_ok=True)
        best.write_text(name)
        return type("Result", (), {"best_weights": best, "wall_seconds": 2.0})()

    def fake_validate(weights: Path, data_yaml: Path, image_sizes: pd.DataFrame, **_: object):
        found = truth.assign(confidence=0.9)
        if Path(weights).read_text() != "human":  # any other source finds half the images' boxes
            keep = sorted(found["image_id"].unique())[::2]
            found = found[found["image_id"].isin(keep)]
        return {}, found[["image_id", "class_id", "x1", "y1", "x2", "y2", "confidence"]]

    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"weights")
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", str(weights))
    training = sys.modules["_bench_training"]  # where the scripts train and score
    monkeypatch.setattr(training, "train_yolo", fake_train)
    monkeypatch.setattr(training, "validate_on_test", fake_validate)
    csv = tmp_path / "sweep.csv"
    arguments = [
        "--run-dir",
        str(budget_config.paths.run_dir),
        "--orders",
        "random",
        "audit",
        "--budgets",
        "0",
        "2",
        "--n-bootstrap",
        "50",
        "--csv",
        str(csv),
    ]
    bench.main(arguments)
    table = pd.read_csv(csv, dtype={"same_as": str}, keep_default_na=False)
    assert trained[:2] == ["human", "pseudo"] and "review_audit_2" in trained
    assert len(trained) == table["fingerprint"].nunique()  # identical datasets train once
    rows = table.set_index("source")
    assert rows.loc["review_audit_2", "errors_fixed"] == 2  # the audit's two most confident errors
    assert rows.loc["human", "ratio"] == 1.0 and rows.loc["human", "map50"] > 0.99
    assert rows.loc["review_random_0", "same_as"] == "pseudo"
    assert rows.loc["review_random_0", "map50"] == rows.loc["pseudo", "map50"]
    assert (
        float(rows.loc["pseudo", "ratio_low"])
        <= float(rows.loc["pseudo", "ratio"])
        <= float(rows.loc["pseudo", "ratio_high"])
    )
    out = capsys.readouterr().out
    assert "mAP50 [95% CI]" in out and "smallest budget reaching" in out
    manifest = json.loads((tmp_path / "sweep.manifest.json").read_text())
    assert manifest["benchmark"] == "review_budget" and manifest["n_rows"] == 6
    assert manifest["outputs"]["scratch"] == "sweep_runs" and "pseudo_boxes" in manifest["inputs"]
    trained.clear()
    bench.main(arguments)
    assert trained == []
    pd.testing.assert_frame_equal(
        pd.read_csv(csv, dtype={"same_as": str}, keep_default_na=False), table
    )
    # The table kept, its bootstrap samples gone (made with another scratch folder): every row
    # is scored again from its weights, so the paired ratio intervals stay.
    shutil.rmtree(tmp_path / "sweep_runs" / "bootstrap")
    bench.main(arguments)
    assert trained == []
    assert "scored again for the paired intervals" in capsys.readouterr().out
    pd.testing.assert_frame_equal(
        pd.read_csv(csv, dtype={"same_as": str}, keep_default_na=False), table
    )

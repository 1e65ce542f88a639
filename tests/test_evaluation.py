"""AP from saved detections, the bootstrap over test images, the KPI threshold and the cascade."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade_defect.chapters.c06_comparison import (
    comparison_table,
    headline_source,
    ultralytics_agreement,
)
from cascade_defect.costs.cascade import annotator_price_per_image, cascade_costs, cascade_curve
from cascade_defect.metrics.bootstrap import (
    Comparison,
    accuracy_samples,
    bootstrap_indices,
    bootstrap_map50,
    bootstrap_table,
    paired_comparison,
    percentile_interval,
    read_comparison,
    write_comparison,
)
from cascade_defect.metrics.classification import image_accuracy, image_predictions
from cascade_defect.metrics.detection import (
    NO_DETECTION,
    ULTRALYTICS_UNION_EPS,
    ap_per_class,
    average_precision,
    box_iou,
    detection_metrics,
    match_detections,
    precision_recall_at,
)
from cascade_defect.metrics.kpi import kpi_threshold

CLASSES = ["a", "b", "c"]


def _truth(rows: list[tuple[str, int, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "class_id", "x1", "y1", "x2", "y2"])


def _dets(rows: list[tuple[str, int, float, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    )


def random_case(n_images: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Ground truth and noisy detections (shifted boxes, wrong classes, spurious boxes)."""
    rng = np.random.default_rng(seed)
    truth_rows, det_rows = [], []
    ids = [f"im{i}" for i in range(n_images)]
    for image_id in ids:
        for _ in range(rng.integers(1, 4)):
            c = int(rng.integers(0, 3))
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(20, 50, 2)
            truth_rows.append((image_id, c, x, y, x + w, y + h))
            if rng.random() < 0.8:
                dx, dy = rng.normal(0, 6, 2)
                pred_c = c if rng.random() < 0.85 else int(rng.integers(0, 3))
                det_rows.append(
                    (
                        image_id,
                        pred_c,
                        float(rng.uniform(0.2, 1)),
                        x + dx,
                        y + dy,
                        x + w + dx,
                        y + h + dy,
                    )
                )
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 150, 2)
            det_rows.append(
                (
                    image_id,
                    int(rng.integers(0, 3)),
                    float(rng.uniform(0, 0.6)),
                    x,
                    y,
                    x + 30,
                    y + 30,
                )
            )
    return _dets(det_rows), _truth(truth_rows), ids


# --------------------------------------------------------------------------- AP


def test_average_precision_matches_a_hand_computed_101_point_value() -> None:
    # 3 boxes; detections in confidence order: TP, FP, TP, TP
    recall = np.array([1, 1, 2, 3]) / 3
    precision = np.array([1, 1 / 2, 2 / 3, 3 / 4])
    # envelope: 1 up to recall 1/3, then 0.75 up to recall 1, then 0 (ultralytics' sentinel).
    # grid 0..0.33 -> 1 (area 0.33); 0.33->0.34 -> (1+.75)/2*.01; 0.34..0.99 -> .75*.65;
    # 0.99->1.0 -> .75/2*.01
    expected = 0.33 + 0.00875 + 0.4875 + 0.00375
    assert average_precision(recall, precision) == pytest.approx(expected, abs=1e-12)


def test_a_perfect_detector_scores_ultralytics_0995() -> None:
    truth = _truth([("i1", 0, 0, 0, 10, 10), ("i2", 1, 5, 5, 20, 20)])
    dets = _dets([("i1", 0, 0.9, 0, 0, 10, 10), ("i2", 1, 0.8, 5, 5, 20, 20)])
    matched = match_detections(dets, truth, ["i1", "i2"], CLASSES)
    metrics = detection_metrics(matched)
    assert metrics["map50"] == pytest.approx(0.995)
    assert metrics["map50_95"] == pytest.approx(0.995)
    assert np.isnan(metrics["ap50"]["c"])  # no ground truth of class c: not averaged


def test_matching_follows_confidence_order_class_and_iou() -> None:
    truth = _truth([("i", 0, 0, 0, 10, 10)])
    dets = _dets(
        [
            ("i", 0, 0.5, 0, 0, 10, 10),  # perfect box but lower confidence
            ("i", 0, 0.9, 0, 0, 10, 6),  # IoU 0.6: claims the box first at 0.5 and 0.55
            ("i", 1, 0.95, 0, 0, 10, 10),  # wrong class: never a true positive
        ]
    )
    matched = match_detections(dets, truth, ["i"], CLASSES)
    assert matched.confidence.tolist() == [0.95, 0.9, 0.5]
    assert not matched.correct[0].any()
    assert matched.correct[1].tolist() == [True, True] + [False] * 8
    assert matched.correct[2].tolist() == [False, False] + [True] * 8


def test_own_ap_agrees_with_ultralytics_ap_per_class() -> None:
    """Same true-positive matrix through both implementations: identical AP."""
    ev_import = pytest.importorskip("ultralytics.utils.metrics")
    dets, truth, ids = random_case(60, seed=1)
    matched = match_detections(dets, truth, ids, CLASSES)
    target_cls = np.repeat(np.arange(3), matched.gt_counts.sum(0))
    result = ev_import.ap_per_class(
        matched.correct, matched.confidence, matched.class_id, target_cls
    )
    ultralytics_ap = result[5]
    own = ap_per_class(matched)
    assert own == pytest.approx(ultralytics_ap, abs=1e-9)
    assert detection_metrics(matched)["map50"] == pytest.approx(
        ultralytics_ap[:, 0].mean(), abs=1e-9
    )


def test_above_threshold_keeps_only_confident_detections() -> None:
    dets, truth, ids = random_case(20, seed=2)
    matched = match_detections(dets, truth, ids, CLASSES)
    kept = matched.above(0.5)
    assert (kept.confidence >= 0.5).all()
    assert len(kept.confidence) == int((dets["confidence"] >= 0.5).sum())


def test_detections_of_unknown_images_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the test set"):
        match_detections(_dets([("zz", 0, 0.9, 0, 0, 1, 1)]), _truth([]), ["i"], CLASSES)


# --------------------------------------------------------------------------- bootstrap


def test_weighted_resample_equals_matching_an_explicitly_duplicated_test_set() -> None:
    dets, truth, ids = random_case(30, seed=3)
    matched = match_detections(dets, truth, ids, CLASSES)
    weights = bootstrap_indices(len(ids), 1, seed=11)[0]
    fast = ap_per_class(matched, weights)
    copies_d, copies_t, copy_ids = [], [], []
    for image_id, k in zip(ids, weights, strict=True):
        for j in range(k):
            new = f"{image_id}#{j}"
            copy_ids.append(new)
            copies_d.append(dets[dets["image_id"] == image_id].assign(image_id=new))
            copies_t.append(truth[truth["image_id"] == image_id].assign(image_id=new))
    slow = ap_per_class(
        match_detections(pd.concat(copies_d), pd.concat(copies_t), copy_ids, CLASSES)
    )
    assert fast == pytest.approx(slow, abs=1e-9, nan_ok=True)


def test_bootstrap_of_a_perfect_detector_is_a_point() -> None:
    ids = [f"i{k}" for k in range(40)]
    truth = _truth([(i, k % 3, 0, 0, 10, 10) for k, i in enumerate(ids)])
    dets = truth.assign(confidence=0.9)[
        ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    ]
    matched = match_detections(dets, truth, ids, CLASSES)
    samples = bootstrap_map50(matched, bootstrap_indices(len(ids), 200, seed=0))
    assert percentile_interval(samples) == pytest.approx((0.995, 0.995))


def test_bootstrap_interval_matches_the_binomial_width_of_a_known_case() -> None:
    """Half of 400 one-box images found without false positives: mAP50 ≈ recall ≈ 0.5.

    Resampling images makes recall a binomial share, so the 95% interval is close to
    0.5 ± 1.96·sqrt(0.25/400) = [0.451, 0.549].
    """
    ids = [f"i{k}" for k in range(400)]
    truth = _truth([(i, 0, 0, 0, 10, 10) for i in ids])
    dets = _dets([(i, 0, 0.5 + k / 1000, 0, 0, 10, 10) for k, i in enumerate(ids[:200])])
    matched = match_detections(dets, truth, ids, CLASSES)
    assert detection_metrics(matched)["map50"] == pytest.approx(0.505, abs=0.011)
    samples = bootstrap_map50(matched, bootstrap_indices(len(ids), 1000, seed=1))
    low, high = percentile_interval(samples)
    assert low == pytest.approx(0.451, abs=0.015)
    assert high == pytest.approx(0.549, abs=0.015)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    dets, truth, ids = random_case(50, seed=4)
    matched = match_detections(dets, truth, ids, CLASSES)
    draws = bootstrap_indices(len(ids), 100, seed=5)
    samples = {
        "human": bootstrap_map50(matched, draws),
        "pseudo": bootstrap_map50(matched, draws),
    }
    estimate = detection_metrics(matched)["map50"]
    table, comparison = bootstrap_table({"human": estimate, "pseudo": estimate}, samples)
    assert comparison is not None and comparison.metric == "map50"
    assert comparison.difference_ci == (0.0, 0.0)
    assert comparison.ratio_ci == pytest.approx((1.0, 1.0))
    assert table.loc["human", "ci_low"] <= estimate <= table.loc["human", "ci_high"]


def test_paired_difference_detects_a_worse_model() -> None:
    dets, truth, ids = random_case(80, seed=6)
    good = match_detections(dets, truth, ids, CLASSES)
    worse_dets = dets.copy()
    worse_dets.loc[worse_dets.index % 3 == 0, "class_id"] = (worse_dets["class_id"] + 1) % 3
    worse = match_detections(worse_dets, truth, ids, CLASSES)
    draws = bootstrap_indices(len(ids), 300, seed=7)
    samples = {"human": bootstrap_map50(good, draws), "pseudo": bootstrap_map50(worse, draws)}
    estimates = {
        "human": detection_metrics(good)["map50"],
        "pseudo": detection_metrics(worse)["map50"],
    }
    _, comparison = bootstrap_table(estimates, samples)
    assert comparison is not None
    assert comparison.difference < 0
    assert comparison.difference_ci[1] < 0
    assert comparison.share_of_samples_candidate_worse > 0.95
    assert bootstrap_table(estimates, {"human": samples["human"]})[1] is None


def _earlier_detection_comparison(estimates, samples, level=0.95):
    """Chapter 06's detection comparison as it was computed before both tracks shared one."""
    diff = samples["pseudo"] - samples["human"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = samples["pseudo"] / samples["human"]
    return {
        "difference": estimates["pseudo"] - estimates["human"],
        "difference_ci": percentile_interval(diff, level),
        "ratio": estimates["pseudo"] / estimates["human"] if estimates["human"] else float("nan"),
        "ratio_ci": percentile_interval(ratio[np.isfinite(ratio)], level)
        if np.isfinite(ratio).any()
        else (float("nan"), float("nan")),
        "share_of_samples_candidate_worse": float(np.mean(diff < 0)),
    }


def _earlier_classification_comparison(samples, estimates, target_ratio):
    """The classification track's comparison as it was computed before (flat interval keys)."""
    difference = samples["pseudo"] - samples["human"]
    low, high = percentile_interval(difference)
    ratio = estimates["pseudo"] / estimates["human"] if estimates["human"] else float("nan")
    return {
        "difference": estimates["pseudo"] - estimates["human"],
        "difference_ci_low": low,
        "difference_ci_high": high,
        "ratio": ratio,
        "target_met": bool(ratio >= target_ratio),
    }


def test_one_paired_comparison_gives_both_tracks_their_earlier_numbers() -> None:
    """The shared comparison reproduces each track's earlier figures exactly (==, not approx)."""
    dets, truth, ids = random_case(60, seed=11)
    good = match_detections(dets, truth, ids, CLASSES)
    noisy = dets.copy()
    noisy.loc[noisy.index % 4 == 0, "class_id"] = (noisy["class_id"] + 1) % 3
    worse = match_detections(noisy, truth, ids, CLASSES)
    draws = bootstrap_indices(len(ids), 400, seed=12)
    samples = {"human": bootstrap_map50(good, draws), "pseudo": bootstrap_map50(worse, draws)}
    samples["human"][:5] = 0.0  # resamples where the ratio is not finite are left out
    estimates = {
        "human": detection_metrics(good)["map50"],
        "pseudo": detection_metrics(worse)["map50"],
    }
    _, shared = bootstrap_table(estimates, samples)
    assert shared is not None
    earlier = _earlier_detection_comparison(estimates, samples)
    assert shared.model_dump(include=set(earlier)) == earlier

    rng = np.random.default_rng(13)
    correct = {"human": rng.random(300) < 0.9, "pseudo": rng.random(300) < 0.85}
    draws = bootstrap_indices(300, 500, seed=14)
    accuracy = {s: accuracy_samples(c, draws) for s, c in correct.items()}
    point = {s: float(c.mean()) for s, c in correct.items()}
    shared = paired_comparison(point, accuracy, metric="accuracy", target_ratio=0.97)
    assert shared is not None
    earlier = _earlier_classification_comparison(accuracy, point, 0.97)
    assert shared.difference == earlier["difference"] and shared.ratio == earlier["ratio"]
    assert shared.difference_ci == (earlier["difference_ci_low"], earlier["difference_ci_high"])
    assert shared.target_met is earlier["target_met"]


def test_comparison_json_round_trips_and_rejects_an_unknown_layout(tmp_path) -> None:
    samples = {"human": np.array([0.8, 0.9, 1.0]), "pseudo": np.array([0.0, 0.9, 0.95])}
    comparison = paired_comparison(
        {"human": 0.9, "pseudo": 0.0}, samples, metric="accuracy", target_ratio=0.97
    )
    assert comparison is not None and comparison.ratio == 0.0 and not comparison.target_met
    path = tmp_path / "comparison.json"
    write_comparison(path, comparison, n_test_images=3, latency={"latency_ms_median": 5.0})
    assert read_comparison(path) == (
        comparison,
        {"n_test_images": 3, "latency": {"latency_ms_median": 5.0}},
    )
    write_comparison(path, None, n_test_images=3)
    assert read_comparison(path) == (None, {"n_test_images": 3})
    path.write_text('{"comparison": {"difference": -0.1, "difference_ci_low": -0.2}}')
    with pytest.raises(ValueError, match="re-run chapter 06"):
        read_comparison(path)


# --------------------------------------------------------------------------- IoU


def _earlier_matching_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Detection matching's IoU as it was written before (ultralytics' +1e-7 on the union)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)


def test_box_iou_on_a_hand_computed_case() -> None:
    a = np.array([[0.0, 0.0, 4.0, 2.0]])  # area 8
    b = np.array([[2.0, 1.0, 6.0, 3.0], [0.0, 0.0, 4.0, 2.0], [4.0, 0.0, 5.0, 2.0]])
    # overlap 2 x 1 = 2, union 8 + 8 - 2 = 14; identical boxes; touching edges only
    assert box_iou(a, b).tolist() == [[2 / 14, 1.0, 0.0]]
    assert box_iou(a, b, ULTRALYTICS_UNION_EPS).tolist() == [[2 / (14 + 1e-7), 8 / (8 + 1e-7), 0.0]]
    assert box_iou(a, b).dtype == np.float64


def test_box_iou_is_torchvision_and_matching_keeps_its_earlier_numbers() -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(21)
    corner = rng.uniform(0, 200, (2, 40, 2))
    size = rng.uniform(1, 80, (2, 40, 2))
    a, b = (np.concatenate([corner[k], corner[k] + size[k]], axis=1) for k in range(2))
    a[:5] = np.round(a[:5])  # integer ground-truth-like corners as well
    expected = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.array_equal(box_iou(a, b), expected)
    assert np.array_equal(box_iou(a, b, ULTRALYTICS_UNION_EPS), _earlier_matching_iou(a, b))


# --------------------------------------------------------------------------- image level, KPI


def test_image_accuracy_uses_the_top_confidence_box_and_counts_misses_as_wrong() -> None:
    truth = _truth([("i1", 0, 0, 0, 5, 5), ("i2", 1, 0, 0, 5, 5), ("i3", 2, 0, 0, 5, 5)])
    dets = _dets(
        [
            ("i1", 1, 0.4, 0, 0, 5, 5),
            ("i1", 0, 0.8, 0, 0, 5, 5),  # top box: class a, right
            ("i2", 2, 0.7, 0, 0, 5, 5),  # top box: class c, wrong
        ]
    )
    matched = match_detections(dets, truth, ["i1", "i2", "i3"], CLASSES)
    predictions = image_predictions(matched)
    assert predictions["predicted_class"].tolist() == ["a", "c", NO_DETECTION]
    assert predictions["top_confidence"].tolist() == pytest.approx([0.8, 0.7, 0.0])
    assert image_accuracy(predictions, {"i1": "a", "i2": "b", "i3": "c"}) == pytest.approx(1 / 3)


def test_kpi_is_met_by_a_perfect_detector_and_reported_unreachable_otherwise() -> None:
    ids = [f"i{k}" for k in range(30)]
    truth = _truth([(i, k % 3, 0, 0, 10, 10) for k, i in enumerate(ids)])
    perfect = truth.assign(confidence=0.9)[
        ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    ]
    verdict = kpi_threshold(match_detections(perfect, truth, ids, CLASSES))
    assert verdict["met"] and verdict["precision"] == 1.0 and verdict["recall"] == 1.0
    assert verdict["threshold"] <= 0.9
    wrong = perfect.assign(class_id=(perfect["class_id"] + 1) % 3)
    verdict = kpi_threshold(match_detections(wrong, truth, ids, CLASSES))
    assert not verdict["met"] and not verdict["pr_reachable"] and not verdict["map_met"]
    assert verdict["verdict"].startswith("KPI not reachable")
    assert "no detection is right at any threshold" in verdict["verdict"]


def test_kpi_verdict_names_the_best_f1_threshold_as_printed() -> None:
    ids = [f"i{k}" for k in range(30)]
    truth = _truth([(i, k % 3, 0, 0, 10, 10) for k, i in enumerate(ids)])
    right = [(i, k % 3, 0.43, 0, 0, 10, 10) for k, i in enumerate(ids[:20])]
    wrong_low = [(i, (k + 1) % 3, 0.2, 50, 50, 60, 60) for k, i in enumerate(ids[:20])]
    dets = _dets(right + wrong_low)
    verdict = kpi_threshold(match_detections(dets, truth, ids, CLASSES))
    assert not verdict["pr_reachable"]  # recall is 20/30 at best
    assert verdict["threshold"] == 0.21  # the first threshold above the wrong boxes, exactly
    assert "best F1 at 0.21: precision 1.000, recall 0.667" in verdict["verdict"]


def test_precision_recall_at_threshold_pools_classes() -> None:
    truth = _truth([("i", 0, 0, 0, 10, 10), ("i", 1, 20, 20, 30, 30)])
    dets = _dets([("i", 0, 0.9, 0, 0, 10, 10), ("i", 2, 0.6, 20, 20, 30, 30)])
    matched = match_detections(dets, truth, ["i"], CLASSES)
    assert precision_recall_at(matched, 0.5) == pytest.approx(
        {"threshold": 0.5, "precision": 0.5, "recall": 0.5, "n_detections": 2}
    )
    assert precision_recall_at(matched, 0.7)["precision"] == 1.0


# --------------------------------------------------------------------------- cascade


def test_cascade_spans_yolo_alone_to_annotator_alone() -> None:
    yolo = pd.DataFrame(
        {
            "image_id": ["i1", "i2", "i3", "i4"],
            "predicted_class": ["a", "b", "a", NO_DETECTION],
            "top_confidence": [0.9, 0.6, 0.3, 0.0],
        }
    )
    truth = {"i1": "a", "i2": "a", "i3": "a", "i4": "c"}
    annotator_answers = {"i1": "b", "i2": "a", "i3": "a", "i4": "c"}
    asked: list[list[str]] = []

    def annotator(ids):
        asked.append(sorted(ids))
        return {i: annotator_answers[i] for i in ids}

    curve = cascade_curve(yolo, truth, annotator, thresholds=[0.0, 0.5, 1.0])
    assert len(asked) == 1  # the annotator is asked once, for the widest escalation
    assert asked[0] == ["i1", "i2", "i3", "i4"]
    rows = curve.set_index("threshold")
    assert rows.loc[0.0, "escalated_share"] == 0 and rows.loc[0.0, "accuracy"] == 0.5
    assert rows.loc[0.5, "n_escalated"] == 2 and rows.loc[0.5, "accuracy"] == 0.75
    assert rows.loc[1.0, "escalated_share"] == 1 and rows.loc[1.0, "accuracy"] == 0.75


def test_cascade_costs_follow_the_cost_module() -> None:
    curve = pd.DataFrame(
        {"threshold": [0.0, 0.5], "escalated_share": [0.0, 0.25], "accuracy": [0.8, 0.9]}
    )
    costed = cascade_costs(
        curve, annotator_usd_per_image=0.01, yolo_latency_s=0.036, vm_usd_per_hour=1.0
    )
    yolo_per_1000 = 1000 * 0.036 / 3600
    assert costed["usd_per_1000_cascade"].tolist() == pytest.approx(
        [yolo_per_1000, yolo_per_1000 + 2.5]
    )
    assert costed["usd_per_1000_annotator_only"].tolist() == pytest.approx([10.0, 10.0])


# --------------------------------------------------------------------------- prices, tables


def test_annotator_price_prefers_a_measured_cost_over_the_estimate() -> None:
    measured = {
        "status_counts": {"ok": 100, "failed": 2},
        "recorded_cost_usd": 0.5,
        "estimate": {"model": "gpt-4o", "per_request_usd": 0.002},
    }
    price, origin = annotator_price_per_image(measured)
    assert price == pytest.approx(0.005) and "measured" in origin
    offline = {**measured, "recorded_cost_usd": 0.0}
    price, origin = annotator_price_per_image(offline)
    assert price == pytest.approx(0.002) and "gpt-4o" in origin
    with pytest.raises(ValueError):
        annotator_price_per_image({"status_counts": {"ok": 3}, "recorded_cost_usd": 0})


def test_comparison_table_states_the_target_verdict() -> None:
    comparison = Comparison(
        metric="map50",
        reference="human",
        candidate="pseudo",
        reference_value=0.8,
        candidate_value=0.78,
        difference=-0.02,
        difference_ci=(-0.05, 0.01),
        ratio=0.975,
        ratio_ci=(0.94, 1.01),
        share_of_samples_candidate_worse=0.9,
        level=0.95,
        target_ratio=0.97,
        target_met=True,
    )
    for given in (comparison, comparison.model_dump()):
        table = comparison_table(given, target_ratio=0.97)["value"]
        assert table["mAP50 difference (candidate − reference)"] == -0.02
        assert table["estimate reaches 97% of the reference"]
        assert not table["whole interval at or above 97%"]
        assert table["97% still inside the interval"]
    stricter = comparison_table(comparison, target_ratio=0.98)["value"]  # a notebook's own target
    assert not stricter["estimate reaches 98% of the reference"]
    accuracy = comparison.model_copy(update={"metric": "accuracy"})
    assert "accuracy ratio (candidate / reference)" in comparison_table(accuracy)["value"]
    assert "needs both" in comparison_table({})["value"].iloc[0]


def test_headline_source_prefers_pseudo_then_human() -> None:
    assert headline_source(pd.DataFrame(index=["human", "pseudo"])) == "pseudo"
    assert headline_source(pd.DataFrame(index=["seed_only", "human"])) == "human"
    assert headline_source(pd.DataFrame(index=["noise_0.1"])) == "noise_0.1"


def test_default_escalation_thresholds_spread_over_the_share_escalated() -> None:
    confidence = pd.Series(np.linspace(0.5, 0.99, 200) ** 0.2)  # crowded near the top
    yolo = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(200)],
            "predicted_class": "a",
            "top_confidence": confidence,
        }
    )
    curve = cascade_curve(yolo, dict.fromkeys(yolo["image_id"], "a"), {})
    shares = curve["escalated_share"].to_numpy()
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert np.diff(shares).max() <= 0.06  # about 1/20 per step, never one big jump


def test_ultralytics_agreement_reports_the_absolute_gap() -> None:
    metrics = pd.DataFrame(
        {
            "map50": [0.70, 0.30],
            "map50_ultralytics": [0.69, 0.32],
            "map50_95": [0.4, 0.1],
            "map50_95_ultralytics": [0.4, 0.1],
        },
        index=["human", "pseudo"],
    )
    table = ultralytics_agreement(metrics)
    assert table["abs_gap_map50"].tolist() == [0.01, 0.02]
    assert list(table.columns)[:2] == ["map50", "map50_ultralytics"]

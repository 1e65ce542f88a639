"""What score and shape tell apart: features, AUC, the seeds' shape prior, a reviewed verifier."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cascade_defect.metrics.box_ranking import (
    box_features,
    held_out_verifier,
    ranking_auc,
    reviewed_verifier,
    seed_shape_ratio,
)


def _boxes(rows: list[tuple[str, str, float, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["image_id", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    )


def test_features_are_log_score_area_aspect_and_the_class_position() -> None:
    boxes = _boxes([("1", "b", 0.0, 0.0, 0.5, 0.25, 0.5), ("2", "a", 0.2, 0.2, 0.3, 0.6, 1.0)])
    features = box_features(boxes, ["a", "b"])
    assert features["log_score"].tolist() == pytest.approx([math.log(0.5), 0.0])
    assert features["log_area"].tolist() == pytest.approx([math.log(0.125), math.log(0.04)])
    assert features["log_aspect"].tolist() == pytest.approx([math.log(2.0), math.log(0.25)])
    assert features["class_code"].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\['b'\] not among \['a'\]"):
        box_features(boxes, ["a"])


def test_auc_counts_the_pairs_a_hit_ranks_above_a_false_box() -> None:
    # hits at 0.9 and 0.4, false boxes at 0.8 and 0.1: 3 of the 4 pairs in order
    assert ranking_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.1])) == 0.75
    assert math.isnan(ranking_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def _large_hits_small_false(n_images: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Per image two large hits and two small false boxes, scores drawn alike for both."""
    rng = np.random.default_rng(seed)
    rows, hits = [], []
    for i in range(n_images):
        for side, hit in ((0.5, True), (0.45, True), (0.08, False), (0.1, False)):
            x = rng.uniform(0, 1 - side)
            rows.append((str(i), "a", x, x, x + side, x + side, rng.uniform(0.05, 1.0)))
            hits.append(hit)
    return _boxes(rows), np.array(hits)


def test_the_seeds_shape_prior_favours_boxes_shaped_like_the_seed_boxes() -> None:
    boxes, hits = _large_hits_small_false(20)
    seeds = _boxes([("s", "a", 0.1, 0.1, 0.6, 0.6, 1.0), ("s", "a", 0.0, 0.2, 0.45, 0.65, 1.0)])
    ratio = seed_shape_ratio(boxes, seeds)
    assert ratio[hits].min() > ratio[~hits].max()
    # a class the seeds never show gets no prior either way
    other = boxes.assign(class_name="b")
    assert (seed_shape_ratio(other, seeds) == 0).all()


def test_a_verifier_taught_on_reviewed_images_learns_what_the_score_does_not_know() -> None:
    boxes, hits = _large_hits_small_false(60)
    features = box_features(boxes, ["a"])
    reviewed = {str(i) for i in range(20)}
    prob = reviewed_verifier(features, hits, boxes["image_id"], reviewed)
    held = ~boxes["image_id"].isin(reviewed).to_numpy()
    assert abs(ranking_auc(hits[held], features["log_score"][held]) - 0.5) < 0.1
    assert ranking_auc(hits[held], prob[held]) > 0.95
    assert (prob[held][hits[held]] >= 0.5).mean() > 0.9
    assert (prob[held][~hits[held]] < 0.5).mean() > 0.9
    # taught on the whole pool, five folds by image: every box judged by folds that never saw it
    assert ranking_auc(hits, held_out_verifier(features, hits, boxes["image_id"])) > 0.95


def test_a_review_that_only_accepted_or_saw_nothing() -> None:
    boxes, hits = _large_hits_small_false(3)
    features = box_features(boxes, ["a"])
    accepted = np.ones(len(boxes), dtype=bool)
    assert (reviewed_verifier(features, accepted, boxes["image_id"], {"0"}) == 1.0).all()
    with pytest.raises(ValueError, match="none of the reviewed images has a box"):
        reviewed_verifier(features, hits, boxes["image_id"], {"missing"})

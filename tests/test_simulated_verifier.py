"""A simulated box verifier: which boxes it keeps at a known accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade_defect.train.simulated_verifier import simulated_verification

COLUMNS = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]


def truth_and_boxes() -> tuple[pd.DataFrame, pd.DataFrame]:
    gt = pd.DataFrame(
        [("a", "crack", 0.0, 0.0, 0.5, 0.5), ("b", "hole", 0.5, 0.5, 1.0, 1.0)],
        columns=["image_id", "class_name", "x1", "y1", "x2", "y2"],
    )
    boxes = pd.DataFrame(
        [
            ("a", "detector", "crack", 0.0, 0.0, 0.5, 0.45, 0.9),  # hit
            ("a", "detector", "crack", 0.0, 0.0, 0.5, 0.5, 0.8),  # also IoU >= 0.5: the hit
            ("a", "detector", "crack", 0.6, 0.6, 0.9, 0.9, 0.3),  # off every defect
            ("b", "detector", "crack", 0.5, 0.5, 1.0, 1.0, 0.7),  # the hole, named crack
            ("b", "whole", "hole", 0.0, 0.0, 1.0, 1.0, 0.9),  # IoU 0.25: false
            ("b", "whole", "hole", 0.5, 0.5, 1.0, 0.95, 0.9),  # hit of the other strategy
            ("c", "detector", "crack", 0.1, 0.1, 0.2, 0.2, 0.5),  # an image out of scope
        ],
        columns=COLUMNS,
        index=[10, 11, 12, 13, 14, 15, 16],  # not a range: the rows are kept by their place
    )
    return gt, boxes


def test_a_verifier_never_wrong_keeps_the_hits_of_each_strategy_and_nothing_else() -> None:
    gt, boxes = truth_and_boxes()
    kept = simulated_verification(boxes, gt, ["a", "b"], accuracy=1.0, seed=0)
    # one-to-one: of the two boxes on a's crack the better one (IoU 1) is the hit
    assert kept.index.tolist() == [11, 15, 16]  # and the out-of-scope box stays
    always_wrong = simulated_verification(boxes, gt, ["a", "b"], accuracy=0.0, seed=0)
    assert always_wrong.index.tolist() == [10, 12, 13, 14, 16]


def test_a_verifier_right_on_a_share_keeps_that_share_of_hits_and_the_rest_of_false_boxes() -> None:
    rng = np.random.default_rng(1)
    n = 800
    image_ids = [f"img{i}" for i in range(n)]
    gt = pd.DataFrame(
        {"image_id": image_ids, "class_name": "crack", "x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.5}
    )
    hits = gt.assign(strategy="detector", confidence=rng.random(n))
    false = hits.assign(x1=0.6, y1=0.6, x2=0.9, y2=0.9)
    boxes = pd.concat([hits, false], ignore_index=True)[COLUMNS]
    kept = simulated_verification(boxes, gt, image_ids, accuracy=0.8, seed=7)
    hits_kept = (kept.index < n).sum() / n
    false_kept = (kept.index >= n).sum() / n
    assert hits_kept == pytest.approx(0.8, abs=0.045)
    assert false_kept == pytest.approx(0.2, abs=0.045)
    again = simulated_verification(boxes, gt, image_ids, accuracy=0.8, seed=7)
    assert again.index.equals(kept.index)  # the seed fixes the verifier's mistakes
    other = simulated_verification(boxes, gt, image_ids, accuracy=0.8, seed=8)
    assert not other.index.equals(kept.index)


def test_an_accuracy_outside_zero_to_one_is_refused() -> None:
    gt, boxes = truth_and_boxes()
    with pytest.raises(ValueError, match="accuracy lies in"):
        simulated_verification(boxes, gt, ["a"], accuracy=1.2, seed=0)

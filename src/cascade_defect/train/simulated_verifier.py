"""What a box verifier would be worth before one is paid for: pseudo boxes kept as a verifier of
known accuracy would keep them.

A verifier (the MLLM shown the numbered candidate boxes of the ``mllm_verified`` strategy, or the
offline crop classifier) keeps or drops each box the seed detector proposes. Whether one is worth
its requests depends on how much a detector trained on the kept boxes gains, and that depends on
how often the verifier is right. The pool's truth answers it without any verifier: each pseudo
box is judged as chapter 04 judges it (a class-aware hit at IoU 0.5, matched one to one), then
kept as a verifier right on a share ``accuracy`` of boxes would keep it, each box on its own: a hit
with probability ``accuracy``, a false box with probability ``1 - accuracy``. ``accuracy`` 1 is a
verifier that is never wrong; 0.5 a coin. The box-noise benchmark
(``scripts/bench_box_noise.py --verified``) trains chapter 05's pseudo source on such boxes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from cascade_defect.metrics.box_quality import DEFAULT_IOU_THRESHOLD, match_strategy

VERIFIED = "verified"
"""The box-noise table's kind of a row trained on boxes a simulated verifier kept."""


def simulated_verification(
    pseudo_boxes: pd.DataFrame,
    gt_norm: pd.DataFrame,
    image_ids: Iterable[str],
    accuracy: float,
    seed: int,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> pd.DataFrame:
    """The rows of ``pseudo_boxes`` a verifier right on ``accuracy`` of boxes keeps.

    Boxes of every strategy in the table are judged within their strategy, on the images
    ``image_ids`` names (the answered pool images, as chapter 04 scopes them); boxes of other
    images are kept as they are. ``seed`` fixes the verifier's mistakes, so a row of the
    benchmark can be trained again.
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"a verifier's accuracy lies in [0, 1], got {accuracy}")
    boxes = pseudo_boxes.reset_index(drop=True)
    scope = list(dict.fromkeys(str(i) for i in image_ids))
    in_scope = boxes["image_id"].astype(str).isin(set(scope))
    gt = gt_norm[gt_norm["image_id"].astype(str).isin(set(scope))]
    hit = pd.Series(False, index=boxes.index)
    for _, chosen in boxes[in_scope].groupby("strategy", sort=True):
        predictions = match_strategy(gt, chosen, scope, iou_threshold).predictions
        hit.loc[predictions["box_index"].to_numpy()] = predictions["matched_aware"].to_numpy(bool)
    draw = np.random.default_rng(seed).random(len(boxes))
    right = draw < accuracy
    keep = ~in_scope.to_numpy() | np.where(hit.to_numpy(), right, ~right)
    return pseudo_boxes[keep]

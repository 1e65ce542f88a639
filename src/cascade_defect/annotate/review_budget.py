"""Which pool images a person should review first, when only ``k`` of them can be reviewed.

The review budget benchmark asks how many reviewed images it takes for a detector trained on
"pseudo-labels + k reviewed images" to reach the human-labelled one. Three orders choose the
``k`` images (each one ranks the whole pool; a budget takes its first ``k``, so a larger budget
always contains a smaller one):

- ``random``: a seeded permutation of the pool's ids (sorted first, so it does not depend on the
  listing's order).
- ``audit``: the audit's review order (:func:`~cascade_defect.annotate.review_export.
  review_order`, the order of the review export's rows): the audit's disagreements, the most
  confident first, then the unanswered images, then the rest, the least confident first. It
  reads the audit's verdicts, which come from the pool's ground truth: it is what a reviewer
  guided by a perfect audit would fix, an upper reference rather than a deployable policy.
- ``confidence``: needs no ground truth; what a team can do with the annotator alone. Images
  without a usable answer (failed, missing) first, then the answered ones, the least confident
  first (ties by id).
- ``disagreement``: needs no ground truth. Each image scores ``class_conflict + (1 -
  box_agreement)``, highest first (ties: the least confident, then by id). ``box_agreement`` is
  the symmetric mean best IoU between two box strategies' boxes (by default ``seed_detector``
  and ``self_training``): each box of either set is scored by its best IoU with the other set,
  and the scores are averaged over both sets (0 when either set is empty). ``class_conflict`` is
  1 when the image has no usable pseudo class (failed, missing, ``no_defect``), when a box
  carries another class than the image's, or when one of the two strategies fell back to the
  whole-image box (the seed detector proposed nothing, or the class-aware teachers found nothing
  of the annotator's class, so the detector and the image class disagree); else 0.

A budget source is named ``review_<order>_<k>`` (``review_random_36``, ``review_audit_144``);
:mod:`cascade_defect.train.review_sources` composes it: the chosen images get the ground truth
(a person boxing them, simulated), the others keep their pseudo-labels.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cascade_defect.annotate.boxes import WHOLE_IMAGE
from cascade_defect.annotate.review_export import review_order
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.metrics.detection import box_iou

log = logging.getLogger(__name__)

RANDOM_ORDER_SALT = 7919
"""Keeps the random review order independent of every other draw seeded with the same number."""

REVIEW_ORDERS: tuple[str, ...] = ("random", "confidence", "disagreement", "audit")
REVIEW_SOURCE_PREFIX = "review_"
DISAGREEMENT_STRATEGIES: tuple[str, str] = ("seed_detector", "self_training")
_SOURCE_PATTERN = re.compile(r"^review_(?P<order>[a-z]+)_(?P<k>\d+)$")
_CORNERS = ["x1", "y1", "x2", "y2"]


def review_source(order: str, k: int) -> str:
    """The label-source name of a review budget, e.g. ``review_audit_144``."""
    if order not in REVIEW_ORDERS:
        raise ValueError(f"unknown review order {order!r}; known: {list(REVIEW_ORDERS)}")
    if k < 0:
        raise ValueError(f"a review budget is a count of images, got {k}")
    return f"{REVIEW_SOURCE_PREFIX}{order}_{k}"


def parse_review_source(source: str) -> tuple[str, int] | None:
    """``(order, k)`` of a ``review_<order>_<k>`` source; None for any other source name."""
    if not source.startswith(REVIEW_SOURCE_PREFIX):
        return None
    match = _SOURCE_PATTERN.match(source)
    if match is None or match["order"] not in REVIEW_ORDERS:
        raise ValueError(
            f"malformed review source {source!r}; expected review_<order>_<k> with order one of "
            f"{list(REVIEW_ORDERS)}, e.g. 'review_random_36'"
        )
    return match["order"], int(match["k"])


def random_order(pool_ids: Sequence[str], seed: int) -> list[str]:
    """The pool's ids in a seeded random order (the same for every budget and every caller)."""
    ids = sorted(set(map(str, pool_ids)))
    # Salted: the validation hold-out is the same permutation of the same sorted ids under the
    # bare seed (train.sources.holdout_ids), so unsalted the first budgets would be exactly the
    # hold-out images and a review would change validation labels only.
    rng = np.random.default_rng([seed, RANDOM_ORDER_SALT])
    return [ids[i] for i in rng.permutation(len(ids))]


def confidence_order(pool_ids: Sequence[str], labels: pd.DataFrame) -> list[str]:
    """The pool's ids, unanswered images first, then the least confident answer first."""
    frame = labels.assign(image_id=labels["image_id"].astype(str)).drop_duplicates("image_id")
    frame = frame.set_index("image_id")
    rows = []
    for image_id in sorted(set(map(str, pool_ids))):
        known = image_id in frame.index
        answered = known and frame.at[image_id, "status"] == "ok"
        confidence = (
            pd.to_numeric(frame.at[image_id, "confidence"], errors="coerce") if known else math.nan
        )
        rows.append(
            (0 if not answered else 1, -1.0 if math.isnan(confidence) else confidence, image_id)
        )
    return [image_id for *_, image_id in sorted(rows)]


def audit_order(audit_images: pd.DataFrame, pool_ids: Sequence[str]) -> list[str]:
    """The pool's ids in the audit's review order; every pool image must be in the table."""
    ranked = [str(i) for i in review_order(audit_images)["image_id"]]
    pool = set(map(str, pool_ids))
    missing = pool - set(ranked)
    if missing:
        raise ValueError(
            f"the audit's image table lacks {len(missing)} pool image(s), e.g. "
            f"{sorted(missing)[0]!r}: run notebook 04 (label audit) again on this split"
        )
    return [i for i in ranked if i in pool]


def _corners(frame: pd.DataFrame) -> np.ndarray:
    return frame[_CORNERS].to_numpy(dtype=float).reshape(-1, 4)


def box_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean best IoU of two box sets (corner boxes); 0 when either is empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    iou = box_iou(a, b)
    return float((iou.max(axis=1).sum() + iou.max(axis=0).sum()) / (len(a) + len(b)))


def disagreement_table(
    pool_ids: Sequence[str],
    labels: pd.DataFrame,
    boxes: pd.DataFrame,
    strategies: tuple[str, str] = DISAGREEMENT_STRATEGIES,
) -> pd.DataFrame:
    """Per pool image: ``confidence, box_agreement, class_conflict, score`` (module docstring).

    When chapter 03 wrote only one of the two strategies, every agreement is 1 (no evidence
    either way) and the order rests on the class conflicts and the confidence.
    """
    written = set(boxes["strategy"].dropna().astype(str)) if len(boxes) else set()
    compare = all(s in written for s in strategies)
    if not compare:
        log.warning(
            "disagreement order: the pseudo-boxes lack %s; box agreement is left out",
            sorted(set(strategies) - written),
        )
    frame = labels.assign(image_id=labels["image_id"].astype(str)).drop_duplicates("image_id")
    frame = frame.set_index("image_id")
    boxes = boxes.assign(image_id=boxes["image_id"].astype(str))
    by_image = {k: g for k, g in boxes.groupby("image_id")} if len(boxes) else {}
    empty = boxes.iloc[:0]
    rows = []
    for image_id in sorted(set(map(str, pool_ids))):
        known = image_id in frame.index
        status = frame.at[image_id, "status"] if known else "missing"
        image_class = frame.at[image_id, "defect_class"] if known else None
        confidence = (
            pd.to_numeric(frame.at[image_id, "confidence"], errors="coerce") if known else math.nan
        )
        usable = status == "ok" and isinstance(image_class, str) and image_class != NO_DEFECT
        mine = by_image.get(image_id, empty)
        sets = [_corners(mine[mine["strategy"] == s]) for s in strategies]
        agreement = box_agreement(*sets) if compare else 1.0
        fallback = any(np.allclose(box, WHOLE_IMAGE) for found in sets for box in found)
        foreign = bool(len(mine)) and usable and mine["class_name"].ne(image_class).any()
        conflict = float(not usable or fallback or foreign)
        rows.append(
            {
                "image_id": image_id,
                "confidence": float(confidence),
                "box_agreement": agreement,
                "class_conflict": conflict,
                "score": conflict + (1.0 - agreement),
            }
        )
    return pd.DataFrame(
        rows, columns=["image_id", "confidence", "box_agreement", "class_conflict", "score"]
    )


def disagreement_order(
    pool_ids: Sequence[str],
    labels: pd.DataFrame,
    boxes: pd.DataFrame,
    strategies: tuple[str, str] = DISAGREEMENT_STRATEGIES,
) -> list[str]:
    """The pool's ids, the highest disagreement score first (ties: least confident, then id)."""
    table = disagreement_table(pool_ids, labels, boxes, strategies)
    table = table.assign(_neg=-table["score"], _conf=table["confidence"].fillna(-1.0))
    table = table.sort_values(["_neg", "_conf", "image_id"], kind="stable")
    return list(table["image_id"])


def review_ranking(
    order: str,
    pool_ids: Sequence[str],
    *,
    labels: pd.DataFrame | None = None,
    boxes: pd.DataFrame | None = None,
    audit_images: pd.DataFrame | None = None,
    seed: int = 0,
) -> list[str]:
    """Every pool image in ``order``: what each order needs is named in the error if missing."""
    if order == "random":
        return random_order(pool_ids, seed)
    if order == "confidence":
        if labels is None:
            raise ValueError("the confidence order needs chapter 03's labels")
        return confidence_order(pool_ids, labels)
    if order == "audit":
        if audit_images is None:
            raise ValueError("the audit order needs the audit's image table (notebook 04)")
        return audit_order(audit_images, pool_ids)
    if order == "disagreement":
        if labels is None or boxes is None:
            raise ValueError("the disagreement order needs chapter 03's labels and boxes")
        return disagreement_order(pool_ids, labels, boxes)
    raise ValueError(f"unknown review order {order!r}; known: {list(REVIEW_ORDERS)}")


def select_for_review(
    order: str,
    k: int,
    pool_ids: Sequence[str],
    *,
    labels: pd.DataFrame | None = None,
    boxes: pd.DataFrame | None = None,
    audit_images: pd.DataFrame | None = None,
    seed: int = 0,
) -> list[str]:
    """The first ``k`` pool images of ``order`` (:func:`review_ranking`)."""
    n_pool = len(set(map(str, pool_ids)))
    if not 0 <= k <= n_pool:
        raise ValueError(f"a review budget of {k} images does not fit a pool of {n_pool}")
    if k == 0:
        return []
    ranking = review_ranking(
        order, pool_ids, labels=labels, boxes=boxes, audit_images=audit_images, seed=seed
    )
    return ranking[:k]


def smallest_budget(table: pd.DataFrame, targets: Sequence[float] = (0.9, 0.97)) -> pd.DataFrame:
    """Per order and target share of the reference, the smallest budget ``k`` whose ``ratio``
    reaches it (NaN with ``note="not reached"`` when none of the budgets tried does).

    ``table`` has one row per trained budget: ``order``, ``k``, ``ratio``.
    """
    rows = []
    for order in [o for o in REVIEW_ORDERS if (table["order"] == o).any()]:
        mine = table[table["order"] == order].astype({"k": int}).sort_values("k", kind="stable")
        for target in targets:
            reached = mine[pd.to_numeric(mine["ratio"], errors="coerce") >= target]
            first = reached.iloc[0] if len(reached) else None
            rows.append(
                {
                    "order": order,
                    "target": target,
                    "smallest_k": int(first["k"]) if first is not None else math.nan,
                    "ratio": float(first["ratio"]) if first is not None else math.nan,
                    "largest_k_tried": int(mine["k"].max()),
                    "note": "reached" if first is not None else "not reached",
                }
            )
    return pd.DataFrame(
        rows, columns=["order", "target", "smallest_k", "ratio", "largest_k_tried", "note"]
    )

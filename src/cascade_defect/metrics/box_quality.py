"""How well pseudo-boxes cover the ground-truth boxes: best IoU, recall and precision per class.

Chapter 04 judges each box strategy with these before any detector is trained on its boxes;
matching is one-to-one and maximal, so the figures do not depend on box order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from cascade_defect.metrics.classification import _mean_or_nan
from cascade_defect.metrics.detection import box_iou

DEFAULT_IOU_THRESHOLD = 0.5
FRAGMENT_SHARE = 0.6
"""A false box with at least this share of its area inside one truth box is a fragment of it."""
LOOSE_IOU = 0.1
"""A false box overlapping a truth box at least this much (IoU), or holding most of one, but not
inside it, is loose."""
FALSE_BOX_KINDS = ("duplicate", "other_class", "fragment", "loose", "background", "defect_free")
"""What a predicted box that finds no defect of its class is (:func:`false_box_kind`)."""
BOX_KINDS = ("hit", *FALSE_BOX_KINDS)
"""Every predicted box is one of these: a class-aware hit, or a false box of one kind."""


_BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


def normalise_gt_boxes(gt_boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth pixel boxes as normalised ``x1, y1, x2, y2`` (the pseudo-boxes' frame).

    Coordinates are divided by the image's width and height from the pool listing, the same
    convention the YOLO exports use; an image without a known size is an error, not a guess.
    """
    if gt_boxes.empty:
        return pd.DataFrame(columns=["image_id", "class_name", *_BOX_COLUMNS])
    merged = gt_boxes.merge(
        sizes[["image_id", "width", "height"]], on="image_id", how="left", validate="many_to_one"
    )
    unknown = merged["width"].isna() | merged["height"].isna()
    if unknown.any():
        example = merged.loc[unknown, "image_id"].iloc[0]
        raise ValueError(
            f"{int(unknown.sum())} boxes belong to images of unknown size, e.g. {example}"
        )
    return pd.DataFrame(
        {
            "image_id": merged["image_id"],
            "class_name": merged["class_name"],
            "x1": merged["xmin"] / merged["width"],
            "y1": merged["ymin"] / merged["height"],
            "x2": merged["xmax"] / merged["width"],
            "y2": merged["ymax"] / merged["height"],
        }
    )


def match_boxes(allowed: np.ndarray, iou: np.ndarray | None = None) -> list[tuple[int, int]]:
    """One-to-one matching of ground truth (rows) to predictions (columns) with most matches.

    ``allowed`` marks the pairs that may match (IoU at or above the threshold, same class when
    class-aware). The number of matches is maximised (Hungarian algorithm), so it does not
    depend on the order of boxes or on ties; among maximal matchings the one with the highest
    total IoU is chosen when ``iou`` is given. Returns ``(gt_index, prediction_index)`` pairs.
    """
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.size == 0 or not allowed.any():
        return []
    bonus = np.zeros(allowed.shape) if iou is None else np.clip(np.asarray(iou, float), 0, 1)
    weight_per_match = min(allowed.shape) + 1.0  # one more match outweighs any IoU total
    weights = np.where(allowed, weight_per_match + bonus, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c])


def false_box_kind(
    iou: np.ndarray,
    inside: np.ndarray,
    covers: np.ndarray,
    same_class: np.ndarray,
    iou_threshold: float,
) -> str:
    """What one unmatched predicted box is, from its overlaps with its image's truth boxes.

    One entry per truth box: ``iou``, ``inside`` (the share of the predicted box's area inside
    that truth box), ``covers`` (the share of the truth box inside the predicted box) and
    ``same_class``. The kinds tell apart mistakes a detector trained on the boxes pays for
    differently (chapter 06's box-noise map): a second box on a found defect (``duplicate``), a
    box on a defect of another class (``other_class``), a piece of a defect (``fragment``), a box
    on a defect but drawn too large or off it (``loose``), a box on no defect of an image that
    has some (``background``), and a box on an image without any (``defect_free``: on a line,
    the annotator's false alarm rather than the box source's mistake). The box-noise sweep's
    ``train.box_mistakes`` samples real mistakes by a coarser, class-agnostic rule of its own
    (best IoU), which its recorded rows are fingerprinted on.
    """
    if not len(iou):
        return "defect_free"
    hit = iou >= iou_threshold
    if (hit & same_class).any():
        return "duplicate"
    if hit.any():
        return "other_class"
    if inside.max() >= FRAGMENT_SHARE:
        return "fragment"
    if iou.max() >= LOOSE_IOU or covers.max() >= FRAGMENT_SHARE:
        return "loose"
    return "background"


def _shares_inside(
    pred: np.ndarray, gt: np.ndarray, iou: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(n_pred, n_gt) shares of each predicted box inside each truth box, and of each truth box
    inside each predicted box, from their IoU: IoU = I / (A + B - I), so I = IoU (A + B) /
    (1 + IoU), with no second intersection pass."""

    def area(boxes: np.ndarray) -> np.ndarray:
        return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
            boxes[:, 3] - boxes[:, 1], 0, None
        )

    pred_area, gt_area = area(pred)[:, None], area(gt)[None, :]
    inter = iou.T * (pred_area + gt_area) / (1.0 + iou.T)

    def share(of: np.ndarray) -> np.ndarray:
        return np.divide(
            inter, of, out=np.zeros_like(inter), where=np.broadcast_to(of > 0, inter.shape)
        )

    return share(pred_area), share(gt_area)


@dataclass
class BoxMatches:
    """Per-box outcomes of one strategy: one row per ground-truth box, one per predicted box."""

    gt: pd.DataFrame
    predictions: pd.DataFrame


def match_strategy(
    gt_norm: pd.DataFrame,
    pseudo: pd.DataFrame,
    image_ids: Iterable[str],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> BoxMatches:
    """Best IoU and matches at ``iou_threshold`` for every box of the given images.

    Each predicted box's row keeps its index in ``pseudo`` (``box_index``), so a caller can act on
    the boxes by what they are.

    An image without predictions leaves its ground-truth boxes with best IoU 0 and unmatched;
    an image without ground truth makes all its predictions false positives.
    """
    gt_by_image = {k: g for k, g in gt_norm.groupby("image_id")} if len(gt_norm) else {}
    pr_by_image = {k: g for k, g in pseudo.groupby("image_id")} if len(pseudo) else {}
    empty = pd.DataFrame(columns=["image_id", "class_name", *_BOX_COLUMNS])
    gt_rows: list[dict] = []
    pred_rows: list[dict] = []
    for image_id in image_ids:
        gt = gt_by_image.get(image_id, empty)
        pr = pr_by_image.get(image_id, empty)
        iou = box_iou(gt[_BOX_COLUMNS].to_numpy(float), pr[_BOX_COLUMNS].to_numpy(float))
        same_class = (
            gt["class_name"].to_numpy()[:, None] == pr["class_name"].to_numpy()[None, :]
            if len(gt) and len(pr)
            else np.zeros(iou.shape, dtype=bool)
        )
        hit = iou >= iou_threshold
        agnostic = match_boxes(hit, iou)
        aware = match_boxes(hit & same_class, iou)
        gt_agnostic = {g for g, _ in agnostic}
        gt_aware = {g: float(iou[g, q]) for g, q in aware}
        pr_agnostic = {p for _, p in agnostic}
        pr_aware = {p for _, p in aware}
        inside, covers = _shares_inside(
            pr[_BOX_COLUMNS].to_numpy(float), gt[_BOX_COLUMNS].to_numpy(float), iou
        )
        best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(gt))
        best_same = (
            np.where(same_class, iou, 0.0).max(axis=1) if iou.shape[1] else np.zeros(len(gt))
        )
        for i, name in enumerate(gt["class_name"]):
            gt_rows.append(
                {
                    "image_id": image_id,
                    "class_name": name,
                    "best_iou": float(best[i]),
                    "best_iou_same_class": float(best_same[i]),
                    "matched_agnostic": i in gt_agnostic,
                    "matched_aware": i in gt_aware,
                    "matched_iou_aware": gt_aware.get(i, np.nan),
                }
            )
        for j, name in enumerate(pr["class_name"]):
            pred_rows.append(
                {
                    "image_id": image_id,
                    "class_name": name,
                    "matched_agnostic": j in pr_agnostic,
                    "matched_aware": j in pr_aware,
                    "box_index": pr.index[j],
                    "kind": "hit"
                    if j in pr_aware
                    else false_box_kind(
                        iou[:, j], inside[j], covers[j], same_class[:, j], iou_threshold
                    ),
                }
            )
    gt_columns = [
        "image_id",
        "class_name",
        "best_iou",
        "best_iou_same_class",
        "matched_agnostic",
        "matched_aware",
        "matched_iou_aware",
    ]
    pred_columns = [
        "image_id", "class_name", "matched_agnostic", "matched_aware", "box_index", "kind"
    ]  # fmt: skip
    return BoxMatches(
        gt=pd.DataFrame(gt_rows, columns=gt_columns),
        predictions=pd.DataFrame(pred_rows, columns=pred_columns),
    )


def summarise_matches(matches: BoxMatches, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class and overall (``all``): mean best IoU, recall and precision at the IoU threshold.

    Class-aware counts need the predicted box's class to equal the ground truth's; class-agnostic
    counts only need the overlap. ``matched_iou_aware`` is the mean IoU of the class-aware hits
    alone: how tightly the found boxes sit, which costs a detector trained on them more than
    missed or false boxes do (chapter 06's box-noise map), and which mean best IoU mixes with
    recall. Per class, recall is over that class's ground-truth boxes and
    precision over the boxes predicted as that class. An undefined ratio (no boxes) is NaN.
    ``n_hit`` counts the class-aware hits and ``n_duplicate`` ... ``n_defect_free`` the false
    boxes of each kind (:func:`false_box_kind`); together they add up to ``n_pred``.
    """
    rows = []
    for name in [*class_names, "all"]:
        gt = matches.gt if name == "all" else matches.gt[matches.gt["class_name"] == name]
        pr = (
            matches.predictions
            if name == "all"
            else matches.predictions[matches.predictions["class_name"] == name]
        )
        rows.append(
            {
                "class_name": name,
                "n_gt": len(gt),
                "n_pred": len(pr),
                "mean_best_iou": _mean_or_nan(gt["best_iou"]),
                "mean_best_iou_same_class": _mean_or_nan(gt["best_iou_same_class"]),
                "recall_aware": _mean_or_nan(gt["matched_aware"]),
                "precision_aware": _mean_or_nan(pr["matched_aware"]),
                "recall_agnostic": _mean_or_nan(gt["matched_agnostic"]),
                "precision_agnostic": _mean_or_nan(pr["matched_agnostic"]),
                "matched_iou_aware": _mean_or_nan(gt["matched_iou_aware"].dropna()),
                **{f"n_{kind}": int((pr["kind"] == kind).sum()) for kind in BOX_KINDS},
            }
        )
    return pd.DataFrame(rows)


def box_quality(
    gt_norm: pd.DataFrame,
    pseudo_boxes: pd.DataFrame,
    image_ids: Iterable[str],
    class_names: Sequence[str],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> pd.DataFrame:
    """:func:`summarise_matches` for every box strategy present, stacked with a ``strategy`` column.

    ``image_ids`` is the scope (the audit uses the answered images): boxes of other images are
    ignored on both sides, so a strategy is judged on the images it was asked to box.
    """
    scope = list(dict.fromkeys(image_ids))
    in_scope = set(scope)
    gt = gt_norm[gt_norm["image_id"].isin(in_scope)]
    frames = []
    for strategy in sorted(pseudo_boxes["strategy"].dropna().unique()):
        chosen = pseudo_boxes[
            (pseudo_boxes["strategy"] == strategy) & pseudo_boxes["image_id"].isin(in_scope)
        ]
        table = summarise_matches(match_strategy(gt, chosen, scope, iou_threshold), class_names)
        table.insert(0, "strategy", str(strategy))
        table["n_images"] = len(scope)
        frames.append(table)
    if not frames:
        return pd.DataFrame(
            columns=["strategy", "class_name", "n_gt", "n_pred", "mean_best_iou", "n_images"]
        )
    return pd.concat(frames, ignore_index=True)


_PIXEL_CORNERS = ["xmin", "ymin", "xmax", "ymax"]
_NORMALISED_CORNERS = ["x1", "y1", "x2", "y2"]


def pixel_box_quality(
    truth: pd.DataFrame, degraded: pd.DataFrame, iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> dict[str, float]:
    """Box recall, precision and mean best IoU of ``degraded`` against ``truth``, as chapter 04
    measures pseudo-boxes, for two box tables in pixels (``xmin, ymin, xmax, ymax``).

    Class-agnostic, one-to-one matching at ``iou_threshold`` (:func:`match_strategy`), over every
    image either table holds. Both tables are in pixels; IoU does not depend on the frame, so no
    image size is needed.
    """

    def corners(table: pd.DataFrame) -> pd.DataFrame:
        frame = table[["image_id", "class_name", *_PIXEL_CORNERS]].copy()
        frame["image_id"] = frame["image_id"].astype(str)
        return frame.rename(columns=dict(zip(_PIXEL_CORNERS, _NORMALISED_CORNERS, strict=True)))

    gt, spoiled = corners(truth), corners(degraded)
    image_ids = sorted(set(gt["image_id"]) | set(spoiled["image_id"]))
    matches = match_strategy(gt, spoiled, image_ids, iou_threshold)
    overall = summarise_matches(matches, []).iloc[0]
    return {
        "n_truth": int(overall["n_gt"]),
        "n_boxes": int(overall["n_pred"]),
        "box_recall": float(overall["recall_agnostic"]),
        "box_precision": float(overall["precision_agnostic"]),
        "mean_iou": float(overall["mean_best_iou"]),
    }


def label_box_quality(
    truth: pd.DataFrame,
    labels: pd.DataFrame,
    image_sizes: pd.DataFrame,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> dict[str, float]:
    """:func:`pixel_box_quality` of a detector's training labels (YOLO ``image_id, class_id, cx,
    cy, w, h``, normalised) against pixel ``truth`` boxes, over the images ``image_sizes`` lists
    (``image_id, width, height``): what a source really trained on, after its exclusions, is
    judged the way the box-noise sweep judges its spoiled boxes. Labels of other images are
    ignored."""
    sizes = image_sizes[["image_id", "width", "height"]].assign(
        image_id=image_sizes["image_id"].astype(str)
    )
    placed = labels.assign(image_id=labels["image_id"].astype(str)).merge(sizes, on="image_id")
    boxes = pd.DataFrame(
        {
            "image_id": placed["image_id"],
            "class_name": placed["class_id"].astype(str),
            "xmin": (placed["cx"] - placed["w"] / 2) * placed["width"],
            "ymin": (placed["cy"] - placed["h"] / 2) * placed["height"],
            "xmax": (placed["cx"] + placed["w"] / 2) * placed["width"],
            "ymax": (placed["cy"] + placed["h"] / 2) * placed["height"],
        }
    )
    in_images = truth[truth["image_id"].astype(str).isin(set(sizes["image_id"]))]
    return pixel_box_quality(in_images, boxes, iou_threshold)

"""Wrong boxes for the box-noise sweep: a detector's real mistakes, jittered and merged boxes.

The box-noise sweep (:mod:`cascade_defect.train.box_noise`) spoils human boxes with mistakes
that look like a real detector's. Two kinds are taken from the seed detector's own proposals:

* **false positives** match no truth box (IoU below 0.5 with every one), fragments included:
  kept where they were, in normalised image corners, so copied into another image most of them
  sit on clean surface;
* **fragments** overlap a truth box, but only partly (best IoU in ``[0.05, 0.5)``): a piece of a
  long scratch, half of a patch, a box straddling a defect's edge. On NEU-DET these are most of
  the seed detector's wrong boxes. Each is kept *relative to the truth box it overlaps most*
  (its corners in units of that box's width and height, from its top-left corner), so it can be
  placed on any other truth box with the same IoU (IoU does not change under shifting and
  per-axis scaling), and so sits where a detector's partial box would.

Both tables come from chapter 03's pseudo-boxes and chapter 02's truth, in normalised corners.
:func:`jitter_box` makes the third kind of wrong box, a loosely drawn one at an exact IoU, and
:func:`merge_neighbours` the fourth, one box wrapped around several neighbouring defects.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components

from cascade_defect.metrics.box_quality import DEFAULT_IOU_THRESHOLD
from cascade_defect.metrics.detection import box_iou

NORMALISED_COLUMNS = ["x1", "y1", "x2", "y2"]
RELATIVE_COLUMNS = ["rx1", "ry1", "rx2", "ry2"]

#: A fragment overlaps its truth box at least this much (below it, a box merely lies near one).
FRAGMENT_MIN_IOU = 0.05

#: Jitter search: largest step (box sizes of shift, e-folds of scale), grid, refinements, tries.
_JITTER_REACH = 3.0
_JITTER_GRID = 33
_JITTER_ROUNDS = 4
_JITTER_DIRECTIONS = 8


def _by_image(table: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        str(key): group[NORMALISED_COLUMNS].to_numpy(float)
        for key, group in table.groupby("image_id")
    }


def _candidates(candidates: pd.DataFrame, drop_whole_image: bool) -> pd.DataFrame:
    """Candidates with text ids, without whole-image boxes (the fallback of an image without
    proposals, not something a detector drew) unless asked to keep them."""
    frame = candidates.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    if drop_whole_image:
        corners = frame[NORMALISED_COLUMNS].to_numpy(float)
        whole = (corners[:, :2] <= 0.0).all(axis=1) & (corners[:, 2:] >= 1.0).all(axis=1)
        frame = frame[~whole]
    return frame.reset_index(drop=True)


def find_false_positives(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    drop_whole_image: bool = True,
) -> pd.DataFrame:
    """The candidate boxes that overlap no truth box of their image: real false positives.

    Both tables are in normalised corners (``image_id, class_name, x1, y1, x2, y2``; chapter 03's
    pseudo-boxes and :func:`normalise_gt_boxes` of the truth). A candidate is false when its IoU
    with every truth box of its image is below ``iou_threshold``, whatever the classes, so the
    pool holds boxes around no defect at all.
    """
    frame = _candidates(candidates, drop_whole_image)
    corners = frame[NORMALISED_COLUMNS].to_numpy(float)
    by_image = _by_image(truth)
    false = np.ones(len(frame), dtype=bool)
    for image_id, positions in frame.groupby("image_id").indices.items():
        gt = by_image.get(image_id)
        if gt is not None and len(gt):
            false[positions] = box_iou(corners[positions], gt).max(axis=1) < iou_threshold
    columns = ["image_id", "class_name", *NORMALISED_COLUMNS]
    return frame.loc[false, columns].reset_index(drop=True)


def find_fragments(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_iou: float = FRAGMENT_MIN_IOU,
    drop_whole_image: bool = True,
) -> pd.DataFrame:
    """The candidate boxes that partly overlap a truth box, relative to the one they overlap most.

    A candidate is a fragment when its best IoU with the truth boxes of its image lies in
    ``[min_iou, iou_threshold)``. It is returned as ``image_id, class_name, iou, rx1, ry1, rx2,
    ry2``: its corners measured from the truth box's top-left corner in units of that box's
    width and height (the truth box itself is ``0, 0, 1, 1``), and its IoU with that box.
    """
    frame = _candidates(candidates, drop_whole_image)
    corners = frame[NORMALISED_COLUMNS].to_numpy(float)
    by_image = _by_image(truth)
    rows = []
    for image_id, positions in frame.groupby("image_id").indices.items():
        gt = by_image.get(image_id)
        if gt is None or not len(gt):
            continue
        iou = box_iou(corners[positions], gt)
        best, owner = iou.max(axis=1), iou.argmax(axis=1)
        for position, value, k in zip(positions, best, owner, strict=True):
            if not min_iou <= value < iou_threshold:
                continue
            tx1, ty1, tx2, ty2 = gt[k]
            size = np.array([tx2 - tx1, ty2 - ty1] * 2)
            relative = (corners[position] - np.array([tx1, ty1, tx1, ty1])) / size
            rows.append(
                {
                    "image_id": image_id,
                    "class_name": frame.at[position, "class_name"],
                    "iou": float(value),
                    **dict(zip(RELATIVE_COLUMNS, relative.tolist(), strict=True)),
                }
            )
    return pd.DataFrame(rows, columns=["image_id", "class_name", "iou", *RELATIVE_COLUMNS])


def random_fragment(rng: np.random.Generator) -> np.ndarray:
    """A fragment's relative corners when no real ones are given: a box drawn around the unit
    truth box (corners uniform in ``[-0.25, 1.25]``) until its IoU with it lies in
    ``[0.1, 0.5)``, so it overlaps the defect but would not count as finding it."""
    unit = np.array([[0.0, 0.0, 1.0, 1.0]])
    while True:
        xs, ys = np.sort(rng.uniform(-0.25, 1.25, 2)), np.sort(rng.uniform(-0.25, 1.25, 2))
        box = np.array([xs[0], ys[0], xs[1], ys[1]])
        if 0.1 <= box_iou(box[None], unit)[0, 0] < 0.5:
            return box


def place_fragment(relative: np.ndarray, truth_box: np.ndarray) -> np.ndarray:
    """Relative corners placed on a truth box (pixels): the inverse of :func:`find_fragments`."""
    x1, y1, x2, y2 = truth_box
    size = np.array([x2 - x1, y2 - y1] * 2)
    return np.array([x1, y1, x1, y1]) + np.asarray(relative, dtype=float) * size


def _moved(
    box: np.ndarray, direction: np.ndarray, steps: np.ndarray, width: float, height: float
) -> np.ndarray:
    """``box`` moved along ``direction`` by each step, cut to the image: (len(steps), 4).

    Step ``a`` shifts the centre by ``a * d0`` box widths and ``a * d1`` box heights and scales
    the width by ``exp(a * d2)`` and the height by ``exp(a * d3)``.
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    a = steps[:, None]
    cx = (x1 + x2) / 2 + a * direction[0] * w
    cy = (y1 + y2) / 2 + a * direction[1] * h
    half_w = w * np.exp(a * direction[2]) / 2
    half_h = h * np.exp(a * direction[3]) / 2
    moved = np.hstack([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    moved[:, [0, 2]] = moved[:, [0, 2]].clip(0.0, width)
    moved[:, [1, 3]] = moved[:, [1, 3]].clip(0.0, height)
    return moved


def jitter_box(
    box: np.ndarray, target_iou: float, rng: np.random.Generator, width: float, height: float
) -> np.ndarray:
    """A shifted and rescaled copy of ``box``, inside the image, whose IoU with it is the target.

    A random direction in (shift x, shift y, log-scale w, log-scale h), each relative to the box,
    is drawn; along it the IoU falls from 1 at step 0, and the first step where it reaches the
    target is found on a grid refined four times (to about 1e-7 of a box size); the step just
    before it is taken, so the IoU equals the target to a few decimals and is never below it (a
    box jittered to IoU 0.5 still counts as found at IoU 0.5). Cutting to the image is part of
    the search. A direction in which the IoU never falls that low (a large box grown against the
    image's edges) is redrawn; after eight such draws the box shrinks about its centre to
    ``sqrt(target)`` of each side, which gives the target exactly.
    """
    box = np.asarray(box, dtype=float)
    if target_iou >= 1.0 or box[2] <= box[0] or box[3] <= box[1]:
        return box.copy()
    original = box[None]
    for _ in range(_JITTER_DIRECTIONS):
        direction = rng.normal(size=4)
        direction /= np.linalg.norm(direction)
        steps = np.linspace(0.0, _JITTER_REACH, _JITTER_GRID)
        below = np.flatnonzero(
            box_iou(original, _moved(box, direction, steps, width, height))[0] <= target_iou
        )
        if not len(below):
            continue
        for _ in range(_JITTER_ROUNDS):
            steps = np.linspace(steps[below[0] - 1], steps[below[0]], _JITTER_GRID)
            iou = box_iou(original, _moved(box, direction, steps, width, height))[0]
            below = np.flatnonzero(iou <= target_iou)
        return _moved(box, direction, steps[below[:1] - 1], width, height)[0]
    side = math.sqrt(target_iou)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * side / 2, (box[3] - box[1]) * side / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def box_gaps(corners: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pairwise gap between boxes as a fraction of the image: 0 when they touch or overlap.

    The gap is the larger of the horizontal separation over the image's width and the vertical
    separation over its height (two boxes side by side at the same height are as far apart as
    the empty strip between them).
    """
    x1, y1, x2, y2 = (corners[:, i] for i in range(4))
    dx = np.maximum(0.0, np.maximum(x1[None, :] - x2[:, None], x1[:, None] - x2[None, :]))
    dy = np.maximum(0.0, np.maximum(y1[None, :] - y2[:, None], y1[:, None] - y2[None, :]))
    return np.maximum(dx / width, dy / height)


def merge_neighbours(
    corners: np.ndarray, max_gap: float, width: float, height: float
) -> list[list[int]]:
    """Groups of box indices whose merged box encloses them: neighbours joined until none remain.

    Boxes within ``max_gap`` of each other are linked and each linked group (connected
    components, so neighbours of neighbours join too) becomes its enclosing box; the enclosing
    boxes are compared again, since one may now reach a box none of its members reached.
    """
    groups = [[i] for i in range(len(corners))]
    boxes = np.asarray(corners, dtype=float).reshape(-1, 4)
    while len(boxes) > 1:
        n, label = connected_components(box_gaps(boxes, width, height) <= max_gap, directed=False)
        if n == len(boxes):
            break
        groups = [
            sorted(i for j in np.flatnonzero(label == k) for i in groups[j]) for k in range(n)
        ]
        boxes = np.array(
            [
                [*corners[g, :2].min(axis=0), *corners[g, 2:].max(axis=0)]
                for g in (np.asarray(group) for group in groups)
            ]
        )
    return groups

"""Boxes of one thing made one: a detector's fragments of an elongated defect joined end to end
(:func:`merge_fragments`), and the views of one image fused (:func:`fuse_views`).

A detector fine-tuned on a handful of seeds learns their lengths. A scratch or crack longer than
any seed then comes back as several shorter boxes along it, each of which misses the long truth
box at IoU 0.5; a pseudo detector trained on such fragments answers with fragments itself. Two
boxes are taken for pieces of one defect when both are elongated the same way (the long side at
least ``min_aspect`` times the short one, measured in pixels, so a non-square image does not
stretch a square box into a line), they overlap across their width by at least
``min_cross_overlap`` of the thinner one, and they touch or overlap along their length. Every
connected group (scipy's ``connected_components`` over that relation) becomes the box enclosing
it, with the group's best score. Compact boxes, and elongated boxes side by side or crossing,
are left as they are.

No library merges boxes this way: non-maximum suppression and weighted boxes fusion
(``torchvision.ops``, ``ensemble-boxes``) keep or average overlapping boxes of one object, while
fragments of a line barely overlap and must be joined end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse.csgraph import connected_components

from cascade_defect.box_settings import FragmentMergeSettings

if TYPE_CHECKING:
    from cascade_defect.annotate.boxes import Proposal


def merge_fragments(
    proposals: Sequence[Proposal],
    width: float,
    height: float,
    settings: FragmentMergeSettings,
) -> list[Proposal]:
    """``proposals`` of one image (normalised corners) with elongated fragments merged, best
    score first. ``width`` and ``height`` are the image's size in pixels."""
    if len(proposals) < 2:
        return list(proposals)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    corners = np.array([p.box for p in proposals], dtype=float) * [width, height, width, height]
    sides = corners[:, 2:] - corners[:, :2]  # pixel width, height
    tall = sides[:, 1] >= settings.min_aspect * sides[:, 0]
    wide = sides[:, 0] >= settings.min_aspect * sides[:, 1]
    names = np.array([p.class_name or "" for p in proposals], dtype=object)
    same_class = names[:, None] == names[None, :]
    joined = np.zeros((len(proposals), len(proposals)), dtype=bool)
    # axis 0: vertical lines (width across, y along); axis 1: horizontal lines.
    for elongated, across, along in ((tall, 0, 1), (wide, 1, 0)):
        both = elongated[:, None] & elongated[None, :]
        lo, hi = corners[:, across], corners[:, across + 2]
        overlap = np.minimum(hi[:, None], hi[None, :]) - np.maximum(lo[:, None], lo[None, :])
        thinner = np.minimum(sides[:, across][:, None], sides[:, across][None, :])
        start, stop = corners[:, along], corners[:, along + 2]
        gap = np.maximum(start[:, None], start[None, :]) - np.minimum(stop[:, None], stop[None, :])
        joined |= both & same_class & (overlap >= settings.min_cross_overlap * thinner) & (gap <= 0)
    n_groups, group = connected_components(joined, directed=False)
    if n_groups == len(proposals):
        return sorted(proposals, key=lambda p: -p.score)
    merged = []
    for index in range(n_groups):
        members = [p for p, g in zip(proposals, group, strict=True) if g == index]
        boxes = np.array([p.box for p in members], dtype=float)
        best = max(members, key=lambda p: p.score)
        box = (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))
        merged.append(replace(best, box=tuple(float(v) for v in box)))
    return sorted(merged, key=lambda p: -p.score)


def fuse_views(
    views: Sequence[Sequence[Proposal]], iou: float = 0.55, *, min_score: float = 0.0
) -> list[Proposal]:
    """Weighted boxes fusion of the same image seen in several views, or by several detectors
    (``ensemble-boxes``), best score first.

    A fused box's score is the mean over views, so a box one view missed is down-weighted
    (ensemble-boxes' default ``conf_type="avg"`` scales by the share of views that saw it), and
    fused boxes below ``min_score`` are dropped, as a single view's are below its threshold.
    Classes fuse separately; a class-agnostic detector's boxes share one.
    """
    from ensemble_boxes import weighted_boxes_fusion

    from cascade_defect.annotate.boxes import Proposal  # boxes imports this module

    names = sorted({p.class_name or "" for found in views for p in found})
    if not names:
        return []
    index = {name: i for i, name in enumerate(names)}
    # Flipped-back or fused corners may stray past 1 by a rounding error; WBF warns and clips.
    boxes = [[[min(max(v, 0.0), 1.0) for v in p.box] for p in found] for found in views]
    scores = [[p.score for p in found] for found in views]
    labels = [[index[p.class_name or ""] for p in found] for found in views]
    fused_boxes, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes, scores, labels, iou_thr=iou, skip_box_thr=0.0
    )
    fused = [
        Proposal(
            tuple(float(v) for v in box),  # type: ignore[arg-type]
            float(score),
            names[int(label)] or None,
        )
        for box, score, label in zip(fused_boxes, fused_scores, fused_labels, strict=True)
        if score >= min_score
    ]
    return sorted(fused, key=lambda p: -p.score)


def fuse_detectors(
    found: Sequence[Mapping[str, Sequence[Proposal]]], min_score: float
) -> dict[str, list[Proposal]]:
    """Several detectors' proposals on the same images (each a mapping ``image_id`` to boxes),
    fused image by image with :func:`fuse_views`; one detector's are returned as they are."""
    if not found:
        return {}
    if len(found) == 1:
        return {image_id: list(boxes) for image_id, boxes in found[0].items()}
    return {
        image_id: fuse_views([f.get(image_id, []) for f in found], min_score=min_score)
        for image_id in found[0]
    }

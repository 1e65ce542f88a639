"""Label sources that mix the annotator's pseudo-labels with a person's review.

- ``reviewed``: the tables ``cascade-defect review import`` wrote
  (:mod:`cascade_defect.annotate.reviewed`), trained exactly like ``pseudo``: the adopted box
  strategy's boxes, except that an image whose boxes a person drew trains on those.
- ``review_<order>_<k>``: the review budget (:mod:`cascade_defect.annotate.review_budget`). The
  ``k`` images the order chooses get their ground-truth labels, simulating a person who boxes
  them; every other pool image keeps its ``pseudo`` label and exclusions. ``k = 0`` is the
  ``pseudo`` source and ``k`` = the pool size the ``human`` one. These sources read the pool's
  ground truth (:func:`~cascade_defect.train.sources.uses_pool_ground_truth`), the only ones
  besides ``human`` and its noisy copies.

:func:`~cascade_defect.train.sources.build_source` hands both kinds to :func:`build_review_source`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cascade_defect.annotate.review_budget import parse_review_source, select_for_review
from cascade_defect.annotate.reviewed import REVIEW_STRATEGY, REVIEWED_SOURCE
from cascade_defect.train.sources import (
    LABEL_COLUMNS,
    PoolTruth,
    SourceDataset,
    SplitInputs,
    compose_source,
    kept_pool_ids,
    pseudo_training_labels,
)


def reviewed_training_boxes(boxes: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """The reviewed boxes as one strategy: a person's boxes stand in for ``strategy``'s.

    Import leaves an image whose boxes a person drew with those boxes only, so retagging them
    cannot mix them with the strategy's own boxes of that image.
    """
    boxes = boxes.copy()
    boxes.loc[boxes["strategy"] == REVIEW_STRATEGY, "strategy"] = strategy
    return boxes


def _pseudo_part(
    split: SplitInputs,
    pseudo: tuple[pd.DataFrame, pd.DataFrame],
    strategy: str,
    min_confidence: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    written = set(pseudo[1]["strategy"].dropna()) if "strategy" in pseudo[1].columns else set()
    if strategy not in written | {REVIEW_STRATEGY}:
        raise ValueError(
            f"the pseudo-labels hold no {strategy!r} boxes (only {sorted(written)}): add it to "
            "chapter 03's box_strategies or train with another box_strategy"
        )
    return pseudo_training_labels(
        *pseudo,
        split.class_names,
        strategy=strategy,
        min_confidence=min_confidence,
        no_defect_as_background=split.no_defect,
    )


def build_review_source(
    source: str,
    split: SplitInputs,
    *,
    holdout: frozenset[str],
    truth: PoolTruth | None,
    pseudo: tuple[pd.DataFrame, pd.DataFrame] | None,
    box_strategy: str,
    min_confidence: float = 0.0,
    seed: int = 0,
    audit_images: pd.DataFrame | None = None,
) -> SourceDataset:
    """Assemble ``reviewed`` or a ``review_<order>_<k>`` source (module docstring)."""
    if pseudo is None:
        what = "reviewed tables" if source == REVIEWED_SOURCE else "labels and boxes"
        raise ValueError(f"the {source} source needs chapter 03's {what}")
    if source == REVIEWED_SOURCE:
        labels, boxes = pseudo
        yolo, excluded = _pseudo_part(
            split,
            (labels, reviewed_training_boxes(boxes, box_strategy)),
            box_strategy,
            min_confidence,
        )
        kept = kept_pool_ids(labels, excluded, split)
        return compose_source(
            source, split, pool_ids=kept, pool_labels=yolo, holdout=holdout, excluded=excluded
        )
    parsed = parse_review_source(source)
    if parsed is None:
        raise ValueError(f"{source!r} is neither 'reviewed' nor a review_<order>_<k> source")
    order, k = parsed
    chosen = select_for_review(
        order,
        k,
        list(split.pool["image_id"]),
        labels=pseudo[0],
        boxes=pseudo[1],
        audit_images=audit_images,
        seed=seed,
    )
    return compose_reviewed_budget(
        source,
        split,
        chosen,
        holdout=holdout,
        truth=truth,
        pseudo=pseudo,
        box_strategy=box_strategy,
        min_confidence=min_confidence,
    )


def compose_reviewed_budget(
    source: str,
    split: SplitInputs,
    chosen: Sequence[str],
    *,
    holdout: frozenset[str],
    truth: PoolTruth | None,
    pseudo: tuple[pd.DataFrame, pd.DataFrame],
    box_strategy: str,
    min_confidence: float = 0.0,
) -> SourceDataset:
    """Pseudo-labels with the ``chosen`` pool images' labels replaced by the ground truth."""
    chosen_set = set(map(str, chosen))
    if chosen_set and truth is None:
        raise ValueError(f"the {source} source needs the pool's ground truth for its reviews")
    yolo, excluded = _pseudo_part(split, pseudo, box_strategy, min_confidence)
    parts = [yolo[~yolo["image_id"].isin(chosen_set)]]
    if truth is not None and chosen_set:
        parts.append(truth.labels[truth.labels["image_id"].isin(chosen_set)])
    parts = [p for p in parts if len(p)]
    labels = pd.concat(parts, ignore_index=True) if parts else yolo.iloc[:0]
    excluded = excluded[~excluded["image_id"].isin(chosen_set)].reset_index(drop=True)
    known = set(split.pool["image_id"])
    kept = sorted((set(kept_pool_ids(pseudo[0], excluded, split)) | chosen_set) & known)
    return compose_source(
        source,
        split,
        pool_ids=kept,
        pool_labels=labels[LABEL_COLUMNS].astype({"class_id": int}),
        holdout=holdout,
        excluded=excluded,
    )

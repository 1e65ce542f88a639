"""How well a box's score and shape tell chapter 3's hits from its false boxes.

A verifier keeps or drops each pseudo box; before one is built or paid for, these functions
measure what the simplest evidence a box carries (its score, its size and shape, its class) can
tell apart, as a ranking scored by ROC AUC (the chance a hit ranks above a false box):

- :func:`seed_shape_ratio`: the box's shape under its class's seed boxes against under all the
  pool's boxes of that class (kernel densities). Needs nothing beyond the seeds.
- :func:`reviewed_verifier`: a gradient-boosted classifier on score, shape and class fitted on the
  boxes of some pool images a person accepted or rejected, applied to the others.

scikit-learn supplies the densities, the classifier and the AUC; what is written here is which
features a box has and how the images are held apart.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

SHAPE_FEATURES = ("log_area", "log_aspect")
VERIFIER_FEATURES = ("log_score", *SHAPE_FEATURES, "class_code")


def box_features(boxes: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Score, shape and class of normalised boxes (``x1..y2``, ``confidence``, ``class_name``)."""
    width = (boxes["x2"] - boxes["x1"]).clip(lower=1e-6)
    height = (boxes["y2"] - boxes["y1"]).clip(lower=1e-6)
    unknown = sorted(set(boxes["class_name"]) - set(class_names))
    if unknown:
        raise ValueError(f"boxes of classes {unknown} not among {class_names}")
    return pd.DataFrame(
        {
            "log_score": np.log(boxes["confidence"].clip(lower=1e-9)),
            "log_area": np.log(width * height),
            "log_aspect": np.log(width / height),
            "class_code": boxes["class_name"].map({n: i for i, n in enumerate(class_names)}),
        },
        index=boxes.index,
    )


def ranking_auc(is_hit: np.ndarray, ranking: np.ndarray) -> float:
    """ROC AUC of a ranking of boxes (NaN when every box is a hit or none is)."""
    from sklearn.metrics import roc_auc_score

    is_hit = np.asarray(is_hit, dtype=bool)
    if is_hit.all() or not is_hit.any():
        return float("nan")
    return float(roc_auc_score(is_hit, ranking))


def seed_shape_ratio(
    boxes: pd.DataFrame, seed_boxes: pd.DataFrame, *, seed_bandwidth: float = 0.7,
    pool_bandwidth: float = 0.5,
) -> np.ndarray:  # fmt: skip
    """Log likelihood ratio of each box's shape under its class's seed boxes against under all of
    ``boxes`` of that class; 0 for a class without seed boxes. Both frames: normalised corners and
    ``class_name``. The ratio is high where the seeds' defects are common and the proposals rare."""
    from sklearn.neighbors import KernelDensity

    ratio = np.zeros(len(boxes))
    shapes = box_features(boxes.assign(confidence=1.0), sorted(set(boxes["class_name"])))
    names = sorted(set(seed_boxes["class_name"]))
    seed_shapes = box_features(seed_boxes.assign(confidence=1.0), names)
    for name, rows in boxes.groupby("class_name").indices.items():
        seeds_of_class = seed_shapes[seed_boxes["class_name"].to_numpy() == name]
        if seeds_of_class.empty:
            continue
        pool = shapes.iloc[rows][list(SHAPE_FEATURES)].to_numpy()
        seed = KernelDensity(bandwidth=seed_bandwidth).fit(
            seeds_of_class[list(SHAPE_FEATURES)].to_numpy()
        )
        everyone = KernelDensity(bandwidth=pool_bandwidth).fit(pool)
        ratio[rows] = seed.score_samples(pool) - everyone.score_samples(pool)
    return ratio


def reviewed_verifier(
    features: pd.DataFrame,
    is_hit: np.ndarray,
    image_ids: pd.Series,
    reviewed: Collection[str],
    *,
    seed: int = 0,
) -> np.ndarray:
    """Each box's probability of being a hit, from a classifier fitted on the boxes of the
    ``reviewed`` images only (their ``is_hit`` is what a reviewer accepting or rejecting each
    box would say). Every box gets a probability, reviewed ones included; callers score the
    others. Small trees and a leaf floor, as a few hundred reviewed boxes allow. Reviewed boxes
    all accepted (or all rejected) teach only that: every box gets 1 (or 0)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    taught = image_ids.isin(set(reviewed)).to_numpy()
    labels = np.asarray(is_hit, dtype=int)
    if not taught.any():
        raise ValueError("none of the reviewed images has a box")
    if len(set(labels[taught])) < 2:  # all accepted or all rejected: nothing to tell apart
        return np.full(len(features), float(labels[taught][0]))
    columns = list(VERIFIER_FEATURES)
    model = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.05,
        max_leaf_nodes=8,
        min_samples_leaf=10,
        categorical_features=[c == "class_code" for c in columns],
        random_state=seed,
    )
    model.fit(features.loc[taught, columns], labels[taught])
    return model.predict_proba(features[columns])[:, 1]


def held_out_verifier(
    features: pd.DataFrame, is_hit: np.ndarray, image_ids: pd.Series, folds: int = 5
) -> np.ndarray:
    """Every box's probability from :func:`reviewed_verifier` fitted on the other folds of images:
    what score and shape can tell with the whole pool's truth to learn from (an upper bound)."""
    from sklearn.model_selection import GroupKFold

    out = np.zeros(len(features))
    for taught, held in GroupKFold(folds).split(features, groups=image_ids):
        reviewed = set(image_ids.iloc[taught])
        out[held] = reviewed_verifier(features, is_hit, image_ids, reviewed)[held]
    return out

"""Label sources: the training sets chapter 05 fine-tunes YOLOv8n on, one per kind of label.

The study's question is whether pseudo-labels can stand in for human labels, so every model is
trained the same way and only the labels change. Each *label source* becomes an ultralytics
dataset folder:

* ``human``: the ground-truth boxes of the pool plus the seeds (the reference);
* ``seed_only``: the labelled seeds alone (what the few-shot prompt saw);
* ``pseudo``: the annotator's labels for the pool, one box strategy, images that failed or fell
  below a confidence threshold left out, plus the ground-truth seeds;
* ``noise_<rate>``: the human labels with that fraction of pool images relabelled to another
  class (seeded), to show how much label noise the detector tolerates;
* ``reviewed`` and ``review_<order>_<k>``: pseudo-labels with some images reviewed by a person
  (imported, or simulated with the ground truth; :mod:`cascade_defect.train.review_sources`).

Validation during training uses a held-out part of the *training pool*, labelled by the same
source (the same images for every source), never the golden test set. Assembly is a set of pure
functions over tables so the guarantees (no test image, ground truth only where allowed) can be
tested without training anything; :func:`write_source_dataset` is the only step touching disk.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.annotate.boxes import BOX_STRATEGIES
from cascade_defect.annotate.review_budget import parse_review_source
from cascade_defect.annotate.reviewed import REVIEWED_SOURCE
from cascade_defect.data.records import NO_DEFECT
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.data.yolo_txt import write_data_yaml, write_label_file, yolo_line
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import ClassificationSettings, TrainingSettings
from cascade_defect.train.noise import flip_image_classes

log = logging.getLogger(__name__)


HUMAN = "human"


SEED_ONLY = "seed_only"


PSEUDO = "pseudo"


REVIEWED = REVIEWED_SOURCE


NOISE_PREFIX = "noise_"
PSEUDO_PREFIX = "pseudo_"


BASE_SOURCES: tuple[str, ...] = (HUMAN, PSEUDO, SEED_ONLY)


#: One YOLO box per row: class index and normalised centre/size.
LABEL_COLUMNS = ["image_id", "class_id", "cx", "cy", "w", "h"]


#: Why a pool image was left out of the ``pseudo`` source.
EXCLUSION_REASONS: tuple[str, ...] = (
    "failed",
    "no_defect",
    "below_threshold",
    "unknown_class",
    "no_boxes",
)


class LeakageError(AssertionError):
    """A golden test image (by id or by content hash) was about to enter training."""


class GroundTruthAccessError(ValueError):
    """A source that must not see the pool's ground truth was handed it."""


def noise_source(rate: float) -> str:
    """The source name of a label-noise level, e.g. ``noise_0.1``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must lie in [0, 1], got {rate}")
    return f"{NOISE_PREFIX}{rate:g}"


def noise_rate(source: str) -> float | None:
    """The flip rate of a ``noise_<rate>`` source; None for every other source."""
    if not source.startswith(NOISE_PREFIX):
        return None
    try:
        rate = float(source[len(NOISE_PREFIX) :])
    except ValueError as error:
        raise ValueError(f"malformed noise source {source!r}; expected e.g. 'noise_0.1'") from error
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate of {source!r} must lie in [0, 1]")
    return rate


def pseudo_box_strategy(source: str, adopted: str) -> str | None:
    """The box strategy a pseudo source trains on: ``adopted`` (the profile's) for ``pseudo``,
    the named one for ``pseudo_<strategy>`` (e.g. ``pseudo_self_training``, trained beside the
    adopted one so the book shows which wins); None for every other source."""
    if source == PSEUDO:
        return adopted
    strategy = source.removeprefix(PSEUDO_PREFIX)
    if source.startswith(PSEUDO_PREFIX) and strategy in BOX_STRATEGIES:
        return strategy
    return None


def is_pseudo(source: str) -> bool:
    """``pseudo`` or a ``pseudo_<strategy>`` variant: trained on chapter 03's labels."""
    return pseudo_box_strategy(source, PSEUDO) is not None


def is_review(source: str) -> bool:
    """``reviewed`` or a ``review_<order>_<k>`` budget: pseudo-labels partly reviewed."""
    return source == REVIEWED or parse_review_source(source) is not None


def reads_pseudo_labels(source: str) -> bool:
    """Whether the source is built from chapter 03's tables (or their reviewed copies)."""
    return is_pseudo(source) or is_review(source)


def validate_source(source: str) -> str:
    if source in BASE_SOURCES or noise_rate(source) is not None or reads_pseudo_labels(source):
        return source
    known = [*BASE_SOURCES, REVIEWED, "noise_<rate>", "pseudo_<box strategy>", "review_<order>_<k>"]
    raise ValueError(f"unknown label source {source!r}; known: {known}")


def planned_sources(settings: TrainingSettings) -> list[str]:
    """The profile's sources in training order, followed by its noise sweep."""
    sources = [validate_source(s) for s in settings.sources]
    sources += [noise_source(rate) for rate in settings.noise_levels]
    return list(dict.fromkeys(sources))


def uses_pool_ground_truth(source: str) -> bool:
    """Only the reference, its noisy copies and the simulated review budgets may read the
    pool's hidden labels (a budget's reviewed images take it, standing in for a person)."""
    budget = parse_review_source(source) is not None
    return source == HUMAN or noise_rate(source) is not None or budget


def epochs_for(source: str, settings: TrainingSettings | ClassificationSettings) -> int:
    """Epochs of a source in either track: seed_only and the noise sweep have their own counts.

    The classification track has no noise sweep (its settings have no ``noise_epochs``), so a
    noise source is an error there rather than a silent fallback to ``epochs``.
    """
    if noise_rate(source) is not None:
        if not isinstance(settings, TrainingSettings):
            raise ValueError(f"{source!r}: the classification track trains no noise sources")
        return settings.noise_epochs
    if source == SEED_ONLY and settings.seed_only_epochs is not None:
        return settings.seed_only_epochs
    return settings.epochs


def source_descriptions(sources: Sequence[str], settings: TrainingSettings) -> pd.DataFrame:
    """What each source trains on, for the book: pool labels, seeds, epochs, truth access."""
    rows = []
    for source in sources:
        rate = noise_rate(validate_source(source))
        if source == HUMAN:
            pool = "ground-truth boxes"
        elif source == SEED_ONLY:
            pool = "none (seeds only)"
        elif (budget := parse_review_source(source)) is not None:
            pool = f"pseudo, {budget[1]} images ({budget[0]} order) given their ground truth"
        elif source == REVIEWED:
            pool = "pseudo, with the images a person reviewed (`cascade-defect review import`)"
        elif is_pseudo(source):
            strategy = pseudo_box_strategy(source, settings.box_strategy)
            pool = (
                f"annotator labels, '{strategy}' boxes, confidence ≥ "
                f"{settings.pseudo_confidence_threshold:g}"
            )
        else:
            pool = f"ground-truth boxes, {rate:.0%} of images relabelled to another class"
        rows.append(
            {
                "source": source,
                "pool labels": pool,
                "seeds": "ground truth",
                "hold-out": "the seeds themselves" if source == SEED_ONLY else "pool, same source",
                "epochs": epochs_for(source, settings),
                "reads pool ground truth": uses_pool_ground_truth(source),
            }
        )
    return pd.DataFrame(rows).set_index("source")


@dataclass(frozen=True)
class SplitInputs:
    """What every source may read from chapter 02: seeds with labels, the pool without."""

    class_names: list[str]
    seeds: pd.DataFrame  # image_id, path, sha256, class_name
    seed_labels: pd.DataFrame  # LABEL_COLUMNS
    pool: pd.DataFrame  # image_id, path, sha256 (no classes)
    test: pd.DataFrame  # image_id, path, sha256: only to prove none of it enters training
    no_defect: bool = False  # the dataset holds defect-free images (trained as background)

    @property
    def label_names(self) -> list[str]:
        """Image labels: the defect classes, then ``no_defect`` when the dataset has it."""
        return [*self.class_names, NO_DEFECT] if self.no_defect else list(self.class_names)


@dataclass(frozen=True)
class PoolTruth:
    """The pool's hidden labels; :func:`read_pool_truth` is the one reader in this module."""

    image_classes: pd.Series  # image_id -> index in SplitInputs.label_names (no_defect last)
    labels: pd.DataFrame  # LABEL_COLUMNS


def read_yolo_labels(labels_dir: Path, image_ids: Sequence[str]) -> pd.DataFrame:
    """YOLO label files of the given images as one table; a missing file means no boxes."""
    rows = []
    for image_id in image_ids:
        path = Path(labels_dir) / f"{image_id}.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            rows.append(
                {
                    "image_id": image_id,
                    "class_id": int(parts[0]),
                    **dict(zip(("cx", "cy", "w", "h"), map(float, parts[1:]), strict=True)),
                }
            )
    return pd.DataFrame(rows, columns=LABEL_COLUMNS).astype({"class_id": int})


def read_split_inputs(layout: SplitLayout) -> SplitInputs:
    """Seeds, pool listing and test listing of chapter 02 (never the pool's truth)."""
    seeds, _ = read_labelled_listing(layout, "seed")
    test, _ = read_labelled_listing(layout, "test")
    pool = read_pool_listing(layout)
    seeds["image_id"] = seeds["image_id"].astype(str)
    pool["image_id"] = pool["image_id"].astype(str)
    test["image_id"] = test["image_id"].astype(str)
    seed_labels = read_yolo_labels(layout.yolo_dir("seed") / "labels", list(seeds["image_id"]))
    return SplitInputs(
        class_names=layout.class_names(),
        seeds=seeds[["image_id", "path", "sha256", "class_name"]],
        seed_labels=seed_labels,
        pool=pool[["image_id", "path", "sha256"]],
        test=test[["image_id", "path", "sha256"]],
        no_defect=layout.has_no_defect(),
    )


def read_pool_truth(layout: SplitLayout, class_names: Sequence[str]) -> PoolTruth:
    """The pool's ground truth as YOLO labels plus each image's class index (``no_defect``, when
    the dataset has defect-free images, is the index after the last defect class)."""
    truth, _ = read_pool_ground_truth(layout)
    index = {name: i for i, name in enumerate([*class_names, NO_DEFECT])}
    truth["image_id"] = truth["image_id"].astype(str)
    classes = truth.set_index("image_id")["class_name"].map(index)
    if classes.isna().any():
        raise ValueError("pool ground truth names a class missing from classes.json")
    labels = read_yolo_labels(layout.pool_labels_dir, list(truth["image_id"]))
    return PoolTruth(image_classes=classes.astype(int), labels=labels)


def _empty_excluded() -> pd.DataFrame:
    return pd.DataFrame(columns=["image_id", "reason"])


def _empty_flips() -> pd.DataFrame:
    return pd.DataFrame(columns=["image_id", "true_class", "noisy_class"])


@dataclass(frozen=True)
class SourceDataset:
    """One source's training data, before it is written: images, boxes and what was left out."""

    source: str
    images: pd.DataFrame  # image_id, path, sha256, subset ("train"|"val"), origin ("seed"|"pool")
    labels: pd.DataFrame  # LABEL_COLUMNS
    excluded: pd.DataFrame = field(default_factory=_empty_excluded)
    flips: pd.DataFrame = field(default_factory=_empty_flips)
    val_is_train: bool = False  # seed_only: no held-out labels exist in that scenario

    def counts(self) -> dict[str, int]:
        subset = self.images["subset"].value_counts()
        origin = self.images["origin"].value_counts()
        return {
            "n_train": int(subset.get("train", 0)),
            "n_val": int(subset.get("val", 0)) if not self.val_is_train else 0,
            "n_seed": int(origin.get("seed", 0)),
            "n_pool": int(origin.get("pool", 0)),
            "n_boxes": len(self.labels),
            "n_excluded": len(self.excluded),
            "n_flipped": len(self.flips),
        }


def holdout_ids(pool_ids: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """The pool images held out for validation, drawn once from the whole pool listing.

    Drawing from the full listing (not from each source's kept images) gives every source the
    same hold-out images wherever it has labels for them, so validation curves are comparable.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must lie in [0, 1)")
    ids = sorted(set(map(str, pool_ids)))
    n_val = round(fraction * len(ids))
    if fraction > 0 and len(ids) >= 2:
        n_val = max(1, n_val)
    order = np.random.default_rng(seed).permutation(len(ids))
    return frozenset(ids[i] for i in order[:n_val])


def pseudo_training_labels(
    labels: pd.DataFrame,
    boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    strategy: str,
    min_confidence: float = 0.0,
    no_defect_as_background: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The annotator's boxes (one strategy) as YOLO labels, and the images left out with why.

    With ``no_defect_as_background`` (a dataset with defect-free images), an image answered
    ``no_defect`` with enough confidence is kept without boxes, so YOLO learns it as background;
    otherwise (NEU-DET, where every image shows a defect) such an answer is an annotator error
    and the image is left out.

    An image is kept only when its annotation succeeded (any other status, ``missing``
    included, counts as ``failed``), named a known defect class with a confidence of at least
    ``min_confidence``, and the strategy gave it at least one box of a known class with an area:
    training on an image without its boxes would teach the detector that the defect is
    background.
    """
    if strategy not in BOX_STRATEGIES:
        raise ValueError(f"unknown box strategy {strategy!r}; known: {list(BOX_STRATEGIES)}")
    index = {name: i for i, name in enumerate(class_names)}
    frame = labels.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    confidence = pd.to_numeric(frame["confidence"], errors="coerce")
    reason = pd.Series(pd.NA, index=frame.index, dtype="object")
    reason[frame["status"] != "ok"] = "failed"
    free = frame["defect_class"] == NO_DEFECT
    if not no_defect_as_background:
        reason[reason.isna() & free] = "no_defect"
    reason[reason.isna() & ~free & ~frame["defect_class"].isin(list(index))] = "unknown_class"
    reason[reason.isna() & ~(confidence.fillna(-1.0) >= min_confidence)] = "below_threshold"
    chosen = boxes[boxes["strategy"] == strategy]
    chosen = chosen[chosen["class_name"].isin(list(index))]
    x1, x2 = chosen["x1"].clip(0, 1), chosen["x2"].clip(0, 1)
    y1, y2 = chosen["y1"].clip(0, 1), chosen["y2"].clip(0, 1)
    yolo = pd.DataFrame(
        {
            "image_id": chosen["image_id"].astype(str),
            "class_id": chosen["class_name"].map(index).astype(int),
            "cx": (x1 + x2) / 2,
            "cy": (y1 + y2) / 2,
            "w": x2 - x1,
            "h": y2 - y1,
        }
    )
    yolo = yolo[(yolo["w"] > 0) & (yolo["h"] > 0)]  # boxes that clipping leaves without area
    reason[reason.isna() & ~free & ~frame["image_id"].isin(set(yolo["image_id"]))] = "no_boxes"
    excluded = pd.DataFrame({"image_id": frame["image_id"], "reason": reason}).dropna()
    yolo = yolo[yolo["image_id"].isin(set(frame.loc[reason.isna(), "image_id"]))]
    return yolo.reset_index(drop=True)[LABEL_COLUMNS], excluded.reset_index(drop=True)


def kept_pool_ids(
    pseudo_labels: pd.DataFrame, excluded: pd.DataFrame, split: SplitInputs
) -> list[str]:
    """Pool images a pseudo source trains on: every annotated pool image not left out."""
    answered = set(pseudo_labels["image_id"].astype(str)) & set(split.pool["image_id"])
    return sorted(answered - set(excluded["image_id"].astype(str)))


def compose_source(
    source: str,
    split: SplitInputs,
    *,
    pool_ids: Sequence[str],
    pool_labels: pd.DataFrame,
    holdout: frozenset[str],
    excluded: pd.DataFrame | None = None,
    flips: pd.DataFrame | None = None,
) -> SourceDataset:
    """Seeds (always training) plus the chosen pool images split into train and hold-out."""
    pool = split.pool[split.pool["image_id"].isin(set(pool_ids))].copy()
    pool["subset"] = np.where(pool["image_id"].isin(holdout), "val", "train")
    pool["origin"] = "pool"
    seeds = split.seeds[["image_id", "path", "sha256"]].copy()
    seeds["subset"] = "train"
    seeds["origin"] = "seed"
    val_is_train = not (pool["subset"] == "val").any()
    images = pd.concat([seeds, pool], ignore_index=True)
    labels = pd.concat(
        [split.seed_labels, pool_labels[pool_labels["image_id"].isin(set(pool["image_id"]))]],
        ignore_index=True,
    )[LABEL_COLUMNS]
    dataset = SourceDataset(
        source=source,
        images=images.reset_index(drop=True),
        labels=labels.astype({"class_id": int}),
        excluded=excluded if excluded is not None else _empty_excluded(),
        flips=flips if flips is not None else _empty_flips(),
        val_is_train=val_is_train,
    )
    assert_no_test_images(dataset, split)
    return dataset


def build_source(
    source: str,
    split: SplitInputs,
    *,
    holdout: frozenset[str],
    truth: PoolTruth | None = None,
    pseudo: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    box_strategy: str = "seed_detector",
    min_confidence: float = 0.0,
    noise_seed: int = 0,
    audit_images: pd.DataFrame | None = None,
) -> SourceDataset:
    """Assemble one label source from tables, refusing inputs the source must not see.

    ``audit_images`` (the audit's image table) orders the ``review_audit_<k>`` budgets;
    ``noise_seed`` also seeds the ``review_random_<k>`` draw.
    """
    validate_source(source)
    if truth is not None and not uses_pool_ground_truth(source):
        raise GroundTruthAccessError(f"source {source!r} must not be given the pool's ground truth")
    if pseudo is not None and not reads_pseudo_labels(source):
        raise ValueError(f"source {source!r} takes no pseudo-labels")
    if is_review(source):
        from cascade_defect.train.review_sources import build_review_source

        return build_review_source(
            source,
            split,
            holdout=holdout,
            truth=truth,
            pseudo=pseudo,
            box_strategy=box_strategy,
            min_confidence=min_confidence,
            seed=noise_seed,
            audit_images=audit_images,
        )
    if source == SEED_ONLY:
        empty = pd.DataFrame(columns=LABEL_COLUMNS)
        return compose_source(source, split, pool_ids=[], pool_labels=empty, holdout=holdout)
    strategy = pseudo_box_strategy(source, box_strategy)
    if strategy is not None:
        if pseudo is None:
            raise ValueError(f"the {source} source needs chapter 03's labels and boxes")
        written = set(pseudo[1]["strategy"]) if "strategy" in pseudo[1].columns else set()
        if source != PSEUDO and strategy not in written:
            raise ValueError(
                f"the {source} source trains on {strategy!r} boxes, but chapter 03 wrote only "
                f"{sorted(written)}: add {strategy!r} to chapter 03's box_strategies"
            )
        labels, excluded = pseudo_training_labels(
            *pseudo,
            split.class_names,
            strategy=strategy,
            min_confidence=min_confidence,
            no_defect_as_background=split.no_defect,
        )
        kept = kept_pool_ids(pseudo[0], excluded, split)
        return compose_source(
            source, split, pool_ids=kept, pool_labels=labels, holdout=holdout, excluded=excluded
        )
    if truth is None:
        raise ValueError(f"source {source!r} needs the pool's ground truth")
    pool_ids = list(split.pool["image_id"])
    rate = noise_rate(source)
    if rate is None:
        return compose_source(
            source, split, pool_ids=pool_ids, pool_labels=truth.labels, holdout=holdout
        )
    classes = truth.image_classes[truth.image_classes.index.isin(pool_ids)]
    # A class flip relabels boxes; defect-free images have none, so only defect images flip.
    classes = classes[classes < len(split.class_names)]
    noisy, flips = flip_image_classes(
        truth.labels, classes, rate, len(split.class_names), seed=noise_seed
    )
    return compose_source(
        source, split, pool_ids=pool_ids, pool_labels=noisy, holdout=holdout, flips=flips
    )


def assert_no_test_images(dataset: SourceDataset, split: SplitInputs) -> None:
    """Refuse a training set holding any golden test image, by id or by identical bytes."""
    by_id = set(dataset.images["image_id"]) & set(split.test["image_id"])
    by_hash = set(dataset.images["sha256"].dropna()) & set(split.test["sha256"].dropna())
    if by_id or by_hash:
        raise LeakageError(
            f"source {dataset.source!r} would train on {len(by_id | by_hash)} golden test "
            f"image(s): ids {sorted(by_id)[:5]}, hashes {sorted(by_hash)[:2]}"
        )


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link, else symlink, else copy ``source`` to ``target``; returns which was used.

    Links keep a dataset folder per source cheap (1,800 images each would otherwise be copied
    for every source and noise level).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
        return "hardlink"
    except OSError:
        pass
    try:
        target.symlink_to(Path(source).resolve())
        return "symlink"
    except OSError:
        shutil.copy2(source, target)
        return "copy"


def write_source_dataset(
    dataset: SourceDataset, out_dir: Path, class_names: Sequence[str], progress: bool = False
) -> Path:
    """Write ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml``; returns the yaml."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    by_image = {image_id: rows for image_id, rows in dataset.labels.groupby("image_id")}
    empty = pd.DataFrame(columns=LABEL_COLUMNS)
    methods: dict[str, int] = {}
    for row in tqdm(
        dataset.images.itertuples(index=False),
        total=len(dataset.images),
        desc=f"Writing {dataset.source}",
        unit="img",
        disable=progress_disabled(progress),
    ):
        image = Path(row.path)
        target = out_dir / "images" / row.subset / f"{row.image_id}{image.suffix.lower()}"
        method = link_or_copy(image, target)
        methods[method] = methods.get(method, 0) + 1
        rows = by_image.get(row.image_id, empty)
        lines = [
            yolo_line(int(r.class_id), r.cx, r.cy, r.w, r.h) for r in rows.itertuples(index=False)
        ]
        write_label_file(out_dir / "labels" / row.subset / f"{row.image_id}.txt", lines)
    dataset.images.drop(columns=["path"]).to_csv(out_dir / "images.csv", index=False)
    dataset.excluded.to_csv(out_dir / "excluded.csv", index=False)
    if len(dataset.flips):
        dataset.flips.to_csv(out_dir / "flips.csv", index=False)
    val = "images/train" if dataset.val_is_train else "images/val"
    data_yaml = write_data_yaml(out_dir, class_names, train="images/train", val=val)
    log.info("%s: %s images written (%s)", dataset.source, len(dataset.images), methods)
    return data_yaml

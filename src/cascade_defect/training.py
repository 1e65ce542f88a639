"""Label sources and YOLOv8n fine-tuning: the work behind chapter 05.

The study's question is whether pseudo-labels can stand in for human labels, so every model is
trained the same way and only the labels change. Each *label source* becomes an ultralytics
dataset folder:

* ``human``: the ground-truth boxes of the pool plus the seeds (the reference);
* ``seed_only``: the labelled seeds alone (what the few-shot prompt saw);
* ``pseudo``: the annotator's labels for the pool, one box strategy, images that failed or fell
  below a confidence threshold left out, plus the ground-truth seeds;
* ``noise_<rate>``: the human labels with that fraction of pool images relabelled to another
  class (seeded), to show how much label noise the detector tolerates.

Validation during training uses a held-out part of the *training pool*, labelled by the same
source (the same images for every source), never the golden test set. Assembly is a set of pure
functions over tables so the guarantees (no test image, ground truth only where allowed) can be
tested without training anything; :func:`write_source_dataset` is the only step touching disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from cascade_defect.manifest import ChapterRun, file_sha256, require_inputs
from cascade_defect.progress import progress_disabled
from cascade_defect.pseudo import AnnotationOutputs, read_pseudo_labels
from cascade_defect.settings import StudyConfig, TrainingSettings
from cascade_defect.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.yolo_env import (
    import_ultralytics,
    pin_training_threads,
    quiet_ultralytics,
    resolve_device,
    training_threads,
)

log = logging.getLogger(__name__)

HUMAN = "human"
SEED_ONLY = "seed_only"
PSEUDO = "pseudo"
NOISE_PREFIX = "noise_"
BASE_SOURCES: tuple[str, ...] = (HUMAN, PSEUDO, SEED_ONLY)
BOX_STRATEGIES: tuple[str, ...] = ("whole_image", "seed_detector", "annotator")

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

#: Arguments :func:`train_yolo` sets itself; ``ultralytics_args`` may not override them.
RESERVED_TRAIN_ARGS = frozenset(
    {
        "data",
        "epochs",
        "imgsz",
        "batch",
        "workers",
        "device",
        "patience",
        "seed",
        "deterministic",
        "amp",
        "project",
        "name",
        "exist_ok",
        "model",
        "resume",
    }
)

_METRIC_NAMES = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/accuracy_top1": "top1",
    "metrics/accuracy_top5": "top5",
}

_PRODUCED_BY = {
    "split": "notebook 02 (split)",
    "pool_ground_truth": "notebook 02 (split)",
    "pseudo_labels": "notebook 03 (few-shot annotation)",
    "pseudo_boxes": "notebook 03 (few-shot annotation)",
}


class LeakageError(AssertionError):
    """A golden test image (by id or by content hash) was about to enter training."""


class GroundTruthAccessError(ValueError):
    """A source that must not see the pool's ground truth was handed it."""


# --------------------------------------------------------------------------- source names


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


def validate_source(source: str) -> str:
    if source in BASE_SOURCES or noise_rate(source) is not None:
        return source
    raise ValueError(f"unknown label source {source!r}; known: {[*BASE_SOURCES, 'noise_<rate>']}")


def planned_sources(settings: TrainingSettings) -> list[str]:
    """The profile's sources in training order, followed by its noise sweep."""
    sources = [validate_source(s) for s in settings.sources]
    sources += [noise_source(rate) for rate in settings.noise_levels]
    return list(dict.fromkeys(sources))


def uses_pool_ground_truth(source: str) -> bool:
    """Only the reference and its noisy copies may read the pool's hidden labels."""
    return source == HUMAN or noise_rate(source) is not None


def epochs_for(source: str, settings: TrainingSettings) -> int:
    """The schedule of a source: the noise sweep and seed_only have their own epoch counts."""
    if noise_rate(source) is not None:
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
        elif source == PSEUDO:
            pool = (
                f"annotator labels, '{settings.box_strategy}' boxes, confidence ≥ "
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


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SplitInputs:
    """What every source may read from chapter 02: seeds with labels, the pool without."""

    class_names: list[str]
    seeds: pd.DataFrame  # image_id, path, sha256, class_name
    seed_labels: pd.DataFrame  # LABEL_COLUMNS
    pool: pd.DataFrame  # image_id, path, sha256 (no classes)
    test: pd.DataFrame  # image_id, path, sha256: only to prove none of it enters training


@dataclass(frozen=True)
class PoolTruth:
    """The pool's hidden labels; :func:`read_pool_truth` is the one reader in this module."""

    image_classes: pd.Series  # image_id -> class index
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
    )


def read_pool_truth(layout: SplitLayout, class_names: Sequence[str]) -> PoolTruth:
    """The pool's ground truth as YOLO labels plus each image's class index."""
    truth, _ = read_pool_ground_truth(layout)
    index = {name: i for i, name in enumerate(class_names)}
    truth["image_id"] = truth["image_id"].astype(str)
    classes = truth.set_index("image_id")["class_name"].map(index)
    if classes.isna().any():
        raise ValueError("pool ground truth names a class missing from classes.json")
    labels = read_yolo_labels(layout.pool_labels_dir, list(truth["image_id"]))
    return PoolTruth(image_classes=classes.astype(int), labels=labels)


# --------------------------------------------------------------------------- pure assembly


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


def flip_image_classes(
    labels: pd.DataFrame,
    image_classes: pd.Series,
    rate: float,
    n_classes: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Relabel exactly ``round(rate * n_images)`` images to another class, seeded.

    This mimics an annotator that names the wrong class for a whole image: every box of a chosen
    image takes the new class, which is drawn uniformly from the classes other than the image's
    own. Returns the noisy labels and a table of the flips.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must lie in [0, 1]")
    if n_classes < 2:
        raise ValueError("flipping needs at least two classes")
    ids = sorted(map(str, image_classes.index))
    n_flip = round(rate * len(ids))
    rng = np.random.default_rng(seed)
    chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=n_flip, replace=False))]
    flips = []
    for image_id in chosen:
        true_class = int(image_classes[image_id])
        noisy_class = (true_class + int(rng.integers(1, n_classes))) % n_classes
        flips.append({"image_id": image_id, "true_class": true_class, "noisy_class": noisy_class})
    flip_table = pd.DataFrame(flips, columns=["image_id", "true_class", "noisy_class"])
    noisy = labels.copy()
    new_class = noisy["image_id"].map(
        dict(zip(flip_table["image_id"], flip_table["noisy_class"], strict=True))
    )
    noisy["class_id"] = new_class.fillna(noisy["class_id"]).astype(int)
    return noisy, flip_table


def pseudo_training_labels(
    labels: pd.DataFrame,
    boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    strategy: str,
    min_confidence: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The annotator's boxes (one strategy) as YOLO labels, and the images left out with why.

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
    reason[reason.isna() & (frame["defect_class"] == "no_defect")] = "no_defect"
    reason[reason.isna() & ~frame["defect_class"].isin(list(index))] = "unknown_class"
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
    reason[reason.isna() & ~frame["image_id"].isin(set(yolo["image_id"]))] = "no_boxes"
    excluded = pd.DataFrame({"image_id": frame["image_id"], "reason": reason}).dropna()
    yolo = yolo[yolo["image_id"].isin(set(frame.loc[reason.isna(), "image_id"]))]
    return yolo.reset_index(drop=True)[LABEL_COLUMNS], excluded.reset_index(drop=True)


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
) -> SourceDataset:
    """Assemble one label source from tables, refusing inputs the source must not see."""
    validate_source(source)
    if truth is not None and not uses_pool_ground_truth(source):
        raise GroundTruthAccessError(f"source {source!r} must not be given the pool's ground truth")
    if pseudo is not None and source != PSEUDO:
        raise ValueError(f"source {source!r} takes no pseudo-labels")
    if source == SEED_ONLY:
        empty = pd.DataFrame(columns=LABEL_COLUMNS)
        return compose_source(source, split, pool_ids=[], pool_labels=empty, holdout=holdout)
    if source == PSEUDO:
        if pseudo is None:
            raise ValueError("the pseudo source needs chapter 03's labels and boxes")
        labels, excluded = pseudo_training_labels(
            *pseudo, split.class_names, strategy=box_strategy, min_confidence=min_confidence
        )
        known = set(split.pool["image_id"])
        kept = sorted(set(labels["image_id"]) & known)
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


# --------------------------------------------------------------------------- writing


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


def _label_text(rows: pd.DataFrame) -> str:
    lines = [
        f"{int(r.class_id)} {r.cx:.6f} {r.cy:.6f} {r.w:.6f} {r.h:.6f}"
        for r in rows.itertuples(index=False)
    ]
    return "\n".join(lines) + ("\n" if lines else "")


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
        label = out_dir / "labels" / row.subset / f"{row.image_id}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(_label_text(by_image.get(row.image_id, empty)))
    dataset.images.drop(columns=["path"]).to_csv(out_dir / "images.csv", index=False)
    dataset.excluded.to_csv(out_dir / "excluded.csv", index=False)
    if len(dataset.flips):
        dataset.flips.to_csv(out_dir / "flips.csv", index=False)
    payload = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/train" if dataset.val_is_train else "images/val",
        "names": dict(enumerate(class_names)),
    }
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(payload, sort_keys=False))
    log.info("%s: %s images written (%s)", dataset.source, len(dataset.images), methods)
    return data_yaml


# --------------------------------------------------------------------------- ultralytics


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data-loader workers).

    On a shared machine wall time depends on the neighbours; CPU time measures the work itself.
    """
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class EpochRecorder:
    """Ultralytics callbacks that collect per-epoch metrics and drive an epoch progress bar.

    ``on_fit_epoch_end`` fires after each epoch's validation and once more after the final
    validation of ``best.pt``; only the first kind follows ``on_train_epoch_end``, which is how
    the two are told apart.
    """

    epochs: int
    desc: str = "epochs"
    progress: bool = True
    headline: str = "map50"
    """The hold-out metric shown on the bar and in the log (``top1`` for classifiers)."""
    rows: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    _pending: bool = False
    _bar: Any = None
    _start: float = field(default_factory=time.perf_counter)

    def on_train_start(self, trainer: Any) -> None:
        self._start = time.perf_counter()
        self._bar = tqdm(
            total=self.epochs,
            desc=self.desc,
            unit="epoch",
            disable=progress_disabled(self.progress),
        )

    def on_train_epoch_end(self, trainer: Any) -> None:
        self._pending = True

    def on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = {
            _METRIC_NAMES.get(k, k.replace("/", "_")): _as_float(v)
            for k, v in (trainer.metrics or {}).items()
        }
        if not self._pending:
            self.final = metrics
            return
        self._pending = False
        losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}
        row = {
            "epoch": int(trainer.epoch) + 1,
            "seconds": round(time.perf_counter() - self._start, 2),
            **{k.replace("/", "_"): _as_float(v) for k, v in losses.items()},
            **metrics,
            **{k.replace("/", "_"): _as_float(v) for k, v in (trainer.lr or {}).items()},
        }
        self.rows.append(row)
        value = metrics.get(self.headline, float("nan"))
        log.info(
            "%s epoch %d/%d: hold-out %s %.3f (%.0f s)",
            self.desc,
            row["epoch"],
            self.epochs,
            self.headline,
            value,
            row["seconds"],
        )
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({self.headline: f"{value:.3f}"})

    def on_train_end(self, trainer: Any) -> None:
        if self._bar is not None:
            self._bar.close()

    def attach(self, model: Any) -> None:
        for event in ("on_train_start", "on_train_epoch_end", "on_fit_epoch_end", "on_train_end"):
            model.add_callback(event, getattr(self, event))


@dataclass
class TrainingResult:
    """One trained model: where its weights are, how it learned and how long it took."""

    source: str
    best_weights: Path
    run_dir: Path
    epochs_planned: int
    epochs_run: int
    imgsz: int
    wall_seconds: float
    history: pd.DataFrame
    holdout_metrics: dict[str, float]
    cpu_seconds: float = float("nan")
    reused: bool = False
    dataset_counts: dict[str, int] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "best_weights": str(self.best_weights),
            "run_dir": str(self.run_dir),
            "epochs_planned": self.epochs_planned,
            "epochs_run": self.epochs_run,
            "imgsz": self.imgsz,
            "wall_seconds": round(self.wall_seconds, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "reused_earlier_run": self.reused,
            "holdout": self.holdout_metrics,
            **self.dataset_counts,
            "train_args": self.train_args,
        }


def train_yolo(
    data_yaml: Path,
    *,
    weights: str,
    project_dir: Path,
    name: str,
    epochs: int,
    imgsz: int,
    batch: int,
    workers: int,
    device: str,
    patience: int,
    seed: int,
    config_dir: Path,
    ultralytics_args: Mapping[str, Any] | None = None,
    torch_threads: int | None = None,
    progress: bool = True,
    verbose: bool = False,
    model: Any = None,
    headline: str = "map50",
) -> TrainingResult:
    """Fine-tune YOLOv8n from ``weights`` on one dataset, offline and seeded.

    Metrics come from ultralytics' callbacks (``trainer.metrics`` after each validation), not
    from its logs. ``amp=False`` because the AMP check downloads a model; ``deterministic=True``
    with ``seed`` makes a rerun on the same machine repeat itself. ``model`` replaces
    ``YOLO(weights)`` when the caller built the model itself (the classification track builds
    YOLOv8n-cls and loads ``weights`` into it); ``data_yaml`` is then whatever that task's
    trainer reads (a folder for classification).
    """
    clash = RESERVED_TRAIN_ARGS & set(ultralytics_args or {})
    if clash:
        raise ValueError(f"ultralytics_args may not set {sorted(clash)}; use the profile fields")
    if not Path(weights).exists():
        raise FileNotFoundError(
            f"YOLO weights {weights!r} not found; set CASCADE_YOLO_WEIGHTS to a local yolov8n.pt "
            "(this project never downloads weights)"
        )
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    run_dir = Path(project_dir) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if model is None:
        model = YOLO(str(weights))
    recorder = EpochRecorder(
        epochs=epochs, desc=f"train {name}", progress=progress, headline=headline
    )
    recorder.attach(model)
    pin_training_threads(model, training_threads(torch_threads))
    args: dict[str, Any] = {
        "plots": False,
        "val": True,
        "verbose": verbose,
        **(ultralytics_args or {}),
        "data": str(data_yaml),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "workers": workers,
        "device": resolve_device(device),
        "patience": patience,
        "seed": seed,
        "deterministic": True,
        "amp": False,
        "project": str(Path(project_dir).resolve()),
        "name": name,
        "exist_ok": True,
    }
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with quiet_ultralytics(not verbose):
        model.train(**args)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    trainer = model.trainer
    best = Path(trainer.best)
    if not best.exists():
        best = Path(trainer.last)
    history = pd.DataFrame(recorder.rows)
    return TrainingResult(
        source=name,
        best_weights=best,
        run_dir=Path(trainer.save_dir),
        epochs_planned=epochs,
        epochs_run=len(history),
        imgsz=imgsz,
        wall_seconds=wall,
        cpu_seconds=cpu,
        history=history,
        holdout_metrics={k: v for k, v in recorder.final.items() if k in _METRIC_NAMES.values()},
        train_args={k: v for k, v in args.items() if k not in {"data", "project"}},
    )


# --------------------------------------------------------------------------- per source


@dataclass(frozen=True)
class TrainingOutputs:
    """The files chapter 05 writes; chapter 06 finds the weights through ``results``."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "training_results.json"

    @property
    def summary(self) -> Path:
        return self.root / "training_summary.csv"

    @property
    def history(self) -> Path:
        return self.root / "training_history.csv"

    @property
    def exclusions(self) -> Path:
        return self.root / "pseudo_exclusions.csv"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def dataset_dir(self, source: str) -> Path:
        return self.datasets_dir / source

    def result_file(self, source: str) -> Path:
        return self.root / f"result_{source}.json"


def assemble_source(
    config: StudyConfig, source: str
) -> tuple[SourceDataset, SplitInputs, PoolTruth | None]:
    """Read what ``source`` is allowed to read and assemble its training images and labels.

    The pool's truth is read only for sources that may see it and is returned with them (the
    classification track takes image classes from it); for other sources it is None.
    """
    validate_source(source)
    layout = SplitLayout(config.paths.split_dir)
    require_inputs({"split": layout.pool_listing}, _PRODUCED_BY)
    split = read_split_inputs(layout)
    settings = config.profile.training
    holdout = holdout_ids(split.pool["image_id"], settings.val_fraction, settings.seed)
    truth = pseudo = None
    if uses_pool_ground_truth(source):
        require_inputs({"pool_ground_truth": layout.pool_truth}, _PRODUCED_BY)
        truth = read_pool_truth(layout, split.class_names)
    elif source == PSEUDO:
        outputs = AnnotationOutputs(config.paths.annotation_dir)
        require_inputs(
            {"pseudo_labels": outputs.labels, "pseudo_boxes": outputs.boxes}, _PRODUCED_BY
        )
        pseudo = read_pseudo_labels(outputs)
    dataset = build_source(
        source,
        split,
        holdout=holdout,
        truth=truth,
        pseudo=pseudo,
        box_strategy=settings.box_strategy,
        min_confidence=settings.pseudo_confidence_threshold,
        noise_seed=settings.seed,
    )
    return dataset, split, truth


def prepare_source(
    config: StudyConfig, source: str, *, progress: bool = False
) -> tuple[SourceDataset, Path]:
    """Assemble ``source`` (:func:`assemble_source`) and write its detection dataset folder."""
    dataset, split, _ = assemble_source(config, source)
    out = TrainingOutputs(config.paths.training_dir)
    data_yaml = write_source_dataset(
        dataset, out.dataset_dir(source), split.class_names, progress=progress
    )
    return dataset, data_yaml


def training_fingerprint(dataset_dir: Path, weights: str, train_args: Mapping[str, Any]) -> str:
    """A hash of everything a trained model depends on: labels, image list, weights, arguments.

    Two runs with the same fingerprint train the same model (training is seeded and
    deterministic), so a re-run of the chapter may reuse the earlier one instead of spending
    its minutes again.
    """
    import hashlib

    digest = hashlib.sha256()
    root = Path(dataset_dir)
    for path in sorted((root / "labels").rglob("*.txt")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update((root / "images.csv").read_bytes())
    digest.update(file_sha256(Path(weights)).encode())
    digest.update(json.dumps(dict(train_args), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def reusable_result(path: Path, fingerprint: str) -> TrainingResult | None:
    """The saved result of an identical earlier run, if its weights are still there."""
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    best = Path(payload.get("best_weights", ""))
    if payload.get("fingerprint") != fingerprint or not best.exists():
        return None
    return TrainingResult(
        source=payload["source"],
        best_weights=best,
        run_dir=Path(payload["run_dir"]),
        epochs_planned=int(payload["epochs_planned"]),
        epochs_run=int(payload["epochs_run"]),
        imgsz=int(payload["imgsz"]),
        wall_seconds=float(payload["wall_seconds"]),
        cpu_seconds=float(payload.get("cpu_seconds", float("nan"))),
        history=pd.DataFrame(payload.get("history", [])),
        holdout_metrics=dict(payload.get("holdout", {})),
        train_args=dict(payload.get("train_args", {})),
        reused=True,
    )


def training_schedule(settings: TrainingSettings, epochs: int) -> dict[str, Any]:
    """:func:`train_yolo`'s keyword arguments from a profile's training settings.

    The thread count is resolved here so that a fingerprint of the schedule changes with it (it
    changes the arithmetic, and so the weights).
    """
    return {
        "epochs": epochs,
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "workers": settings.workers,
        "device": settings.device,
        "patience": settings.patience,
        "seed": settings.seed,
        "ultralytics_args": settings.ultralytics_args,
        "torch_threads": training_threads(settings.torch_threads),
    }


def train_source(
    config: StudyConfig,
    source: str,
    *,
    epochs: int | None = None,
    reuse: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> TrainingResult:
    """Assemble ``source`` and fine-tune YOLOv8n on it with the profile's settings.

    Noise sources train for ``noise_epochs`` (a cheaper sweep), ``seed_only`` for
    ``seed_only_epochs``, every other source for ``epochs`` (:func:`epochs_for`). The result is
    written to ``result_<source>.json`` with its :func:`training_fingerprint`; with ``reuse``,
    an earlier result with the same fingerprint is returned instead of training again (its
    recorded wall time is that of the run that trained it).
    """
    settings = config.profile.training
    dataset, data_yaml = prepare_source(config, source)
    if epochs is None:
        epochs = epochs_for(source, settings)
    out = TrainingOutputs(config.paths.training_dir)
    schedule = training_schedule(settings, epochs)
    fingerprint = training_fingerprint(data_yaml.parent, config.yolo_weights, schedule)
    if reuse:
        earlier = reusable_result(out.result_file(source), fingerprint)
        if earlier is not None:
            log.info("%s: reusing the identical run in %s", source, earlier.run_dir)
            earlier.dataset_counts = dataset.counts()
            return earlier
    result = train_yolo(
        data_yaml,
        weights=config.yolo_weights,
        project_dir=out.runs_dir,
        name=source,
        config_dir=config.work_dir / ".ultralytics",
        progress=progress,
        verbose=verbose,
        **schedule,
    )
    result.dataset_counts = dataset.counts()
    payload = result.summary()
    payload["fingerprint"] = fingerprint
    payload["history"] = result.history.to_dict(orient="records")
    out.result_file(source).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return result


# --------------------------------------------------------------------------- chapter 05


@dataclass
class TrainingChapter:
    """What chapter 05 shows: one row per source, the learning curves and pseudo exclusions."""

    results: dict[str, TrainingResult]
    summary: pd.DataFrame
    history: pd.DataFrame
    exclusions: pd.DataFrame
    outputs: TrainingOutputs


def summary_table(results: Mapping[str, TrainingResult]) -> pd.DataFrame:
    """One row per source: data sizes, epochs, wall time and hold-out metrics of ``best.pt``."""
    rows = []
    for source, result in results.items():
        rows.append(
            {
                "source": source,
                **result.dataset_counts,
                "epochs_run": result.epochs_run,
                "imgsz": result.imgsz,
                "wall_minutes": round(result.wall_seconds / 60, 2),
                "cpu_minutes": round(result.cpu_seconds / 60, 2),
                "reused": result.reused,
                **{f"holdout_{k}": round(v, 4) for k, v in result.holdout_metrics.items()},
            }
        )
    return pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()


def write_results(results: Mapping[str, TrainingResult], path: Path) -> None:
    """Every source's :meth:`TrainingResult.summary`, with paths relative to ``path``'s folder.

    Relative paths keep the file valid when the run folder moves (or comes back from the lake).
    """
    payload = {}
    for source, result in results.items():
        entry = result.summary()
        for key in ("best_weights", "run_dir"):
            entry[key] = os.path.relpath(entry[key], path.parent)
        payload[source] = entry
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def learning_history(results: Mapping[str, TrainingResult]) -> pd.DataFrame:
    """Every source's per-epoch rows, stacked with a ``source`` column."""
    curves = [r.history.assign(source=s) for s, r in results.items() if len(r.history)]
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def read_training_results(outputs: TrainingOutputs) -> dict[str, dict[str, Any]]:
    """Chapter 05's per-source results (weights path, counts, times), or a clear error."""
    require_inputs({"training_results": outputs.results}, {"training_results": "notebook 05"})
    payload = json.loads(outputs.results.read_text())
    root = outputs.root
    for entry in payload.values():
        entry["best_weights"] = str(root / entry["best_weights"])
    return payload


def run_training(
    config: StudyConfig,
    *,
    sources: Sequence[str] | None = None,
    reuse: bool = False,
    progress: bool = True,
    on_result: Callable[[TrainingResult], None] | None = None,
) -> TrainingChapter:
    """Train one model per source, then write the results, learning curves and a manifest.

    With ``reuse``, a source whose labels, weights and arguments are unchanged since its last
    run is not trained again (see :func:`train_source`); the summary marks it.
    """
    chosen = [validate_source(s) for s in (sources or planned_sources(config.profile.training))]
    out = TrainingOutputs(config.paths.training_dir)
    layout = SplitLayout(config.paths.split_dir)
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    inputs = {"split_pool": layout.pool_listing, "split_seed": layout.seed_listing}
    if PSEUDO in chosen:
        inputs |= {"pseudo_labels": annotation.labels, "pseudo_boxes": annotation.boxes}
    if any(uses_pool_ground_truth(s) for s in chosen):
        inputs |= {"pool_ground_truth": layout.ground_truth_dir}
    require_inputs(
        inputs, {**_PRODUCED_BY, "split_pool": "notebook 02", "split_seed": "notebook 02"}
    )
    run = ChapterRun(
        "05_yolo_training",
        config,
        out.root,
        parameters={"sources": chosen, "reuse": reuse, **config.profile.training.model_dump()},
        inputs=inputs,
    )
    results: dict[str, TrainingResult] = {}
    for source in chosen:
        with run.timed(f"train_{source}"):
            results[source] = train_source(config, source, reuse=reuse, progress=progress)
        if on_result is not None:
            on_result(results[source])
    summary = summary_table(results)
    history = learning_history(results)
    excluded_path = out.dataset_dir(PSEUDO) / "excluded.csv"
    exclusions = pd.read_csv(excluded_path) if PSEUDO in chosen and excluded_path.exists() else None
    exclusions = (
        exclusions.groupby("reason").size().rename("images").reset_index()
        if exclusions is not None and len(exclusions)
        else pd.DataFrame(columns=["reason", "images"])
    )
    summary.to_csv(out.summary)
    history.to_csv(out.history, index=False)
    exclusions.to_csv(out.exclusions, index=False)
    write_results(results, out.results)
    run.counts.update(
        {f"wall_seconds_{s}": round(r.wall_seconds, 1) for s, r in results.items()}
        | {f"cpu_seconds_{s}": round(r.cpu_seconds, 1) for s, r in results.items()}
        | {"n_sources": len(results)}
    )
    run.write(
        {
            "results": out.results,
            "summary": out.summary,
            "history": out.history,
            "pseudo_exclusions": out.exclusions,
            "weights": out.runs_dir,
        }
    )
    return TrainingChapter(results, summary, history, exclusions, out)

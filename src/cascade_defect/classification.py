"""The image-classification track: YOLOv8n-cls per label source, scored by test accuracy.

Detection (chapters 05 and 06) scores boxes. Many inspection lines need only the defect class of
an image, and a dataset with image-level labels only has no boxes worth scoring (its detection
track trains on whole-image boxes). This track trains YOLOv8n-cls on each source's image-level
labels, on exactly the images, hold-out and exclusions of the detection source of the same name,
and scores top-1 accuracy on the golden test set with bootstrap intervals.

The classifier starts from ImageNet weights when ``CASCADE_YOLO_CLS_WEIGHTS`` names a
``yolov8n-cls.pt``; otherwise YOLOv8n-cls is built from its configuration and its backbone is
loaded from the COCO detection checkpoint (the backbones are the same network), so nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.audit import macro_scores, per_class_metrics
from cascade_defect.evaluation import (
    bootstrap_indices,
    golden_test_truth,
    measure_latency,
    percentile_interval,
)
from cascade_defect.manifest import ChapterRun, require_inputs
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import ClassificationSettings, StudyConfig
from cascade_defect.split import SplitLayout
from cascade_defect.training import (
    HUMAN,
    PSEUDO,
    SEED_ONLY,
    PoolTruth,
    SourceDataset,
    SplitInputs,
    TrainingOutputs,
    TrainingResult,
    assemble_source,
    learning_history,
    link_or_copy,
    reusable_result,
    summary_table,
    train_yolo,
    training_fingerprint,
    write_results,
)
from cascade_defect.yolo_env import (
    import_ultralytics,
    quiet_ultralytics,
    resolve_device,
    training_threads,
)

log = logging.getLogger(__name__)

CLASSIFICATION_SOURCES: tuple[str, ...] = (HUMAN, PSEUDO, SEED_ONLY)


def primary_track(layout: SplitLayout) -> str:
    """Which comparison answers the study's question for this dataset.

    ``detection`` when the dataset has boxes; ``classification`` when it has class folders only,
    because its detection models learn whole-image boxes, which measure little beyond the class.
    """
    return "classification" if layout.label_kind() == "image" else "detection"


def track_note(layout: SplitLayout) -> str:
    """One sentence for the notebooks: which track to read, and why."""
    if primary_track(layout) == "classification":
        return (
            "This dataset has image-level labels only: its detection models train on whole-image "
            "boxes, so the classification track (YOLOv8n-cls, accuracy) is the one to read."
        )
    return (
        "This dataset has boxes: detection (YOLOv8n, mAP) is the primary track; the "
        "classification track (YOLOv8n-cls, accuracy) answers the question for lines that "
        "need only each image's class."
    )


def dataset_track(config: StudyConfig) -> str:
    """:func:`track_note` for a run whose split exists (chapter 02), else an empty string."""
    layout = SplitLayout(config.paths.split_dir)
    return track_note(layout) if layout.classes_file.exists() else ""


# --------------------------------------------------------------------------- labels


def image_classes(dataset: SourceDataset, split: SplitInputs, truth: PoolTruth | None) -> pd.Series:
    """Each training image's class name under ``dataset``'s source.

    Seeds keep their labelled class. Pool images take the pool's truth for ``human`` and the
    annotator's class for ``pseudo`` (the class its boxes carry: every box of a pseudo-labelled
    image carries the image's class, so the majority is that class).
    """
    names = list(split.class_names)
    seeds = split.seeds.set_index("image_id")["class_name"].astype(str)
    pool_ids = dataset.images.loc[dataset.images["origin"] == "pool", "image_id"].astype(str)
    if dataset.source == HUMAN:
        if truth is None:
            raise ValueError("the human source needs the pool's truth")
        pool = truth.image_classes.reindex(pool_ids).map(lambda i: names[int(i)])
    elif dataset.source in (PSEUDO, SEED_ONLY):
        labels = dataset.labels[dataset.labels["image_id"].isin(set(pool_ids))]
        counts = labels.groupby(["image_id", "class_id"]).size().rename("n").reset_index()
        counts = counts.sort_values(["image_id", "n", "class_id"], ascending=[True, False, True])
        majority = counts.drop_duplicates("image_id").set_index("image_id")["class_id"]
        pool = majority.reindex(pool_ids).map(lambda i: names[int(i)])
    else:
        raise ValueError(
            f"the classification track trains on {CLASSIFICATION_SOURCES}, not {dataset.source!r}"
        )
    if pool.isna().any():
        missing = pool[pool.isna()].index.tolist()[:5]
        raise ValueError(f"{dataset.source}: no class for pool images {missing}")
    chosen = dataset.images["image_id"].astype(str)
    combined = pd.concat([seeds[seeds.index.isin(set(chosen))], pool])
    return combined.reindex(chosen).rename("class_name")


def _check_folder_name(name: str) -> None:
    if not name.strip() or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"class name {name!r} cannot be a folder name for YOLOv8n-cls")


def write_classification_dataset(
    dataset: SourceDataset,
    classes: pd.Series,
    out_dir: Path,
    class_names: Sequence[str],
    progress: bool = False,
) -> Path:
    """Write ultralytics' classification layout ``{train,val}/<class>/<image>``.

    Every class gets a folder in both subsets, even an empty one, so that ultralytics gives each
    class the same index in both (it sorts the folder names). ``images.csv`` lists what went
    where; training and reuse fingerprint it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for name in class_names:
        _check_folder_name(name)
        for subset in ("train", "val"):
            (out_dir / subset / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for row in tqdm(
        dataset.images.itertuples(index=False),
        total=len(dataset.images),
        desc=f"Writing {dataset.source} (classification)",
        unit="img",
        disable=progress_disabled(progress),
    ):
        image_id = str(row.image_id)
        class_name = str(classes[image_id])
        subsets = [row.subset]
        if dataset.val_is_train:  # seed_only: no held-out labels exist in that scenario
            subsets = ["train", "val"]
        for subset in subsets:
            target = out_dir / subset / class_name / f"{image_id}{Path(row.path).suffix.lower()}"
            link_or_copy(Path(row.path), target)
        rows.append(
            {
                "image_id": image_id,
                "subset": row.subset,
                "origin": row.origin,
                "class_name": class_name,
                "sha256": row.sha256,
            }
        )
    pd.DataFrame(rows).to_csv(out_dir / "images.csv", index=False)
    return out_dir


# --------------------------------------------------------------------------- model and training


def base_classifier(
    detection_weights: str, cls_weights: str | None, config_dir: Path
) -> tuple[Any, str]:
    """YOLOv8n-cls ready to fine-tune, and a line saying where its weights came from."""
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    if cls_weights:
        if not Path(cls_weights).exists():
            raise FileNotFoundError(
                f"CASCADE_YOLO_CLS_WEIGHTS={cls_weights!r} is not a file; unset it to start "
                "from the detection checkpoint's backbone"
            )
        return YOLO(str(cls_weights)), f"{Path(cls_weights).name} (its own pretrained weights)"
    if not Path(detection_weights).exists():
        raise FileNotFoundError(
            f"YOLO weights {detection_weights!r} not found; set CASCADE_YOLO_WEIGHTS to a local "
            "yolov8n.pt (this project never downloads weights)"
        )
    with quiet_ultralytics():
        model = YOLO("yolov8n-cls.yaml")
        model.load(str(detection_weights))
    return model, f"yolov8n-cls.yaml with the backbone of {Path(detection_weights).name}"


@dataclass(frozen=True)
class ClassificationOutputs(TrainingOutputs):
    """Chapter 05's file layout, for the classifiers, under ``05_training/classification``."""

    @property
    def results(self) -> Path:
        return self.root / "classification_results.json"

    @property
    def summary(self) -> Path:
        return self.root / "classification_summary.csv"

    @property
    def history(self) -> Path:
        return self.root / "classification_history.csv"


def classification_outputs(config: StudyConfig) -> ClassificationOutputs:
    return ClassificationOutputs(config.paths.training_dir / "classification")


def epochs_for(source: str, settings: ClassificationSettings) -> int:
    if source == SEED_ONLY and settings.seed_only_epochs:
        return settings.seed_only_epochs
    return settings.epochs


def train_classifier_source(
    config: StudyConfig,
    source: str,
    *,
    reuse: bool = False,
    progress: bool = True,
) -> TrainingResult:
    """Assemble ``source``'s image-level labels and fine-tune YOLOv8n-cls on them."""
    settings = config.profile.classification
    training = config.profile.training
    dataset, split, truth = assemble_source(config, source)
    classes = image_classes(dataset, split, truth)
    out = classification_outputs(config)
    data_dir = write_classification_dataset(
        dataset, classes, out.dataset_dir(source), split.class_names
    )
    schedule = {
        "epochs": epochs_for(source, settings),
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "workers": training.workers,
        "device": training.device,
        "patience": training.patience,
        "seed": training.seed,
        "torch_threads": training_threads(training.torch_threads),
    }
    fingerprint = training_fingerprint(
        data_dir,
        config.yolo_weights,
        {**schedule, "task": "classify", "cls_weights": config.yolo_cls_weights or ""},
    )
    if reuse and (earlier := reusable_result(out.result_file(source), fingerprint)) is not None:
        log.info("%s (classification): reusing the identical run in %s", source, earlier.run_dir)
        earlier.dataset_counts = dataset.counts()
        return earlier
    config_dir = config.work_dir / ".ultralytics"
    model, origin = base_classifier(config.yolo_weights, config.yolo_cls_weights, config_dir)
    result = train_yolo(
        data_dir,
        weights=config.yolo_weights,
        project_dir=out.runs_dir,
        name=source,
        config_dir=config_dir,
        progress=progress,
        model=model,
        headline="top1",
        **schedule,
    )
    result.dataset_counts = dataset.counts()
    payload = result.summary()
    payload.update(
        {
            "fingerprint": fingerprint,
            "initial_weights": origin,
            "history": result.history.to_dict(orient="records"),
        }
    )
    out.result_file(source).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return result


@dataclass
class ClassificationTraining:
    """What chapter 05's classification section shows."""

    results: dict[str, TrainingResult]
    summary: pd.DataFrame
    history: pd.DataFrame
    outputs: ClassificationOutputs
    note: str = ""


def run_classification_training(
    config: StudyConfig,
    *,
    sources: Sequence[str] | None = None,
    reuse: bool = False,
    progress: bool = True,
    on_result: Callable[[TrainingResult], None] | None = None,
) -> ClassificationTraining:
    """Train YOLOv8n-cls once per source, then write results, learning curves and a manifest."""
    chosen = list(sources if sources is not None else config.profile.classification.sources)
    unknown = sorted(set(chosen) - set(CLASSIFICATION_SOURCES))
    if unknown:
        raise ValueError(
            f"classification sources must be among {CLASSIFICATION_SOURCES}: {unknown}"
        )
    out = classification_outputs(config)
    layout = SplitLayout(config.paths.split_dir)
    note = dataset_track(config)
    if not chosen:
        return ClassificationTraining(
            {}, pd.DataFrame(), pd.DataFrame(), out, "The profile skips the classification track."
        )
    out.root.mkdir(parents=True, exist_ok=True)
    run = ChapterRun(
        "05_yolo_training_classification",
        config,
        out.root,
        parameters={
            "sources": chosen,
            "reuse": reuse,
            **config.profile.classification.model_dump(),
            "yolo_cls_weights": config.yolo_cls_weights,
        },
        inputs={"split_pool": layout.pool_listing, "split_seed": layout.seed_listing},
    )
    results: dict[str, TrainingResult] = {}
    for source in chosen:
        with run.timed(f"train_{source}"):
            results[source] = train_classifier_source(
                config, source, reuse=reuse, progress=progress
            )
        if on_result is not None:
            on_result(results[source])
    summary = summary_table(results)
    history = learning_history(results)
    summary.to_csv(out.summary)
    history.to_csv(out.history, index=False)
    write_results(results, out.results)
    run.counts.update(
        {f"wall_seconds_{s}": round(r.wall_seconds, 1) for s, r in results.items()}
        | {"n_sources": len(results)}
    )
    run.write({"results": out.results, "summary": out.summary, "history": out.history})
    return ClassificationTraining(results, summary, history, out, note)


# --------------------------------------------------------------------------- test comparison


def classify_images(
    weights: Path,
    images: pd.DataFrame,
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    batch: int = 64,
    progress: bool = True,
    desc: str = "classify",
) -> pd.DataFrame:
    """Top-1 class and its probability for each image (``image_id``, ``path`` columns).

    The columns match :func:`cascade_defect.evaluation.image_predictions`, so the cascade and
    accuracy helpers take either.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    names = model.names
    device = resolve_device(device)
    rows = []
    paths = images["path"].astype(str).tolist()
    ids = images["image_id"].astype(str).tolist()
    with (
        quiet_ultralytics(),
        tqdm(total=len(paths), desc=desc, unit="img", disable=progress_disabled(progress)) as bar,
    ):
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            for image_id, result in zip(
                ids[start : start + batch],
                model.predict(chunk, imgsz=imgsz, device=device, verbose=False),
                strict=True,
            ):
                probs = result.probs
                rows.append(
                    {
                        "image_id": image_id,
                        "predicted_class": str(names[int(probs.top1)]),
                        "top_confidence": float(probs.top1conf),
                    }
                )
            bar.update(len(chunk))
    return pd.DataFrame(rows, columns=["image_id", "predicted_class", "top_confidence"])


def accuracy_samples(correct: np.ndarray, multiplicities: np.ndarray) -> np.ndarray:
    """Accuracy of each bootstrap resample (rows of per-image multiplicities)."""
    correct = np.asarray(correct, dtype=float)
    return multiplicities @ correct / multiplicities.sum(axis=1)


@dataclass(frozen=True)
class ClassificationComparisonOutputs:
    """The files the classification track writes under chapter 06's folder."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "test_accuracy.csv"

    @property
    def per_class(self) -> Path:
        return self.root / "per_class_recall.csv"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison.json"

    @property
    def confusion(self) -> Path:
        return self.root / "confusion.csv"

    def predictions(self, source: str) -> Path:
        return self.root / "predictions" / f"predictions_{source}.csv"


@dataclass
class ClassificationComparison:
    """What chapter 06's classification section shows."""

    metrics: pd.DataFrame
    per_class: pd.DataFrame
    confusion: dict[str, pd.DataFrame]
    comparison: dict[str, Any]
    samples: dict[str, np.ndarray]
    predictions: dict[str, pd.DataFrame]
    outputs: ClassificationComparisonOutputs
    latency: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def paired_difference(
    samples: Mapping[str, np.ndarray], estimates: Mapping[str, float], target_ratio: float
) -> dict[str, Any]:
    """``pseudo − human`` accuracy with its paired bootstrap interval, and the ratio verdict."""
    if HUMAN not in estimates or PSEUDO not in estimates:
        return {}
    difference = samples[PSEUDO] - samples[HUMAN]
    low, high = percentile_interval(difference)
    ratio = estimates[PSEUDO] / estimates[HUMAN] if estimates[HUMAN] else float("nan")
    return {
        "human_accuracy": estimates[HUMAN],
        "pseudo_accuracy": estimates[PSEUDO],
        "difference": estimates[PSEUDO] - estimates[HUMAN],
        "difference_ci_low": low,
        "difference_ci_high": high,
        "ratio": ratio,
        "target_ratio": target_ratio,
        "target_met": bool(ratio >= target_ratio),
    }


def run_classification_comparison(
    config: StudyConfig,
    *,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    target_ratio: float = 0.97,
    latency_images: int = 50,
    progress: bool = True,
) -> ClassificationComparison:
    """Score every YOLOv8n-cls model of chapter 05 on the golden test set by top-1 accuracy."""
    trained = classification_outputs(config)
    out = ClassificationComparisonOutputs(config.paths.comparison_dir / "classification")
    layout = SplitLayout(config.paths.split_dir)
    note = dataset_track(config)
    if not config.profile.classification.sources:
        empty = pd.DataFrame()
        return ClassificationComparison(
            empty, empty, {}, {}, {}, {}, out, note="The profile skips the classification track."
        )
    require_inputs(
        {"classification_results": trained.results, "split_test": layout.test_listing},
        {"classification_results": "notebook 05", "split_test": "notebook 02"},
    )
    results = json.loads(trained.results.read_text())
    test_images, _, class_names = golden_test_truth(layout)
    truth = test_images.set_index("image_id")["class_name"].astype(str)
    out.root.mkdir(parents=True, exist_ok=True)
    run = ChapterRun(
        "06_test_comparison_classification",
        config,
        out.root,
        parameters={
            "n_bootstrap": n_bootstrap,
            "bootstrap_seed": bootstrap_seed,
            "target_ratio": target_ratio,
            "latency_images": latency_images,
        },
        inputs={"classification_results": trained.results, "split_test": layout.test_listing},
    )
    config_dir = config.work_dir / ".ultralytics"
    device = config.profile.training.device
    multiplicities = bootstrap_indices(len(test_images), n_bootstrap, bootstrap_seed)
    predictions: dict[str, pd.DataFrame] = {}
    samples: dict[str, np.ndarray] = {}
    rows, per_class_frames, confusion = [], [], {}
    for source, entry in results.items():
        weights = trained.root / entry["best_weights"]
        with run.timed(f"predict_{source}"):
            frame = classify_images(
                weights,
                test_images,
                imgsz=int(entry["imgsz"]),
                device=device,
                config_dir=config_dir,
                progress=progress,
                desc=f"test {source}",
            )
        frame["true_class"] = frame["image_id"].map(truth)
        frame["correct"] = frame["predicted_class"] == frame["true_class"]
        out.predictions(source).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out.predictions(source), index=False)
        predictions[source] = frame
        aligned = frame.set_index("image_id").reindex(test_images["image_id"].astype(str))
        samples[source] = accuracy_samples(aligned["correct"].to_numpy(), multiplicities)
        per_class = per_class_metrics(
            frame.rename(columns={"predicted_class": "predicted"}), class_names
        )
        per_class_frames.append(per_class["recall"].rename(source))
        confusion[source] = pd.crosstab(
            pd.Categorical(frame["true_class"], categories=class_names),
            pd.Categorical(frame["predicted_class"], categories=class_names),
            rownames=["true_class"],
            colnames=["predicted"],
            dropna=False,
        )
        low, high = percentile_interval(samples[source])
        rows.append(
            {
                "source": source,
                "accuracy": float(frame["correct"].mean()),
                "ci_low": low,
                "ci_high": high,
                **macro_scores(per_class),
                "n_test": len(frame),
                "epochs_run": entry["epochs_run"],
                "imgsz": entry["imgsz"],
                "train_minutes": round(float(entry["wall_seconds"]) / 60, 2),
            }
        )
    metrics = pd.DataFrame(rows).set_index("source")
    per_class_table = pd.concat(per_class_frames, axis=1)
    comparison = paired_difference(samples, metrics["accuracy"].to_dict(), target_ratio)
    latency: dict[str, Any] = {}
    headline = HUMAN if HUMAN in results else next(iter(results))
    if latency_images > 0:
        with run.timed("latency"):
            latency = measure_latency(
                trained.root / results[headline]["best_weights"],
                test_images["path"].astype(str).tolist()[:latency_images],
                imgsz=int(results[headline]["imgsz"]),
                device=device,
                config_dir=config_dir,
            )
        latency = {"model": headline, **latency}
    metrics.to_csv(out.metrics)
    per_class_table.to_csv(out.per_class)
    pd.concat(confusion, names=["source"]).to_csv(out.confusion)
    out.comparison.write_text(
        json.dumps({**comparison, "latency": latency}, indent=2, default=float) + "\n"
    )
    run.counts.update(
        {f"accuracy_{s}": round(float(v), 4) for s, v in metrics["accuracy"].items()}
        | {"n_test": len(test_images)}
    )
    run.write(
        {
            "metrics": out.metrics,
            "per_class": out.per_class,
            "comparison": out.comparison,
            "confusion": out.confusion,
        }
    )
    return ClassificationComparison(
        metrics, per_class_table, confusion, comparison, samples, predictions, out, latency, note
    )

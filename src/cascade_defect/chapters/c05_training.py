"""Chapter 05, training: one YOLOv8n per label source, and the image-classification track.

Every source trains the same detector on the same schedule, so chapter 06 can put any difference
down to the labels. Results name their weights with portable paths, so ``reuse`` finds an
identical earlier run in any checkout that has its weights.

Detection (chapters 05 and 06) scores boxes. Many inspection lines need only the defect class of
an image, and a dataset with image-level labels only has no boxes worth scoring (its detection
track trains on whole-image boxes). The classification track trains YOLOv8n-cls on each source's
image-level labels, on exactly the images, hold-out and exclusions of the detection source of the
same name, and scores top-1 accuracy on the golden test set with bootstrap intervals.

The classifier starts from ImageNet weights when ``CASCADE_YOLO_CLS_WEIGHTS`` names a
``yolov8n-cls.pt``; otherwise YOLOv8n-cls is built from its configuration and its backbone is
loaded from the COCO detection checkpoint (the backbones are the same network), so nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cascade_defect.annotate.review_budget import parse_review_source
from cascade_defect.annotate.reviewed import ReviewedOutputs, read_reviewed_tables, require_reviewed
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c04_audit import AuditOutputs
from cascade_defect.data.split import (
    SplitLayout,
)
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import sha256_file
from cascade_defect.locations import resolve_portable_path
from cascade_defect.manifest import ChapterRun, require_inputs
from cascade_defect.settings import StudyConfig
from cascade_defect.train.classify import (
    CLASSIFICATION_SOURCES,
    base_classifier,
    image_classes,
    write_classification_dataset,
)
from cascade_defect.train.sources import (
    PSEUDO,
    REVIEWED,
    PoolTruth,
    SourceDataset,
    SplitInputs,
    build_source,
    epochs_for,
    holdout_ids,
    planned_sources,
    read_pool_truth,
    read_split_inputs,
    reads_pseudo_labels,
    uses_pool_ground_truth,
    validate_source,
    write_source_dataset,
)
from cascade_defect.train.yolo import (
    TrainingResult,
    reusable_result,
    train_yolo,
    training_fingerprint,
    training_schedule,
)
from cascade_defect.train.yolo_env import (
    training_threads,
)

log = logging.getLogger(__name__)


_PRODUCED_BY = {
    "split": "notebook 02 (split)",
    "pool_ground_truth": "notebook 02 (split)",
    "pseudo_labels": "notebook 03 (few-shot annotation)",
    "pseudo_boxes": "notebook 03 (few-shot annotation)",
    "audit_images": "notebook 04 (label audit)",
}


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
    config: StudyConfig,
    source: str,
    pseudo_tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> tuple[SourceDataset, SplitInputs, PoolTruth | None]:
    """Read what ``source`` is allowed to read and assemble its training images and labels.

    The pool's truth is read only for sources that may see it and is returned with them (the
    classification track takes image classes from it); for other sources it is None.
    ``pseudo_tables`` (labels, boxes) stand for chapter 03's when a benchmark trains a variant.
    """
    validate_source(source)
    layout = SplitLayout(config.paths.split_dir)
    require_inputs({"split": layout.pool_listing}, _PRODUCED_BY)
    split = read_split_inputs(layout)
    settings = config.profile.training
    holdout = holdout_ids(split.pool["image_id"], settings.val_fraction, settings.seed)
    truth = pseudo = audit = None
    if uses_pool_ground_truth(source):
        require_inputs({"pool_ground_truth": layout.pool_truth}, _PRODUCED_BY)
        truth = read_pool_truth(layout, split.class_names)
    if source == REVIEWED:
        pseudo = read_reviewed_tables(ReviewedOutputs(config.paths.audit_dir / "reviewed"))
    elif reads_pseudo_labels(source):
        outputs = AnnotationOutputs(config.paths.annotation_dir)
        if pseudo_tables is None:
            require_inputs(
                {"pseudo_labels": outputs.labels, "pseudo_boxes": outputs.boxes}, _PRODUCED_BY
            )
        pseudo = pseudo_tables or read_pseudo_labels(outputs)
    if _audit_ordered([source]):
        audit_table = AuditOutputs(config.paths.audit_dir).images
        require_inputs({"audit_images": audit_table}, _PRODUCED_BY)
        audit = read_table(audit_table)
    dataset = build_source(
        source,
        split,
        holdout=holdout,
        truth=truth,
        pseudo=pseudo,
        box_strategy=settings.box_strategy,
        min_confidence=settings.pseudo_confidence_threshold,
        noise_seed=settings.seed,
        audit_images=audit,
    )
    return dataset, split, truth


def _audit_ordered(sources: Sequence[str]) -> bool:
    """Whether any source is a ``review_audit_<k>`` budget (it reads chapter 04's image table)."""
    return any((parse_review_source(s) or ("",))[0] == "audit" for s in sources)


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
    return train_or_reuse(
        config,
        out.result_file(source),
        fingerprint,
        dataset.counts(),
        reuse=reuse,
        train=lambda: train_yolo(
            data_yaml,
            weights=config.yolo_weights,
            project_dir=out.runs_dir,
            name=source,
            config_dir=config.work_dir / ".ultralytics",
            progress=progress,
            verbose=verbose,
            **schedule,
        ),
    )


def train_or_reuse(
    config: StudyConfig,
    result_file: Path,
    fingerprint: str,
    counts: dict[str, int],
    *,
    reuse: bool,
    train: Callable[[], TrainingResult],
    extra: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """The one path both tracks take: an identical earlier run when ``reuse`` finds one, else
    ``train()`` and record its result (portable paths, fingerprint, ``extra``, history)."""
    if reuse and (earlier := reusable_result(result_file, fingerprint, config)) is not None:
        log.info("%s: reusing the identical run in %s", result_file.stem, earlier.run_dir)
        earlier.dataset_counts = counts
        return earlier
    result = train()
    result.dataset_counts = counts
    payload = result.summary(config)
    payload.update(
        {
            "fingerprint": fingerprint,
            **(extra or {}),
            "history": result.history.to_dict(orient="records"),
        }
    )
    result_file.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return result


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


def write_results(results: Mapping[str, TrainingResult], path: Path, config: StudyConfig) -> None:
    """Every source's :meth:`TrainingResult.summary`, its paths written by ``portable_path``.

    Portable paths keep the file valid in another checkout or on another machine;
    :func:`read_training_results` reads them back.
    """
    payload = {source: result.summary(config) for source, result in results.items()}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def learning_history(results: Mapping[str, TrainingResult]) -> pd.DataFrame:
    """Every source's per-epoch rows, stacked with a ``source`` column."""
    curves = [r.history.assign(source=s) for s, r in results.items() if len(r.history)]
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def read_training_results(
    outputs: TrainingOutputs, config: StudyConfig
) -> dict[str, dict[str, Any]]:
    """Chapter 05's per-source results (weights path, counts, times), or a clear error.

    ``best_weights`` and ``run_dir`` come back as local paths (:func:`resolve_portable_path`).
    """
    require_inputs({"training_results": outputs.results}, {"training_results": "notebook 05"})
    payload = json.loads(outputs.results.read_text())
    for entry in payload.values():
        for key in ("best_weights", "run_dir"):
            entry[key] = str(resolve_portable_path(entry[key], config))
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
    if any(reads_pseudo_labels(s) and s != REVIEWED for s in chosen):
        inputs |= {"pseudo_labels": annotation.labels, "pseudo_boxes": annotation.boxes}
    if REVIEWED in chosen:
        reviewed = ReviewedOutputs(config.paths.audit_dir / "reviewed")
        require_reviewed(reviewed)
        inputs |= {"reviewed_labels": reviewed.labels, "reviewed_boxes": reviewed.boxes}
    if _audit_ordered(chosen):
        inputs |= {"audit_images": AuditOutputs(config.paths.audit_dir).images}
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
    exclusions = read_table(excluded_path) if PSEUDO in chosen and excluded_path.exists() else None
    exclusions = (
        exclusions.groupby("reason").size().rename("images").reset_index()
        if exclusions is not None and len(exclusions)
        else pd.DataFrame(columns=["reason", "images"])
    )
    summary.to_csv(out.summary)
    history.to_csv(out.history, index=False)
    exclusions.to_csv(out.exclusions, index=False)
    write_results(results, out.results, config)
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


def _checkpoint_identity(config: StudyConfig) -> str:
    """The ImageNet classifier checkpoint by content (its path differs between machines)."""
    weights = config.yolo_cls_weights
    if weights and Path(weights).is_file():
        return sha256_file(weights)
    return weights or ""


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
        dataset, classes, out.dataset_dir(source), split.label_names
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
        {
            **schedule,
            "task": "classify",
            "cls_weights": _checkpoint_identity(config),
            "head_init": "seeded",
        },
    )
    config_dir = config.work_dir / ".ultralytics"
    initial: dict[str, str] = {}

    def train() -> TrainingResult:
        model, initial["initial_weights"] = base_classifier(
            config.yolo_weights, config.yolo_cls_weights, config_dir, seed=training.seed
        )
        return train_yolo(
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

    return train_or_reuse(
        config,
        out.result_file(source),
        fingerprint,
        dataset.counts(),
        reuse=reuse,
        train=train,
        extra=initial,
    )


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
    write_results(results, out.results, config)
    run.counts.update(
        {f"wall_seconds_{s}": round(r.wall_seconds, 1) for s, r in results.items()}
        | {"n_sources": len(results)}
    )
    run.write({"results": out.results, "summary": out.summary, "history": out.history})
    return ClassificationTraining(results, summary, history, out, note)

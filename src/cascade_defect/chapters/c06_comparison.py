"""Golden test-set comparison, bootstrap intervals and the YOLO → annotator cascade (chapter 06).

Every model is scored on the same golden test images with human labels. Detections are saved
once per model and matched to the ground truth image by image, following ultralytics' own
rules (greedy matching in confidence order, 101-point interpolated AP, classes averaged over
those present in the ground truth), so that:

* mAP can be recomputed for any resample of test images in milliseconds, which makes a
  bootstrap over images (and over the paired difference pseudo − human) cheap;
* the numbers can be checked against ultralytics' ``model.val`` on the same images.

Each detector also decides defect against no defect (a box at or above its KPI threshold): its
defect recall and false-alarm rate on defect-free images. The cascade runs YOLO first and sends
images whose top confidence is below a threshold to the annotator (where the test set holds
defect-free images, YOLO clears those it finds no box on); its accuracy, defect rates and cost
per 1,000 images are traced over the threshold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.chapters.c04_audit import AuditOutputs
from cascade_defect.chapters.c05_training import (
    TrainingOutputs,
    classification_outputs,
    dataset_track,
    read_training_results,
)
from cascade_defect.costs.cascade import (
    Annotator,
    CascadeInputs,
    annotator_price_per_image,
    cascade_costs,
    cascade_curve,
    escalation_annotator,
)
from cascade_defect.costs.references import cpu_vm_usd_per_hour
from cascade_defect.data.split import SplitLayout, read_labelled_listing
from cascade_defect.data.yolo_txt import write_data_yaml
from cascade_defect.manifest import ChapterRun, require_inputs
from cascade_defect.metrics.bootstrap import (
    DEFAULT_TARGET_RATIO,
    accuracy_samples,
    bootstrap_indices,
    bootstrap_map50_per_model,
    bootstrap_table,
    write_comparison,
)
from cascade_defect.metrics.bootstrap import (
    comparison_table as comparison_table,  # notebook 06 imports it from here
)
from cascade_defect.metrics.classification import (
    classifier_scores,
    image_accuracy,
    image_predictions,
    macro_scores,
)
from cascade_defect.metrics.defect_rates import (
    detector_defect_curve,
    detector_defect_table,
    has_defect_free,
    operating_thresholds,
)
from cascade_defect.metrics.detection import (
    MatchedDetections,
    detection_metrics,
    ground_truth_table,
    match_detections,
)
from cascade_defect.metrics.detection import (
    ultralytics_agreement as ultralytics_agreement,  # notebook 06 imports it from here
)
from cascade_defect.metrics.kpi import DEFAULT_KPI_TARGET, KpiTarget, kpi_tables
from cascade_defect.plots.box_noise import BoxNoiseBenchmark, read_box_noise_benchmark
from cascade_defect.plots.comparison import (
    headline_source as headline_source,  # notebook 06 imports it from here
)
from cascade_defect.settings import StudyConfig
from cascade_defect.train.classify import classify_images
from cascade_defect.train.predict import measure_latency, validate_on_test
from cascade_defect.train.sources import HUMAN, PSEUDO, link_or_copy, noise_rate


def cascade_inputs(
    config: StudyConfig,
    *,
    annotator: str | None = "offline",
    annotator_usd_per_image: float | None = None,
    vm_usd_per_hour: float | None = None,
    progress: bool = True,
) -> CascadeInputs:
    """Resolve the cascade's annotator and prices from the parameters and earlier chapters."""
    from cascade_defect.chapters.c03_annotation import AnnotationOutputs

    origin: dict[str, str] = {}
    if annotator_usd_per_image is None:
        outputs = AnnotationOutputs(config.paths.annotation_dir)
        require_inputs(
            {"annotation_summary": outputs.summary}, {"annotation_summary": "notebook 03"}
        )
        annotator_usd_per_image, origin["annotator"] = annotator_price_per_image(
            json.loads(outputs.summary.read_text())
        )
    else:
        origin["annotator"] = "parameter"
    vm_usd_per_hour, origin["vm"] = cpu_vm_usd_per_hour(vm_usd_per_hour)
    labeller = escalation_annotator(config, annotator, progress=progress) if annotator else None
    return CascadeInputs(
        annotator=labeller,
        name=annotator,
        usd_per_image=float(annotator_usd_per_image),
        vm_usd_per_hour=float(vm_usd_per_hour),
        price_origin=origin,
    )


@dataclass(frozen=True)
class ComparisonOutputs:
    """The files chapter 06 writes."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "test_metrics.csv"

    @property
    def per_class(self) -> Path:
        return self.root / "per_class_ap50.csv"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap_map50.csv"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison.json"

    @property
    def kpi(self) -> Path:
        return self.root / "kpi.csv"

    @property
    def thresholds(self) -> Path:
        return self.root / "threshold_sweep.csv"

    @property
    def cascade(self) -> Path:
        return self.root / "cascade.csv"

    @property
    def defect_rates(self) -> Path:
        return self.root / "defect_rates.csv"

    @property
    def defect_curve(self) -> Path:
        return self.root / "defect_curve.csv"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def test_dataset(self) -> Path:
        return self.root / "test_dataset"

    def detections(self, source: str) -> Path:
        return self.predictions_dir / f"detections_{source}.csv"


@dataclass
class ComparisonChapter:
    """What chapter 06 shows."""

    metrics: pd.DataFrame
    per_class: pd.DataFrame
    bootstrap: pd.DataFrame
    comparison: dict[str, Any]  # Comparison.model_dump(); empty without both models
    kpi: pd.DataFrame
    thresholds: pd.DataFrame
    cascade: pd.DataFrame
    samples: dict[str, np.ndarray]
    outputs: ComparisonOutputs
    latency: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    defect_rates: pd.DataFrame = field(default_factory=pd.DataFrame)  # per model, at its threshold
    defect_curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # per model and threshold


def box_noise_benchmark(
    config: StudyConfig, table: str | None, comparison: Mapping[str, Any]
) -> BoxNoiseBenchmark:
    """The box-noise sweep's ``table`` (project-relative; absent is fine) with the pseudo
    source's own boxes from chapter 04 and its mAP50 share from ``comparison``."""
    audit, training = AuditOutputs(config.paths.audit_dir), config.profile.training
    return read_box_noise_benchmark(
        table, config, audit.box_metrics, training.box_strategy, comparison, training.epochs
    )


def golden_test_truth(layout: SplitLayout) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Test images (id, path, class) and their boxes in pixel corners with class indices."""
    images, boxes = read_labelled_listing(layout, "test")
    class_names = layout.class_names()
    images["image_id"] = images["image_id"].astype(str)
    return images, ground_truth_table(boxes, class_names), class_names


def golden_test_dataset(layout: SplitLayout, target: Path, class_names: Sequence[str]) -> Path:
    """A linked copy of the test split for ``model.val`` (its label cache lands here, not in 02)."""
    source = layout.yolo_dir("test")
    for sub in ("images", "labels"):
        for path in sorted((source / sub).glob("*")):
            if path.is_file() and not path.name.endswith(".cache"):
                link_or_copy(path, target / sub / path.name)
    return write_data_yaml(target, class_names)


def run_comparison(
    config: StudyConfig,
    *,
    sources: Sequence[str] | None = None,
    reference: str = HUMAN,
    candidate: str = PSEUDO,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    kpi_target: KpiTarget = DEFAULT_KPI_TARGET,
    latency_images: int = 50,
    annotator: Annotator | None = None,
    annotator_name: str = "annotator",
    annotator_usd_per_image: float = 0.0,
    vm_usd_per_hour: float = 0.0,
    cascade_source: str | None = None,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    progress: bool = True,
) -> ComparisonChapter:
    """Score every trained model on the golden test set, bootstrap, check the KPI, run the cascade.

    ``annotator`` labels the test images the cascade escalates (a mapping image id -> class, or
    a callable on image ids); without one the cascade table is left empty and a note says so.
    """
    training = TrainingOutputs(config.paths.training_dir)
    results = read_training_results(training, config)
    chosen = [s for s in (sources or list(results)) if s in results]
    missing = [s for s in (sources or []) if s not in results]
    if missing:
        raise ValueError(f"no trained model for {missing}: run notebook 05 with those sources")
    layout = SplitLayout(config.paths.split_dir)
    require_inputs({"test": layout.test_listing}, {"test": "notebook 02 (split)"})
    out = ComparisonOutputs(config.paths.comparison_dir)
    run = ChapterRun(
        "06_test_comparison",
        config,
        out.root,
        parameters={
            "sources": chosen,
            "reference": reference,
            "candidate": candidate,
            "n_bootstrap": n_bootstrap,
            "bootstrap_seed": bootstrap_seed,
            "kpi_target": kpi_target.__dict__,
            "target_ratio": target_ratio,
            "latency_images": latency_images,
            "annotator": annotator_name if annotator is not None else None,
            "annotator_usd_per_image": annotator_usd_per_image,
            "vm_usd_per_hour": vm_usd_per_hour,
        },
        inputs={"training_results": training.results, "test": layout.test_listing},
    )
    out.predictions_dir.mkdir(parents=True, exist_ok=True)
    images, truth, class_names = golden_test_truth(layout)
    image_truth = images.set_index("image_id")["class_name"]
    config_dir = config.work_dir / ".ultralytics"
    settings = config.profile.training
    data_yaml = golden_test_dataset(layout, out.test_dataset, class_names)
    matched: dict[str, MatchedDetections] = {}
    rows, per_class = [], {}
    image_level: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    for source in chosen:
        weights = Path(results[source]["best_weights"])
        imgsz = int(results[source].get("imgsz", settings.imgsz))
        with run.timed(f"val_{source}"):
            reference_scores, detections = validate_on_test(
                weights,
                data_yaml,
                images[["image_id", "width", "height"]],
                imgsz=imgsz,
                device=settings.device,
                config_dir=config_dir,
                project_dir=out.root / "ultralytics_val",
                name=source,
            )
        detections.to_csv(out.detections(source), index=False)
        matched[source] = match_detections(detections, truth, list(images["image_id"]), class_names)
        own = detection_metrics(matched[source])
        image_level[source] = image_predictions(matched[source])
        per_class[source] = own["ap50"]
        rows.append(
            {
                "source": source,
                "noise_rate": noise_rate(source),
                "map50": own["map50"],
                "map50_95": own["map50_95"],
                "precision": reference_scores["precision"],
                "recall": reference_scores["recall"],
                "image_accuracy": image_accuracy(image_level[source], image_truth),
                "map50_ultralytics": reference_scores["map50"],
                "map50_95_ultralytics": reference_scores["map50_95"],
                "epochs": int(results[source].get("epochs_run", 0)),
                "train_wall_minutes": round(float(results[source]["wall_seconds"]) / 60, 2),
            }
        )
    metrics = pd.DataFrame(rows).set_index("source")
    latency_source = reference if reference in chosen else (chosen[0] if chosen else None)
    latency: dict[str, float] = {}
    if latency_source is not None and latency_images > 0:
        with run.timed("latency"):
            latency = measure_latency(
                Path(results[latency_source]["best_weights"]),
                list(images["path"])[:latency_images],
                imgsz=int(results[latency_source].get("imgsz", settings.imgsz)),
                device=settings.device,
                config_dir=config_dir,
            )
        metrics["latency_ms_median"] = latency["latency_ms_median"]
    multiplicities = bootstrap_indices(len(images), n_bootstrap, bootstrap_seed)
    with run.timed("bootstrap"):
        samples = bootstrap_map50_per_model(matched, multiplicities, progress=progress)
    boot, comparison = bootstrap_table(
        metrics["map50"].to_dict(),
        samples,
        reference=reference,
        candidate=candidate,
        target_ratio=target_ratio,
    )
    if len(boot):
        metrics = metrics.join(boot[["ci_low", "ci_high"]].add_prefix("map50_"))
    kpi, thresholds = kpi_tables(matched, kpi_target)
    operating = operating_thresholds(kpi, chosen)  # defective: a box at or above the threshold
    defect_rates = detector_defect_table(image_level, image_truth, operating)
    defect_curve = detector_defect_curve(image_level, image_truth)
    cascade_from = cascade_source or (candidate if candidate in chosen else latency_source)
    clear_below = operating.get(cascade_from or "") if has_defect_free(image_truth) else None
    cascade = pd.DataFrame()
    if annotator is None:
        notes.append("No annotator predictions for the test images were given: no cascade curve.")
    elif cascade_from is not None:
        with run.timed("cascade"):
            cascade = cascade_curve(
                image_level[cascade_from], image_truth, annotator, clear_below=clear_below
            )
        cascade = cascade_costs(
            cascade,
            annotator_usd_per_image=annotator_usd_per_image,
            yolo_latency_s=latency.get("latency_ms_median", 0.0) / 1000,
            vm_usd_per_hour=vm_usd_per_hour,
        ).assign(yolo_source=cascade_from, annotator=annotator_name)
    per_class_table = pd.DataFrame(per_class)
    per_class_table.index.name = "class_name"
    metrics.to_csv(out.metrics)
    per_class_table.to_csv(out.per_class)
    boot.to_csv(out.bootstrap)
    kpi.to_csv(out.kpi)
    thresholds.to_csv(out.thresholds, index=False)
    cascade.to_csv(out.cascade, index=False)
    defect_rates.to_csv(out.defect_rates)
    defect_curve.to_csv(out.defect_curve, index=False)
    write_comparison(
        out.comparison,
        comparison,
        latency={**latency, "source": latency_source},
        n_test_images=len(images),
        n_bootstrap=n_bootstrap,
        notes=notes,
        max_abs_map50_gap_vs_ultralytics=float(
            (metrics["map50"] - metrics["map50_ultralytics"]).abs().max()
        )
        if len(metrics)
        else None,
    )
    run.counts.update(
        n_models=len(chosen),
        n_test_images=len(images),
        n_defect_free_test_images=int(image_truth.eq(NO_DEFECT).sum()),
    )
    run.write(
        {
            "metrics": out.metrics,
            "per_class": out.per_class,
            "bootstrap": out.bootstrap,
            "comparison": out.comparison,
            "kpi": out.kpi,
            "threshold_sweep": out.thresholds,
            "cascade": out.cascade,
            "defect_rates": out.defect_rates,
            "defect_curve": out.defect_curve,
            "predictions": out.predictions_dir,
        }
    )
    return ComparisonChapter(
        metrics,
        per_class_table,
        boot,
        comparison.model_dump() if comparison else {},
        kpi,
        thresholds,
        cascade,
        samples,
        out,
        latency={**latency, "source": latency_source},
        notes=notes,
        defect_rates=defect_rates,
        defect_curve=defect_curve,
    )


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
    comparison: dict[str, Any]  # Comparison.model_dump(); empty without both models
    samples: dict[str, np.ndarray]
    predictions: dict[str, pd.DataFrame]
    outputs: ClassificationComparisonOutputs
    latency: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def run_classification_comparison(
    config: StudyConfig,
    *,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    target_ratio: float = DEFAULT_TARGET_RATIO,
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
    results = read_training_results(trained, config)
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
        per_class, confusion[source] = classifier_scores(frame, class_names)
        per_class_frames.append(per_class["recall"].rename(source))
        rows.append(
            {
                "source": source,
                "accuracy": float(frame["correct"].mean()),
                **macro_scores(per_class),
                "n_test": len(frame),
                "epochs_run": entry["epochs_run"],
                "imgsz": entry["imgsz"],
                "train_minutes": round(float(entry["wall_seconds"]) / 60, 2),
            }
        )
    scores = pd.DataFrame(rows).set_index("source")
    boot, comparison = bootstrap_table(
        scores["accuracy"].to_dict(), samples, metric="accuracy", target_ratio=target_ratio
    )
    metrics = boot.join(scores.drop(columns="accuracy"))  # accuracy, ci_low, ci_high, ...
    per_class_table = pd.concat(per_class_frames, axis=1)
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
    write_comparison(
        out.comparison,
        comparison,
        latency=latency,
        n_test_images=len(test_images),
        n_bootstrap=n_bootstrap,
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
        metrics,
        per_class_table,
        confusion,
        comparison.model_dump() if comparison else {},
        samples,
        predictions,
        out,
        latency,
        note,
    )

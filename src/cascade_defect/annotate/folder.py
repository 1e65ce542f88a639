"""Bring your own line's images: label a folder from a handful of labelled seeds.

The same annotators and box strategies as the study, on any dataset: seeds in class subfolders,
Pascal VOC or YOLO format (any class names, spaces included), and a folder of unlabelled images
of any size and format. Writes YOLO labels, a COCO JSON and a review CSV (least confident first),
resumably: answers live in ``predictions.jsonl`` and a re-run sends nothing already answered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cascade_defect.annotate.boxes import BoxStrategy
from cascade_defect.annotate.defect_gate import GatedOffline, gate_applies, gate_offline_answers
from cascade_defect.annotate.labels import image_labels_from_store, yolo_lines
from cascade_defect.annotate.mllm.prompt import SeedExample, normalise_box
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.review_export import coco_dataset
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.annotate.strategies import DetectorRecipe
from cascade_defect.box_settings import DefectGateSettings, SyntheticDefectSettings
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import IMAGE_SUFFIXES, Dataset, DatasetError
from cascade_defect.data.yolo_txt import write_label_file
from cascade_defect.hashing import sha256_file

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The user's folders cannot be used as given; the message says why and what to do."""


@dataclass
class FolderAnnotation:
    """What ``annotate_folder`` did, for the command line to print."""

    annotator: str
    model: str
    n_images: int
    n_labelled: int
    n_failed: int
    cost_usd: float
    seconds: float
    out_dir: Path
    files: dict[str, str] = field(default_factory=dict)


def load_seeds(seeds_dir: Path) -> Dataset:
    """The labelled seeds, with a clear error for an empty class or an unreadable file."""
    if not seeds_dir.is_dir():
        raise InputError(f"seed folder not found: {seeds_dir}")
    empty = sorted(
        p.name
        for p in seeds_dir.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name.lower() not in ("images", "labels", "annotations")
        and not any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*"))
    )
    if empty:
        raise InputError(f"seed class folder(s) with no image: {', '.join(empty)} (in {seeds_dir})")
    try:
        seeds = load_dataset(seeds_dir, class_names=None, progress=False)
    except DatasetError as error:
        raise InputError(f"cannot read the seeds: {error}") from error
    counts = pd.Series([r.class_name for r in seeds.images]).value_counts()
    missing = [name for name in seeds.class_names if name not in counts]
    if missing:
        raise InputError(f"seed class(es) with no image: {', '.join(missing)}")
    if len(seeds.class_names) < 2:
        raise InputError("the seeds name only one class: give at least two classes")
    return seeds


def scan_images(images_dir: Path) -> pd.DataFrame:
    """Every image below ``images_dir`` (ids unique, sizes read), or a clear error."""
    if not images_dir.is_dir():
        raise InputError(f"image folder not found: {images_dir}")
    files = sorted(
        p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {images_dir}")
    rows = []
    seen: dict[str, int] = {}
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise InputError(f"unreadable image {path}: {error}") from error
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        image_id = stem if seen[stem] == 1 else f"{stem}__{seen[stem]}"
        rows.append(
            {
                "image_id": image_id,
                "path": str(path),
                "file_name": path.relative_to(images_dir).as_posix(),
                "sha256": sha256_file(path),
                "width": width,
                "height": height,
            }
        )
    return pd.DataFrame(rows)


def seed_frames(seeds: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeds as the annotators' frames: images (with class and, where the seeds have masks, the
    mask that synthetic tiles cut their defects out by) and pixel boxes."""
    images = pd.DataFrame(
        [
            {
                "image_id": r.image_id,
                "path": str(r.image_path),
                "sha256": r.sha256,
                "class_name": r.class_name,
                "width": r.width,
                "height": r.height,
            }
            for r in seeds.images
        ]
    )
    if any(r.mask_path is not None for r in seeds.images):
        images["mask_path"] = [str(r.mask_path) if r.mask_path else None for r in seeds.images]
    boxes = seeds.boxes_frame().drop(columns=["image_class"])
    return images, boxes


FOLDER_DEFAULTS = AnnotatorOptions(box_strategies=("whole_image",))
"""A folder gets whole-image boxes unless asked otherwise: they need no training."""


def annotate_folder(
    images_dir: Path,
    seeds_dir: Path,
    out_dir: Path,
    options: AnnotatorOptions = FOLDER_DEFAULTS,
    *,
    weights: str = "yolov8n.pt",
    synthetic_defects: SyntheticDefectSettings | None = None,
    defect_gate: DefectGateSettings | None = None,
) -> FolderAnnotation:
    """Label every image in ``images_dir`` from the seeds; resumable through ``out_dir``.

    ``options.box_strategies`` must name one strategy: the folder gets one set of labels.
    ``weights`` is the YOLOv8n checkpoint of the offline annotator and the seed detector;
    ``synthetic_defects`` its synthetic tiles and ``defect_gate`` whether its crops join the
    offline annotator's answers (defaults: the profiles' ``auto``).
    """
    if len(options.box_strategies) != 1:
        raise InputError(f"give one box strategy for a folder, not {list(options.box_strategies)}")
    (box_strategy,) = options.box_strategies
    start = time.perf_counter()
    seeds = load_seeds(seeds_dir)
    pool = scan_images(images_dir)
    class_names = list(seeds.class_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = AnnotationStore(out_dir / "predictions.jsonl")
    resolved = options.resolved()
    chosen = resolved.annotator
    seed_images, seed_boxes = seed_frames(seeds)
    examples: list[SeedExample] = []
    gated: GatedOffline | None = None
    if box_strategy in ("annotator", "mllm_verified") and chosen == "offline":
        raise InputError(
            f"the offline annotator cannot serve --box-strategy {box_strategy} (no boxes of its own, "
            "no model to check boxes): use whole_image, seed_detector or self_training"
        )
    if chosen == "offline":
        from cascade_defect.annotate.offline import OfflineAnnotator

        offline = OfflineAnnotator(
            weights,
            cache_dir=out_dir / ".cache",
            config_dir=out_dir / ".ultralytics",
            progress=options.progress,
            **options.offline_options,
        )
        offline.fit(seed_images, seed_boxes, class_names)
        gate_settings = defect_gate or DefectGateSettings()
        if gate_applies(gate_settings, "offline", seed_images["class_name"]):
            gated = gate_offline_answers(
                offline,
                pool,
                recipe=folder_recipe(out_dir, weights, seed_images, synthetic_defects),
                seeds=seed_images,
                seed_boxes=seed_boxes,
                class_names=class_names,
                settings=gate_settings,
                progress=options.progress,
            )
        offline.annotate(
            pool, store, box_strategy="whole_image", gate=gated.gate if gated else None
        )
        model_name = offline.model_name
    else:
        from cascade_defect.annotate.mllm.annotator import PoolImage, annotate_pool

        examples = [
            SeedExample(
                image_id=r.image_id,
                image=r.image_path,
                class_name=r.class_name,
                boxes=tuple(
                    normalise_box(b.class_name, b.xmin, b.ymin, b.xmax, b.ymax, r.width, r.height)
                    for b in r.boxes
                    if b.class_name in class_names
                ),
            )
            for r in seeds.images
        ]
        annotate_pool(
            [PoolImage(str(r.image_id), Path(r.path)) for r in pool.itertuples(index=False)],
            examples,
            class_names,
            store.path,
            resolved,
        )
        model_name = options.model
    store = AnnotationStore(out_dir / "predictions.jsonl")
    files = write_folder_outputs(
        out_dir,
        pool,
        store,
        class_names,
        box_strategy,
        weights,
        seed_images,
        seed_boxes,
        options=resolved,
        seed_examples=examples,
        synthetic_defects=synthetic_defects,
        gated=gated,
    )
    labels = image_labels_from_store(store, pool)
    n_ok = int((labels["status"] == "ok").sum())
    return FolderAnnotation(
        annotator=chosen,
        model=model_name,
        n_images=len(pool),
        n_labelled=n_ok,
        n_failed=len(pool) - n_ok,
        cost_usd=round(store.total_cost_usd(), 4),
        seconds=round(time.perf_counter() - start, 1),
        out_dir=out_dir,
        files=files,
    )


def folder_recipe(
    out_dir: Path,
    weights: str,
    seed_images: pd.DataFrame,
    synthetic_defects: SyntheticDefectSettings | None,
) -> DetectorRecipe:
    """How a folder's seed detector trains: the package defaults and, as in chapter 03,
    synthetic tiles on the synthetic schedule where the seeds include defect-free images."""
    from cascade_defect.annotate.boxes import SeedDetectorSettings
    from cascade_defect.annotate.strategies import DetectorRecipe, synthetic_plan
    from cascade_defect.box_settings import FragmentMergeSettings, SelfTrainingSettings

    synthetic, schedule = synthetic_plan(
        synthetic_defects or SyntheticDefectSettings(), seed_images
    )
    return DetectorRecipe(
        weights=weights,
        work_dir=out_dir,
        seed_detector=SeedDetectorSettings(**schedule, fragment_merge=FragmentMergeSettings()),
        self_training=SelfTrainingSettings(),
        config_dir=out_dir / ".ultralytics",
        synthetic_defects=synthetic,
    )


def write_folder_outputs(
    out_dir: Path,
    pool: pd.DataFrame,
    store: AnnotationStore,
    class_names: list[str],
    box_strategy: BoxStrategy,
    weights: str,
    seed_images: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    *,
    options: AnnotatorOptions,
    seed_examples: Sequence[SeedExample] = (),
    synthetic_defects: SyntheticDefectSettings | None = None,
    gated: GatedOffline | None = None,
) -> dict[str, str]:
    """YOLO labels + names, a COCO JSON and the review CSV (least confident first); ``gated``:
    the defect gate's seed detector, reused by the box strategy instead of trained again."""
    from cascade_defect.annotate.boxes import predictions_from_store, pseudo_boxes
    from cascade_defect.annotate.strategies import strategy_proposals

    predictions = predictions_from_store(store, pool)
    recipe = folder_recipe(out_dir, weights, seed_images, synthetic_defects)
    found, _ = strategy_proposals(
        [box_strategy],
        seeds=seed_images,
        seed_boxes=seed_boxes,
        pool=pool,
        predictions=predictions,
        class_names=class_names,
        recipe=recipe,
        options=options,
        seed_examples=seed_examples,
        detector=gated.detector if gated else None,
        trained_details=gated.detector_details if gated else None,
    )
    proposals = found.get(box_strategy)
    boxes = pseudo_boxes(predictions, box_strategy, proposals=proposals)

    labels_dir = out_dir / "labels"
    labels_dir.mkdir(exist_ok=True)
    index = {name: i for i, name in enumerate(class_names)}
    by_image = {image_id: rows for image_id, rows in boxes.groupby("image_id")}
    for image_id in predictions["image_id"]:
        rows = by_image.get(image_id)
        lines = [] if rows is None else yolo_lines(rows, index)
        write_label_file(labels_dir / f"{image_id}.txt", lines)
    (out_dir / "classes.txt").write_text("\n".join(class_names) + "\n")

    coco = coco_dataset(
        pool, boxes, class_names, source="pseudo", description="cascade-defect annotate"
    )
    (out_dir / "annotations.coco.json").write_text(json.dumps(coco, indent=1))

    labels = image_labels_from_store(store, pool).merge(
        pool[["image_id", "file_name"]], on="image_id"
    )
    review = labels[
        [
            "file_name",
            "image_id",
            "status",
            "defect_class",
            "confidence",
            "reasoning",
            "failure_kind",
        ]
    ]
    review = review.sort_values("confidence", na_position="first", kind="stable")
    review.to_csv(out_dir / "review.csv", index=False)
    return {
        "labels": str(labels_dir),
        "classes": str(out_dir / "classes.txt"),
        "coco": str(out_dir / "annotations.coco.json"),
        "review": str(out_dir / "review.csv"),
        "predictions": str(store.path),
    }

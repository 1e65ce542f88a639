"""Accuracy and calibration of the offline few-shot annotator over seed draws, on three datasets.

``--dataset neu`` builds the profile's NEU-DET split (``CASCADE_DATA_DIR``) in a scratch folder
and uses its non-test images. ``neu-imbalanced`` is NEU-DET made imbalanced by a fixed rule
(the first 300/150/75/40/300/20 images of crazing/inclusion/patches/pitted_surface/
rolled-in_scale/scratches by natural image-id order). ``magnetic-tile`` reads Magnetic-tile
(``--mt-data-dir`` or ``CASCADE_MT_DATA_DIR``); the book's loader reads every dataset, so its
defect-free class ``MT_Free`` is detected and becomes ``no_defect``. For each draw, ``--per-class`` seeds of
every defect class (and 1% of the defect-free images, at least ``--per-class``) are labelled;
every other image is the unlabelled pool, annotated into a fresh store and scored against the
ground truth (used for scoring only).

Modes: ``default`` (the annotator as shipped), ``patch-gate`` (patch anomaly gate for defect vs
no_defect, then the defect type; only where there is a no_defect class), ``inductive`` (seeds-only logistic regression, the baseline)
and ``transductive-old`` (label propagation + mixture without the seed check or softening).
Writes one row per dataset x mode x draw to ``--csv`` and a manifest beside it:

    CASCADE_DATA_DIR=/path/to/NEU-DET CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt \\
        .venv/bin/python scripts/bench_offline_annotator.py --mt-data-dir /path/to/Magnetic-tile
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from _bench_cli import benchmark_header
from sklearn.metrics import balanced_accuracy_score, f1_score

from cascade_defect.annotate.offline import ClassifierSettings, OfflineAnnotator
from cascade_defect.annotate.offline.gate import GateSettings
from cascade_defect.annotate.schema import NO_DEFECT, AnnotationRecord
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.metrics.calibration import expected_calibration_error
from cascade_defect.plots.book import manifest_path
from cascade_defect.settings import load_config

DATASETS = ("neu", "neu-imbalanced", "magnetic-tile")
IMBALANCED_SIZES = {
    "crazing": 300,
    "inclusion": 150,
    "patches": 75,
    "pitted_surface": 40,
    "rolled-in_scale": 300,
    "scratches": 20,
}
MT_FREE = "Free"
MODES = {
    "default": (ClassifierSettings(), GateSettings()),
    "patch-gate": (ClassifierSettings(), GateSettings(enabled=True)),
    "inductive": (ClassifierSettings(transductive=False), GateSettings(enabled=False)),
    "transductive-old": (
        ClassifierSettings(seed_check=False, soften=False),
        GateSettings(enabled=False),
    ),
}
ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--profile", default="quick", help="settings profile (default: quick)")
    parser.add_argument("--draws", type=int, default=5, help="seed draws (default: 5)")
    parser.add_argument("--per-class", type=int, default=3, help="seeds per class (default: 3)")
    parser.add_argument("--draw-seed", type=int, default=20240, help="first draw's random seed")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--mt-data-dir",
        type=Path,
        default=os.environ.get("CASCADE_MT_DATA_DIR"),
        help="Magnetic-tile folder (default: CASCADE_MT_DATA_DIR)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch folder, feature caches included (default: a temporary folder)",
    )
    parser.add_argument(
        "--csv", type=Path, default=ROOT / "data" / "benchmarks" / "offline_annotator.csv"
    )
    return parser.parse_args()


def non_test_images(layout: SplitLayout) -> pd.DataFrame:
    """Seed + pool images of the split with their true class (to draw seeds and to score)."""
    seeds, _ = read_labelled_listing(layout, "seed")
    pool = read_pool_listing(layout)
    truth, _ = read_pool_ground_truth(layout)
    pool = pool.merge(truth, on="image_id", how="left", validate="one_to_one")
    frame = pd.concat([seeds, pool], ignore_index=True)
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)


def all_boxes(layout: SplitLayout) -> pd.DataFrame:
    _, seed_boxes = read_labelled_listing(layout, "seed")
    _, pool_boxes = read_pool_ground_truth(layout)
    return pd.concat([seed_boxes, pool_boxes], ignore_index=True)


def natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def neu_split_images(profile: str, scratch: Path) -> tuple[pd.DataFrame, list[str]]:
    """NEU-DET's non-test images in the profile's split (the book's own pipeline)."""
    config = load_config(profile, work_dir=scratch)
    config.require_data_dir()
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    return non_test_images(layout), list(layout.class_names())


def loaded_images(data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every image of a dataset as the book's loader reads it (its defect-free class, if any,
    labelled ``no_defect``), with ``path`` for the annotator."""
    dataset = load_dataset(data_dir, class_names=None, progress=False)
    images = dataset.images_frame().rename(columns={"image_path": "path"})
    return images[["image_id", "class_name", "path", "sha256"]], list(dataset.class_names)


def neu_imbalanced_images(data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The first N images of each NEU-DET class by natural image-id order (``IMBALANCED_SIZES``)."""
    images, _ = loaded_images(data_dir)
    parts = []
    for name, size in IMBALANCED_SIZES.items():
        members = images[images["class_name"] == name]
        members = members.sort_values("image_id", key=lambda c: c.map(natural_key))
        if len(members) < size:
            raise SystemExit(f"{data_dir} has {len(members)} {name} images, {size} needed")
        parts.append(members.head(size))
    return pd.concat(parts, ignore_index=True), list(IMBALANCED_SIZES)


def magnetic_tile_images(data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Magnetic-tile as the book reads it: ``MT_Free`` detected as the defect-free class."""
    images, class_names = loaded_images(data_dir)
    if NO_DEFECT not in set(images["class_name"]):
        raise SystemExit(f"{data_dir}: no defect-free class found; is it Magnetic-tile?")
    return images, class_names


def draw_seeds(images: pd.DataFrame, per_class: int, seed: int) -> np.ndarray:
    """Row positions of ``per_class`` random images of every defect class, and of 1% of the
    defect-free images (at least ``per_class``), as a person labelling a few images would."""
    rng = np.random.default_rng(seed)
    labels = images["class_name"].to_numpy()
    picks = []
    for name in sorted(set(labels)):
        rows = np.flatnonzero(labels == name)
        count = per_class if name != NO_DEFECT else max(per_class, math.ceil(0.01 * len(rows)))
        picks.append(rng.choice(rows, count, replace=False))
    return np.sort(np.concatenate(picks))


def score_answers(pool_truth: pd.DataFrame, records: Iterable[AnnotationRecord]) -> pd.DataFrame:
    """``predicted, confidence, correct`` for each row of ``pool_truth``, from stored records.

    Records and listings both hold image ids as text (``1001`` is ``"1001"``, ``007`` stays
    ``"007"``); an image without a stored answer is an error that names it.
    """
    answers = {str(r.image_id): r.prediction for r in records if r.prediction is not None}
    ids = pool_truth["image_id"]
    missing = sorted(set(ids) - set(answers))
    if missing:
        raise KeyError(f"{len(missing)} pool images have no stored answer, e.g. {missing[:3]}")
    predicted = ids.map(lambda i: answers[i].defect_class)
    return pd.DataFrame(
        {
            "predicted": predicted,
            "confidence": ids.map(lambda i: answers[i].confidence).astype(float),
            "correct": predicted == pool_truth["class_name"],
        },
        index=pool_truth.index,
    )


def run_draw(
    weights: str,
    images: pd.DataFrame,
    class_names: list[str],
    seed_rows: np.ndarray,
    scratch: Path,
    tag: str,
    mode: str,
) -> dict[str, object]:
    seeds = images.iloc[seed_rows]
    pool_truth = images.drop(index=images.index[seed_rows])
    pool = pool_truth.drop(columns=["class_name"])  # the annotator never sees the pool's labels
    classifier, gate = MODES[mode]
    start = time.perf_counter()
    annotator = OfflineAnnotator(
        weights,
        classifier=replace(classifier),
        gate=gate,
        cache_dir=scratch / "feature_cache",
        config_dir=scratch / "ultralytics",
        progress=False,
    ).fit(seeds, None, class_names)
    # A fresh store per row: answers cached from an earlier run in the same --work-dir would
    # come back without their diagnostics or wall time (the feature caches are what is reused).
    store_path = scratch / f"{tag}-{mode}.jsonl"
    store_path.unlink(missing_ok=True)
    store = AnnotationStore(store_path)
    summary = annotator.annotate(pool, store)
    wall = time.perf_counter() - start
    scored = score_answers(pool_truth, store.records())
    truth, predicted = pool_truth["class_name"].to_numpy(), scored["predicted"].to_numpy()
    confidence, correct = scored["confidence"].to_numpy(), scored["correct"].to_numpy()
    labels = sorted(set(truth))
    row: dict[str, object] = {
        "mode": mode,
        "n_seed": len(seeds),
        "n_pool": len(pool),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro")),
        "defect_recall": float("nan"),
        "false_alarm_rate": float("nan"),
        "ece": expected_calibration_error(confidence, correct),
        "mean_confidence": float(confidence.mean()),
        "answer_mode": str(summary.diagnostics.get("mode", "")),
        "wall_s": round(wall, 2),
    }
    if NO_DEFECT in labels:
        clean = truth == NO_DEFECT
        row["defect_recall"] = float((predicted[~clean] != NO_DEFECT).mean())
        row["false_alarm_rate"] = float((predicted[clean] != NO_DEFECT).mean())
    return row


def load(dataset: str, args: argparse.Namespace, scratch: Path) -> tuple[pd.DataFrame, list[str]]:
    if dataset == "neu":
        return neu_split_images(args.profile, scratch / "neu")
    if dataset == "neu-imbalanced":
        data_dir = load_config(args.profile, work_dir=scratch / "neu").data_dir
        if data_dir is None:
            raise SystemExit("set CASCADE_DATA_DIR to the NEU-DET folder")
        return neu_imbalanced_images(Path(data_dir))
    if args.mt_data_dir is None:
        raise SystemExit("--mt-data-dir or CASCADE_MT_DATA_DIR must name the Magnetic-tile folder")
    return magnetic_tile_images(Path(args.mt_data_dir))


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        scratch = args.work_dir or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(scratch / "ultralytics"))
        weights = load_config(args.profile, work_dir=scratch / "neu").yolo_weights
        rows, sizes = [], {}
        for dataset in args.dataset:
            images, class_names = load(dataset, args, scratch)
            sizes[dataset] = images["class_name"].value_counts().sort_index().to_dict()
            modes = [
                m for m in args.modes if m != "patch-gate" or NO_DEFECT in set(images["class_name"])
            ]
            for draw in range(args.draws):
                seed_rows = draw_seeds(images, args.per_class, args.draw_seed + draw)
                for mode in modes:
                    row = run_draw(
                        weights, images, class_names, seed_rows, scratch, f"{dataset}-{draw}", mode
                    )
                    rows.append({"dataset": dataset, "draw": draw, **row})
                    print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    report(table)
    write(table, args, sizes, time.perf_counter() - started)


def report(table: pd.DataFrame) -> None:
    metrics = [
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "defect_recall",
        "false_alarm_rate",
        "ece",
        "mean_confidence",
    ]
    summary = table.groupby(["dataset", "mode"], sort=False)[metrics].mean()
    print("\nMean over draws:")
    print(summary.round(4).to_string())


def write(table: pd.DataFrame, args: argparse.Namespace, sizes: dict, seconds: float) -> None:
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    manifest = {
        **benchmark_header("offline_annotator", args.profile, args.csv),
        "parameters": {
            "datasets": args.dataset,
            "modes": args.modes,
            "draws": args.draws,
            "per_class": args.per_class,
            "draw_seeds": [args.draw_seed, args.draw_seed + args.draws - 1],
            "imbalanced_sizes": IMBALANCED_SIZES,
        },
        "class_sizes": sizes,
        "table": args.csv.name,
        "wall_seconds": round(seconds, 1),
    }
    manifest_path(args.csv).write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()

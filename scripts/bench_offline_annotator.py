"""Accuracy and speed of the offline few-shot annotator over several seed draws, on real NEU-DET.

Builds the profile's split in a scratch folder, then, for each draw, picks ``--per-class``
labelled seeds per class at random from the non-test images (as a person labelling a few
images would), treats every other non-test image as the unlabelled pool, annotates that pool
with :class:`OfflineAnnotator` into a fresh store, and scores the stored labels against the
ground truth (used for scoring only). The test split is never touched.

The first draw runs on an empty feature cache, so its timing is the honest cold cost of
annotating a pool (features + fit + predict + records); later draws reuse the cached features,
as a re-run with new seeds would. The seeds-only (inductive) classifier is scored on the same
draws as the baseline the transductive one is meant to beat.

Data and weights come from the settings (``CASCADE_DATA_DIR``, ``CASCADE_YOLO_WEIGHTS``):

    CASCADE_DATA_DIR=/path/to/NEU-DET CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt \\
        .venv/bin/python scripts/bench_offline_annotator.py [--draws 5] [--per-class 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cascade_defect.annotate.offline import OfflineAnnotator
from cascade_defect.annotate.schema import AnnotationRecord
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.metrics.calibration import expected_calibration_error
from cascade_defect.settings import load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="settings profile (default: quick)")
    parser.add_argument("--draws", type=int, default=5, help="seed draws (default: 5)")
    parser.add_argument("--per-class", type=int, default=3, help="seeds per class (default: 3)")
    parser.add_argument(
        "--draw-seed",
        type=int,
        default=20240,
        help="random seed of the first draw (default: 20240)",
    )
    parser.add_argument("--imgsz", type=int, default=224, help="feature image size (default: 224)")
    parser.add_argument(
        "--hflip", action="store_true", help="average features with the mirror image"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the inductive baseline")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch folder (default: a temporary folder, removed afterwards)",
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


def draw_seeds(images: pd.DataFrame, per_class: int, seed: int) -> np.ndarray:
    """Row positions of ``per_class`` random images of every class."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(
            np.flatnonzero(images["class_name"].to_numpy() == name), per_class, replace=False
        )
        for name in sorted(images["class_name"].unique())
    ]
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
    args: argparse.Namespace,
    weights: str,
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    class_names: list[str],
    seed_rows: np.ndarray,
    scratch: Path,
    draw: int,
    transductive: bool,
) -> dict[str, object]:
    seeds = images.iloc[seed_rows]
    pool_truth = images.drop(index=images.index[seed_rows])
    pool = pool_truth.drop(columns=["class_name"])  # the annotator never sees the pool's labels
    seed_boxes = boxes[boxes["image_id"].isin(seeds["image_id"])]
    start = time.perf_counter()
    annotator = OfflineAnnotator(
        weights,
        imgsz=args.imgsz,
        hflip=args.hflip,
        transductive=transductive,
        cache_dir=scratch / "feature_cache",
        config_dir=scratch / "ultralytics",
        progress=False,
    ).fit(seeds, seed_boxes, class_names)
    mode = "transductive" if transductive else "inductive"
    store = AnnotationStore(scratch / f"draw{draw}-{mode}.jsonl")
    summary = annotator.annotate(pool, store)
    wall = time.perf_counter() - start
    scored = score_answers(pool_truth, store.records())
    confidence, correct = scored["confidence"].to_numpy(), scored["correct"].to_numpy()
    per_class = (
        pd.Series(correct, index=pool_truth.index)
        .groupby(pool_truth["class_name"])
        .mean()
        .to_dict()
    )
    seconds = summary.seconds
    return {
        "draw": draw,
        "mode": mode,
        "n_pool": len(pool),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "ece": expected_calibration_error(confidence, correct),
        **{f"acc.{name}": value for name, value in per_class.items()},
        "features_s": seconds.get("seed_features", 0.0) + seconds.get("pool_features", 0.0),
        "fit_s": seconds.get("fit", 0.0),
        "predict_s": seconds.get("predict", 0.0),
        "wall_s": wall,
        "features_computed": annotator.extractor.n_computed,
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        scratch = args.work_dir or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(scratch / "ultralytics"))
        config = load_config(args.profile, work_dir=scratch)
        config.require_data_dir()
        run_data_strategy(config)
        run_split(config)
        layout = SplitLayout(config.paths.split_dir)
        class_names = layout.class_names()
        images, boxes = non_test_images(layout), all_boxes(layout)
        draws = [
            draw_seeds(images, args.per_class, args.draw_seed + draw) for draw in range(args.draws)
        ]
        modes = [True] if args.no_baseline else [True, False]
        rows = []
        for transductive in modes:
            for draw, seed_rows in enumerate(draws):
                rows.append(
                    run_draw(
                        args,
                        config.yolo_weights,
                        images,
                        boxes,
                        class_names,
                        seed_rows,
                        scratch,
                        draw,
                        transductive,
                    )
                )
        report(pd.DataFrame(rows), args, config.yolo_weights, class_names)


def report(
    results: pd.DataFrame, args: argparse.Namespace, weights: str, class_names: list[str]
) -> None:
    print(f"\nOffline annotator benchmark: NEU-DET {args.profile} split, {args.draws} seed draws")
    print(
        f"{args.per_class} seeds per class drawn from the non-test images (draw seeds "
        f"{args.draw_seed}..{args.draw_seed + args.draws - 1}); the rest of the non-test images "
        f"are the pool ({int(results['n_pool'].iloc[0])} images). imgsz={args.imgsz}, "
        f"hflip={args.hflip}, weights={weights}"
    )
    for mode, group in results.groupby("mode", sort=False):
        accuracy = group["accuracy"]
        print(f"\n== {mode} ==")
        print("per draw: " + ", ".join(f"{v:.4f}" for v in accuracy))
        print(
            f"pool accuracy: {accuracy.mean():.4f} +/- {accuracy.std(ddof=1):.4f} (mean +/- sd), "
            f"min {accuracy.min():.4f}"
        )
        print(
            f"mean confidence {group['mean_confidence'].mean():.4f}, "
            f"expected calibration error {group['ece'].mean():.4f}"
        )
        print("per-class accuracy (mean over draws):")
        for name in class_names:
            print(f"  {name:<16} {group[f'acc.{name}'].mean():.4f}")
        cold = group[group["features_computed"] > 0]
        warm = group[group["features_computed"] == 0]
        if len(cold):
            row = cold.iloc[0]
            print(
                f"cold cache (draw {int(row['draw'])}): features {row['features_s']:.1f} s "
                f"({int(row['features_computed'])} images), fit {row['fit_s']:.2f} s, "
                f"predict {row['predict_s']:.2f} s, whole annotate call {row['wall_s']:.1f} s"
            )
        if len(warm):
            print(
                f"warm cache ({len(warm)} draws, mean): features {warm['features_s'].mean():.2f} s, "
                f"fit {warm['fit_s'].mean():.2f} s, predict {warm['predict_s'].mean():.2f} s, "
                f"whole annotate call {warm['wall_s'].mean():.1f} s"
            )


if __name__ == "__main__":
    main()

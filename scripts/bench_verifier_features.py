"""What a box verifier could learn from each pool box's score and shape, before one is built.

For a run folder where chapters 01-03 ran, the boxes the pseudo detector trains on
(``training.box_strategy``) are judged hit or not against the pool's hidden truth as chapter 04
judges them (class-aware, IoU 0.5, one-to-one), and each row ranks them one way, scored by ROC AUC
(``metrics.box_ranking``):

- ``score``: chapter 03's confidence alone;
- ``seed_shape_prior``: the log score plus half the log likelihood ratio of the box's shape (log
  area, log aspect) under its class's seed boxes against under all the pool's boxes of its class;
  it needs nothing beyond the seeds;
- ``reviewed_N``: a small gradient-boosted classifier on score, shape and class, fitted on the boxes
  of N pool images drawn at random whose boxes a person accepted or rejected (``--draws`` draws),
  scored on the other images, beside the score's AUC on those same boxes; with the boxes it keeps at
  ``--threshold``: how many, the share of the hits among them (precision) and of all hits kept;
- ``all_pool_truth``: the same classifier taught, five folds by image, on the whole pool's truth:
  the most score and shape can tell.

``--kept-csv FILE --keep-reviewed N`` also writes chapter 03's box table with the training
strategy's boxes as ``reviewed_N``'s first draw keeps them (a reviewed image keeps its accepted
boxes, any other the boxes from ``--threshold`` and at least its most likely one), for training on a
copy of the run with ``bench_box_noise.py --pseudo``. Nothing of the run is written.

    CASCADE_DATA_DIR=<NEU-DET> .venv/bin/python scripts/bench_verifier_features.py \\
        --run-dir data/runs/quick --csv verifier_features.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _bench_cli import benchmark_header, chapter_made_by, config_for_run

from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c04_audit import image_table
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.hashing import tree_sha256
from cascade_defect.locations import portable_path, portable_values
from cascade_defect.metrics.box_quality import match_strategy, normalise_gt_boxes
from cascade_defect.metrics.box_ranking import (
    box_features,
    held_out_verifier,
    ranking_auc,
    reviewed_verifier,
    seed_shape_ratio,
)
from cascade_defect.plots.book import manifest_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="<work>/runs/<profile>")
    parser.add_argument(
        "--reviewed", type=int, nargs="*", default=[30, 60, 120, 240, 480],
        help="numbers of reviewed pool images (default: 30 60 120 240 480)",
    )  # fmt: skip
    parser.add_argument("--draws", type=int, default=5, help="random draws of each number")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="probability a box is kept from"
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    parser.add_argument("--kept-csv", type=Path, default=None, help="chapter 03's box table, kept")
    parser.add_argument("--keep-reviewed", type=int, default=None, help="N for --kept-csv")
    args = parser.parse_args()
    if (args.kept_csv is None) != (args.keep_reviewed is None):
        parser.error("--kept-csv and --keep-reviewed go together")
    started = time.perf_counter()
    config = config_for_run(args.run_dir, "quick")
    layout = SplitLayout(config.paths.split_dir)
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    labels, all_boxes = read_pseudo_labels(annotation)
    pool = read_pool_listing(layout)
    truth, gt_pixel = read_pool_ground_truth(layout)
    seeds, seed_pixel = read_labelled_listing(layout, "seed")
    class_names = layout.class_names()
    answered = image_table(truth, gt_pixel, labels).query("answered")["image_id"]
    strategy = config.profile.training.box_strategy
    boxes = all_boxes[all_boxes["strategy"] == strategy]
    matched = match_strategy(normalise_gt_boxes(gt_pixel, pool), boxes, answered).predictions
    boxes = boxes.loc[matched["box_index"]]
    is_hit = matched["matched_aware"].to_numpy(bool)
    image_ids = boxes["image_id"].reset_index(drop=True)
    features = box_features(boxes, class_names).reset_index(drop=True)
    prior = seed_shape_ratio(boxes, normalise_gt_boxes(seed_pixel, seeds))
    rows = [
        _row("score", len(answered), is_hit, features["log_score"].to_numpy()),
        _row("seed_shape_prior", len(answered), is_hit, features["log_score"] + 0.5 * prior),
    ]
    images = np.array(sorted(set(image_ids)))
    for n in args.reviewed:
        if not 0 < n < len(images):
            raise SystemExit(f"--reviewed {n}: the run has {len(images)} pool images with boxes")
        draws = [_reviewed_draw(features, is_hit, image_ids, images, n, d, args.threshold)
                 for d in range(args.draws)]  # fmt: skip
        rows.append({"ranking": f"reviewed_{n}", **pd.DataFrame(draws).mean().to_dict()})
    oracle = held_out_verifier(features, is_hit, image_ids)
    rows.append(_row("all_pool_truth", len(answered), is_hit, oracle, args.threshold))
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200):
        print(f"run {args.run_dir}: {len(boxes)} {strategy} boxes, {int(is_hit.sum())} hits")
        print(table.round(3).to_string(index=False))
    if args.kept_csv:
        kept = _kept(features, is_hit, image_ids, images, args.keep_reviewed, args.threshold)
        others = all_boxes[all_boxes["strategy"] != strategy]
        pd.concat([others, boxes[kept]]).to_csv(args.kept_csv, index=False)
        reviewed = image_ids.isin(_reviewed_images(images, args.keep_reviewed, 0)).to_numpy()
        print(f"{args.kept_csv}: {int(kept.sum())} of {len(boxes)} {strategy} boxes kept, "
              f"{int(is_hit[kept].sum())} hits; the {args.keep_reviewed} reviewed images hold "
              f"{int(reviewed.sum())} boxes, {int(is_hit[reviewed].sum())} accepted")  # fmt: skip
    if args.csv:
        table.to_csv(args.csv, index=False)
        inputs = {
            "pool_listing": layout.pool_listing,
            "pool_boxes": layout.pool_boxes,
            "seed_boxes": layout.seed_boxes,
            "pseudo_labels": annotation.labels,
            "pseudo_boxes": annotation.boxes,
        }
        manifest = {
            **benchmark_header("verifier_features", config.profile.name, args.csv),
            "parameters": {
                **portable_values({"run_dir": config.paths.run_dir}, config),
                "box_strategy": strategy,
                "reviewed": args.reviewed,
                "draws": args.draws,
                "threshold": args.threshold,
            },
            "chapter_03": chapter_made_by(annotation.root / "manifest.json"),
            "inputs": {
                name: {"path": portable_path(path, config), "sha256": tree_sha256(path)}
                for name, path in inputs.items()
            },
            "outputs": {"relative_to": "this manifest's folder", "table": args.csv.name},
            "counts": {"n_boxes": len(boxes), "n_hits": int(is_hit.sum())},
            "timings_s": {"this_invocation": round(time.perf_counter() - started, 1)},
        }
        manifest_path(args.csv).write_text(json.dumps(manifest, indent=1) + "\n")


def _row(
    name: str,
    n_images: int,
    is_hit: np.ndarray,
    ranking: np.ndarray,
    threshold: float | None = None,
) -> dict:
    row = {"ranking": name, "images_scored": n_images, "boxes_scored": len(is_hit),
           "auc": ranking_auc(is_hit, ranking)}  # fmt: skip
    if threshold is not None:
        row.update(_kept_figures(is_hit, np.asarray(ranking) >= threshold))
    return row


def _kept_figures(is_hit: np.ndarray, kept: np.ndarray) -> dict:
    return {
        "boxes_kept": int(kept.sum()),
        "precision_kept": float(is_hit[kept].mean()) if kept.any() else float("nan"),
        "hits_kept": float(is_hit[kept].sum() / max(is_hit.sum(), 1)),
    }


def _reviewed_images(images: np.ndarray, n: int, draw: int) -> set[str]:
    return set(np.random.default_rng(draw).choice(images, n, replace=False))


def _reviewed_draw(
    features: pd.DataFrame,
    is_hit: np.ndarray,
    image_ids: pd.Series,
    images: np.ndarray,
    n: int,
    draw: int,
    threshold: float,
) -> dict:
    """One draw of ``n`` reviewed images: the verifier's figures on the boxes of the others."""
    reviewed = _reviewed_images(images, n, draw)
    held = ~image_ids.isin(reviewed).to_numpy()
    prob = reviewed_verifier(features, is_hit, image_ids, reviewed, seed=draw)
    return {
        "images_scored": len(images) - n,
        "boxes_scored": int(held.sum()),
        "auc": ranking_auc(is_hit[held], prob[held]),
        "score_auc_same_boxes": ranking_auc(is_hit[held], features["log_score"][held]),
        **_kept_figures(is_hit[held], prob[held] >= threshold),
    }


def _kept(
    features: pd.DataFrame,
    is_hit: np.ndarray,
    image_ids: pd.Series,
    images: np.ndarray,
    n: int,
    threshold: float,
) -> np.ndarray:
    """Which boxes the first draw's verifier keeps: a reviewed image its accepted boxes, any other
    those from ``threshold`` and at least its most likely one (so no image loses all its boxes)."""
    reviewed = image_ids.isin(_reviewed_images(images, n, 0)).to_numpy()
    prob = reviewed_verifier(features, is_hit, image_ids, set(image_ids[reviewed]), seed=0)
    likeliest = pd.Series(prob).groupby(image_ids).transform("max").to_numpy() == prob
    return np.where(reviewed, is_hit, (prob >= threshold) | likeliest)


if __name__ == "__main__":
    main()

"""How good are the seed detector's boxes: one training, scored on the pool at several thresholds.

The ``seed_detector`` box strategy is what the pseudo source's boxes come from when the
annotator names only a class, so its recipe decides most of the pseudo detector's quality.
This script trains the seed detector on chapter 02's seeds with the profile's recipe, changed
by the options given, into a scratch folder; proposes boxes for every pool image once at the
lowest threshold asked for; then, for each threshold, builds the pseudo boxes exactly as
chapter 03 does (the annotator's class from chapter 03's store, the profile's whole-image
fallback) and
scores them against the pool's ground truth as chapter 04 does (class-agnostic recall and
precision at IoU 0.5, mean best IoU). The book's outputs are not touched.

Run chapters 01-03 first, then for example:

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_seed_detector.py \\
        --conf 0.05 0.1 0.25 --arg nbs=6

Synthetic tiles (the seeds' defects pasted onto the defect-free seeds) follow the profile's
``annotation.synthetic_defects`` as chapter 03 does (``auto``: 300 tiles at 20 epochs where the
seeds include defect-free images); ``--synthetic-defects N`` asks for N, and 0 for the seeds
alone on the profile's ``seed_detector_epochs``. Test-time flips follow the profile's
``annotation.seed_detector_flips`` (``--set annotation.seed_detector_flips=[horizontal,vertical]``);
with them, a higher threshold filters the boxes fused at the lowest one. An ensemble follows
``annotation.seed_detector_ensemble`` (``--set 'annotation.seed_detector_ensemble={members: 3}'``):
its other members train too, and the lowest threshold keeps the fused boxes as chapter 03 does.
"""

from __future__ import annotations

import pandas as pd
from _bench_cli import (
    add_profile_changes,
    parser_with_common_options,
    profile_changes,
    report,
    scratch_folder,
)

from cascade_defect.annotate.boxes import (
    SeedDetectorSettings,
    predictions_from_store,
    pseudo_boxes,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.annotate.strategies import (
    DetectorRecipe,
    ensemble_proposals,
    quarter_turn_views,
    synthetic_plan,
    train_seed_detector,
)
from cascade_defect.box_settings import whole_image_fallback
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, seeds_with_mask_paths
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.metrics.box_quality import box_quality, normalise_gt_boxes
from cascade_defect.settings import key_value_arguments, load_config


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument(
        "--conf", type=float, nargs="+", default=None, help="thresholds (default: the profile's)"
    )
    parser.add_argument(
        "--synthetic-defects",
        type=int,
        default=None,
        help=(
            "synthetic tiles added to training, 0 for none (default: the profile's "
            "annotation.synthetic_defects, 'auto': 300 where the seeds include defect-free ones)"
        ),
    )
    add_profile_changes(
        parser,
        "profile settings to change, e.g. annotation.seed_detector_flips=[horizontal,vertical]",
    )
    args = parser.parse_args()
    config = load_config(args.profile, overrides=profile_changes(args.set))
    layout = SplitLayout(config.paths.split_dir)
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    if not annotation.predictions.exists():
        raise SystemExit(f"{annotation.predictions} not found: run chapters 01-03 first")
    thresholds = sorted(args.conf or [config.profile.annotation.seed_detector_conf])
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    synthetic_settings = config.profile.annotation.synthetic_defects
    if args.synthetic_defects is not None:
        synthetic_settings = synthetic_settings.model_copy(update={"tiles": args.synthetic_defects})
    # With synthetic tiles the profile's synthetic schedule applies, as in chapter 03.
    synthetic, chosen = synthetic_plan(synthetic_settings, seeds)
    if synthetic:
        seeds = seeds_with_mask_paths(seeds, config)
    chosen.update(
        {n: getattr(args, n) for n in ("epochs", "imgsz", "batch") if getattr(args, n) is not None}
    )
    # Proposing once at the lowest threshold and filtering by score gives, at each higher
    # threshold, exactly the boxes proposing at that threshold would (NMS keeps higher scores).
    settings = SeedDetectorSettings.for_profile(
        config.profile,
        **chosen,
        conf=thresholds[0],
        extra_train_args=key_value_arguments(args.arg),
    )
    recipe = DetectorRecipe(
        weights=config.yolo_weights,
        work_dir=scratch_folder(args, "bench_seed_detector_"),
        seed_detector=settings,
        self_training=config.profile.annotation.self_training,
        seed=config.profile.training.seed,
        config_dir=config.work_dir / ".ultralytics",
        threads=config.profile.training.torch_threads,
        synthetic_defects=synthetic,
        ensemble=config.profile.annotation.seed_detector_ensemble,
    )
    detector, _ = train_seed_detector(recipe, seeds, seed_boxes, layout.class_names())
    trained = detector.trained
    assert trained is not None
    fallback = whole_image_fallback(
        config.profile.annotation.whole_image_fallback, has_no_defect=layout.has_no_defect()
    )
    pool = read_pool_listing(layout)
    if recipe.ensemble is None:
        proposals, _ = quarter_turn_views([detector], pool, recipe)
        members: list = []
    else:
        proposals, ensemble, _ = ensemble_proposals(
            detector, recipe, seeds, seed_boxes, pool, layout.class_names()
        )
        members = ensemble["members"]
    predictions = predictions_from_store(AnnotationStore(annotation.predictions), pool)
    _, gt_pixel = read_pool_ground_truth(layout)
    gt_norm = normalise_gt_boxes(gt_pixel, pool)
    rows = []
    for threshold in thresholds:
        kept = {
            image_id: [p for p in found if p.score >= threshold]
            for image_id, found in proposals.items()
        }
        boxes = pseudo_boxes(predictions, "seed_detector", proposals=kept, fallback=fallback)
        table = box_quality(gt_norm, boxes, predictions["image_id"], layout.class_names())
        overall = table[table["class_name"] == "all"].iloc[0]
        rows.append(
            {
                "conf": threshold,
                "boxes": int(overall["n_pred"]),
                "fallback_images": int(boxes["fallback"].sum()),
                "recall": round(float(overall["recall_agnostic"]), 4),
                "precision": round(float(overall["precision_agnostic"]), 4),
                "mean_best_iou": round(float(overall["mean_best_iou"]), 4),
                "recall_by_class": {
                    str(r.class_name): round(float(r.recall_agnostic), 3)
                    for r in table[table["class_name"] != "all"].itertuples()
                },
            }
        )
    described = {
        **settings.describe(),
        "synthetic_defects": synthetic,
        **({"ensemble": recipe.ensemble.model_dump()} if recipe.ensemble else {}),
    }
    for member in members:
        print(f"ensemble member (seed {member['settings']['seed']}): {member['train_seconds']} s")
    print(
        f"seed detector {described}: trained in {trained.seconds:.1f} s on "
        f"{trained.n_images} images ({trained.n_boxes} boxes)"
    )
    print(pd.DataFrame(rows).drop(columns="recall_by_class").to_string(index=False))
    report(
        {
            "settings": described,
            "train_seconds": trained.seconds,
            "member_train_seconds": [member["train_seconds"] for member in members],
            "rows": rows,
        },
        args,
    )


if __name__ == "__main__":
    main()

"""Box quality of each box strategy on a run's pool, before anything trains on it.

For a run folder where chapters 01-03 ran, this script takes chapter 03's seed detector (its
weights, or a fresh one trained on the seeds when they are gone), proposes boxes on the pool
once, then scores each strategy against the pool's ground truth as chapter 04 does (recall and
precision at IoU 0.5, class-aware and class-agnostic, mean best IoU), overall and per class:

- ``seed_detector`` at the profile's score threshold (what the pseudo source trains on today);
- ``seed_detector+tta``: the same detector with flipped views fused by weighted boxes fusion;
- ``self_training`` with the profile's settings (cross-fitted class-aware teachers), its boxes
  at several score thresholds, and with the count-calibrated selection;
- ``crop_verified`` (``--crop-verified``): the detector's proposals at score 0.01 kept by the crop
  verifier, under both keep rules, at its seed-calibrated threshold and at several fixed ones;
- ``classifier_cam`` (``--classifier-cam``): boxes around the activation maps of a small
  YOLOv8n-cls trained on the seeds and the annotator's confident pool labels, and of chapter 05's
  ``pseudo`` classifier when the run has it.

The annotator's image classes come from chapter 03's store, so the strategies are judged as the
book would use them. Nothing of the book is touched; teachers train under ``--scratch``.

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_box_strategies.py \\
        --run-dir data/runs/quick --scratch /tmp/boxes --json boxes.json \
        --no-self-training --crop-verified --classifier-cam

Seconds are each strategy's own wall time; the proposals at score 0.01 they share (the
``seed_detector`` rows and ``crop_verified``) are timed once, on the ``seed_detector`` rows, and
are read back from ``--scratch`` on a rerun.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from _bench_cli import config_for_run, parser_with_common_options, report, scratch_folder

from cascade_defect.annotate.boxes import (
    Proposal,
    SeedDetector,
    SeedDetectorSettings,
    predictions_from_store,
    proposals_from_json,
    proposals_to_json,
    pseudo_boxes,
)
from cascade_defect.annotate.self_training import (
    boxes_per_image_by_class,
    count_calibrated_thresholds,
    select_boxes,
    self_train,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c03_annotation import AnnotationOutputs
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.metrics.box_quality import box_quality, normalise_gt_boxes

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
VERIFIER_THRESHOLDS = (0.35, 0.5, 0.65, 0.8, 0.9)


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument("--run-dir", type=Path, required=True, help="<work>/runs/<profile>")
    parser.add_argument("--no-self-training", action="store_true", help="skip the teachers")
    parser.add_argument("--crop-verified", action="store_true", help="score crop_verified")
    parser.add_argument("--classifier-cam", action="store_true", help="score classifier_cam")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    config = config_for_run(run_dir, run_dir.name)
    layout = SplitLayout(run_dir / "02_split")
    annotation = AnnotationOutputs(run_dir / "03_annotation")
    if not annotation.predictions.exists():
        raise SystemExit(f"{annotation.predictions} not found: run chapters 01-03 first")
    scratch = scratch_folder(args, "bench_box_strategies_")
    classes = layout.class_names()
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    pool = read_pool_listing(layout)
    predictions = predictions_from_store(AnnotationStore(annotation.predictions), pool)
    image_classes = dict(zip(predictions["image_id"], predictions["defect_class"], strict=True))
    _, gt_pixel = read_pool_ground_truth(layout)
    gt_norm = normalise_gt_boxes(gt_pixel, pool)

    rows: list[dict] = []

    def score(label: str, proposals: dict[str, list[Proposal]], seconds: float) -> None:
        boxes = pseudo_boxes(predictions, "seed_detector", proposals=proposals)
        table = box_quality(gt_norm, boxes, predictions["image_id"], classes)
        for record in table.to_dict("records"):
            rows.append({**record, "strategy": label, "seconds": round(seconds, 1)})

    profile = config.profile
    detector_settings = SeedDetectorSettings.for_profile(profile, conf=0.01, max_det=30)
    weights = run_dir / "03_annotation" / "seed_detector" / "seed_detector" / "train" / "weights"
    start = time.perf_counter()
    if (weights / "last.pt").exists():
        detector = SeedDetector.from_trained(weights / "last.pt", detector_settings)
    else:
        detector = SeedDetector(config.yolo_weights, scratch / "seed_detector", detector_settings)
        detector.train(seeds, seed_boxes, classes)
    seed_seconds = time.perf_counter() - start
    plain = _cached(scratch / "plain.json", lambda: detector.propose(pool))
    propose_seconds = time.perf_counter() - start
    tta_start = time.perf_counter()
    tta = _cached(
        scratch / "tta.json", lambda: detector.propose(pool, flips=("horizontal", "vertical"))
    )
    tta_seconds = seed_seconds + time.perf_counter() - tta_start
    floor = profile.annotation.seed_detector_conf
    score(f"seed_detector conf>={floor}", _above(plain, floor), propose_seconds)
    score("seed_detector conf>=0.01", plain, propose_seconds)
    score(f"seed_detector+tta conf>={floor}", _above(tta, floor), tta_seconds)
    if args.crop_verified:
        seed_proposals = detector.propose(seeds)
        _crop_verified(config, seeds, seed_boxes, seed_proposals, pool, plain, image_classes, score)
    if args.classifier_cam:
        inputs = (seeds, seed_boxes, pool, predictions, image_classes, classes)
        _classifier_cam(config, run_dir, scratch, inputs, score)

    if not args.no_self_training:
        settings = profile.annotation.self_training
        start = time.perf_counter()
        result = self_train(
            seeds=seeds,
            seed_boxes=seed_boxes,
            pool=pool,
            image_classes=image_classes,
            initial=plain,
            class_names=classes,
            weights=config.yolo_weights,
            work_dir=scratch / "self_training",
            settings=settings,
            device=profile.training.device,
            seed=profile.training.seed,
        )
        seconds = time.perf_counter() - start
        for threshold in THRESHOLDS:
            kept = select_boxes(result.proposals, image_classes, dict.fromkeys(classes, threshold))
            score(f"self_training score>={threshold}", kept, seconds)
        targets = boxes_per_image_by_class(seed_boxes, seeds)
        counted = count_calibrated_thresholds(result.proposals, image_classes, targets)
        score(
            "self_training count", select_boxes(result.proposals, image_classes, counted), seconds
        )
        print("teachers:", result.teachers)

    table = pd.DataFrame(rows)
    report({"run_dir": str(args.run_dir), "rows": table.to_dict("records")}, args)
    overall = table[table["class_name"] == "all"]
    columns = [
        "strategy",
        "n_pred",
        "recall_aware",
        "precision_aware",
        "mean_best_iou",
        "matched_iou_aware",
        "seconds",
    ]
    print(f"run {run_dir}: {len(predictions)} annotated pool images, {len(gt_norm)} truth boxes")
    print(overall[columns].round(3).to_string(index=False))
    for value, title in (
        ("recall_aware", "recall (class-aware)"),
        ("precision_aware", "precision (class-aware)"),
        ("mean_best_iou", "mean best IoU"),
    ):
        per_class = table.pivot_table(
            index="strategy", columns="class_name", values=value, sort=False
        )
        print(f"{title} by class:\n" + per_class.round(3).to_string())


def _crop_verified(config, seeds, seed_boxes, seed_proposals, pool, plain, image_classes, score):
    """The verifier fitted once on the seeds; its scores re-thresholded without re-scoring."""
    from cascade_defect.annotate.crop_verifier import CropVerifier, crop_verify, keep_verified
    from cascade_defect.annotate.offline.features import FeatureSpec, YoloFeatureExtractor

    profile_settings = config.profile.annotation.crop_verifier
    extractor = YoloFeatureExtractor(
        config.yolo_weights, FeatureSpec(imgsz=profile_settings.crop_imgsz), progress=False
    )
    for rule in ("argmax", "versus_background"):
        settings = profile_settings.model_copy(update={"rule": rule})
        start = time.perf_counter()
        result = crop_verify(
            verifier=CropVerifier(extractor, settings, seed=config.profile.training.seed),
            seeds=seeds,
            seed_boxes=seed_boxes,
            seed_proposals=seed_proposals,
            pool=pool,
            proposals=plain,
            image_classes=image_classes,
        )
        seconds = time.perf_counter() - start
        print(
            f"crop verifier ({rule}):", {k: v for k, v in result.details.items() if k != "settings"}
        )
        score(f"crop_verified {rule} calibrated p>={result.threshold}", result.boxes, seconds)
        for threshold in VERIFIER_THRESHOLDS:
            kept = keep_verified(result.scored, threshold, settings.keep_best)
            score(f"crop_verified {rule} p>={threshold}", kept, seconds)


def _classifier_cam(config, run_dir, scratch, inputs, score):
    """A small classifier trained here, and chapter 05's pseudo classifier when present."""
    from cascade_defect.annotate.cam_boxes import cam_boxes, train_cam_classifier

    seeds, seed_boxes, pool, predictions, image_classes, classes = inputs
    settings = config.profile.annotation.classifier_cam
    profile = config.profile
    start = time.perf_counter()
    training = train_cam_classifier(
        seeds=seeds,
        pool=pool,
        predictions=predictions,
        class_names=classes,
        weights=config.yolo_weights,
        work_dir=scratch / "classifier_cam",
        settings=settings,
        device=profile.training.device,
        seed=profile.training.seed,
        threads=profile.training.torch_threads,
    )
    print("CAM classifier:", training.wall_seconds, training.holdout_metrics)
    classifiers = {"small": (training.best_weights, start)}
    chapter05 = run_dir / "05_training" / "classification" / "runs" / "pseudo" / "weights"
    if (chapter05 / "best.pt").exists():
        classifiers["chapter05 pseudo"] = (chapter05 / "best.pt", None)
    for label, (weights, began) in classifiers.items():
        began = began or time.perf_counter()
        result = cam_boxes(
            classifier=weights,
            seeds=seeds,
            seed_boxes=seed_boxes,
            pool=pool,
            image_classes=image_classes,
            settings=settings,
            device=profile.training.device,
        )
        details = {k: v for k, v in result.details.items() if k not in ("settings", "calibration")}
        print(f"classifier_cam ({label}):", details)
        name = f"classifier_cam {label} t={result.threshold} a>={result.min_area}"
        score(name, result.boxes, time.perf_counter() - began)


def _above(proposals: dict[str, list[Proposal]], floor: float) -> dict[str, list[Proposal]]:
    return {k: [p for p in found if p.score >= floor] for k, found in proposals.items()}


def _cached(path: Path, compute) -> dict[str, list[Proposal]]:
    """Proposals are the slow part of a re-run: keep them next to the teachers."""
    if path.exists():
        return proposals_from_json(path.read_text())
    proposals = compute()
    path.write_text(proposals_to_json(proposals))
    return proposals


if __name__ == "__main__":
    main()

"""What a training schedule buys: one label source trained once, scored on the golden test set.

Chapter 05's schedule is a budget decision (the quick profile must fit a 2-core CPU in about 45
minutes). This script measures the alternatives without touching the book's outputs: it takes
the dataset chapter 05 assembled for ``--source`` (``<work>/05_training/datasets/<source>``),
fine-tunes YOLOv8n on it with the given epochs, image size, batch and extra ultralytics
arguments into a scratch folder, and scores the result on the golden test split of chapter 02
exactly as chapter 06 does. It prints the hold-out curve epoch by epoch, then the test mAP50
with its bootstrap 95% interval and the wall time.

Run chapters 01-05 first (any profile), then for example:

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_training_schedule.py \\
        --source human --epochs 30 --imgsz 256 --arg warmup_epochs=1
"""

from __future__ import annotations

import time

from _bench_cli import parser_with_common_options, report, scratch_folder

from cascade_defect.chapters.c06_comparison import golden_test_dataset, golden_test_truth
from cascade_defect.data.split import SplitLayout
from cascade_defect.metrics.bootstrap import bootstrap_indices, bootstrap_map50, percentile_interval
from cascade_defect.metrics.detection import detection_metrics, match_detections
from cascade_defect.settings import key_value_arguments, load_config, parameter_overrides
from cascade_defect.train.predict import validate_on_test
from cascade_defect.train.yolo import train_yolo, training_schedule


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument("--source", default="human", help="chapter 05 dataset (default: human)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples")
    args = parser.parse_args()
    config = load_config(
        args.profile,
        overrides=parameter_overrides(
            training={
                "imgsz": args.imgsz,
                "batch": args.batch,
                # merged into the profile's own ultralytics_args, validated like a notebook's
                "ultralytics_args": key_value_arguments(args.arg) or None,
            }
        ),
    )
    settings = config.profile.training
    data_yaml = config.paths.training_dir / "datasets" / args.source / "data.yaml"
    if not data_yaml.exists():
        raise SystemExit(
            f"{data_yaml} not found: run chapters 01-05 under --profile {args.profile}"
        )
    schedule = training_schedule(settings, args.epochs or settings.epochs)
    scratch = scratch_folder(args, "bench_schedule_")
    config_dir = config.work_dir / ".ultralytics"
    print(f"source {args.source}: {schedule}")

    result = train_yolo(
        data_yaml,
        weights=config.yolo_weights,
        project_dir=scratch / "runs",
        name=args.source,
        config_dir=config_dir,
        **schedule,
    )
    history = result.history[["epoch", "seconds", "map50", "map50_95"]]
    print(history.to_string(index=False))

    layout = SplitLayout(config.paths.split_dir)
    images, truth, class_names = golden_test_truth(layout)
    test_yaml = golden_test_dataset(layout, scratch / "test_dataset", class_names)
    start = time.perf_counter()
    _, detections = validate_on_test(
        result.best_weights,
        test_yaml,
        images[["image_id", "width", "height"]],
        imgsz=settings.imgsz,
        device=settings.device,
        config_dir=config_dir,
        project_dir=scratch / "val",
        name=args.source,
    )
    matched = match_detections(detections, truth, list(images["image_id"]), class_names)
    scores = detection_metrics(matched)
    samples = bootstrap_map50(matched, bootstrap_indices(len(images), args.bootstrap, seed=0))
    low, high = percentile_interval(samples)
    report(
        {
            "source": args.source,
            "epochs": schedule["epochs"],
            "imgsz": settings.imgsz,
            "batch": settings.batch,
            "extra": settings.ultralytics_args,
            "torch_threads": schedule["torch_threads"],
            "train_wall_seconds": round(result.wall_seconds, 1),
            "holdout_map50_last": float(history["map50"].iloc[-1]),
            "test_map50": round(scores["map50"], 4),
            "test_map50_ci": [round(float(low), 4), round(float(high), 4)],
            "test_map50_95": round(scores["map50_95"], 4),
            "test_ap50": {k: round(v, 4) for k, v in scores["ap50"].items()},
            "test_seconds": round(time.perf_counter() - start, 1),
        },
        args,
    )


if __name__ == "__main__":
    main()

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

import argparse
import json
import tempfile
import time
from pathlib import Path

from cascade_defect.evaluation import (
    bootstrap_indices,
    bootstrap_map50,
    detection_metrics,
    golden_test_dataset,
    golden_test_truth,
    match_detections,
    percentile_interval,
    validate_on_test,
)
from cascade_defect.settings import key_value_arguments, load_config
from cascade_defect.split import SplitLayout
from cascade_defect.training import train_yolo


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="settings profile (default: quick)")
    parser.add_argument("--source", default="human", help="chapter 05 dataset (default: human)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    parser.add_argument("--imgsz", type=int, default=None, help="default: the profile's")
    parser.add_argument("--batch", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ultralytics train() argument, value parsed as YAML (repeatable)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples")
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = load_config(args.profile)
    settings = config.profile.training
    data_yaml = config.paths.training_dir / "datasets" / args.source / "data.yaml"
    if not data_yaml.exists():
        raise SystemExit(
            f"{data_yaml} not found: run chapters 01-05 under --profile {args.profile}"
        )
    epochs = args.epochs or settings.epochs
    imgsz = args.imgsz or settings.imgsz
    batch = args.batch or settings.batch
    extra = {**settings.ultralytics_args, **key_value_arguments(args.arg)}
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench_schedule_"))
    config_dir = config.work_dir / ".ultralytics"
    weights = config.yolo_weights
    print(f"source {args.source}: {epochs} epochs at {imgsz} px, batch {batch}, extra {extra}")

    result = train_yolo(
        data_yaml,
        weights=str(weights),
        project_dir=scratch / "runs",
        name=args.source,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        workers=settings.workers,
        device=settings.device,
        patience=settings.patience,
        seed=settings.seed,
        config_dir=config_dir,
        ultralytics_args=extra,
        torch_threads=settings.torch_threads,
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
        imgsz=imgsz,
        device=settings.device,
        config_dir=config_dir,
        project_dir=scratch / "val",
        name=args.source,
    )
    matched = match_detections(detections, truth, list(images["image_id"]), class_names)
    scores = detection_metrics(matched)
    samples = bootstrap_map50(matched, bootstrap_indices(len(images), args.bootstrap, seed=0))
    low, high = percentile_interval(samples)
    figures = {
        "source": args.source,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "extra": extra,
        "train_wall_seconds": round(result.wall_seconds, 1),
        "holdout_map50_last": float(history["map50"].iloc[-1]),
        "test_map50": round(scores["map50"], 4),
        "test_map50_ci": [round(float(low), 4), round(float(high), 4)],
        "test_map50_95": round(scores["map50_95"], 4),
        "test_ap50": {k: round(v, 4) for k, v in scores["ap50"].items()},
        "test_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

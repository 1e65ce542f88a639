"""How much the verdict depends on which 18 images were labelled: the pseudo-vs-human comparison
over several draws of the seeds, the golden test set unchanged.

For each draw (``split.seed_draw``, see :func:`cascade_defect.data.split.redraw_seeds`) this script
runs the book's own chapters 01-03 and 05 into ``--scratch``/draw_<n>: the split with the seeds
drawn again, the annotator and the adopted box strategy on the new pool, and the ``pseudo`` source
trained on the profile's schedule. The record's own run (``--run-dir``) is the first draw. Every
model is then scored on the golden test set exactly as chapter 06 does (matching, mAP50, a paired
bootstrap of the images), against the ``human`` model:

- by default the record's ``human`` model: its training images (seeds + pool) are the same for
  every draw, only the validation hold-out drawn from the pool differs;
- with ``--human-per-draw``, a ``human`` model trained in each draw's folder too.

It prints one row per draw (box quality of the pool boxes, image-class accuracy of the annotator,
mAP50 [95% interval], the ratio to human [interval], training wall seconds), then the mean and
range of the ratio, and writes the rows to ``--csv`` with a manifest beside it (chapter 06 shows
the table). A chapter whose manifest is already in the draw's folder under ``--scratch`` is not
run again, so draws trained elsewhere (on a GPU, with ``--set training.device=0``) are scored here.
``--set SECTION.KEY=VALUE`` changes a profile setting for the redrawn draws only, so a recipe can
be tried on the record's own seeds (``--draws 0``) against the record.

    CASCADE_DATA_DIR=... CASCADE_YOLO_WEIGHTS=... .venv/bin/python scripts/bench_seed_draws.py \\
        --run-dir data/runs/quick --draws 1 2 --scratch /tmp/draws --csv data/benchmarks/seed_draws.csv
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench_cli import (
    add_profile_changes,
    benchmark_header,
    config_for_run,
    parser_with_common_options,
    profile_changes,
    report,
)

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import (
    AnnotationOutputs,
    read_pseudo_labels,
    run_annotation,
)
from cascade_defect.chapters.c05_training import (
    TrainingOutputs,
    read_training_results,
    run_training,
)
from cascade_defect.chapters.c06_comparison import golden_test_dataset, golden_test_truth
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import sha256_bytes, tree_sha256
from cascade_defect.locations import portable_path
from cascade_defect.manifest import MissingInputError, read_manifest
from cascade_defect.metrics.bootstrap import (
    bootstrap_indices,
    bootstrap_map50,
    paired_comparison,
)
from cascade_defect.metrics.box_quality import box_quality, normalise_gt_boxes
from cascade_defect.metrics.detection import detection_metrics, match_detections
from cascade_defect.plots.book import manifest_path
from cascade_defect.plots.seed_draws import CSV_COLUMNS
from cascade_defect.settings import StudyConfig, load_config
from cascade_defect.train.predict import validate_on_test
from cascade_defect.train.sources import HUMAN, PSEUDO

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def parse_arguments() -> Any:
    parser = parser_with_common_options(__doc__)
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="the record's run folder (chapters 01-06 ran)"
    )
    parser.add_argument(
        "--draws", type=int, nargs="+", default=[1, 2], help="seed draws besides the record's"
    )
    parser.add_argument("--human-per-draw", action="store_true", help="train human per draw too")
    parser.add_argument(
        "--record-seeds",
        action="store_true",
        help="also run the record's own seeds again (with --set: the recipe on the same seeds)",
    )
    parser.add_argument("--csv", type=Path, required=True, help="the table, read back to resume")
    add_profile_changes(
        parser,
        "profile setting changed for the redrawn draws (repeatable), e.g. "
        "annotation.synthetic_defects=100; value parsed as YAML. The record keeps its own",
    )
    return parser.parse_args()


def draw_config(
    record: StudyConfig,
    draw: int | None,
    scratch: Path,
    changes: dict[str, dict[str, Any]] | None = None,
) -> StudyConfig:
    """The record's profile with the seeds drawn again (None: the record's own seeds) and
    ``changes`` made, run into its own work folder."""
    overrides = record.profile.model_dump()
    for section, values in (changes or {}).items():
        if section not in overrides or not isinstance(overrides[section], dict):
            raise SystemExit(f"--set: the profile has no section {section!r}")
        overrides[section].update(values)
    overrides["split"]["seed_draw"] = draw
    return load_config(
        record.profile.name,
        work_dir=scratch / ("record_seeds" if draw is None else f"draw_{draw}"),
        data_dir=record.data_dir,
        yolo_weights=record.yolo_weights,
        overrides=overrides,
    )


def run_draw(config: StudyConfig, strategy: str, sources: list[str]) -> dict[str, float]:
    """Chapters 01-03 and 05 of one draw (each skipped when its manifest is already there)."""
    timings: dict[str, float] = {}
    steps = [
        ("01", config.paths.data_card_dir, lambda: run_data_strategy(config)),
        ("02", config.paths.split_dir, lambda: run_split(config)),
        (
            "03",
            config.paths.annotation_dir,
            lambda: run_annotation(config, box_strategies=(strategy,)),
        ),
    ]
    for name, folder, step in steps:
        if (folder / "manifest.json").exists():
            continue
        started = time.perf_counter()
        step()
        timings[f"chapter_{name}_seconds"] = round(time.perf_counter() - started, 1)
    results = (
        read_training_results(TrainingOutputs(config.paths.training_dir), config)
        if TrainingOutputs(config.paths.training_dir).results.exists()
        else {}
    )
    missing = [s for s in sources if s not in results]
    if missing:
        started = time.perf_counter()
        run_training(config, sources=missing, reuse=True)
        timings["chapter_05_seconds"] = round(time.perf_counter() - started, 1)
    for name, folder in (("03", config.paths.annotation_dir), ("05", config.paths.training_dir)):
        timings.setdefault(f"chapter_{name}_seconds", recorded_seconds(folder))
    return timings


def training_machine(config: StudyConfig) -> dict[str, Any]:
    """Where a draw's models trained (device, packages, CPU), from its chapter 05 manifest: the
    draws need not have trained on the machine that scores them."""
    recorded = chapter_manifest(config.paths.training_dir)
    return {
        "device": recorded.get("config", {}).get("training.device"),
        **recorded.get("environment", {}),
    }


def annotation_settings(config: StudyConfig) -> dict[str, Any]:
    """The ``annotation.*`` settings a draw's chapter 03 ran with, from its manifest: a draw made
    by an earlier version of the code may have labelled its pool another way than the record."""
    recorded = chapter_manifest(config.paths.annotation_dir).get("config", {})
    return {key: value for key, value in recorded.items() if key.startswith("annotation.")}


def recorded_seconds(chapter_dir: Path) -> float | None:
    """A chapter's wall time as its manifest recorded it (``timings_s.total``), for a chapter that
    ran before this invocation (an interrupted benchmark, or a draw trained on another machine)."""
    total = chapter_manifest(chapter_dir).get("timings_s", {}).get("total")
    return None if total is None else round(float(total), 1)


def chapter_manifest(chapter_dir: Path) -> dict[str, Any]:
    """The chapter's manifest, or nothing when the chapter has not run there."""
    try:
        return read_manifest(chapter_dir)
    except MissingInputError:
        return {}


def score(
    weights: Path, imgsz: int, record: StudyConfig, scratch: Path, name: str
) -> tuple[float, np.ndarray]:
    """mAP50 on the golden test set and its bootstrap samples (the same resamples for every
    model, so ratios are paired), as chapter 06 scores."""
    layout = SplitLayout(record.paths.split_dir)
    images, truth, class_names = golden_test_truth(layout)
    data_yaml = golden_test_dataset(layout, scratch / "golden_test", class_names)
    _, detections = validate_on_test(
        weights,
        data_yaml,
        images[["image_id", "width", "height"]],
        imgsz=imgsz,
        device=record.profile.training.device,
        config_dir=scratch / ".ultralytics",
        project_dir=scratch / "val",
        name=name,
    )
    matched = match_detections(detections, truth, list(images["image_id"]), class_names)
    samples = bootstrap_map50(matched, bootstrap_indices(len(images), N_BOOTSTRAP, BOOTSTRAP_SEED))
    return float(detection_metrics(matched)["map50"]), samples


def annotation_figures(config: StudyConfig, strategy: str) -> dict[str, Any]:
    """The pool's box quality and the annotator's image accuracy, as chapter 04 measures them."""
    layout = SplitLayout(config.paths.split_dir)
    labels, boxes = read_pseudo_labels(AnnotationOutputs(config.paths.annotation_dir))
    truth, truth_boxes = read_pool_ground_truth(layout)
    pool = read_pool_listing(layout)
    answered = labels[labels["status"] == "ok"]
    quality = box_quality(
        normalise_gt_boxes(truth_boxes, pool),
        boxes[boxes["strategy"] == strategy],
        answered["image_id"],
        layout.class_names(),
    ).set_index("class_name")
    merged = answered.merge(truth[["image_id", "class_name"]], on="image_id")
    seeds = read_table(layout.seed_listing)["image_id"]
    return {
        "box_recall": float(quality.loc["all", "recall_aware"]),
        "box_precision": float(quality.loc["all", "precision_aware"]),
        "mean_iou": float(quality.loc["all", "mean_best_iou_same_class"]),
        "class_accuracy": float((merged["defect_class"] == merged["class_name"]).mean()),
        "seeds": ";".join(sorted(map(str, seeds))),
    }


def shown_path(path: Path, record: StudyConfig) -> str:
    """``path`` as the record writes it, or relative to the record's work folder (``<work>/...``)
    when it lies outside the project, so the manifest never holds a machine's absolute path."""
    written = portable_path(path, record)
    if not Path(written).is_absolute():
        return written
    return "<work>/" + path.resolve().relative_to(record.work_dir.resolve()).as_posix()


def main() -> None:
    started = time.perf_counter()
    args = parse_arguments()
    record = config_for_run(args.run_dir, args.profile)
    strategy = record.profile.training.box_strategy
    scratch = args.scratch or args.csv.parent / f"{args.csv.stem}_runs"
    scratch.mkdir(parents=True, exist_ok=True)
    record_results = read_training_results(TrainingOutputs(record.paths.training_dir), record)
    for needed in (HUMAN, PSEUDO):
        if needed not in record_results:
            raise SystemExit(f"the record has no trained {needed!r} model: run chapter 05 first")
    sources = [PSEUDO, HUMAN] if args.human_per_draw else [PSEUDO]
    rows: list[dict[str, Any]] = []
    human_map, human_samples = score(
        Path(record_results[HUMAN]["best_weights"]),
        int(record_results[HUMAN]["imgsz"]),
        record,
        scratch,
        "record_human",
    )
    draws: list[tuple[str, StudyConfig, dict[str, float]]] = [("record", record, {})]
    redraws: list[int | None] = [None] if args.record_seeds else []
    for draw in [*redraws, *args.draws]:
        label = "record seeds" if draw is None else str(draw)
        config = draw_config(record, draw, scratch, profile_changes(args.set))
        print(f"{label}: running chapters 01-03 and 05 in {config.paths.run_dir}")
        draws.append((label, config, run_draw(config, strategy, sources)))
    for label, config, timings in draws:
        results = read_training_results(TrainingOutputs(config.paths.training_dir), config)
        pseudo = results[PSEUDO]
        pseudo_map, pseudo_samples = score(
            Path(pseudo["best_weights"]), int(pseudo["imgsz"]), record, scratch, f"pseudo_{label}"
        )
        reference_map, reference_samples = human_map, human_samples
        if args.human_per_draw and label != "record":
            reference_map, reference_samples = score(
                Path(results[HUMAN]["best_weights"]),
                int(results[HUMAN]["imgsz"]),
                record,
                scratch,
                f"human_{label}",
            )
        comparison = paired_comparison(
            {HUMAN: reference_map, PSEUDO: pseudo_map},
            {HUMAN: reference_samples, PSEUDO: pseudo_samples},
            metric="map50",
        )
        assert comparison is not None
        rows.append(
            {
                "draw": label,
                **annotation_figures(config, strategy),
                "pseudo_map50": pseudo_map,
                "pseudo_map50_low": float(np.percentile(pseudo_samples, 2.5)),
                "pseudo_map50_high": float(np.percentile(pseudo_samples, 97.5)),
                "human_map50": reference_map,
                "human": "per draw" if args.human_per_draw and label != "record" else "record",
                "ratio": comparison.ratio,
                "ratio_low": comparison.ratio_ci[0],
                "ratio_high": comparison.ratio_ci[1],
                "pseudo_train_wall_seconds": round(float(pseudo["wall_seconds"]), 1),
                **{k: timings.get(k) for k in ("chapter_03_seconds", "chapter_05_seconds")},
            }
        )
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    manifest = {
        **benchmark_header("seed_draws", record.profile.name, args.csv),
        "parameters": {
            "run_dir": shown_path(record.paths.run_dir, record),
            "draws": [label for label, _, _ in draws],
            "box_strategy": strategy,
            "profile_changes": profile_changes(args.set),
            "human": "per draw" if args.human_per_draw else "the record's model for every draw",
            "trained_on": {label: training_machine(config) for label, config, _ in draws},
            "annotation_settings": {
                label: annotation_settings(config) for label, config, _ in draws
            },
            "schedule": {
                k: record.profile.training.model_dump()[k] for k in ("epochs", "imgsz", "batch")
            },
            "n_bootstrap": N_BOOTSTRAP,
            "bootstrap_seed": BOOTSTRAP_SEED,
        },
        "inputs": {
            "record_training_results": {
                "path": shown_path(TrainingOutputs(record.paths.training_dir).results, record),
                "sha256": tree_sha256(TrainingOutputs(record.paths.training_dir).results),
            },
            "record_test": {
                "path": shown_path(SplitLayout(record.paths.split_dir).test_listing, record),
                "sha256": tree_sha256(SplitLayout(record.paths.split_dir).test_listing),
            },
        },
        "table_sha256": sha256_bytes(args.csv.read_bytes()),
        "counts": {
            "n_draws": len(table),
            "ratio_mean": float(table["ratio"].mean()),
            "ratio_min": float(table["ratio"].min()),
            "ratio_max": float(table["ratio"].max()),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    manifest_path(args.csv).write_text(json.dumps(manifest, indent=1) + "\n")
    shown = table[
        [
            "draw",
            "box_recall",
            "box_precision",
            "mean_iou",
            "class_accuracy",
            "pseudo_map50",
            "human_map50",
            "ratio",
            "ratio_low",
            "ratio_high",
            "pseudo_train_wall_seconds",
        ]
    ]
    print(shown.round(3).to_string(index=False))
    print(
        f"ratio over {len(table)} draws: mean {table['ratio'].mean():.3f}, "
        f"range {table['ratio'].min():.3f}-{table['ratio'].max():.3f}"
    )
    report({"rows": rows, "manifest": manifest}, args)


if __name__ == "__main__":
    main()

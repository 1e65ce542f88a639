"""What a run's pool boxes are: each box strategy's boxes sorted by what they cover in the truth.

For a run folder where chapters 01-03 ran, every box strategy of chapter 03 is scored against the
pool's hidden truth on the answered images, as chapter 04 scores it, and each box that finds no
defect of its class is told apart by what it covers (``metrics.box_quality.false_box_kind``): a
second box on a found defect, a defect of another class, a piece of a defect, a box on a defect
but too large or off it, or no defect. The table prints per strategy and class; ``--figure``
draws the boxes the pseudo detector trains on (``training.box_strategy``) by kind and class, and
``--csv`` writes the table with its manifest beside it (run files' hashes, commit, counts).
Nothing of the run is written.

    CASCADE_DATA_DIR=<NEU-DET> .venv/bin/python scripts/bench_box_kinds.py --run-dir data/runs/quick \\
        --figure box_kinds.png --csv box_kinds.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from _bench_cli import benchmark_header, chapter_made_by, config_for_run

from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c04_audit import image_table
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.hashing import tree_sha256
from cascade_defect.locations import portable_path, portable_values
from cascade_defect.metrics.box_quality import BOX_KINDS, box_quality, normalise_gt_boxes
from cascade_defect.plots.audit import box_kind_bars
from cascade_defect.plots.book import manifest_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="<work>/runs/<profile>")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the trained-on boxes")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    started = time.perf_counter()
    config = config_for_run(args.run_dir, "quick")
    layout = SplitLayout(config.paths.split_dir)
    labels, boxes = read_pseudo_labels(AnnotationOutputs(config.paths.annotation_dir))
    pool = read_pool_listing(layout)
    truth, gt_pixel = read_pool_ground_truth(layout)
    answered = image_table(truth, gt_pixel, labels).query("answered")["image_id"]
    table = box_quality(normalise_gt_boxes(gt_pixel, pool), boxes, answered, layout.class_names())
    kinds = [f"n_{kind}" for kind in BOX_KINDS]
    columns = ["strategy", "class_name", "n_gt", "n_pred", *kinds]
    shown = table[[*columns, "recall_aware", "matched_iou_aware"]]
    with pd.option_context("display.width", 200):
        print(f"run {args.run_dir}: {len(answered)} answered pool images")
        print(shown.round(3).to_string(index=False))
    if args.csv:
        shown.to_csv(args.csv, index=False)
        annotation = AnnotationOutputs(config.paths.annotation_dir)
        inputs = {
            "pool_listing": layout.pool_listing,
            "pool_boxes": layout.pool_boxes,
            "pseudo_labels": annotation.labels,
            "pseudo_boxes": annotation.boxes,
        }
        manifest = {
            **benchmark_header("box_kinds", config.profile.name, args.csv),
            "parameters": portable_values({"run_dir": config.paths.run_dir}, config),
            "chapter_03": chapter_made_by(annotation.root / "manifest.json"),
            "inputs": {
                name: {"path": portable_path(path, config), "sha256": tree_sha256(path)}
                for name, path in inputs.items()
            },
            "outputs": {"relative_to": "this manifest's folder", "table": args.csv.name},
            "counts": {"n_answered_images": len(answered), "n_rows": len(shown)},
            "timings_s": {"this_invocation": round(time.perf_counter() - started, 1)},
        }
        manifest_path(args.csv).write_text(json.dumps(manifest, indent=1) + "\n")
    if args.figure:
        strategy = config.profile.training.box_strategy
        box_kind_bars(table, strategy).savefig(args.figure, dpi=110, bbox_inches="tight")
        print(f"figure of the {strategy} boxes: {args.figure}")


if __name__ == "__main__":
    main()

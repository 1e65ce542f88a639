"""Chapter 02, split: seed, pool and golden test set, fixed once for every later chapter.

Every comparison in the book is only fair if all label sources see the same seeds and are scored
on the same untouched test images; this chapter writes that split and checks it for leaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from cascade_defect.chapters.c01_data import DataStrategyOutputs, dataset_from_index
from cascade_defect.data.split import (
    SplitLayout,
    assign_splits,
    leakage_report,
    split_table,
    write_split,
)
from cascade_defect.manifest import ChapterRun
from cascade_defect.settings import StudyConfig


@dataclass
class SplitResult:
    assignment: pd.DataFrame
    table: pd.DataFrame
    leakage: dict[str, int]
    layout: SplitLayout
    duplicates: pd.DataFrame


def run_split(config: StudyConfig) -> SplitResult:
    """Split chapter 01's index into seed / pool / test and export each split."""
    source = DataStrategyOutputs(config.paths.data_card_dir)
    run = ChapterRun(
        "02_split",
        config,
        config.paths.split_dir,
        parameters=config.profile.split.model_dump(),
        inputs={
            "images": source.images,
            "boxes": source.boxes,
            "quirks": source.quirks,
            "data_card": source.card,
        },
    )
    dataset = dataset_from_index(source, config)
    images = dataset.images_frame()
    with run.timed("assign"):
        assignment = assign_splits(images, config.profile.split)
    leakage = leakage_report(assignment)
    if any(leakage.values()):
        raise AssertionError(f"split leaks across splits: {leakage}")
    # write_split clears the chapter folder, so the manifest is written after it.
    with run.timed("export"):
        layout = write_split(dataset, assignment, config.paths.split_dir)
    table = split_table(assignment)
    dup_hashes = assignment["pixel_hash"][assignment["pixel_hash"].duplicated(keep=False)]
    duplicates = assignment[assignment["pixel_hash"].isin(dup_hashes)][
        ["image_id", "class_name", "split", "sha256"]
    ].sort_values("image_id")
    (layout.root / "split_table.csv").write_text(table.to_csv())
    (layout.root / "leakage.json").write_text(json.dumps(leakage, indent=2) + "\n")
    run.counts.update(
        {
            f"n_{split}": int((assignment["split"] == split).sum())
            for split in ("seed", "pool", "test")
        }
    )
    run.counts["n_duplicate_images"] = len(duplicates)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    run.write(
        {
            "split_manifest": layout.split_manifest,
            "seed": layout.seed_listing,
            "pool": layout.pool_listing,
            "test": layout.test_listing,
            "pool_ground_truth": layout.ground_truth_dir,
            "yolo": layout.root / "yolo",
        }
    )
    return SplitResult(assignment, table, leakage, layout, duplicates)

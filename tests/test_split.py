"""Split invariants: sizes, stratification, duplicates kept together, determinism, hidden truth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.split import (
    SplitLayout,
    assign_splits,
    leakage_report,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
    write_split,
)
from cascade_defect.settings import NEU_CLASSES, SplitSettings
from tests.synthetic import make_neu_like


def frame(per_class: int, duplicates: dict[str, list[str]] | None = None) -> pd.DataFrame:
    rows = [
        {"image_id": f"{c}_{i}", "class_name": c, "pixel_hash": f"{c}_{i}", "sha256": f"{c}_{i}"}
        for c in NEU_CLASSES
        for i in range(per_class)
    ]
    out = pd.DataFrame(rows)
    for group, members in (duplicates or {}).items():
        out.loc[out["image_id"].isin(members), ["pixel_hash", "sha256"]] = group
    return out


def test_neu_sized_split_has_the_planned_sizes_per_class() -> None:
    result = assign_splits(frame(300), SplitSettings())
    counts = result.groupby(["class_name", "split"]).size().unstack()
    assert (counts["seed"] == 3).all()
    assert (counts["test"] == 60).all()
    assert (counts["pool"] == 237).all()
    assert result["split"].value_counts().to_dict() == {"pool": 1422, "test": 360, "seed": 18}


def test_fractions_are_parameters() -> None:
    result = assign_splits(frame(100), SplitSettings(seed_fraction=0.05, test_fraction=0.3))
    counts = result.groupby(["class_name", "split"]).size().unstack()
    assert (counts["seed"] == 5).all() and (counts["test"] == 30).all()


def test_duplicates_always_share_a_split() -> None:
    members = ["patches_1", "patches_5", "patches_9"]
    for seed in range(25):
        result = assign_splits(
            frame(20, {"dup": members}), SplitSettings(random_seed=seed, seed_fraction=0.15)
        )
        assert result.loc[result["image_id"].isin(members), "split"].nunique() == 1
        assert not any(leakage_report(result).values())


def test_same_seed_same_split_other_seed_other_split() -> None:
    base = assign_splits(frame(50), SplitSettings(random_seed=7))
    again = assign_splits(frame(50), SplitSettings(random_seed=7))
    other = assign_splits(frame(50), SplitSettings(random_seed=8))
    assert base["split"].tolist() == again["split"].tolist()
    assert base["split"].tolist() != other["split"].tolist()


def test_a_seed_draw_changes_only_the_seeds_and_keeps_the_golden_test_set() -> None:
    base = assign_splits(frame(50), SplitSettings())
    draws = [assign_splits(frame(50), SplitSettings(seed_draw=d)) for d in (0, 1, 2)]
    base_test = set(base.loc[base["split"] == "test", "image_id"])
    seeds = []
    for drawn in draws:
        assert set(drawn.loc[drawn["split"] == "test", "image_id"]) == base_test
        counts = drawn[drawn["split"] == "seed"].groupby("class_name").size()
        assert (counts == 3).all() and len(counts) == len(NEU_CLASSES)
        seeds.append(frozenset(drawn.loc[drawn["split"] == "seed", "image_id"]))
    assert len(set(seeds)) == 3
    assert frozenset(base.loc[base["split"] == "seed", "image_id"]) not in seeds
    again = assign_splits(frame(50), SplitSettings(seed_draw=1))
    assert again["split"].tolist() == draws[1]["split"].tolist()


def test_a_seed_draw_keeps_duplicates_together() -> None:
    members = ["patches_1", "patches_5"]
    for draw in range(20):
        result = assign_splits(
            frame(8, {"dup": members}), SplitSettings(seed_draw=draw, seed_fraction=0.3)
        )
        assert result.loc[result["image_id"].isin(members), "split"].nunique() == 1
        assert not any(leakage_report(result).values())


def test_no_image_in_two_splits_and_every_image_assigned() -> None:
    result = assign_splits(frame(30), SplitSettings(seed_fraction=0.1))
    assert result["image_id"].is_unique
    assert set(result["split"]) == {"seed", "pool", "test"}
    assert len(result) == 30 * len(NEU_CLASSES)


def test_fractions_that_leave_no_pool_are_rejected() -> None:
    with pytest.raises(ValueError, match="pool"):
        SplitSettings(seed_fraction=0.5, test_fraction=0.5)


def test_written_split_hides_the_pool_truth(tmp_path: Path) -> None:
    dataset = load_dataset(
        make_neu_like(tmp_path / "data", per_class=8, duplicate=True), progress=False
    )
    assignment = assign_splits(
        dataset.images_frame(),
        SplitSettings(seed_fraction=0.25, test_fraction=0.25, min_seeds_per_class=1),
    )
    layout = write_split(dataset, assignment, tmp_path / "split", progress=False)

    pool = read_pool_listing(layout)
    assert "class_name" not in pool.columns
    assert not (layout.yolo_dir("pool") / "labels").exists()
    assert len(list(layout.pool_labels_dir.glob("*.txt"))) == len(pool)
    truth, boxes = read_pool_ground_truth(layout)
    assert set(truth["image_id"]) == set(pool["image_id"])
    assert set(boxes["image_id"]) <= set(pool["image_id"])

    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    assert len(seeds) == 2 * len(NEU_CLASSES)
    assert set(seed_boxes["image_id"]) == set(seeds["image_id"])
    with pytest.raises(ValueError, match="hidden"):
        read_labelled_listing(layout, "pool")

    manifest = pd.read_csv(layout.split_manifest)
    assert list(manifest.columns[:4]) == ["image_id", "class_name", "split", "sha256"]
    for split in ("seed", "test"):
        images = sorted(p.stem for p in (layout.yolo_dir(split) / "images").iterdir())
        labels = sorted(p.stem for p in (layout.yolo_dir(split) / "labels").iterdir())
        assert images == labels == sorted(manifest.loc[manifest["split"] == split, "image_id"])
    label = (layout.yolo_dir("seed") / "labels" / f"{seeds['image_id'][0]}.txt").read_text().split()
    assert len(label) == 5 and 0 < float(label[1]) < 1


def test_pool_listing_with_labels_is_refused(tmp_path: Path) -> None:
    layout = SplitLayout(tmp_path)
    pd.DataFrame({"image_id": ["a"], "file": ["a.jpg"], "class_name": ["crazing"]}).to_csv(
        layout.pool_listing, index=False
    )
    with pytest.raises(ValueError, match="ground-truth"):
        read_pool_listing(layout)


def test_every_class_gets_the_minimum_of_seeds_but_a_tiny_class_keeps_half() -> None:
    """1% of a 50-image class rounds to 0 or 1; the study's premise is three seeds per class."""
    big = frame(50)
    result = assign_splits(big, SplitSettings())
    assert (result[result["split"] == "seed"].groupby("class_name").size() == 3).all()
    tiny = frame(4)
    result = assign_splits(tiny, SplitSettings(min_seeds_per_class=3))
    assert (result[result["split"] == "seed"].groupby("class_name").size() == 2).all()
    assert (result[result["split"] == "test"].groupby("class_name").size() == 1).all()

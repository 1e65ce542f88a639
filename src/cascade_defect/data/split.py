"""The three-way split: seed (labelled), pool (to pseudo-label) and golden test.

The split is stratified by class and seeded. Pixel-identical images form one group that always
lands in a single split, so a duplicate can never leak from training into the test set. The
pool's ground truth is written under ``ground_truth/``, apart from the pool listing, so
annotation code that reads ``pool.csv`` cannot see the answers by accident.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.data.records import BOX_FIELDS, NO_DEFECT, Box, Dataset, ImageRecord
from cascade_defect.data.tables import read_table
from cascade_defect.data.yolo_txt import write_data_yaml, write_label_file, yolo_line
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import SplitSettings

SPLITS = ("seed", "pool", "test")
LabelKind = Literal["boxes", "image"]


def split_targets(n_class: int, settings: SplitSettings) -> dict[str, int]:
    """Seed and test images wanted from a class of ``n_class``: the fractions, rounded, with at
    least ``min_seeds_per_class`` seeds (never more than half a tiny class) and one test image."""
    seed = max(settings.min_seeds_per_class, round(n_class * settings.seed_fraction))
    return {
        "seed": min(seed, max(1, n_class // 2)),
        "test": max(1, round(n_class * settings.test_fraction)),
    }


def assign_splits(images: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    """Assign each image to ``seed``, ``pool`` or ``test``.

    ``images`` needs ``image_id``, ``class_name`` and ``pixel_hash``. Per class, the targets are
    ``round(n * fraction)`` for seed (at least ``min_seeds_per_class``) and test (at least one); groups of duplicates are placed
    whole, and a group that would overshoot a target goes to the pool.
    """
    required = {"image_id", "class_name", "pixel_hash"}
    missing = required - set(images.columns)
    if missing:
        raise ValueError(f"images lacks columns {sorted(missing)}")
    if images["image_id"].duplicated().any():
        raise ValueError("image_id must be unique")
    rng = np.random.default_rng(settings.random_seed)
    frame = images.copy()
    # A duplicate group belongs to the class of its first member (sorted), so members of
    # different classes still travel together.
    frame = frame.sort_values("image_id", kind="stable")
    group_class = frame.groupby("pixel_hash")["class_name"].first()
    frame["split"] = "pool"
    for class_name in sorted(frame["class_name"].unique()):
        n_class = int((frame["class_name"] == class_name).sum())
        targets = split_targets(n_class, settings)
        groups = sorted(group_class[group_class == class_name].index)
        filled = {"seed": 0, "test": 0}
        for group in (groups[i] for i in rng.permutation(len(groups))):
            members = frame["pixel_hash"] == group
            size = int(members.sum())
            for split in ("seed", "test"):
                if filled[split] + size <= targets[split]:
                    frame.loc[members, "split"] = split
                    filled[split] += size
                    break
    if settings.seed_draw is not None:
        frame = redraw_seeds(frame, settings)
    return frame.sort_index()


def redraw_seeds(assignment: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    """The same split with its seeds drawn again (``settings.seed_draw``) from the non-test images.

    The golden test images keep their split, so draws differ only in which few images a person
    labelled; each class gets the seed target :func:`split_targets` gives it, duplicate groups
    placed whole as in :func:`assign_splits`.
    """
    if settings.seed_draw is None:
        return assignment
    rng = np.random.default_rng([settings.random_seed, settings.seed_draw])
    frame = assignment.copy()
    frame.loc[frame["split"] == "seed", "split"] = "pool"
    open_rows = frame[frame["split"] == "pool"]
    group_class = open_rows.groupby("pixel_hash")["class_name"].first()
    for class_name in sorted(frame["class_name"].unique()):
        target = split_targets(int((frame["class_name"] == class_name).sum()), settings)["seed"]
        groups = sorted(group_class[group_class == class_name].index)
        filled = 0
        for group in (groups[i] for i in rng.permutation(len(groups))):
            members = (frame["pixel_hash"] == group) & (frame["split"] == "pool")
            size = int(members.sum())
            if filled + size <= target:
                frame.loc[members, "split"] = "seed"
                filled += size
            if filled >= target:
                break
    return frame


def split_table(assignment: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, with totals: the table the book shows."""
    table = pd.crosstab(
        assignment["class_name"], assignment["split"], margins=True, margins_name="total"
    )
    return table.reindex(columns=[*SPLITS, "total"], fill_value=0)


def leakage_report(assignment: pd.DataFrame) -> dict[str, int]:
    """Counts that must all be zero: images or duplicate groups found in more than one split."""
    ids_in_many = int(assignment.groupby("image_id")["split"].nunique().gt(1).sum())
    groups_in_many = int(assignment.groupby("pixel_hash")["split"].nunique().gt(1).sum())
    bytes_in_many = (
        int(assignment.groupby("sha256")["split"].nunique().gt(1).sum())
        if "sha256" in assignment
        else 0
    )
    return {
        "image_ids_in_several_splits": ids_in_many,
        "pixel_duplicate_groups_across_splits": groups_in_many,
        "byte_duplicate_groups_across_splits": bytes_in_many,
    }


@dataclass(frozen=True)
class SplitLayout:
    """The files a split writes; later chapters find their inputs here."""

    root: Path

    @property
    def classes_file(self) -> Path:
        return self.root / "classes.json"

    @property
    def seed_listing(self) -> Path:
        return self.root / "seed.csv"

    @property
    def seed_boxes(self) -> Path:
        return self.root / "seed_boxes.csv"

    @property
    def pool_listing(self) -> Path:
        """Pool images without any label: the only pool file annotators read."""
        return self.root / "pool.csv"

    @property
    def test_listing(self) -> Path:
        return self.root / "test.csv"

    @property
    def test_boxes(self) -> Path:
        return self.root / "test_boxes.csv"

    @property
    def ground_truth_dir(self) -> Path:
        return self.root / "ground_truth"

    @property
    def split_manifest(self) -> Path:
        """image id, class, split and sha256 of every image (it holds the pool's classes)."""
        return self.ground_truth_dir / "split_manifest.csv"

    @property
    def pool_truth(self) -> Path:
        return self.ground_truth_dir / "pool_truth.csv"

    @property
    def pool_boxes(self) -> Path:
        return self.ground_truth_dir / "pool_boxes.csv"

    @property
    def pool_labels_dir(self) -> Path:
        return self.ground_truth_dir / "pool_labels"

    def yolo_dir(self, split: str) -> Path:
        return self.root / "yolo" / split

    def class_names(self) -> list[str]:
        """The defect classes, in YOLO class-index order (never ``no_defect``)."""
        return json.loads(self.classes_file.read_text())["class_names"]

    def has_no_defect(self) -> bool:
        """Whether the dataset holds defect-free images (labelled ``no_defect``)."""
        return bool(json.loads(self.classes_file.read_text()).get("no_defect"))

    def label_names(self) -> list[str]:
        """The labels an image can have: the defect classes, then ``no_defect`` if present."""
        return [*self.class_names(), NO_DEFECT] if self.has_no_defect() else self.class_names()

    def label_kind(self) -> LabelKind:
        """``boxes`` when the dataset came with boxes, ``image`` when only with class folders."""
        return json.loads(self.classes_file.read_text()).get("labels", "boxes")


def whole_image_box(record: ImageRecord) -> Box:
    """The box an image-level label stands for: the whole image, in the image's class."""
    return Box(record.class_name, 0.0, 0.0, float(record.width), float(record.height))


def write_split(
    dataset: Dataset, assignment: pd.DataFrame, out_dir: Path, progress: bool = True
) -> SplitLayout:
    """Write listings, the hidden pool ground truth and YOLO exports for each split."""
    layout = SplitLayout(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    layout.ground_truth_dir.mkdir(parents=True)
    class_names = list(dataset.class_names)
    label_kind: LabelKind = "image" if dataset.image_level_only else "boxes"
    n_free = sum(1 for r in dataset.images if r.class_name == NO_DEFECT)
    layout.classes_file.write_text(
        json.dumps(
            {"class_names": class_names, "labels": label_kind}
            | ({"no_defect": {**dataset.no_defect, "n_images": n_free}} if n_free else {}),
            indent=2,
        )
    )
    by_id = {r.image_id: r for r in dataset.images}
    split_of = dict(zip(assignment["image_id"], assignment["split"], strict=True))

    manifest = assignment[["image_id", "class_name", "split", "sha256", "pixel_hash"]].copy()
    manifest.to_csv(layout.split_manifest, index=False)

    listings: dict[str, list[dict]] = {split: [] for split in SPLITS}
    box_rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for image_id in tqdm(
        assignment["image_id"],
        desc="Exporting split",
        disable=progress_disabled(progress),
        unit="img",
    ):
        record = by_id[image_id]
        if dataset.image_level_only and record.class_name != NO_DEFECT:
            # Detection needs boxes: an image-level label becomes one whole-image box (a
            # defect-free image stays without one: YOLO trains it as background).
            record = replace(record, boxes=[whole_image_box(record)])
        split = split_of[image_id]
        target = layout.yolo_dir(split) / "images" / f"{image_id}{record.image_path.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.image_path, target)
        row = {
            "image_id": image_id,
            "file": target.relative_to(out_dir).as_posix(),
            "sha256": record.sha256,
            "width": record.width,
            "height": record.height,
        }
        listings[split].append(row if split == "pool" else {**row, "class_name": record.class_name})
        for box in record.boxes:
            box_rows[split].append({"image_id": image_id, **asdict(box)})
        labels_dir = (
            layout.pool_labels_dir if split == "pool" else layout.yolo_dir(split) / "labels"
        )
        write_yolo_label(labels_dir / f"{image_id}.txt", record, class_names)

    box_columns = ["image_id", *BOX_FIELDS]
    pd.DataFrame(listings["seed"]).to_csv(layout.seed_listing, index=False)
    pd.DataFrame(listings["test"]).to_csv(layout.test_listing, index=False)
    pd.DataFrame(listings["pool"]).to_csv(layout.pool_listing, index=False)
    pd.DataFrame(box_rows["seed"], columns=box_columns).to_csv(layout.seed_boxes, index=False)
    pd.DataFrame(box_rows["test"], columns=box_columns).to_csv(layout.test_boxes, index=False)
    pd.DataFrame(box_rows["pool"], columns=box_columns).to_csv(layout.pool_boxes, index=False)
    pool_truth = manifest[manifest["split"] == "pool"][["image_id", "class_name"]]
    pool_truth.to_csv(layout.pool_truth, index=False)
    for split in ("seed", "test"):
        write_data_yaml(layout.yolo_dir(split), class_names)
    return layout


def yolo_lines(record: ImageRecord, class_names: Sequence[str]) -> list[str]:
    """YOLO ``class cx cy w h`` lines (normalised); boxes of unknown classes are left out."""
    index = {name: i for i, name in enumerate(class_names)}
    lines = []
    for box in record.boxes:
        if box.class_name not in index:
            continue
        cx = (box.xmin + box.xmax) / 2 / record.width
        cy = (box.ymin + box.ymax) / 2 / record.height
        w = (box.xmax - box.xmin) / record.width
        h = (box.ymax - box.ymin) / record.height
        lines.append(yolo_line(index[box.class_name], cx, cy, w, h))
    return lines


def write_yolo_label(path: Path, record: ImageRecord, class_names: Sequence[str]) -> None:
    write_label_file(path, yolo_lines(record, class_names))


def read_pool_listing(layout: SplitLayout) -> pd.DataFrame:
    """The pool as annotators see it: ids and files, never classes or boxes."""
    frame = read_table(layout.pool_listing)
    leaked = {"class_name", "xmin", "ymin", "xmax", "ymax"} & set(frame.columns)
    if leaked:
        raise ValueError(f"{layout.pool_listing} holds ground-truth columns {sorted(leaked)}")
    frame["path"] = [str(layout.root / f) for f in frame["file"]]
    return frame


def read_labelled_listing(layout: SplitLayout, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Images and boxes of a labelled split (``seed`` or ``test``)."""
    if split == "seed":
        images, boxes = read_table(layout.seed_listing), read_table(layout.seed_boxes)
    elif split == "test":
        images, boxes = read_table(layout.test_listing), read_table(layout.test_boxes)
    else:
        raise ValueError("labelled splits are 'seed' and 'test'; the pool's truth is hidden")
    images["path"] = [str(layout.root / f) for f in images["file"]]
    return images, boxes


def read_pool_ground_truth(layout: SplitLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pool's hidden truth (classes and boxes): for the audit and the ``human`` source only."""
    return read_table(layout.pool_truth), read_table(layout.pool_boxes)


def planned_split_sizes(images_per_class: dict[str, int], settings: SplitSettings) -> pd.DataFrame:
    """The split sizes the settings ask for, per class, before any image is drawn."""
    rows = []
    for class_name, n in images_per_class.items():
        targets = split_targets(n, settings)
        seed, test = targets["seed"], targets["test"]
        rows.append(
            {
                "class_name": class_name,
                "seed": seed,
                "pool": n - seed - test,
                "test": test,
                "total": n,
            }
        )
    frame = pd.DataFrame(rows).set_index("class_name")
    frame.loc["total"] = frame.sum()
    return frame

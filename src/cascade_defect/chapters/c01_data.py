"""Chapter 01, data strategy: load the dataset once, describe it, and index it for the rest.

Later chapters read this index (images, boxes, quirks, data card) instead of scanning the data
again, so what the book says about the data and what it trains on cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import Box, Dataset, ImageRecord, Quirk, data_card
from cascade_defect.data.tables import read_table
from cascade_defect.locations import portable_path, resolve_portable_path
from cascade_defect.manifest import ChapterRun, require_inputs
from cascade_defect.settings import StudyConfig


@dataclass(frozen=True)
class DataStrategyOutputs:
    """Files written by chapter 01."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images.csv"

    @property
    def boxes(self) -> Path:
        return self.root / "boxes.csv"

    @property
    def quirks(self) -> Path:
        return self.root / "quirks.csv"

    @property
    def card(self) -> Path:
        return self.root / "data_card.json"


@dataclass
class DataStrategyResult:
    dataset: Dataset
    card: dict
    outputs: DataStrategyOutputs


def card_overview(card: dict) -> pd.Series:
    """The data card's headline facts, one per row, for the top of chapter 01."""
    boxes = card["boxes"]
    per_image = boxes.get("per_image")
    return pd.Series(
        {
            "layout": card["layout"],
            "images": card["n_images"],
            "images with an annotation": card["n_annotated_images"],
            "boxes": boxes["n_boxes"],
            "boxes per image (min / mean / max)": "{min} / {mean} / {max}".format(**per_image)
            if per_image
            else "none: image-level labels only",
            "image sizes": image_size_summary(card["image_sizes"]),
            "defect-free images": no_defect_summary(card),
            "pixel modes": ", ".join(f"{k} ({v})" for k, v in card["image_modes"].items()),
            "subsampled per class": card["subsampled_per_class"],
        },
        name="data card",
    )


def image_size_summary(sizes: list[dict], listed: int = 6) -> str:
    """A few sizes listed in full; many (a production line's crops) as their ranges."""
    if len(sizes) <= listed:
        return ", ".join(f"{s['width']}x{s['height']} ({s['n']})" for s in sizes)
    widths = [s["width"] for s in sizes]
    heights = [s["height"] for s in sizes]
    return (
        f"{len(sizes)} different sizes: widths {min(widths)}-{max(widths)} px, "
        f"heights {min(heights)}-{max(heights)} px"
    )


def no_defect_summary(card: dict) -> str:
    """How many images are defect-free, and from which class, declared or detected."""
    free = card.get("no_defect") or {}
    if not free.get("n_images"):
        return "none (every image shows a defect)"
    classes = ", ".join(free.get("from_classes", []))
    return f"{free['n_images']} (class {classes}, {free.get('how')}; labelled no_defect)"


def box_class_table(boxes: pd.DataFrame) -> pd.DataFrame | str:
    """Image class against box class, with totals: where boxes of another class hide."""
    if boxes.empty:
        return "no boxes: the dataset has image-level labels only"
    return pd.crosstab(
        boxes["image_class"], boxes["class_name"], margins=True, margins_name="total"
    ).rename_axis(index="image class", columns="box class")


def run_data_strategy(
    config: StudyConfig, on_error: str = "raise", class_names: Sequence[str] | None = None
) -> DataStrategyResult:
    """Load the dataset, subsample it for the profile, write the data card and the image index.

    ``class_names`` None infers the classes from the data (class folders, a YOLO names file or
    the Pascal VOC box names), which gives NEU-DET's six on NEU-DET and a user's own classes on
    theirs; a list fixes them (and their order).
    """
    data_dir = config.require_data_dir()
    out = DataStrategyOutputs(config.paths.data_card_dir)
    chosen = list(class_names) if class_names else None
    run = ChapterRun(
        "01_data_strategy",
        config,
        out.root,
        parameters={"on_error": on_error, "class_names": chosen},
    )
    run.input_sources["dataset"] = portable_path(data_dir, config)
    with run.timed("load"):
        dataset = load_dataset(
            data_dir,
            class_names=chosen,
            on_error=on_error,  # type: ignore[arg-type]
            min_mask_area=config.profile.min_mask_area,
            no_defect_class=config.no_defect_class,
        )
    full_card = data_card(dataset)
    per_class = config.profile.max_images_per_class
    if per_class is not None:
        dataset = dataset.subsample(per_class, seed=config.profile.split.random_seed)
    card = data_card(dataset, config)
    card["full_dataset"] = {
        "n_images": full_card["n_images"],
        "quirks": full_card["quirks"],
        "images_per_class": full_card["images_per_class"],
    }
    card["subsampled_per_class"] = per_class
    with run.timed("write"):
        dataset.images_frame().to_csv(out.images, index=False)
        dataset.boxes_frame().to_csv(out.boxes, index=False)
        dataset.quirks_frame(config).to_csv(out.quirks, index=False)
        out.card.write_text(json.dumps(card, indent=2) + "\n")
    run.counts.update(
        n_images=card["n_images"],
        n_boxes=card["boxes"]["n_boxes"],
        n_quirks=len(dataset.quirks),
        n_quarantined=len(dataset.quarantined),
    )
    run.write(
        {"images": out.images, "boxes": out.boxes, "quirks": out.quirks, "data_card": out.card}
    )
    return DataStrategyResult(dataset=dataset, card=card, outputs=out)


def dataset_from_index(out: DataStrategyOutputs, config: StudyConfig) -> Dataset:
    """Rebuild the dataset from chapter 01's files (no re-scan, no hidden state).

    The data card's root and the quirks' paths are portable (:func:`portable_path`); they come
    back as this machine's paths.
    """
    require_inputs(
        {"images": out.images, "boxes": out.boxes, "data_card": out.card},
        {
            "images": "notebook 01 (data strategy)",
            "boxes": "notebook 01",
            "data_card": "notebook 01",
        },
    )
    card = json.loads(out.card.read_text())
    images = read_table(out.images, keep_default_na=False, na_values=[""])
    boxes = read_table(out.boxes)
    quirks = (
        read_table(out.quirks, keep_default_na=False) if out.quirks.exists() else pd.DataFrame()
    )
    boxes_by_image: dict[str, list[Box]] = {}
    for row in boxes.itertuples(index=False):
        boxes_by_image.setdefault(str(row.image_id), []).append(
            Box(
                str(row.class_name),
                float(row.xmin),
                float(row.ymin),
                float(row.xmax),
                float(row.ymax),
                bool(row.truncated),
                bool(row.difficult),
            )
        )
    records = [
        ImageRecord(
            image_id=str(row.image_id),
            class_name=str(row.class_name),
            image_path=Path(row.image_path),
            annotation_path=Path(row.annotation_path)
            if isinstance(row.annotation_path, str)
            else None,
            width=int(row.width),
            height=int(row.height),
            mode=str(row.mode),
            sha256=str(row.sha256),
            pixel_hash=str(row.pixel_hash),
            boxes=boxes_by_image.get(str(row.image_id), []),
            mask_path=Path(row.mask_path)
            if isinstance(getattr(row, "mask_path", None), str)
            else None,
        )
        for row in images.itertuples(index=False)
    ]
    return Dataset(
        root=resolve_portable_path(card["root"], config),
        layout=card["layout"],
        class_names=list(card["class_names"]),
        images=records,
        quirks=[
            Quirk(
                str(q.kind),
                str(resolve_portable_path(str(q.path), config)),
                str(q.detail),
                str(q.image_id) or None,
            )
            for q in quirks.itertuples(index=False)
        ],
        quarantined=[],
        image_level_only=bool(card.get("image_level_only", False)),
        no_defect={
            key: value
            for key, value in card.get("no_defect", {"from_classes": [], "how": "none"}).items()
            if key != "n_images"
        },
    )

"""The in-memory dataset every loader returns: images, boxes, quirks, and the data card.

Whatever the layout on disk (Pascal VOC, YOLO txt, class folders), the rest of the study sees
these few records, so one description of the data serves every chapter and format.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import UnidentifiedImageError

from cascade_defect.locations import PathAnchors, portable_path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


ANNOTATION_SUFFIX = ".xml"


OnError = Literal["raise", "quarantine"]


NO_DEFECT = "no_defect"
"""The label of a defect-free image, in every table, prompt and answer of the study."""


class DatasetError(ValueError):
    """A file in the dataset cannot be used; the message names it."""


UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    ImportError,
)
"""What opening a corrupt image can raise. ``ImportError`` is there because ultralytics, once
imported, patches ``PIL.Image.open`` to retry unidentified files with an optional HEIF plugin,
and that retry raises ``ModuleNotFoundError`` when the plugin is not installed."""


def unreadable_reason(error: BaseException) -> str:
    """Why an image could not be opened, without the optional-plugin noise of a patched opener."""
    return "not an image file Pillow can identify" if isinstance(error, ImportError) else str(error)


@dataclass(frozen=True)
class Box:
    """One Pascal VOC object, in pixel coordinates of its image."""

    class_name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    truncated: bool = False
    difficult: bool = False


BOX_FIELDS = [f.name for f in fields(Box)]
"""The columns of a box in every box table (pixel corners, VOC flags), in :class:`Box` order."""


@dataclass
class ImageRecord:
    """One image with its image-level class and every box its annotation holds."""

    image_id: str
    class_name: str
    image_path: Path
    annotation_path: Path | None
    width: int
    height: int
    mode: str
    sha256: str
    pixel_hash: str
    boxes: list[Box] = field(default_factory=list)
    mask_path: Path | None = None
    """The pixel mask the boxes came from, for datasets labelled with masks."""


@dataclass(frozen=True)
class Quirk:
    """Something unusual about the data, kept for the data card."""

    kind: str
    path: str
    detail: str
    image_id: str | None = None


@dataclass
class Dataset:
    """The loaded dataset plus what was odd about it."""

    root: Path
    layout: str
    class_names: list[str]
    images: list[ImageRecord]
    quirks: list[Quirk]
    quarantined: list[Quirk]
    image_level_only: bool = False
    """No annotation files at all: the class folders are the only labels (no boxes)."""
    no_defect: dict = field(default_factory=lambda: {"from_classes": [], "how": "none"})
    """Which source classes became ``no_defect`` and how (see :mod:`cascade_defect.data.no_defect`)."""

    @property
    def label_names(self) -> list[str]:
        """The defect classes, then ``no_defect`` when the dataset has defect-free images."""
        has_free = any(r.class_name == NO_DEFECT for r in self.images)
        return [*self.class_names, NO_DEFECT] if has_free else list(self.class_names)

    def images_frame(self) -> pd.DataFrame:
        """One row per image (no boxes), the table later stages work from.

        ``mask_path`` is a column only when some image has a mask, so box-labelled datasets
        keep the table they always had.
        """
        frame = pd.DataFrame(
            [
                {
                    "image_id": r.image_id,
                    "class_name": r.class_name,
                    "image_path": str(r.image_path),
                    "annotation_path": str(r.annotation_path) if r.annotation_path else None,
                    "width": r.width,
                    "height": r.height,
                    "mode": r.mode,
                    "sha256": r.sha256,
                    "pixel_hash": r.pixel_hash,
                    "n_boxes": len(r.boxes),
                }
                for r in self.images
            ]
        )
        if any(r.mask_path is not None for r in self.images):
            frame["mask_path"] = [str(r.mask_path) if r.mask_path else None for r in self.images]
        return frame

    def boxes_frame(self) -> pd.DataFrame:
        """One row per box, with the image's own class beside the box's class."""
        rows = [
            {"image_id": r.image_id, "image_class": r.class_name, **asdict(b)}
            for r in self.images
            for b in r.boxes
        ]
        return pd.DataFrame(rows, columns=["image_id", "image_class", *BOX_FIELDS])

    def quirks_frame(self, where: PathAnchors | None = None) -> pd.DataFrame:
        """One row per quirk; with ``where``, paths as :func:`portable_path` writes them."""
        frame = pd.DataFrame(
            [asdict(q) for q in self.quirks], columns=["kind", "path", "detail", "image_id"]
        )
        if where is not None:
            frame["path"] = [portable_path(path, where) for path in frame["path"]]
        return frame

    def subsample(self, per_class: int, seed: int = 0) -> Dataset:
        """A smaller dataset with at most ``per_class`` images of each class (for smoke runs)."""
        rng = np.random.default_rng(seed)
        kept: list[ImageRecord] = []
        for name in self.label_names:
            members = [r for r in self.images if r.class_name == name]
            if len(members) > per_class:
                order = rng.permutation(len(members))[:per_class]
                members = [members[i] for i in sorted(order)]
            kept.extend(members)
        kept_ids = {r.image_id for r in kept}
        return Dataset(
            root=self.root,
            layout=self.layout,
            class_names=list(self.class_names),
            images=kept,
            quirks=[q for q in self.quirks if q.image_id is None or q.image_id in kept_ids],
            quarantined=list(self.quarantined),
            image_level_only=self.image_level_only,
            no_defect=dict(self.no_defect),
        )


def data_card(dataset: Dataset, where: PathAnchors | None = None) -> dict:
    """A JSON-ready summary: counts, box statistics and the quirks found.

    With ``where``, the dataset's root and quarantined files are written by
    :func:`portable_path` (``$CASCADE_DATA_DIR``), so the card reads the same on every machine.
    """

    def written(path: str | Path) -> str:
        return portable_path(path, where) if where is not None else str(path)

    images = dataset.images_frame()
    boxes = dataset.boxes_frame()
    per_image = images["n_boxes"] if len(images) else pd.Series(dtype=int)
    if len(boxes):
        widths = (boxes["xmax"] - boxes["xmin"]).to_numpy()
        heights = (boxes["ymax"] - boxes["ymin"]).to_numpy()
        sizes = images.set_index("image_id").loc[boxes["image_id"], ["width", "height"]].to_numpy()
        rel_area = widths * heights / (sizes[:, 0] * sizes[:, 1])
        box_stats = {
            "n_boxes": len(boxes),
            "by_box_class": boxes["class_name"].value_counts().sort_index().to_dict(),
            "per_image": {
                "min": int(per_image.min()),
                "mean": round(float(per_image.mean()), 3),
                "max": int(per_image.max()),
            },
            "relative_area": {
                "p10": round(float(np.percentile(rel_area, 10)), 4),
                "median": round(float(np.median(rel_area)), 4),
                "p90": round(float(np.percentile(rel_area, 90)), 4),
            },
            "truncated": int(boxes["truncated"].sum()),
            "difficult": int(boxes["difficult"].sum()),
        }
    else:
        box_stats = {"n_boxes": 0}
    quirk_counts = Counter(q.kind for q in dataset.quirks)
    masked = [r for r in dataset.images if r.mask_path is not None]
    mask_stats = (
        {
            "masks": {
                "n_masks": len(masked),
                "n_mask_boxes": sum(len(r.boxes) for r in masked),
                "n_dropped_components": quirk_counts.get("small_mask_component", 0),
            }
        }
        if masked
        else {}
    )
    return {
        "root": written(dataset.root),
        "layout": dataset.layout,
        "image_level_only": dataset.image_level_only,
        "class_names": dataset.class_names,
        "n_images": len(images),
        "n_annotated_images": int(images["annotation_path"].notna().sum()) if len(images) else 0,
        "images_per_class": images["class_name"]
        .value_counts()
        .reindex(dataset.label_names, fill_value=0)
        .to_dict()
        if len(images)
        else {},
        "image_sizes": images.groupby(["width", "height"])
        .size()
        .rename("n")
        .reset_index()
        .to_dict("records")
        if len(images)
        else [],
        "image_modes": images["mode"].value_counts().to_dict() if len(images) else {},
        "no_defect": {
            **dataset.no_defect,
            "n_images": int((images["class_name"] == NO_DEFECT).sum()) if len(images) else 0,
        },
        "boxes": box_stats,
        **mask_stats,
        "quirks": dict(sorted(quirk_counts.items())),
        "images_with_cross_class_boxes": len(
            {q.image_id for q in dataset.quirks if q.kind == "cross_class_box"}
        ),
        "quarantined": [{**asdict(q), "path": written(q.path)} for q in dataset.quarantined],
    }

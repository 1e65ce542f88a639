"""Pixel masks: production lines label defects by painting them, not by drawing boxes.

A mask is a png of the image's size, non-zero where the defect is. It sits beside its image
(``name.png`` next to ``name.jpg``, or ``name_mask.png`` / ``name_gt.png``) or in a folder
parallel to the images (``Imgs/`` or ``images/`` beside ``masks/`` or ``ground_truth/``, same
relative name). Mask files are told apart from images here, before anything is read, so a mask
is never taken as one more image; each 8-connected component of a mask becomes one box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cascade_defect.data.records import UNREADABLE_IMAGE_ERRORS, DatasetError, unreadable_reason

MASK_SUFFIX = ".png"
MASK_NAME_SUFFIXES = ("_mask", "_gt")
"""File-name endings that mark a png beside its image as that image's mask."""
IMAGE_FOLDERS = frozenset({"imgs", "images", "image"})
MASK_FOLDERS = frozenset({"masks", "mask", "ground_truth", "groundtruth"})
MASK_THRESHOLD = 127
"""A pixel of a 0-255 mask is defect above this value (half range)."""
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""Pixels touching at a corner belong to one defect (a thin diagonal crack is one component)."""


@dataclass(frozen=True)
class MaskDiscovery:
    """The image files once masks are set apart, each image's mask, and masks with no image."""

    images: list[Path]
    mask_by_image: dict[Path, Path]
    orphans: list[Path]


def discover_masks(root: Path, candidates: Sequence[Path]) -> MaskDiscovery:
    """Split ``candidates`` (every file with an image suffix) into images and their masks."""
    by_folder_stem: dict[tuple[Path, str], list[Path]] = {}
    for path in candidates:
        by_folder_stem.setdefault((path.parent, path.stem.lower()), []).append(path)
    mask_by_image: dict[Path, Path] = {}
    masks: set[Path] = set()
    # Beside the image: name.png next to name.jpg (any other image suffix), or name_mask.png.
    for path in candidates:
        if path.suffix.lower() != MASK_SUFFIX:
            continue
        stem = path.stem.lower()
        owner = _image_beside(by_folder_stem.get((path.parent, stem), []), path)
        if owner is None:
            for ending in MASK_NAME_SUFFIXES:
                if stem.endswith(ending) and len(stem) > len(ending):
                    siblings = by_folder_stem.get((path.parent, stem[: -len(ending)]), [])
                    owner = _image_beside(siblings, path)
                    if owner is not None:
                        break
        if owner is not None and owner not in mask_by_image:
            mask_by_image[owner] = path
            masks.add(path)
    # In a parallel folder: <...>/Imgs/<rel>/name.jpg and <...>/masks/<rel>/name.png.
    orphans: list[Path] = []
    image_folders: dict[Path, list[Path]] = {}
    for path in candidates:
        if path in masks or path.suffix.lower() != MASK_SUFFIX:
            continue
        parts = path.relative_to(root).parts[:-1]
        for index in range(len(parts) - 1, -1, -1):
            if parts[index].lower() not in MASK_FOLDERS:
                continue
            base = root.joinpath(*parts[:index])
            if base not in image_folders:
                image_folders[base] = [
                    child
                    for child in sorted(base.iterdir())
                    if child.is_dir() and child.name.lower() in IMAGE_FOLDERS
                ]
            twins = image_folders[base]
            if not twins:
                continue
            masks.add(path)
            rest = parts[index + 1 :]
            owner = None
            for twin in twins:
                folder = twin.joinpath(*rest)
                owner = _image_beside(by_folder_stem.get((folder, path.stem.lower()), []), path)
                if owner is not None:
                    break
            if owner is None or owner in mask_by_image:
                orphans.append(path)
            else:
                mask_by_image[owner] = path
            break
    images = [path for path in candidates if path not in masks]
    return MaskDiscovery(images=images, mask_by_image=mask_by_image, orphans=sorted(orphans))


def _image_beside(same_stem: Sequence[Path], mask: Path) -> Path | None:
    """The image among files sharing a stem with ``mask``: one that is not a png itself."""
    images = [p for p in same_stem if p != mask and p.suffix.lower() != MASK_SUFFIX]
    return images[0] if images else None


@dataclass(frozen=True)
class MaskComponent:
    """One connected defect region: pixel corners (inclusive-exclusive) and its area in pixels."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    area: int


def read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """The mask as a boolean array; a mask that cannot be read or has another size is an error."""
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("L"))
    except UNREADABLE_IMAGE_ERRORS as error:
        raise DatasetError(f"corrupt or unreadable mask: {unreadable_reason(error)}") from error
    if pixels.shape != (height, width):
        raise DatasetError(
            f"mask is {pixels.shape[1]}x{pixels.shape[0]}, its image is {width}x{height}"
        )
    # 0/1 label masks are used as they are; 0-255 masks are cut at half range, because masks
    # saved with smoothing or lossy compression carry faint edge values that are not defect.
    return pixels > (0 if pixels.max(initial=0) <= 1 else MASK_THRESHOLD)


def mask_components(mask: np.ndarray) -> list[MaskComponent]:
    """8-connected components of a boolean mask, in label order (top to bottom, left to right).

    Corners follow the stored Pascal VOC convention of the study: ``xmax - xmin`` is the width in
    pixels, so a single pixel at column 3, row 5 is ``(3, 5, 4, 6)``.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    return [
        MaskComponent(
            xmin=int(rows_cols[1].start),
            ymin=int(rows_cols[0].start),
            xmax=int(rows_cols[1].stop),
            ymax=int(rows_cols[0].stop),
            area=int(areas[label]),
        )
        for label, rows_cols in enumerate(ndimage.find_objects(labels), start=1)
        if rows_cols is not None
    ]

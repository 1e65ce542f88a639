"""Synthetic training tiles for the seed detector: the seeds' defects pasted onto their
defect-free seed tiles.

On a line most tiles are defect-free and only a few defects are labelled, so the seed detector
sees each defect on one background only. Pasting every labelled defect onto the defect-free seed
tiles shows it the same defects on many backgrounds, at no labelling cost. A defect is cut out by
its mask where the dataset has masks (``mask_path`` column), else by its box with feathered
edges; it lands at about the same place relative to the tile (breaks and frays sit at edges),
optionally mirrored, and is shifted to the brightness of where it lands, so the tile's own
lighting stays.

Written here because no maintained library does it for detection labels: ultralytics'
``copy_paste`` augmentation needs segmentation labels and only mixes objects between images of
one training batch, and albumentations has no copy-paste transform.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.data.masks import read_mask

log = logging.getLogger(__name__)

MARGIN_PX = 3
"""Background kept around a defect's box, so the feathered edge falls on background."""
FEATHER_SIGMA = 1.0
"""Gaussian blur of the paste mask: a hard edge would itself become a learnable cue."""
POSITION_JITTER = 0.1
"""Standard deviation of the landing place, as a fraction of the tile's width and height."""


@dataclass(frozen=True)
class DefectPiece:
    """One labelled defect cut out of a seed: brightness relative to its surround, and alpha."""

    class_name: str
    pixels: np.ndarray
    alpha: np.ndarray
    box: tuple[int, int, int, int]
    """The defect's box inside ``pixels`` (x0, y0, x1, y1)."""
    relative_origin: tuple[float, float]
    """Where ``pixels`` started in its seed, as a fraction of that seed's width and height."""


def synthesise_defects(
    seed_images: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    n_images: int,
    out_dir: str | Path,
    seed: int = 0,
    defects_per_image: Sequence[int] = (1, 2),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_images`` synthetic tiles written to ``out_dir``: ``(images, boxes)`` in the seeds'
    own columns (``image_id, path, width, height, class_name`` and pixel boxes).

    ``seed_images`` needs ``image_id, path, class_name`` (``no_defect`` for the defect-free
    tiles that become backgrounds) and may carry ``mask_path``. Each tile gets between
    ``defects_per_image`` pieces; the same inputs and ``seed`` give the same files.
    """
    missing = {"image_id", "path", "class_name"} - set(seed_images.columns)
    if missing:
        raise ValueError(f"seed_images lacks columns {sorted(missing)}")
    clean = seed_images[seed_images["class_name"].astype(str) == NO_DEFECT]
    if clean.empty:
        raise ValueError(
            "synthetic defects need defect-free seed images to paste onto, and these seeds have "
            "none; set annotation.synthetic_defects to 'auto' or 0 for an all-defective dataset"
        )
    pieces = defect_pieces(seed_images, seed_boxes)
    if not pieces:
        raise ValueError("synthetic defects need seed boxes, and these seeds have none")
    low, high = int(min(defects_per_image)), int(max(defects_per_image))
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backgrounds = [_read(Path(p)) for p in clean["path"]]
    images, boxes = [], []
    for index in range(n_images):
        image_id = f"synthetic_{index:05d}"
        canvas = backgrounds[int(rng.integers(len(backgrounds)))].astype(np.float64).copy()
        count = int(rng.integers(low, high + 1))
        for choice in rng.choice(len(pieces), size=min(count, len(pieces)), replace=False):
            box = _paste(canvas, pieces[int(choice)], rng)
            if box is not None:
                boxes.append(
                    {
                        "image_id": image_id,
                        "class_name": pieces[int(choice)].class_name,
                        "xmin": box[0],
                        "ymin": box[1],
                        "xmax": box[2],
                        "ymax": box[3],
                    }
                )
        path = out / f"{image_id}.png"
        Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).save(path)
        height, width = canvas.shape[:2]
        images.append(
            {
                "image_id": image_id,
                "path": str(path),
                "width": width,
                "height": height,
                "class_name": "synthetic",
            }
        )
    log.info("%d synthetic tiles with %d pasted defects", len(images), len(boxes))
    return pd.DataFrame(images), pd.DataFrame(
        boxes, columns=["image_id", "class_name", "xmin", "ymin", "xmax", "ymax"]
    )


def defect_pieces(seed_images: pd.DataFrame, seed_boxes: pd.DataFrame) -> list[DefectPiece]:
    """Every seed box as a piece; masked by its mask's pixels inside the box when there is one."""
    by_id = seed_images.set_index(seed_images["image_id"].astype(str))
    pieces = []
    for row in seed_boxes.itertuples(index=False):
        image_id = str(row.image_id)
        if image_id not in by_id.index:
            raise ValueError(f"seed box of image {image_id!r}, which is not among the seeds")
        seed_row = by_id.loc[image_id]
        pixels = _read(Path(seed_row["path"])).astype(np.float64)
        height, width = pixels.shape[:2]
        x0, y0 = max(int(np.floor(row.xmin)), 0), max(int(np.floor(row.ymin)), 0)
        x1, y1 = min(int(np.ceil(row.xmax)), width), min(int(np.ceil(row.ymax)), height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        cx0, cy0 = max(x0 - MARGIN_PX, 0), max(y0 - MARGIN_PX, 0)
        cx1, cy1 = min(x1 + MARGIN_PX, width), min(y1 + MARGIN_PX, height)
        inside = np.zeros((cy1 - cy0, cx1 - cx0), dtype=bool)
        inside[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = True
        mask_path = seed_row.get("mask_path") if "mask_path" in by_id.columns else None
        if isinstance(mask_path, str) and mask_path and Path(mask_path).is_file():
            mask = read_mask(Path(mask_path), width, height)[cy0:cy1, cx0:cx1]
            if (mask & inside).any():
                inside &= ndimage.binary_dilation(mask, iterations=2)
        alpha = ndimage.gaussian_filter(inside.astype(np.float64), FEATHER_SIGMA)
        crop = pixels[cy0:cy1, cx0:cx1]
        surround = alpha < 0.05
        base = crop[surround].mean(axis=0) if surround.any() else np.median(crop, axis=(0, 1))
        pieces.append(
            DefectPiece(
                class_name=str(row.class_name),
                pixels=crop - base,
                alpha=alpha,
                box=(x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0),
                relative_origin=(cx0 / width, cy0 / height),
            )
        )
    return pieces


def _paste(
    canvas: np.ndarray, piece: DefectPiece, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """Paste ``piece`` in place; its box on ``canvas``, or None when it does not fit."""
    pixels, alpha = piece.pixels, piece.alpha
    bx0, by0, bx1, by1 = piece.box
    if rng.random() < 0.5:  # mirrored left to right
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
        bx0, bx1 = pixels.shape[1] - bx1, pixels.shape[1] - bx0
    height, width = canvas.shape[:2]
    h, w = alpha.shape
    if h >= height or w >= width:
        return None
    x = int(
        np.clip(
            piece.relative_origin[0] * width + rng.normal(0, POSITION_JITTER * width), 0, width - w
        )
    )
    y = int(
        np.clip(
            piece.relative_origin[1] * height + rng.normal(0, POSITION_JITTER * height),
            0,
            height - h,
        )
    )
    if canvas.ndim == 2 and pixels.ndim == 3:  # a colour piece on a grey tile
        pixels = pixels.mean(axis=2)
    elif canvas.ndim == 3 and pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], canvas.shape[2], axis=2)
    region = canvas[y : y + h, x : x + w]
    surround = alpha < 0.05
    local = region[surround].mean(axis=0) if surround.any() else region.mean(axis=(0, 1))
    weight = alpha if region.ndim == 2 else alpha[..., None]
    canvas[y : y + h, x : x + w] = (1 - weight) * region + weight * (local + pixels)
    return x + bx0, y + by0, x + bx1, y + by1


def _read(path: Path) -> np.ndarray:
    """Greyscale images stay one channel; anything else becomes RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in ("L", "I;16", "1") else "RGB"))

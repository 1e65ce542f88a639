"""Tiny generated datasets shaped like NEU-DET, in each layout people have, with chosen quirks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cascade_defect.settings import NEU_CLASSES


def texture(class_index: int, variant: int, size: int = 64) -> np.ndarray:
    """A greyscale texture that differs by class (stripe angle and frequency) and by variant."""
    rng = np.random.default_rng(1000 * class_index + variant)
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * class_index / len(NEU_CLASSES)
    freq = 0.15 + 0.08 * class_index
    wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + variant)
    noise = rng.normal(0, 0.25, (size, size))
    return np.clip(128 + 80 * wave + 30 * noise, 0, 255).astype(np.uint8)


def voc_xml(
    filename: str, width: int, height: int, objects: Sequence[tuple[str, int, int, int, int]]
) -> str:
    parts = [
        "<annotation>",
        f"<filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>1</depth></size>",
    ]
    for name, x1, y1, x2, y2 in objects:
        parts.append(
            f"<object><name>{name}</name><truncated>0</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def make_neu_like(
    root: Path,
    *,
    layout: str = "flat",
    per_class: int = 6,
    classes: Sequence[str] = NEU_CLASSES,
    size: int = 64,
    duplicate: bool = False,
    cross_class_box: bool = False,
    missing_xml: bool = False,
    filename_without_extension: bool = False,
    corrupt_image: bool = False,
    broken_xml: bool = False,
) -> Path:
    """Write a NEU-like dataset; each flag plants one quirk. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for ci, name in enumerate(classes):
        for i in range(1, per_class + 1):
            stem = f"{name}_{i}"
            if layout == "flat":
                validation = i == per_class
                image_dir = root / ("Validation_Images" if validation else "IMAGES")
                xml_dir = root / ("Validation_Annotations" if validation else "ANNOTATIONS")
            elif layout == "kaggle":
                part = "validation" if i == per_class else "train"
                image_dir = root / part / "images" / name
                xml_dir = root / part / "annotations"
            elif layout == "subfolders":
                image_dir = root / name
                xml_dir = root / name
            else:
                raise ValueError(layout)
            image_dir.mkdir(parents=True, exist_ok=True)
            xml_dir.mkdir(parents=True, exist_ok=True)
            pixels = texture(ci, i, size)
            if duplicate and ci == 2 and i == 2:
                pixels = texture(ci, 1, size)  # pixel-identical to <class>_1
            Image.fromarray(pixels).convert("RGB").save(image_dir / f"{stem}.jpg", quality=95)
            objects = [(name, 4, 4, size // 2, size // 2)]
            if cross_class_box and ci == 2 and i == 3:
                objects.append((classes[1], size // 2, size // 2, size - 2, size - 2))
            if missing_xml and ci == 0 and i == 2:
                continue
            filename = stem if (filename_without_extension and i == 1) else f"{stem}.jpg"
            (xml_dir / f"{stem}.xml").write_text(voc_xml(filename, size, size, objects))
    if corrupt_image:
        target = next(root.rglob(f"{classes[3]}_1.jpg"))
        target.write_bytes(target.read_bytes()[:200])
    if broken_xml:
        target = next(root.rglob(f"{classes[4]}_1.xml"))
        target.write_text("<annotation><object><name>oops</name>")
    return root


def make_byo_dataset(
    root: Path,
    *,
    layout: str,
    classes: Sequence[str] = ("hole punch", "oil stain", "scratch"),
    per_class: int = 4,
    labelled: bool = True,
) -> Path:
    """A non-NEU dataset: spaces in class names, mixed PNG/JPG/BMP, grey and RGB, odd sizes.

    ``layout`` is ``classfolders`` (image-level labels only), ``voc`` (XMLs beside the images,
    no class folders) or ``yolo`` (``images/`` + ``labels/`` + ``classes.txt``). With
    ``labelled=False`` it is a flat folder of unlabelled images.
    """
    formats = (".png", ".jpg", ".bmp")
    sizes = ((96, 64), (80, 120), (100, 100))
    root.mkdir(parents=True, exist_ok=True)
    if layout == "yolo":
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for ci, name in enumerate(classes):
        for i in range(per_class):
            width, height = sizes[(ci + i) % len(sizes)]
            pixels = np.resize(texture(ci, i, max(width, height)), (height, width))
            image = Image.fromarray(pixels)
            if i % 2:
                image = image.convert("RGB")
            stem = f"{name.replace(' ', '-')}-{i}"
            suffix = formats[(ci + i) % len(formats)]
            box = (2, 2, width // 2, height // 2)
            if not labelled:
                image.save(root / f"unlabelled-{ci}-{i}{suffix}")
            elif layout == "classfolders":
                (root / name).mkdir(exist_ok=True)
                image.save(root / name / f"{stem}{suffix}")
            elif layout == "voc":
                image.save(root / f"{stem}{suffix}")
                (root / f"{stem}.xml").write_text(
                    voc_xml(f"{stem}{suffix}", width, height, [(name, *box)])
                )
            elif layout == "yolo":
                (root / "images").mkdir(exist_ok=True)
                (root / "labels").mkdir(exist_ok=True)
                image.save(root / "images" / f"{stem}{suffix}")
                cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
                w, h = (box[2] - box[0]) / width, (box[3] - box[1]) / height
                (root / "labels" / f"{stem}.txt").write_text(
                    f"{ci} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}\n"
                )
            else:
                raise ValueError(layout)
    return root


def make_named_images(
    root: Path, names: Sequence[str], *, class_index: int = 0, size: int = 48
) -> Path:
    """Images with exactly these file names (``007.png``, ``1e5.jpg``, ``my image.bmp``) in
    ``root``: file names that look like numbers, booleans or missing values must stay names."""
    root.mkdir(parents=True, exist_ok=True)
    for variant, name in enumerate(names):
        pixels = texture(class_index, variant, size)
        image = Image.fromarray(pixels)
        if Path(name).suffix.lower() in (".jpg", ".jpeg"):
            image = image.convert("RGB")
        image.save(root / name)
    return root


def make_mask_dataset(
    root: Path,
    masks: dict[str, dict[str, np.ndarray]],
    *,
    layout: str = "beside",
    rgb: bool = False,
    mask_ending: str = "",
) -> Path:
    """Images with pixel masks: ``masks[class][stem]`` is a 0/255 mask; the image has its size.

    ``layout`` is ``beside`` (``<class>/Imgs/<stem>.jpg`` + ``<stem><mask_ending>.png``, the
    Magnetic-tile layout) or ``parallel`` (``<class>/images/<stem>.jpg`` +
    ``<class>/masks/<stem>.png``). Images are greyscale, or RGB with ``rgb``.
    """
    for ci, (name, by_stem) in enumerate(masks.items()):
        image_dir = root / name / ("Imgs" if layout == "beside" else "images")
        mask_dir = image_dir if layout == "beside" else root / name / "masks"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i, (stem, mask) in enumerate(by_stem.items()):
            height, width = mask.shape
            pixels = np.resize(texture(ci, i, max(width, height)), (height, width))
            image = Image.fromarray(pixels)
            (image.convert("RGB") if rgb else image).save(image_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(mask.astype(np.uint8)).save(mask_dir / f"{stem}{mask_ending}.png")
    return root


def make_production_like(
    root: Path,
    *,
    defect_counts: dict[str, int] | None = None,
    n_free: int = 30,
    free_name: str = "Free",
    layout: str = "parallel",
    seed: int = 7,
) -> Path:
    """A line's data: a defect-free majority, imbalanced defect classes (one with a space in its
    name), pixel masks, numbered file names, sizes from 100 to 700 px of any aspect ratio, RGB
    and greyscale mixed, and one defect image whose mask is empty.

    Images are a shared plain texture; a defect is a small dark or bright blob whose look
    differs by class, drawn where its mask is. ``layout`` is as in :func:`make_mask_dataset`.
    File names are numbers, unique across classes (``1001.jpg``).
    """
    counts = defect_counts or {"crack": 12, "blow hole": 6, "fray": 4}
    rng = np.random.default_rng(seed)
    number = 1000
    classes = [*counts, free_name]
    for ci, name in enumerate(classes):
        n = n_free if name == free_name else counts[name]
        image_dir = root / name / ("Imgs" if layout == "beside" else "images")
        mask_dir = image_dir if layout == "beside" else root / name / "masks"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            number += 1
            width, height = (int(v) for v in rng.integers(100, 701, size=2))
            base = np.clip(120 + rng.normal(0, 12, (height, width)), 0, 255)
            mask = np.zeros((height, width), dtype=np.uint8)
            empty_mask = name != free_name and i == n - 1 and ci == 0
            if name != free_name and not empty_mask:
                side = max(6, min(width, height) // 8)
                x = int(rng.integers(0, width - side))
                y = int(rng.integers(0, height - side))
                mask[y : y + side, x : x + side * (1 + ci % 2)] = 255
                base[mask > 0] = 30 if ci % 2 == 0 else 230
            image = Image.fromarray(base.astype(np.uint8))
            if i % 3 == 0:
                image = image.convert("RGB")
            image.save(image_dir / f"{number}.jpg", quality=95)
            Image.fromarray(mask).save(mask_dir / f"{number}.png")
    return root

"""Dataset ingest: NEU-DET (and datasets shaped like it) from the layouts people actually have.

Real copies of NEU-DET differ: the original flat ``IMAGES/`` + ``ANNOTATIONS/`` (sometimes with
extra ``Validation_*`` folders), Kaggle's ``train|validation/images/<class>/`` +
``annotations/``, or plain class subfolders. The loader walks the tree once, pairs images and
Pascal VOC XMLs by file stem (or images and their pixel masks, whose connected components become
boxes), and reports every oddity as a :class:`Quirk` in the data card
instead of crashing or silently dropping anything. Broken files either stop the load with an
error that names the file (``on_error="raise"``, the default) or are quarantined and counted
(``on_error="quarantine"``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.data.masks import discover_masks, mask_components, read_mask
from cascade_defect.data.no_defect import (
    apply_no_defect,
    choose_no_defect,
    match_declared,
    report_unboxed_defect_images,
)
from cascade_defect.data.records import (
    ANNOTATION_SUFFIX,
    IMAGE_SUFFIXES,
    NO_DEFECT,
    UNREADABLE_IMAGE_ERRORS,
    Box,
    Dataset,
    DatasetError,
    ImageRecord,
    OnError,
    Quirk,
    unreadable_reason,
)
from cascade_defect.data.voc import _classes_from_voc, _parse_voc
from cascade_defect.data.yolo_txt import NAMES_FILES, _parse_yolo, yolo_class_names
from cascade_defect.hashing import sha256_bytes
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import DEFAULT_MIN_MASK_AREA, NEU_CLASSES

log = logging.getLogger(__name__)


# Folder names that describe a layout, never a class.
LAYOUT_FOLDERS = frozenset(
    name.lower()
    for name in (
        "images",
        "image",
        "annotations",
        "annotation",
        "labels",
        "train",
        "validation",
        "valid",
        "val",
        "test",
        "validation_images",
        "validation_annotations",
        "jpegimages",
        "neu-det",
        "neu_det",
        "imgs",
        "masks",
        "mask",
        "ground_truth",
        "groundtruth",
    )
)


def load_dataset(
    root: str | Path,
    *,
    class_names: Sequence[str] | None = NEU_CLASSES,
    on_error: OnError = "raise",
    progress: bool = True,
    min_mask_area: int = DEFAULT_MIN_MASK_AREA,
    no_defect_class: str = "auto",
) -> Dataset:
    """Load every image and annotation below ``root``.

    ``class_names`` lists the known classes (NEU-DET's six by default); an image's class is the
    nearest folder named after a class, else the longest known class that prefixes its file
    name (``rolled-in_scale_12`` is ``rolled-in_scale``, not ``rolled-in``). With
    ``class_names=None`` the classes are the names of the folders that hold images.

    Pixel masks (see :mod:`cascade_defect.data.masks`) are never read as images: each
    8-connected component of at least ``min_mask_area`` pixels becomes one box of the image's
    class; smaller ones are dropped and reported as ``small_mask_component`` quirks.

    ``no_defect_class`` (``auto``, ``none`` or a class name; see
    :mod:`cascade_defect.data.no_defect`) names the defect-free class, whose images become
    ``no_defect`` and which leaves ``class_names``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if on_error not in ("raise", "quarantine"):
        raise ValueError("on_error must be 'raise' or 'quarantine'")

    image_files, xml_files, yolo_files = _scan(root)
    found_masks = discover_masks(root, image_files)
    image_files, mask_by_image = found_masks.images, found_masks.mask_by_image
    if not image_files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {root}")
    yolo_names = yolo_class_names(root) if yolo_files else None
    if yolo_files and yolo_names is None:
        raise DatasetError(
            f"{root} holds YOLO label files but no names file ({', '.join(NAMES_FILES)})"
        )
    if class_names is not None:
        known = list(class_names)
        declared = no_defect_class.strip().lower()
        if declared not in ("auto", "none", NO_DEFECT):
            # A declared defect-free folder is a class for reading, even if not listed.
            folders = _classes_from_folders(root, image_files, past_layout_folders=True)
            if not any(declared == name.lower() for name in known):
                known.extend(
                    name for name in [match_declared(no_defect_class, folders)] if name not in known
                )
    elif yolo_names is not None:
        known = list(yolo_names)
    elif xml_files and not _has_class_folders(root, image_files):
        known = _classes_from_voc(xml_files)
    else:
        known = _classes_from_folders(root, image_files, past_layout_folders=bool(mask_by_image))
    image_level_only = not xml_files and not yolo_files and not mask_by_image
    yolo_by_stem = {path.stem.lower(): path for path in yolo_files}
    quirks: list[Quirk] = []
    quarantined: list[Quirk] = []

    def fail(kind: str, path: Path, detail: str, image_id: str | None = None) -> None:
        if on_error == "raise":
            raise DatasetError(f"{path}: {detail}")
        log.warning("quarantined %s: %s", path, detail)
        quarantined.append(Quirk(kind=kind, path=str(path), detail=detail, image_id=image_id))

    xml_by_stem = _index_annotations(root, xml_files, quirks)
    ids = _unique_ids(root, image_files, quirks)
    records: list[ImageRecord] = []
    used_annotations: set[Path] = set()
    for image_path in tqdm(
        image_files, desc="Reading images", disable=progress_disabled(progress), unit="img"
    ):
        image_id = ids[image_path]
        try:
            meta = _read_image(image_path)
        except DatasetError as error:
            fail("corrupt_image", image_path, str(error), image_id)
            continue
        stem = image_path.stem.lower()
        mask_path = mask_by_image.get(image_path)
        annotation_path = mask_path or xml_by_stem.get(stem) or yolo_by_stem.get(stem)
        annotation = None
        if mask_path is not None:
            try:
                mask = read_mask(mask_path, meta["width"], meta["height"])
            except DatasetError as error:
                fail("unreadable_mask", mask_path, str(error), image_id)
                continue
        elif annotation_path is not None:
            used_annotations.add(annotation_path)
            try:
                annotation = (
                    _parse_voc(annotation_path)
                    if annotation_path.suffix.lower() == ANNOTATION_SUFFIX
                    else {
                        "filename": "",
                        "width": None,
                        "height": None,
                        "objects": _parse_yolo(
                            annotation_path, yolo_names or known, meta["width"], meta["height"]
                        ),
                    }
                )
            except DatasetError as error:
                fail("unparsable_annotation", annotation_path, str(error), image_id)
                continue
        class_name = _image_class(root, image_path, known)
        if class_name is None and annotation is not None:
            # Detection datasets without class folders: the image's class is its dominant box class.
            class_name = _dominant_box_class(annotation["objects"], known)
        if class_name is None:
            fail(
                "unknown_class",
                image_path,
                f"cannot tell the class of this image: no folder, file-name prefix or box class "
                f"matches the known classes {known}",
                image_id,
            )
            continue
        boxes: list[Box] = []
        if mask_path is not None:
            boxes = _mask_boxes(mask, image_path, image_id, class_name, min_mask_area, quirks)
        elif annotation is None:
            if not image_level_only:
                quirks.append(
                    Quirk(
                        "missing_annotation",
                        str(image_path),
                        "no annotation with this file stem",
                        image_id,
                    )
                )
        else:
            boxes = _check_annotation(
                annotation, image_path, image_id, class_name, meta, known, quirks
            )
        records.append(
            ImageRecord(
                image_id=image_id,
                class_name=class_name,
                image_path=image_path,
                annotation_path=annotation_path,
                width=meta["width"],
                height=meta["height"],
                mode=meta["mode"],
                sha256=meta["sha256"],
                pixel_hash=meta["pixel_hash"],
                boxes=boxes,
                mask_path=mask_path,
            )
        )
    orphans = {*xml_by_stem.values(), *yolo_by_stem.values()} - used_annotations
    for orphan in sorted({*orphans, *found_masks.orphans}):
        quirks.append(Quirk("orphan_annotation", str(orphan), "no image with this file stem"))
    _report_duplicates(records, quirks)
    choice = choose_no_defect(
        no_defect_class, records, known, quirks, image_level_only=image_level_only
    )
    label_order = [*known, NO_DEFECT]
    known = apply_no_defect(records, known, choice, quirks)
    report_unboxed_defect_images(records, quirks)
    return Dataset(
        root=root,
        layout=_describe_layout(root, image_files, bool(yolo_files), image_level_only)
        + (" + pixel masks" if mask_by_image else ""),
        class_names=known,
        images=sorted(
            records, key=lambda r: (label_order.index(r.class_name), _natural_key(r.image_id))
        ),
        quirks=quirks,
        quarantined=quarantined,
        image_level_only=image_level_only,
        no_defect=choice.describe(),
    )


def _natural_key(text: str) -> list:
    """Sort ``crazing_2`` before ``crazing_10``."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _scan(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Images, Pascal VOC XMLs, and YOLO label files (``.txt`` inside a ``labels`` folder)."""
    images: list[Path] = []
    xmls: list[Path] = []
    yolo: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif suffix == ANNOTATION_SUFFIX:
            xmls.append(path)
        elif suffix == ".txt" and "labels" in (
            p.lower() for p in path.relative_to(root).parts[:-1]
        ):
            yolo.append(path)
    return images, xmls, yolo


def _classes_from_folders(
    root: Path, image_files: Iterable[Path], past_layout_folders: bool = False
) -> list[str]:
    """Names of the folders holding images; with ``past_layout_folders``, the nearest folder
    that is not a layout folder (``MT_Crack/Imgs/x.jpg`` is ``MT_Crack``), which mask datasets
    need and which NEU-DET's layouts keep as they were."""
    if past_layout_folders:
        names = sorted(
            {
                next((f for f in folders[::-1] if f.lower() not in LAYOUT_FOLDERS), "")
                for folders in (p.relative_to(root).parts[:-1] for p in image_files)
            }
            - {""}
        )
    else:
        names = sorted(
            {
                p.parent.name
                for p in image_files
                if p.parent != root and p.parent.name.lower() not in LAYOUT_FOLDERS
            }
        )
    if not names:
        raise DatasetError(
            f"cannot infer classes below {root}: put the images in one folder per class, "
            "or pass the class names"
        )
    return names


def _has_class_folders(root: Path, image_files: Iterable[Path]) -> bool:
    return any(
        p.parent != root and p.parent.name.lower() not in LAYOUT_FOLDERS for p in image_files
    )


def _image_class(root: Path, image_path: Path, known: Sequence[str]) -> str | None:
    lowered = {name.lower(): name for name in known}
    for folder in image_path.relative_to(root).parts[:-1][::-1]:
        if folder.lower() in lowered:
            return lowered[folder.lower()]
    stem = image_path.stem.lower()
    matches = [
        name
        for name in known
        if stem.startswith(name.lower())
        and (len(stem) == len(name) or not stem[len(name)].isalpha())
    ]
    return max(matches, key=len) if matches else None


def _dominant_box_class(objects: Sequence[dict], known: Sequence[str]) -> str | None:
    """The known class with the most boxes in an image (ties: the larger total area)."""
    lowered = {name.lower(): name for name in known}
    score: dict[str, tuple[int, float]] = {}
    for obj in objects:
        name = lowered.get(obj["name"].lower())
        if name is None:
            continue
        x1, y1, x2, y2 = obj["coords"]
        count, area = score.get(name, (0, 0.0))
        score[name] = (count + 1, area + max(0.0, x2 - x1) * max(0.0, y2 - y1))
    return max(score, key=lambda n: score[n]) if score else None


def _index_annotations(
    root: Path, xml_files: Sequence[Path], quirks: list[Quirk]
) -> dict[str, Path]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in xml_files:
        by_stem[path.stem.lower()].append(path)
    chosen: dict[str, Path] = {}
    for stem, paths in by_stem.items():
        chosen[stem] = paths[0]
        if len(paths) > 1:
            quirks.append(
                Quirk(
                    "duplicate_annotation",
                    str(paths[0]),
                    f"{len(paths)} XMLs share the stem {stem!r}; using {paths[0].relative_to(root)}",
                )
            )
    return chosen


def _unique_ids(root: Path, image_files: Sequence[Path], quirks: list[Quirk]) -> dict[Path, str]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in image_files:
        by_stem[path.stem].append(path)
    ids: dict[Path, str] = {}
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            ids[paths[0]] = stem
            continue
        for path in paths:
            ids[path] = f"{stem}@{path.parent.relative_to(root).as_posix().replace('/', '__')}"
        quirks.append(
            Quirk(
                "duplicate_image_id",
                str(paths[0]),
                f"{len(paths)} images share the stem {stem!r}; ids made unique with their folder",
                stem,
            )
        )
    return ids


def _read_image(path: Path) -> dict:
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"))
            mode = image.mode
            if (
                mode == "RGB"
                and np.array_equal(pixels[..., 0], pixels[..., 1])
                and np.array_equal(pixels[..., 1], pixels[..., 2])
            ):
                mode = "RGB(grey)"
    except UNREADABLE_IMAGE_ERRORS as error:
        raise DatasetError(f"corrupt or unreadable image: {unreadable_reason(error)}") from error
    height, width = pixels.shape[:2]
    pixel_digest = sha256_bytes(f"{width}x{height}".encode() + pixels.tobytes())
    return {
        "width": int(width),
        "height": int(height),
        "mode": mode,
        "sha256": sha256_bytes(data),
        "pixel_hash": pixel_digest,
    }


def _check_annotation(
    annotation: dict,
    image_path: Path,
    image_id: str,
    image_class: str,
    meta: dict,
    known: Sequence[str],
    quirks: list[Quirk],
) -> list[Box]:
    where = str(image_path)
    if annotation["filename"] and annotation["filename"] != image_path.name:
        detail = (
            "<filename> lacks the extension"
            if annotation["filename"] == image_path.stem
            else f"<filename> is {annotation['filename']!r}, the image is {image_path.name!r}"
        )
        quirks.append(Quirk("mismatched_filename", where, detail, image_id))
    if (
        annotation["width"]
        and annotation["height"]
        and (
            int(annotation["width"]) != meta["width"] or int(annotation["height"]) != meta["height"]
        )
    ):
        quirks.append(
            Quirk(
                "size_mismatch",
                where,
                f"XML says {annotation['width']:.0f}x{annotation['height']:.0f}, "
                f"image is {meta['width']}x{meta['height']}; boxes kept in image pixels",
                image_id,
            )
        )
    lowered = {name.lower(): name for name in known}
    boxes: list[Box] = []
    for obj in annotation["objects"]:
        name = lowered.get(obj["name"].lower(), obj["name"])
        xmin, ymin, xmax, ymax = obj["coords"]
        clipped = (
            max(0.0, xmin),
            max(0.0, ymin),
            min(float(meta["width"]), xmax),
            min(float(meta["height"]), ymax),
        )
        if clipped != (xmin, ymin, xmax, ymax):
            quirks.append(
                Quirk("box_clipped", where, f"box {obj['coords']} clipped to the image", image_id)
            )
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            quirks.append(
                Quirk(
                    "degenerate_box", where, f"box {obj['coords']} has no area; not used", image_id
                )
            )
            continue
        if name not in known:
            quirks.append(
                Quirk(
                    "unknown_box_class",
                    where,
                    f"box class {name!r} is not a known class; kept in the card, not exported",
                    image_id,
                )
            )
        elif name != image_class:
            quirks.append(
                Quirk(
                    "cross_class_box", where, f"{name!r} box in a {image_class!r} image", image_id
                )
            )
        boxes.append(Box(name, *clipped, truncated=obj["truncated"], difficult=obj["difficult"]))
    if annotation["objects"] and not any(b.class_name == image_class for b in boxes):
        quirks.append(
            Quirk(
                "no_own_class_box", where, f"no box of the image's class {image_class!r}", image_id
            )
        )
    return boxes


def _mask_boxes(
    mask: np.ndarray,
    image_path: Path,
    image_id: str,
    class_name: str,
    min_mask_area: int,
    quirks: list[Quirk],
) -> list[Box]:
    """One box of the image's class per mask component; tiny components are dropped, noted."""
    boxes: list[Box] = []
    for part in mask_components(mask):
        corners = (part.xmin, part.ymin, part.xmax, part.ymax)
        if part.area < min_mask_area:
            quirks.append(
                Quirk(
                    "small_mask_component",
                    str(image_path),
                    f"mask component {corners} of {part.area} px is under "
                    f"min_mask_area={min_mask_area}; not used",
                    image_id,
                )
            )
            continue
        boxes.append(Box(class_name, *(float(c) for c in corners)))
    return boxes


def _report_duplicates(records: Sequence[ImageRecord], quirks: list[Quirk]) -> None:
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.pixel_hash].append(record)
    for members in groups.values():
        if len(members) < 2:
            continue
        ids = sorted(m.image_id for m in members)
        same_bytes = len({m.sha256 for m in members}) == 1
        for member in members:
            quirks.append(
                Quirk(
                    "duplicate_image",
                    str(member.image_path),
                    f"pixel-identical{' (byte-identical)' if same_bytes else ''} to "
                    f"{', '.join(i for i in ids if i != member.image_id)}; kept in one split",
                    member.image_id,
                )
            )


def _describe_layout(
    root: Path, image_files: Sequence[Path], yolo: bool = False, image_level_only: bool = False
) -> str:
    if yolo:
        return "YOLO txt labels + names file"
    if image_level_only:
        return "class subfolders (image-level labels only)"
    folders = {p.parent.relative_to(root).as_posix() for p in image_files}
    lowered = {f.lower() for f in folders}
    if any(f.split("/")[-1] == "images" and "/" not in f for f in lowered) or "images" in lowered:
        extra = " + Validation_Images" if any("validation_images" in f for f in lowered) else ""
        return f"flat IMAGES/ + ANNOTATIONS/{extra}"
    if any(f.startswith(("train/", "validation/", "valid/", "val/")) for f in lowered):
        return "kaggle train|validation/images/<class>/ + annotations/"
    if folders == {"."}:
        return "flat folder (class from file-name prefix)"
    return "class subfolders"

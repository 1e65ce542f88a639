"""The defect-free class: declared by the user or detected from the labels, always ``no_defect``.

A production line's data is mostly good parts. Datasets keep them as one more class folder
(Magnetic-tile's ``MT_Free``, an ``OK`` or ``good`` folder) whose images carry no boxes and no
mask pixels. Treated as a sixth *defect* class, such a folder gets seeds, a YOLO class index and
pseudo boxes of a class that has no boxes, and its images dominate every class-balanced step.
So the loader maps it to the one label the whole study understands, ``no_defect``: the split
stratifies it, annotators may answer it, YOLO trains its images as background (empty label
files), and the audit and the comparison report defect recall and false alarms on it.

``no_defect_class`` is ``"auto"`` (detect), ``"none"`` (never map), or a class name. A declared
name matches a class exactly (case-insensitive) or as one of its ``_``/``-``/space separated
words, so ``Free`` finds ``MT_Free``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cascade_defect.data.records import NO_DEFECT, DatasetError, ImageRecord, Quirk

AUTO = "auto"
NONE = "none"


@dataclass(frozen=True)
class NoDefectChoice:
    """Which dataset classes became ``no_defect``, and whether the user said so or the labels did."""

    classes: tuple[str, ...] = ()
    how: str = NONE  # "declared", "detected" or "none"

    def describe(self) -> dict[str, object]:
        return {"from_classes": list(self.classes), "how": self.how}


def match_declared(declared: str, known: Sequence[str]) -> str:
    """The known class the user meant by ``declared``; an error that lists the classes if none or
    several match."""
    lowered = declared.strip().lower()
    exact = [name for name in known if name.lower() == lowered]
    if exact:
        return exact[0]
    words = [name for name in known if lowered in re.split(r"[_\-\s]+", name.lower())]
    if len(words) == 1:
        return words[0]
    if not words:
        raise DatasetError(
            f"no_defect_class={declared!r} matches none of the classes {list(known)}; "
            "name one of them, or use 'auto' or 'none'"
        )
    raise DatasetError(
        f"no_defect_class={declared!r} matches several classes {words}; name one of them exactly"
    )


def detect_box_free_classes(
    records: Sequence[ImageRecord], known: Sequence[str], quirks: Sequence[Quirk]
) -> list[str]:
    """Classes none of whose images carries a box or a dropped mask speck, when others do.

    Only meaningful where the dataset has box or mask labels at all; a dataset without any box
    has no class that stands out.
    """
    with_boxes = {r.class_name for r in records if r.boxes}
    specks = {q.image_id for q in quirks if q.kind == "small_mask_component"}
    with_specks = {r.class_name for r in records if r.image_id in specks}
    present = {r.class_name for r in records}
    if not with_boxes:
        return []
    return [
        name
        for name in known
        if name in present and name not in with_boxes and name not in with_specks
    ]


def choose_no_defect(
    setting: str,
    records: Sequence[ImageRecord],
    known: Sequence[str],
    quirks: Sequence[Quirk],
    *,
    image_level_only: bool,
) -> NoDefectChoice:
    """Resolve ``setting`` (``auto``, ``none`` or a class name) to the classes to map."""
    value = setting.strip()
    if value.lower() == NONE:
        return NoDefectChoice()
    if value.lower() == AUTO:
        if image_level_only:
            return NoDefectChoice()
        found = detect_box_free_classes(records, known, quirks)
        return NoDefectChoice(tuple(found), "detected") if found else NoDefectChoice()
    if value == NO_DEFECT:
        return NoDefectChoice()
    return NoDefectChoice((match_declared(value, known),), "declared")


def apply_no_defect(
    records: list[ImageRecord], known: list[str], choice: NoDefectChoice, quirks: list[Quirk]
) -> list[str]:
    """Relabel the chosen classes' images ``no_defect`` in place; return the defect classes.

    A declared class whose images do carry boxes keeps them out of training (they are not a
    defect class any more), and each such image is reported as a quirk rather than dropped.
    """
    if not choice.classes:
        return known
    mapped = set(choice.classes)
    for record in records:
        if record.class_name in mapped:
            if record.boxes:
                quirks.append(
                    Quirk(
                        "boxes_on_no_defect_image",
                        str(record.image_path),
                        f"{len(record.boxes)} boxes on an image of the defect-free class "
                        f"{record.class_name!r}; they are kept in the data card but the image "
                        "is treated as defect-free",
                        record.image_id,
                    )
                )
                record.boxes = []
            record.class_name = NO_DEFECT
    return [name for name in known if name not in mapped]


def report_unboxed_defect_images(records: Sequence[ImageRecord], quirks: list[Quirk]) -> None:
    """A quirk for each image of a defect class whose annotation (mask or file) holds no box.

    Such an image (an empty mask in a defect folder) trains as background although its class
    says it is defective; the data card counts them so a user can check those files.
    """
    for record in records:
        if record.class_name != NO_DEFECT and not record.boxes and record.annotation_path:
            quirks.append(
                Quirk(
                    "defect_image_without_boxes",
                    str(record.annotation_path),
                    f"the annotation of this {record.class_name!r} image holds no box (an "
                    "empty mask, or every component under min_mask_area)",
                    record.image_id,
                )
            )

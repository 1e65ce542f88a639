"""The labelled seed images as few-shot examples, built from chapter 02's seed listing."""

from __future__ import annotations

from pathlib import Path

from cascade_defect.annotate.mllm.prompt import SeedExample, normalise_box
from cascade_defect.data.split import SplitLayout, read_labelled_listing


def seed_examples(layout: SplitLayout) -> list[SeedExample]:
    """Seeds in class order, each with all of its ground-truth boxes normalised to [0, 1].

    Boxes of another class than the image are kept: they are what the annotator should also
    find in pool images. Defect-free seeds (``no_defect``, no boxes) come last, shown as such.
    """
    class_names = layout.label_names()
    images, boxes = read_labelled_listing(layout, "seed")
    order = {name: i for i, name in enumerate(class_names)}
    images = images.assign(_order=images["class_name"].map(order)).sort_values(
        ["_order", "image_id"]
    )
    examples = []
    for image in images.itertuples(index=False):
        own = boxes[boxes["image_id"] == image.image_id]
        normalised = tuple(
            normalise_box(
                str(box.class_name),
                box.xmin,
                box.ymin,
                box.xmax,
                box.ymax,
                image.width,
                image.height,
            )
            for box in own.itertuples(index=False)
        )
        examples.append(
            SeedExample(
                image_id=str(image.image_id),
                image=Path(image.path),
                class_name=str(image.class_name),
                boxes=normalised,
            )
        )
    return examples

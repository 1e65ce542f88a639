"""Drawing helpers the figure modules share: one colour per class or label source, and an image
with its boxes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Rectangle
from PIL import Image

from cascade_defect.data.records import ImageRecord

_PALETTE = sns.color_palette("colorblind", 10)


def class_colours(class_names: Sequence[str]) -> dict[str, tuple]:
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(class_names)}


def draw_boxes(
    ax: plt.Axes, record: ImageRecord, colours: dict[str, tuple], linewidth: float = 1.5
) -> None:
    """Show an image with its boxes; boxes of another class than the image are dashed."""
    with Image.open(record.image_path) as image:
        ax.imshow(np.asarray(image.convert("L")), cmap="gray", vmin=0, vmax=255)
    for box in record.boxes:
        ax.add_patch(
            Rectangle(
                (box.xmin, box.ymin),
                box.xmax - box.xmin,
                box.ymax - box.ymin,
                fill=False,
                edgecolor=colours.get(box.class_name, "red"),
                linewidth=linewidth,
                linestyle="-" if box.class_name == record.class_name else "--",
            )
        )
    ax.set_xticks([])
    ax.set_yticks([])


def _source_colours(sources: list[str]) -> dict[str, tuple]:
    return {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(sources)}

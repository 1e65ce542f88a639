"""Figures and tables for chapters 01 and 02: the dataset, its quirks and the three-way split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cascade_defect.data.records import Box, Dataset, ImageRecord
from cascade_defect.data.split import SplitLayout, read_labelled_listing
from cascade_defect.data.tables import read_table
from cascade_defect.plots.common import class_colours, draw_boxes


def sample_grid(dataset: Dataset, per_class: int = 4, seed: int = 0) -> Figure:
    """A few images of every class with their ground-truth boxes drawn."""
    colours = class_colours(dataset.class_names)
    rng = np.random.default_rng(seed)
    n_rows = len(dataset.class_names)
    fig, axes = plt.subplots(
        n_rows, per_class, figsize=(1.9 * per_class, 1.9 * n_rows), squeeze=False
    )
    for row, name in enumerate(dataset.class_names):
        members = [r for r in dataset.images if r.class_name == name]
        chosen = [members[i] for i in rng.permutation(len(members))[:per_class]]
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(chosen):
                draw_boxes(ax, chosen[col], colours)
                ax.set_title(chosen[col].image_id, fontsize=7)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("Samples per class (dashed: a box of another class)", fontsize=10)
    fig.tight_layout()
    return fig


def class_and_box_counts(
    images: pd.DataFrame, boxes: pd.DataFrame, class_names: Sequence[str]
) -> Figure:
    """Images per class next to boxes per box class, and boxes per image."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    images["class_name"].value_counts().reindex(class_names, fill_value=0).plot.bar(
        ax=axes[0], color="#4c72b0"
    )
    axes[0].set_title("Images per class")
    boxes["class_name"].value_counts().reindex(class_names, fill_value=0).plot.bar(
        ax=axes[1], color="#dd8452"
    )
    axes[1].set_title("Boxes per box class")
    counts = images["n_boxes"].value_counts().sort_index()
    axes[2].bar(counts.index.astype(int), counts.to_numpy(), color="#55a868")
    axes[2].set_title("Boxes per image")
    axes[2].set_xlabel("boxes")
    for ax in axes[:2]:
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def box_geometry(images: pd.DataFrame, boxes: pd.DataFrame, class_names: Sequence[str]) -> Figure:
    """Relative box width against height per class: where the defects sit in shape space."""
    if boxes.empty:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no boxes: image-level labels only", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sizes = images.set_index("image_id")[["width", "height"]]
    frame = boxes.join(sizes, on="image_id")
    frame["rel_w"] = (frame["xmax"] - frame["xmin"]) / frame["width"]
    frame["rel_h"] = (frame["ymax"] - frame["ymin"]) / frame["height"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.scatterplot(
        data=frame,
        x="rel_w",
        y="rel_h",
        hue="class_name",
        hue_order=list(class_names),
        s=10,
        alpha=0.6,
        ax=ax,
    )
    ax.set_xlabel("box width / image width")
    ax.set_ylabel("box height / image height")
    ax.set_title("Box shapes")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig


def split_bars(table: pd.DataFrame) -> Figure:
    """Stacked bars of seed / pool / test per class."""
    body = table.drop(index="total", errors="ignore").drop(columns="total", errors="ignore")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    body.plot.barh(stacked=True, ax=ax, color=["#c44e52", "#8c8c8c", "#4c72b0"])
    ax.set_xlabel("images")
    ax.set_ylabel("")
    ax.set_title("Split per class")
    ax.legend(title="split", fontsize=8)
    fig.tight_layout()
    return fig


def seed_gallery(layout: SplitLayout) -> Figure:
    """Thumbnails of the seeds with their boxes: what the annotator was shown."""
    images, boxes = read_labelled_listing(layout, "seed")
    class_names = layout.class_names()
    per_class = images.groupby("class_name").size().max()
    colours = class_colours(class_names)
    fig, axes = plt.subplots(
        len(class_names),
        per_class,
        figsize=(1.7 * per_class, 1.7 * len(class_names)),
        squeeze=False,
    )
    for row, name in enumerate(class_names):
        members = images[images["class_name"] == name].reset_index(drop=True)
        for col in range(per_class):
            ax = axes[row, col]
            if col >= len(members):
                ax.axis("off")
                continue
            image = members.iloc[col]
            record = ImageRecord(
                image_id=image.image_id,
                class_name=name,
                image_path=Path(image.path),
                annotation_path=None,
                width=int(image.width),
                height=int(image.height),
                mode="",
                sha256=image.sha256,
                pixel_hash="",
                boxes=[
                    Box(b.class_name, b.xmin, b.ymin, b.xmax, b.ymax)
                    for b in boxes[boxes["image_id"] == image.image_id].itertuples(index=False)
                ],
            )
            draw_boxes(ax, record, colours)
            ax.set_title(image.image_id, fontsize=7)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("The seed images in the prompt, with their boxes", fontsize=10)
    fig.tight_layout()
    return fig


def quirk_summary(quirks: pd.DataFrame) -> pd.DataFrame | str:
    """Quirks by kind, with a count and the first example of each."""
    if quirks.empty:
        return "no quirks found"
    return quirks.groupby("kind").agg(count=("path", "size"), example=("detail", "first"))


def quarantine_table(card: Mapping[str, object]) -> pd.DataFrame | str:
    """The files ``on_error="quarantine"`` set aside, from the data card."""
    quarantined = card.get("quarantined") or []
    return pd.DataFrame(quarantined) if quarantined else "nothing quarantined"


def duplicates_table(duplicates: pd.DataFrame) -> pd.DataFrame | str:
    """Pixel-identical images and the one split each group landed in."""
    return duplicates if len(duplicates) else "no pixel-identical images"


def listing_preview(listing: Path, n: int = 5) -> pd.DataFrame:
    """The first rows of a split listing: what its columns hold."""
    return read_table(listing).head(n)

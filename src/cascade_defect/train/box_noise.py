"""Controlled box noise: human boxes spoiled the ways pseudo-boxes go wrong, one way at a time
or several at once.

Pseudo-boxes miss defects, add boxes where there is none, sit loosely on the defects they find,
or wrap a cluster of texture defects in one big box. Training YOLOv8n on the human boxes spoiled
in exactly one of these ways, at a known level, prices each failure in test mAP50, so a box
strategy's audit figures (chapter 04: box recall, precision, mean best IoU) can be read as the
detector they will give. Seven kinds, each with one level (:class:`BoxNoise`), and mixes of
several (:class:`BoxNoiseMix`, how a real box source errs):

* ``drop``: that share of boxes removed (missed defects); an image may be left without boxes,
  and then trains as background, as an image wrongly answered defect-free would;
* ``miss``: the same boxes removed, but an image left without boxes is left out of training,
  as chapter 05 leaves out an image called defective that its box strategy gave no box (on a
  line, where most defective images carry one box, the two price a missed box very differently);
* ``false_boxes``: a Poisson number of false boxes per image with that mean, copied from a table
  of *real* false positives (the seed detector's proposals that match no truth box, so they
  look like what a detector mistakes for a defect), or, only when none are given, random boxes
  with the sizes of the truth boxes; each takes its image's class, as the seed-detector
  strategy gives every box the annotator's image class;
* ``jitter``: every box moved and rescaled so that its IoU with its original equals the level;
* ``fragments``: a Poisson number of partial boxes per truth box with that mean, each
  overlapping it at an IoU below 0.5 (so it finds nothing), copied from the seed detector's own
  fragments (:mod:`cascade_defect.train.box_mistakes`) placed on the truth box, or random ones
  when none are given; the truth box stays and the fragment takes its class;
* ``merge``: boxes of one class in one image whose gap is at most that fraction of the image
  merged into their enclosing box, until no two such boxes are left (how loosely drawn
  texture defects look);
* ``replace``: that share of boxes each swapped for a fragment of itself (the defect is marked,
  but by a box that does not find it).

Everything works on the ground-truth box table of chapter 02 (``image_id, class_name, xmin,
ymin, xmax, ymax`` in pixels, VOC flags) and returns that table, clipped to the image. The
spoiled pool becomes a label source through :func:`box_noise_source`, which hands it to the
machinery every other source uses (:func:`compose_source`, then :func:`write_source_dataset`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade_defect.metrics.box_quality import normalise_gt_boxes
from cascade_defect.metrics.detection import box_iou
from cascade_defect.train.box_mistakes import (
    NORMALISED_COLUMNS,
    RELATIVE_COLUMNS,
    jitter_box,
    merge_neighbours,
    place_fragment,
    random_fragment,
)
from cascade_defect.train.sources import (
    LABEL_COLUMNS,
    SourceDataset,
    SplitInputs,
    compose_source,
)

BoxNoiseKind = Literal["drop", "false_boxes", "fragments", "jitter", "merge", "miss", "replace"]
BOX_NOISE_KINDS: tuple[str, ...] = (
    "drop",
    "false_boxes",
    "fragments",
    "jitter",
    "merge",
    "miss",
    "replace",
)

#: Kinds that add boxes. In a :class:`BoxNoiseMix` they are drawn around the *original* truth
#: boxes (a detector also fragments the defects it misses), the others spoil the truth in turn.
ADDING_KINDS: frozenset[str] = frozenset({"false_boxes", "fragments"})

#: The ``kind`` of a :class:`BoxNoiseMix` row in the sweep's table.
MIX_KIND = "mix"


#: Source names of spoiled human boxes start with this, e.g. ``box_jitter_0.7``.
BOX_NOISE_PREFIX = "box_"


PIXEL_COLUMNS = ["xmin", "ymin", "xmax", "ymax"]


#: Allowed levels per kind: (lowest, highest, whether the lowest itself is allowed).
_LEVEL_RANGES: dict[str, tuple[float, float, bool]] = {
    "drop": (0.0, 1.0, True),
    "false_boxes": (0.0, 100.0, True),
    "fragments": (0.0, 100.0, True),
    "jitter": (0.0, 1.0, False),
    "merge": (0.0, 1.0, True),
    "miss": (0.0, 1.0, True),
    "replace": (0.0, 1.0, True),
}


#: The box-quality figure each kind moves, the axis on which its required quality is read.
QUALITY_AXIS: dict[str, str] = {
    "drop": "box_recall",
    "false_boxes": "box_precision",
    "fragments": "box_precision",
    "jitter": "mean_iou",
    "merge": "box_recall",
    "miss": "box_recall",
    "replace": "box_recall",
}


#: Draws of a false box that may overlap a truth box of its image before the last is kept.
_FALSE_BOX_ATTEMPTS = 10


class BoxNoise(BaseModel):
    """One controlled way of spoiling boxes at one level; ``seed`` makes it repeat exactly.

    ``level`` means: ``drop`` and ``miss`` the share of boxes removed (0-1); ``false_boxes``
    the mean number of false boxes added per image (0-100); ``fragments`` the mean number of
    partial boxes added per truth box (0-100); ``jitter`` the IoU every moved box keeps with its
    original (above 0, at most 1); ``merge`` the largest gap, as a fraction of the image's width
    (horizontally) or height (vertically), between two boxes that get merged (0-1); ``replace``
    the share of boxes that become a fragment of themselves (0-1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: BoxNoiseKind
    level: float = Field(allow_inf_nan=False)
    seed: int = 0

    @model_validator(mode="after")
    def _level_fits_kind(self) -> BoxNoise:
        low, high, closed = _LEVEL_RANGES[self.kind]
        if not (low <= self.level <= high if closed else low < self.level <= high):
            bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g}]"
            raise ValueError(f"a {self.kind} level must lie in {bounds}, got {self.level:g}")
        return self

    @classmethod
    def from_text(cls, text: str, seed: int = 0) -> BoxNoise:
        """``"jitter=0.7"`` -> ``BoxNoise(kind="jitter", level=0.7)``: how scripts take levels."""
        kind, sep, level = text.partition("=")
        if not sep:
            raise ValueError(f"expected KIND=LEVEL (kinds {list(BOX_NOISE_KINDS)}), got {text!r}")
        return cls.model_validate({"kind": kind.strip(), "level": float(level), "seed": seed})

    @property
    def source(self) -> str:
        """The label source's name, e.g. ``box_drop_0.2`` (a folder name, no seed in it)."""
        return f"{BOX_NOISE_PREFIX}{self.kind}_{self.level:g}"

    def describe(self) -> str:
        """One line for tables and logs."""
        if self.kind == "drop":
            return f"{self.level:.0%} of boxes dropped"
        if self.kind == "miss":
            return f"{self.level:.0%} of boxes dropped, images left without one left out"
        if self.kind == "false_boxes":
            return f"{self.level:g} false boxes per image on average (Poisson)"
        if self.kind == "fragments":
            return f"{self.level:g} partial boxes per truth box on average (Poisson, IoU < 0.5)"
        if self.kind == "jitter":
            return f"every box moved to IoU {self.level:g} with its original"
        if self.kind == "replace":
            return f"{self.level:.0%} of boxes replaced by a partial box of themselves (IoU < 0.5)"
        return f"same-class boxes at most {self.level:.0%} of the image apart merged"


class BoxNoiseMix(BaseModel):
    """Several kinds at once, as a real box source errs: ``drop=0.4+jitter=0.7+fragments=1.8``.

    One kind at a time prices each mistake alone; pseudo-boxes make all of them together. The
    spoiling kinds (drop, jitter, merge, replace) act on the truth boxes in the order given; the
    adding kinds (:data:`ADDING_KINDS`) draw their boxes around the original truth boxes, and
    the additions join at the end. Step ``i`` draws with seed ``seed + i``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[BoxNoise, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _each_kind_once(self) -> BoxNoiseMix:
        kinds = [step.kind for step in self.steps]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"a mix names each kind once, got {kinds}")
        return self

    @property
    def kind(self) -> str:
        return MIX_KIND

    @property
    def level(self) -> float:
        return math.nan

    @property
    def seed(self) -> int:
        return self.steps[0].seed

    @property
    def source(self) -> str:
        """E.g. ``box_mix_drop0.4_jitter0.7`` (a folder name, no seed in it)."""
        parts = "_".join(f"{step.kind}{step.level:g}" for step in self.steps)
        return f"{BOX_NOISE_PREFIX}{MIX_KIND}_{parts}"

    def describe(self) -> str:
        return "; ".join(step.describe() for step in self.steps)


def parse_box_noise(text: str, seed: int = 0) -> BoxNoise | BoxNoiseMix:
    """``"jitter=0.7"`` -> one kind; ``"drop=0.4+jitter=0.7"`` -> a :class:`BoxNoiseMix`."""
    parts = [part for part in text.split("+") if part.strip()]
    if len(parts) == 1:
        return BoxNoise.from_text(parts[0], seed)
    return BoxNoiseMix(
        steps=tuple(BoxNoise.from_text(part, seed + i) for i, part in enumerate(parts))
    )


def mix_text(source: str) -> str:
    """A mix's steps as ``--noise`` takes them (``drop=0.4+false_boxes=1.2``), read back from
    its source name (:attr:`BoxNoiseMix.source`), which the sweep's table keeps; kind names hold
    underscores, so they are matched whole. Empty when ``source`` names no mix."""
    prefix = f"{BOX_NOISE_PREFIX}{MIX_KIND}_"
    if not source.startswith(prefix):
        return ""
    kinds = "|".join(sorted(BOX_NOISE_KINDS, key=len, reverse=True))
    steps = re.findall(rf"(?:^|_)({kinds})([0-9][0-9.e+-]*)", source.removeprefix(prefix))
    return "+".join(f"{kind}={level}" for kind, level in steps)


def image_size_table(boxes: pd.DataFrame, image_sizes: pd.DataFrame | None = None) -> pd.DataFrame:
    """``width, height`` per image id (text), from ``image_sizes`` or the boxes' own columns."""
    if image_sizes is None:
        if not {"width", "height"} <= set(boxes.columns):
            raise ValueError("boxes need width and height columns when no image_sizes are given")
        image_sizes = boxes[["image_id", "width", "height"]]
    sizes = image_sizes[["image_id", "width", "height"]].copy()
    sizes["image_id"] = sizes["image_id"].astype(str)
    sizes = sizes.drop_duplicates("image_id").set_index("image_id").astype(float)
    unknown = sorted(set(boxes["image_id"].astype(str)) - set(sizes.index))
    if unknown:
        raise ValueError(f"{len(unknown)} images with boxes have no known size, e.g. {unknown[0]}")
    if not (sizes > 0).all().all():
        raise ValueError("image widths and heights must be positive")
    return sizes


def clip_to_images(boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """Boxes cut to their image; a box left without area (wholly outside) is removed."""
    frame = boxes.copy()
    width = frame["image_id"].map(sizes["width"])
    height = frame["image_id"].map(sizes["height"])
    for column, limit in (("xmin", width), ("xmax", width), ("ymin", height), ("ymax", height)):
        frame[column] = frame[column].astype(float).clip(lower=0.0, upper=limit)
    keep = (frame["xmax"] > frame["xmin"]) & (frame["ymax"] > frame["ymin"])
    return frame[keep]


def degrade_boxes(
    boxes: pd.DataFrame,
    noise: BoxNoise | BoxNoiseMix,
    *,
    false_positive_pool: pd.DataFrame | None = None,
    fragment_pool: pd.DataFrame | None = None,
    image_sizes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ground-truth box table spoiled by ``noise``, in the same columns, inside each image.

    ``image_sizes`` (``image_id, width, height``) gives each image's size and, for
    ``false_boxes``, the images that receive false boxes (images without any box too); without
    it the boxes' own ``width, height`` columns are used. ``false_positive_pool`` holds real
    false positives in normalised corners (``x1, y1, x2, y2``, optionally ``class_name``), as
    :func:`~cascade_defect.train.box_mistakes.find_false_positives` makes them; ``fragment_pool``
    real fragments relative to their truth box, as
    :func:`~cascade_defect.train.box_mistakes.find_fragments` makes them. Boxes are first cut to
    their image, then spoiled, then cut again; the same input and seed always give the same output.
    """
    missing = {"image_id", "class_name", *PIXEL_COLUMNS} - set(boxes.columns)
    if missing:
        raise ValueError(f"boxes lack columns {sorted(missing)}")
    sizes = image_size_table(boxes, image_sizes)
    frame = boxes.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    frame = clip_to_images(frame, sizes).reset_index(drop=True)
    pools = {"false_boxes": false_positive_pool, "fragments": fragment_pool}
    if isinstance(noise, BoxNoiseMix):
        truth, added = frame, []
        for step in noise.steps:
            if step.kind in ADDING_KINDS:
                grown = _spoil(frame, step, sizes, pools)
                added.append(grown.iloc[len(frame) :])
            else:
                truth = _spoil(truth, step, sizes, pools).reset_index(drop=True)
        spoiled = pd.concat([truth, *added], ignore_index=True)
    else:
        spoiled = _spoil(frame, noise, sizes, pools)
    spoiled = clip_to_images(spoiled, sizes)
    spoiled = spoiled.sort_values("image_id", kind="stable").reset_index(drop=True)
    return spoiled[list(boxes.columns)]


def _spoil(
    frame: pd.DataFrame,
    noise: BoxNoise,
    sizes: pd.DataFrame,
    pools: dict[str, pd.DataFrame | None],
) -> pd.DataFrame:
    """One kind on a clipped, sorted table; adding kinds append their boxes after its rows."""
    rng = np.random.default_rng(noise.seed)
    if noise.kind in ("drop", "miss"):
        return _drop(frame, noise.level, rng)
    if noise.kind == "false_boxes":
        return _add_false_boxes(frame, noise.level, rng, sizes, pools["false_boxes"])
    if noise.kind == "fragments":
        return _add_fragments(frame, noise.level, rng, pools["fragments"])
    if noise.kind == "replace":
        return _replace(frame, noise.level, rng, pools["fragments"])
    if noise.kind == "jitter":
        return _jitter(frame, noise.level, rng, sizes)
    return _merge(frame, noise.level, sizes)


def _drop(frame: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Remove exactly ``round(share * n)`` boxes, drawn at random (like the class flips)."""
    n_drop = round(share * len(frame))
    chosen = rng.choice(len(frame), size=n_drop, replace=False)
    return frame.drop(index=frame.index[np.sort(chosen)])


def _add_false_boxes(
    frame: pd.DataFrame,
    mean: float,
    rng: np.random.Generator,
    sizes: pd.DataFrame,
    pool: pd.DataFrame | None,
) -> pd.DataFrame:
    """Poisson(``mean``) false boxes per image, real ones from ``pool`` when it has any.

    A drawn box that overlaps a truth box of its image at IoU 0.5 or more would be a duplicate,
    not a false box, so it is drawn again (up to ten times; the tenth draw is kept, so the count
    stays Poisson). Real false positives keep their place in the image (detectors err at
    particular places, such as edges); random ones take the width and height of a random truth
    box and a uniform position.
    """
    real = pool is not None and len(pool) > 0
    if real:
        absent = set(NORMALISED_COLUMNS) - set(pool.columns)
        if absent:
            raise ValueError(f"false_positive_pool lacks columns {sorted(absent)}")
        geometry = pool[NORMALISED_COLUMNS].to_numpy(float).clip(0.0, 1.0)
        pool_classes = pool["class_name"].astype(str).to_numpy() if "class_name" in pool else None
    else:
        if frame.empty:
            raise ValueError("random false boxes take the truth's sizes, and there are no boxes")
        width = frame["image_id"].map(sizes["width"]).to_numpy()
        height = frame["image_id"].map(sizes["height"]).to_numpy()
        geometry = np.column_stack(
            [
                (frame["xmax"] - frame["xmin"]).to_numpy() / width,
                (frame["ymax"] - frame["ymin"]).to_numpy() / height,
            ]
        ).clip(0.0, 1.0)
        pool_classes = None
    truth_classes = frame["class_name"].astype(str).to_numpy()
    by_image = {key: group for key, group in frame.groupby("image_id", sort=False)}
    images = sorted(sizes.index)
    counts = rng.poisson(mean, size=len(images))
    rows: list[dict] = []
    for image_id, count in zip(images, counts, strict=True):
        if count == 0:
            continue
        scale = np.array([sizes.at[image_id, "width"], sizes.at[image_id, "height"]] * 2)
        truth = by_image.get(image_id)
        truth_boxes = np.empty((0, 4)) if truth is None else truth[PIXEL_COLUMNS].to_numpy(float)
        image_class = None if truth is None else str(truth["class_name"].mode().iloc[0])
        for _ in range(int(count)):
            for _attempt in range(_FALSE_BOX_ATTEMPTS):
                pick = int(rng.integers(len(geometry)))
                if real:
                    corners = geometry[pick]
                else:
                    w, h = geometry[pick]
                    x1, y1 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
                    corners = np.array([x1, y1, x1 + w, y1 + h])
                box = corners * scale
                if not len(truth_boxes) or box_iou(box[None], truth_boxes).max() < 0.5:
                    break
            if image_class is not None:
                name = image_class
            elif pool_classes is not None:
                name = pool_classes[pick]
            else:
                name = truth_classes[int(rng.integers(len(truth_classes)))]
            rows.append(dict(zip(PIXEL_COLUMNS, box.tolist(), strict=True)))
            rows[-1].update({"image_id": image_id, "class_name": name})
    added = pd.DataFrame(rows, columns=["image_id", "class_name", *PIXEL_COLUMNS])
    for flag in ("truncated", "difficult"):
        if flag in frame.columns:
            added[flag] = False
    for column in ("width", "height"):
        if column in frame.columns:
            added[column] = added["image_id"].map(sizes[column])
    return pd.concat([frame, added], ignore_index=True) if len(added) else frame


def _fragment_geometry(pool: pd.DataFrame | None) -> np.ndarray | None:
    """The pool's fragments relative to their truth box, or None (random fragments)."""
    if pool is None or not len(pool):
        return None
    absent = set(RELATIVE_COLUMNS) - set(pool.columns)
    if absent:
        raise ValueError(f"fragment_pool lacks columns {sorted(absent)}")
    return pool[RELATIVE_COLUMNS].to_numpy(float)


def _draw_fragment(
    geometry: np.ndarray | None,
    truth_box: np.ndarray,
    image_truth: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """A fragment placed on ``truth_box`` that reaches IoU 0.5 with no box of ``image_truth``.

    One that would (possible where boxes crowd, or after cutting to the image) finds a defect,
    so it is drawn again, up to ten times; the tenth draw is kept, so counts stay as drawn.
    """
    for _attempt in range(_FALSE_BOX_ATTEMPTS):
        if geometry is not None:
            relative = geometry[int(rng.integers(len(geometry)))]
        else:
            relative = random_fragment(rng)
        box = place_fragment(relative, truth_box)
        if box_iou(box[None], image_truth).max() < 0.5:
            break
    return box


def _add_fragments(
    frame: pd.DataFrame, mean: float, rng: np.random.Generator, pool: pd.DataFrame | None
) -> pd.DataFrame:
    """Poisson(``mean``) fragments per truth box, placed on it; real ones from ``pool`` if any."""
    geometry = _fragment_geometry(pool)
    corners = frame[PIXEL_COLUMNS].to_numpy(float)
    by_image = {key: rows for key, rows in frame.groupby("image_id", sort=False).indices.items()}
    counts = rng.poisson(mean, size=len(frame))
    rows: list[dict] = []
    for position, count in enumerate(counts):
        image_truth = corners[by_image[frame.at[position, "image_id"]]]
        for _ in range(int(count)):
            box = _draw_fragment(geometry, corners[position], image_truth, rng)
            added = frame.iloc[position].to_dict()
            added.update(dict(zip(PIXEL_COLUMNS, box.tolist(), strict=True)))
            for flag in ("truncated", "difficult"):
                if flag in added:
                    added[flag] = False
            rows.append(added)
    if not rows:
        return frame
    return pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)


def _replace(
    frame: pd.DataFrame, share: float, rng: np.random.Generator, pool: pd.DataFrame | None
) -> pd.DataFrame:
    """Exactly ``round(share * n)`` boxes, drawn at random, each swapped for a fragment of itself.

    The defect is still marked, but by a box that finds it at IoU below 0.5: what a detector
    gives when it boxes only part of a defect and nothing else there.
    """
    geometry = _fragment_geometry(pool)
    corners = frame[PIXEL_COLUMNS].to_numpy(float)
    by_image = {key: rows for key, rows in frame.groupby("image_id", sort=False).indices.items()}
    chosen = np.sort(rng.choice(len(frame), size=round(share * len(frame)), replace=False))
    replaced = frame.copy()
    for position in chosen:
        image_truth = corners[by_image[frame.at[position, "image_id"]]]
        box = _draw_fragment(geometry, corners[position], image_truth, rng)
        replaced.loc[position, PIXEL_COLUMNS] = box
        for flag in ("truncated", "difficult"):
            if flag in replaced.columns:
                replaced.loc[position, flag] = False
    return replaced


def _jitter(
    frame: pd.DataFrame, target_iou: float, rng: np.random.Generator, sizes: pd.DataFrame
) -> pd.DataFrame:
    """Every box through :func:`jitter_box`, in table order (so the seed fixes each move)."""
    moved = frame.copy()
    corners = frame[PIXEL_COLUMNS].to_numpy(float)
    width = frame["image_id"].map(sizes["width"]).to_numpy()
    height = frame["image_id"].map(sizes["height"]).to_numpy()
    out = np.array(
        [jitter_box(corners[i], target_iou, rng, width[i], height[i]) for i in range(len(frame))]
    ).reshape(-1, 4)
    moved[PIXEL_COLUMNS] = out
    return moved


def _merge(frame: pd.DataFrame, max_gap: float, sizes: pd.DataFrame) -> pd.DataFrame:
    """Each image's same-class neighbours as one enclosing box (first member's other fields)."""
    parts = []
    for (image_id, _), group in frame.groupby(["image_id", "class_name"], sort=True):
        corners = group[PIXEL_COLUMNS].to_numpy(float)
        width, height = sizes.at[image_id, "width"], sizes.at[image_id, "height"]
        for members in merge_neighbours(corners, max_gap, width, height):
            row = group.iloc[[members[0]]].copy()
            row[PIXEL_COLUMNS] = [[*corners[members, :2].min(0), *corners[members, 2:].max(0)]]
            if "truncated" in row and len(members) > 1:
                row["truncated"] = bool(group["truncated"].iloc[members].astype(bool).any())
            parts.append(row)
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[0:0]


def yolo_labels(
    boxes: pd.DataFrame, image_sizes: pd.DataFrame, class_names: Sequence[str]
) -> pd.DataFrame:
    """Pixel boxes as YOLO labels (:data:`LABEL_COLUMNS`); boxes of unknown classes left out.

    The same normalisation as chapter 02's label files (:func:`normalise_gt_boxes`), so the
    clean table gives the ``human`` source's labels.
    """
    index = {name: i for i, name in enumerate(class_names)}
    known = boxes[boxes["class_name"].isin(list(index))].copy()
    known["image_id"] = known["image_id"].astype(str)
    sizes = image_sizes[["image_id", "width", "height"]].copy()
    sizes["image_id"] = sizes["image_id"].astype(str)
    norm = normalise_gt_boxes(known, sizes)
    labels = pd.DataFrame(
        {
            "image_id": norm["image_id"].astype(str),
            "class_id": norm["class_name"].map(index).astype(int),
            "cx": (norm["x1"] + norm["x2"]) / 2,
            "cy": (norm["y1"] + norm["y2"]) / 2,
            "w": norm["x2"] - norm["x1"],
            "h": norm["y2"] - norm["y1"],
        },
        columns=LABEL_COLUMNS,
    )
    return labels[(labels["w"] > 0) & (labels["h"] > 0)].reset_index(drop=True)


def box_noise_source(
    noise: BoxNoise,
    split: SplitInputs,
    truth_boxes: pd.DataFrame,
    image_sizes: pd.DataFrame,
    *,
    holdout: frozenset[str],
    false_positive_pool: pd.DataFrame | None = None,
    fragment_pool: pd.DataFrame | None = None,
) -> tuple[SourceDataset, pd.DataFrame]:
    """The ``human`` source with its pool boxes spoiled by ``noise``, and the spoiled pool boxes.

    Like the ``noise_<rate>`` sources, only the pool is spoiled: every pool image stays (one
    that lost all its boxes trains as background; under ``miss`` it is left out, listed in the
    dataset's ``excluded`` as ``no_boxes``), the seeds keep their true boxes and the
    hold-out images are the ones every source uses. ``truth_boxes`` is the pool's box table
    (``read_pool_ground_truth``), ``image_sizes`` the pool listing's ``width, height``.
    """
    pool_ids = list(split.pool["image_id"].astype(str))
    in_pool = set(pool_ids)
    sizes = image_sizes.assign(image_id=image_sizes["image_id"].astype(str))
    sizes = sizes[sizes["image_id"].isin(in_pool)][["image_id", "width", "height"]]
    truth = truth_boxes[truth_boxes["image_id"].astype(str).isin(in_pool)]
    degraded = degrade_boxes(
        truth,
        noise,
        false_positive_pool=false_positive_pool,
        fragment_pool=fragment_pool,
        image_sizes=sizes,
    )
    labels = yolo_labels(degraded, sizes, split.class_names)
    steps = noise.steps if isinstance(noise, BoxNoiseMix) else (noise,)
    excluded = None
    if any(step.kind == "miss" for step in steps):
        emptied = set(truth["image_id"].astype(str)) - set(labels["image_id"].astype(str))
        excluded = pd.DataFrame({"image_id": sorted(emptied), "reason": "no_boxes"})
        pool_ids = [image_id for image_id in pool_ids if image_id not in emptied]
    dataset = compose_source(
        noise.source,
        split,
        pool_ids=pool_ids,
        pool_labels=labels,
        holdout=holdout,
        excluded=excluded,
    )
    return dataset, degraded

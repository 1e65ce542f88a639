"""The ``classifier_cam`` box strategy: boxes around where an image classifier looks.

The annotator's image classes are far better than any few-shot box, and a classifier trained on
them has to look at the defect to name it. Its class-activation map (CAM, Zhou et al., 2016)
shows where: YOLOv8n-cls ends in ``Classify``, whose ``conv`` (a 1x1 convolution to 1,280
channels) gives a feature map ``F`` (1280 x h x w) that is average-pooled and fed to one
``linear`` layer. A class's logit is therefore the spatial mean of ``CAM_c = sum_k W[c, k] F_k``
(plus the bias), so ``CAM_c`` says how much each position adds to that class. ``F`` is taken with
a forward hook on ``Classify.conv`` during an ordinary forward pass; ``W`` is
``Classify.linear.weight``.

Each pool image's map, for the class the annotator gave it, is computed at ``cam_imgsz`` (larger
than the training size: the network is fully convolutional, and a 256-px input gives an 8x8
map where 128 px gives 4x4), upsampled bilinearly, thresholded at a fraction of its maximum and
cut into connected components (``scipy.ndimage``); each component's bounding box is a box. The
fraction and the smallest box kept are calibrated on the seeds: the pair with the highest mean
best IoU between the seed boxes and the seed images' CAM boxes.

The classifier is chapter 05's (``CamBoxSettings.weights``) or, inside chapter 03, a small
YOLOv8n-cls fine-tuned on the seeds plus the annotator's most confident pool images per class,
with the package's classification training (:func:`~cascade_defect.train.yolo.train_yolo`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.box_settings import CamBoxSettings
from cascade_defect.metrics.box_quality import normalise_gt_boxes
from cascade_defect.metrics.detection import box_iou

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- maps


def _rgb(path: str, imgsz: int) -> np.ndarray:
    """The image resized straight to a square (no crop, so the map covers the whole image), RGB
    in [0, 1] as ultralytics' classifier reads it (mean 0, std 1)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((imgsz, imgsz), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def class_activation_maps(
    weights: str | Path,
    images: pd.DataFrame,
    classes: Mapping[str, str],
    *,
    imgsz: int,
    device: str = "cpu",
    config_dir: Path | None = None,
    batch: int = 32,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Each image's CAM (``imgsz`` x ``imgsz``) for its class in ``classes``; images whose class
    the classifier does not know (or ``no_defect``) get none. See the module docstring."""
    import torch
    import torch.nn.functional as functional
    from tqdm.auto import tqdm

    from cascade_defect.progress import progress_disabled
    from cascade_defect.train.yolo_env import import_ultralytics

    # Like the feature extractor: ultralytics' settings under YOLO_CONFIG_DIR, else here.
    import_ultralytics(
        config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path.cwd() / ".ultralytics"
    )
    from ultralytics import YOLO

    yolo = YOLO(str(weights))
    index = {str(name): int(i) for i, name in yolo.names.items()}
    net = yolo.model.float().eval().to(device)
    todo = [
        (str(r.image_id), str(r.path))
        for r in images.itertuples(index=False)
        if classes.get(str(r.image_id), NO_DEFECT) in index
    ]
    out: dict[str, np.ndarray] = {}
    with (
        torch.inference_mode(),
        tqdm(total=len(todo), desc="CAM", unit="img", disable=progress_disabled(progress)) as bar,
    ):
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            tensor = torch.from_numpy(np.stack([_rgb(p, imgsz) for _, p in chunk])).to(device)
            rows = [index[classes[i]] for i, _ in chunk]
            cams = functional.interpolate(
                raw_cams(net, tensor, rows)[:, None],
                size=(imgsz, imgsz),
                mode="bilinear",
                align_corners=False,
            )[:, 0]
            for (image_id, _), cam in zip(chunk, cams.cpu().numpy(), strict=True):
                out[image_id] = cam.astype(np.float32)
            bar.update(len(chunk))
    return out


def raw_cams(net: Any, tensor: Any, rows: Sequence[int]) -> Any:
    """``CAM_c`` at the head's resolution (n, h, w) for class index ``rows[i]`` of image ``i``:
    ``Classify.linear.weight[c]`` times the ``Classify.conv`` output, taken by a forward hook
    during an ordinary forward pass (its mean plus the class's bias is the class's logit)."""
    import torch

    head = net.model[-1]
    captured: list[Any] = []
    hook = head.conv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        net(tensor)
    finally:
        hook.remove()
    fmap = captured[-1]  # (n, 1280, h, w)
    weight = head.linear.weight.detach()[torch.as_tensor(list(rows), device=fmap.device)]
    return torch.einsum("nk,nkhw->nhw", weight, fmap)


def boxes_from_map(
    cam: np.ndarray, threshold: float, min_area: float = 0.0, max_boxes: int = 5
) -> list[Proposal]:
    """Bounding boxes (normalised corners) of the connected regions where ``cam`` reaches
    ``threshold`` times its maximum, each at least ``min_area`` of the image; strongest first
    (score: the region's peak as a fraction of the map's), at most ``max_boxes``."""
    from scipy import ndimage

    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0:
        return []
    height, width = cam.shape
    labels, _ = ndimage.label(cam >= threshold * peak)
    found = []
    for region, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        rows, cols = slices
        box = (cols.start / width, rows.start / height, cols.stop / width, rows.stop / height)
        if (box[2] - box[0]) * (box[3] - box[1]) < min_area:
            continue
        score = float(cam[slices][labels[slices] == region].max()) / peak
        found.append(Proposal(box, score))
    return sorted(found, key=lambda p: -p.score)[:max_boxes]


def mean_best_iou(
    maps: Mapping[str, np.ndarray],
    truth: Mapping[str, Sequence[Box]],
    threshold: float,
    min_area: float,
    max_boxes: int,
) -> tuple[float, float]:
    """Mean over the truth boxes of the best IoU with their image's CAM boxes, and the mean
    number of CAM boxes per image (a box of an image without a map scores 0)."""
    best, counts = [], []
    for image_id, boxes in truth.items():
        if not len(boxes):
            continue
        cam = maps.get(image_id)
        found = [] if cam is None else boxes_from_map(cam, threshold, min_area, max_boxes)
        counts.append(len(found))
        if not found:
            best += [0.0] * len(boxes)
            continue
        iou = box_iou(np.asarray(boxes, float), np.asarray([p.box for p in found], float))
        best += iou.max(axis=1).tolist()
    return (float(np.mean(best)) if best else 0.0, float(np.mean(counts)) if counts else 0.0)


def calibrate_cam(
    maps: Mapping[str, np.ndarray],
    truth: Mapping[str, Sequence[Box]],
    thresholds: Sequence[float],
    min_areas: Sequence[float],
    max_boxes: int = 5,
) -> tuple[float, float, pd.DataFrame]:
    """The (threshold, min_area) pair with the highest mean best IoU on the seeds (ties: the
    first in the given order), and the whole grid."""
    rows = []
    for threshold in thresholds:
        for min_area in min_areas:
            score, per_image = mean_best_iou(maps, truth, threshold, min_area, max_boxes)
            rows.append(
                {
                    "threshold": float(threshold),
                    "min_area": float(min_area),
                    "mean_best_iou": round(score, 4),
                    "boxes_per_image": round(per_image, 2),
                }
            )
    grid = pd.DataFrame(rows)
    best = grid.iloc[int(grid["mean_best_iou"].to_numpy().argmax())]
    return float(best["threshold"]), float(best["min_area"]), grid


# --------------------------------------------------------------------------- classifier


def confident_pool(
    predictions: pd.DataFrame, per_class: int, classes: Sequence[str]
) -> pd.DataFrame:
    """The ``per_class`` most confident pool answers of each class (``image_id``,
    ``defect_class``, ``confidence``; ``no_defect`` and unknown classes left out)."""
    known = predictions[predictions["defect_class"].isin(set(classes))]
    ordered = known.sort_values(["confidence", "image_id"], ascending=[False, True], kind="stable")
    return ordered.groupby("defect_class", sort=False).head(per_class)


def train_cam_classifier(
    *,
    seeds: pd.DataFrame,
    pool: pd.DataFrame,
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    weights: str | Path,
    work_dir: Path,
    settings: CamBoxSettings,
    device: str = "cpu",
    seed: int = 0,
    config_dir: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Any:
    """A small YOLOv8n-cls (from the detection checkpoint's backbone) fine-tuned on the seeds'
    classes and the annotator's most confident pool classes; returns the training result.

    It reuses the classification track's dataset writer and trainer; the images serve as their
    own validation set (there is nothing else to hold out, as for ``seed_only``)."""
    from cascade_defect.train.classify import base_classifier, write_classification_dataset
    from cascade_defect.train.sources import LABEL_COLUMNS, SourceDataset
    from cascade_defect.train.yolo import train_yolo

    chosen = confident_pool(predictions, settings.pool_per_class, class_names)
    listing = pool.assign(image_id=pool["image_id"].astype(str)).set_index("image_id")
    seed_rows = seeds.assign(image_id=seeds["image_id"].astype(str), origin="seed")
    pool_rows = listing.loc[chosen["image_id"].astype(str)].reset_index().assign(origin="pool")
    images = pd.concat([seed_rows, pool_rows], ignore_index=True).assign(subset="train")
    labels = pd.concat(
        [
            seed_rows.set_index("image_id")["class_name"].astype(str),
            chosen.set_index(chosen["image_id"].astype(str))["defect_class"].astype(str),
        ]
    )
    dataset = SourceDataset(
        source="cam_classifier",
        images=images[["image_id", "path", "sha256", "subset", "origin"]],
        labels=pd.DataFrame(columns=LABEL_COLUMNS),
        val_is_train=True,
    )
    config_dir = config_dir or work_dir / ".ultralytics"
    data_dir = write_classification_dataset(dataset, labels, work_dir / "dataset", class_names)
    model, _ = base_classifier(str(weights), None, config_dir, seed=seed)
    return train_yolo(
        data_dir,
        weights=str(weights),
        project_dir=work_dir / "runs",
        name="cam_classifier",
        epochs=settings.epochs,
        imgsz=settings.imgsz,
        batch=settings.batch,
        workers=0,
        device=device,
        patience=settings.epochs,
        seed=seed,
        config_dir=config_dir,
        torch_threads=threads,
        progress=progress,
        model=model,
        headline="top1",
    )


# --------------------------------------------------------------------------- strategy


@dataclass
class CamBoxes:
    """Boxes per annotated pool image, the calibrated threshold and area, and what was done."""

    boxes: dict[str, list[Proposal]]
    threshold: float
    min_area: float
    details: dict[str, Any]


def seed_truth(seeds: pd.DataFrame, seed_boxes: pd.DataFrame) -> dict[str, list[Box]]:
    """The seed boxes as normalised corners per seed image (images without boxes left out)."""
    norm = normalise_gt_boxes(
        seed_boxes.assign(image_id=seed_boxes["image_id"].astype(str)),
        seeds.assign(image_id=seeds["image_id"].astype(str)),
    )
    return {
        str(k): [tuple(r) for r in g[["x1", "y1", "x2", "y2"]].to_numpy(float)]
        for k, g in norm.groupby("image_id")
    }


def cam_boxes(
    *,
    classifier: str | Path,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    image_classes: Mapping[str, str],
    settings: CamBoxSettings,
    device: str = "cpu",
    config_dir: Path | None = None,
    progress: bool = True,
) -> CamBoxes:
    """Calibrate the map threshold on the seeds, then box every annotated pool image's map.

    Classes none of whose seeds carry a box (a "defect-free" class) get no boxes."""
    start = time.perf_counter()
    truth = seed_truth(seeds, seed_boxes)
    seed_classes = {str(r.image_id): str(r.class_name) for r in seeds.itertuples(index=False)}
    boxed = {seed_classes[i] for i in truth if i in seed_classes}
    kwargs = {"imgsz": settings.cam_imgsz, "device": device, "config_dir": config_dir}
    seed_maps = class_activation_maps(classifier, seeds, seed_classes, progress=False, **kwargs)
    threshold, min_area, grid = calibrate_cam(
        seed_maps, truth, settings.thresholds, settings.min_areas, settings.max_boxes
    )
    wanted = {i: c for i, c in image_classes.items() if c in boxed}
    maps = class_activation_maps(classifier, pool, wanted, progress=progress, **kwargs)
    boxes = {
        image_id: [
            Proposal(p.box, p.score, wanted[image_id])
            for p in boxes_from_map(cam, threshold, min_area, settings.max_boxes)
        ]
        for image_id, cam in maps.items()
    }
    best = grid[(grid["threshold"] == threshold) & (grid["min_area"] == min_area)].iloc[0]
    details = {
        "settings": settings.model_dump(),
        "threshold": threshold,
        "min_area": min_area,
        "seed_mean_best_iou": float(best["mean_best_iou"]),
        "calibration": grid.to_dict("records"),
        "boxes": sum(len(v) for v in boxes.values()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("classifier CAM boxes: threshold %.2f, min area %.3f", threshold, min_area)
    return CamBoxes(boxes, threshold, min_area, details)

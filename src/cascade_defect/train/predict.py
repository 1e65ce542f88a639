"""Running trained detectors on the golden test images: saved detections, ultralytics' own
validation for cross-checking, and the per-image CPU latency the cascade and cost chapters price.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cascade_defect.metrics.detection import DETECTION_COLUMNS
from cascade_defect.train.yolo_env import import_ultralytics, quiet_ultralytics, resolve_device


def measure_latency(
    weights: Path,
    image_paths: Sequence[str],
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    n_warmup: int = 3,
) -> dict[str, float]:
    """Wall-clock milliseconds per image, one image per call as a service would see them.

    The first ``n_warmup`` calls (model set-up, allocator warm-up) are not counted.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    device = resolve_device(device)
    times = []
    with quiet_ultralytics():
        for i, path in enumerate([*image_paths[:n_warmup], *image_paths]):
            start = time.perf_counter()
            model.predict(path, imgsz=imgsz, device=device, verbose=False, conf=0.25)
            if i >= n_warmup:
                times.append((time.perf_counter() - start) * 1000)
    import torch

    values = np.asarray(times)
    return {
        "torch_threads": torch.get_num_threads(),  # ultralytics uses cpu_count - 1 on a CPU
        "latency_ms_median": float(np.median(values)),
        "latency_ms_p90": float(np.quantile(values, 0.9)),
        "latency_ms_mean": float(values.mean()),
        "n_images": len(values),
    }


def read_saved_detections(labels_dir: Path, image_sizes: pd.DataFrame) -> pd.DataFrame:
    """Detections that ``model.val(save_txt=True, save_conf=True)`` wrote, in pixel corners.

    Each file holds ``class cx cy w h confidence`` normalised to its image; ``image_sizes`` gives
    ``image_id, width, height``. An image without a file had no detection.
    """
    sizes = image_sizes.assign(image_id=image_sizes["image_id"].astype(str)).set_index("image_id")
    rows = []
    for path in sorted(Path(labels_dir).glob("*.txt")):
        if path.stem not in sizes.index:
            continue
        width, height = (float(v) for v in sizes.loc[path.stem, ["width", "height"]])
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue
            c, cx, cy, w, h, conf = (float(v) for v in parts)
            rows.append(
                {
                    "image_id": path.stem,
                    "class_id": int(c),
                    "confidence": conf,
                    "x1": (cx - w / 2) * width,
                    "y1": (cy - h / 2) * height,
                    "x2": (cx + w / 2) * width,
                    "y2": (cy + h / 2) * height,
                }
            )
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def validate_on_test(
    weights: Path,
    data_yaml: Path,
    image_sizes: pd.DataFrame,
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    project_dir: Path,
    name: str,
    batch: int = 16,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Ultralytics' own test-set scores and the detections behind them, image by image.

    ``model.val`` keeps every detection above confidence 0.001 and may give one box several
    classes (multi-label NMS), which is how mAP is conventionally computed; saving those very
    detections lets the bootstrap recompute ultralytics' mAP exactly on any resample.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    save_dir = Path(project_dir).resolve() / name
    if save_dir.exists():
        shutil.rmtree(save_dir)
    with quiet_ultralytics():
        metrics = model.val(
            data=str(data_yaml),
            split="val",
            imgsz=imgsz,
            batch=batch,
            device=resolve_device(device),
            conf=0.001,
            iou=0.7,
            save_txt=True,
            save_conf=True,
            plots=False,
            verbose=False,
            workers=0,
            project=str(Path(project_dir).resolve()),
            name=name,
            exist_ok=True,
        )
    box = metrics.box
    names = metrics.names
    scores = {
        "map50": float(box.map50),
        "map50_95": float(box.map),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "ap50": {
            names[int(c)]: float(v) for c, v in zip(box.ap_class_index, box.ap50, strict=True)
        },
    }
    detections = read_saved_detections(Path(metrics.save_dir) / "labels", image_sizes)
    return scores, detections

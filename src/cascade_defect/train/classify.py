"""The image-classification track: one class per image from any label source, written as the
class folders YOLOv8n-cls trains on, and top-1 predictions for the golden test images.

Datasets that have class folders but no boxes are only meaningfully compared here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.data.records import NO_DEFECT
from cascade_defect.progress import progress_disabled
from cascade_defect.train.sources import (
    HUMAN,
    PSEUDO,
    SEED_ONLY,
    PoolTruth,
    SourceDataset,
    SplitInputs,
    link_or_copy,
)
from cascade_defect.train.yolo_env import (
    import_ultralytics,
    quiet_ultralytics,
    resolve_device,
)

CLASSIFICATION_SOURCES: tuple[str, ...] = (HUMAN, PSEUDO, SEED_ONLY)


def image_classes(dataset: SourceDataset, split: SplitInputs, truth: PoolTruth | None) -> pd.Series:
    """Each training image's class name under ``dataset``'s source.

    Seeds keep their labelled class. Pool images take the pool's truth for ``human`` and the
    annotator's class for ``pseudo`` (the class its boxes carry: every box of a pseudo-labelled
    image carries the image's class, so the majority is that class).
    """
    names = split.label_names
    seeds = split.seeds.set_index("image_id")["class_name"].astype(str)
    pool_ids = dataset.images.loc[dataset.images["origin"] == "pool", "image_id"].astype(str)
    if dataset.source == HUMAN:
        if truth is None:
            raise ValueError("the human source needs the pool's truth")
        pool = truth.image_classes.reindex(pool_ids).map(lambda i: names[int(i)])
    elif dataset.source in (PSEUDO, SEED_ONLY):
        labels = dataset.labels[dataset.labels["image_id"].isin(set(pool_ids))]
        counts = labels.groupby(["image_id", "class_id"]).size().rename("n").reset_index()
        counts = counts.sort_values(["image_id", "n", "class_id"], ascending=[True, False, True])
        majority = counts.drop_duplicates("image_id").set_index("image_id")["class_id"]
        pool = majority.reindex(pool_ids).map(lambda i: names[int(i)], na_action="ignore")
        if split.no_defect:  # a pool image kept without boxes was answered no_defect
            pool = pool.fillna(NO_DEFECT)
    else:
        raise ValueError(
            f"the classification track trains on {CLASSIFICATION_SOURCES}, not {dataset.source!r}"
        )
    if pool.isna().any():
        missing = pool[pool.isna()].index.tolist()[:5]
        raise ValueError(f"{dataset.source}: no class for pool images {missing}")
    chosen = dataset.images["image_id"].astype(str)
    combined = pd.concat([seeds[seeds.index.isin(set(chosen))], pool])
    return combined.reindex(chosen).rename("class_name")


def _check_folder_name(name: str) -> None:
    if not name.strip() or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"class name {name!r} cannot be a folder name for YOLOv8n-cls")


def write_classification_dataset(
    dataset: SourceDataset,
    classes: pd.Series,
    out_dir: Path,
    class_names: Sequence[str],
    progress: bool = False,
) -> Path:
    """Write ultralytics' classification layout ``{train,val}/<class>/<image>``.

    Every class gets a folder in both subsets, even an empty one, so that ultralytics gives each
    class the same index in both (it sorts the folder names). ``images.csv`` lists what went
    where; training and reuse fingerprint it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for name in class_names:
        _check_folder_name(name)
        for subset in ("train", "val"):
            (out_dir / subset / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for row in tqdm(
        dataset.images.itertuples(index=False),
        total=len(dataset.images),
        desc=f"Writing {dataset.source} (classification)",
        unit="img",
        disable=progress_disabled(progress),
    ):
        image_id = str(row.image_id)
        class_name = str(classes[image_id])
        subsets = [row.subset]
        if dataset.val_is_train:  # seed_only: no held-out labels exist in that scenario
            subsets = ["train", "val"]
        for subset in subsets:
            target = out_dir / subset / class_name / f"{image_id}{Path(row.path).suffix.lower()}"
            link_or_copy(Path(row.path), target)
        rows.append(
            {
                "image_id": image_id,
                "subset": row.subset,
                "origin": row.origin,
                "class_name": class_name,
                "sha256": row.sha256,
            }
        )
    pd.DataFrame(rows).to_csv(out_dir / "images.csv", index=False)
    return out_dir


def base_classifier(
    detection_weights: str, cls_weights: str | None, config_dir: Path, *, seed: int
) -> tuple[Any, str]:
    """YOLOv8n-cls ready to fine-tune, and a line saying where its weights came from.

    The layers the detection checkpoint lacks (the classification head) are initialised from
    ``seed``: ultralytics seeds only once training starts, so without it the head would depend
    on whatever drew random numbers earlier in the process (the classifier trained before it)."""
    import_ultralytics(config_dir)
    import torch
    from ultralytics import YOLO

    if cls_weights:
        if not Path(cls_weights).exists():
            raise FileNotFoundError(
                f"CASCADE_YOLO_CLS_WEIGHTS={cls_weights!r} is not a file; unset it to start "
                "from the detection checkpoint's backbone"
            )
        return YOLO(str(cls_weights)), f"{Path(cls_weights).name} (its own pretrained weights)"
    if not Path(detection_weights).exists():
        raise FileNotFoundError(
            f"YOLO weights {detection_weights!r} not found; set CASCADE_YOLO_WEIGHTS to a local "
            "yolov8n.pt (this project never downloads weights)"
        )
    with quiet_ultralytics(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLO("yolov8n-cls.yaml")
        model.load(str(detection_weights))
    return model, f"yolov8n-cls.yaml with the backbone of {Path(detection_weights).name}"


def classify_images(
    weights: Path,
    images: pd.DataFrame,
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    batch: int = 64,
    progress: bool = True,
    desc: str = "classify",
) -> pd.DataFrame:
    """Top-1 class and its probability for each image (``image_id``, ``path`` columns).

    The columns match :func:`cascade_defect.evaluation.image_predictions`, so the cascade and
    accuracy helpers take either.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    names = model.names
    device = resolve_device(device)
    rows = []
    paths = images["path"].astype(str).tolist()
    ids = images["image_id"].astype(str).tolist()
    with (
        quiet_ultralytics(),
        tqdm(total=len(paths), desc=desc, unit="img", disable=progress_disabled(progress)) as bar,
    ):
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            for image_id, result in zip(
                ids[start : start + batch],
                model.predict(chunk, imgsz=imgsz, device=device, verbose=False),
                strict=True,
            ):
                probs = result.probs
                rows.append(
                    {
                        "image_id": image_id,
                        "predicted_class": str(names[int(probs.top1)]),
                        "top_confidence": float(probs.top1conf),
                    }
                )
            bar.update(len(chunk))
    return pd.DataFrame(rows, columns=["image_id", "predicted_class", "top_confidence"])

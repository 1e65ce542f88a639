"""Box strategies: turning image-level answers into the boxes YOLO trains on.

An annotator that only names an image's class (the offline annotator, or an MLLM whose boxes are
not trusted) still has to hand YOLO boxes. The strategies, usable with any annotator's records:

- ``whole_image``: one box over the whole image, with the image's class. Free, and honest about
  knowing nothing of the defect's position.
- ``seed_detector``: a YOLOv8n fine-tuned on the 18 seed images alone (class-agnostic: every box is
  "a defect") proposes boxes on the pool; each box takes the annotator's image class. An image
  where it proposes nothing falls back to ``whole_image``, except on a dataset with defect-free
  images (``annotation.whole_image_fallback``), where it is left out of detector training.
- ``self_training``: class-aware teachers trained on the seed detector's boxes re-propose the
  pool, each fold by a teacher that never saw it (:mod:`cascade_defect.annotate.self_training`).
- ``mllm_verified``: the seed detector's proposals, drawn numbered on the image and checked by
  the MLLM in one request per image (:mod:`cascade_defect.annotate.mllm.verify`).
- ``crop_verified`` and ``classifier_cam``: low-score proposals kept by a few-shot crop classifier
  (:mod:`~cascade_defect.annotate.crop_verifier`), and boxes around an image classifier's
  activation map (:mod:`~cascade_defect.annotate.cam_boxes`).
- ``annotator``: keep the boxes the annotator returned (an MLLM's own boxes).

:func:`pseudo_boxes` applies one strategy to stored predictions and returns one row per box,
``image_id, class_name, x1, y1, x2, y2, confidence, strategy`` (normalised corners), plus a
``fallback`` flag for boxes that stand in for a missing one; the audit measures each strategy
against the ground-truth boxes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.annotate.fragments import fuse_views, merge_fragments
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.box_settings import BoxStrategy, Flip, FragmentMergeSettings
from cascade_defect.data.yolo_txt import write_data_yaml, write_label_file, yolo_line
from cascade_defect.hashing import sha256_file
from cascade_defect.progress import progress_disabled
from cascade_defect.train.yolo_env import (
    import_ultralytics,
    pin_training_threads,
    quiet_ultralytics,
    training_threads,
)

log = logging.getLogger(__name__)

BOX_STRATEGIES: tuple[str, ...] = (
    "whole_image",
    "seed_detector",
    "self_training",
    "mllm_verified",
    "annotator",
    "crop_verified",  # annotate/crop_verifier.py
    "classifier_cam",  # annotate/cam_boxes.py
)
DEFAULT_BOX_STRATEGIES: tuple[str, ...] = ("whole_image", "seed_detector", "annotator")
"""Written by chapter 03 unless told otherwise: ``self_training`` costs teacher trainings and
does not beat ``seed_detector`` on NEU-DET (``scripts/bench_box_strategies.py``)."""
PROPOSAL_STRATEGIES: frozenset[str] = frozenset(
    {"seed_detector", "self_training", "mllm_verified", "crop_verified", "classifier_cam"}
)
"""Strategies whose boxes come from a detector's proposals (:class:`Proposal` lists)."""
PSEUDO_BOX_COLUMNS = ["image_id", "class_name", "x1", "y1", "x2", "y2", "confidence", "strategy"]
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Proposal:
    """A detector's box: normalised corners, score, and the class a class-aware detector named
    (``None`` from a class-agnostic one)."""

    box: tuple[float, float, float, float]
    score: float
    class_name: str | None = None


# --------------------------------------------------------------------------- predictions


PREDICTION_COLUMNS = ["image_id", "sha256", "defect_class", "confidence", "boxes"]


def predictions_from_store(store: AnnotationStore, pool: pd.DataFrame) -> pd.DataFrame:
    """The latest ``ok`` answer for each pool image: ``image_id, sha256, defect_class,
    confidence, boxes`` (a list of ``(class_name, (x1, y1, x2, y2))``).

    Records are matched to images by the image's SHA-256 (keys change with the prompt or the
    model; the bytes do not); the newest ``ok`` record wins. Images without one are left out.
    """
    best: dict[str, Any] = {}
    for record in store.records():
        if record.status == "ok" and record.prediction is not None:
            best[record.image_sha256] = record
    rows = []
    for image in pool[["image_id", "sha256"]].itertuples(index=False):
        record = best.get(str(image.sha256))
        if record is None:
            continue
        prediction = record.prediction
        rows.append(
            {
                "image_id": str(image.image_id),
                "sha256": str(image.sha256),
                "defect_class": prediction.defect_class,
                "confidence": float(prediction.confidence),
                "boxes": [(box.defect_class, tuple(box.box)) for box in prediction.boxes],
            }
        )
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


# --------------------------------------------------------------------------- strategies


def pseudo_boxes(
    predictions: pd.DataFrame,
    strategy: BoxStrategy,
    *,
    proposals: Mapping[str, Sequence[Proposal]] | None = None,
    fallback: bool = True,
) -> pd.DataFrame:
    """Per-image pseudo boxes under one strategy (see the module docstring).

    ``predictions`` is :func:`predictions_from_store`'s frame (``boxes`` is needed only for the
    ``annotator`` strategy). ``proposals`` maps image ids to :class:`Proposal` lists and is
    required for ``seed_detector`` (from :meth:`SeedDetector.propose`). ``confidence`` is the
    image-level class confidence, times the detector's score for ``seed_detector`` boxes. With
    ``fallback``, an image the strategy gives no box gets the whole-image box (``fallback=True``
    in that row). ``no_defect`` answers get no boxes.
    """
    if strategy not in BOX_STRATEGIES:
        raise ValueError(f"unknown box strategy {strategy!r}; choose one of {BOX_STRATEGIES}")
    if strategy in PROPOSAL_STRATEGIES and proposals is None:
        raise ValueError(f"the {strategy} strategy needs proposals (a detector's or self_train's)")
    rows: list[dict[str, Any]] = []
    for item in predictions.itertuples(index=False):
        if item.defect_class == NO_DEFECT:
            continue
        image_class, confidence = str(item.defect_class), float(item.confidence)
        found: list[tuple[str, tuple[float, ...], float]] = []
        if strategy == "whole_image":
            found = [(image_class, WHOLE_IMAGE, confidence)]
        elif strategy in PROPOSAL_STRATEGIES:
            assert proposals is not None
            for proposal in proposals.get(str(item.image_id), []):
                if proposal.class_name not in (None, image_class):
                    continue  # a class-aware detector's box of another class than the image's
                found.append((image_class, proposal.box, confidence * float(proposal.score)))
        else:
            boxes = item.boxes if isinstance(item.boxes, list | tuple) else []
            found = [(str(name), tuple(box), confidence) for name, box in boxes]
        kept = [(name, box, conf) for name, box, conf in found if _valid(box)]
        is_fallback = False
        if not kept and fallback:
            kept, is_fallback = [(image_class, WHOLE_IMAGE, confidence)], True
        for name, (x1, y1, x2, y2), conf in kept:
            rows.append(
                {
                    "image_id": str(item.image_id),
                    "class_name": name,
                    "x1": float(x1),
                    "y1": float(y1),
                    "x2": float(x2),
                    "y2": float(y2),
                    "confidence": float(conf),
                    "strategy": strategy,
                    "fallback": is_fallback,
                }
            )
    return pd.DataFrame(rows, columns=[*PSEUDO_BOX_COLUMNS, "fallback"])


def _valid(box: Sequence[float]) -> bool:
    return (
        len(box) == 4
        and all(0.0 <= float(v) <= 1.0 for v in box)
        and box[0] < box[2]
        and box[1] < box[3]
    )


# --------------------------------------------------------------------------- seed detector


@dataclass(frozen=True)
class SeedDetectorSettings:
    """Fine-tuning recipe, sized for 18 images on a CPU (a couple of minutes)."""

    epochs: int = 100
    imgsz: int = 224
    batch: int = 6
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    conf: float = 0.25
    """Detector score below which a proposal is dropped (ultralytics' own default)."""
    iou: float = 0.5
    max_det: int = 10
    class_aware: bool = False
    """Train one class per defect class (a self-training teacher) instead of "a defect"."""
    freeze: int = 10
    """The COCO detector's first layers kept as they are while fine-tuning on the seeds (10: the
    whole backbone, which a handful of images would only blur); 0 fine-tunes every layer."""
    fragment_merge: FragmentMergeSettings | None = None
    """Join the fragments of an elongated defect into one box (:mod:`.fragments`); None: off."""
    flips: tuple[Flip, ...] = ()
    """Test-time flips the ``seed_detector`` strategy proposes the pool with (:meth:`propose`)."""
    turn_ratio: float | None = None
    """The pool also seen turned a quarter (:mod:`.orientation`); None: as it is only."""
    extra_train_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_profile(cls, profile: Any, **overrides: Any) -> SeedDetectorSettings:
        """Settings from a run profile (``load_config(...).profile``): epochs, image size and
        proposal score threshold from ``profile.annotation``, device and random seed from
        ``profile.training``."""
        values: dict[str, Any] = {
            "epochs": int(profile.annotation.seed_detector_epochs),
            "imgsz": int(profile.annotation.seed_detector_imgsz),
            "conf": float(profile.annotation.seed_detector_conf),
            "device": str(profile.training.device),
            "seed": int(profile.training.seed),
            "freeze": int(profile.annotation.seed_detector_freeze),
            "fragment_merge": profile.annotation.fragment_merge
            if profile.annotation.fragment_merge.enabled
            else None,
            "flips": tuple(profile.annotation.seed_detector_flips),
            "turn_ratio": profile.annotation.seed_detector_turn_ratio,
        }
        values.update(overrides)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "seed": self.seed,
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
            **({"class_aware": True} if self.class_aware else {}),
            **({"freeze": self.freeze} if self.freeze else {}),
            **({"fragment_merge": self.fragment_merge.model_dump()} if self.fragment_merge else {}),
            **({"flips": list(self.flips)} if self.flips else {}),
            **({"turn_ratio": self.turn_ratio} if self.turn_ratio is not None else {}),
            **{f"train.{k}": v for k, v in sorted(self.extra_train_args.items())},
        }


@dataclass
class SeedDetectorTraining:
    """What training produced: the weights to propose with, and how long it took."""

    weights: Path
    run_dir: Path
    seconds: float
    n_images: int
    n_boxes: int


_RESERVED_TRAIN_ARGS = frozenset(
    {"data", "project", "name", "single_cls", "amp", "plots", "exist_ok"}
)


class SeedDetector:
    """A class-agnostic YOLOv8n fine-tuned on the seed images only, used to propose boxes.

    Trained offline and deterministically: weights come from settings (never downloaded),
    ``amp=False`` (ultralytics' AMP check downloads a model), ``plots=False``, ``workers=0``,
    ``deterministic=True`` with a fixed seed, all files under ``work_dir``.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str],
        work_dir: str | os.PathLike[str],
        settings: SeedDetectorSettings | None = None,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.base_weights = Path(weights)
        self.work_dir = Path(work_dir)
        self.settings = settings or SeedDetectorSettings()
        self.config_dir = Path(config_dir) if config_dir else self.work_dir / ".ultralytics"
        self.threads = threads
        self.progress = progress
        self.trained: SeedDetectorTraining | None = None
        self._model: Any = None

    @classmethod
    def from_trained(
        cls,
        weights: str | os.PathLike[str],
        settings: SeedDetectorSettings | None = None,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> SeedDetector:
        """A detector from weights a previous :meth:`train` wrote (no training)."""
        weights = Path(weights)
        detector = cls(weights, weights.parent, settings, config_dir=config_dir, progress=progress)
        detector.trained = SeedDetectorTraining(weights, weights.parent, 0.0, 0, 0)
        return detector

    def describe(self) -> dict[str, Any]:
        """Recorded in annotation params: which detector proposed a record's boxes."""
        weights = self.trained.weights if self.trained else self.base_weights
        digest = sha256_file(weights) if weights.exists() else None
        return {"weights_sha256": digest, **self.settings.describe()}

    # -- training ------------------------------------------------------------------

    def train(
        self,
        seed_images: pd.DataFrame,
        seed_boxes: pd.DataFrame,
        class_names: Sequence[str],
        name: str = "seed_detector",
    ) -> SeedDetectorTraining:
        """Fine-tune from the base weights on the seeds (``image_id, path``, optionally
        ``width, height``) and their boxes in pixels (``image_id, class_name, xmin, ymin, xmax,
        ymax``)."""
        if not self.base_weights.is_file():
            raise FileNotFoundError(
                f"YOLO weights {str(self.base_weights)!r} not found; set CASCADE_YOLO_WEIGHTS to a "
                "local yolov8n.pt (the seed detector never downloads weights)"
            )
        clash = _RESERVED_TRAIN_ARGS & set(self.settings.extra_train_args)
        if clash:
            raise ValueError(f"extra_train_args may not set {sorted(clash)}")
        dataset_dir = self.work_dir / name / "dataset"
        data_yaml, n_boxes = write_detector_dataset(
            seed_images, seed_boxes, class_names, dataset_dir
        )
        import_ultralytics(self.config_dir)
        from ultralytics import YOLO

        run_dir = self.work_dir / name / "train"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        model = YOLO(str(self.base_weights))
        settings = self.settings
        bar = tqdm(
            total=settings.epochs,
            desc="seed detector",
            unit="epoch",
            disable=progress_disabled(self.progress),
        )
        model.add_callback("on_train_epoch_end", lambda trainer: bar.update(1))
        pin_training_threads(model, training_threads(self.threads))
        args: dict[str, Any] = {
            "val": False,
            "verbose": False,
            "warmup_epochs": 0,  # with 3 batches an epoch, the 100-iteration warmup would never end
            # ultralytics accumulates gradients up to a nominal batch of 64 images: with 18 seeds
            # that is one optimizer step every ~4 epochs. A step per batch gives 11x the steps
            # for the same time (box recall 0.57 against 0.54 at conf 0.1, bench_seed_detector).
            "nbs": settings.batch,
            "close_mosaic": max(1, settings.epochs // 5),
            **({"freeze": settings.freeze} if settings.freeze else {}),
            **settings.extra_train_args,
            "data": str(data_yaml),
            "epochs": settings.epochs,
            "imgsz": settings.imgsz,
            "batch": settings.batch,
            "workers": settings.workers,
            "device": settings.device,
            "seed": settings.seed,
            "deterministic": True,
            "single_cls": not settings.class_aware,
            "amp": False,
            "plots": False,
            "project": str(run_dir.parent.resolve()),
            "name": run_dir.name,
            "exist_ok": True,
        }
        start = time.perf_counter()
        try:
            with quiet_ultralytics():
                model.train(**args)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        trainer = model.trainer
        # The final epoch's weights: without a validation set there is no "best" to choose.
        weights = Path(trainer.last)
        self.trained = SeedDetectorTraining(
            weights=weights,
            run_dir=Path(trainer.save_dir),
            seconds=seconds,
            n_images=len(seed_images),
            n_boxes=n_boxes,
        )
        self._model = None
        log.info("seed detector trained in %.1f s on %d images", seconds, len(seed_images))
        return self.trained

    # -- proposing -----------------------------------------------------------------

    def propose(
        self, images: pd.DataFrame, batch: int = 32, *, flips: Sequence[str] = ()
    ) -> dict[str, list[Proposal]]:
        """Boxes for each image (``image_id, path``), best score first.

        ``flips`` (``"horizontal"``, ``"vertical"``) adds test-time augmentation: the image is
        also predicted flipped, the boxes are flipped back, and all views are fused with
        weighted boxes fusion (``ensemble-boxes``), so a box seen in several views gains score
        and a box seen in one loses it. A fused box is kept if its mean score over the views
        reaches the settings' ``conf``, as a single view's must.
        """
        if self.trained is None:
            raise RuntimeError("train() the seed detector first (or use SeedDetector.from_trained)")
        unknown = set(flips) - set(FLIPS)
        if unknown:
            raise ValueError(f"unknown flips {sorted(unknown)}; choose from {FLIPS}")
        views = ["none", *flips]
        out: dict[str, list[Proposal]] = {}
        frame = images[["image_id", "path"]].reset_index(drop=True)
        with tqdm(
            total=len(frame),
            desc="detector boxes" + (" (TTA)" if flips else ""),
            unit="img",
            disable=progress_disabled(self.progress),
        ) as bar:
            for start in range(0, len(frame), batch):
                chunk = frame.iloc[start : start + batch]
                per_view = [self._predict(chunk["path"], view) for view in views]
                for i, image_id in enumerate(chunk["image_id"]):
                    found = [view_boxes[i] for view_boxes in per_view]
                    out[str(image_id)] = (
                        sorted(found[0], key=lambda p: -p.score)
                        if len(found) == 1
                        else fuse_views(found, min_score=self.settings.conf)
                    )
                bar.update(len(chunk))
        return out

    def _predict(self, paths: pd.Series, view: str) -> list[list[Proposal]]:
        """One view of a batch: the detector's boxes in the original image's coordinates."""
        model = self._load()
        settings = self.settings
        sources: list[Any] = [str(p) for p in paths]
        if view != "none":
            sources = [_flipped(path, view) for path in sources]
        with quiet_ultralytics():
            results = model.predict(
                source=sources,
                imgsz=settings.imgsz,
                conf=settings.conf,
                iou=settings.iou,
                max_det=settings.max_det,
                agnostic_nms=not settings.class_aware,
                device=settings.device,
                verbose=False,
                save=False,
            )
        out = []
        for result in results:
            found = []
            boxes = result.boxes
            if boxes is not None and len(boxes):
                for xyxyn, score, label in zip(
                    boxes.xyxyn.cpu().numpy(),
                    boxes.conf.cpu().numpy(),
                    boxes.cls.cpu().numpy(),
                    strict=True,
                ):
                    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in xyxyn)
                    if view == "horizontal":
                        x1, x2 = 1.0 - x2, 1.0 - x1
                    elif view == "vertical":
                        y1, y2 = 1.0 - y2, 1.0 - y1
                    name = result.names[int(label)] if settings.class_aware else None
                    if x1 < x2 and y1 < y2:
                        found.append(Proposal((x1, y1, x2, y2), float(score), name))
            if settings.fragment_merge is not None:
                height, width = result.orig_shape
                found = merge_fragments(found, width, height, settings.fragment_merge)
            out.append(found)
        return out

    def _load(self) -> Any:
        if self._model is None:
            assert self.trained is not None
            import_ultralytics(self.config_dir)
            from ultralytics import YOLO

            self._model = YOLO(str(self.trained.weights))
        return self._model


FLIPS: tuple[str, ...] = get_args(Flip)
"""The views :meth:`SeedDetector.propose` can add (``box_settings.Flip``, which settings validate)."""


def _flipped(path: str, view: str) -> Image.Image:
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    flip = (
        Image.Transpose.FLIP_LEFT_RIGHT if view == "horizontal" else Image.Transpose.FLIP_TOP_BOTTOM
    )
    # ultralytics reads PIL images as RGB and converts them itself.
    return image.transpose(flip)


def write_detector_dataset(
    seed_images: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    class_names: Sequence[str],
    out_dir: str | os.PathLike[str],
) -> tuple[Path, int]:
    """A YOLO dataset of the seeds (images, labels, ``data.yaml``); returns its yaml and box count.

    Written by this module rather than reused from the split's export so the detector can be
    trained from any seed frame (e.g. each benchmark draw). Boxes are clipped to the image.
    """

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir(parents=True)
    index = {name: i for i, name in enumerate(class_names)}
    by_image = {str(k): g for k, g in seed_boxes.groupby("image_id")} if len(seed_boxes) else {}
    sizes = _image_sizes(seed_images)
    n_boxes = 0
    for image in seed_images.itertuples(index=False):
        source = Path(image.path)
        shutil.copyfile(source, out / "images" / f"{image.image_id}{source.suffix.lower()}")
        lines = []
        for box in by_image.get(str(image.image_id), pd.DataFrame()).itertuples(index=False):
            if box.class_name not in index:
                continue
            w, h = sizes[str(image.image_id)]
            x1, x2 = sorted((min(max(box.xmin, 0), w), min(max(box.xmax, 0), w)))
            y1, y2 = sorted((min(max(box.ymin, 0), h), min(max(box.ymax, 0), h)))
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
            lines.append(yolo_line(index[box.class_name], cx, cy, (x2 - x1) / w, (y2 - y1) / h))
        n_boxes += len(lines)
        write_label_file(out / "labels" / f"{image.image_id}.txt", lines)
    return write_data_yaml(out, class_names), n_boxes


def _image_sizes(images: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Width and height of each image, from the listing when it has them, else from the file."""
    sizes = {}
    for image in images.itertuples(index=False):
        width, height = getattr(image, "width", None), getattr(image, "height", None)
        if width is None or height is None or pd.isna(width) or pd.isna(height):
            with Image.open(image.path) as opened:
                width, height = opened.size
        sizes[str(image.image_id)] = (float(width), float(height))
    return sizes


def proposals_to_json(proposals: Mapping[str, Sequence[Proposal]]) -> str:
    """Proposals as JSON, so a notebook can store them next to the run and reload them."""
    return json.dumps(
        {
            image_id: [[*p.box, p.score, *([p.class_name] if p.class_name else [])] for p in found]
            for image_id, found in proposals.items()
        },
        sort_keys=True,
    )


def proposals_from_json(text: str) -> dict[str, list[Proposal]]:
    data = json.loads(text)
    return {
        image_id: [
            Proposal(tuple(values[:4]), float(values[4]), values[5] if len(values) > 5 else None)  # type: ignore[arg-type]
            for values in found
        ]
        for image_id, found in data.items()
    }

"""The ``crop_verified`` box strategy: many proposals, kept or dropped by a few-shot crop classifier.

The seed detector finds most defects only when asked for low-scoring boxes, and then draws many
false ones. Its score cannot tell them apart (it was trained on 18 images), but what the box
*contains* can: a crop of a true defect looks like the seed boxes of its class, a false box like
the background. So:

1. **Propose** at a low score (``conf`` 0.01, up to ``max_det`` boxes per image).
2. **Describe** each proposal's crop (with a small margin of context) with the same pooled
   YOLOv8n backbone features the offline annotator uses
   (:class:`~cascade_defect.annotate.offline.features.YoloFeatureExtractor`).
3. **Learn from the seeds only**: positives are the seed boxes (and jittered copies, IoU >= 0.7)
   and the seed images' proposals that match a seed box (IoU >= 0.5), each with its class;
   negatives ("background") are random boxes of the seed boxes' sizes that overlap no seed box
   (IoU < 0.1) and the seed images' proposals that match none. A logistic regression with
   balanced class weights predicts {each defect class, background}.
4. **Keep** a pool proposal when the class the annotator gave the image is the verifier's most
   probable class *and* its probability clears a threshold (``rule="argmax"``), or, trusting the
   annotator's class, when ``p(class) / (p(class) + p(background))`` clears it
   (``rule="versus_background"``). The threshold is calibrated on the seeds by
   leave-one-seed-image-out: each seed image's proposals are scored by a verifier fitted on the
   other seed images, and the threshold with the best F1 of kept proposals (a kept proposal is
   right when it matches a seed box of the image's class) is chosen.

The seed images' proposals come from a detector trained on those very images, so they are easier
than the pool's and the calibrated threshold is an optimistic guess; the benchmark
(``scripts/bench_box_strategies.py``) shows the box quality at several thresholds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cascade_defect.annotate.boxes import Proposal, SeedDetector
from cascade_defect.annotate.offline.features import YoloFeatureExtractor, grey_array
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.box_settings import CropVerifierSettings
from cascade_defect.metrics.box_quality import normalise_gt_boxes
from cascade_defect.metrics.detection import box_iou

log = logging.getLogger(__name__)

BACKGROUND = "__background__"
MATCH_IOU = 0.5
"""A proposal matching a seed box at this IoU is a positive (the box-quality metrics' IoU)."""
THRESHOLD_GRID = tuple(round(float(v), 2) for v in np.arange(0.05, 0.96, 0.05))

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- crops


def crop_box(box: Sequence[float], context: float) -> Box:
    """``box`` grown by ``context`` times its size on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    return (max(0.0, x1 - dx), max(0.0, y1 - dy), min(1.0, x2 + dx), min(1.0, y2 + dy))


def crop_arrays(path: str, boxes: Sequence[Sequence[float]], imgsz: int, context: float) -> list:
    """Each box's crop of one image, in :func:`grey_array`'s form (the backbone's input)."""
    with Image.open(path) as opened:
        image = opened.convert("L")
    width, height = image.size
    out = []
    for box in boxes:
        x1, y1, x2, y2 = crop_box(box, context)
        left, top = int(np.floor(x1 * width)), int(np.floor(y1 * height))
        right = max(left + 2, int(np.ceil(x2 * width)))
        bottom = max(top + 2, int(np.ceil(y2 * height)))
        out.append(grey_array(image.crop((left, top, right, bottom)), imgsz))
    return out


def _iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    return box_iou(np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4))


def jittered(box: Box, n: int, rng: np.random.Generator, min_iou: float = 0.7) -> list[Box]:
    """Up to ``n`` copies of ``box`` with shifted edges that still overlap it at ``min_iou``:
    the verifier sees seed boxes as imprecise as the proposals it will judge."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    out: list[Box] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        d = rng.uniform(-0.12, 0.12, 4) * np.array([w, h, w, h])
        cand = (
            max(0.0, x1 + d[0]),
            max(0.0, y1 + d[1]),
            min(1.0, x2 + d[2]),
            min(1.0, y2 + d[3]),
        )
        if cand[0] < cand[2] and cand[1] < cand[3] and _iou([cand], [box])[0, 0] >= min_iou:
            out.append(cand)
    return out


def background_boxes(
    truth: Sequence[Box], sizes: np.ndarray, n: int, rng: np.random.Generator
) -> list[Box]:
    """Up to ``n`` random boxes of the seed boxes' sizes (``sizes``: width, height rows) that
    overlap no box of ``truth`` at IoU 0.1 or more."""
    out: list[Box] = []
    for _ in range(30 * n):
        if len(out) == n:
            break
        w, h = sizes[rng.integers(len(sizes))]
        x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        cand = (float(x1), float(y1), float(x1 + w), float(y1 + h))
        if not len(truth) or _iou([cand], truth).max() < 0.1:
            out.append(cand)
    return out


def low_score_proposer(
    detector: SeedDetector, settings: CropVerifierSettings, *, progress: bool = True
) -> SeedDetector:
    """The trained ``detector``'s weights proposing at the verifier's low score and box count: the
    crops the verifier (and the defect gate) judge, each as the detector saw it (fragments of a
    long defect are not joined: each crop is judged on its own)."""
    if detector.trained is None:
        raise RuntimeError("train the seed detector before proposing crops to verify")
    return SeedDetector.from_trained(
        detector.trained.weights,
        replace(
            detector.settings, conf=settings.conf, max_det=settings.max_det, fragment_merge=None
        ),
        config_dir=detector.config_dir,
        progress=progress,
    )


# --------------------------------------------------------------------------- verifier


@dataclass
class CropSamples:
    """The seeds' training crops: boxes, labels, the seed image of each, and whether the row is a
    proposal (only proposals are scored when the threshold is calibrated)."""

    image_ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    is_proposal: list[bool] = field(default_factory=list)
    image_classes: list[str] = field(default_factory=list)
    features: np.ndarray | None = None


def _signed_sqrt(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def _classifier(c: float, seed: int) -> Any:
    """Signed square root (tames bursty channels, as in the offline annotator), standardising,
    then a multinomial logistic regression weighting each class by its inverse frequency."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        FunctionTransformer(_signed_sqrt),
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed),
    )


def class_scores(
    model: Any, features: np.ndarray, classes: Sequence[str], rule: str = "argmax"
) -> np.ndarray:
    """Per row, the verifier's score for ``classes[row]``: under ``argmax`` its probability when
    it is the most probable class, else 0; under ``versus_background``
    ``p(class) / (p(class) + p(background))``, which ignores confusions between defect classes
    (the annotator's image class is trusted, the verifier only judges defect against background).
    """
    if not len(features):
        return np.zeros(0)
    probabilities = model.predict_proba(features)
    known = list(model.classes_)
    top = np.asarray(known)[probabilities.argmax(axis=1)]
    background = probabilities[:, known.index(BACKGROUND)] if BACKGROUND in known else 0.0
    out = np.zeros(len(features))
    for row, name in enumerate(classes):
        if name not in known:
            continue
        p = probabilities[row, known.index(name)]
        if rule == "versus_background":
            b = background[row] if isinstance(background, np.ndarray) else 0.0
            out[row] = p / (p + b) if p + b > 0 else 0.0
        elif top[row] == name:
            out[row] = p
    return out


def best_f1_threshold(
    scores: np.ndarray, correct: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> dict[str, float]:
    """The grid threshold with the best F1 of kept rows (``scores >= t``) against ``correct``;
    ties go to the lower threshold (more boxes kept)."""
    correct = np.asarray(correct, bool)
    best = {"threshold": float(grid[0]), "precision": 0.0, "recall": 0.0, "f1": -1.0}
    for threshold in grid:
        kept = scores >= threshold
        tp = int((kept & correct).sum())
        precision = tp / kept.sum() if kept.any() else 0.0
        recall = tp / correct.sum() if correct.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        if f1 > best["f1"] + 1e-12:
            best = {"threshold": float(threshold), "precision": precision, "recall": recall}
            best["f1"] = f1
    return {k: round(float(v), 4) for k, v in best.items()}


class CropVerifier:
    """Fit on the seeds (:meth:`fit`), then score and keep pool proposals (:meth:`score`,
    :func:`keep_verified`)."""

    def __init__(
        self,
        extractor: YoloFeatureExtractor,
        settings: CropVerifierSettings | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.extractor = extractor
        self.settings = settings or CropVerifierSettings()
        self.seed = seed
        self.model: Any = None
        self.threshold: float | None = self.settings.threshold
        self.calibration: dict[str, Any] = {}

    def _features(self, path: str, boxes: Sequence[Box]) -> np.ndarray:
        return self.crop_features([(path, boxes)])

    def crop_features(self, images: Sequence[tuple[str, Sequence[Sequence[float]]]]) -> np.ndarray:
        """The backbone descriptors of every box's crop, image after image (``images``: path and
        boxes), in one batch."""
        crops = [
            crop
            for path, boxes in images
            if len(boxes)
            for crop in crop_arrays(path, boxes, self.settings.crop_imgsz, self.settings.context)
        ]
        return self.extractor.extract_arrays(crops)

    def seed_samples(
        self,
        seeds: pd.DataFrame,
        seed_boxes: pd.DataFrame,
        seed_proposals: Mapping[str, Sequence[Proposal]],
    ) -> CropSamples:
        """The training crops of every seed image (see the module docstring), with features."""
        rng = np.random.default_rng(self.seed)
        truth = normalise_gt_boxes(
            seed_boxes.assign(image_id=seed_boxes["image_id"].astype(str)),
            seeds.assign(image_id=seeds["image_id"].astype(str)),
        )
        columns = ["x1", "y1", "x2", "y2"]
        sizes = (truth[["x2", "y2"]].to_numpy() - truth[["x1", "y1"]].to_numpy()).reshape(-1, 2)
        if not len(sizes):
            raise ValueError("the crop verifier needs at least one seed box")
        by_image = {str(k): g for k, g in truth.groupby("image_id")}
        samples, blocks = CropSamples(), []
        for image in seeds.itertuples(index=False):
            image_id = str(image.image_id)
            gt = by_image.get(image_id, truth.iloc[:0])
            gt_boxes = [tuple(r) for r in gt[columns].to_numpy(float)]
            image_class = str(getattr(image, "class_name", "") or "")
            rows: list[tuple[Box, str, bool]] = []
            for box, name in zip(gt_boxes, gt["class_name"].astype(str), strict=True):
                rows += [(box, name, False)] + [
                    (b, name, False) for b in jittered(box, self.settings.jitter, rng)
                ]
            for b in background_boxes(gt_boxes, sizes, self.settings.negatives_per_image, rng):
                rows.append((b, BACKGROUND, False))
            for proposal in seed_proposals.get(image_id, []):
                label = BACKGROUND
                if gt_boxes:
                    iou = _iou([proposal.box], gt_boxes)[0]
                    if iou.max() >= MATCH_IOU:
                        label = str(gt["class_name"].iloc[int(iou.argmax())])
                rows.append((tuple(proposal.box), label, True))  # type: ignore[arg-type]
            blocks.append(self._features(str(image.path), [r[0] for r in rows]))
            samples.image_ids += [image_id] * len(rows)
            samples.labels += [r[1] for r in rows]
            samples.is_proposal += [r[2] for r in rows]
            samples.image_classes += [
                image_class or (r[1] if r[1] != BACKGROUND else "") for r in rows
            ]
        samples.features = np.concatenate(blocks) if blocks else None
        return samples

    def fit(
        self,
        seeds: pd.DataFrame,
        seed_boxes: pd.DataFrame,
        seed_proposals: Mapping[str, Sequence[Proposal]],
    ) -> CropVerifier:
        """Learn the verifier from the seeds and, unless ``settings.threshold`` is set,
        calibrate the threshold (leave-one-seed-image-out)."""
        samples = self.seed_samples(seeds, seed_boxes, seed_proposals)
        self.fit_samples(samples)
        return self

    def fit_samples(self, samples: CropSamples) -> None:
        assert samples.features is not None
        features, labels = samples.features, np.asarray(samples.labels)
        if len(set(labels)) < 2:
            raise ValueError("the crop verifier needs seed boxes and background to learn from")
        self.model = _classifier(self.settings.c, self.seed).fit(features, labels)
        counts = pd.Series(labels).value_counts().to_dict()
        self.calibration = {"samples": {str(k): int(v) for k, v in sorted(counts.items())}}
        if self.threshold is None:
            scores, correct = self.held_out_scores(samples)
            chosen = best_f1_threshold(scores, correct)
            self.threshold = chosen["threshold"]
            self.calibration.update(
                method="leave-one-seed-image-out, best F1 of kept seed proposals",
                seed_proposals=len(scores),
                seed_proposals_correct=int(np.sum(correct)),
                **chosen,
            )
        else:
            self.calibration["method"] = "fixed"
            self.calibration["threshold"] = self.threshold

    def held_out_scores(self, samples: CropSamples) -> tuple[np.ndarray, np.ndarray]:
        """Each seed proposal's score by a verifier that never saw its image, and whether it is
        right to keep it (it matches a seed box of the image's class)."""
        assert samples.features is not None
        ids = np.asarray(samples.image_ids)
        labels = np.asarray(samples.labels)
        proposal = np.asarray(samples.is_proposal, bool)
        classes = np.asarray(samples.image_classes)
        scores, correct = [], []
        for image_id in dict.fromkeys(samples.image_ids):
            held = (ids == image_id) & proposal
            train = ids != image_id
            if not held.any() or len(set(labels[train])) < 2:
                continue
            model = _classifier(self.settings.c, self.seed).fit(
                samples.features[train], labels[train]
            )
            scores.append(
                class_scores(model, samples.features[held], classes[held], self.settings.rule)
            )
            correct.append(labels[held] == classes[held])
        if not scores:
            return np.zeros(0), np.zeros(0, bool)
        return np.concatenate(scores), np.concatenate(correct)

    def score(
        self,
        images: pd.DataFrame,
        proposals: Mapping[str, Sequence[Proposal]],
        image_classes: Mapping[str, str],
        chunk: int = 16,
    ) -> dict[str, list[tuple[Proposal, float]]]:
        """Each annotated image's proposals with the verifier's score for the image's class
        (its probability when it is the most probable class, else 0). Images called
        ``no_defect`` are left out."""
        if self.model is None:
            raise RuntimeError("fit() the crop verifier first")
        from tqdm.auto import tqdm

        from cascade_defect.progress import progress_disabled

        todo = list(_annotated(images, image_classes))
        out: dict[str, list[tuple[Proposal, float]]] = {}
        with tqdm(
            total=len(todo),
            desc="verify crops",
            unit="img",
            disable=progress_disabled(self.extractor.progress),
        ) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                found = {image_id: list(proposals.get(image_id, [])) for image_id, _ in part}
                features = self.crop_features(
                    [(path, [p.box for p in found[image_id]]) for image_id, path in part]
                )
                names = [image_classes[i] for i, _ in part for _ in found[i]]
                values = iter(class_scores(self.model, features, names, self.settings.rule))
                for image_id, _ in part:
                    name = image_classes[image_id]
                    out[image_id] = []
                    for p in found[image_id]:
                        v = float(next(values))
                        out[image_id].append((Proposal(p.box, v, name), v))
                bar.update(len(part))
        return out


def _annotated(images: pd.DataFrame, classes: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for row in images.itertuples(index=False):
        image_id = str(row.image_id)
        if classes.get(image_id, NO_DEFECT) != NO_DEFECT:
            yield image_id, str(row.path)


def keep_verified(
    scored: Mapping[str, Sequence[tuple[Proposal, float]]], threshold: float, keep_best: bool
) -> dict[str, list[Proposal]]:
    """Each image's proposals scoring at least ``threshold``, best first; with ``keep_best`` an
    image none of whose proposals clears it keeps its best one if that scored above 0."""
    out: dict[str, list[Proposal]] = {}
    for image_id, found in scored.items():
        ordered = sorted(found, key=lambda item: -item[1])
        kept = [p for p, s in ordered if s >= threshold]
        if not kept and keep_best and ordered and ordered[0][1] > 0:
            kept = [ordered[0][0]]
        out[image_id] = kept
    return out


@dataclass
class CropVerification:
    """The kept boxes, every scored proposal (to re-threshold without re-scoring), and what the
    verifier learnt and how long it took."""

    boxes: dict[str, list[Proposal]]
    scored: dict[str, list[tuple[Proposal, float]]]
    threshold: float
    details: dict[str, Any]


def crop_verify(
    *,
    verifier: CropVerifier,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    seed_proposals: Mapping[str, Sequence[Proposal]],
    pool: pd.DataFrame,
    proposals: Mapping[str, Sequence[Proposal]],
    image_classes: Mapping[str, str],
) -> CropVerification:
    """Fit ``verifier`` on the seeds, score the pool's proposals and keep the verified ones."""
    start = time.perf_counter()
    verifier.fit(seeds, seed_boxes, seed_proposals)
    fitted = time.perf_counter() - start
    scored = verifier.score(pool, proposals, image_classes)
    assert verifier.threshold is not None
    boxes = keep_verified(scored, verifier.threshold, verifier.settings.keep_best)
    details = {
        "settings": verifier.settings.model_dump(),
        "calibration": verifier.calibration,
        "proposals": sum(len(v) for v in scored.values()),
        "kept": sum(len(v) for v in boxes.values()),
        "fit_seconds": round(fitted, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("crop verifier: %s", details)
    return CropVerification(boxes, scored, verifier.threshold, details)

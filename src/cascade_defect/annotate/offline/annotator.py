"""The offline few-shot annotator: free, local, and interchangeable with the MLLM annotator.

It writes the same :class:`AnnotationRecord` / :class:`DefectPrediction` records into the same
:class:`AnnotationStore` as the multimodal-LLM annotator (``annotator="offline"``, zero cost and
usage), so chapter 03's exports, the audit and the cost chapter treat both alike. It answers the
study's question from the other side: how far do 18 labelled images go without any LLM?
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.annotate.offline.classifier import ClassifierSettings, FewShotClassifier
from cascade_defect.annotate.offline.features import FeatureBlock, FeatureSpec, YoloFeatureExtractor
from cascade_defect.annotate.offline.gate import GateSettings, combine, defect_probability
from cascade_defect.annotate.offline.patches import (
    PatchFeatureExtractor,
    PatchSpec,
    anomaly_scores,
)
from cascade_defect.annotate.schema import (
    NO_DEFECT,
    AnnotationRecord,
    Usage,
    annotation_key,
    canonical_json,
    prediction_model_for,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.hashing import sha256_bytes
from cascade_defect.progress import progress_disabled

if TYPE_CHECKING:
    from cascade_defect.annotate.defect_gate import GatedAnswers

log = logging.getLogger(__name__)

ANNOTATOR_NAME = "offline"
AnnotateBoxStrategy = Literal["none", "whole_image", "seed_detector"]
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)


@dataclass
class AnnotationSummary:
    """What one ``annotate`` call did, for the notebook and the chapter manifest."""

    n_images: int
    n_written: int
    n_skipped: int
    class_counts: dict[str, int]
    mean_confidence: float
    box_strategy: str
    model: str
    prompt_hash: str
    seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


class OfflineAnnotator:
    """Few-shot image classifier on COCO-pretrained YOLOv8n features.

    ``fit`` takes the labelled seeds; ``annotate`` labels a pool (a frame *without* classes) and
    appends one record per image to a store. Features are cached under ``cache_dir`` by content
    hash, so re-runs cost only the classifier (about a second for NEU-DET's pool).

    ``transductive`` (default: ``classifier.transductive``, itself True by default) chooses
    between the pool-structure classifier and the seeds-only baseline; see
    :mod:`cascade_defect.offline.classifier`.
    """

    def __init__(
        self,
        weights: str,
        *,
        imgsz: int = 224,
        layers: Sequence[int] = (2, 4, 6, 8, 9),
        stats: Sequence[str] = ("mean", "std"),
        hflip: bool = False,
        transductive: bool | None = None,
        classifier: ClassifierSettings | None = None,
        gate: GateSettings | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        threads: int | None = 1,
        progress: bool = True,
    ) -> None:
        settings = classifier or ClassifierSettings()
        if transductive is not None and transductive != settings.transductive:
            settings = replace(settings, transductive=transductive)
        self.extractor = YoloFeatureExtractor(
            weights,
            FeatureSpec(imgsz=imgsz, layers=tuple(layers), stats=tuple(stats), hflip=hflip),
            cache_dir=cache_dir,
            config_dir=config_dir,
            device=device,
            threads=threads,
            progress=progress,
        )
        self.classifier = FewShotClassifier(settings)
        self.gate = gate or GateSettings()
        self.progress = progress
        self._backbone_args = {
            "weights": weights,
            "cache_dir": cache_dir,
            "config_dir": config_dir,
            "device": device,
            "threads": threads,
        }
        self.patches: PatchFeatureExtractor | None = None
        self.class_names: list[str] = []
        """The dataset's defect classes."""
        self.answer_classes: list[str] = []
        """The classes answered: ``class_names``, plus ``no_defect`` when a seed shows none."""
        self._gated = False
        self._seed_gate: dict[str, Any] = {}
        self.seed_images: pd.DataFrame | None = None
        self.seed_boxes: pd.DataFrame | None = None
        self._seed_features: np.ndarray | None = None
        self.seconds: dict[str, float] = {}

    # -- identity ------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The configured method, in a few words: part of every annotation key."""
        return self._describe(
            "transductive-vmf" if self.classifier.settings.transductive else "logreg"
        )

    @property
    def answered_by(self) -> str:
        """``model_name``, unless the seed check answered with the seeds-only classifier.

        The annotation key keeps the configured ``model_name`` (the method asked for), so a
        re-run finds its records; the records' ``model`` and the summary say which answered.
        """
        if self.classifier.diagnostics.get("mode") == "inductive (seed check)":
            return self._describe("logreg (seed check over transductive-vmf)")
        return self.model_name

    def _describe(self, classifier: str) -> str:
        gate = "+patch-gate" if self._gated else ""
        return f"yolov8n-coco-features{gate}+{classifier}"

    @property
    def prompt_hash(self) -> str:
        """Hash of the few-shot 'prompt': the seed images (by content) and their classes.

        The MLLM annotator hashes its prompt, which holds the same seed images; here the seeds
        are the whole prompt, so a different seed draw gives different keys.
        """
        if self.seed_images is None:
            raise RuntimeError("fit() the annotator on the seeds first")
        seeds = sorted(zip(self.seed_images["sha256"], self.seed_images["class_name"], strict=True))
        payload = {"seeds": seeds, "class_names": self.class_names}
        return sha256_bytes(canonical_json(payload).encode("utf-8"))

    def params(self) -> dict[str, Any]:
        """Settings that change the answer, recorded with (and hashed into the key of) each record."""
        params = {
            "features": self.extractor.describe(),
            "classifier": self.classifier.settings.as_params(),
        }
        if NO_DEFECT in self.answer_classes:
            params["gate"] = self.gate.as_params()
            if self.patches is not None:
                params["patches"] = self.patches.describe()
        return params

    # -- fitting -------------------------------------------------------------------

    def fit(
        self,
        seed_images: pd.DataFrame,
        seed_boxes: pd.DataFrame | None,
        class_names: Sequence[str],
    ) -> OfflineAnnotator:
        """Learn from the labelled seeds (``image_id, path, class_name`` and ideally ``sha256``).

        ``seed_boxes`` (``image_id, class_name, xmin, ymin, xmax, ymax``) are kept for the
        ``seed_detector`` box strategy; the classifier itself is image-level.

        Seeds labelled ``no_defect`` (defect-free images; ``class_names`` lists defect classes
        only) make ``no_defect`` a possible answer. With the gate enabled, patch anomaly scores
        against those seeds decide defect or not, and the classifier only names the defect.
        """
        _require_columns(seed_images, ("image_id", "path", "class_name"), "seed_images")
        seeds = _with_sha256(seed_images)
        self.class_names = [
            name for name in dict.fromkeys(str(n) for n in class_names) if name != NO_DEFECT
        ]
        labels = seeds["class_name"].astype(str).to_numpy()
        clean = labels == NO_DEFECT
        self.answer_classes = [*self.class_names, NO_DEFECT] if clean.any() else self.class_names
        self._gated = bool(clean.any() and (~clean).any() and self.gate.enabled)
        start = time.perf_counter()
        self._seed_features = self.extractor.extract(seeds["path"], seeds["sha256"])
        self.seconds = {"seed_features": time.perf_counter() - start}
        start = time.perf_counter()
        if self._gated:
            hashes = self._patch_extractor().ensure(seeds["path"], seeds["sha256"])
            reference = [h for h, c in zip(hashes, clean, strict=True) if c]
            defect = [h for h, c in zip(hashes, clean, strict=True) if not c]
            clean_scores = anomaly_scores(
                self._patches(), reference, reference, top_k=self.gate.top_k, progress=False
            )
            defect_scores = anomaly_scores(
                self._patches(), reference, defect, top_k=self.gate.top_k, progress=False
            )
            self._seed_gate = {
                "reference": reference,
                "clean_scores": clean_scores.scores,
                "defect_scores": defect_scores.scores,
            }
            features, blocks = self._type_features(self._seed_features[~clean], defect_scores.focus)
            self.classifier.fit(features, labels[~clean].tolist(), self.class_names, blocks)
        else:
            self.classifier.fit(
                self._seed_features, labels.tolist(), self.answer_classes, self.extractor.blocks()
            )
        self.seconds["fit"] = time.perf_counter() - start
        self.seed_images = seeds.reset_index(drop=True)
        self.seed_boxes = None if seed_boxes is None else seed_boxes.copy()
        return self

    # -- prediction ----------------------------------------------------------------

    def predict_proba(self, pool: pd.DataFrame) -> pd.DataFrame:
        """Class probabilities for every pool image: ``image_id`` plus one column per class.

        Only ``image_id``, ``path`` and ``sha256`` of ``pool`` are read; a ``class_name`` column, if
        present, is dropped before anything else happens. The answer uses the structure of the
        whole pool passed in (transductive mode) and its class mix (the pool-weighted
        temperature), so pass it all at once.
        """
        if self.seed_images is None:
            raise RuntimeError("fit() the annotator on the seeds first")
        unlabelled = _unlabelled(pool)
        start = time.perf_counter()
        features = self.extractor.extract(unlabelled["path"], unlabelled["sha256"])
        self.seconds["pool_features"] = time.perf_counter() - start
        start = time.perf_counter()
        if self._gated:
            probabilities = self._predict_gated(unlabelled, features)
        else:
            probabilities = self.classifier.predict_proba(features)
        self.seconds["predict"] = time.perf_counter() - start
        frame = pd.DataFrame(probabilities, columns=self.answer_classes)
        frame.insert(0, "image_id", unlabelled["image_id"].to_numpy())
        return frame

    def predict(self, pool: pd.DataFrame) -> pd.DataFrame:
        """``image_id, class_name, confidence`` (the most probable class and its probability)."""
        probabilities = self.predict_proba(pool)
        values = probabilities[self.answer_classes].to_numpy()
        best = values.argmax(axis=1)
        return pd.DataFrame(
            {
                "image_id": probabilities["image_id"],
                "class_name": np.array(self.answer_classes)[best],
                "confidence": values[np.arange(len(values)), best],
            }
        )

    # -- defect gate ---------------------------------------------------------------

    def _patch_extractor(self) -> PatchFeatureExtractor:
        if self.patches is None:
            args = self._backbone_args
            self.patches = PatchFeatureExtractor(
                args["weights"],
                PatchSpec(imgsz=self.gate.imgsz, layers=self.gate.layers, stride=self.gate.stride),
                cache_dir=args["cache_dir"],
                config_dir=args["config_dir"],
                device=args["device"],
                threads=args["threads"],
                progress=self.progress,
            )
        return self.patches

    def _patches(self) -> PatchFeatureExtractor:
        assert self.patches is not None
        return self.patches

    def _type_features(
        self, features: np.ndarray, focus: np.ndarray
    ) -> tuple[np.ndarray, list[FeatureBlock]]:
        """Global descriptors, plus the most anomalous patches' descriptor as one more block."""
        blocks = self.extractor.blocks()
        if not self.gate.focus:
            return features, blocks
        end = blocks[-1].stop
        extra = FeatureBlock(-1, "focus", end, end + focus.shape[1])
        return np.hstack([features, focus]).astype(np.float64), [*blocks, extra]

    def _predict_gated(self, unlabelled: pd.DataFrame, features: np.ndarray) -> np.ndarray:
        """``P(defect)`` from the patch anomaly mixture times ``P(class | defect)``."""
        patches = self._patch_extractor()
        start = time.perf_counter()
        hashes = patches.ensure(unlabelled["path"], unlabelled["sha256"])
        scored = anomaly_scores(
            patches,
            self._seed_gate["reference"],
            hashes,
            top_k=self.gate.top_k,
            progress=self.progress,
        )
        self.seconds["patch_scores"] = time.perf_counter() - start
        fit = defect_probability(
            self._seed_gate["clean_scores"],
            self._seed_gate["defect_scores"],
            scored.scores,
            max_iter=self.gate.em_max_iter,
        )
        type_features, _ = self._type_features(features, scored.focus)
        type_proba = self.classifier.predict_proba(type_features)
        self.classifier.diagnostics["gate"] = {
            "defect_rate": fit.defect_rate,
            "log_score_means": fit.means,
            "log_score_sds": fit.sds,
            "seed_auc": fit.seed_auc,
            "em_iterations": fit.iterations,
        }
        return combine(fit.p_defect, type_proba)

    # -- annotation ----------------------------------------------------------------

    def annotate(
        self,
        pool: pd.DataFrame,
        store: AnnotationStore,
        *,
        box_strategy: AnnotateBoxStrategy = "none",
        detector: Any = None,
        gate: GatedAnswers | None = None,
    ) -> AnnotationSummary:
        """Label every pool image and append one ``ok`` record per image to ``store``.

        ``box_strategy`` decides the boxes stored in each record: ``none`` (the default: the
        classifier knows classes, not positions; :func:`cascade_defect.boxes.pseudo_boxes` adds
        boxes later under any strategy), ``whole_image`` (one box over the image) or
        ``seed_detector`` (boxes proposed by ``detector``, a trained
        :class:`cascade_defect.boxes.SeedDetector`, given the image's class). Records whose key is
        already answered in the store are not written again.

        ``gate`` (:func:`cascade_defect.annotate.defect_gate.gate_with_detector`'s answers for this
        annotator's :meth:`predict_proba`) replaces the answers and probabilities with the defect
        gate's; its params are part of every record's key.
        """
        if self.seed_images is None:
            raise RuntimeError("fit() the annotator on the seeds first")
        if box_strategy not in ("none", "whole_image", "seed_detector"):
            raise ValueError(
                f"box_strategy must be 'none', 'whole_image' or 'seed_detector', got {box_strategy!r}"
            )
        if box_strategy == "seed_detector" and detector is None:
            raise ValueError(
                "box_strategy='seed_detector' needs a trained SeedDetector (detector=)"
            )
        total_start = time.perf_counter()
        unlabelled = _unlabelled(pool)
        params = {**self.params(), "box_strategy": box_strategy}
        settings = self.classifier.settings
        if settings.transductive or settings.pool_weighted_temperature:
            # The answer (or its temperature) depends on the pool, so the pool is part of the
            # request.
            params["pool_sha256"] = sha256_bytes("\n".join(sorted(unlabelled["sha256"])).encode())
        if box_strategy == "seed_detector":
            params["detector"] = detector.describe()
        if gate is not None:
            params["defect_gate"] = gate.params
        prompt_hash = self.prompt_hash
        image_bytes = {row.image_id: Path(row.path).read_bytes() for row in unlabelled.itertuples()}
        keys = {
            image_id: annotation_key(self.model_name, prompt_hash, data, params)
            for image_id, data in image_bytes.items()
        }
        answered = store.answered_keys()
        todo = unlabelled[[keys[i] not in answered for i in unlabelled["image_id"]]]
        summary = AnnotationSummary(
            n_images=len(unlabelled),
            n_written=0,
            n_skipped=len(unlabelled) - len(todo),
            class_counts={},
            mean_confidence=float("nan"),
            box_strategy=box_strategy,
            model=self.model_name,
            prompt_hash=prompt_hash,
        )
        if todo.empty:
            latest = store.latest_by_key()
            stored = (latest.get(key) for key in keys.values())
            summary.model = next((r.model for r in stored if r is not None), summary.model)
            log.info(
                "all %d pool images already annotated under this key; nothing to do",
                len(unlabelled),
            )
            summary.seconds = {"total": time.perf_counter() - total_start}
            return summary

        # The classifier always sees the whole pool: its structure is what it learns from.
        probabilities = self.predict_proba(unlabelled) if gate is None else gate.probabilities
        summary.model = self.answered_by + (" + defect gate" if gate is not None else "")
        proposals: dict[str, list[Any]] = {}
        if box_strategy == "seed_detector":
            start = time.perf_counter()
            proposals = detector.propose(todo)
            self.seconds["boxes"] = time.perf_counter() - start
        answer_model = prediction_model_for(self.class_names)
        compute_seconds = self.seconds.get("pool_features", 0.0) + self.seconds.get("predict", 0.0)
        latency = compute_seconds / max(len(unlabelled), 1)
        by_id = probabilities.set_index("image_id")
        counts: Counter[str] = Counter()
        confidences = []
        for row in tqdm(
            todo.itertuples(index=False),
            total=len(todo),
            desc="Writing records",
            unit="img",
            disable=progress_disabled(self.progress),
        ):
            probs = by_id.loc[row.image_id, self.answer_classes].to_numpy(dtype=float)
            order = np.argsort(-probs)
            best = self.answer_classes[order[0]]
            if gate is not None:
                best = gate.answers[str(row.image_id)]
                order = np.array(
                    [
                        self.answer_classes.index(best),
                        *order[order != self.answer_classes.index(best)],
                    ]
                )
            runner_up = self.answer_classes[order[1 % len(order)]]
            confidence = float(np.clip(probs[order[0]], 0.0, 1.0))
            boxes = (
                []
                if best == NO_DEFECT
                else _boxes_for(box_strategy, proposals.get(row.image_id, []))
            )
            prediction = answer_model(
                defect_class=best,
                confidence=confidence,
                reasoning=(
                    (
                        "Seed detector crops and feature-space classifier (defect gate): "
                        if gate is not None
                        else "Nearest seed cluster in YOLOv8n feature space: "
                    )
                    + f"{best} (p={confidence:.2f}); runner-up {runner_up} "
                    f"(p={probs[order[1 % len(order)]]:.2f})."
                ),
                bounding_box_present=bool(boxes),
                boxes=[{"defect_class": best, "box": list(box)} for box in boxes],
            )
            record = AnnotationRecord(
                key=keys[row.image_id],
                image_id=str(row.image_id),
                image_sha256=str(row.sha256),
                annotator=ANNOTATOR_NAME,
                model=summary.model,
                prompt_hash=prompt_hash,
                params=params,
                status="ok",
                prediction=prediction,
                usage=Usage(),
                cost_usd=0.0,
                latency_s=latency,
            )
            store.append(record)
            counts[best] += 1
            confidences.append(confidence)
        summary.n_written = len(todo)
        summary.class_counts = dict(sorted(counts.items()))
        summary.mean_confidence = float(np.mean(confidences))
        summary.diagnostics = dict(self.classifier.diagnostics)
        summary.seconds = {**self.seconds, "total": time.perf_counter() - total_start}
        return summary


def _boxes_for(strategy: str, proposals: Sequence[Any]) -> list[tuple[float, ...]]:
    """The boxes stored in a record; a detector that proposes nothing falls back to the image."""
    if strategy == "none":
        return []
    if strategy == "whole_image":
        return [WHOLE_IMAGE_BOX]
    boxes = [tuple(float(v) for v in proposal.box) for proposal in proposals]
    boxes = [box for box in boxes if _valid_box(box)]
    return boxes or [WHOLE_IMAGE_BOX]


def _valid_box(box: Sequence[float]) -> bool:
    """What :class:`BoxPrediction` accepts: four normalised numbers with x1 < x2 and y1 < y2."""
    return (
        len(box) == 4 and all(0.0 <= v <= 1.0 for v in box) and box[0] < box[2] and box[1] < box[3]
    )


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")


def _with_sha256(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``sha256`` column, computed from the files where the listing lacks it."""
    frame = frame.copy()
    if "sha256" not in frame.columns or frame["sha256"].isna().any():
        frame["sha256"] = [sha256_bytes(Path(p).read_bytes()) for p in frame["path"]]
    frame["sha256"] = frame["sha256"].astype(str)
    return frame


def _unlabelled(pool: pd.DataFrame) -> pd.DataFrame:
    """Only the columns an annotator may read: identity and file, never a class or a box."""
    _require_columns(pool, ("image_id", "path"), "pool")
    kept = [column for column in ("image_id", "path", "sha256") if column in pool.columns]
    frame = _with_sha256(pool[kept]).reset_index(drop=True)
    if frame["image_id"].duplicated().any():
        raise ValueError("pool image_id values must be unique")
    return frame

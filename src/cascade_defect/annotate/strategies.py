"""The proposals behind the box strategies that need a detector, for chapter 03 and the CLI alike.

``whole_image`` and ``annotator`` boxes come straight from the annotator's answers. The other
strategies start from the seed detector's proposals, trained once and shared:

- ``seed_detector``: the proposals as they are, or, with ``annotation.seed_detector_ensemble``,
  the fused proposals of several seed detectors (:func:`ensemble_proposals`);
- ``self_training``: cross-fitted class-aware teachers taught by them
  (:mod:`cascade_defect.annotate.self_training`);
- ``mllm_verified``: each image's proposals drawn as numbered boxes and checked by the MLLM in
  one request (:mod:`cascade_defect.annotate.mllm.verify`); an image whose check failed keeps
  its proposals unchecked, as ``seed_detector`` would, so a failed request never costs a box;
- ``crop_verified``: the detector's low-score proposals kept or dropped by a few-shot classifier
  of their crops (:mod:`cascade_defect.annotate.crop_verifier`).

``classifier_cam`` needs no detector: boxes around the activation map of a YOLOv8n-cls trained on
the seeds and the annotator's confident labels (:mod:`cascade_defect.annotate.cam_boxes`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cascade_defect.annotate.boxes import Proposal, SeedDetector, SeedDetectorSettings
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.box_settings import (
    CamBoxSettings,
    CropVerifierSettings,
    SeedEnsembleSettings,
    SelfTrainingSettings,
    SyntheticDefectSettings,
)

if TYPE_CHECKING:
    from cascade_defect.annotate.crop_verifier import CropVerifier

log = logging.getLogger(__name__)

NEEDS_MLLM: frozenset[str] = frozenset({"annotator", "mllm_verified"})
"""Strategies the offline annotator cannot serve: it has no boxes and no model to ask."""
NEEDS_DETECTOR: frozenset[str] = frozenset(
    {"seed_detector", "self_training", "mllm_verified", "crop_verified"}
)
NEEDS_PROPOSALS: frozenset[str] = NEEDS_DETECTOR | {"classifier_cam"}
"""Strategies whose boxes :func:`strategy_proposals` computes."""


@dataclass(frozen=True)
class DetectorRecipe:
    """Where and how the detector-based strategies train (chapter 03's profile, or defaults)."""

    weights: str | Path
    work_dir: Path
    seed_detector: SeedDetectorSettings
    self_training: SelfTrainingSettings
    device: str = "cpu"
    seed: int = 0
    config_dir: Path | None = None
    threads: int | None = None
    crop_verifier: CropVerifierSettings = field(default_factory=CropVerifierSettings)
    classifier_cam: CamBoxSettings = field(default_factory=CamBoxSettings)
    synthetic_defects: int = 0
    """Synthetic tiles (seed defects on defect-free seeds) added to the seed detector's training."""
    ensemble: SeedEnsembleSettings | None = None
    """Several seed detectors for the ``seed_detector`` strategy; None: one."""


def seed_training_set(
    seeds: pd.DataFrame, seed_boxes: pd.DataFrame, synthetic: int, work_dir: Path, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed detector's training images and boxes: the seeds, plus ``synthetic`` tiles made
    from them under ``work_dir/synthetic`` (:mod:`cascade_defect.annotate.synthetic_defects`)."""
    if not synthetic:
        return seeds, seed_boxes
    from cascade_defect.annotate.synthetic_defects import synthesise_defects

    images, boxes = synthesise_defects(
        seeds, seed_boxes, synthetic, Path(work_dir) / "synthetic", seed=seed
    )
    return (
        pd.concat([seeds, images], ignore_index=True),
        pd.concat([seed_boxes, boxes], ignore_index=True),
    )


def synthetic_plan(
    settings: SyntheticDefectSettings, seeds: pd.DataFrame
) -> tuple[int, dict[str, int]]:
    """The synthetic tiles these seeds get, and the seed-detector settings that change with them:
    ``auto`` adds tiles only where the seeds include defect-free images to paste onto, and with
    tiles the detector trains on the synthetic schedule (chapter 03, the folder command and the
    benchmarks all decide here)."""
    has_clean = bool((seeds["class_name"].astype(str) == NO_DEFECT).any())
    tiles = settings.tile_count(has_defect_free_seeds=has_clean)
    return tiles, ({"epochs": settings.epochs} if tiles else {})


def train_seed_detector(
    recipe: DetectorRecipe,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    progress: bool = True,
    member: int = 0,
) -> tuple[SeedDetector, dict[str, Any]]:
    """The seed detector of ``recipe`` trained on the seeds (and its synthetic tiles), and what
    chapter 03's summary records of it. ``member`` > 0: another member of an ensemble, whose
    random seeds (training and synthetic tiles) are the recipe's plus ``member``."""
    settings = replace(recipe.seed_detector, seed=recipe.seed_detector.seed + member)
    work_dir = recipe.work_dir / "seed_detector"
    detector = SeedDetector(
        recipe.weights,
        work_dir / f"member_{member}" if member else work_dir,
        settings,
        config_dir=recipe.config_dir,
        threads=recipe.threads,
        progress=progress,
    )
    training = seed_training_set(
        seeds, seed_boxes, recipe.synthetic_defects, detector.work_dir, recipe.seed + member
    )
    trained = detector.train(*training, class_names)
    return detector, {
        "settings": settings.describe(),
        "synthetic_tiles": recipe.synthetic_defects,
        "n_images": trained.n_images,
        "n_boxes": trained.n_boxes,
        "train_seconds": round(trained.seconds, 1),
    }


def runnable_strategies(strategies: Sequence[str], annotator: str) -> list[str]:
    """The strategies this annotator can serve, in order; the others are logged and skipped."""
    kept = []
    for strategy in strategies:
        if annotator == "offline" and strategy in NEEDS_MLLM:
            log.info("the offline annotator cannot serve the %r box strategy: skipped", strategy)
            continue
        kept.append(strategy)
    return kept


def strategy_proposals(
    strategies: Sequence[str],
    *,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    recipe: DetectorRecipe,
    options: AnnotatorOptions,
    seed_examples: Sequence[Any] = (),
    detector: SeedDetector | None = None,
    trained_details: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, list[Proposal]]], dict[str, Any]]:
    """Proposals per detector-based strategy in ``strategies`` (others get none), and what each
    did (teachers, verification requests and cost). ``options`` must be resolved. ``detector``:
    a seed detector already trained from ``recipe`` (by the defect gate), with
    ``trained_details``, :func:`train_seed_detector`'s record of it; else one is trained here."""
    wanted = [s for s in strategies if s in NEEDS_PROPOSALS]
    if not wanted:
        return {}, {}
    proposed: dict[str, list[Proposal]] = {}
    details: dict[str, Any] = {}
    if NEEDS_DETECTOR & set(wanted):
        if detector is None:
            detector, details["seed_detector"] = train_seed_detector(
                recipe, seeds, seed_boxes, class_names, progress=options.progress
            )
        elif trained_details is not None:
            details["seed_detector"] = trained_details
        if recipe.ensemble is None:
            proposed, turned = quarter_turn_views(
                [detector], pool, recipe, progress=options.progress
            )
        else:
            proposed, details["seed_ensemble"], turned = ensemble_proposals(
                detector, recipe, seeds, seed_boxes, pool, class_names, progress=options.progress
            )
        if turned is not None:
            details["quarter_turn"] = turned
    image_classes = dict(zip(predictions["image_id"], predictions["defect_class"], strict=True))
    out: dict[str, dict[str, list[Proposal]]] = {}
    for strategy in wanted:
        if strategy == "seed_detector":
            out[strategy] = proposed
        elif strategy == "self_training":
            from cascade_defect.annotate.self_training import self_train

            result = self_train(
                seeds=seeds,
                seed_boxes=seed_boxes,
                pool=pool,
                image_classes=image_classes,
                initial=proposed,
                class_names=class_names,
                weights=recipe.weights,
                work_dir=recipe.work_dir / "self_training",
                settings=recipe.self_training,
                device=recipe.device,
                seed=recipe.seed,
                config_dir=recipe.config_dir,
                threads=recipe.threads,
                progress=options.progress,
            )
            out[strategy] = result.boxes
            details[strategy] = {
                "settings": recipe.self_training.model_dump(),
                "teachers": result.teachers,
            }
        elif strategy == "mllm_verified":
            out[strategy], details[strategy] = _verified(
                proposed, pool, image_classes, class_names, recipe, options, seed_examples
            )
        elif strategy == "crop_verified":
            out[strategy], details[strategy] = _crop_verified(
                detector, seeds, seed_boxes, pool, image_classes, recipe, options
            )
        elif strategy == "classifier_cam":
            out[strategy], details[strategy] = _classifier_cam(
                seeds, seed_boxes, pool, predictions, image_classes, class_names, recipe, options
            )
    return out, details


def ensemble_proposals(
    first: SeedDetector,
    recipe: DetectorRecipe,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    class_names: Sequence[str],
    *,
    progress: bool = True,
) -> tuple[dict[str, list[Proposal]], dict[str, Any], dict[str, Any] | None]:
    """The pool proposals of ``recipe.ensemble.members`` seed detectors, fused: ``first`` (trained)
    and the others trained here from the same seeds with the next random seeds; what the
    ensemble did; and what :func:`quarter_turn_views` did (None: off).

    Fine-tuned on a handful of images, a detector lands wherever its random seed (augmentation,
    mosaic, batch order) takes it, and members miss or mis-draw different boxes. Each proposes
    from ``member_conf`` (with the settings' flips); weighted boxes fusion (``ensemble-boxes``,
    :func:`~cascade_defect.annotate.fragments.fuse_views`) averages the corners of the boxes they
    share and divides a box's score by the number of members, so a box only one member saw is
    kept only if its score reaches ``seed_detector_conf`` times the members. Fused boxes are kept
    from ``seed_detector_conf``, as one detector's are.
    """

    ensemble = recipe.ensemble
    if ensemble is None:
        raise ValueError(
            "the recipe has no seed detector ensemble (annotation.seed_detector_ensemble)"
        )
    if first.trained is None:
        raise RuntimeError("train() the first seed detector before its ensemble")
    members = [first.trained.weights]
    trained = []
    for member in range(1, ensemble.members):
        detector, record = train_seed_detector(
            recipe, seeds, seed_boxes, class_names, progress=progress, member=member
        )
        assert detector.trained is not None
        members.append(detector.trained.weights)
        trained.append(record)
    low = replace(first.settings, conf=ensemble.member_conf)
    detectors = [
        SeedDetector.from_trained(weights, low, config_dir=recipe.config_dir, progress=progress)
        for weights in members
    ]
    fused, turned = quarter_turn_views(
        detectors, pool, recipe, min_score=first.settings.conf, progress=progress
    )
    return fused, {"settings": ensemble.model_dump(), "members": trained}, turned


def quarter_turn_views(
    detectors: Sequence[SeedDetector],
    pool: pd.DataFrame,
    recipe: DetectorRecipe,
    *,
    min_score: float | None = None,
    progress: bool = True,
) -> tuple[dict[str, list[Proposal]], dict[str, Any] | None]:
    """The pool proposals of ``detectors`` (each with its settings' flips; several are fused with
    weighted boxes fusion, kept from ``min_score``) and, where the recipe's ``turn_ratio`` is
    set, the same on the pool turned a quarter, each image keeping the view
    :func:`~cascade_defect.annotate.orientation.choose_orientation` picks; with what it did."""
    from cascade_defect.annotate.fragments import fuse_detectors
    from cascade_defect.annotate.orientation import (
        choose_orientation,
        turned_back,
        turned_copies,
    )

    def fused(images: pd.DataFrame) -> dict[str, list[Proposal]]:
        found = [d.propose(images, flips=d.settings.flips) for d in detectors]
        floor = detectors[0].settings.conf if min_score is None else min_score
        return fuse_detectors(found, floor)

    plain = fused(pool)
    ratio = recipe.seed_detector.turn_ratio
    if ratio is None:
        return plain, None
    turned_pool = turned_copies(pool, recipe.work_dir / "quarter_turned", progress=progress)
    turned = {
        image_id: [turned_back(p) for p in found] for image_id, found in fused(turned_pool).items()
    }
    chosen, took = choose_orientation(plain, turned, ratio)
    log.info("quarter turn: %d of %d pool images took the turned view", len(took), len(chosen))
    return chosen, {"turn_ratio": ratio, "images_turned": len(took), "images": len(chosen)}


def crop_verifier_for(recipe: DetectorRecipe, threshold: float | None = None) -> CropVerifier:
    """An unfitted crop verifier with ``recipe``'s settings (``threshold``, when given, fixes the
    keep threshold instead of calibrating it on the seeds)."""
    from cascade_defect.annotate.crop_verifier import CropVerifier
    from cascade_defect.annotate.offline.features import FeatureSpec, YoloFeatureExtractor

    settings = recipe.crop_verifier
    if threshold is not None:
        settings = settings.model_copy(update={"threshold": threshold})
    extractor = YoloFeatureExtractor(
        str(recipe.weights),
        FeatureSpec(imgsz=settings.crop_imgsz),
        config_dir=recipe.config_dir,
        device=recipe.device,
        progress=False,
    )
    return CropVerifier(extractor, settings, seed=recipe.seed)


def _crop_verified(
    detector: SeedDetector,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    image_classes: dict[str, str],
    recipe: DetectorRecipe,
    options: AnnotatorOptions,
) -> tuple[dict[str, list[Proposal]], dict[str, Any]]:
    """The trained seed detector re-proposes at the verifier's low score, seeds and pool alike."""
    from cascade_defect.annotate.crop_verifier import crop_verify, low_score_proposer

    low = low_score_proposer(detector, recipe.crop_verifier, progress=options.progress)
    result = crop_verify(
        verifier=crop_verifier_for(recipe),
        seeds=seeds,
        seed_boxes=seed_boxes,
        seed_proposals=low.propose(seeds),
        pool=pool,
        proposals=low.propose(pool),
        image_classes=image_classes,
    )
    return result.boxes, result.details


def _classifier_cam(
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    predictions: pd.DataFrame,
    image_classes: dict[str, str],
    class_names: Sequence[str],
    recipe: DetectorRecipe,
    options: AnnotatorOptions,
) -> tuple[dict[str, list[Proposal]], dict[str, Any]]:
    """Boxes from the given classifier's maps, or from a small one trained here first."""
    from cascade_defect.annotate.cam_boxes import cam_boxes, train_cam_classifier

    settings = recipe.classifier_cam
    trained: dict[str, Any] = {}
    classifier: str | Path | None = settings.weights
    if classifier is None:
        training = train_cam_classifier(
            seeds=seeds,
            pool=pool,
            predictions=predictions,
            class_names=class_names,
            weights=recipe.weights,
            work_dir=recipe.work_dir / "classifier_cam",
            settings=settings,
            device=recipe.device,
            seed=recipe.seed,
            config_dir=recipe.config_dir,
            threads=recipe.threads,
            progress=options.progress,
        )
        classifier = training.best_weights
        trained = {"train_seconds": round(training.wall_seconds, 1), **training.holdout_metrics}
    result = cam_boxes(
        classifier=classifier,
        seeds=seeds,
        seed_boxes=seed_boxes,
        pool=pool,
        image_classes=image_classes,
        settings=settings,
        device=recipe.device,
        config_dir=recipe.config_dir,
        progress=options.progress,
    )
    return result.boxes, {**result.details, **({"classifier": trained} if trained else {})}


def _verified(
    proposed: dict[str, list[Proposal]],
    pool: pd.DataFrame,
    image_classes: dict[str, str],
    class_names: Sequence[str],
    recipe: DetectorRecipe,
    options: AnnotatorOptions,
    seed_examples: Sequence[Any],
) -> tuple[dict[str, list[Proposal]], dict[str, Any]]:
    from cascade_defect.annotate.mllm.annotator import PoolImage
    from cascade_defect.annotate.mllm.verify import MllmProposalVerifier, verify_proposals

    verifier = MllmProposalVerifier.from_options(
        class_names, recipe.work_dir / "verification.jsonl", options, seeds=seed_examples
    )
    images = [
        PoolImage(str(row.image_id), Path(row.path))
        for row in pool.itertuples(index=False)
        if str(row.image_id) in image_classes
    ]
    result = verify_proposals(
        verifier, images, proposed, image_classes=image_classes, class_constraints=image_classes
    )
    boxes = {**result.verified, **result.unverified}
    return boxes, result.as_dict()

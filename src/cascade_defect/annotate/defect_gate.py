"""Defect or not on a line: the seed detector's crops join the offline annotator's answer.

On a production-like pool most images are defect-free and the defects are small. The offline
annotator sees one globally pooled feature per image, which a small defect on a large tile
barely moves: on Magnetic-tile it finds about half the defective tiles and names the defect of
those it finds about half the time. The seed detector (chapter 03's, trained on the seeds and,
on a line, the synthetic tiles) looks for the defect itself, and a few-shot classifier of its
proposals' crops (:class:`~cascade_defect.annotate.crop_verifier.CropVerifier`, fitted on the
seeds' boxes against background crops) says whether a crop shows a defect and which. So, for
every pool image:

1. the detector proposes at the crop verifier's low score and its ``top_proposals`` best crops
   are judged; the image's *crop evidence* is the highest ``1 - P(background)`` among them, and
   its defect type the per-class highest probability among them;
2. ``P(defect)`` pools that evidence with the annotator's own ``1 - P(no_defect)``, two
   calibrated-by-construction probabilities (the crop classifier's logistic output and the
   annotator's temperature-scaled one), so neither overrules the other and no threshold is tuned
   on any dataset's truth. ``pooling``: ``linear``, their mean, or ``logarithmic``, the mean of
   their log-odds (a geometric pool). Both call an image defective on exactly the same images
   (``c + a >= 1`` either way, up to :data:`POOL_CLIP`); they differ in how they rank and how sharp they are: a mean of
   calibrated probabilities is pulled towards 0.5 (Ranjan and Gneiting, 2010). ``auto`` (the
   default) takes the logarithmic pool: where the seeds cannot tell the defect types apart, the
   annotator's temperature flattens its answer and its ``1 - P(no_defect)`` sits near 0.8 on
   every tile, which the mean turns into ~0.6 confidence on clean tiles that are right ~85% of
   the time (Magnetic-tile record: ECE 0.20 linear, 0.06 logarithmic, the same answers). With
   a recall target and the crops' evidence alone it takes the linear pool, whose expected recall
   is then the one reached (with the class-aware detector below, the logarithmic one's is);
3. the image is defective when ``P(defect) >= 0.5``, and then shows its most probable type
   (``defect_type``: from the crops, the annotator, or their product). The record keeps the
   probabilities ``P(defect) * P(type)`` and ``1 - P(defect)``, and its confidence is the
   answered class's.

With ``class_aware_detector`` (the default), a second seed detector trains on the same seeds and
tiles with one class per defect type. Its proposals add two pieces of evidence the crops lack:
the image's best box score, averaged with the crops' ``P(defect)`` before the pooling, and the
best score per class, multiplied into the crops' type (where it proposes nothing, the crops'
evidence stands alone). The crops see each box at one small size; the detector sees the defect in
its tile, at its own size and place, and the two err on different images. With
``class_aware_members`` above 1, several such detectors (the next random seeds, their own
synthetic tiles) are fused by weighted boxes fusion first, as the seed detector ensemble is;
with ``class_aware_flips`` each also proposes on the pool flipped and fuses its views before.

Where a missed defect costs more than a second look, ``target_recall`` lowers the boundary
until the gate's own probabilities expect that share of the pool's defects found
(:func:`defect_threshold`); no label is read, and the share of images flagged says what it
costs in review.

It applies only where the seeds include defect-free images (``no_defect``); on an all-defective
dataset such as NEU-DET the annotator answers alone. ``scripts/bench_defect_gate.py`` measures
it against the annotator alone over several seed draws.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.annotate.boxes import Proposal, SeedDetector
from cascade_defect.annotate.crop_verifier import BACKGROUND, CropVerifier, low_score_proposer
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.box_settings import CropVerifierSettings, DefectGateSettings
from cascade_defect.progress import progress_disabled

log = logging.getLogger(__name__)

DEFECT_AT = 0.5
"""``P(defect)`` from which an image is answered defective."""

POOL_CLIP = 1e-4
"""The logarithmic pool clips both probabilities to ``[POOL_CLIP, 1 - POOL_CLIP]``: a crop
probability of 0 (nothing proposed) would otherwise veto the annotator outright."""


def pooled_defect_probability(
    crop: np.ndarray, annotator: np.ndarray, pooling: str = "linear"
) -> np.ndarray:
    """``P(defect)`` from the crops' and the annotator's (see the module docstring)."""
    crop, annotator = np.asarray(crop, dtype=float), np.asarray(annotator, dtype=float)
    if pooling == "linear":
        return np.clip(0.5 * (crop + annotator), 0.0, 1.0)
    if pooling == "logarithmic":
        from scipy.special import expit, logit

        a, b = (np.clip(v, POOL_CLIP, 1.0 - POOL_CLIP) for v in (crop, annotator))
        return expit(0.5 * (logit(a) + logit(b)))
    raise ValueError(f"pooling is linear or logarithmic, not {pooling!r}")


def gate_applies(settings: DefectGateSettings, annotator: str, seed_classes: Sequence[str]) -> bool:
    """Whether the gate joins this annotator's answers: ``auto`` for the offline annotator when
    the seeds hold both defect-free and defective images."""
    classes = {str(c) for c in seed_classes}
    has_clean, has_defect = NO_DEFECT in classes, bool(classes - {NO_DEFECT})
    return settings.mode == "auto" and annotator == "offline" and has_clean and has_defect


@dataclass
class CropEvidence:
    """Per pool image (in ``image_ids`` order): the highest ``1 - P(background)`` of its judged
    crops (0 where the detector proposed nothing), and the per-class highest probability over
    them, normalised over ``class_names`` (uniform where nothing was proposed)."""

    image_ids: list[str]
    p_defect: np.ndarray
    type_proba: np.ndarray
    class_names: list[str]
    n_crops: int = 0


def crop_evidence(
    verifier: CropVerifier,
    pool: pd.DataFrame,
    proposals: Mapping[str, Sequence[Proposal]],
    class_names: Sequence[str],
    top_proposals: int,
    *,
    chunk: int = 16,
) -> CropEvidence:
    """Judge each pool image's ``top_proposals`` best crops with a fitted ``verifier``."""
    if verifier.model is None:
        raise RuntimeError("fit() the crop verifier first")
    names = list(class_names)
    known = list(verifier.model.classes_)
    columns = [known.index(c) if c in known else None for c in names]
    rows = [(str(r.image_id), str(r.path)) for r in pool.itertuples(index=False)]
    p_defect = np.zeros(len(rows))
    type_proba = np.full((len(rows), len(names)), 1.0 / max(len(names), 1))
    n_crops = 0
    with tqdm(
        total=len(rows),
        desc="judge crops",
        unit="img",
        disable=progress_disabled(verifier.extractor.progress),
    ) as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            found = [list(proposals.get(image_id, []))[:top_proposals] for image_id, _ in part]
            features = verifier.crop_features(
                [
                    (path, [p.box for p in boxes])
                    for (_, path), boxes in zip(part, found, strict=True)
                ]
            )
            probabilities = (
                verifier.model.predict_proba(features)
                if len(features)
                else np.zeros((0, len(known)))
            )
            n_crops += len(features)
            offset = 0
            for i, boxes in enumerate(found):
                if not boxes:
                    continue
                block = probabilities[offset : offset + len(boxes)]
                offset += len(boxes)
                row = start + i
                if BACKGROUND in known:
                    p_defect[row] = float((1.0 - block[:, known.index(BACKGROUND)]).max())
                per_class = np.array([block[:, j].max() if j is not None else 0.0 for j in columns])
                if per_class.sum() > 0:
                    type_proba[row] = per_class / per_class.sum()
            bar.update(len(part))
    return CropEvidence([i for i, _ in rows], p_defect, type_proba, names, n_crops)


def detector_evidence(
    proposals: Mapping[str, Sequence[Proposal]],
    image_ids: Sequence[str],
    class_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """A class-aware detector's evidence per image: its best box score (0 where it proposed
    nothing) and its best score of each class (0 for a class it did not propose)."""
    index = {name: j for j, name in enumerate(class_names)}
    best = np.zeros(len(image_ids))
    per_class = np.zeros((len(image_ids), len(index)))
    for row, image_id in enumerate(image_ids):
        for proposal in proposals.get(str(image_id), []):
            column = index.get(str(proposal.class_name))
            if column is None:
                raise ValueError(
                    f"image {image_id!r}: a proposal of class {proposal.class_name!r}, which is "
                    f"not among the defect classes {list(index)} (is the detector class-aware?)"
                )
            best[row] = max(best[row], proposal.score)
            per_class[row, column] = max(per_class[row, column], proposal.score)
    return best, per_class


def with_detector_evidence(
    crops: CropEvidence, proposals: Mapping[str, Sequence[Proposal]]
) -> CropEvidence:
    """The crops' evidence joined by a class-aware detector's (see the module docstring):
    ``P(defect)`` the mean of the two, the type their normalised product; an image the
    detector proposed nothing on keeps its crops' type."""
    best, per_class = detector_evidence(proposals, crops.image_ids, crops.class_names)
    product = crops.type_proba * per_class
    total = product.sum(axis=1, keepdims=True)
    types = np.where(total > 0, product / np.clip(total, 1e-300, None), crops.type_proba)
    return CropEvidence(
        list(crops.image_ids),
        0.5 * (crops.p_defect + best),
        types,
        list(crops.class_names),
        crops.n_crops,
    )


@dataclass(frozen=True)
class DefectThreshold:
    """The ``P(defect)`` from which an image is answered defective, the share of the pool's
    defects the probabilities expect above it, and the share of images it flags."""

    threshold: float
    expected_recall: float
    flagged: float


def defect_threshold(p_defect: np.ndarray, target_recall: float | None = None) -> DefectThreshold:
    """The boundary for a recall target, from the probabilities alone.

    If ``P(defect)`` is calibrated, the pool holds ``sum(p)`` defects in expectation and flagging
    every image with ``p >= t`` finds ``sum(p[p >= t])`` of them. The boundary is the highest
    ``t`` whose expected recall reaches ``target_recall``, never above :data:`DEFECT_AT` (the
    target is a floor, not a cap); ``None`` keeps :data:`DEFECT_AT`.
    """
    p = np.asarray(p_defect, dtype=float)
    if target_recall is not None and not 0.0 < target_recall < 1.0:
        raise ValueError(f"target_recall is a share between 0 and 1, not {target_recall}")
    total = float(p.sum())
    threshold = DEFECT_AT
    if target_recall is not None and total > 0:
        ordered = np.sort(p)[::-1]
        found = np.cumsum(ordered) / total
        reach = int(np.searchsorted(found, target_recall - 1e-12))
        threshold = min(DEFECT_AT, float(ordered[min(reach, len(ordered) - 1)]))
    flagged = p >= threshold
    expected = float(p[flagged].sum() / total) if total > 0 else 0.0
    return DefectThreshold(threshold, expected, float(flagged.mean()) if len(p) else 0.0)


def answers_at(probabilities: pd.DataFrame, threshold: float = DEFECT_AT) -> dict[str, str]:
    """Each image's answer from the gate's probabilities (``image_id``, the defect classes,
    ``no_defect``): its most probable defect where ``P(defect) >= threshold``, else
    ``no_defect``."""
    names = [c for c in probabilities.columns if c not in ("image_id", NO_DEFECT)]
    p_defect = 1.0 - probabilities[NO_DEFECT].to_numpy(dtype=float)
    best = np.asarray(names, dtype=object)[probabilities[names].to_numpy(float).argmax(axis=1)]
    answer = np.where(p_defect >= threshold - 1e-12, best, NO_DEFECT)
    ids = probabilities["image_id"].astype(str)
    return dict(zip(ids, (str(a) for a in answer), strict=True))


@dataclass
class GatedAnswers:
    """The gate's probabilities (``image_id`` plus one column per class, ``no_defect`` last), the
    answer per image, and what was done (recorded in every record's params and chapter 03's
    summary)."""

    probabilities: pd.DataFrame
    answers: dict[str, str]
    params: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    evidence: CropEvidence | None = None
    """The evidence the answers were pooled from (benchmarks pool it again)."""
    crops_alone: CropEvidence | None = None
    """The crops' evidence before a class-aware detector's joined it (None: it did not)."""


def gated_answers(
    annotator_proba: pd.DataFrame,
    evidence: CropEvidence,
    defect_type: str = "crops",
    target_recall: float | None = None,
    pooling: str = "linear",
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Join the annotator's probabilities (``image_id``, its classes and ``no_defect``) with the
    crop evidence; see the module docstring for the rule."""
    names = evidence.class_names
    missing = [c for c in [*names, NO_DEFECT] if c not in annotator_proba.columns]
    if missing:
        raise ValueError(f"the annotator's probabilities lack the columns {missing}")
    frame = annotator_proba.set_index(annotator_proba["image_id"].astype(str))
    frame = frame.reindex(evidence.image_ids)
    if frame[names].isna().any().any():
        absent = frame.index[frame[names].isna().any(axis=1)][:5].tolist()
        raise ValueError(f"no annotator answer for pool images {absent}")
    annotator_defect = 1.0 - frame[NO_DEFECT].to_numpy(dtype=float)
    p_defect = pooled_defect_probability(evidence.p_defect, annotator_defect, pooling)
    own = frame[names].to_numpy(dtype=float)
    own = own / np.clip(own.sum(axis=1, keepdims=True), 1e-12, None)
    if defect_type == "crops":
        types = evidence.type_proba
    elif defect_type == "annotator":
        types = own
    elif defect_type == "annotator_x_crops":
        product = own * evidence.type_proba
        types = product / np.clip(product.sum(axis=1, keepdims=True), 1e-12, None)
    else:
        raise ValueError(
            f"defect_type is crops, annotator or annotator_x_crops, not {defect_type!r}"
        )
    values = np.hstack([p_defect[:, None] * types, 1.0 - p_defect[:, None]])
    out = pd.DataFrame(values, columns=[*names, NO_DEFECT])
    out.insert(0, "image_id", evidence.image_ids)
    return out, answers_at(out, defect_threshold(p_defect, target_recall).threshold)


def gate_with_detector(
    *,
    annotator_proba: pd.DataFrame,
    detector: SeedDetector,
    verifier: CropVerifier,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    pool: pd.DataFrame,
    class_names: Sequence[str],
    settings: DefectGateSettings,
    class_detectors: Sequence[SeedDetector] = (),
) -> GatedAnswers:
    """Fit ``verifier`` on the seeds with the trained ``detector``'s low-score proposals, judge
    the pool's best crops and join them with the annotator's probabilities; trained
    ``class_detectors`` (class-aware; several are fused as one) add their evidence to the
    crops' first."""
    from cascade_defect.annotate.fragments import fuse_detectors

    start = time.perf_counter()
    crop_settings: CropVerifierSettings = verifier.settings
    low = low_score_proposer(detector, crop_settings, progress=detector.progress)
    verifier.fit(seeds, seed_boxes, low.propose(seeds))
    fitted = time.perf_counter() - start
    defect_names = [c for c in class_names if c != NO_DEFECT]
    evidence = crops = crop_evidence(
        verifier, pool, low.propose(pool), defect_names, settings.top_proposals
    )
    if class_detectors:
        floor = class_detectors[0].settings.conf
        flips = settings.class_aware_flips
        found = fuse_detectors([d.propose(pool, flips=flips) for d in class_detectors], floor)
        evidence = with_detector_evidence(crops, found)
    probabilities, answers = gated_answers(
        annotator_proba,
        evidence,
        settings.defect_type,
        settings.target_recall,
        settings.pooling_rule,
    )
    boundary = defect_threshold(1.0 - probabilities[NO_DEFECT].to_numpy(), settings.target_recall)
    counts = pd.Series(list(answers.values())).value_counts().sort_index()
    params = {
        "settings": {**settings.model_dump(), "pooling_rule": settings.pooling_rule},
        "crop_verifier": crop_settings.model_dump(),
        "detector": detector.describe(),
        **({"class_aware_detector": class_detectors[0].describe()} if class_detectors else {}),
    }
    details = {
        **params,
        "samples": verifier.calibration.get("samples", {}),
        "crops_judged": evidence.n_crops,
        "images_without_proposal": int((crops.p_defect == 0).sum()),
        "defect_threshold": round(boundary.threshold, 4),
        "expected_defect_recall": round(boundary.expected_recall, 4),
        "flagged_share": round(boundary.flagged, 4),
        "answers": {str(k): int(v) for k, v in counts.items()},
        "fit_seconds": round(fitted, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("defect gate: %s", details)
    return GatedAnswers(
        probabilities, answers, params, details, evidence, crops if class_detectors else None
    )


@dataclass
class GatedOffline:
    """The gate's answers and the seed detector it trained (the box strategies reuse it), with
    :func:`~cascade_defect.annotate.strategies.train_seed_detector`'s record of that training
    (and of the class-aware detector's, where the gate trained one: with several members, the
    first's record, the others' under ``more_members``)."""

    gate: GatedAnswers
    detector: SeedDetector
    detector_details: dict[str, Any]
    class_detector_details: dict[str, Any] | None = None


def gate_offline_answers(
    annotator: Any,
    pool: pd.DataFrame,
    *,
    recipe: Any,
    seeds: pd.DataFrame,
    seed_boxes: pd.DataFrame,
    class_names: Sequence[str],
    settings: DefectGateSettings,
    progress: bool = True,
) -> GatedOffline:
    """Train ``recipe``'s seed detector and gate a fitted offline ``annotator``'s answers on the
    pool (chapter 03 and the folder command both come here)."""
    from cascade_defect.annotate.strategies import crop_verifier_for, train_seed_detector

    detector, trained = train_seed_detector(
        recipe, seeds, seed_boxes, class_names, progress=progress
    )
    class_detectors, records = [], []
    for member in range(settings.class_aware_members if settings.class_aware_detector else 0):
        class_detector, record = train_seed_detector(
            class_aware_recipe(recipe),
            seeds,
            seed_boxes,
            [c for c in class_names if c != NO_DEFECT],
            progress=progress,
            member=member,
        )
        class_detectors.append(class_detector)
        records.append(record)
    class_trained = (
        {**records[0], **({"more_members": records[1:]} if len(records) > 1 else {})}
        if records
        else None
    )
    gate = gate_with_detector(
        annotator_proba=annotator.predict_proba(pool),
        detector=detector,
        verifier=crop_verifier_for(recipe, threshold=recipe.crop_verifier.threshold or DEFECT_AT),
        seeds=seeds,
        seed_boxes=seed_boxes,
        pool=pool,
        class_names=class_names,
        settings=settings,
        class_detectors=class_detectors,
    )
    if class_trained is not None:
        gate.details["class_aware_detector_training"] = class_trained
    return GatedOffline(gate, detector, trained, class_trained)


def class_aware_recipe(recipe: Any) -> Any:
    """``recipe`` for the gate's class-aware detector: the same seeds, tiles and schedule, one
    class per defect type, proposing at the crop verifier's low score and box count, in its own
    folder."""
    settings = replace(
        recipe.seed_detector,
        class_aware=True,
        conf=recipe.crop_verifier.conf,
        max_det=recipe.crop_verifier.max_det,
    )
    return replace(recipe, seed_detector=settings, work_dir=recipe.work_dir / "class_aware")

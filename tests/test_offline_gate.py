"""Knowing when the offline annotator does not know: no_defect seeds, imbalance, calibration,
and patch anomaly scores that find a small defect in a large image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cascade_defect.annotate.offline import ClassifierSettings, FewShotClassifier
from cascade_defect.annotate.offline.features import FeatureBlock
from cascade_defect.annotate.offline.gate import GateSettings, combine, defect_probability
from cascade_defect.annotate.offline.patches import (
    PatchFeatureExtractor,
    PatchSpec,
    anomaly_scores,
)
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.hashing import sha256_bytes
from cascade_defect.metrics.calibration import expected_calibration_error


def dominant_clean_pool(seed: int) -> tuple[np.ndarray, np.ndarray, list[str], list[FeatureBlock]]:
    """A defect-free majority (85%) beside four small, overlapping defect clusters."""
    rng = np.random.default_rng(seed)
    dim, names = 30, ["a", "b", "c", "d", NO_DEFECT]
    centres = rng.uniform(0, 2, size=(len(names), dim))
    sizes = [15, 15, 15, 15, 400]
    labels = np.repeat(np.arange(len(names)), sizes)
    spread = np.where(labels == 4, 1.2, 0.8)[:, None]
    features = np.abs(centres[labels] + rng.normal(size=(len(labels), dim)) * spread)
    blocks = [FeatureBlock(0, "mean", 0, dim // 2), FeatureBlock(1, "mean", dim // 2, dim)]
    return features, labels, names, blocks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dominant_clean_pool_is_not_below_the_inductive_baseline(seed: int) -> None:
    features, labels, names, blocks = dominant_clean_pool(seed)
    rng = np.random.default_rng(seed + 10)
    seeds = np.concatenate(
        [rng.choice(np.flatnonzero(labels == k), 3, replace=False) for k in range(len(names))]
    )
    pool = np.setdiff1d(np.arange(len(labels)), seeds)
    seed_names = np.array(names)[labels[seeds]].tolist()
    accuracy = {}
    for mode, settings in {
        "default": ClassifierSettings(),
        "inductive": ClassifierSettings(transductive=False),
    }.items():
        classifier = FewShotClassifier(settings).fit(features[seeds], seed_names, names, blocks)
        proba = classifier.predict_proba(features[pool])
        assert proba.shape == (len(pool), len(names))
        accuracy[mode] = (proba.argmax(axis=1) == labels[pool]).mean()
    assert accuracy["default"] >= accuracy["inductive"] - 0.02, accuracy


def test_seed_check_falls_back_to_the_seeds_only_answer_when_transduction_misleads() -> None:
    """When held-out seeds say the pool's structure misleads, the inductive answer is returned."""
    features, labels, names, blocks = dominant_clean_pool(0)
    rng = np.random.default_rng(10)
    seeds = np.concatenate(
        [rng.choice(np.flatnonzero(labels == k), 3, replace=False) for k in range(len(names))]
    )
    pool = np.setdiff1d(np.arange(len(labels)), seeds)
    seed_names = np.array(names)[labels[seeds]].tolist()
    checked = FewShotClassifier().fit(features[seeds], seed_names, names, blocks)
    proba = checked.predict_proba(features[pool])
    diagnostics = checked.diagnostics
    assert {"seed_check_transductive", "seed_check_inductive"} <= set(diagnostics)
    inductive = FewShotClassifier(ClassifierSettings(transductive=False))
    baseline = inductive.fit(features[seeds], seed_names, names, blocks).predict_proba(
        features[pool]
    )
    # On this pool the mixture misses held-out seeds the seeds-only classifier names.
    assert diagnostics["seed_check_inductive"] > diagnostics["seed_check_transductive"]
    assert diagnostics["mode"] == "inductive (seed check)"
    np.testing.assert_allclose(proba, baseline)


def test_gate_probability_is_calibrated_and_learns_the_defect_rate() -> None:
    """Log scores from two Gaussians, 10% defective: the mixture's posterior is calibrated."""
    rng = np.random.default_rng(0)
    n_pool, rate = 3000, 0.1
    defective = rng.random(n_pool) < rate
    log_scores = np.where(defective, rng.normal(1.5, 0.5, n_pool), rng.normal(0.0, 0.5, n_pool))
    fit = defect_probability(
        np.exp(rng.normal(0.0, 0.5, 10)), np.exp(rng.normal(1.5, 0.5, 15)), np.exp(log_scores)
    )
    assert abs(fit.defect_rate - rate) < 0.03
    confidence = np.maximum(fit.p_defect, 1 - fit.p_defect)
    correct = (fit.p_defect > 0.5) == defective
    assert expected_calibration_error(confidence, correct) < 0.03
    assert np.all(np.diff(fit.p_defect[np.argsort(log_scores)]) >= -1e-12)  # monotone


def test_combine_keeps_distributions() -> None:
    type_proba = np.array([[0.7, 0.3], [0.5, 0.5]])
    combined = combine(np.array([0.9, 0.1]), type_proba)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)
    np.testing.assert_allclose(combined[:, -1], [0.1, 0.9])
    with pytest.raises(ValueError):
        GateSettings(top_k=0)


def tile(folder: Path, name: str, seed: int, defect: bool, size: tuple[int, int]) -> Path:
    """A large textured grey tile; ``defect`` adds one small bright square (~2% of the width)."""
    rng = np.random.default_rng(seed)
    height, width = size
    xx = np.mgrid[0:height, 0:width][1]
    pattern = 120 + 15 * np.sin(0.3 * xx + rng.uniform(0, 6)) + rng.normal(0, 6, size)
    if defect:
        top, left = rng.integers(40, height - 50), rng.integers(40, width - 50)
        pattern[top : top + 9, left : left + 9] = 255
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    Image.fromarray(np.clip(pattern, 0, 255).astype(np.uint8)).save(path)
    return path


def test_patch_scores_find_a_small_bright_defect(yolo_weights: Path, tmp_path: Path) -> None:
    paths = [tile(tmp_path, f"clean{i}", i, False, (300, 480)) for i in range(8)]
    paths.append(tile(tmp_path, "defect", 99, True, (300, 480)))
    extractor = PatchFeatureExtractor(
        str(yolo_weights), PatchSpec(imgsz=320), cache_dir=tmp_path / "cache", progress=False
    )
    hashes = extractor.ensure(paths)
    reference = hashes[:5]
    scored = anomaly_scores(extractor, reference, hashes, top_k=1, progress=False)
    assert scored.scores[-1] > 1.5 * scored.scores[5:8].max()
    assert (
        scored.scores[-1] > 1.5 * scored.scores[:5].max()
    )  # references left out of their own bank
    assert scored.focus.shape == (len(paths), extractor.load(hashes[0]).shape[1])
    again = PatchFeatureExtractor(
        str(yolo_weights), PatchSpec(imgsz=320), cache_dir=tmp_path / "cache", progress=False
    )
    again.ensure(paths)
    assert again.n_computed == 0  # cached by content


@pytest.mark.parametrize("gate", [False, True])
def test_annotator_answers_no_defect_from_defect_free_seeds(
    yolo_weights: Path, tmp_path: Path, gate: bool
) -> None:
    from cascade_defect.annotate.offline import OfflineAnnotator

    rows = []
    for i in range(14):
        defect = i % 2 == 1
        path = tile(tmp_path / "img", f"t{i}", i, defect, (224, 320))
        name = "spot" if defect else NO_DEFECT
        rows.append({"image_id": f"t{i}", "path": str(path), "class_name": name})
    images = pd.DataFrame(rows)
    images["sha256"] = [sha256_bytes(Path(p).read_bytes()) for p in images["path"]]
    seeds, pool = images.iloc[:6], images.iloc[6:].drop(columns=["class_name"])
    annotator = OfflineAnnotator(
        str(yolo_weights),
        imgsz=96,
        gate=GateSettings(enabled=gate, imgsz=320),
        cache_dir=tmp_path / "cache",
        config_dir=tmp_path / "yolo",
        progress=False,
    ).fit(seeds, None, ["spot"])
    proba = annotator.predict_proba(pool)
    assert list(proba.columns) == ["image_id", "spot", NO_DEFECT]
    np.testing.assert_allclose(proba[["spot", NO_DEFECT]].sum(axis=1), 1.0)
    store = AnnotationStore(tmp_path / "records.jsonl")
    summary = annotator.annotate(pool, store, box_strategy="whole_image")
    # Records and summary name the classifier that answered; a cached re-run says the same.
    assert {r.model for r in store.records()} == {summary.model} == {annotator.answered_by}
    assert annotator.annotate(pool, store, box_strategy="whole_image").model == summary.model
    answers = {r.image_id: r.prediction for r in store.records()}
    assert len(answers) == len(pool)
    clean_answers = [answers[i] for i in pool["image_id"] if answers[i].defect_class == NO_DEFECT]
    assert clean_answers, "no image was answered no_defect"
    assert all(not a.boxes for a in clean_answers)
    truth = images.iloc[6:].set_index("image_id")["class_name"]
    accuracy = np.mean([answers[i].defect_class == truth[i] for i in truth.index])
    assert accuracy >= 0.75
    assert ("gate" in annotator.params()) and (annotator._gated == gate)


def test_a_seed_check_tie_goes_to_the_better_held_out_log_likelihood() -> None:
    from cascade_defect.annotate.offline.classifier import _inductive_wins

    tie = {"transductive": 0.8, "inductive": 0.8}
    assert _inductive_wins({**tie, "transductive_loglik": -2.0, "inductive_loglik": -0.5})
    assert not _inductive_wins({**tie, "transductive_loglik": -0.3, "inductive_loglik": -0.5})
    # Accuracy decides when it differs, whatever the likelihoods say.
    assert not _inductive_wins(
        {"transductive": 0.9, "inductive": 0.8, "transductive_loglik": -9, "inductive_loglik": 0}
    )


def test_records_name_the_seeds_only_classifier_when_the_seed_check_falls_back(
    yolo_weights: Path,
) -> None:
    from cascade_defect.annotate.offline import OfflineAnnotator

    annotator = OfflineAnnotator(str(yolo_weights), progress=False)
    assert annotator.answered_by == annotator.model_name
    assert annotator.model_name.endswith("+transductive-vmf")
    annotator.classifier.diagnostics = {"mode": "inductive (seed check)"}
    assert annotator.answered_by.startswith("yolov8n-coco-features+logreg")
    assert annotator.model_name.endswith("+transductive-vmf")  # the cache key's name is kept

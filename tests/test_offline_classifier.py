"""The few-shot classifier on generated descriptors (no network, no weights, no images)."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_defect.annotate.offline.classifier import (
    ClassifierSettings,
    FewShotClassifier,
    knn_graph,
    label_propagation,
    pca_whiten,
)
from cascade_defect.annotate.offline.features import FeatureBlock

CLASSES = ["a", "b", "c", "d"]


def clustered(
    n_per_class: int, dim: int = 40, spread: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[FeatureBlock]]:
    """Non-negative descriptors (like pooled activations) drawn around one centre per class."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 3, size=(len(CLASSES), dim))
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    features = np.abs(centres[labels] + rng.normal(0, spread, size=(len(labels), dim)))
    blocks = [
        FeatureBlock(layer, "mean", start, start + dim // 2)
        for layer, start in ((0, 0), (1, dim // 2))
    ]
    return features, labels, blocks


def split_seeds(
    labels: np.ndarray, per_class: int = 3, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in np.unique(labels)
        ]
    )
    pool = np.setdiff1d(np.arange(len(labels)), seeds)
    return seeds, pool


@pytest.mark.parametrize("transductive", [True, False])
def test_separable_classes_are_separated_with_probabilities(transductive: bool) -> None:
    features, labels, blocks = clustered(40)
    seeds, pool = split_seeds(labels)
    names = np.array(CLASSES)
    classifier = FewShotClassifier(ClassifierSettings(transductive=transductive))
    classifier.fit(features[seeds], names[labels[seeds]].tolist(), CLASSES, blocks)

    proba = classifier.predict_proba(features[pool])

    assert proba.shape == (len(pool), len(CLASSES))
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    accuracy = (proba.argmax(axis=1) == labels[pool]).mean()
    assert accuracy >= 0.95
    assert classifier.diagnostics["mode"] == ("transductive" if transductive else "inductive")


def test_confidence_tracks_difficulty() -> None:
    """Overlapping classes must get lower confidence than well-separated ones."""
    names = np.array(CLASSES)
    confidences = {}
    for spread in (0.3, 2.5):
        features, labels, blocks = clustered(40, spread=spread)
        seeds, pool = split_seeds(labels)
        classifier = FewShotClassifier().fit(
            features[seeds], names[labels[seeds]].tolist(), CLASSES, blocks
        )
        confidences[spread] = classifier.predict_proba(features[pool]).max(axis=1).mean()
    assert confidences[0.3] > 0.9
    assert confidences[2.5] < confidences[0.3] - 0.1


def test_transductive_result_depends_only_on_features_not_on_order() -> None:
    features, labels, blocks = clustered(30)
    seeds, pool = split_seeds(labels)
    names = np.array(CLASSES)
    classifier = FewShotClassifier().fit(
        features[seeds], names[labels[seeds]].tolist(), CLASSES, blocks
    )
    forward = classifier.predict_proba(features[pool])
    order = np.random.default_rng(3).permutation(len(pool))
    shuffled = classifier.predict_proba(features[pool][order])
    np.testing.assert_allclose(shuffled, forward[order], atol=1e-6)


def test_every_class_needs_a_seed() -> None:
    features, labels, blocks = clustered(5)
    names = np.array(CLASSES)
    keep = labels != 3
    with pytest.raises(ValueError, match="at least one seed"):
        FewShotClassifier().fit(features[keep], names[labels[keep]].tolist(), CLASSES, blocks)
    with pytest.raises(ValueError, match="not among class_names"):
        FewShotClassifier().fit(features, ["zzz"] * len(features), CLASSES, blocks)


def test_predict_before_fit_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        FewShotClassifier().predict_proba(np.zeros((2, 4)))


def test_label_propagation_follows_a_chain() -> None:
    """Two chains of points: a label at one end reaches the far end through its neighbours."""
    t = np.linspace(0, 1, 30)
    chain_a = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)
    chain_b = np.stack([np.zeros_like(t), np.cos(t), np.sin(t)], axis=1)
    points = np.vstack([chain_a, chain_b])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    graph = knn_graph(points, k=2)
    scores = label_propagation(graph, np.array([0, 30]), np.array([0, 1]), 2, alpha=0.99)
    np.testing.assert_array_equal(scores.argmax(axis=1), np.repeat([0, 1], 30))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)


def test_pca_whiten_gives_unit_variance_components() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 10)) * np.arange(1, 11)
    for sample in (data, data[:8]):  # more images than features, and fewer
        whitened = pca_whiten(sample, 5)
        assert whitened.shape == (len(sample), min(5, len(sample) - 1))
    whitened = pca_whiten(data, 5)
    np.testing.assert_allclose(whitened.std(axis=0), 1.0, rtol=0.01)
    np.testing.assert_allclose(np.corrcoef(whitened.T), np.eye(5), atol=1e-6)


@pytest.mark.parametrize("shape", [(30, 80), (200, 40)])
def test_pca_whiten_is_the_floored_whitening_of_the_svd(shape: tuple[int, int]) -> None:
    """Top components from an SVD, each divided by its standard deviation + 1e-3, up to sign."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1])) * 0.05
    centred = data - data.mean(axis=0)
    u, singular, _ = np.linalg.svd(centred, full_matrices=False)
    dim = 12
    expected = u[:, :dim] * singular[:dim] / (singular[:dim] / np.sqrt(len(data)) + 1e-3)
    whitened = pca_whiten(data, dim)
    signs = np.sign((whitened * expected).sum(axis=0))
    np.testing.assert_allclose(whitened * signs, expected, rtol=0, atol=1e-10)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        ClassifierSettings(alpha=1.5)
    with pytest.raises(ValueError):
        ClassifierSettings(knn=0)


def shifted_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[FeatureBlock]]:
    """Seeds drawn per class (3 each) but a pool that is 85% one easy class, as on a line where
    most tiles are defect-free: three overlapping 'defect' classes and one well-separated 'd'."""
    rng = np.random.default_rng(seed)
    dim = 40
    centres = rng.uniform(0, 3, size=(len(CLASSES), dim))
    centres[:3] = centres[0] + rng.normal(0, 0.25, size=(3, dim))  # a, b, c overlap
    centres[3] += 4.0  # d stands apart
    counts = {0: 33, 1: 33, 2: 33, 3: 563}
    labels = np.concatenate([np.full(n, k) for k, n in counts.items()])
    features = np.abs(centres[labels] + rng.normal(0, 0.6, size=(len(labels), dim)))
    blocks = [FeatureBlock(0, "mean", 0, dim // 2), FeatureBlock(1, "mean", dim // 2, dim)]
    seeds, pool = split_seeds(labels, per_class=3, seed=seed + 1)
    return features, labels, np.concatenate([seeds, pool]), blocks


def test_pool_weighted_temperature_calibrates_a_pool_unlike_the_seeds() -> None:
    """Fitted on the seeds as they are, the temperature reflects the hard balanced seeds and
    understates confidence on a pool of mostly easy images; weighted, it follows the pool."""
    from cascade_defect.metrics.calibration import expected_calibration_error

    features, labels, order, blocks = shifted_pool()
    seeds, pool = order[:12], order[12:]
    names = np.array(CLASSES)
    errors, temperatures = {}, {}
    for weighted in (False, True):
        settings = ClassifierSettings(transductive=False, pool_weighted_temperature=weighted)
        classifier = FewShotClassifier(settings).fit(
            features[seeds], names[labels[seeds]].tolist(), CLASSES, blocks
        )
        proba = classifier.predict_proba(features[pool])
        correct = proba.argmax(axis=1) == labels[pool]
        errors[weighted] = expected_calibration_error(proba.max(axis=1), correct)
        temperatures[weighted] = classifier.diagnostics["temperature"]
    assert temperatures[True] < temperatures[False]
    assert errors[True] < errors[False] - 0.05
    shares = classifier.diagnostics["pool_answer_share"]
    assert shares["d"] > 0.7


def test_pool_weights_are_pool_share_over_seed_share() -> None:
    """Held-out seeds [a, a, b, b, c], pool answers 6 a, 2 b, 0 c: shares .75/.25/(.5/8)
    against .4/.4/.2, normalised to mean one."""
    classifier = FewShotClassifier(ClassifierSettings(transductive=False))
    classifier.class_names = ["a", "b", "c"]
    weights = classifier._pool_weights(np.array([0, 0, 1, 1, 2]), np.array([0] * 6 + [1] * 2))
    raw = np.array([0.75 / 0.4, 0.75 / 0.4, 0.25 / 0.4, 0.25 / 0.4, 0.0625 / 0.2])
    np.testing.assert_allclose(weights, raw / raw.mean())
    off = FewShotClassifier(ClassifierSettings(pool_weighted_temperature=False))
    off.class_names = ["a", "b", "c"]
    assert off._pool_weights(np.array([0, 1]), np.array([0, 0])) is None


def test_weighted_temperature_ignores_zero_weight_rows() -> None:
    """A zero weight removes a held-out seed from the fit, exactly as leaving it out would."""
    from cascade_defect.annotate.offline.classifier import _fit_temperature

    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, size=(20, 4))
    labels = rng.integers(0, 4, size=20)
    weights = np.r_[np.ones(12), np.zeros(8)]
    assert _fit_temperature(logits, labels, weights=weights) == _fit_temperature(
        logits[:12], labels[:12]
    )
    assert _fit_temperature(logits, labels, weights=np.full(20, 3.0)) == _fit_temperature(
        logits, labels
    )

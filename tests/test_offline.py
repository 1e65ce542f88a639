"""The offline annotator end to end on generated textures: features, cache, records, no leaks.

Needs the COCO YOLOv8n checkpoint (CASCADE_YOLO_WEIGHTS): skipped without it, a failure under CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cascade_defect.annotate.offline import FeatureSpec, OfflineAnnotator, YoloFeatureExtractor
from cascade_defect.annotate.schema import AnnotationRecord
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.hashing import sha256_bytes

CLASSES = ["stripes", "checks", "blobs"]
IMGSZ = 64


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    """Every test here runs with the network blocked; the list records what was attempted."""
    return no_network


def texture(kind: str, variant: int, size: int = IMGSZ) -> np.ndarray:
    """Three visibly different greyscale textures, each with random phase and noise per variant."""
    rng = np.random.default_rng(variant * 7 + CLASSES.index(kind))
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        pattern = np.sin(0.8 * xx + phase)
    elif kind == "checks":
        pattern = np.sign(np.sin(0.35 * xx + phase) * np.sin(0.35 * yy + phase))
    else:
        pattern = np.zeros((size, size))
        for _ in range(4):
            cy, cx = rng.uniform(8, size - 8, 2)
            pattern -= 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
    noisy = 128 + 60 * pattern + rng.normal(0, 12, (size, size))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_images(folder: Path, per_class: int, offset: int) -> pd.DataFrame:
    """Images plus a listing shaped like the split's (``image_id, file, sha256, ..., path``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in CLASSES:
        for i in range(offset, offset + per_class):
            path = folder / f"{kind}_{i}.png"
            Image.fromarray(texture(kind, i)).save(path)
            rows.append(
                {
                    "image_id": f"{kind}_{i}",
                    "file": path.name,
                    "sha256": sha256_bytes(path.read_bytes()),
                    "width": IMGSZ,
                    "height": IMGSZ,
                    "class_name": kind,
                    "path": str(path),
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def textures(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Seeds (3 per class), the pool as an annotator sees it (no classes), and the pool's truth."""
    root = tmp_path_factory.mktemp("textures")
    seeds = write_images(root / "seed", per_class=3, offset=0)
    pool_truth = write_images(root / "pool", per_class=8, offset=100)
    return seeds, pool_truth.drop(columns=["class_name"]), pool_truth


def make_annotator(weights: Path, tmp_path: Path, **kwargs: object) -> OfflineAnnotator:
    return OfflineAnnotator(
        str(weights),
        imgsz=IMGSZ,
        cache_dir=tmp_path / "cache",
        config_dir=tmp_path / "ultralytics",
        progress=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_features_are_cached_by_content(yolo_weights: Path, tmp_path: Path, textures) -> None:
    seeds, _, _ = textures
    spec = FeatureSpec(imgsz=IMGSZ, layers=(2, 4), stats=("mean", "std"))
    first = YoloFeatureExtractor(str(yolo_weights), spec, cache_dir=tmp_path, progress=False)
    computed = first.extract(seeds["path"], seeds["sha256"])
    assert first.n_computed == len(seeds)
    assert computed.shape == (len(seeds), first.dim)
    assert [b.layer for b in first.blocks()] == [2, 2, 4, 4]

    second = YoloFeatureExtractor(str(yolo_weights), spec, cache_dir=tmp_path, progress=False)
    again = second.extract(seeds["path"], seeds["sha256"])
    assert second.n_computed == 0  # served from the .npz, the network never ran
    assert second._model is None
    np.testing.assert_array_equal(again, computed)

    # Hashes computed from the files find the same entries; new settings miss the cache.
    assert second.extract(seeds["path"]).shape == computed.shape and second.n_computed == 0
    other = YoloFeatureExtractor(
        str(yolo_weights), FeatureSpec(imgsz=96, layers=(2, 4)), cache_dir=tmp_path, progress=False
    )
    assert other.cache_path != first.cache_path
    other.extract(seeds["path"][:2], seeds["sha256"][:2])
    assert other.n_computed == 2


def test_annotator_labels_textures_and_writes_offline_records(
    yolo_weights: Path, tmp_path: Path, textures, network_attempts: list[str]
) -> None:
    seeds, pool, truth = textures
    annotator = make_annotator(yolo_weights, tmp_path).fit(seeds, None, CLASSES)
    store = AnnotationStore(tmp_path / "predictions.jsonl")

    summary = annotator.annotate(pool, store, box_strategy="whole_image")

    assert summary.n_written == len(pool) and summary.n_skipped == 0
    reloaded = AnnotationStore(tmp_path / "predictions.jsonl")  # from disk, validated on load
    assert len(reloaded) == len(pool) and reloaded.skipped_lines == 0
    for record in reloaded.records():
        AnnotationRecord.model_validate(record.model_dump())
        assert record.annotator == "offline"
        assert record.model.startswith("yolov8n-coco-features+")
        assert record.status == "ok" and record.cost_usd == 0.0
        assert record.usage.prompt_tokens == record.usage.completion_tokens == 0
        assert record.prediction is not None
        assert record.prediction.defect_class in CLASSES
        assert 0.0 <= record.prediction.confidence <= 1.0
        assert [box.box for box in record.prediction.boxes] == [[0.0, 0.0, 1.0, 1.0]]
    answers = {r.image_id: r.prediction.defect_class for r in reloaded.records() if r.prediction}
    accuracy = (truth["image_id"].map(answers) == truth["class_name"]).mean()
    assert accuracy >= 0.9

    # Same seeds, pool and settings: every key is answered, nothing is written again.
    rerun = annotator.annotate(pool, store, box_strategy="whole_image")
    assert rerun.n_written == 0 and rerun.n_skipped == len(pool)
    assert len(AnnotationStore(tmp_path / "predictions.jsonl")) == len(pool)
    assert network_attempts == []


def test_probabilities_are_distributions(yolo_weights: Path, tmp_path: Path, textures) -> None:
    seeds, pool, _ = textures
    for transductive in (True, False):
        annotator = make_annotator(yolo_weights, tmp_path, transductive=transductive)
        assert annotator.model_name.endswith("transductive-vmf" if transductive else "logreg")
        proba = annotator.fit(seeds, None, CLASSES).predict_proba(pool)
        values = proba[CLASSES].to_numpy()
        assert list(proba["image_id"]) == list(pool["image_id"])
        assert np.all((values >= 0) & (values <= 1))
        np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-9)
        predicted = annotator.predict(pool)
        assert set(predicted.columns) == {"image_id", "class_name", "confidence"}
        np.testing.assert_allclose(predicted["confidence"], values.max(axis=1))


def test_pool_labels_are_never_read(yolo_weights: Path, tmp_path: Path, textures) -> None:
    """Wrong labels in the pool frame change nothing: the annotator drops them unread."""
    seeds, pool, _ = textures
    annotator = make_annotator(yolo_weights, tmp_path).fit(seeds, None, CLASSES)
    clean = annotator.predict_proba(pool)
    poisoned = pool.assign(class_name=CLASSES[0], xmin=0, ymin=0, xmax=1, ymax=1)
    pd.testing.assert_frame_equal(annotator.predict_proba(poisoned), clean)


def test_seed_detector_strategy_needs_a_detector(
    yolo_weights: Path, tmp_path: Path, textures
) -> None:
    seeds, pool, _ = textures
    annotator = make_annotator(yolo_weights, tmp_path).fit(seeds, None, CLASSES)
    store = AnnotationStore(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="SeedDetector"):
        annotator.annotate(pool, store, box_strategy="seed_detector")
    with pytest.raises(ValueError, match="box_strategy"):
        annotator.annotate(pool, store, box_strategy="annotator")  # type: ignore[arg-type]
    assert len(store) == 0


def test_image_level_records_and_new_seeds_give_new_keys(
    yolo_weights: Path, tmp_path: Path, textures
) -> None:
    seeds, pool, _ = textures
    store = AnnotationStore(tmp_path / "p.jsonl")
    first = make_annotator(yolo_weights, tmp_path).fit(seeds, None, CLASSES)
    first.annotate(pool, store)  # image-level by default: no boxes of its own
    assert all(not r.prediction.boxes and not r.prediction.bounding_box_present for r in store)
    other_seeds = seeds.groupby("class_name").head(2)
    second = make_annotator(yolo_weights, tmp_path).fit(other_seeds, None, CLASSES)
    assert second.prompt_hash != first.prompt_hash
    summary = second.annotate(pool, store)
    assert summary.n_written == len(pool)  # a different prompt is a different request


def test_fit_rejects_seed_frames_without_classes(
    yolo_weights: Path, tmp_path: Path, textures
) -> None:
    seeds, _, _ = textures
    with pytest.raises(ValueError, match="class_name"):
        make_annotator(yolo_weights, tmp_path).fit(
            seeds.drop(columns=["class_name"]), None, CLASSES
        )

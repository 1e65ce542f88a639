"""Box strategies on hand-made predictions, and a seed-detector smoke run on generated images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cascade_defect.annotate.boxes import (
    PSEUDO_BOX_COLUMNS,
    Proposal,
    SeedDetector,
    SeedDetectorSettings,
    SeedDetectorTraining,
    predictions_from_store,
    proposals_from_json,
    proposals_to_json,
    pseudo_boxes,
    write_detector_dataset,
)
from cascade_defect.annotate.fragments import merge_fragments
from cascade_defect.annotate.schema import (
    NO_DEFECT,
    AnnotationRecord,
    prediction_model_for,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.box_settings import FragmentMergeSettings
from cascade_defect.hashing import sha256_bytes
from cascade_defect.settings import load_config

CLASSES = ["crazing", "inclusion", "scratches"]


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    """Every test here runs with the network blocked; the list records what was attempted."""
    return no_network


def predictions(*rows: tuple[str, str, float, list]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"image_id": i, "sha256": f"sha-{i}", "defect_class": c, "confidence": p, "boxes": b}
            for i, c, p, b in rows
        ]
    )


def test_whole_image_covers_the_image_with_the_predicted_class() -> None:
    frame = pseudo_boxes(
        predictions(("a", "crazing", 0.9, []), ("b", "scratches", 0.6, [])), "whole_image"
    )
    assert list(frame.columns[: len(PSEUDO_BOX_COLUMNS)]) == PSEUDO_BOX_COLUMNS
    assert frame[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert frame["class_name"].tolist() == ["crazing", "scratches"]
    assert frame["confidence"].tolist() == [0.9, 0.6]
    assert set(frame["strategy"]) == {"whole_image"} and not frame["fallback"].any()


def test_annotator_strategy_passes_the_annotators_boxes_through() -> None:
    own = [("crazing", (0.1, 0.2, 0.5, 0.6)), ("inclusion", (0.6, 0.6, 0.9, 0.95))]
    frame = pseudo_boxes(
        predictions(("a", "crazing", 0.8, own), ("b", "inclusion", 0.7, [])), "annotator"
    )
    kept = frame[frame["image_id"] == "a"]
    assert kept[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [
        [0.1, 0.2, 0.5, 0.6],
        [0.6, 0.6, 0.9, 0.95],
    ]
    assert kept["class_name"].tolist() == ["crazing", "inclusion"]  # each box keeps its own class
    assert not kept["fallback"].any()
    filled = frame[frame["image_id"] == "b"]
    assert filled[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0, 0, 1, 1]]
    assert filled["fallback"].all()
    strict = pseudo_boxes(predictions(("b", "inclusion", 0.7, [])), "annotator", fallback=False)
    assert strict.empty


def test_seed_detector_assigns_the_image_class_and_falls_back() -> None:
    proposals = {
        "a": [Proposal((0.1, 0.1, 0.4, 0.3), 0.5), Proposal((0.5, 0.5, 0.9, 0.9), 0.25)],
        "c": [Proposal((0.5, 0.5, 0.5, 0.9), 0.9)],  # degenerate: dropped
    }
    frame = pseudo_boxes(
        predictions(
            ("a", "scratches", 0.8, []),
            ("b", "crazing", 0.9, []),
            ("c", "inclusion", 0.5, []),
            ("d", NO_DEFECT, 0.9, []),
        ),
        "seed_detector",
        proposals=proposals,
    )
    a = frame[frame["image_id"] == "a"]
    assert a["class_name"].tolist() == ["scratches", "scratches"]
    np.testing.assert_allclose(a["confidence"], [0.8 * 0.5, 0.8 * 0.25])
    assert not a["fallback"].any()
    for image_id in ("b", "c"):
        fallback = frame[frame["image_id"] == image_id]
        assert fallback[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0, 0, 1, 1]]
        assert fallback["fallback"].all()
    assert "d" not in set(frame["image_id"])  # no_defect gets no box
    with pytest.raises(ValueError, match="proposals"):
        pseudo_boxes(predictions(("a", "crazing", 0.8, [])), "seed_detector")
    with pytest.raises(ValueError, match="unknown box strategy"):
        pseudo_boxes(predictions(("a", "crazing", 0.8, [])), "magic")  # type: ignore[arg-type]


def test_predictions_from_store_take_the_latest_ok_answer(tmp_path: Path) -> None:
    answer = prediction_model_for(CLASSES)
    store = AnnotationStore(tmp_path / "p.jsonl")

    def record(image: str, key: str, cls: str | None, boxes: list) -> AnnotationRecord:
        prediction = (
            None
            if cls is None
            else answer(
                defect_class=cls,
                confidence=0.7,
                reasoning="r",
                bounding_box_present=bool(boxes),
                boxes=[{"defect_class": cls, "box": b} for b in boxes],
            )
        )
        return AnnotationRecord(
            key=key,
            image_id=image,
            image_sha256=f"sha-{image}",
            annotator="openai",
            model="m",
            prompt_hash="p",
            status="ok" if prediction else "failed",
            prediction=prediction,
            failure_kind=None if prediction else "timeout",
        )

    store.append(record("a", "k1", "crazing", []))
    store.append(record("a", "k2", "scratches", [[0.1, 0.1, 0.2, 0.9]]))
    store.append(record("a", "k3", None, []))  # a later failure never hides a success
    store.append(record("b", "k4", None, []))
    pool = pd.DataFrame({"image_id": ["a", "b", "c"], "sha256": ["sha-a", "sha-b", "sha-c"]})

    frame = predictions_from_store(store, pool)

    assert frame["image_id"].tolist() == ["a"]
    assert frame.loc[0, "defect_class"] == "scratches"
    assert frame.loc[0, "boxes"] == [("scratches", (0.1, 0.1, 0.2, 0.9))]
    boxes = pseudo_boxes(frame, "annotator")
    assert boxes[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0.1, 0.1, 0.2, 0.9]]


def test_proposals_round_trip_through_json() -> None:
    proposals = {"a": [Proposal((0.1, 0.2, 0.3, 0.4), 0.5)], "b": []}
    assert proposals_from_json(proposals_to_json(proposals)) == proposals


def write_boxed_images(folder: Path, n: int, size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Noise images each holding one bright rectangle (the 'defect'), with its box."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for i in range(n):
        pixels = rng.normal(90, 10, (size, size))
        x1, y1 = rng.integers(4, size // 2, 2)
        x2, y2 = x1 + rng.integers(12, size // 2 - 2), y1 + rng.integers(12, size // 2 - 2)
        pixels[y1:y2, x1:x2] += 120
        path = folder / f"img_{i}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        cls = CLASSES[i % len(CLASSES)]
        images.append(
            {
                "image_id": f"img_{i}",
                "path": str(path),
                "sha256": sha256_bytes(path.read_bytes()),
                "width": size,
                "height": size,
                "class_name": cls,
            }
        )
        boxes.append(
            {
                "image_id": f"img_{i}",
                "class_name": cls,
                "xmin": x1,
                "ymin": y1,
                "xmax": x2,
                "ymax": y2,
            }
        )
    return pd.DataFrame(images), pd.DataFrame(boxes)


def test_detector_dataset_has_normalised_yolo_labels(tmp_path: Path) -> None:
    images, boxes = write_boxed_images(tmp_path / "img", 3)
    data_yaml, n_boxes = write_detector_dataset(images, boxes, CLASSES, tmp_path / "ds")
    assert n_boxes == 3 and data_yaml.exists()
    first = boxes.iloc[0]
    line = (tmp_path / "ds" / "labels" / "img_0.txt").read_text().split()
    cx, cy = (first.xmin + first.xmax) / 2 / 64, (first.ymin + first.ymax) / 2 / 64
    w, h = (first.xmax - first.xmin) / 64, (first.ymax - first.ymin) / 64
    assert int(line[0]) == CLASSES.index(first.class_name)
    np.testing.assert_allclose([float(v) for v in line[1:]], [cx, cy, w, h], atol=1e-6)
    assert len(list((tmp_path / "ds" / "images").iterdir())) == 3
    # Without width/height in the listing the sizes come from the files: same labels.
    write_detector_dataset(
        images.drop(columns=["width", "height"]), boxes, CLASSES, tmp_path / "d2"
    )
    for name in ("img_0.txt", "img_1.txt", "img_2.txt"):
        assert (tmp_path / "d2" / "labels" / name).read_text() == (
            tmp_path / "ds" / "labels" / name
        ).read_text()


def test_settings_follow_the_profile() -> None:
    for name in ("smoke", "quick", "full"):
        profile = load_config(name).profile
        settings = SeedDetectorSettings.for_profile(profile)
        assert settings.epochs == profile.annotation.seed_detector_epochs
        assert settings.imgsz == profile.annotation.seed_detector_imgsz
        assert settings.conf == profile.annotation.seed_detector_conf
        assert (settings.device, settings.seed) == (profile.training.device, profile.training.seed)
        assert settings.freeze == profile.annotation.seed_detector_freeze
    assert SeedDetectorSettings.for_profile(load_config("quick").profile, epochs=3).epochs == 3
    frozen = load_config("quick", overrides={"annotation": {"seed_detector_freeze": 4}}).profile
    assert SeedDetectorSettings.for_profile(frozen).describe()["freeze"] == 4
    unfrozen = load_config("quick", overrides={"annotation": {"seed_detector_freeze": 0}}).profile
    assert "freeze" not in SeedDetectorSettings.for_profile(unfrozen).describe()
    with pytest.raises(ValueError, match="seed_detector_freeze"):
        load_config("quick", overrides={"annotation": {"seed_detector_freeze": 23}})
    assert "flips" not in SeedDetectorSettings.for_profile(load_config("smoke").profile).describe()
    plain = {"annotation": {"seed_detector_flips": []}}
    unflipped = SeedDetectorSettings.for_profile(load_config("quick", overrides=plain).profile)
    assert "flips" not in unflipped.describe()
    one = {"annotation": {"seed_detector_flips": ["vertical"]}}
    assert SeedDetectorSettings.for_profile(load_config("smoke", overrides=one).profile).flips == (
        "vertical",
    )
    flipping = SeedDetectorSettings.for_profile(load_config("quick").profile)
    assert flipping.flips == ("horizontal", "vertical")
    assert flipping.describe()["flips"] == ["horizontal", "vertical"]
    with pytest.raises(ValueError, match="seed_detector_flips"):
        load_config("quick", overrides={"annotation": {"seed_detector_flips": ["diagonal"]}})


def test_flipped_views_fuse_and_keep_boxes_whose_mean_score_reaches_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weighted boxes fusion averages a box's score over the three views (a view that missed it
    counts as zero), so a box seen once at 0.1 falls below conf 0.05 and one seen twice at 0.12
    keeps 0.08."""
    detector = SeedDetector.from_trained(
        tmp_path / "unused.pt", SeedDetectorSettings(conf=0.05), progress=False
    )
    everywhere, twice, once = (0.1, 0.1, 0.4, 0.4), (0.6, 0.6, 0.9, 0.9), (0.5, 0.1, 0.6, 0.2)
    views = {
        "none": [Proposal(everywhere, 0.3), Proposal(twice, 0.12), Proposal(once, 0.1)],
        "horizontal": [Proposal(everywhere, 0.3), Proposal(twice, 0.12)],
        "vertical": [Proposal(everywhere, 0.3)],
    }
    seen: list[str] = []

    def predict(paths: pd.Series, view: str) -> list[list[Proposal]]:
        seen.append(view)
        return [list(views[view]) for _ in paths]

    monkeypatch.setattr(detector, "_predict", predict)
    images = pd.DataFrame({"image_id": ["0042"], "path": ["never-read.png"]})
    fused = detector.propose(images, flips=("horizontal", "vertical"))["0042"]
    assert seen == ["none", "horizontal", "vertical"]
    assert [p.box for p in fused] == [pytest.approx(everywhere), pytest.approx(twice)]
    assert [p.score for p in fused] == pytest.approx([0.3, 0.08])
    seen.clear()
    assert detector.propose(images)["0042"] == views["none"]  # one view: as predicted
    assert seen == ["none"]


def test_the_seed_detector_strategy_proposes_with_the_settings_flips(tmp_path: Path) -> None:
    from cascade_defect.annotate.options import AnnotatorOptions
    from cascade_defect.annotate.strategies import DetectorRecipe, strategy_proposals
    from cascade_defect.box_settings import SelfTrainingSettings

    settings = SeedDetectorSettings(flips=("vertical",))
    calls: list[tuple[str, ...]] = []

    class Recorded:
        def __init__(self) -> None:
            self.settings = settings

        def propose(self, images: pd.DataFrame, *, flips: tuple[str, ...] = ()) -> dict:
            calls.append(tuple(flips))
            return {str(i): [Proposal((0.1, 0.1, 0.5, 0.5), 0.9)] for i in images["image_id"]}

    pool = pd.DataFrame({"image_id": ["7", "8"], "path": ["a.png", "b.png"]})
    found, _ = strategy_proposals(
        ["seed_detector"],
        seeds=pool.iloc[:0],
        seed_boxes=pd.DataFrame(),
        pool=pool,
        predictions=predictions(("7", "crazing", 0.9, []), ("8", "crazing", 0.9, [])),
        class_names=CLASSES,
        recipe=DetectorRecipe("unused.pt", tmp_path, settings, SelfTrainingSettings()),
        options=AnnotatorOptions(progress=False),
        detector=Recorded(),  # type: ignore[arg-type]
        trained_details={},
    )
    assert calls == [("vertical",)]
    assert set(found["seed_detector"]) == {"7", "8"}


def _train_on_boxed_images(
    yolo_weights: Path, tmp_path: Path, settings: SeedDetectorSettings
) -> tuple[pd.DataFrame, SeedDetector, SeedDetectorTraining]:
    """A seed detector trained on six generated images with one known box each."""
    images, boxes = write_boxed_images(tmp_path / "img", 6)
    detector = SeedDetector(yolo_weights, tmp_path / "work", settings, progress=False)
    return images, detector, detector.train(images, boxes, CLASSES)


@pytest.mark.slow
def test_seed_detector_trains_offline_and_proposes(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    images, detector, training = _train_on_boxed_images(
        yolo_weights, tmp_path, SeedDetectorSettings(epochs=1, imgsz=64, batch=6, conf=0.001)
    )
    assert training.weights.exists() and training.n_boxes == 6
    assert training.weights.is_relative_to(tmp_path / "work")  # nothing written elsewhere
    assert training.seconds > 0
    trained_with = yaml.safe_load((training.run_dir / "args.yaml").read_text())
    assert trained_with["single_cls"] is True
    assert trained_with["nbs"] == 6  # an optimizer step per batch, not one per 64 images

    proposals = detector.propose(images)
    assert set(proposals) == set(images["image_id"])
    for found in proposals.values():
        for proposal in found:
            x1, y1, x2, y2 = proposal.box
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and 0 <= proposal.score <= 1
    frame = pseudo_boxes(
        predictions(*[(i, "inclusion", 0.5, []) for i in images["image_id"]]),
        "seed_detector",
        proposals=proposals,
    )
    assert set(frame["image_id"]) == set(images["image_id"])  # a box, or the fallback, for each
    assert set(frame["class_name"]) == {"inclusion"}

    reloaded = SeedDetector.from_trained(training.weights, detector.settings, progress=False)
    assert reloaded.propose(images.iloc[:2]).keys() == {"img_0", "img_1"}
    joining = SeedDetector.from_trained(
        training.weights,
        replace(detector.settings, fragment_merge=FragmentMergeSettings()),
        progress=False,
    )
    joined = joining.propose(images)  # each image's own pixel size decides what is elongated
    assert joined.keys() == proposals.keys()
    for image_id, path in zip(images["image_id"], images["path"], strict=True):
        with Image.open(path) as opened:
            width, height = opened.size
        expected = merge_fragments(proposals[image_id], width, height, FragmentMergeSettings())
        assert joined[image_id] == expected
    assert reloaded.describe()["weights_sha256"] == detector.describe()["weights_sha256"]
    assert network_attempts == []


def _layer_weights(weights: Path) -> dict[int, np.ndarray]:
    """Each layer's first convolution kernel of a checkpoint."""
    import torch

    model = torch.load(weights, map_location="cpu", weights_only=False)["model"].float()
    return {
        i: layer.conv.weight.detach().numpy().copy()
        for i, layer in enumerate(model.model)
        if hasattr(layer, "conv")
    }


@pytest.mark.slow
def test_a_frozen_backbone_keeps_the_coco_kernels(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    _, detector, training = _train_on_boxed_images(
        yolo_weights,
        tmp_path,
        SeedDetectorSettings(epochs=2, imgsz=64, batch=6, conf=0.001, freeze=4),
    )
    assert yaml.safe_load((training.run_dir / "args.yaml").read_text())["freeze"] == 4
    base, tuned = _layer_weights(yolo_weights), _layer_weights(training.weights)
    assert all(np.array_equal(base[i], tuned[i]) for i in (0, 1, 3))  # frozen: layers 0-3
    assert not np.array_equal(base[5], tuned[5])  # layer 5 (a convolution) learnt
    assert detector.describe()["freeze"] == 4
    assert network_attempts == []

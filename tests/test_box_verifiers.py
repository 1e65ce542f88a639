"""The crop_verified and classifier_cam box strategies: registry, verifier, CAM boxes, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cascade_defect.annotate.boxes import (
    BOX_STRATEGIES,
    DEFAULT_BOX_STRATEGIES,
    PROPOSAL_STRATEGIES,
    Proposal,
    SeedDetectorSettings,
    pseudo_boxes,
)
from cascade_defect.annotate.cam_boxes import boxes_from_map, calibrate_cam, confident_pool
from cascade_defect.annotate.crop_verifier import (
    CropVerifier,
    background_boxes,
    best_f1_threshold,
    class_scores,
    crop_box,
    crop_verify,
    jittered,
    keep_verified,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.strategies import (
    NEEDS_DETECTOR,
    DetectorRecipe,
    runnable_strategies,
    strategy_proposals,
)
from cascade_defect.hashing import sha256_bytes
from cascade_defect.metrics.box_quality import box_quality, normalise_gt_boxes
from cascade_defect.metrics.detection import box_iou
from cascade_defect.settings import (
    AnnotationSettings,
    CamBoxSettings,
    CropVerifierSettings,
    SelfTrainingSettings,
    load_config,
)
from tests.test_boxes import predictions

NEW = ("crop_verified", "classifier_cam")
SIZE = 96
BACKGROUND_PROPOSALS = [(0.66, 0.08, 0.95, 0.4), (0.66, 0.55, 0.95, 0.9)]


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    return no_network


# --------------------------------------------------------------------------- registry


def test_the_new_strategies_are_registered_but_not_written_by_default() -> None:
    for name in NEW:
        assert name in BOX_STRATEGIES and name in PROPOSAL_STRATEGIES
        assert name not in DEFAULT_BOX_STRATEGIES
        with pytest.raises(ValueError, match="needs proposals"):
            pseudo_boxes(predictions(("a", "crazing", 0.9, [])), name)  # type: ignore[arg-type]
    assert "crop_verified" in NEEDS_DETECTOR and "classifier_cam" not in NEEDS_DETECTOR
    options = AnnotatorOptions(box_strategies=["whole_image", *NEW])
    assert options.box_strategies == ("whole_image", *NEW)
    assert runnable_strategies(["annotator", *NEW], "offline") == list(NEW)


def test_the_pseudo_source_may_train_on_every_registered_strategy() -> None:
    from typing import get_args

    from cascade_defect.settings import TrainingSettings

    allowed = get_args(TrainingSettings.model_fields["box_strategy"].annotation)
    assert set(allowed) == set(BOX_STRATEGIES)
    for name in NEW:
        assert TrainingSettings(box_strategy=name).box_strategy == name


def test_settings_forbid_unknown_fields_and_sit_in_the_profile() -> None:
    with pytest.raises(ValueError, match="extra"):
        CropVerifierSettings(treshold=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="extra"):
        CamBoxSettings(epoch=2)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="multiple"):
        CropVerifierSettings(crop_imgsz=50)
    with pytest.raises(ValueError, match="fraction"):
        CamBoxSettings(thresholds=(1.5,))
    annotation = AnnotationSettings(crop_verifier={"threshold": 0.4}, classifier_cam={"epochs": 2})
    assert annotation.crop_verifier.threshold == 0.4 and annotation.classifier_cam.epochs == 2
    profile = load_config("quick").profile
    assert profile.annotation.crop_verifier == CropVerifierSettings()


# --------------------------------------------------------------------------- verifier pieces


def test_best_f1_threshold_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.2])
    correct = np.array([1, 1, 0, 1, 0], bool)
    # t=0.3: 3 of 4 kept are right, all 3 found: F1 6/7; t=0.5: 2/3, 2/3; t=0.7: 2/2, 2/3: F1 0.8.
    chosen = best_f1_threshold(scores, correct, grid=(0.3, 0.5, 0.7))
    assert chosen["threshold"] == 0.3
    assert chosen["f1"] == pytest.approx(6 / 7, abs=1e-4)
    assert chosen["precision"] == pytest.approx(0.75)
    # Ties go to the lower threshold (more boxes kept).
    assert best_f1_threshold(np.array([0.9]), np.array([True]), (0.2, 0.5))["threshold"] == 0.2


class FixedProbabilities:
    """A fitted classifier's interface answering the same probabilities for every row."""

    classes_ = np.array(["__background__", "crazing", "pit"])

    def __init__(self, *rows: list[float]) -> None:
        self.rows = np.array(rows)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.rows[: len(features)]


def test_keep_rules_by_hand() -> None:
    """Row 1 is a crazing defect the verifier mistakes for a pit: argmax scores crazing 0, the
    background rule 0.3 / (0.3 + 0.2) = 0.6. Row 2 is background: 0 and 0.1 / 0.8 = 0.125."""
    model = FixedProbabilities([0.2, 0.3, 0.5], [0.7, 0.1, 0.2])
    features = np.zeros((2, 3))
    argmax = class_scores(model, features, ["crazing", "crazing"], "argmax")
    versus = class_scores(model, features, ["crazing", "crazing"], "versus_background")
    assert argmax.tolist() == [0.0, 0.0]
    assert versus == pytest.approx([0.6, 0.125])
    assert class_scores(model, features, ["pit", "pit"], "argmax") == pytest.approx([0.5, 0.0])
    assert class_scores(model, features, ["rust", "rust"], "versus_background").tolist() == [0, 0]


def test_keep_verified_keeps_the_threshold_and_at_least_the_best() -> None:
    a, b, c = (Proposal((0, 0, 0.1 * k, 0.1 * k), 0.0, "pit") for k in (1, 2, 3))
    scored = {"x": [(a, 0.9), (b, 0.3)], "y": [(c, 0.2)], "z": [(a, 0.0)]}
    assert keep_verified(scored, 0.5, keep_best=True) == {"x": [a], "y": [c], "z": []}
    assert keep_verified(scored, 0.5, keep_best=False)["y"] == []


def test_training_boxes_respect_their_overlap_rules() -> None:
    rng = np.random.default_rng(0)
    box = (0.2, 0.2, 0.6, 0.5)
    copies = jittered(box, 5, rng)
    assert len(copies) == 5
    assert box_iou(np.array(copies), np.array([box])).min() >= 0.7
    negatives = background_boxes([box], np.array([[0.2, 0.2]]), 10, rng)
    assert len(negatives) == 10
    assert box_iou(np.array(negatives), np.array([box])).max() < 0.1
    assert crop_box((0.0, 0.4, 0.5, 0.6), 0.1) == pytest.approx((0.0, 0.38, 0.55, 0.62))


# --------------------------------------------------------------------------- verifier on images


def striped_images(folder: Path, spec: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Noise images with one striped patch in the left half: vertical stripes for ``crazing``,
    horizontal for ``scratches`` (``spec``: image class, stripe class per image)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    images, boxes = [], []
    for i, (image_class, stripes) in enumerate(spec):
        pixels = rng.normal(100, 8, (SIZE, SIZE))
        x1, y1 = (int(v) for v in rng.integers(4, 20, 2))
        w, h = (int(v) for v in rng.integers(28, 38, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        pattern = np.sin(0.9 * (xx if stripes == "crazing" else yy))
        pixels[y1 : y1 + h, x1 : x1 + w] = 100 + 90 * pattern
        path = folder / f"img_{i}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        images.append(
            {
                "image_id": f"img_{i}",
                "path": str(path),
                "sha256": sha256_bytes(path.read_bytes()),
                "width": SIZE,
                "height": SIZE,
                "class_name": image_class,
            }
        )
        boxes.append(
            {
                "image_id": f"img_{i}",
                "class_name": stripes,
                "xmin": x1,
                "ymin": y1,
                "xmax": x1 + w,
                "ymax": y1 + h,
            }
        )
    return pd.DataFrame(images), pd.DataFrame(boxes)


def constructed_proposals(images: pd.DataFrame, boxes: pd.DataFrame) -> dict[str, list[Proposal]]:
    """Per image: the defect's box shifted by 2 px (IoU > 0.8) and two boxes on the background."""
    out = {}
    for box in boxes.itertuples(index=False):
        near = (
            (box.xmin + 2) / SIZE,
            (box.ymin + 1) / SIZE,
            (box.xmax + 2) / SIZE,
            box.ymax / SIZE,
        )
        out[box.image_id] = [
            Proposal(near, 0.3),
            *(Proposal(b, 0.5) for b in BACKGROUND_PROPOSALS),
        ]
    return out


def test_crop_verifier_keeps_the_defects_and_drops_the_background(
    yolo_weights: Path, tmp_path: Path
) -> None:
    """Seven pool images with one defect and three proposals each (one on the defect). The last
    image shows scratches but the annotator calls it crazing: its boxes are never right.

    Unverified: 21 boxes, 6 class-aware matches of 7 truth boxes: recall 6/7, precision 6/21.
    Verified: the 6 defect boxes of the right class only: recall 6/7, precision 6/6.
    """
    from cascade_defect.annotate.offline.features import FeatureSpec, YoloFeatureExtractor

    spec = [(c, c) for c in ("crazing", "scratches") for _ in range(3)]
    seeds, seed_boxes = striped_images(tmp_path / "seeds", spec)
    pool, truth = striped_images(tmp_path / "pool", [*spec, ("crazing", "scratches")])
    pool["image_id"] = pool["image_id"].str.replace("img", "pool")
    truth["image_id"] = truth["image_id"].str.replace("img", "pool")
    image_classes = dict(zip(pool["image_id"], pool["class_name"], strict=True))
    proposals = constructed_proposals(pool, truth)
    extractor = YoloFeatureExtractor(
        str(yolo_weights), FeatureSpec(imgsz=64), config_dir=tmp_path / "yolo", progress=False
    )
    verifier = CropVerifier(extractor, CropVerifierSettings(threshold=0.5))
    result = crop_verify(
        verifier=verifier,
        seeds=seeds,
        seed_boxes=seed_boxes,
        seed_proposals=constructed_proposals(seeds, seed_boxes),
        pool=pool,
        proposals=proposals,
        image_classes=image_classes,
    )
    answers = predictions(*[(i, c, 1.0, []) for i, c in image_classes.items()])
    gt = normalise_gt_boxes(truth, pool)
    ids = list(pool["image_id"])

    def overall(found: dict[str, list[Proposal]]) -> pd.Series:
        boxes = pseudo_boxes(answers, "crop_verified", proposals=found, fallback=False)
        table = box_quality(gt, boxes, ids, ["crazing", "scratches"])
        return table[table["class_name"] == "all"].iloc[0]

    before, after = overall(proposals), overall(result.boxes)
    assert (before["recall_aware"], before["precision_aware"]) == pytest.approx((6 / 7, 6 / 21))
    assert (after["recall_aware"], after["precision_aware"]) == pytest.approx((6 / 7, 1.0))
    assert result.boxes["pool_6"] == []  # its crops look like scratches, not the image's crazing
    assert result.details["calibration"]["method"] == "fixed"

    # Calibrated on the seeds instead (leave-one-seed-image-out): the seeds separate cleanly.
    calibrated = CropVerifier(extractor, CropVerifierSettings())
    calibrated.fit(seeds, seed_boxes, constructed_proposals(seeds, seed_boxes))
    assert calibrated.calibration["f1"] == pytest.approx(1.0)
    assert calibrated.calibration["seed_proposals"] == 18
    assert calibrated.calibration["seed_proposals_correct"] == 6
    assert 0.05 <= (calibrated.threshold or 0) <= 0.95


# --------------------------------------------------------------------------- CAM boxes


def test_cam_boxes_from_a_constructed_map() -> None:
    cam = np.zeros((64, 64), np.float32)
    cam[10:30, 20:50] = 1.0  # the defect: rows 10-29, columns 20-49
    cam[50:54, 5:9] = 0.5  # a weak spot of 16 px (0.4% of the image)
    found = boxes_from_map(cam, threshold=0.4)
    assert [p.box for p in found] == [
        (20 / 64, 10 / 64, 50 / 64, 30 / 64),
        (5 / 64, 50 / 64, 9 / 64, 54 / 64),
    ]
    assert [p.score for p in found] == [1.0, 0.5]
    assert [p.box for p in boxes_from_map(cam, threshold=0.4, min_area=0.01)] == [found[0].box]
    assert [p.box for p in boxes_from_map(cam, threshold=0.6)] == [found[0].box]
    assert boxes_from_map(cam, 0.4, max_boxes=1) == found[:1]
    assert boxes_from_map(np.zeros((8, 8)), 0.5) == []


def test_cam_calibration_picks_the_threshold_that_fits_the_seed_boxes() -> None:
    """A map with a core of 1.0 exactly on the truth box and a 0.6 halo 8 px around it: only a
    threshold above 0.6 gives the box itself."""
    cam = np.zeros((64, 64), np.float32)
    cam[8:48, 12:52] = 0.6
    cam[16:40, 20:44] = 1.0
    truth = {"a": [(20 / 64, 16 / 64, 44 / 64, 40 / 64)]}
    threshold, min_area, grid = calibrate_cam({"a": cam}, truth, (0.3, 0.5, 0.7, 0.9), (0.0, 0.2))
    assert (threshold, min_area) == (0.7, 0.0)
    best = grid[(grid["threshold"] == 0.7) & (grid["min_area"] == 0.0)]
    assert best["mean_best_iou"].item() == pytest.approx(1.0)
    halo = grid[(grid["threshold"] == 0.5) & (grid["min_area"] == 0.0)]
    assert halo["mean_best_iou"].item() == pytest.approx(24 * 24 / (40 * 40))
    # The core covers 14% of the image, the halo 39%: a 20% minimum area keeps only the halo.
    large = grid[grid["min_area"] == 0.2].set_index("threshold")["mean_best_iou"]
    assert large.to_dict() == pytest.approx({0.3: 0.36, 0.5: 0.36, 0.7: 0.0, 0.9: 0.0})


def test_confident_pool_takes_the_most_confident_per_class() -> None:
    frame = predictions(
        ("a", "pit", 0.9, []),
        ("b", "pit", 0.5, []),
        ("c", "pit", 0.7, []),
        ("d", "scratches", 0.4, []),
        ("e", "no_defect", 1.0, []),
    )
    chosen = confident_pool(frame, 2, ["pit", "scratches"])
    assert sorted(chosen["image_id"]) == ["a", "c", "d"]


# --------------------------------------------------------------------------- both, end to end


@pytest.mark.slow
def test_both_strategies_run_offline_from_strategy_proposals(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    import torch

    from cascade_defect.annotate.cam_boxes import _rgb, raw_cams
    from cascade_defect.train.yolo_env import import_ultralytics

    spec = [(c, c) for c in ("crazing", "scratches") for _ in range(4)]
    images, boxes = striped_images(tmp_path / "img", spec)
    seeds, seed_boxes = images.iloc[[0, 1, 4, 5]], boxes.iloc[[0, 1, 4, 5]]
    pool = images.drop(index=seeds.index)
    answers = predictions(*[(r.image_id, r.class_name, 0.9, []) for r in pool.itertuples()])
    recipe = DetectorRecipe(
        weights=yolo_weights,
        work_dir=tmp_path / "work",
        seed_detector=SeedDetectorSettings(epochs=1, imgsz=64, batch=4, conf=0.0, max_det=3),
        self_training=SelfTrainingSettings(epochs=1, imgsz=64),
        crop_verifier=CropVerifierSettings(max_det=4, negatives_per_image=4, jitter=1),
        classifier_cam=CamBoxSettings(epochs=1, imgsz=64, batch=4, pool_per_class=1, cam_imgsz=64),
        config_dir=tmp_path / "yolo",
    )
    found, details = strategy_proposals(
        list(NEW),
        seeds=seeds,
        seed_boxes=seed_boxes,
        pool=pool,
        predictions=answers,
        class_names=["crazing", "scratches"],
        recipe=recipe,
        options=AnnotatorOptions(progress=False),
    )
    classes = dict(zip(pool["image_id"], pool["class_name"], strict=True))
    assert set(found) == set(NEW)
    for name in NEW:
        for image_id, kept in found[name].items():
            assert all(p.class_name == classes[image_id] for p in kept)
    assert set(found["crop_verified"]) == set(pool["image_id"])
    assert set(found["classifier_cam"]) == set(pool["image_id"])
    assert details["crop_verified"]["calibration"]["method"].startswith("leave-one")
    assert {"threshold", "min_area", "classifier"} <= set(details["classifier_cam"])

    # The map's mean plus the class's bias is the classifier's logit: the hook took the right map.
    weights = tmp_path / "work" / "classifier_cam" / "runs" / "cam_classifier" / "weights"
    import_ultralytics(tmp_path / "yolo")
    from ultralytics import YOLO

    net = YOLO(str(weights / "best.pt")).model.float().eval()
    tensor = torch.from_numpy(np.stack([_rgb(p, 64) for p in pool["path"]]))
    with torch.inference_mode():
        _, logits = net(tensor)
        for c in range(2):
            cams = raw_cams(net, tensor, [c] * len(tensor))
            bias = net.model[-1].linear.bias[c]
            torch.testing.assert_close(cams.mean(dim=(1, 2)) + bias, logits[:, c])
    assert network_attempts == []

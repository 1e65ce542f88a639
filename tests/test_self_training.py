"""The self_training box strategy: selection rules, view fusion, folds, and a tiny real run."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cascade_defect.annotate.boxes import (
    Proposal,
    SeedDetectorSettings,
    fuse_views,
    pseudo_boxes,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.annotate.self_training import (
    boxes_per_image_by_class,
    count_calibrated_thresholds,
    fold_of,
    select_boxes,
    selected_to_pixel_boxes,
    self_train,
)
from cascade_defect.annotate.strategies import (
    DetectorRecipe,
    runnable_strategies,
    strategy_proposals,
)
from cascade_defect.metrics.box_quality import box_quality
from cascade_defect.settings import SelfTrainingSettings, load_config
from tests.fake_openai_server import FakeOpenAIServer, default_prediction
from tests.test_boxes import CLASSES, predictions, write_boxed_images


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    return no_network


def test_selection_keeps_the_image_class_above_threshold_and_at_least_the_best_box() -> None:
    proposals = {
        "a": [
            Proposal((0.0, 0.0, 0.2, 0.2), 0.9, "crazing"),
            Proposal((0.5, 0.5, 0.7, 0.7), 0.4, "crazing"),
            Proposal((0.1, 0.6, 0.3, 0.9), 0.95, "scratches"),  # another class: never kept
        ],
        "b": [Proposal((0.2, 0.2, 0.4, 0.4), 0.1, None)],  # below threshold but the best one
        "c": [Proposal((0.2, 0.2, 0.4, 0.4), 0.9, None)],
    }
    classes = {"a": "crazing", "b": "scratches", "c": NO_DEFECT}
    selected = select_boxes(proposals, classes, {"crazing": 0.5, "scratches": 0.5})
    assert [p.box for p in selected["a"]] == [(0.0, 0.0, 0.2, 0.2)]
    assert [(p.box, p.class_name) for p in selected["b"]] == [((0.2, 0.2, 0.4, 0.4), "scratches")]
    assert "c" not in selected  # a defect-free answer carries no box


def test_count_calibration_matches_the_seeds_box_density() -> None:
    seeds = pd.DataFrame({"image_id": ["s1", "s2", "s3"], "class_name": ["crazing"] * 2 + ["pit"]})
    seed_boxes = pd.DataFrame(
        {"image_id": ["s1", "s1", "s2", "s2", "s3"], "class_name": ["crazing"] * 4 + ["pit"]}
    )
    targets = boxes_per_image_by_class(seed_boxes, seeds)
    assert targets == {"crazing": 2.0, "pit": 1.0}
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
    proposals = {
        "a": [Proposal((0, 0, 0.1, 0.1), s) for s in scores[:3]],
        "b": [Proposal((0, 0, 0.1, 0.1), s) for s in scores[3:]],
        "c": [Proposal((0, 0, 0.1, 0.1), 0.2)],
    }
    thresholds = count_calibrated_thresholds(
        proposals, {"a": "crazing", "b": "crazing", "c": "pit"}, targets
    )
    # Two crazing images x 2 boxes each: the 4th best crazing score; one pit image x 1 box.
    assert thresholds == {"crazing": 0.6, "pit": 0.2}


def test_folds_are_stable_and_cover_every_fold() -> None:
    ids = [f"img {i}" for i in range(200)]
    folds = [fold_of(i, 2) for i in ids]
    assert folds == [fold_of(i, 2) for i in ids]
    assert 60 < sum(folds) < 140
    assert fold_of("1001", 1) == 0


def test_fused_views_agree_where_views_agree() -> None:
    seen_twice = [Proposal((0.1, 0.1, 0.3, 0.3), 0.8), Proposal((0.12, 0.1, 0.3, 0.32), 0.6)]
    seen_once = Proposal((0.6, 0.6, 0.9, 0.9), 0.9)
    fused = fuse_views([[seen_twice[0], seen_once], [seen_twice[1]]])
    assert len(fused) == 2
    by_x = sorted(fused, key=lambda p: p.box[0])
    assert by_x[0].box[0] == pytest.approx((0.1 * 0.8 + 0.12 * 0.6) / 1.4)
    assert by_x[0].score == pytest.approx(0.7)  # the mean over both views
    assert by_x[1].score == pytest.approx(0.45)  # seen by one view of two
    assert fuse_views([[], []]) == []


def test_class_aware_proposals_of_another_class_are_not_given_the_image_class() -> None:
    proposals = {
        "a": [
            Proposal((0.1, 0.1, 0.3, 0.3), 0.9, "crazing"),
            Proposal((0.5, 0.5, 0.8, 0.8), 0.9, "scratches"),
        ]
    }
    frame = pseudo_boxes(
        predictions(("a", "crazing", 0.5, [])), "self_training", proposals=proposals
    )
    assert frame[["x1", "x2"]].to_numpy().tolist() == [[0.1, 0.3]]
    assert frame["confidence"].tolist() == [pytest.approx(0.45)]


def test_box_quality_of_a_selection_by_hand() -> None:
    """Three truth boxes; the selection finds two of them plus one false box: recall 2/3,
    precision 2/3 (computed by hand)."""
    truth = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "class_name": ["crazing", "crazing", "scratches"],
            "x1": [0.0, 0.5, 0.1],
            "y1": [0.0, 0.5, 0.1],
            "x2": [0.2, 0.9, 0.3],
            "y2": [0.2, 0.9, 0.9],
        }
    )
    proposals = {
        "a": [Proposal((0.0, 0.0, 0.21, 0.2), 0.9), Proposal((0.3, 0.0, 0.4, 0.1), 0.8)],
        "b": [Proposal((0.1, 0.12, 0.3, 0.9), 0.2)],
    }
    selected = select_boxes(proposals, {"a": "crazing", "b": "scratches"}, {"crazing": 0.5})
    frame = pseudo_boxes(
        predictions(("a", "crazing", 1.0, []), ("b", "scratches", 1.0, [])),
        "self_training",
        proposals=selected,
    )
    table = box_quality(truth, frame, ["a", "b"], ["crazing", "scratches"])
    overall = table[table["class_name"] == "all"].iloc[0]
    assert overall["recall_aware"] == pytest.approx(2 / 3)
    assert overall["precision_aware"] == pytest.approx(2 / 3)


def test_selected_boxes_become_pixel_boxes() -> None:
    sizes = pd.DataFrame({"image_id": ["a"], "width": [200], "height": [100]})
    table = selected_to_pixel_boxes({"a": [Proposal((0.1, 0.2, 0.5, 1.0), 0.5, "pit")]}, sizes)
    assert table.iloc[0][["xmin", "ymin", "xmax", "ymax"]].tolist() == [20, 20, 100, 100]


def test_settings_validate_and_follow_the_profiles() -> None:
    with pytest.raises(ValueError, match="flips"):
        SelfTrainingSettings(flips=("diagonal",))
    with pytest.raises(ValueError, match="extra"):
        SelfTrainingSettings(epoch=3)  # type: ignore[call-arg]
    assert load_config("smoke").profile.annotation.self_training.epochs == 1


@pytest.mark.slow
def test_self_training_runs_offline_on_generated_images(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    images, boxes = write_boxed_images(tmp_path / "img", 12)
    seeds, seed_boxes = images.iloc[:3], boxes.iloc[:3]
    pool = images.iloc[3:]
    image_classes = dict(zip(pool["image_id"], pool["class_name"], strict=True))
    initial = {
        str(b.image_id): [Proposal((b.xmin / 64, b.ymin / 64, b.xmax / 64, b.ymax / 64), 0.9)]
        for b in boxes.iloc[3:].itertuples()
    }
    result = self_train(
        seeds=seeds,
        seed_boxes=seed_boxes,
        pool=pool,
        image_classes=image_classes,
        initial=initial,
        class_names=CLASSES,
        weights=yolo_weights,
        work_dir=tmp_path / "work",
        settings=SelfTrainingSettings(epochs=1, imgsz=64, batch=4, conf=0.0, flips=("vertical",)),
        progress=False,
    )
    teachers = [row for row in result.teachers if row["round"] != "final"]
    assert [row["fold"] for row in teachers] == [0, 1]
    folds = [fold_of(i, 2) for i in pool["image_id"]]
    for row in teachers:
        # Each teacher trains on the seeds and the other fold's images, proposes its own fold.
        assert row["train_images"] == 3 + folds.count(1 - row["fold"])
        assert row["proposed_images"] == folds.count(row["fold"])
        args = tmp_path / "work" / f"self_training_r1_f{row['fold']}" / "train" / "args.yaml"
        assert yaml.safe_load(args.read_text())["single_cls"] is False
    assert set(result.proposals) == set(pool["image_id"])
    # The summary lists classes by name, not in a set's order (which changes with the hash seed).
    for row in result.teachers:
        assert list(row["thresholds"]) == sorted(set(image_classes.values()))
    for image_id, found in result.boxes.items():
        assert found and all(p.class_name == image_classes[image_id] for p in found)
    assert network_attempts == []


# --------------------------------------------------------------------------- shared strategies


def test_offline_annotator_skips_the_strategies_that_need_a_model() -> None:
    strategies = ["whole_image", "seed_detector", "mllm_verified", "annotator", "self_training"]
    assert runnable_strategies(strategies, "offline") == [
        "whole_image",
        "seed_detector",
        "self_training",
    ]
    assert runnable_strategies(strategies, "openai") == strategies


def verdicts_for_odd_candidates(body: dict, image_sha256: str | None) -> dict:
    """Verification requests: odd-numbered candidates are scratches; annotation requests get
    the server's default answer."""
    properties = body["response_format"]["json_schema"]["schema"]["properties"]
    if "verdicts" not in properties:
        return default_prediction(body, image_sha256)
    text = body["messages"][-1]["content"][0]["text"]
    n = int(re.search(r"New image with (\d+) numbered", text).group(1))  # type: ignore[union-attr]
    return {
        "verdicts": [
            {
                "candidate": i,
                "is_defect": bool(i % 2),
                "defect_class": "scratches" if i % 2 else NO_DEFECT,
            }
            for i in range(1, n + 1)
        ]
    }


@pytest.mark.slow
@pytest.mark.integration
def test_mllm_verified_keeps_the_candidates_the_model_confirms(
    yolo_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    network_attempts: list[str],
) -> None:
    images, boxes = write_boxed_images(tmp_path / "img", 8)
    seeds, seed_boxes, pool = images.iloc[:3], boxes.iloc[:3], images.iloc[3:]
    # Every pool image is called "scratches"; the model confirms odd-numbered candidates.
    answers = predictions(*[(i, "scratches", 0.9, []) for i in pool["image_id"]])
    recipe = DetectorRecipe(
        weights=yolo_weights,
        work_dir=tmp_path / "work",
        seed_detector=SeedDetectorSettings(epochs=1, imgsz=64, batch=3, conf=0.0, max_det=3),
        self_training=SelfTrainingSettings(epochs=1, imgsz=64),
    )
    with FakeOpenAIServer(answer_fn=verdicts_for_odd_candidates) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        options = AnnotatorOptions(annotator="openai", model="gpt-4o", progress=False)
        found, details = strategy_proposals(
            ["seed_detector", "mllm_verified"],
            seeds=seeds,
            seed_boxes=seed_boxes,
            pool=pool,
            predictions=answers,
            class_names=CLASSES,
            recipe=recipe,
            options=options,
        )
        sent = len(server.chat_requests())
    proposed, verified = found["seed_detector"], found["mllm_verified"]
    with_candidates = [i for i in pool["image_id"] if proposed[i]]
    assert with_candidates and sent == len(with_candidates)  # one request per image with boxes
    for image_id in pool["image_id"]:
        expected = [p.box for n, p in enumerate(proposed[image_id], start=1) if n % 2]
        assert [p.box for p in verified[image_id]] == expected
    assert details["mllm_verified"]["kept_candidates"] == sum(len(v) for v in verified.values())
    assert network_attempts == []

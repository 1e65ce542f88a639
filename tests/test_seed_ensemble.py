"""The seed-detector ensemble: members trained with the next random seeds, their proposals fused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from cascade_defect.annotate import strategies
from cascade_defect.annotate.boxes import (
    Proposal,
    SeedDetector,
    SeedDetectorSettings,
    SeedDetectorTraining,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.strategies import DetectorRecipe, strategy_proposals
from cascade_defect.box_settings import SeedEnsembleSettings, SelfTrainingSettings
from cascade_defect.settings import load_config
from tests.test_boxes import CLASSES, predictions, write_boxed_images


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    return no_network


def trained_detector(weights: Path, settings: SeedDetectorSettings) -> SeedDetector:
    detector = SeedDetector("unused.pt", weights.parent, settings, progress=False)
    detector.trained = SeedDetectorTraining(weights, weights.parent, 1.0, 3, 3)
    return detector


def test_members_boxes_are_fused_and_kept_from_the_detector_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three members: a box two of them drew (0.3 each) scores 0.2 after fusion, at the mean of
    their corners; a box one member drew at 0.09 scores 0.03 and is dropped at 0.05."""
    found_by = {
        "m0.pt": [Proposal((0.10, 0.10, 0.50, 0.50), 0.3), Proposal((0.7, 0.7, 0.9, 0.9), 0.09)],
        "m1.pt": [Proposal((0.12, 0.12, 0.52, 0.52), 0.3)],
        "m2.pt": [],
    }
    settings = SeedDetectorSettings(conf=0.05, seed=7, flips=("vertical",))
    trained_members: list[int] = []
    proposing: list[tuple[str, float, tuple[str, ...]]] = []

    def train(recipe, seeds, seed_boxes, class_names, *, progress=True, member=0):
        trained_members.append(member)
        return trained_detector(tmp_path / f"m{member}.pt", settings), {"member": member}

    class Member:
        def __init__(self, weights: Path, member_settings: SeedDetectorSettings) -> None:
            self.weights, self.settings = Path(weights), member_settings

        def propose(self, images: pd.DataFrame, *, flips: tuple[str, ...] = ()) -> dict:
            proposing.append((self.weights.name, self.settings.conf, tuple(flips)))
            return {str(i): found_by[self.weights.name] for i in images["image_id"]}

    monkeypatch.setattr(strategies, "train_seed_detector", train)
    monkeypatch.setattr(
        strategies.SeedDetector, "from_trained", classmethod(lambda cls, w, s, **kw: Member(w, s))
    )
    pool = pd.DataFrame({"image_id": ["7"], "path": ["a.png"]})
    recipe = DetectorRecipe(
        "unused.pt",
        tmp_path,
        settings,
        SelfTrainingSettings(),
        ensemble=SeedEnsembleSettings(members=3, member_conf=0.01),
    )
    found, details = strategy_proposals(
        ["seed_detector"],
        seeds=pool.iloc[:0],
        seed_boxes=pd.DataFrame(),
        pool=pool,
        predictions=predictions(("7", "crazing", 0.9, [])),
        class_names=CLASSES,
        recipe=recipe,
        options=AnnotatorOptions(progress=False),
        detector=trained_detector(tmp_path / "m0.pt", settings),
        trained_details={},
    )
    assert trained_members == [1, 2]  # the first member is the detector already trained
    assert proposing == [(f"m{k}.pt", 0.01, ("vertical",)) for k in range(3)]
    [fused] = found["seed_detector"]["7"]
    assert fused.score == pytest.approx(0.2)
    assert fused.box == pytest.approx((0.11, 0.11, 0.51, 0.51))
    assert details["seed_ensemble"] == {
        "settings": {"members": 3, "member_conf": 0.01},
        "members": [{"member": 1}, {"member": 2}],
    }


def test_one_detector_needs_no_ensemble_and_a_bad_one_is_refused() -> None:
    assert load_config("smoke").profile.annotation.seed_detector_ensemble is None
    config = load_config(
        "smoke", overrides={"annotation": {"seed_detector_ensemble": {"members": 5}}}
    )
    assert config.profile.annotation.seed_detector_ensemble == SeedEnsembleSettings(members=5)
    for bad in ({"members": 1}, {"members": 3, "member_conf": 0.0}, {"members": 3, "votes": 2}):
        with pytest.raises(ValidationError):
            SeedEnsembleSettings(**bad)


@pytest.mark.slow
def test_an_ensemble_trains_its_members_offline_with_the_next_seeds(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    images, boxes = write_boxed_images(tmp_path / "img", 6)
    settings = SeedDetectorSettings(epochs=1, imgsz=64, batch=6, conf=0.001, seed=3)
    recipe = DetectorRecipe(
        yolo_weights,
        tmp_path / "work",
        settings,
        SelfTrainingSettings(),
        seed=3,
        ensemble=SeedEnsembleSettings(members=2, member_conf=0.0005),
    )
    first, _ = strategies.train_seed_detector(recipe, images, boxes, CLASSES, progress=False)
    fused, details, turned = strategies.ensemble_proposals(
        first, recipe, images, boxes, images, CLASSES, progress=False
    )
    assert turned is None  # no turn_ratio: the plain view only
    [member] = details["members"]
    assert member["settings"]["seed"] == 4 and member["n_boxes"] == 6
    member_run = tmp_path / "work" / "seed_detector" / "member_1" / "seed_detector" / "train"
    assert yaml.safe_load((member_run / "args.yaml").read_text())["seed"] == 4
    assert set(fused) == set(images["image_id"])
    for found in fused.values():
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
        assert all(p.score >= settings.conf for p in found)
        assert all(0 <= p.box[0] < p.box[2] <= 1 and 0 <= p.box[1] < p.box[3] <= 1 for p in found)
    # With a turn ratio the same members also propose on the pool turned a quarter (real files, real
    # predictions); every image keeps one view, and the turned copies lie in the recipe's folder.
    turning = replace(recipe, seed_detector=replace(settings, turn_ratio=1.0))
    fused_turning, _, turned = strategies.ensemble_proposals(
        first, turning, images, boxes, images, CLASSES, progress=False
    )
    assert turned is not None and turned["images"] == len(images) == len(fused_turning)
    assert 0 <= turned["images_turned"] <= len(images)
    assert len(list((tmp_path / "work" / "quarter_turned").glob("*.png"))) == len(images)
    for found in fused_turning.values():
        assert all(0 <= p.box[0] < p.box[2] <= 1 and 0 <= p.box[1] < p.box[3] <= 1 for p in found)
    assert network_attempts == []

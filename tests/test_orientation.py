"""The quarter-turned view of the pool: turning images and boxes, choosing a view per image, and
the whole path through :func:`quarter_turn_views` with a detector that only sees upright bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cascade_defect.annotate.boxes import Proposal, SeedDetectorSettings
from cascade_defect.annotate.orientation import choose_orientation, turned_back, turned_copies
from cascade_defect.annotate.strategies import DetectorRecipe, quarter_turn_views
from cascade_defect.box_settings import SelfTrainingSettings
from cascade_defect.settings import load_config


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    return no_network


def bar_image(path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> Path:
    """A dark ``width`` x ``height`` greyscale image with a bright rectangle at ``box`` (pixel
    corners, end exclusive)."""
    pixels = np.full((height, width), 30, dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 240
    Image.fromarray(pixels).save(path)
    return path


@dataclass
class UprightBarDetector:
    """Stands in for a seed detector that learnt upright defects only: it proposes the bounding
    box of the bright pixels when they form a bar at least three times taller than wide (score
    0.8), and a faint guess at the image centre otherwise (score 0.1)."""

    settings: SeedDetectorSettings = field(default_factory=SeedDetectorSettings)
    seen: list[tuple[int, int]] = field(default_factory=list)

    def propose(self, images: pd.DataFrame, flips: tuple[str, ...] = ()) -> dict:
        out = {}
        for image in images.itertuples(index=False):
            with Image.open(image.path) as opened:
                pixels = np.asarray(opened.convert("L"))
            self.seen.append(pixels.shape)
            height, width = pixels.shape
            rows, cols = np.nonzero(pixels > 128)
            x1, x2, y1, y2 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
            if (y2 - y1) >= 3 * (x2 - x1):
                box = (x1 / width, y1 / height, x2 / width, y2 / height)
                out[str(image.image_id)] = [Proposal(tuple(map(float, box)), 0.8)]
            else:
                out[str(image.image_id)] = [Proposal((0.4, 0.4, 0.6, 0.6), 0.1)]
        return out


def test_a_box_found_on_the_turned_image_turns_back_onto_the_original(tmp_path: Path) -> None:
    # A 60 x 40 image with a bar lying across at x 10-50, y 20-24 (normalised 1/6-5/6, 0.5-0.6).
    path = bar_image(tmp_path / "wide 1.png", 60, 40, (10, 20, 50, 24))
    turned = turned_copies(pd.DataFrame([{"image_id": "0017", "path": str(path)}]), tmp_path / "t")
    assert turned["image_id"].tolist() == ["0017"]
    with Image.open(turned["path"].iloc[0]) as opened:
        pixels = np.asarray(opened.convert("L"))
    assert pixels.shape == (60, 40)  # now 40 wide, 60 tall
    rows, cols = np.nonzero(pixels > 128)
    # Anticlockwise, (x, y) goes to (y, 60 - x): columns 20-24, rows 60-50..60-10 = 10-50.
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (20, 24, 10, 50)
    found = Proposal((20 / 40, 10 / 60, 24 / 40, 50 / 60), 0.7, "scratches")
    back = turned_back(found)
    np.testing.assert_allclose(back.box, (10 / 60, 20 / 40, 50 / 60, 24 / 40))
    assert (back.score, back.class_name) == (0.7, "scratches")


def test_turned_copies_are_rewritten_only_when_their_source_changes(tmp_path: Path) -> None:
    path = bar_image(tmp_path / "a.png", 30, 20, (2, 2, 5, 18))
    images = pd.DataFrame([{"image_id": "a", "path": str(path)}])
    target = Path(turned_copies(images, tmp_path / "t")["path"].iloc[0])
    first = target.stat().st_mtime_ns
    turned_copies(images, tmp_path / "t")
    assert target.stat().st_mtime_ns == first
    bar_image(path, 30, 20, (20, 2, 25, 18))  # the same file name, another image
    turned_copies(images, tmp_path / "t")
    with Image.open(target) as opened:
        rows, _ = np.nonzero(np.asarray(opened.convert("L")) > 128)
    assert (rows.min(), rows.max() + 1) == (30 - 25, 30 - 20)


def test_the_turned_view_wins_only_at_the_ratio() -> None:
    upright = Proposal((0.1, 0.1, 0.2, 0.9), 0.3)
    across = Proposal((0.1, 0.4, 0.9, 0.5), 0.6)
    plain = {"a": [upright], "b": [upright], "c": [], "d": [upright]}
    turned = {"a": [across], "b": [Proposal(across.box, 0.59)], "c": [across], "d": []}
    chosen, took = choose_orientation(plain, turned, turn_ratio=2.0)
    # a: 0.6 >= 2 x 0.3; b: 0.59 < 0.6; c: nothing plain; d: nothing turned.
    assert took == ["a", "c"]
    assert chosen == {"a": [across], "b": [upright], "c": [across], "d": [upright]}
    assert choose_orientation({"x": []}, {"x": []}, 2.0) == ({"x": []}, [])
    with pytest.raises(ValueError, match="at least 1"):
        choose_orientation(plain, turned, 0.5)


def test_a_bar_lying_across_is_found_through_the_turned_view(tmp_path: Path) -> None:
    images = pd.DataFrame(
        [
            {
                "image_id": "001",
                "path": str(bar_image(tmp_path / "1.png", 80, 50, (30, 5, 36, 45))),
            },
            {
                "image_id": "002",
                "path": str(bar_image(tmp_path / "2.png", 80, 50, (5, 20, 75, 26))),
            },
        ]
    )
    detector = UprightBarDetector(SeedDetectorSettings(turn_ratio=2.0))
    recipe = DetectorRecipe(
        "unused.pt", tmp_path / "work", detector.settings, SelfTrainingSettings()
    )
    chosen, details = quarter_turn_views([detector], images, recipe, progress=False)  # type: ignore[list-item]
    assert details == {"turn_ratio": 2.0, "images_turned": 1, "images": 2}
    # The upright bar keeps its plain box; the one lying across gets the turned view's, turned back.
    [upright] = chosen["001"]
    np.testing.assert_allclose(upright.box, (30 / 80, 5 / 50, 36 / 80, 45 / 50))
    [across] = chosen["002"]
    np.testing.assert_allclose(across.box, (5 / 80, 20 / 50, 75 / 80, 26 / 50))
    assert across.score == 0.8
    assert (tmp_path / "work" / "quarter_turned").is_dir()
    assert detector.seen == [(50, 80), (50, 80), (80, 50), (80, 50)]  # plain, then turned
    # Without a ratio the turned view is never computed.
    plain_only = UprightBarDetector()
    recipe = DetectorRecipe(
        "unused.pt", tmp_path / "w2", plain_only.settings, SelfTrainingSettings()
    )
    chosen, details = quarter_turn_views([plain_only], images, recipe, progress=False)  # type: ignore[list-item]
    assert details is None and chosen["002"][0].score == 0.1
    assert len(plain_only.seen) == 2 and not (tmp_path / "w2").exists()


def test_the_turn_ratio_is_a_profile_setting() -> None:
    quick = load_config("quick").profile
    assert SeedDetectorSettings.for_profile(quick).turn_ratio == (
        quick.annotation.seed_detector_turn_ratio
    )
    off = load_config("quick", overrides={"annotation": {"seed_detector_turn_ratio": None}})
    assert "turn_ratio" not in SeedDetectorSettings.for_profile(off.profile).describe()
    on = load_config("quick", overrides={"annotation": {"seed_detector_turn_ratio": 3.0}})
    assert SeedDetectorSettings.for_profile(on.profile).describe()["turn_ratio"] == 3.0
    with pytest.raises(ValueError, match="seed_detector_turn_ratio"):
        load_config("quick", overrides={"annotation": {"seed_detector_turn_ratio": 0.5}})

"""Fragments of one elongated defect joined into one box; everything else left as it is."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.annotate.boxes import Proposal, SeedDetector, SeedDetectorSettings
from cascade_defect.annotate.crop_verifier import low_score_proposer
from cascade_defect.annotate.fragments import fuse_detectors, fuse_views, merge_fragments
from cascade_defect.box_settings import FragmentMergeSettings
from cascade_defect.metrics.box_quality import box_quality
from cascade_defect.settings import load_config

ON = FragmentMergeSettings()


def _px(x1: float, y1: float, x2: float, y2: float, size: float = 200.0) -> tuple[float, ...]:
    return (x1 / size, y1 / size, x2 / size, y2 / size)


def test_fragments_along_a_vertical_scratch_become_the_box_around_them() -> None:
    # three 10 x 60 px pieces of one scratch, touching or overlapping end to end, a little offset
    pieces = [
        Proposal(_px(50, 10, 60, 70), 0.4),
        Proposal(_px(52, 65, 62, 125), 0.7),
        Proposal(_px(51, 125, 61, 185), 0.3),
    ]
    merged = merge_fragments(pieces, 200, 200, ON)
    assert len(merged) == 1
    assert merged[0].box == pytest.approx(_px(50, 10, 62, 185))
    assert merged[0].score == 0.7  # the group's best


def test_horizontal_fragments_merge_and_a_gap_keeps_them_apart() -> None:
    touching = [Proposal(_px(10, 40, 70, 50), 0.5), Proposal(_px(70, 42, 130, 52), 0.6)]
    assert len(merge_fragments(touching, 200, 200, ON)) == 1
    apart = [Proposal(_px(10, 40, 70, 50), 0.5), Proposal(_px(75, 42, 135, 52), 0.6)]
    assert len(merge_fragments(apart, 200, 200, ON)) == 2  # 5 px between: two defects


def test_parallel_crossing_and_compact_boxes_are_left_alone() -> None:
    parallel = [Proposal(_px(20, 10, 30, 100), 0.5), Proposal(_px(40, 10, 50, 100), 0.4)]
    crossing = [Proposal(_px(100, 0, 110, 80), 0.5), Proposal(_px(70, 30, 150, 40), 0.4)]
    compact = [Proposal(_px(10, 120, 60, 170), 0.5), Proposal(_px(40, 150, 90, 200), 0.4)]
    for boxes in (parallel, crossing, compact):
        assert sorted(merge_fragments(boxes, 200, 200, ON), key=lambda p: -p.score) == sorted(
            boxes, key=lambda p: -p.score
        )
    # a thin box overlapping only a sliver of a wider one's width is not the same line
    offset = [Proposal(_px(20, 10, 30, 80), 0.5), Proposal(_px(28, 75, 48, 175), 0.4)]
    assert len(merge_fragments(offset, 200, 200, ON)) == 2


def test_elongation_is_measured_in_pixels_not_in_normalised_corners() -> None:
    # on a 600 x 100 image, boxes 0.05 wide and 0.3 tall look like vertical lines when
    # normalised but are 30 x 30 px squares: not fragments of a line
    squares = [Proposal((0.1, 0.1, 0.15, 0.4), 0.5), Proposal((0.1, 0.4, 0.15, 0.7), 0.4)]
    assert len(merge_fragments(squares, 600, 100, ON)) == 2
    # the same corners on a 100 x 600 image are 5 x 180 px lines, end to end
    assert len(merge_fragments(squares, 100, 600, ON)) == 1


def test_a_class_aware_detector_merges_only_within_a_class() -> None:
    pieces = [
        Proposal(_px(50, 10, 60, 70), 0.4, "scratches"),
        Proposal(_px(50, 70, 60, 130), 0.5, "crazing"),
    ]
    assert len(merge_fragments(pieces, 200, 200, ON)) == 2
    same = [replace(p, class_name="scratches") for p in pieces]
    assert [p.class_name for p in merge_fragments(same, 200, 200, ON)] == ["scratches"]


def test_settings_validate_and_a_bad_size_names_itself() -> None:
    with pytest.raises(ValueError, match="min_aspect"):
        FragmentMergeSettings(min_aspect=0.5)
    with pytest.raises(ValueError, match="extra"):
        FragmentMergeSettings.model_validate({"enabled": True, "aspect": 3})
    pieces = [Proposal(_px(50, 10, 60, 70), 0.4), Proposal(_px(50, 70, 60, 130), 0.5)]
    with pytest.raises(ValueError, match="0 x 200"):
        merge_fragments(pieces, 0, 200, ON)


def test_merging_fragments_raises_box_recall_and_precision_as_chapter_04_counts() -> None:
    # truth: one 10 x 180 px scratch; the detector found it as three 60 px fragments, none of
    # which reaches IoU 0.5 with it (recall 0, precision 0); merged, the box matches (1 and 1)
    truth = pd.DataFrame(
        [
            {
                "image_id": "0007",
                "class_name": "scratches",
                **dict(zip(["x1", "y1", "x2", "y2"], _px(50, 10, 60, 190), strict=True)),
            }
        ]
    )
    pieces = [
        Proposal(_px(50, 10, 60, 70), 0.4),
        Proposal(_px(50, 70, 60, 130), 0.7),
        Proposal(_px(50, 130, 60, 190), 0.3),
    ]

    def as_frame(found: list[Proposal], strategy: str) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "image_id": "0007",
                    "class_name": "scratches",
                    "strategy": strategy,
                    "x1": p.box[0],
                    "y1": p.box[1],
                    "x2": p.box[2],
                    "y2": p.box[3],
                    "confidence": p.score,
                }
                for p in found
            ]
        )

    boxes = pd.concat(
        [as_frame(pieces, "fragments"), as_frame(merge_fragments(pieces, 200, 200, ON), "merged")]
    )
    table = box_quality(truth, boxes, ["0007"], ["scratches"]).set_index(["strategy", "class_name"])
    assert table.loc[("fragments", "all"), ["recall_aware", "precision_aware"]].tolist() == [0, 0]
    assert table.loc[("merged", "all"), ["recall_aware", "precision_aware"]].tolist() == [1, 1]
    assert table.loc[("merged", "all"), "matched_iou_aware"] == pytest.approx(1.0)


def test_the_profile_turns_it_on_for_proposals_and_off_for_crops(tmp_path: Path) -> None:
    profile = load_config("quick").profile
    settings = SeedDetectorSettings.for_profile(profile)
    assert settings.fragment_merge == profile.annotation.fragment_merge == ON
    assert settings.describe()["fragment_merge"]["min_aspect"] == 3.0
    off = load_config("quick", overrides={"annotation": {"fragment_merge": {"enabled": False}}})
    assert SeedDetectorSettings.for_profile(off.profile).fragment_merge is None
    assert "fragment_merge" not in SeedDetectorSettings.for_profile(off.profile).describe()
    # the crop verifier and the defect gate judge every proposal as the detector saw it
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    detector = SeedDetector.from_trained(weights, settings, progress=False)
    low = low_score_proposer(detector, profile.annotation.crop_verifier, progress=False)
    assert low.settings.fragment_merge is None and detector.settings.fragment_merge == ON


def test_fused_views_come_best_first_and_keep_from_the_minimum_score() -> None:
    """Two views: a box both saw (0.2 and 0.4, mean 0.3), a box one saw at 0.5 (0.25 over two
    views), a box one saw at 0.08 (0.04, under 0.05); corners a rounding error put past 1 are
    clipped before fusion."""
    both, strong, weak = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 1.0000001, 0.9), (0.4, 0.0, 0.5, 0.1)
    views = [
        [Proposal(weak, 0.08), Proposal(both, 0.2), Proposal(strong, 0.5)],
        [Proposal(both, 0.4)],
    ]
    fused = fuse_views(views, min_score=0.05)
    assert [p.score for p in fused] == pytest.approx([0.3, 0.25])
    assert fused[0].box == pytest.approx(both) and fused[1].box == pytest.approx(
        (0.6, 0.6, 1.0, 0.9)
    )
    assert [p.score for p in fuse_views(views)] == pytest.approx([0.3, 0.25, 0.04])


def test_several_detectors_fuse_box_by_box_and_one_is_kept_as_it_is() -> None:
    """Two detectors: on image a both see the crack (scores 0.8 and 0.4, fused 0.6 with the
    corners averaged) and one alone sees a scratch at 0.3 (fused 0.15, under the 0.2 floor, so
    dropped); on image b only the second proposes (0.5 -> 0.25). One detector's boxes come
    back unchanged, floor or not."""
    first = {
        "a": [
            Proposal((0.1, 0.1, 0.3, 0.3), 0.8, "crack"),
            Proposal((0.6, 0.6, 0.9, 0.9), 0.3, "scratches"),
        ],
        "b": [],
    }
    second = {
        "a": [Proposal((0.1, 0.1, 0.35, 0.3), 0.4, "crack")],
        "b": [Proposal((0.2, 0.2, 0.4, 0.4), 0.5, "crack")],
    }
    fused = fuse_detectors([first, second], min_score=0.2)
    assert set(fused) == {"a", "b"}
    (crack,) = fused["a"]
    assert crack.class_name == "crack" and crack.score == pytest.approx(0.6)
    # Weighted boxes fusion weighs the corners by score: x2 = (0.3 * 0.8 + 0.35 * 0.4) / 1.2.
    np.testing.assert_allclose(crack.box, [0.1, 0.1, (0.24 + 0.14) / 1.2, 0.3], atol=1e-6)
    (alone,) = fused["b"]
    assert alone.score == pytest.approx(0.25)
    np.testing.assert_allclose(alone.box, [0.2, 0.2, 0.4, 0.4], atol=1e-6)
    assert fuse_detectors([first], min_score=0.5) == first

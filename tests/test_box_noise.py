"""Box noise: each kind spoils boxes at the rate asked, inside the image, repeatably, and trains."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.metrics.box_quality import pixel_box_quality
from cascade_defect.metrics.detection import box_iou
from cascade_defect.plots.box_noise import quality_needed
from cascade_defect.settings import load_config
from cascade_defect.train.box_mistakes import (
    box_gaps,
    find_false_positives,
    find_fragments,
    jitter_box,
    place_fragment,
)
from cascade_defect.train.box_noise import (
    PIXEL_COLUMNS,
    BoxNoise,
    BoxNoiseMix,
    box_noise_source,
    degrade_boxes,
    mix_text,
    parse_box_noise,
    yolo_labels,
)
from cascade_defect.train.sources import (
    HUMAN,
    SplitInputs,
    build_source,
    holdout_ids,
    read_pool_truth,
    read_split_inputs,
    write_source_dataset,
)
from tests.synthetic import make_neu_like

ROOT = Path(__file__).resolve().parents[1]
SIZE = 200.0


def random_boxes(n_images: int, seed: int = 0, per_image: tuple[int, int] = (1, 4)) -> pd.DataFrame:
    """A ground-truth box table of ``n_images`` 200x200 images, VOC flags included."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        for k in range(int(rng.integers(*per_image))):
            x1, y1 = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 50, 2)
            rows.append(
                {
                    "image_id": f"img{i:04d}",
                    "class_name": ("crazing", "patches")[k % 2],
                    "xmin": x1,
                    "ymin": y1,
                    "xmax": x1 + w,
                    "ymax": y1 + h,
                    "truncated": False,
                    "difficult": False,
                }
            )
    return pd.DataFrame(rows)


def sizes_of(n_images: int, size: float = SIZE) -> pd.DataFrame:
    ids = [f"img{i:04d}" for i in range(n_images)]
    return pd.DataFrame({"image_id": ids, "width": size, "height": size})


def box(image_id: str, class_name: str, x1: float, y1: float, x2: float, y2: float) -> dict:
    corners = dict(zip(PIXEL_COLUMNS, map(float, (x1, y1, x2, y2)), strict=True))
    return {"image_id": image_id, "class_name": class_name, **corners}


def inside(frame: pd.DataFrame, width: float = SIZE, height: float = SIZE) -> bool:
    return bool(
        (frame["xmin"] >= 0).all()
        and (frame["ymin"] >= 0).all()
        and (frame["xmax"] <= width).all()
        and (frame["ymax"] <= height).all()
        and (frame["xmax"] > frame["xmin"]).all()
        and (frame["ymax"] > frame["ymin"]).all()
    )


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "drop", "level": 1.5},
        {"kind": "drop", "level": -0.1},
        {"kind": "false_boxes", "level": -1},
        {"kind": "false_boxes", "level": 500},
        {"kind": "jitter", "level": 0.0},
        {"kind": "jitter", "level": 1.2},
        {"kind": "merge", "level": -0.05},
        {"kind": "drop", "level": float("nan")},
        {"kind": "blur", "level": 0.2},
        {"kind": "drop", "level": 0.2, "rate": 0.2},
    ],
)
def test_bad_kinds_levels_and_fields_are_refused(payload: dict) -> None:
    with pytest.raises(ValidationError):
        BoxNoise.model_validate(payload)


def test_levels_parse_from_text_and_name_their_source() -> None:
    noise = BoxNoise.from_text("jitter=0.7", seed=3)
    assert (noise.kind, noise.level, noise.seed) == ("jitter", 0.7, 3)
    assert noise.source == "box_jitter_0.7"
    assert BoxNoise.from_text("false_boxes=1").source == "box_false_boxes_1"
    assert "IoU 0.7" in noise.describe()
    with pytest.raises(ValueError, match="KIND=LEVEL"):
        BoxNoise.from_text("jitter 0.7")
    with pytest.raises(ValidationError):
        BoxNoise.from_text("jitter=2")


# --------------------------------------------------------------------------- drop


def test_drop_removes_the_share_asked_and_leaves_the_rest_untouched() -> None:
    truth = random_boxes(800)
    spoiled = degrade_boxes(truth, BoxNoise(kind="drop", level=0.3), image_sizes=sizes_of(800))
    assert len(spoiled) == len(truth) - round(0.3 * len(truth))
    assert list(spoiled.columns) == list(truth.columns)
    kept = spoiled.merge(truth, how="left", indicator=True)
    assert (kept["_merge"] == "both").all()  # every kept box is an original, unchanged
    quality = pixel_box_quality(truth, spoiled)
    assert quality["box_precision"] == 1.0
    assert abs(quality["box_recall"] - 0.7) < 0.01
    assert degrade_boxes(truth, BoxNoise(kind="drop", level=0.0), image_sizes=sizes_of(800)).equals(
        truth.sort_values("image_id", kind="stable").reset_index(drop=True)
    )


# --------------------------------------------------------------------------- false boxes


def test_false_boxes_are_poisson_with_the_mean_asked_and_copied_from_the_real_pool() -> None:
    n_images = 3000
    truth = pd.DataFrame([box(f"img{i:04d}", "crazing", 150, 150, 190, 190) for i in range(1500)])
    pool = pd.DataFrame(
        {
            "class_name": ["scratches", "inclusion"],
            "x1": [0.0, 0.05],
            "y1": [0.0, 0.4],
            "x2": [0.1, 0.3],
            "y2": [0.2, 0.5],
        }
    )
    noise = BoxNoise(kind="false_boxes", level=1.5, seed=7)
    spoiled = degrade_boxes(
        truth, noise, false_positive_pool=pool, image_sizes=sizes_of(n_images, 400)
    )
    added = spoiled.merge(truth, how="left", indicator=True)
    added = added[added["_merge"] == "left_only"]
    per_image = (
        added.groupby("image_id").size().reindex(sizes_of(n_images)["image_id"], fill_value=0)
    )
    assert abs(per_image.mean() - 1.5) < 0.1  # standard error 0.022
    assert abs(per_image.var() - 1.5) < 0.25  # Poisson: variance equals the mean
    corners = added[PIXEL_COLUMNS].to_numpy() / 400.0
    expected = pool[["x1", "y1", "x2", "y2"]].to_numpy()
    assert all(np.isclose(expected, row).all(axis=1).any() for row in corners)
    with_truth = added["image_id"].isin(set(truth["image_id"]))
    assert (added.loc[with_truth, "class_name"] == "crazing").all()  # the image's class
    assert set(added.loc[~with_truth, "class_name"]) <= {"scratches", "inclusion"}
    quality = pixel_box_quality(truth, spoiled)
    assert quality["box_recall"] == 1.0
    assert quality["box_precision"] == pytest.approx(len(truth) / len(spoiled))


def test_random_false_boxes_take_the_truths_sizes_and_stay_inside() -> None:
    truth = pd.DataFrame(
        [
            box(f"img{i:04d}", "patches", 10, 10, 10 + w, 10 + h)
            for i, (w, h) in enumerate([(20, 40), (60, 30)] * 100)
        ]
    )
    spoiled = degrade_boxes(
        truth, BoxNoise(kind="false_boxes", level=2, seed=1), image_sizes=sizes_of(200)
    )
    added = spoiled.merge(truth, how="left", indicator=True)
    added = added[added["_merge"] == "left_only"]
    assert len(added) > 300 and inside(added)
    widths, heights = (added["xmax"] - added["xmin"]), (added["ymax"] - added["ymin"])
    shapes = set(zip(widths.round(6), heights.round(6), strict=True))
    assert shapes <= {(20.0, 40.0), (60.0, 30.0)}
    for image_id, group in added.groupby("image_id"):
        gt = truth[truth["image_id"] == image_id][PIXEL_COLUMNS].to_numpy(float)
        assert (box_iou(group[PIXEL_COLUMNS].to_numpy(float), gt) < 0.5).all()


def test_false_positives_are_the_boxes_around_no_defect() -> None:
    truth = pd.DataFrame(
        {
            "image_id": ["a"],
            "class_name": ["crazing"],
            "x1": [0.1],
            "y1": [0.1],
            "x2": [0.4],
            "y2": [0.4],
        }
    )
    candidates = pd.DataFrame(
        {
            "image_id": ["a", "a", "a", "b"],
            "class_name": ["crazing"] * 4,
            "x1": [0.12, 0.6, 0.0, 0.1],
            "y1": [0.1, 0.6, 0.0, 0.1],
            "x2": [0.42, 0.9, 1.0, 0.4],
            "y2": [0.4, 0.9, 1.0, 0.4],
            "confidence": [0.9, 0.8, 0.1, 0.7],
        }
    )
    found = find_false_positives(candidates, truth)
    assert list(found["x1"]) == [0.6, 0.1]  # the hit and the whole-image fallback are left out
    assert list(found.columns) == ["image_id", "class_name", "x1", "y1", "x2", "y2"]


# --------------------------------------------------------------------------- jitter


def test_fragments_are_the_partial_boxes_kept_relative_to_their_truth_box() -> None:
    truth = pd.DataFrame(
        [
            {"image_id": "a", "class_name": "patches", "x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.5},
            {"image_id": "b", "class_name": "patches", "x1": 0.0, "y1": 0.0, "x2": 0.2, "y2": 0.4},
        ]
    )
    candidates = pd.DataFrame(
        [
            # left 3/8 of a's box: IoU 0.06 / 0.16 = 0.375, a fragment
            {"image_id": "a", "class_name": "patches", "x1": 0.1, "y1": 0.1, "x2": 0.25, "y2": 0.5},
            # a's box exactly: found, not a fragment
            {"image_id": "a", "class_name": "patches", "x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.5},
            # far from a's box: a false positive, not a fragment
            {"image_id": "a", "class_name": "patches", "x1": 0.8, "y1": 0.8, "x2": 0.9, "y2": 0.9},
            # b's box grown to twice its width and height: IoU 0.25, a fragment
            {
                "image_id": "b",
                "class_name": "scratches",
                "x1": 0.0,
                "y1": 0.0,
                "x2": 0.4,
                "y2": 0.8,
            },
            # an image without truth boxes has no fragments
            {"image_id": "c", "class_name": "patches", "x1": 0.1, "y1": 0.1, "x2": 0.2, "y2": 0.2},
            # the whole-image fallback is left out
            {"image_id": "a", "class_name": "patches", "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0},
        ]
    )
    found = find_fragments(candidates, truth)
    assert list(found["image_id"]) == ["a", "b"]
    assert found["iou"].tolist() == pytest.approx([0.375, 0.25])
    assert found[["rx1", "ry1", "rx2", "ry2"]].to_numpy() == pytest.approx(
        np.array([[0.0, 0.0, 0.375, 1.0], [0.0, 0.0, 2.0, 2.0]])
    )
    # false positives match no truth box: fragments among them, keeping their place in the image
    assert list(find_false_positives(candidates, truth)["image_id"]) == ["a", "a", "b", "c"]
    # placed back on the box it was taken from, a fragment is the candidate again
    placed = place_fragment(
        found.loc[0, ["rx1", "ry1", "rx2", "ry2"]].to_numpy(float), [10, 10, 50, 50]
    )
    assert placed == pytest.approx([10, 10, 25, 50])


@pytest.mark.parametrize("real", [True, False], ids=["real", "random"])
def test_fragments_are_poisson_per_truth_box_overlap_it_and_find_nothing(real: bool) -> None:
    n_images = 1500
    truth = pd.DataFrame(
        [box(f"img{i:04d}", "scratches", 100, 100, 140, 300) for i in range(n_images)]
    )
    pool = pd.DataFrame(
        {"rx1": [0.0, -0.2], "ry1": [0.0, 0.5], "rx2": [1.0, 0.8], "ry2": [0.4, 1.3]}
    )
    noise = BoxNoise(kind="fragments", level=2.0, seed=3)
    spoiled = degrade_boxes(
        truth, noise, fragment_pool=pool if real else None, image_sizes=sizes_of(n_images, 400)
    )
    marked = spoiled.merge(truth, how="left", indicator=True)
    added = marked[marked["_merge"] == "left_only"].drop(columns="_merge")
    assert (marked["_merge"] == "both").sum() == len(truth)  # every truth box stays, untouched
    per_box = added.groupby("image_id").size().reindex(truth["image_id"], fill_value=0)
    assert abs(per_box.mean() - 2.0) < 0.12  # standard error 0.037
    assert abs(per_box.var() - 2.0) < 0.3  # Poisson: variance equals the mean
    assert (added["class_name"] == "scratches").all()  # the truth box's class
    iou = box_iou(added[PIXEL_COLUMNS].to_numpy(float), np.array([[100.0, 100, 140, 300]]))[:, 0]
    assert (iou > 0.05).all() and (iou < 0.5).all()  # overlaps its defect, finds nothing
    if real:  # each is one of the pool's two shapes placed on the 40 x 200 px truth box
        shapes = np.array([[100, 100, 140, 180], [92, 200, 132, 360]], dtype=float)
        corners = added[PIXEL_COLUMNS].to_numpy(float)
        assert all(np.isclose(shapes, row).all(axis=1).any() for row in corners)
    quality = pixel_box_quality(truth, spoiled)
    assert quality["box_recall"] == 1.0
    assert quality["box_precision"] == pytest.approx(len(truth) / len(spoiled))
    assert quality["box_precision"] == pytest.approx(1 / 3, abs=0.02)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_jitter_gives_each_box_the_target_iou_with_its_original(target: float) -> None:
    truth = random_boxes(300, seed=2)
    edge_and_large = pd.DataFrame(
        [
            box("img0000", "crazing", 0, 0, 30, 30),
            box("img0001", "crazing", 170, 160, 200, 200),
            box("img0002", "patches", 5, 5, 195, 195),  # most of the image: growing cannot help
        ]
    )
    truth = pd.concat([truth, edge_and_large], ignore_index=True)
    noise = BoxNoise(kind="jitter", level=target, seed=5)
    spoiled = degrade_boxes(truth, noise, image_sizes=sizes_of(300))
    original = truth.sort_values("image_id", kind="stable").reset_index(drop=True)
    assert len(spoiled) == len(original) and inside(spoiled)
    pairs = np.diag(
        box_iou(original[PIXEL_COLUMNS].to_numpy(float), spoiled[PIXEL_COLUMNS].to_numpy(float))
    )
    assert np.abs(pairs - target).max() < 1e-3
    assert (pairs >= target).all()  # never below: a box jittered to 0.5 is still found at 0.5
    moved = ~np.isclose(original[PIXEL_COLUMNS].to_numpy(), spoiled[PIXEL_COLUMNS].to_numpy())
    assert moved.any(axis=1).all()
    quality = pixel_box_quality(original, spoiled)
    assert abs(quality["mean_iou"] - target) < 0.03
    assert quality["box_recall"] == 1.0  # each original still has its own box at IoU 0.5


def test_jitter_of_a_box_filling_the_image_shrinks_it_to_the_target() -> None:
    rng = np.random.default_rng(0)
    full = np.array([0.0, 0.0, 100.0, 100.0])
    moved = jitter_box(full, 0.64, rng, 100.0, 100.0)
    assert box_iou(full[None], moved[None])[0, 0] == pytest.approx(0.64, abs=1e-3)
    assert (moved >= 0).all() and (moved <= 100).all()


# --------------------------------------------------------------------------- merge


def test_merge_joins_the_constructed_neighbours_and_nothing_else() -> None:
    truth = pd.DataFrame(
        [
            box("m", "crazing", 10, 10, 30, 30),  # A
            box("m", "crazing", 36, 12, 50, 28),  # B: 6 px (0.03) right of A
            box("m", "crazing", 54, 10, 70, 30),  # E: 4 px right of B, 24 px from A
            box("m", "crazing", 120, 120, 150, 150),  # far from all: stays
            box("m", "patches", 31, 10, 35, 30),  # between A and B, but another class
            box("n", "crazing", 10, 10, 30, 30),  # another image
            box("n", "crazing", 100, 10, 120, 30),  # 70 px (0.35) away: stays
        ]
    )
    noise = BoxNoise(kind="merge", level=0.05)
    spoiled = degrade_boxes(
        truth,
        noise,
        image_sizes=pd.DataFrame(
            {"image_id": ["m", "n"], "width": [200, 200], "height": [200, 200]}
        ),
    )
    got = {
        (r.image_id, r.class_name, r.xmin, r.ymin, r.xmax, r.ymax)
        for r in spoiled.itertuples(index=False)
    }
    assert got == {
        ("m", "crazing", 10, 10, 70, 30),  # A, B and E (E through B)
        ("m", "crazing", 120, 120, 150, 150),
        ("m", "patches", 31, 10, 35, 30),
        ("n", "crazing", 10, 10, 30, 30),
        ("n", "crazing", 100, 10, 120, 30),
    }
    quality = pixel_box_quality(truth, spoiled)
    assert quality["box_recall"] == pytest.approx(4 / 7)


def test_merge_repeats_until_an_enclosing_box_reaches_no_other_box() -> None:
    truth = pd.DataFrame(
        [
            box("m", "rolled-in_scale", 10, 10, 40, 20),
            box("m", "rolled-in_scale", 10, 22, 20, 60),  # touches the first within 2 px
            box("m", "rolled-in_scale", 30, 50, 50, 70),  # 10 px right of the second, 30 px
            # below the first, but inside reach of their enclosing box (10..40 x 10..60)
        ]
    )
    sizes = pd.DataFrame({"image_id": ["m"], "width": [200], "height": [200]})
    assert box_gaps(truth[PIXEL_COLUMNS].to_numpy(float), 200, 200)[1, 2] > 0.02
    spoiled = degrade_boxes(truth, BoxNoise(kind="merge", level=0.02), image_sizes=sizes)
    assert spoiled[PIXEL_COLUMNS].to_numpy().tolist() == [[10, 10, 50, 70]]
    untouched = degrade_boxes(truth, BoxNoise(kind="merge", level=0.0), image_sizes=sizes)
    assert len(untouched) == 3  # at level 0 only touching or overlapping boxes merge


@pytest.mark.parametrize("real", [True, False], ids=["real", "random"])
def test_replace_swaps_the_share_asked_for_a_fragment_of_each_box(real: bool) -> None:
    n_images = 400
    truth = pd.DataFrame(
        [box(f"img{i:04d}", "inclusion", 100, 100, 140, 300) for i in range(n_images)]
    )
    pool = pd.DataFrame({"rx1": [0.0], "ry1": [0.0], "rx2": [1.0], "ry2": [0.4]})
    spoiled = degrade_boxes(
        truth,
        BoxNoise(kind="replace", level=0.25, seed=5),
        fragment_pool=pool if real else None,
        image_sizes=sizes_of(n_images, 400),
    )
    assert len(spoiled) == n_images and (spoiled["class_name"] == "inclusion").all()
    iou = box_iou(spoiled[PIXEL_COLUMNS].to_numpy(float), np.array([[100.0, 100, 140, 300]]))[:, 0]
    assert np.isclose(iou, 1.0).sum() == 300  # round(0.25 * 400) replaced, no more
    moved = iou[iou < 0.999]
    assert len(moved) == 100 and (moved > 0.05).all() and (moved < 0.5).all()
    if real:  # the pool's one shape on the 40 x 200 px box: its top 40%, IoU 0.4
        assert moved == pytest.approx(0.4)
    quality = pixel_box_quality(truth, spoiled)
    assert quality["box_recall"] == pytest.approx(0.75)
    assert quality["box_precision"] == pytest.approx(0.75)


def test_a_mix_parses_names_itself_and_refuses_a_kind_twice() -> None:
    mix = parse_box_noise("drop=0.4 + jitter=0.7+fragments=1.8", seed=3)
    assert isinstance(mix, BoxNoiseMix)
    assert [(s.kind, s.level, s.seed) for s in mix.steps] == [
        ("drop", 0.4, 3),
        ("jitter", 0.7, 4),
        ("fragments", 1.8, 5),
    ]
    assert mix.source == "box_mix_drop0.4_jitter0.7_fragments1.8"
    # the table keeps only the source name; it reads back to the same mix, underscores and all
    odd = parse_box_noise("false_boxes=1.2+replace=0.25+jitter=0.7")
    assert mix_text(odd.source) == "false_boxes=1.2+replace=0.25+jitter=0.7"
    assert parse_box_noise(mix_text(odd.source)) == odd
    assert mix_text("box_jitter_0.7") == ""
    assert (mix.kind, mix.seed) == ("mix", 3) and np.isnan(mix.level)
    assert "40% of boxes dropped; every box moved to IoU 0.7" in mix.describe()
    assert parse_box_noise("jitter=0.7") == BoxNoise(kind="jitter", level=0.7)
    with pytest.raises(ValidationError, match="each kind once"):
        parse_box_noise("drop=0.1+drop=0.2")
    with pytest.raises(ValidationError):
        BoxNoiseMix(steps=(BoxNoise(kind="drop", level=0.1),))


def test_a_mix_spoils_the_truth_in_turn_and_adds_around_the_original_boxes() -> None:
    n_images = 1000
    truth = pd.DataFrame([box(f"img{i:04d}", "patches", 50, 50, 150, 150) for i in range(n_images)])
    sizes = sizes_of(n_images, 400)
    # every truth box dropped, yet fragments are still drawn around each of them
    gone = degrade_boxes(truth, parse_box_noise("drop=1+fragments=2"), image_sizes=sizes)
    assert abs(len(gone) / n_images - 2.0) < 0.15  # Poisson(2) per original box
    assert pixel_box_quality(truth, gone)["box_recall"] == 0.0
    mixed = degrade_boxes(
        truth, parse_box_noise("drop=0.5+jitter=0.7+fragments=1", seed=2), image_sizes=sizes
    )
    iou = box_iou(mixed[PIXEL_COLUMNS].to_numpy(float), np.array([[50.0, 50, 150, 150]]))[:, 0]
    kept = np.isclose(iou, 0.7, atol=1e-6)
    assert kept.sum() == 500  # half dropped, the rest each at IoU 0.7
    fragments = iou[~kept]
    assert abs(len(fragments) / n_images - 1.0) < 0.1 and (fragments < 0.5).all()


# --------------------------------------------------------------------------- every kind


ALL_KINDS = [
    BoxNoise(kind="drop", level=0.4, seed=1),
    BoxNoise(kind="false_boxes", level=2, seed=1),
    BoxNoise(kind="fragments", level=1.5, seed=1),
    BoxNoise(kind="jitter", level=0.5, seed=1),
    BoxNoise(kind="merge", level=0.1, seed=1),
    BoxNoise(kind="replace", level=0.5, seed=1),
    parse_box_noise("drop=0.3+jitter=0.7+fragments=1+false_boxes=1", seed=1),
]


@pytest.mark.parametrize("noise", ALL_KINDS, ids=lambda n: n.source)
def test_boxes_are_clipped_to_their_image_and_outside_ones_removed(noise: BoxNoise) -> None:
    truth = pd.concat(
        [
            random_boxes(50, seed=4),
            pd.DataFrame(
                [
                    box("img0000", "crazing", -20, -5, 40, 30),  # sticks out
                    box("img0001", "crazing", 180, 190, 230, 260),  # sticks out
                    box("img0002", "crazing", 250, 250, 300, 300),  # wholly outside
                ]
            ),
        ],
        ignore_index=True,
    )
    spoiled = degrade_boxes(truth, noise, image_sizes=sizes_of(50))
    assert inside(spoiled)


def test_sizes_can_come_from_the_box_table_and_must_be_known() -> None:
    truth = random_boxes(20).assign(width=SIZE, height=SIZE)
    spoiled = degrade_boxes(truth, BoxNoise(kind="false_boxes", level=1))
    assert inside(spoiled) and spoiled["width"].eq(SIZE).all()
    with pytest.raises(ValueError, match="width and height"):
        degrade_boxes(random_boxes(5), BoxNoise(kind="jitter", level=0.5))
    with pytest.raises(ValueError, match="fragment_pool lacks"):
        degrade_boxes(
            random_boxes(5),
            BoxNoise(kind="fragments", level=1),
            fragment_pool=pd.DataFrame({"x1": [0.1]}),
            image_sizes=sizes_of(5),
        )
    with pytest.raises(ValueError, match="no known size"):
        degrade_boxes(random_boxes(5), BoxNoise(kind="drop", level=0.5), image_sizes=sizes_of(2))


@pytest.mark.parametrize("noise", ALL_KINDS, ids=lambda n: n.source)
def test_the_same_seed_repeats_exactly_and_another_differs(noise: BoxNoise) -> None:
    truth = random_boxes(200, seed=8)
    sizes = sizes_of(200)
    first = degrade_boxes(truth, noise, image_sizes=sizes)
    ids = truth["image_id"].unique()
    rank = dict(zip(ids, np.random.default_rng(3).permutation(len(ids)), strict=True))
    order = np.argsort(truth["image_id"].map(rank).to_numpy(), kind="stable")
    shuffled = truth.iloc[order]  # images in another order, each image's boxes in theirs
    pd.testing.assert_frame_equal(first, degrade_boxes(shuffled, noise, image_sizes=sizes))
    pd.testing.assert_frame_equal(first, degrade_boxes(truth, noise, image_sizes=sizes))
    if isinstance(noise, BoxNoiseMix):
        reseeded = BoxNoiseMix(
            steps=tuple(step.model_copy(update={"seed": step.seed + 1}) for step in noise.steps)
        )
    else:
        reseeded = noise.model_copy(update={"seed": 2})
    other = degrade_boxes(truth, reseeded, image_sizes=sizes)
    if noise.kind == "merge":  # no randomness in merging
        pd.testing.assert_frame_equal(first, other)
    else:
        assert not first.equals(other)


def test_quality_of_the_truth_against_itself_is_perfect() -> None:
    truth = random_boxes(30)
    assert pixel_box_quality(truth, truth) == {
        "n_truth": len(truth),
        "n_boxes": len(truth),
        "box_recall": 1.0,
        "box_precision": 1.0,
        "mean_iou": 1.0,
    }


# --------------------------------------------------------------------------- reading the sweep


def test_quality_needed_interpolates_the_first_fall_below_each_target() -> None:
    table = pd.DataFrame(
        [
            {"kind": HUMAN, "box_recall": 1.0, "box_precision": 1.0, "mean_iou": 1.0, "ratio": 1.0},
            {
                "kind": "drop",
                "box_recall": 0.8,
                "box_precision": 1.0,
                "mean_iou": 0.8,
                "ratio": 0.95,
            },
            {
                "kind": "drop",
                "box_recall": 0.6,
                "box_precision": 1.0,
                "mean_iou": 0.6,
                "ratio": 0.85,
            },
            {
                "kind": "jitter",
                "box_recall": 1.0,
                "box_precision": 1.0,
                "mean_iou": 0.7,
                "ratio": 0.99,
            },
            {
                "kind": "jitter",
                "box_recall": 1.0,
                "box_precision": 1.0,
                "mean_iou": 0.5,
                "ratio": 0.98,
            },
        ]
    )
    needed = quality_needed(table, (0.9, 0.97)).set_index(["kind", "target"])
    assert needed.loc[("drop", 0.9), "quality_needed"] == pytest.approx(0.7)
    assert needed.loc[("drop", 0.97), "quality_needed"] == pytest.approx(0.88)
    assert needed.loc[("drop", 0.9), "axis"] == "box_recall"
    for target in (0.9, 0.97):
        row = needed.loc[("jitter", target)]
        assert row["note"] == "not reached" and math.isnan(row["quality_needed"])
        assert row["lowest_tried"] == 0.5
    with pytest.raises(ValueError, match="human"):
        quality_needed(table[table["kind"] != HUMAN])


# --------------------------------------------------------------------------- as a label source


@pytest.fixture(scope="module")
def split_config(tmp_path_factory: pytest.TempPathFactory):
    """A generated NEU-like dataset split by chapters 01-02 under the smoke profile."""
    root = tmp_path_factory.mktemp("box_noise_split")
    data = make_neu_like(root / "neu", per_class=8, size=64)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    return config


def split_pieces(
    config,
) -> tuple[SplitLayout, SplitInputs, frozenset[str], pd.DataFrame, pd.DataFrame]:
    """What box_noise_source takes from a split: layout, inputs, hold-out, pool listing, boxes."""
    layout = SplitLayout(config.paths.split_dir)
    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], 0.2, 0)
    _, truth_boxes = read_pool_ground_truth(layout)
    return layout, split, holdout, read_pool_listing(layout), truth_boxes


def test_clean_boxes_give_the_human_source_and_noise_spoils_only_the_pool(
    split_config, tmp_path: Path
) -> None:
    layout, split, holdout, pool, truth_boxes = split_pieces(split_config)
    human = build_source(
        HUMAN, split, holdout=holdout, truth=read_pool_truth(layout, split.class_names)
    )
    clean, _ = box_noise_source(
        BoxNoise(kind="drop", level=0.0), split, truth_boxes, pool, holdout=holdout
    )
    pd.testing.assert_frame_equal(clean.images, human.images)
    key = ["image_id", "class_id"]
    left = clean.labels.sort_values(key).reset_index(drop=True)
    right = human.labels.sort_values(key).reset_index(drop=True)
    assert left[key].equals(right[key])
    assert np.allclose(left[["cx", "cy", "w", "h"]], right[["cx", "cy", "w", "h"]], atol=1e-6)

    dropped, degraded = box_noise_source(
        BoxNoise(kind="drop", level=0.5), split, truth_boxes, pool, holdout=holdout
    )
    assert dropped.source == "box_drop_0.5"
    pd.testing.assert_frame_equal(dropped.images, human.images)  # every image stays
    seed_ids = set(split.seeds["image_id"])
    assert dropped.labels[dropped.labels["image_id"].isin(seed_ids)].equals(
        human.labels[human.labels["image_id"].isin(seed_ids)]
    )
    n_pool = int((~human.labels["image_id"].isin(seed_ids)).sum())
    assert int((~dropped.labels["image_id"].isin(seed_ids)).sum()) == n_pool - round(n_pool / 2)
    assert len(degraded) == n_pool - round(n_pool / 2)
    data_yaml = write_source_dataset(dropped, tmp_path / "ds", split.class_names)
    label_files = list((data_yaml.parent / "labels").rglob("*.txt"))
    assert len(label_files) == len(human.images)
    assert sum(1 for f in label_files if not f.read_text().strip()) == round(n_pool / 2)
    assert yolo_labels(truth_boxes, pool, ["crazing"])["class_id"].eq(0).all()


def test_miss_leaves_out_the_images_it_empties_where_drop_trains_them_as_background(
    split_config,
) -> None:
    _, split, holdout, pool, truth_boxes = split_pieces(split_config)
    ids = sorted(truth_boxes["image_id"].astype(str).unique())
    free_id, twice = ids[0], ids[1:9]  # a defect-free image; images with a second box
    boxes = truth_boxes[truth_boxes["image_id"].astype(str) != free_id]
    boxes = pd.concat([boxes, boxes[boxes["image_id"].astype(str).isin(twice)]], ignore_index=True)

    missed, degraded = box_noise_source(
        BoxNoise(kind="miss", level=0.5), split, boxes, pool, holdout=holdout
    )
    dropped, dropped_boxes = box_noise_source(
        BoxNoise(kind="drop", level=0.5), split, boxes, pool, holdout=holdout
    )
    pd.testing.assert_frame_equal(degraded, dropped_boxes)  # the same boxes go
    left = degraded["image_id"].astype(str).value_counts()
    emptied = set(boxes["image_id"].astype(str)) - set(left.index)
    partly = {image_id for image_id in twice if left.get(image_id, 0) == 1}
    assert emptied and partly
    assert missed.source == "box_miss_0.5"
    assert set(missed.excluded["image_id"]) == emptied
    assert missed.excluded["reason"].eq("no_boxes").all()
    assert set(missed.images["image_id"]) == set(dropped.images["image_id"]) - emptied
    assert partly <= set(missed.images["image_id"])  # one box left: the image stays
    assert free_id in set(missed.images["image_id"])  # no box to lose: still background
    assert dropped.excluded.empty and emptied <= set(dropped.images["image_id"])
    assert missed.labels.equals(dropped.labels[~dropped.labels["image_id"].isin(emptied)])
    assert "left out" in BoxNoise(kind="miss", level=0.5).describe()


def _script(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_box_noise.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_the_sweep_script_parses_its_options() -> None:
    done = _script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--run-dir", "--noise", "--epochs", "--imgsz", "--csv", "--false-positives"):
        assert option in done.stdout


@pytest.mark.slow
def test_the_sweep_trains_scores_and_resumes_on_a_tiny_run(
    split_config, yolo_weights: Path, tmp_path: Path
) -> None:
    env = {
        "CASCADE_YOLO_WEIGHTS": str(yolo_weights),
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
        "OMP_NUM_THREADS": "1",
    }
    csv = tmp_path / "sweep.csv"
    arguments = (
        "--run-dir",
        str(split_config.paths.run_dir),
        "--noise",
        "drop=0.5",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--csv",
        str(csv),
    )
    first = _script(*arguments, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "human anchor included" in first.stdout
    assert "run chapter 03" in first.stdout  # no chapter 03 here: random false boxes
    table = pd.read_csv(csv)
    assert list(table["source"]) == ["human", "box_drop_0.5"]
    assert table.loc[0, "ratio"] == 1.0 or math.isnan(table.loc[0, "ratio"])
    assert table.loc[1, "box_recall"] == pytest.approx(0.5, abs=0.05)
    assert (table["epochs"] == 1).all() and (table["imgsz"] == 64).all()
    second = _script(*arguments, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped") == 2
    pd.testing.assert_frame_equal(pd.read_csv(csv), table)

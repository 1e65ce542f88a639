"""Synthetic training tiles for the seed detector, on tiny generated tiles with known defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from cascade_defect.annotate.strategies import seed_training_set, synthetic_plan
from cascade_defect.annotate.synthetic_defects import defect_pieces, synthesise_defects
from cascade_defect.box_settings import SyntheticDefectSettings
from cascade_defect.settings import AnnotationSettings

BACKGROUND = 150
DEFECT = 40


def _save(path: Path, pixels: np.ndarray) -> str:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def seeds_with_one_defect(
    tmp_path: Path, *, mask: bool = False, rgb_defect: bool = False, mask_value: int = 255
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two flat defect-free tiles (120x80 and 90x140) and one defect tile whose dark 12x6 bar
    sits at the left edge (x 0-12, y 30-36); with ``mask`` only the bar's top row is masked."""
    rows = []
    for name, shape in (("clean_a", (80, 120)), ("clean_b", (140, 90))):
        rows.append(
            {
                "image_id": name,
                "path": _save(tmp_path / f"{name}.png", np.full(shape, BACKGROUND)),
                "class_name": "no_defect",
            }
        )
    defect = np.full((80, 100), BACKGROUND)
    defect[30:36, 0:12] = DEFECT
    if rgb_defect:
        defect = np.repeat(defect[..., None], 3, axis=2)
    row = {"image_id": "007", "path": _save(tmp_path / "007.png", defect), "class_name": "bar"}
    if mask:
        painted = np.zeros((80, 100))
        painted[30, 0:12] = mask_value
        row["mask_path"] = _save(tmp_path / "007_mask.png", painted)
    rows.append(row)
    boxes = pd.DataFrame(
        [{"image_id": "007", "class_name": "bar", "xmin": 0, "ymin": 30, "xmax": 12, "ymax": 36}]
    )
    return pd.DataFrame(rows), boxes


def test_each_tile_carries_the_pasted_defect_inside_its_box(tmp_path: Path) -> None:
    seeds, boxes = seeds_with_one_defect(tmp_path)
    images, pasted = synthesise_defects(seeds, boxes, 20, tmp_path / "out", seed=3)

    assert len(images) == 20 and len(pasted) == 20  # one piece: one defect per tile
    assert set(pasted["class_name"]) == {"bar"}
    assert set(images["image_id"]) == set(pasted["image_id"])
    by_image = pasted.set_index("image_id").loc[images["image_id"]]
    for image, box in zip(images.itertuples(), by_image.itertuples(), strict=True):
        pixels = np.asarray(Image.open(image.path), dtype=float)
        assert pixels.shape == (image.height, image.width)
        assert (box.xmax - box.xmin, box.ymax - box.ymin) == (12, 6)
        assert box.xmin >= 0 and box.xmax <= image.width and box.ymax <= image.height
        inside = pixels[box.ymin : box.ymax, box.xmin : box.xmax]
        assert inside.mean() < BACKGROUND - 60, "the bar's darkness travels with it"
        outside = np.ones_like(pixels, dtype=bool)
        outside[max(box.ymin - 6, 0) : box.ymax + 6, max(box.xmin - 6, 0) : box.xmax + 6] = False
        assert np.abs(pixels[outside] - BACKGROUND).max() <= 1, "the rest of the tile is kept"
    # The bar sat at the left edge of its tile, and lands near the left edge of each tile.
    assert (
        pasted["xmin"] / images.set_index("image_id").loc[pasted["image_id"], "width"].to_numpy()
    ).mean() < 0.2


def test_same_seed_same_tiles_other_seed_other_places(tmp_path: Path) -> None:
    seeds, boxes = seeds_with_one_defect(tmp_path)
    first = synthesise_defects(seeds, boxes, 6, tmp_path / "a", seed=1)
    again = synthesise_defects(seeds, boxes, 6, tmp_path / "b", seed=1)
    other = synthesise_defects(seeds, boxes, 6, tmp_path / "c", seed=2)
    pd.testing.assert_frame_equal(first[1], again[1])
    for a, b in zip(first[0]["path"], again[0]["path"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    assert not first[1][["xmin", "ymin"]].equals(other[1][["xmin", "ymin"]])


@pytest.mark.parametrize("mask_value", [255, 1])
def test_a_mask_cuts_the_defect_by_its_pixels(tmp_path: Path, mask_value: int) -> None:
    """Only the masked top row of the bar (dilated by 2 px) is pasted: its bottom row, 5 px
    below, keeps the new tile's background. A 0/1 label mask is read as the loader reads it."""
    seeds, boxes = seeds_with_one_defect(tmp_path, mask=True, mask_value=mask_value)
    piece = defect_pieces(seeds, boxes)[0]
    x0, y0, _, y1 = piece.box
    assert piece.alpha[y0, x0 + 6] > 0.5
    assert piece.alpha[y1 - 1, x0 + 6] < 0.05
    images, pasted = synthesise_defects(seeds, boxes, 4, tmp_path / "out", seed=0)
    for image, box in zip(images.itertuples(), pasted.itertuples(), strict=True):
        pixels = np.asarray(Image.open(image.path), dtype=float)
        assert pixels[box.ymin, box.xmin + 6] < BACKGROUND - 60
        assert abs(pixels[box.ymax - 1, box.xmin + 6] - BACKGROUND) <= 8


def test_a_colour_defect_on_grey_tiles(tmp_path: Path) -> None:
    seeds, boxes = seeds_with_one_defect(tmp_path, rgb_defect=True)
    images, pasted = synthesise_defects(seeds, boxes, 3, tmp_path / "out")
    for image, box in zip(images.itertuples(), pasted.itertuples(), strict=True):
        pixels = np.asarray(Image.open(image.path), dtype=float)
        assert pixels.ndim == 2
        assert pixels[box.ymin : box.ymax, box.xmin : box.xmax].mean() < BACKGROUND - 60


def test_refusals_name_what_is_missing(tmp_path: Path) -> None:
    seeds, boxes = seeds_with_one_defect(tmp_path)
    defective_only = seeds[seeds["class_name"] != "no_defect"]
    with pytest.raises(ValueError, match=r"annotation\.synthetic_defects"):
        synthesise_defects(defective_only, boxes, 2, tmp_path / "out")
    stray = boxes.assign(image_id="1001")
    with pytest.raises(ValueError, match="'1001'"):
        synthesise_defects(seeds, stray, 2, tmp_path / "out")
    with pytest.raises(ValueError, match="seed boxes"):
        synthesise_defects(seeds, boxes.iloc[0:0], 2, tmp_path / "out")
    with pytest.raises(ValidationError, match="tiles"):
        AnnotationSettings(synthetic_defects=-1)
    with pytest.raises(ValidationError, match="tiles"):
        AnnotationSettings(synthetic_defects="many")


def test_auto_adds_tiles_only_where_the_seeds_include_defect_free_images(tmp_path: Path) -> None:
    seeds, _ = seeds_with_one_defect(tmp_path)
    defective_only = seeds[seeds["class_name"] != "no_defect"]
    auto = AnnotationSettings().synthetic_defects
    assert (auto.tiles, auto.auto_tiles, auto.epochs) == ("auto", 300, 20)
    assert synthetic_plan(auto, seeds) == (300, {"epochs": 20})
    assert synthetic_plan(auto, defective_only) == (0, {})
    assert synthetic_plan(SyntheticDefectSettings(auto_tiles=7, epochs=3), seeds) == (
        7,
        {"epochs": 3},
    )
    # A bare number (the YAML and --set form) sets the tiles and keeps the other defaults.
    fixed = AnnotationSettings(synthetic_defects=40).synthetic_defects
    assert (fixed.tiles, fixed.epochs) == (40, 20)
    assert synthetic_plan(fixed, defective_only) == (40, {"epochs": 20})
    assert synthetic_plan(SyntheticDefectSettings(tiles=0), seeds) == (0, {})


def test_the_seed_detectors_training_set(tmp_path: Path) -> None:
    seeds, boxes = seeds_with_one_defect(tmp_path)
    same = seed_training_set(seeds, boxes, 0, tmp_path / "det")
    assert same[0] is seeds and same[1] is boxes
    images, all_boxes = seed_training_set(seeds, boxes, 5, tmp_path / "det", seed=0)
    assert len(images) == len(seeds) + 5 and len(all_boxes) == len(boxes) + 5
    assert (tmp_path / "det" / "synthetic" / "synthetic_00004.png").is_file()


@pytest.mark.slow
def test_chapter_03_trains_its_seed_detector_on_synthetic_tiles_of_a_line(
    tmp_path: Path, yolo_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masks in a parallel folder, numbered names, mixed sizes and modes: chapter 03 finds each
    defect seed's mask through chapter 01's index and, with defect-free seeds, adds the smoke
    profile's ``auto`` tiles and trains on its synthetic schedule, once: the defect gate trains
    the detector before the annotator answers, and the box strategy reuses it."""
    from cascade_defect.annotate.boxes import SeedDetector
    from cascade_defect.annotate.store import AnnotationStore
    from cascade_defect.chapters.c01_data import run_data_strategy
    from cascade_defect.chapters.c02_split import run_split
    from cascade_defect.chapters.c03_annotation import run_annotation, seeds_with_mask_paths
    from cascade_defect.data.split import SplitLayout, read_labelled_listing
    from cascade_defect.settings import load_config
    from tests.synthetic import make_production_like

    data = make_production_like(
        tmp_path / "line", defect_counts={"crack": 8, "blow hole": 6}, n_free=30
    )
    config = load_config(
        "smoke",
        data_dir=data,
        work_dir=tmp_path / "work",
        yolo_weights=str(yolo_weights),
    )
    run_data_strategy(config)
    run_split(config)
    seeds, _ = read_labelled_listing(SplitLayout(config.paths.split_dir), "seed")
    masked = seeds_with_mask_paths(seeds, config)
    defect = masked["class_name"] != "no_defect"
    assert masked.loc[defect, "mask_path"].map(lambda p: Path(p).is_file()).all()
    assert masked.loc[defect, "mask_path"].str.contains("/masks/").all()

    trainings = []
    train = SeedDetector.train

    def counted(self: SeedDetector, *args: object, **kwargs: object) -> object:
        trainings.append((self.work_dir, self.settings.class_aware, args[0]["image_id"].tolist()))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(SeedDetector, "train", counted)
    run_annotation(config, annotator="offline", box_strategies=("seed_detector",), progress=False)
    # One seed detector for the gate and the box strategies, and the gate's class-aware one,
    # trained on the same seeds and synthetic tiles.
    assert [aware for _, aware, _ in trainings] == [False, True]
    assert trainings[0][2] == trainings[1][2]
    assert trainings[1][0] == config.paths.annotation_dir / "class_aware" / "seed_detector"

    detector_dir = config.paths.annotation_dir / "seed_detector"
    tiles = sorted((detector_dir / "synthetic").glob("synthetic_*.png"))
    assert len(tiles) == config.profile.annotation.synthetic_defects.auto_tiles == 6
    summary = json.loads((config.paths.annotation_dir / "summary.json").read_text())
    trained = summary["box_strategy_details"]["seed_detector"]
    assert trained["synthetic_tiles"] == 6
    assert trained["settings"]["epochs"] == config.profile.annotation.synthetic_defects.epochs
    assert trained["n_images"] == len(seeds) + 6
    labels = detector_dir / "seed_detector" / "dataset" / "labels"
    for tile in tiles:
        assert (labels / f"{tile.stem}.txt").read_text().strip(), f"{tile.name} has no box"

    gate = summary["defect_gate"]
    assert sum(gate["answers"].values()) == summary["n_pool"]
    assert gate["class_aware_detector"]["class_aware"] is True
    assert gate["class_aware_detector_training"]["n_images"] == len(seeds) + 6
    gate_settings = config.profile.annotation.defect_gate
    assert gate["settings"] == {
        **gate_settings.model_dump(mode="json"),
        "pooling_rule": "logarithmic",
    }
    assert gate["crops_judged"] <= summary["n_pool"] * gate["settings"]["top_proposals"]
    assert gate["defect_threshold"] == 0.5  # no recall target: each model's own boundary
    flagged = sum(n for answer, n in gate["answers"].items() if answer != "no_defect")
    assert gate["flagged_share"] == round(flagged / summary["n_pool"], 4)
    records = AnnotationStore(config.paths.annotation_dir / "predictions.jsonl").records()
    assert len(records) == summary["n_pool"]
    assert all(r.params["defect_gate"]["settings"] == gate["settings"] for r in records)
    assert all(r.model.endswith("+ defect gate") for r in records)
    answered = pd.Series([r.prediction.defect_class for r in records]).value_counts().to_dict()
    assert answered == gate["answers"]


@pytest.mark.slow
def test_the_folder_annotator_adds_synthetic_tiles_for_defect_free_seeds(
    tmp_path: Path, yolo_weights: Path
) -> None:
    """``cascade-defect annotate`` on a line's folders trains its seed detector as chapter 03
    does: the seeds' defects, cut out by their masks, on the defect-free seeds; the synthetic
    schedule replaces the seeds-only one."""
    import shutil

    from cascade_defect.annotate.folder import annotate_folder
    from cascade_defect.annotate.options import AnnotatorOptions
    from tests.synthetic import make_production_like

    seeds_dir = make_production_like(
        tmp_path / "seeds", defect_counts={"crack": 3, "blow hole": 3}, n_free=4
    )
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    for image in sorted(seeds_dir.glob("*/images/*.jpg"))[:5]:
        shutil.copy(image, pool_dir / f"pool_{image.name}")

    annotate_folder(
        pool_dir,
        seeds_dir,
        tmp_path / "out",
        AnnotatorOptions(annotator="offline", box_strategies=("seed_detector",), progress=False),
        weights=str(yolo_weights),
        synthetic_defects=SyntheticDefectSettings(auto_tiles=4, epochs=1),
    )

    detector_dir = tmp_path / "out" / "seed_detector"
    tiles = sorted((detector_dir / "synthetic").glob("synthetic_*.png"))
    assert len(tiles) == 4
    labels = detector_dir / "seed_detector" / "dataset" / "labels"
    assert all((labels / f"{tile.stem}.txt").read_text().strip() for tile in tiles)
    args = (detector_dir / "seed_detector" / "train" / "args.yaml").read_text()
    assert "epochs: 1\n" in args

    # The defect gate joined the offline annotator's answers (its seeds include defect-free
    # tiles), and the review CSV shows them.
    from cascade_defect.annotate.store import AnnotationStore

    records = AnnotationStore(tmp_path / "out" / "predictions.jsonl").records()
    assert len(records) == 5
    assert all("defect_gate" in r.params for r in records)
    review = pd.read_csv(tmp_path / "out" / "review.csv")
    assert review["reasoning"].str.contains("defect gate").all()

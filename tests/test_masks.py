"""Datasets labelled with pixel masks: discovery, boxes from connected components, the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade_defect.chapters.c01_data import dataset_from_index, run_data_strategy
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.masks import mask_components
from cascade_defect.data.records import Box, DatasetError, data_card
from cascade_defect.settings import load_config
from tests.synthetic import make_mask_dataset, make_neu_like


def two_blobs_and_a_speck() -> np.ndarray:
    """40 wide, 30 high: blobs of 24 and 25 px and a 4 px speck."""
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[2:6, 3:9] = 255  # rows 2-5, columns 3-8
    mask[20:25, 30:35] = 255  # rows 20-24, columns 30-34
    mask[10:12, 15:17] = 255  # 2x2 speck
    return mask


def example_masks() -> dict[str, dict[str, np.ndarray]]:
    tall = np.zeros((50, 25), dtype=np.uint8)
    tall[40:50, 0:5] = 255  # touches the bottom-left corner
    return {
        "MT_Crack": {"crack_1": two_blobs_and_a_speck(), "crack_2": tall},
        "MT_Free": {"free_1": np.zeros((30, 40), dtype=np.uint8)},
    }


@pytest.mark.parametrize("layout", ["beside", "parallel"])
@pytest.mark.parametrize("rgb", [False, True])
def test_mask_components_become_boxes_of_the_image_class(
    tmp_path: Path, layout: str, rgb: bool
) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks(), layout=layout, rgb=rgb)
    dataset = load_dataset(root, class_names=None, progress=False, min_mask_area=16)

    # MT_Free's masks are empty: it is detected as the defect-free class.
    assert dataset.class_names == ["MT_Crack"]
    assert dataset.label_names == ["MT_Crack", "no_defect"]
    assert dataset.no_defect == {"from_classes": ["MT_Free"], "how": "detected"}
    assert not dataset.image_level_only
    assert "pixel masks" in dataset.layout
    by_id = {r.image_id: r for r in dataset.images}
    assert sorted(by_id) == ["crack_1", "crack_2", "free_1"]  # no mask was read as an image
    assert by_id["crack_1"].boxes == [
        Box("MT_Crack", 3.0, 2.0, 9.0, 6.0),
        Box("MT_Crack", 30.0, 20.0, 35.0, 25.0),
    ]
    assert (by_id["crack_2"].width, by_id["crack_2"].height) == (25, 50)
    assert by_id["crack_2"].boxes == [Box("MT_Crack", 0.0, 40.0, 5.0, 50.0)]
    assert by_id["free_1"].boxes == []
    assert by_id["crack_1"].mask_path is not None
    assert by_id["crack_1"].mask_path.suffix == ".png"
    assert by_id["crack_1"].mask_path.parent.name == ("Imgs" if layout == "beside" else "masks")
    assert by_id["crack_1"].mode == ("RGB(grey)" if rgb else "L")

    [speck] = [q for q in dataset.quirks if q.kind == "small_mask_component"]
    assert speck.image_id == "crack_1"
    assert "(15, 10, 17, 12)" in speck.detail and "4 px" in speck.detail
    card = data_card(dataset)
    assert card["masks"] == {"n_masks": 3, "n_mask_boxes": 3, "n_dropped_components": 1}
    assert card["quirks"] == {"small_mask_component": 1}


def test_min_mask_area_decides_what_is_a_box(tmp_path: Path) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks())
    dataset = load_dataset(root, class_names=None, progress=False, min_mask_area=1)
    crack_1 = next(r for r in dataset.images if r.image_id == "crack_1")
    assert len(crack_1.boxes) == 3
    assert Box("MT_Crack", 15.0, 10.0, 17.0, 12.0) in crack_1.boxes
    assert not dataset.quirks


def test_diagonal_neighbours_are_one_component() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[5, 5] = mask[6, 6] = True
    mask[1, 9] = True  # a separate pixel two columns from nothing
    parts = mask_components(mask)
    assert [(p.xmin, p.ymin, p.xmax, p.ymax, p.area) for p in parts] == [
        (9, 1, 10, 2, 1),
        (5, 5, 7, 7, 2),
    ]


def test_masks_named_with_an_ending_are_found(tmp_path: Path) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks(), mask_ending="_mask")
    dataset = load_dataset(root, class_names=None, progress=False)
    assert sorted(r.image_id for r in dataset.images) == ["crack_1", "crack_2", "free_1"]
    assert all(
        r.mask_path is not None and r.mask_path.stem.endswith("_mask") for r in dataset.images
    )


def test_faint_mask_values_are_not_defect(tmp_path: Path) -> None:
    mask = two_blobs_and_a_speck()
    mask[0:30, 38:40] = 3  # smoothing residue along an edge
    root = make_mask_dataset(tmp_path / "data", {"MT_Crack": {"crack_1": mask}})
    [record] = load_dataset(root, class_names=None, progress=False).images
    assert len(record.boxes) == 2


def test_a_mask_of_another_size_stops_the_load_naming_it(tmp_path: Path) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks())
    wrong = root / "MT_Crack" / "Imgs" / "crack_2.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(wrong)
    with pytest.raises(DatasetError, match=r"crack_2\.png.*10x10.*25x50"):
        load_dataset(root, class_names=None, progress=False)

    dataset = load_dataset(root, class_names=None, progress=False, on_error="quarantine")
    assert [q.path for q in dataset.quarantined] == [str(wrong)]
    assert dataset.quarantined[0].kind == "unreadable_mask"
    assert sorted(r.image_id for r in dataset.images) == ["crack_1", "free_1"]


@pytest.mark.parametrize("ultralytics_imported", [False, True])
def test_an_unreadable_mask_stops_the_load_naming_it(
    tmp_path: Path, ultralytics_imported: bool
) -> None:
    if ultralytics_imported:
        # ultralytics patches PIL.Image.open on import; its HEIF retry must not leak out as an
        # ImportError or hide which file is broken.
        import ultralytics.utils.patches  # noqa: F401
    root = make_mask_dataset(tmp_path / "data", example_masks(), layout="parallel")
    broken = root / "MT_Crack" / "masks" / "crack_1.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"crack_1\.png.*unreadable mask") as raised:
        load_dataset(root, class_names=None, progress=False)
    assert "pi_heif" not in str(raised.value)


def test_a_mask_without_its_image_is_an_orphan_not_an_image(tmp_path: Path) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks(), layout="parallel")
    (root / "MT_Crack" / "images" / "crack_2.jpg").unlink()
    dataset = load_dataset(root, class_names=None, progress=False)
    assert sorted(r.image_id for r in dataset.images) == ["crack_1", "free_1"]
    [orphan] = [q for q in dataset.quirks if q.kind == "orphan_annotation"]
    assert orphan.path.endswith("crack_2.png")


def test_box_datasets_keep_their_image_table(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path / "neu", per_class=2)
    dataset = load_dataset(root, progress=False)
    assert "mask_path" not in dataset.images_frame().columns
    assert "masks" not in data_card(dataset)
    assert all(r.mask_path is None for r in dataset.images)


def test_chapter_01_writes_and_reads_back_the_mask_paths(tmp_path: Path) -> None:
    root = make_mask_dataset(tmp_path / "data", example_masks())
    config = load_config(
        "smoke", data_dir=root, work_dir=tmp_path / "work", overrides={"min_mask_area": 1}
    )
    result = run_data_strategy(config)
    assert result.card["masks"]["n_mask_boxes"] == 4
    back = dataset_from_index(result.outputs, config)
    assert {r.image_id: r.mask_path for r in back.images} == {
        r.image_id: r.mask_path for r in result.dataset.images
    }
    assert {r.image_id: r.boxes for r in back.images} == {
        r.image_id: r.boxes for r in result.dataset.images
    }

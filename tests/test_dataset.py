"""The loader on tiny generated datasets: each layout, each quirk, each kind of broken file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import DatasetError, data_card
from cascade_defect.settings import NEU_CLASSES
from tests.synthetic import make_byo_dataset, make_neu_like


@pytest.mark.parametrize("layout", ["flat", "kaggle", "subfolders"])
def test_every_layout_loads_all_images_with_their_class(tmp_path: Path, layout: str) -> None:
    root = make_neu_like(tmp_path / layout, layout=layout, per_class=4)
    dataset = load_dataset(root, progress=False)
    assert len(dataset.images) == 4 * len(NEU_CLASSES)
    for record in dataset.images:
        assert record.image_id.startswith(record.class_name + "_")
        assert record.annotation_path is not None
        assert [b.class_name for b in record.boxes] == [record.class_name]
    assert data_card(dataset)["images_per_class"] == dict.fromkeys(NEU_CLASSES, 4)


def test_flat_layout_includes_validation_folders(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, layout="flat", per_class=3)
    dataset = load_dataset(root, progress=False)
    from_validation = [r for r in dataset.images if "Validation_Images" in str(r.image_path)]
    assert len(from_validation) == len(NEU_CLASSES)
    assert "Validation" in dataset.layout


def test_longest_class_prefix_wins(tmp_path: Path) -> None:
    classes = ("rolled", "rolled-in_scale", "scratches")
    root = make_neu_like(tmp_path, layout="flat", per_class=2, classes=classes)
    dataset = load_dataset(root, class_names=classes, progress=False)
    by_id = {r.image_id: r.class_name for r in dataset.images}
    assert by_id["rolled-in_scale_1"] == "rolled-in_scale"
    assert by_id["rolled_1"] == "rolled"


def test_classes_inferred_from_folders_when_not_given(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, layout="subfolders", per_class=2, classes=("dent", "hole punch"))
    dataset = load_dataset(root, class_names=None, progress=False)
    assert dataset.class_names == ["dent", "hole punch"]


def test_quirks_are_reported_not_fatal(tmp_path: Path) -> None:
    root = make_neu_like(
        tmp_path,
        per_class=4,
        duplicate=True,
        cross_class_box=True,
        missing_xml=True,
        filename_without_extension=True,
    )
    dataset = load_dataset(root, progress=False)
    card = data_card(dataset)
    assert card["n_images"] == 4 * len(NEU_CLASSES)  # nothing dropped
    assert card["quirks"]["duplicate_image"] == 2
    assert card["quirks"]["cross_class_box"] == 1
    assert card["images_with_cross_class_boxes"] == 1
    assert card["quirks"]["missing_annotation"] == 1
    assert card["quirks"]["mismatched_filename"] == len(NEU_CLASSES)  # every <class>_1.xml
    missing = next(r for r in dataset.images if r.image_id == "crazing_2")
    assert missing.annotation_path is None and missing.boxes == []
    cross = next(r for r in dataset.images if r.image_id == "patches_3")
    assert sorted(b.class_name for b in cross.boxes) == ["inclusion", "patches"]  # kept


def test_corrupt_image_raises_with_its_name(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, per_class=3, corrupt_image=True)
    with pytest.raises(DatasetError, match=r"pitted_surface_1\.jpg"):
        load_dataset(root, progress=False)


def test_unparsable_xml_raises_with_its_name(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, per_class=3, broken_xml=True)
    with pytest.raises(DatasetError, match=r"rolled-in_scale_1\.xml"):
        load_dataset(root, progress=False)


def test_quarantine_sets_broken_files_aside_and_counts_them(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, per_class=3, corrupt_image=True, broken_xml=True)
    dataset = load_dataset(root, on_error="quarantine", progress=False)
    kinds = sorted(q.kind for q in dataset.quarantined)
    assert kinds == ["corrupt_image", "unparsable_annotation"]
    assert len(dataset.images) == 3 * len(NEU_CLASSES) - 2
    assert len(data_card(dataset)["quarantined"]) == 2


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path / "empty")


def test_image_of_unknown_class_is_an_error(tmp_path: Path) -> None:
    root = make_neu_like(tmp_path, per_class=2, classes=("crazing", "dents"))
    with pytest.raises(DatasetError, match=r"dents_1\.jpg"):
        load_dataset(root, progress=False)


def test_subsample_keeps_per_class_counts(tmp_path: Path) -> None:
    dataset = load_dataset(make_neu_like(tmp_path, per_class=6), progress=False)
    small = dataset.subsample(3, seed=1)
    assert data_card(small)["images_per_class"] == dict.fromkeys(NEU_CLASSES, 3)
    assert [r.image_id for r in dataset.subsample(3, seed=1).images] == [
        r.image_id for r in small.images
    ]


@pytest.mark.parametrize("layout", ["classfolders", "voc", "yolo"])
def test_bring_your_own_layouts_with_spaces_and_mixed_formats(tmp_path: Path, layout: str) -> None:
    classes = ("hole punch", "oil stain", "scratch")
    root = make_byo_dataset(tmp_path / layout, layout=layout, classes=classes, per_class=4)
    dataset = load_dataset(root, class_names=None, progress=False)
    assert sorted(dataset.class_names) == sorted(classes)
    assert data_card(dataset)["images_per_class"] == dict.fromkeys(classes, 4)
    assert {r.image_path.suffix for r in dataset.images} == {".png", ".jpg", ".bmp"}
    assert len({(r.width, r.height) for r in dataset.images}) > 1
    if layout == "classfolders":
        assert all(r.boxes == [] for r in dataset.images)
        assert "image-level" in dataset.layout
        assert "missing_annotation" not in data_card(dataset)["quirks"]
    else:
        for record in dataset.images:
            (box,) = record.boxes
            assert box.class_name == record.class_name
            assert box.xmax == pytest.approx(record.width // 2, abs=0.5)


def test_yolo_labels_need_a_names_file_and_valid_lines(tmp_path: Path) -> None:
    root = make_byo_dataset(tmp_path / "y", layout="yolo", per_class=2)
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="names file"):
        load_dataset(root, class_names=None, progress=False)
    root = make_byo_dataset(tmp_path / "z", layout="yolo", per_class=2)
    bad = next((root / "labels").iterdir())
    bad.write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=bad.name.replace(".", r"\.")):
        load_dataset(root, class_names=None, progress=False)


def test_the_card_and_quirks_name_files_by_the_data_folder_variable(tmp_path: Path) -> None:
    from cascade_defect.settings import load_config

    root = make_neu_like(
        tmp_path / "neu", per_class=3, cross_class_box=True, corrupt_image=True, duplicate=True
    )
    dataset = load_dataset(root, on_error="quarantine", progress=False)
    config = load_config("smoke", data_dir=root, work_dir=tmp_path / "work")
    card = data_card(dataset, config)
    assert card["root"] == "$CASCADE_DATA_DIR"
    assert card["quarantined"] and all(
        q["path"].startswith("$CASCADE_DATA_DIR/") for q in card["quarantined"]
    )
    quirks = dataset.quirks_frame(config)
    assert len(quirks) and quirks["path"].str.startswith("$CASCADE_DATA_DIR/").all()
    assert str(tmp_path) not in repr(card) + quirks.to_csv()
    assert data_card(dataset)["root"] == str(root)  # in memory, without a configuration

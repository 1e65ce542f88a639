"""Image ids are the file stems, as text, end to end: ``007``, ``1e5``, ``NA`` or ``my image``.

pandas reads ``1001`` as an integer, ``007`` as 7, ``1e5`` as a float and ``NA``/``nan`` as
missing values; a table read that way no longer merges with the ids the store and the label
files use. These tests run a user's class-folder dataset named that way through chapters 01-04,
through ``cascade-defect annotate`` and through the offline annotator benchmark's scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.annotate.schema import AnnotationRecord, DefectPrediction
from cascade_defect.chapters.c01_data import (
    DataStrategyOutputs,
    dataset_from_index,
    run_data_strategy,
)
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import (
    AnnotationOutputs,
    read_pseudo_labels,
    run_annotation,
)
from cascade_defect.chapters.c04_audit import run_label_audit
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.data.tables import read_table
from cascade_defect.settings import StudyConfig, load_config
from tests.synthetic import make_named_images

ROOT = Path(__file__).resolve().parents[1]

TRICKY_IDS = ["007", "1001", "1e5", "NA", "nan", "True", "my image", "défaut_ü", "1.5", "0042"]

#: A class-folder dataset named by number (ten images a class), plus the names pandas would
#: misread: leading zeros, exponents, booleans, missing-value words, a space, non-ASCII letters.
DATASET = {
    "hole punch": [
        "007.png",
        "1e5.jpg",
        "NA.png",
        "0042.jpg",
        *(f"{1001 + k}.jpg" for k in range(6)),
    ],
    "scratch": [
        "nan.png",
        "True.jpg",
        "my image.png",
        "1.5.png",
        *(f"{2001 + k}.png" for k in range(6)),
    ],
    "défaut ü": ["défaut_ü.png", "12.bmp", *(f"{3001 + k}.bmp" for k in range(8))],
}
ALL_IDS = {Path(name).stem for names in DATASET.values() for name in names}


def make_dataset(root: Path) -> Path:
    for index, (class_name, names) in enumerate(DATASET.items()):
        make_named_images(root / class_name, names, class_index=index)
    return root


# ---------------------------------------------------------------------------------------------
# The one reader
# ---------------------------------------------------------------------------------------------


def test_read_table_keeps_every_id_as_written(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    pd.DataFrame(
        {"image_id": TRICKY_IDS, "value": ["1", "NA", "", "nan", "2", "3", "4", "5", "6", "7"]}
    ).to_csv(path, index=False)
    table = read_table(path)
    assert list(table["image_id"]) == TRICKY_IDS
    # The other columns read exactly as pd.read_csv reads them.
    pd.testing.assert_series_equal(table["value"], pd.read_csv(path)["value"])
    kept = read_table(path, keep_default_na=False, na_values=[""])
    assert list(kept["image_id"]) == TRICKY_IDS
    pd.testing.assert_series_equal(
        kept["value"], pd.read_csv(path, keep_default_na=False, na_values=[""])["value"]
    )
    assert kept["value"].tolist()[1] == "NA" and pd.isna(kept["value"].tolist()[2])


def test_read_table_keeps_other_dtypes_and_tables_without_ids(tmp_path: Path) -> None:
    with_ids = tmp_path / "ids.csv"
    pd.DataFrame({"image_id": ["1", "2"], "status": ["True", "ok"]}).to_csv(with_ids, index=False)
    table = read_table(with_ids, dtype={"status": "object"})
    assert table["image_id"].tolist() == ["1", "2"]
    assert table["status"].tolist() == ["True", "ok"]
    empty_id = tmp_path / "quirks.csv"
    pd.DataFrame({"kind": ["a"], "image_id": [None]}).to_csv(empty_id, index=False)
    assert read_table(empty_id, keep_default_na=False)["image_id"].tolist() == [""]
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(plain, index=False)
    pd.testing.assert_frame_equal(read_table(plain), pd.read_csv(plain))


def test_every_table_read_in_the_package_goes_through_read_table() -> None:
    """A direct ``pd.read_csv`` of a table with image ids would lose them again."""
    allowed = {"data/tables.py"}  # the reader itself
    id_free = {"plots/book.py", "plots/verdict.py", "findings.py", "chapters/c07_cost.py"}
    package = ROOT / "src" / "cascade_defect"
    offenders = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "read_csv(" in path.read_text(encoding="utf-8")
        and path.relative_to(package).as_posix() not in allowed | id_free
    ]
    assert not offenders, f"read image-id tables with data.tables.read_table: {offenders}"


# ---------------------------------------------------------------------------------------------
# Chapters 01-04 on numbered files
# ---------------------------------------------------------------------------------------------


def test_a_dataset_named_only_by_number_keeps_its_ids(tmp_path: Path) -> None:
    """Every id numeric: the tables pandas would read as whole columns of int64 or float64."""
    names = {
        "crack": ["007.png", "1e5.jpg", *(f"{1001 + k}.jpg" for k in range(6))],
        "stain": [f"{2001 + k:05d}.png" for k in range(8)],
    }
    for index, (class_name, files) in enumerate(names.items()):
        make_named_images(tmp_path / "data" / class_name, files, class_index=index)
    config = load_config("smoke", data_dir=tmp_path / "data", work_dir=tmp_path / "work")
    run_data_strategy(config)
    run_split(config)
    expected = {Path(name).stem for files in names.values() for name in files}
    outputs = DataStrategyOutputs(config.paths.data_card_dir)
    assert {r.image_id for r in dataset_from_index(outputs, config).images} == expected
    layout = SplitLayout(config.paths.split_dir)
    truth, pool_boxes = read_pool_ground_truth(layout)
    pool = read_pool_listing(layout)
    # The merge chapter 04 makes, on ids that all look like numbers.
    merged = truth.merge(pool, on="image_id", how="inner", validate="one_to_one")
    assert len(merged) == len(pool) and set(pool_boxes["image_id"]) <= set(pool["image_id"])
    listed = [
        *read_labelled_listing(layout, "seed")[0]["image_id"],
        *read_labelled_listing(layout, "test")[0]["image_id"],
        *pool["image_id"],
    ]
    assert sorted(listed) == sorted(expected)


@pytest.fixture(scope="module")
def numbered_run(tmp_path_factory: pytest.TempPathFactory, yolo_weights: Path) -> StudyConfig:
    data = make_dataset(tmp_path_factory.mktemp("numbered"))
    config = load_config(
        "smoke",
        data_dir=data,
        work_dir=tmp_path_factory.mktemp("work"),
        yolo_weights=str(yolo_weights),
    )
    run_data_strategy(config)
    run_split(config)
    run_annotation(config, annotator="offline", box_strategies=("whole_image",), progress=False)
    return config


def test_chapter_01_index_gives_back_every_id(numbered_run: StudyConfig) -> None:
    outputs = DataStrategyOutputs(numbered_run.paths.data_card_dir)
    dataset = dataset_from_index(outputs, numbered_run)
    assert {r.image_id for r in dataset.images} == ALL_IDS
    assert {r.image_path.stem for r in dataset.images} == ALL_IDS


def test_split_listings_hold_the_ids_as_text(numbered_run: StudyConfig) -> None:
    layout = SplitLayout(numbered_run.paths.split_dir)
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    test, test_boxes = read_labelled_listing(layout, "test")
    pool = read_pool_listing(layout)
    truth, pool_boxes = read_pool_ground_truth(layout)
    ids = [*seeds["image_id"], *test["image_id"], *pool["image_id"]]
    assert sorted(ids) == sorted(ALL_IDS)
    assert set(truth["image_id"]) == set(pool["image_id"]) == set(pool_boxes["image_id"])
    assert set(seed_boxes["image_id"]) == set(seeds["image_id"])
    assert set(test_boxes["image_id"]) == set(test["image_id"])
    exported = {p.stem for split in ("seed", "test") for p in layout.yolo_dir(split).glob("*/*")}
    assert exported == set(seeds["image_id"]) | set(test["image_id"])


def test_annotation_and_audit_run_on_numbered_ids(numbered_run: StudyConfig) -> None:
    layout = SplitLayout(numbered_run.paths.split_dir)
    pool_ids = set(read_pool_listing(layout)["image_id"])
    outputs = AnnotationOutputs(numbered_run.paths.annotation_dir)
    labels, boxes = read_pseudo_labels(outputs)
    assert set(labels["image_id"]) == pool_ids and (labels["status"] == "ok").all()
    assert set(boxes["image_id"]) == pool_ids
    stored = {
        json.loads(line)["image_id"] for line in outputs.predictions.read_text("utf-8").splitlines()
    }
    assert stored == pool_ids
    label_files = {p.stem for p in outputs.yolo_labels_dir("whole_image").glob("*.txt")}
    assert label_files == pool_ids

    audit = run_label_audit(numbered_run)  # the merge that failed on int64 against text ids
    assert set(audit.images["image_id"]) == pool_ids
    assert audit.images["answered"].all()
    written = read_table(audit.outputs.images)
    assert set(written["image_id"]) == pool_ids


# ---------------------------------------------------------------------------------------------
# cascade-defect annotate on a numbered folder
# ---------------------------------------------------------------------------------------------


def test_cli_annotate_keeps_numbered_and_named_files_apart(
    tmp_path: Path, yolo_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_defect.cli import main

    names = ["007.png", "1e5.jpg", "1001.jpg", "NA.png", "nan.bmp", "True.jpg", "my image.png"]
    names.append("défaut_ü.jpg")
    images = make_named_images(tmp_path / "unlabelled", names, class_index=1)
    seeds = tmp_path / "seeds"
    make_named_images(seeds / "hole punch", ["1.png", "2.jpg"], class_index=0)
    make_named_images(seeds / "scratch", ["1.png", "3.jpg"], class_index=3)
    out = tmp_path / "out"
    args = ["annotate", "--images", str(images), "--seeds", str(seeds), "--out", str(out)]
    args += ["--annotator", "offline", "--weights", str(yolo_weights), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    stems = {Path(name).stem for name in names}
    assert {p.stem for p in (out / "labels").glob("*.txt")} == stems
    review = read_table(out / "review.csv")
    assert set(review["image_id"]) == stems
    assert set(review["file_name"]) == set(names)
    assert (review["status"] == "ok").all()
    coco = json.loads((out / "annotations.coco.json").read_text("utf-8"))
    assert {image["file_name"] for image in coco["images"]} == set(names)


# ---------------------------------------------------------------------------------------------
# The offline annotator benchmark's scoring
# ---------------------------------------------------------------------------------------------


def test_benchmark_scores_numbered_ids(numbered_run: StudyConfig, load_script) -> None:
    bench = load_script("bench_offline_annotator")
    layout = SplitLayout(numbered_run.paths.split_dir)
    images = bench.non_test_images(layout)
    test_ids = set(read_labelled_listing(layout, "test")[0]["image_id"])
    assert set(images["image_id"]) == ALL_IDS - test_ids
    records = [
        AnnotationRecord(
            key=f"key-{k}",
            image_id=row.image_id,
            image_sha256=row.sha256,
            annotator="planted",
            model="none",
            prompt_hash="p",
            status="ok",
            prediction=DefectPrediction(
                defect_class=row.class_name,
                confidence=0.9,
                reasoning="planted answer",
                bounding_box_present=False,
                boxes=[],
            ),
        )
        for k, row in enumerate(images.itertuples(index=False))
    ]
    scored = bench.score_answers(images, records)
    assert scored["correct"].all() and (scored["confidence"] == 0.9).all()
    with pytest.raises(KeyError, match="no stored answer"):
        bench.score_answers(images, records[1:])

"""The review round trip: the audit's export, corrected by a person, imported back as ``reviewed``."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.annotate.review_export import (
    CORRECTION_COLUMNS,
    format_box_list,
    parse_box_list,
    write_review_export,
)
from cascade_defect.annotate.review_import import (
    ReviewImportError,
    ReviewTarget,
    detect_format,
    read_review_file,
)
from cascade_defect.annotate.reviewed import (
    REVIEW_STRATEGY,
    ReviewedOutputs,
    import_review,
    read_reviewed_tables,
    write_atomically,
)
from cascade_defect.cli import main
from cascade_defect.data.tables import read_table
from cascade_defect.manifest import MissingInputError

CLASSES = ["crazing", "inclusion", "patches"]
# image id, width, height, truth, pseudo status, pseudo class
POOL = [
    ("007", 200, 100, "crazing", "ok", "inclusion"),
    ("a1", 200, 100, "crazing", "ok", "crazing"),
    ("a2", 200, 100, "patches", "failed", None),
    ("1e5", 100, 100, "patches", "ok", "patches"),
]
WHEN = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_run(root: Path) -> Path:
    """A run folder holding just what the import reads: classes, pool, chapter 03's tables, and
    the audit's review export of two disagreements ("007" and "1e5")."""
    run = root / "runs" / "quick"
    split = run / "02_split"
    (split / "yolo" / "pool" / "images").mkdir(parents=True)
    (split / "classes.json").write_text(json.dumps({"class_names": CLASSES, "labels": "boxes"}))
    pool = pd.DataFrame(
        {
            "image_id": [p[0] for p in POOL],
            "file": [f"yolo/pool/images/{p[0]}.jpg" for p in POOL],
            "sha256": [f"h{i}" for i in range(len(POOL))],
            "width": [p[1] for p in POOL],
            "height": [p[2] for p in POOL],
        }
    )
    pool.to_csv(split / "pool.csv", index=False)
    labels, boxes = [], []
    for image_id, _, _, _, status, predicted in POOL:
        ok = status == "ok"
        labels.append(
            {
                "image_id": image_id,
                "status": status,
                "defect_class": predicted,
                "confidence": 0.75 if ok else None,
                "reasoning": 'dots, "pits"' if ok else None,
                "annotator": "offline",
                "model": "m1",
                "failure_kind": None if ok else "timeout",
                "cost_usd": 0.0,
            }
        )
        if ok:
            boxes.append((image_id, "whole_image", predicted, 0.0, 0.0, 1.0, 1.0, 0.75))
            boxes.append((image_id, "seed_detector", predicted, 0.1, 0.2, 0.4, 0.6, 0.5))
            boxes.append((image_id, "seed_detector", predicted, 0.5, 0.5, 0.9, 0.8, 0.4))
    annotation = run / "03_annotation"
    annotation.mkdir(parents=True)
    pd.DataFrame(labels).to_csv(annotation / "pseudo_labels.csv", index=False)
    box_columns = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]
    box_table = pd.DataFrame(boxes, columns=box_columns)
    box_table.to_csv(annotation / "pseudo_boxes.csv", index=False)
    listing = pool.assign(path=[str(split / f) for f in pool["file"]])
    items = pd.DataFrame(
        {
            "image_id": ["007", "1e5"],
            "true_class": ["crazing", "crazing"],
            "predicted": ["inclusion", "patches"],
            "confidence": [0.75, 0.75],
            "reasoning": ["dots", "spots"],
        }
    )
    truth_boxes = pd.DataFrame(
        [("007", "crazing", 0.0, 0.0, 0.5, 0.5), ("1e5", "crazing", 0.2, 0.2, 0.6, 0.6)],
        columns=["image_id", "class_name", "x1", "y1", "x2", "y2"],
    )
    write_review_export(
        run / "04_audit" / "review",
        items,
        listing,
        truth_boxes,
        box_table[box_table["strategy"] == "seed_detector"],
        CLASSES,
        document_root=root,
    )
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def review_dir(run: Path) -> Path:
    return run / "04_audit" / "review"


def corrected_csv(run: Path, corrections: dict[str, tuple[str, str]], name: str = "r.csv") -> Path:
    """The export's CSV with ``corrections`` (image -> class, boxes) typed in, as a spreadsheet would."""
    with (review_dir(run) / "disagreements.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["image_id"] in corrections:
            row["corrected_class"], row["corrected_boxes"] = corrections[row["image_id"]]
    target = review_dir(run) / name
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def snapshot(run: Path) -> dict[str, bytes]:
    folder = ReviewedOutputs.for_run(run).root
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.exists() else {}


def pseudo_tables(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    annotation = run / "03_annotation"
    return read_table(annotation / "pseudo_labels.csv"), read_table(annotation / "pseudo_boxes.csv")


# --------------------------------------------------------------------------- the export's side


def test_the_export_carries_empty_correction_columns_and_its_boxes_in_the_notation(run) -> None:
    table = read_table(review_dir(run) / "disagreements.csv", keep_default_na=False)
    assert list(table.columns[-3:]) == ["pseudo_boxes", *CORRECTION_COLUMNS]
    assert (table[list(CORRECTION_COLUMNS)] == "").all().all()
    assert table["image_id"].tolist() == ["007", "1e5"]
    first = parse_box_list(table.loc[0, "pseudo_boxes"])
    assert first == [
        ("inclusion", (20.0, 20.0, 60.0, 40.0)),
        ("inclusion", (100.0, 50.0, 80.0, 30.0)),
    ]
    readme = (review_dir(run) / "README.md").read_text()
    assert "corrected_class" in readme and "cascade-defect review import" in readme


def test_box_notation_round_trips_class_names_with_spaces() -> None:
    boxes = pd.DataFrame(
        [("oil stain", 0.1, 0.2, 0.3, 0.4), ("hole", 0.0, 0.0, 1.0, 1.0)],
        columns=["class_name", "x1", "y1", "x2", "y2"],
    )
    text = format_box_list(boxes, 200, 100)
    assert text == "oil stain 20 20 40 20; hole 0 0 200 100"
    assert parse_box_list(text) == [("oil stain", (20, 20, 40, 20)), ("hole", (0, 0, 200, 100))]
    assert parse_box_list("none") == [] and parse_box_list(" NONE ") == []
    with pytest.raises(ValueError, match="box 2"):
        parse_box_list("a 1 2 3 4; b 1 2 three 4")


# --------------------------------------------------------------------------- each format


def test_csv_import_replaces_exactly_the_reviewed_images(run) -> None:
    path = corrected_csv(
        run,
        {
            "007": ("crazing", "crazing 10 20 30 40; patches 0 0 200 100"),
            "1e5": ("inclusion", ""),
        },
    )
    summary = import_review(path, run, now=WHEN)
    assert (summary.n_reviews, summary.n_not_reviewed, summary.n_class_changes) == (2, 0, 2)
    labels, boxes = read_reviewed_tables(ReviewedOutputs.for_run(run))
    pseudo_labels, pseudo_boxes = pseudo_tables(run)
    assert labels["image_id"].tolist() == ["007", "a1", "a2", "1e5"]  # ids stay text
    by_id = labels.set_index("image_id")
    assert by_id.loc["007", "defect_class"] == "crazing" and by_id.loc["007", "confidence"] == 1.0
    assert by_id.loc["007", "annotator"] == "person"
    assert by_id.loc["1e5", "defect_class"] == "inclusion"
    untouched = ["a1", "a2"]
    pd.testing.assert_frame_equal(
        labels[labels["image_id"].isin(untouched)].reset_index(drop=True),
        pseudo_labels[pseudo_labels["image_id"].isin(untouched)].reset_index(drop=True),
        check_dtype=False,
    )
    drawn = boxes[boxes["image_id"] == "007"]
    assert drawn["strategy"].eq(REVIEW_STRATEGY).all()
    assert drawn["class_name"].tolist() == ["crazing", "patches"]
    assert drawn[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [
        [0.05, 0.2, 0.2, 0.6],
        [0.0, 0.0, 1.0, 1.0],
    ]
    relabelled = boxes[boxes["image_id"] == "1e5"]
    assert len(relabelled) == 3 and relabelled["class_name"].eq("inclusion").all()
    key = ["image_id", "strategy", "x1", "y1"]
    theirs = pseudo_boxes[pseudo_boxes["image_id"] == "a1"].sort_values(key)
    mine = boxes[boxes["image_id"] == "a1"].sort_values(key)
    pd.testing.assert_frame_equal(
        mine.reset_index(drop=True), theirs.reset_index(drop=True), check_dtype=False
    )
    provenance = read_table(ReviewedOutputs.for_run(run).provenance, keep_default_na=False)
    assert provenance["image_id"].tolist() == ["007", "1e5"]
    assert provenance["file"].tolist() == ["04_audit/review/r.csv"] * 2
    assert provenance["boxes"].tolist() == ["replaced", "relabelled"]
    assert provenance["pseudo_class"].tolist() == ["inclusion", "patches"]
    assert provenance["reviewed_at"].tolist() == [WHEN.isoformat()] * 2
    assert provenance["time_from"].tolist() == ["import", "import"]
    assert provenance.loc[0, "record"] == "row 1 (line 2)"
    manifest = json.loads(ReviewedOutputs.for_run(run).manifest.read_text())
    assert manifest["imports"][0]["sha256"] == provenance.loc[0, "file_sha256"]
    assert not any(Path(v["path"]).is_absolute() for v in manifest["applies_to"].values())


def label_studio_with(run: Path, annotations: dict[str, list[dict]]) -> Path:
    tasks = json.loads((review_dir(run) / "label_studio_tasks.json").read_text())
    for task_id, task in enumerate(tasks, start=1):
        task["id"] = task_id
        task["annotations"] = annotations.get(task["data"]["image_id"], [])
    target = review_dir(run) / "ls_export.json"
    target.write_text(json.dumps(tasks))
    return target


def rectangle(label: str, x: float, y: float, w: float, h: float, **extra: object) -> dict:
    return {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 200,
        "original_height": 100,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
            **extra,
        },
    }


def choice(label: str) -> dict:
    return {
        "id": "c1",
        "type": "choices",
        "from_name": "defect_class",
        "to_name": "image",
        "value": {"choices": [label]},
    }


def test_label_studio_export_takes_the_latest_submitted_annotation(run) -> None:
    path = label_studio_with(
        run,
        {
            "007": [
                {"id": 1, "result": [choice("patches")], "updated_at": "2026-01-01T00:00:00Z"},
                {
                    "id": 2,
                    "result": [choice("crazing"), rectangle("crazing", 5, 20, 15, 40)],
                    "updated_at": "2026-01-02T03:04:05Z",
                },
                {
                    "id": 3,
                    "result": [choice("inclusion")],
                    "was_cancelled": True,
                    "updated_at": "2026-02-01T00:00:00Z",
                },
            ],
            "1e5": [{"id": 4, "result": [choice("patches")]}],
        },
    )
    assert detect_format(path) == "label-studio"
    summary = import_review(path, run, now=WHEN)
    assert (summary.n_reviews, summary.n_not_reviewed) == (2, 0)
    labels, boxes = read_reviewed_tables(ReviewedOutputs.for_run(run))
    assert labels.set_index("image_id").loc["007", "defect_class"] == "crazing"
    drawn = boxes[boxes["image_id"] == "007"]
    assert drawn[["x1", "y1", "x2", "y2"]].to_numpy().round(6).tolist() == [[0.05, 0.2, 0.2, 0.6]]
    kept = boxes[boxes["image_id"] == "1e5"]
    assert len(kept) == 3 and kept["class_name"].eq("patches").all()  # a choice alone keeps boxes
    provenance = read_table(ReviewedOutputs.for_run(run).provenance, keep_default_na=False)
    row = provenance.set_index("image_id").loc["007"]
    assert row["reviewed_at"] == "2026-01-02T03:04:05Z" and row["time_from"] == "file"
    assert row["record"] == "task 1, annotation 2"
    assert provenance.set_index("image_id").loc["1e5", "boxes"] == "kept"


def test_unannotated_label_studio_tasks_are_not_reviews(run) -> None:
    path = review_dir(run) / "label_studio_tasks.json"  # the import file itself: predictions only
    review_file = read_review_file(path, ReviewTarget.from_run(run))
    assert review_file.reviews == () and review_file.n_not_reviewed == 2


def test_coco_import_takes_every_image_and_its_class_field(run) -> None:
    coco = json.loads((review_dir(run) / "coco_pseudo.json").read_text())
    first = coco["images"][0]["id"]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != first]
    coco["annotations"].append(
        {"id": 99, "image_id": first, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200}
    )
    coco["images"][1]["defect_class"] = "crazing"
    coco["info"]["date_created"] = "2026-03-04T05:06:07+00:00"
    path = review_dir(run) / "from_cvat.json"
    path.write_text(json.dumps(coco))
    assert detect_format(path) == "coco"
    import_review(path, run, now=WHEN)
    labels, boxes = read_reviewed_tables(ReviewedOutputs.for_run(run))
    by_id = labels.set_index("image_id")
    assert by_id.loc["007", "defect_class"] == "crazing"  # its one box's class
    assert by_id.loc["1e5", "defect_class"] == "crazing"  # the image's own field
    assert boxes[boxes["image_id"] == "007"][["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [
        [0.05, 0.2, 0.2, 0.6]
    ]
    provenance = read_table(ReviewedOutputs.for_run(run).provenance, keep_default_na=False)
    assert set(provenance["reviewed_at"]) == {"2026-03-04T05:06:07+00:00"}


# --------------------------------------------------------------------------- bad input


def _csv(image_id: str, corrected_class: str, corrected_boxes: str):
    def make(run: Path) -> Path:
        path = corrected_csv(run, {"007": (corrected_class, corrected_boxes)})
        if image_id != "007":
            path.write_text(path.read_text().replace("\n007,", f"\n{image_id},", 1))
        return path

    return make


def _csv_extra_field(run: Path) -> Path:
    path = corrected_csv(run, {"007": ("crazing", "")})
    lines = path.read_text().splitlines()
    lines[1] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ls(image_id: str, result: object, tasks_image: str | None = None):
    def make(run: Path) -> Path:
        path = label_studio_with(run, {"007": [{"id": 7, "result": result}]})
        if image_id != "007":
            path.write_text(
                path.read_text().replace('"image_id": "007"', f'"image_id": "{image_id}"')
            )
        return path

    return make


def _coco(change):
    def make(run: Path) -> Path:
        coco = json.loads((review_dir(run) / "coco_pseudo.json").read_text())
        change(coco)
        path = review_dir(run) / "bad_coco.json"
        path.write_text(json.dumps(coco))
        return path

    return make


def _set(path: str, value: object):
    def change(coco: dict) -> None:
        section, index, key = path.split("/")
        coco[section][int(index)][key] = value

    return change


BAD_INPUTS = {
    "csv unknown image": (_csv("zzz", "crazing", ""), "row 1 (line 2): unknown image 'zzz'"),
    "csv unknown class": (_csv("007", "rust", ""), "row 1 (line 2): unknown class 'rust'"),
    "csv unknown box class": (_csv("007", "", "rust 1 1 5 5"), "box 1: unknown class 'rust'"),
    "csv box outside": (
        _csv("007", "", "crazing 190 10 20 10"),
        "box (190, 10, 20, 10) lies outside the 200x100 image '007'",
    ),
    "csv malformed row": (
        _csv_extra_field,
        "row 1 (line 2): malformed row: 12 fields, the header has 11",
    ),
    "csv malformed boxes": (_csv("007", "", "crazing 1 2 3"), "malformed corrected_boxes"),
    "ls unknown image": (_ls("zzz", [choice("crazing")]), "task 1: unknown image 'zzz'"),
    "ls unknown class": (
        _ls("007", [rectangle("rust", 1, 1, 5, 5)]),
        "task 1, annotation 7, result r1: unknown class 'rust'",
    ),
    "ls box outside": (_ls("007", [rectangle("crazing", 95, 10, 10, 10)]), "lies outside"),
    "ls malformed result": (_ls("007", "boxes"), "task 1, annotation 7: malformed annotation"),
    "ls rotated box": (_ls("007", [rectangle("crazing", 5, 5, 5, 5, rotation=30)]), "rotated"),
    "ls empty annotation": (_ls("007", []), "neither a class nor a box"),
    "coco unknown image": (_coco(_set("images/0/image_key", "zzz")), "unknown image 'zzz'"),
    "coco unknown class": (_coco(_set("categories/1/name", "rust")), "unknown class 'rust'"),
    "coco box outside": (_coco(_set("annotations/0/bbox", [150, 0, 60, 10])), "lies outside"),
    "coco malformed box": (
        _coco(_set("annotations/0/bbox", [1, 2])),
        "annotation id 1: malformed box",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("earlier", [False, True], ids=["first import", "after an import"])
def test_bad_input_names_its_place_and_changes_no_byte(run, case: str, earlier: bool) -> None:
    if earlier:
        import_review(corrected_csv(run, {"1e5": ("crazing", "")}, name="ok.csv"), run, now=WHEN)
    before = snapshot(run)
    make, expected = BAD_INPUTS[case]
    path = make(run)
    with pytest.raises(ReviewImportError) as caught:
        import_review(path, run, now=WHEN)
    message = str(caught.value)
    assert str(path) in message and "nothing was imported" in message
    assert expected in message, message
    assert snapshot(run) == before
    assert not list(ReviewedOutputs.for_run(run).root.glob(".*.tmp"))


def test_every_problem_of_a_file_is_reported_at_once(run) -> None:
    path = corrected_csv(run, {"007": ("rust", ""), "1e5": ("", "crazing 0 0 500 5")})
    with pytest.raises(ReviewImportError) as caught:
        import_review(path, run)
    assert len(caught.value.problems) == 2


def test_a_review_naming_an_image_twice_is_refused(run) -> None:
    path = corrected_csv(run, {"007": ("crazing", ""), "1e5": ("crazing", "")})
    path.write_text(path.read_text().replace("\n1e5,", "\n007,", 1))
    with pytest.raises(ReviewImportError, match=r"image '007' is reviewed twice \(also at row 1"):
        import_review(path, run)


# --------------------------------------------------------------------------- idempotence, history


@pytest.mark.parametrize("fmt", ["csv", "label-studio"])
def test_importing_the_same_file_twice_writes_the_same_bytes(run, fmt: str) -> None:
    if fmt == "csv":
        path = corrected_csv(
            run, {"007": ("crazing", "crazing 10 20 30 40"), "1e5": ("inclusion", "")}
        )
    else:
        path = label_studio_with(
            run, {"007": [{"id": 1, "result": [rectangle("crazing", 5, 5, 5, 5)]}]}
        )
    first = import_review(path, run, now=WHEN)
    after_first = snapshot(run)
    second = import_review(path, run, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert first.changed and not second.changed
    assert snapshot(run) == after_first
    assert set(after_first) == {
        "manifest.json",
        "provenance.csv",
        "reviewed_boxes.csv",
        "reviewed_labels.csv",
    }


def test_an_import_of_nothing_reviewed_reproduces_the_pseudo_labels(run) -> None:
    import_review(review_dir(run) / "label_studio_tasks.json", run, now=WHEN)
    outputs = ReviewedOutputs.for_run(run)
    assert outputs.labels.read_bytes() == (run / "03_annotation" / "pseudo_labels.csv").read_bytes()


def test_imports_accumulate_and_a_later_file_wins(run) -> None:
    import_review(
        corrected_csv(run, {"007": ("crazing", ""), "1e5": ("crazing", "")}, "a.csv"), run
    )
    import_review(corrected_csv(run, {"007": ("patches", "")}, "b.csv"), run)
    labels, _ = read_reviewed_tables(ReviewedOutputs.for_run(run))
    assert labels.set_index("image_id").loc[["007", "1e5"], "defect_class"].tolist() == [
        "patches",
        "crazing",
    ]
    provenance = read_table(ReviewedOutputs.for_run(run).provenance, keep_default_na=False)
    assert provenance.set_index("image_id")["file"].to_dict() == {
        "007": "04_audit/review/b.csv",
        "1e5": "04_audit/review/a.csv",
    }
    manifest = json.loads(ReviewedOutputs.for_run(run).manifest.read_text())
    assert [Path(i["file"]).name for i in manifest["imports"]] == ["a.csv", "b.csv"]


def test_changed_pseudo_labels_stop_further_imports(run) -> None:
    import_review(corrected_csv(run, {"007": ("crazing", "")}), run)
    labels = run / "03_annotation" / "pseudo_labels.csv"
    labels.write_text(labels.read_text().replace("0.75", "0.7"))
    with pytest.raises(ReviewImportError, match="changed since the earlier imports"):
        import_review(corrected_csv(run, {"1e5": ("crazing", "")}, "c.csv"), run)


def test_atomic_write_leaves_every_file_alone_when_one_cannot_be_written(tmp_path: Path) -> None:
    kept = tmp_path / "kept.csv"
    kept.write_text("old\n")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OSError):
        write_atomically({kept: "new\n", blocker / "x.csv": "new\n"})
    assert kept.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.csv", "not_a_folder"]


def test_missing_reviewed_tables_name_the_path_and_the_command(tmp_path: Path) -> None:
    outputs = ReviewedOutputs.for_run(tmp_path / "runs" / "quick")
    with pytest.raises(MissingInputError, match="review import FILE --run-dir") as caught:
        read_reviewed_tables(outputs)
    assert str(outputs.labels) in str(caught.value)


def test_format_detection_needs_a_known_shape(tmp_path: Path) -> None:
    assert detect_format(tmp_path / "x.csv") == "csv"
    odd = tmp_path / "odd.json"
    odd.write_text('{"tasks": []}')
    with pytest.raises(ReviewImportError, match="name the format with --format"):
        detect_format(odd)


def test_the_command_line_imports_and_reports_errors(run, capsys: pytest.CaptureFixture) -> None:
    path = corrected_csv(run, {"007": ("crazing", "")})
    assert main(["review", "import", str(path), "--run-dir", str(run)]) == 0
    assert "1 reviewed image(s), 1 class change(s)" in capsys.readouterr().out
    bad = corrected_csv(run, {"007": ("rust", "")}, "bad.csv")
    assert main(["review", "import", str(bad), "--format", "csv", "--run-dir", str(run)]) == 2
    assert "unknown class 'rust'" in capsys.readouterr().err

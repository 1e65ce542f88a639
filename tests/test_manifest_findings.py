"""Manifests record what ran; findings are written from the runs' files, never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.findings import findings_markdown
from cascade_defect.manifest import (
    ChapterRun,
    MissingInputError,
    read_manifest,
    require_inputs,
    tree_sha256,
)
from cascade_defect.settings import load_config
from tests.synthetic import make_byo_dataset, make_neu_like


def test_manifest_records_parameters_hashes_counts_and_timings(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path)
    source = tmp_path / "input.txt"
    source.write_text("abc")
    run = ChapterRun(
        "99_test", config, tmp_path / "out", parameters={"alpha": 1}, inputs={"source": source}
    )
    with run.timed("step"):
        run.counts["n"] = 3
    run.write({"result": tmp_path / "out" / "result.csv"})
    manifest = read_manifest(tmp_path / "out")
    assert manifest["parameters"] == {"alpha": 1}
    assert manifest["inputs"]["source"]["sha256"] == tree_sha256(source)
    assert manifest["inputs"]["source"]["path"] == "input.txt"  # relative to the work folder
    assert manifest["counts"] == {"n": 3}
    assert set(manifest["timings_s"]) == {"step", "total"}
    assert manifest["config"]["profile"] == "smoke"
    assert "commit" in manifest["git"]


def test_tree_hash_changes_with_content_and_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    first = tree_sha256(tmp_path / "a")
    (tmp_path / "a" / "x.txt").write_text("2")
    second = tree_sha256(tmp_path / "a")
    assert second != first
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert tree_sha256(tmp_path / "a") != second


def test_missing_input_names_the_chapter_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="notebook 01"):
        require_inputs({"images": tmp_path / "nope.csv"}, {"images": "notebook 01 (data strategy)"})
    config = load_config("smoke", work_dir=tmp_path)
    with pytest.raises(MissingInputError, match="notebook 01"):
        run_split(config)


def test_findings_come_from_the_run_files_and_name_what_has_not_run(tmp_path: Path) -> None:
    data = make_neu_like(tmp_path / "neu", per_class=8, duplicate=True)
    config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
    text = findings_markdown(config.paths, "smoke")
    assert "Not yet run" in text and "01 data strategy" in text
    run_data_strategy(config)
    run_split(config)
    text = findings_markdown(config.paths, "smoke")
    card = json.loads((config.paths.data_card_dir / "data_card.json").read_text())
    assert f"{card['n_images']:,} images" in text
    split = json.loads((config.paths.split_dir / "manifest.json").read_text())["counts"]
    assert (
        f"{split['n_seed']} seed / {split['n_pool']:,} pool / {split['n_test']} golden test" in text
    )
    assert "2 pixel-identical images" in text
    assert "01 data strategy" not in text.split("Not yet run")[-1]


def test_findings_and_card_overview_for_a_dataset_without_boxes(tmp_path: Path) -> None:
    from cascade_defect.chapters.c01_data import box_class_table, card_overview

    data = make_byo_dataset(tmp_path / "byo", layout="classfolders", per_class=6)
    config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
    result = run_data_strategy(config)
    assert result.card["image_level_only"] is True
    overview = card_overview(result.card)
    assert overview["boxes"] == 0
    assert overview["boxes per image (min / mean / max)"] == "none: image-level labels only"
    assert "image-level labels only" in box_class_table(result.dataset.boxes_frame())
    text = findings_markdown(config.paths, "smoke")
    assert "image-level labels only (no boxes)" in text
    assert "3 classes" in text


def test_classification_findings_come_from_the_chapter_files(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    root = config.paths.comparison_dir / "classification"
    root.mkdir(parents=True)
    (root / "test_accuracy.csv").write_text(
        "source,accuracy,ci_low,ci_high,n_test\n"
        "human,0.95,0.92,0.97,360\npseudo,0.94,0.91,0.965,360\n"
    )
    (root / "comparison.json").write_text(
        json.dumps(
            {
                "difference": -0.01,
                "difference_ci_low": -0.02,
                "difference_ci_high": 0.005,
                "ratio": 0.94 / 0.95,
                "target_ratio": 0.97,
                "target_met": True,
                "latency": {"latency_ms_median": 6.04},
            }
        )
    )
    text = findings_markdown(config.paths, "smoke")
    line = next(x for x in text.splitlines() if "Image classification" in x)
    assert "360 test images" in line
    assert "`human` 95.0% [92.0%, 97.0%]" in line and "`pseudo` 94.0% [91.0%, 96.5%]" in line
    assert "-1.0% [-2.0%, +0.5%]" in line and "98.9% of the human-label model" in line
    assert "meets the 97% target" in line and "6.0 ms" in line
    verdict = next(x for x in text.splitlines() if "Verdict, image class" in x)
    assert "yes" in verdict and "98.9% of the human-label classifier" in verdict
    assert "Verdict, detection" not in text  # chapter 06's detection files are absent


def test_files_table_names_files_relative_to_the_work_folder(tmp_path: Path) -> None:
    from cascade_defect.manifest import files_table

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text("{}")
    table = files_table(tmp_path, [tmp_path / "runs" / "a.json", tmp_path / "runs" / "b.csv"])
    assert table.to_dict("records") == [
        {"file": "runs/a.json", "exists": True},
        {"file": "runs/b.csv", "exists": False},
    ]

"""Manifests record what ran; findings are written from the runs' files, never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
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
from cascade_defect.metrics.bootstrap import Comparison, write_comparison
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
    # The work folder lies outside the project here, so paths name its variable.
    assert manifest["inputs"]["source"]["path"] == "$CASCADE_WORK_DIR/input.txt"
    assert manifest["outputs"] == {"result": "$CASCADE_WORK_DIR/out/result.csv"}
    assert manifest["counts"] == {"n": 3}
    assert set(manifest["timings_s"]) == {"step", "total"}
    assert manifest["config"]["profile"] == "smoke"
    assert "commit" in manifest["git"]
    # What a CPU training's last digits depend on: the packages and the instruction sets.
    from importlib import metadata

    environment = manifest["environment"]
    assert environment["packages"]["numpy"] == metadata.version("numpy")
    assert environment["packages"]["ultralytics"] == metadata.version("ultralytics")
    assert environment["cpu"] and isinstance(environment["cpu_isa"], list)


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


def _comparison(metric: str, human: float, pseudo: float, ci: tuple[float, float]) -> Comparison:
    ratio = pseudo / human
    return Comparison(
        metric=metric,
        reference="human",
        candidate="pseudo",
        reference_value=human,
        candidate_value=pseudo,
        difference=pseudo - human,
        difference_ci=ci,
        ratio=ratio,
        ratio_ci=(ratio - 0.02, ratio + 0.01),
        share_of_samples_candidate_worse=0.8,
        level=0.95,
        target_ratio=0.97,
        target_met=ratio >= 0.97,
    )


def test_classification_findings_come_from_the_chapter_files(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    root = config.paths.comparison_dir / "classification"
    root.mkdir(parents=True)
    (root / "test_accuracy.csv").write_text(
        "source,accuracy,ci_low,ci_high,n_test\n"
        "human,0.95,0.92,0.97,360\npseudo,0.94,0.91,0.965,360\n"
    )
    write_comparison(
        root / "comparison.json",
        _comparison("accuracy", 0.95, 0.94, (-0.02, 0.005)),
        latency={"latency_ms_median": 6.04},
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


def test_both_tracks_comparisons_read_the_same_way(tmp_path: Path) -> None:
    """Detection and classification write one comparison layout and get one sentence form."""
    config = load_config("smoke", work_dir=tmp_path / "work")
    root = config.paths.comparison_dir
    (root / "classification").mkdir(parents=True)
    (root / "test_metrics.csv").write_text(
        "source,map50,map50_ci_low,map50_ci_high\nhuman,0.7,0.67,0.73\npseudo,0.35,0.32,0.38\n"
    )
    write_comparison(
        root / "comparison.json",
        _comparison("map50", 0.7, 0.35, (-0.386, -0.32)),
        latency={"latency_ms_median": 25.4, "source": "human"},
        n_test_images=360,
    )
    (root / "classification" / "test_accuracy.csv").write_text(
        "source,accuracy,ci_low,ci_high,n_test\nhuman,0.99,0.98,1.0,360\n"
    )
    write_comparison(root / "classification" / "comparison.json", None, latency={})
    text = findings_markdown(config.paths, "smoke")
    line = next(x for x in text.splitlines() if "Golden test set (360 images)" in x)
    assert "`human` 0.700 [0.670, 0.730]; `pseudo` 0.350 [0.320, 0.380]" in line
    assert "`pseudo` − `human`: -0.350 [-0.386, -0.320], 50.0% of the human-label model" in line
    assert "(misses the 97% target)" in line and "25.4 ms" in line
    verdict = next(x for x in text.splitlines() if "Verdict, detection" in x)
    assert verdict.startswith("- **Verdict, detection (boxes, mAP50):** no: the pseudo-label")
    assert "50.0% of the human-label detector (target 97%)" in verdict
    classification = next(x for x in text.splitlines() if "Image classification" in x)
    assert "`human` 99.0%" in classification and "−" not in classification  # no pair, no sentence
    assert "Verdict, image class" not in text


def test_chapter_files_names_files_relative_to_the_run_folder(tmp_path: Path) -> None:
    """The file list a chapter closes with: its manifest's outputs, named inside the run folder,
    and marked missing when they are gone."""
    from cascade_defect.locations import portable_path
    from cascade_defect.plots.book import chapter_files
    from cascade_defect.settings import load_config

    config = load_config("smoke", work_dir=tmp_path / "work")
    folder = config.paths.run_dir / "07_cost"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    outputs = {name: portable_path(folder / name, config) for name in ("a.json", "b.csv")}
    (folder / "manifest.json").write_text(json.dumps({"outputs": outputs}))
    table = chapter_files(config, folder)
    assert table[["output", "file", "kind"]].to_dict("records") == [
        {"output": "a.json", "file": "07_cost/a.json", "kind": "file"},
        {"output": "b.csv", "file": "07_cost/b.csv", "kind": "missing"},
        {"output": "manifest", "file": "07_cost/manifest.json", "kind": "file"},
    ]


def _git(repo: Path, *args: str) -> str:
    import subprocess

    identity = ["-c", "user.name=record", "-c", "user.email=record@example.invalid"]
    return subprocess.run(
        ["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def _commit_files(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def test_a_run_is_dirty_for_code_changes_but_not_for_the_record_it_rewrites(
    tmp_path: Path,
) -> None:
    from cascade_defect.manifest import git_state

    repo = tmp_path / "checkout"
    files = {
        "_quarto.yml": "project:\n  type: book\n",
        "pyproject.toml": "[project]\nname = 'x'\n",
        "notebooks/01_data_strategy.ipynb": "{}",
        "data/runs/quick/01_data_strategy/manifest.json": "{}",
        "_findings.md": "findings\n",
        "src/module.py": "x = 1\n",
    }
    repo.mkdir()
    _git(repo, "init", "-q")
    _commit_files(repo, files, "record")
    assert git_state(repo / "notebooks") == {
        "commit": _git(repo, "rev-parse", "HEAD").strip(),
        "dirty": False,
    }
    # What the run itself rewrites: the executed notebooks, the run folder, the findings.
    for name in (
        "notebooks/01_data_strategy.ipynb",
        "data/runs/quick/01_data_strategy/manifest.json",
        "_findings.md",
    ):
        (repo / name).write_text("rewritten by the run")
    assert git_state(repo)["dirty"] is False
    # An appendix's record: its executed chapters under records/, its run folder named by the run.
    appendix = {
        "records/line/01_data_strategy.ipynb": "{}",
        "data/line/runs/quick/01_data_strategy/manifest.json": "{}",
    }
    _commit_files(repo, appendix, "appendix")
    for name in appendix:
        (repo / name).write_text("rewritten by the appendix's run")
    assert git_state(repo)["dirty"] is True  # its run folder is not the book's
    assert git_state(repo, [repo / "data" / "line" / "runs" / "quick"])["dirty"] is False
    (repo / "src" / "module.py").write_text("x = 2\n")
    assert git_state(repo, [repo / "data" / "line" / "runs" / "quick"])["dirty"] is True


def test_a_benchmark_is_clean_for_the_table_it_rewrites_and_nothing_else(tmp_path: Path) -> None:
    """A benchmark writes its committed table in place before describing itself: naming the
    table's files leaves exactly those out, not their folder's other tables."""
    from cascade_defect.manifest import git_state

    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    tables = {
        "_quarto.yml": "project:\n  type: book\n",
        "pyproject.toml": "[project]\nname = 'x'\n",
        "data/benchmarks/offline.csv": "a\n1\n",
        "data/benchmarks/offline.manifest.json": "{}",
        "data/benchmarks/other.csv": "a\n1\n",
    }
    _commit_files(repo, tables, "tables")
    written = [repo / "data/benchmarks/offline.csv", repo / "data/benchmarks/offline.manifest.json"]
    for path in written:
        path.write_text("rewritten by the benchmark")
    assert git_state(repo)["dirty"] is True
    assert git_state(repo, written)["dirty"] is False
    (repo / "data/benchmarks/other.csv").write_text("a\n2\n")
    assert git_state(repo, written)["dirty"] is True


def test_chapters_01_02_record_no_absolute_path(tmp_path: Path) -> None:
    """The files the record commits name places relative to the checkout or by their variable."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "_quarto.yml").write_text("project:\n  type: book\n")
    (checkout / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    data = make_neu_like(
        tmp_path / "shared" / "NEU-DET",
        per_class=6,
        duplicate=True,
        cross_class_box=True,
        filename_without_extension=True,
    )
    weights = tmp_path / "shared" / "yolov8n.pt"
    weights.write_bytes(b"weights")
    config = load_config(
        "smoke", data_dir=data, work_dir=checkout / "data", yolo_weights=str(weights)
    )
    run_data_strategy(config)
    run_split(config)

    run = checkout / "data" / "runs" / "smoke"
    committed = [
        run / "01_data_strategy" / name
        for name in ("manifest.json", "data_card.json", "quirks.csv")
    ] + [
        run / "02_split" / name
        for name in ("manifest.json", "classes.json", "leakage.json", "split_table.csv")
    ]
    for path in committed:
        text = path.read_text()
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, path
    manifest = read_manifest(run / "01_data_strategy")
    assert {
        k: manifest["config"][k] for k in ("data_dir", "yolo_weights", "work_dir", "run_dir")
    } == {
        "data_dir": "$CASCADE_DATA_DIR",
        "yolo_weights": "$CASCADE_YOLO_WEIGHTS",
        "work_dir": "data",
        "run_dir": "data/runs/smoke",
    }
    assert manifest["outputs"]["quirks"] == "data/runs/smoke/01_data_strategy/quirks.csv"
    split = read_manifest(run / "02_split")
    assert split["inputs"]["images"]["path"] == "data/runs/smoke/01_data_strategy/images.csv"
    card = json.loads((run / "01_data_strategy" / "data_card.json").read_text())
    assert card["root"] == "$CASCADE_DATA_DIR"
    quirks = pd.read_csv(run / "01_data_strategy" / "quirks.csv")
    assert {"cross_class_box", "mismatched_filename", "duplicate_image"} <= set(quirks["kind"])
    assert quirks["path"].str.startswith("$CASCADE_DATA_DIR/").all()

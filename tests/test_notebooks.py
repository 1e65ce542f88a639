"""Smoke execution of every chapter with papermill under the smoke profile, then the HTML preview."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from cascade_defect.render import book_appendices, build_preview, cell_options
from cascade_defect.runner import CHAPTERS, run_chapters
from cascade_defect.settings import StudyConfig, load_config
from tests.synthetic import make_byo_dataset, make_neu_like, make_production_like
from tests.test_book_structure import images_without_alt

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset when available (CI has it), else a generated NEU-like one."""
    real = os.environ.get("CASCADE_DATA_DIR")
    if real and Path(real).is_dir():
        return Path(real)
    return make_neu_like(tmp_path_factory.mktemp("neu"), per_class=20, size=96)


@dataclass(frozen=True)
class SmokeRun:
    config: StudyConfig
    executed: Path
    timings: list
    tmp_path: Path


@pytest.fixture(scope="module")
def smoke_run(
    smoke_data: Path, yolo_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> SmokeRun:
    """Every chapter executed once under the smoke profile; the tests below read its files."""
    tmp_path = tmp_path_factory.mktemp("smoke_run")
    config = load_config(
        "smoke", data_dir=smoke_data, work_dir=tmp_path / "work", yolo_weights=str(yolo_weights)
    )
    executed = tmp_path / "executed"
    with pytest.MonkeyPatch.context() as patch:
        # The kernels draw inline, as in the book, so every figure cell's image is checked.
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        timings = run_chapters(ROOT, config, output_dir=executed, progress=False)
    return SmokeRun(config, executed, timings, tmp_path)


def test_every_chapter_runs_under_the_smoke_profile_and_the_preview_links_them(
    smoke_run: SmokeRun,
) -> None:
    config, executed, tmp_path = smoke_run.config, smoke_run.executed, smoke_run.tmp_path
    assert [t.notebook for t in smoke_run.timings] == [c.notebook for c in CHAPTERS]
    for chapter in CHAPTERS:
        notebook = nbformat.read(executed / chapter.notebook, as_version=4)
        errors = [
            o
            for c in notebook.cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        assert not errors
        injected = [
            c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])
        ]
        assert injected and 'profile = "smoke"' in injected[0].source
        figures = [
            (cell_options(c.source)["label"], c)
            for c in notebook.cells
            if c.cell_type == "code"
            and str(cell_options(c.source).get("label", "")).startswith("fig-")
        ]
        assert figures, chapter.notebook
        for label, cell in figures:
            images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert len(images) == 1, f"{chapter.notebook} {label}: {len(images)} images"
    split_manifest = config.paths.split_dir / "manifest.json"
    assert split_manifest.exists()

    site = build_preview(ROOT, notebooks_dir=executed, out_dir=tmp_path / "site")
    pages = sorted(p.name for p in site.glob("*.html"))
    assert "index.html" in pages and len(pages) == len(CHAPTERS) + 1 + len(book_appendices(ROOT))
    index = (site / "index.html").read_text()
    for chapter in CHAPTERS:
        assert f'href="{Path(chapter.notebook).stem}.html"' in index
    assert "{{<" not in index  # includes resolved
    assert not images_without_alt(site)


def _run_script(name: str, config: StudyConfig, *args: str) -> dict:
    """Run one of scripts/ on the smoke run's files and return the figures it wrote."""
    figures = config.work_dir / f"{name}.json"
    env = {
        **os.environ,
        "CASCADE_WORK_DIR": str(config.work_dir),
        "CASCADE_DATA_DIR": str(config.data_dir),
        "CASCADE_YOLO_WEIGHTS": str(config.yolo_weights),
    }
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / name),
            "--profile",
            "smoke",
            *args,
            "--scratch",
            str(config.work_dir / f"scratch_{name}"),
            "--json",
            str(figures),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(figures.read_text())


def test_the_box_and_schedule_benchmarks_run_on_the_chapters_outputs(smoke_run: SmokeRun) -> None:
    boxes = _run_script("bench_seed_detector.py", smoke_run.config, "--conf", "0.01", "0.5")
    assert [row["conf"] for row in boxes["rows"]] == [0.01, 0.5]
    low, high = boxes["rows"]
    assert low["boxes"] >= high["boxes"]  # a lower threshold keeps every box a higher one keeps
    assert all(0 <= row[k] <= 1 for row in boxes["rows"] for k in ("recall", "precision"))
    ensemble = _run_script(
        "bench_seed_detector.py",
        smoke_run.config,
        "--conf",
        "0.01",
        "--set",
        "annotation.seed_detector_ensemble={members: 2}",
    )
    assert ensemble["settings"]["ensemble"] == {"members": 2, "member_conf": 0.01}
    assert len(ensemble["member_train_seconds"]) == 1  # the second member trained as well

    schedule = _run_script(
        "bench_training_schedule.py",
        smoke_run.config,
        "--epochs",
        "1",
        "--arg",
        "nbs=8",
        "--bootstrap",
        "20",
    )
    assert (schedule["epochs"], schedule["extra"]["nbs"]) == (1, 8)
    low_ci, high_ci = schedule["test_map50_ci"]
    assert 0 <= low_ci <= high_ci <= 1 and 0 <= schedule["test_map50"] <= 1


def test_the_study_runs_on_a_class_folder_dataset_and_says_which_track_to_read(
    yolo_weights: Path, tmp_path: Path
) -> None:
    """A user's dataset with class folders only (no boxes, spaces in class names, mixed formats)
    and a declared defect-free class (``good``), which class folders alone cannot reveal."""
    classes = ("hole punch", "oil stain", "scratch", "good")
    data = make_byo_dataset(tmp_path / "byo", layout="classfolders", classes=classes, per_class=16)
    config = load_config(
        "smoke",
        data_dir=data,
        work_dir=tmp_path / "work",
        yolo_weights=str(yolo_weights),
        no_defect_class="good",
    )
    executed = tmp_path / "executed"
    run_chapters(ROOT, config, output_dir=executed, progress=False)
    for chapter in ("05_yolo_training.ipynb", "06_test_comparison.ipynb"):
        notebook = nbformat.read(executed / chapter, as_version=4)
        shown = "".join(
            str(output.get("data", {}).get("text/markdown", ""))
            for cell in notebook.cells
            for output in cell.get("outputs", [])
        )
        assert "image-level labels only" in shown, chapter
    card = config.paths.data_card_dir / "data_card.json"
    assert '"image_level_only": true' in card.read_text()
    assert json.loads(card.read_text())["no_defect"]["how"] == "declared"
    names = json.loads((config.paths.split_dir / "classes.json").read_text())["class_names"]
    assert names == ["hole punch", "oil stain", "scratch"]
    accuracy = pd.read_csv(config.paths.comparison_dir / "classification" / "test_accuracy.csv")
    assert set(accuracy["source"]) == set(config.profile.classification.sources)
    assert accuracy["accuracy"].between(0, 1).all()
    detection = pd.read_csv(config.paths.comparison_dir / "test_metrics.csv")
    assert len(detection)  # the detection track still ran, on whole-image boxes


def test_the_study_runs_on_a_production_like_line_through_the_cli(
    yolo_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect-free majority (detected), masks in a parallel folder, numbered names, class names
    with spaces, sizes of 100-700 px, grey and RGB, one defect image with an empty mask."""
    from cascade_defect.cli import main

    data = make_production_like(
        tmp_path / "line", defect_counts={"crack": 14, "blow hole": 9, "fray": 7}, n_free=40
    )
    out = tmp_path / "mine" / "notebooks"
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", str(yolo_weights))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.chdir(ROOT)
    args = [
        "run",
        "--profile",
        "smoke",
        "--data-dir",
        str(data),
        "--work-dir",
        str(tmp_path / "mine"),
    ]
    assert main([*args, "--output-dir", str(out)]) == 0

    run_dir = tmp_path / "mine" / "runs" / "smoke"
    card = json.loads((run_dir / "01_data_strategy" / "data_card.json").read_text())
    assert card["no_defect"]["from_classes"] == ["Free"] and card["no_defect"]["how"] == "detected"
    assert card["class_names"] == ["blow hole", "crack", "fray"]
    assert card["quirks"].get("defect_image_without_boxes") == 1
    classes = json.loads((run_dir / "02_split" / "classes.json").read_text())
    assert classes["no_defect"]["n_images"] > 0
    seeds = pd.read_csv(run_dir / "02_split" / "seed.csv", dtype={"image_id": str})
    assert (seeds["class_name"] == "no_defect").any() and seeds["image_id"].str.isdigit().all()
    labels = pd.read_csv(run_dir / "03_annotation" / "pseudo_labels.csv", dtype={"image_id": str})
    assert (labels["defect_class"] == "no_defect").any()  # the annotator may answer it
    # Defect-free tiles exist, so a defective answer without a detector box is left out of
    # detector training rather than given a whole-tile box.
    annotation = json.loads((run_dir / "03_annotation" / "summary.json").read_text())
    assert annotation["whole_image_fallback"] is False
    boxes = pd.read_csv(run_dir / "03_annotation" / "pseudo_boxes.csv", dtype={"image_id": str})
    found = set(boxes.loc[boxes["strategy"] == "seed_detector", "image_id"])
    free = set(labels.loc[labels["defect_class"] == "no_defect", "image_id"])
    files = {p.stem for p in (run_dir / "03_annotation/yolo/seed_detector/labels").glob("*.txt")}
    assert files == found | free  # a boxless defective answer gets no (background) label file
    audit = json.loads((run_dir / "04_audit" / "audit_summary.json").read_text())
    rates = audit["defect_rates"]
    assert rates["n_defect_free"] > 0 and 0 <= rates["false_alarm_rate"] <= 1
    defect_rates = pd.read_csv(run_dir / "06_comparison" / "defect_rates.csv")
    assert defect_rates["false_alarm_rate"].between(0, 1).all()
    cascade = pd.read_csv(run_dir / "06_comparison" / "cascade.csv")
    assert {"n_cleared", "defect_recall", "false_alarm_rate"} <= set(cascade.columns)
    assert (out / "_preview" / "index.html").exists() or (out / "_book" / "index.html").exists()

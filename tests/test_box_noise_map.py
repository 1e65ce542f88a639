"""Chapter 06's box-noise map: the sweep's manifest, the map, the needed-quality table, and the
notebook section, each on generated tables (no training)."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cascade_defect.hashing import tree_sha256
from cascade_defect.plots.book import manifest_path
from cascade_defect.plots.box_noise import (
    BoxNoiseBenchmark,
    PseudoBoxes,
    box_noise_map,
    box_noise_summary,
    needed_quality,
    needed_quality_table,
    pseudo_box_quality,
    quality_needed,
    read_box_noise_benchmark,
    sweep_pseudo_ratio,
    sweep_rows,
)
from cascade_defect.settings import load_config
from tests.test_layout import absolute_paths_in_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_test_comparison.ipynb"

_COLUMNS = ["source", "kind", "level", "box_recall", "box_precision", "mean_iou", "map50", "ratio"]


def sweep_table() -> pd.DataFrame:
    """A finished sweep as the script writes it, plus one row of an earlier, longer schedule."""
    rows = [
        ("human", "human", math.nan, 1.0, 1.0, 1.0, 0.60, 1.0),
        ("box_drop_0.2", "drop", 0.2, 0.8, 1.0, 0.8, 0.588, 0.98),
        ("box_drop_0.4", "drop", 0.4, 0.6, 1.0, 0.6, 0.528, 0.88),
        ("box_merge_0.1", "merge", 0.1, 0.9, 0.9, 0.9, 0.57, 0.95),
        ("box_false_boxes_1", "false_boxes", 1.0, 1.0, 0.7, 1.0, 0.594, 0.99),
        ("box_false_boxes_3", "false_boxes", 3.0, 1.0, 0.45, 1.0, 0.585, 0.975),
        ("box_jitter_0.7", "jitter", 0.7, 1.0, 1.0, 0.7, 0.558, 0.93),
        ("box_jitter_0.5", "jitter", 0.5, 0.95, 0.95, 0.5, 0.42, 0.70),
        ("box_drop_0.6", "drop", 0.6, 0.4, 1.0, 0.4, 0.2, 0.3),
    ]
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table["epochs"] = [5] * 8 + [10]
    table["imgsz"] = 256
    table["train_wall_seconds"] = 100.0
    return table


PSEUDO = PseudoBoxes(
    strategy="seed_detector", box_recall=0.62, box_precision=0.21, mean_iou=0.53, ratio=0.49
)


def box_metrics_table() -> pd.DataFrame:
    """Chapter 04's ``box_metrics.csv``: two strategies, per class and ``all``."""
    rows = []
    for strategy, shift in (("seed_detector", 0.0), ("whole_image", -0.5)):
        for name in ("crazing", "all"):
            rows.append(
                {
                    "strategy": strategy,
                    "class_name": name,
                    "n_gt": 10,
                    "n_pred": 20,
                    "mean_best_iou": 0.55 + shift,
                    "mean_best_iou_same_class": 0.53 + shift,
                    "recall_aware": 0.62 + shift / 2,
                    "precision_aware": 0.21 + shift / 4,
                    "recall_agnostic": 0.65 + shift / 2,
                    "precision_agnostic": 0.22 + shift / 4,
                    "n_images": 5,
                }
            )
    return pd.DataFrame(rows)


COMPARISON = {"metric": "map50", "reference": "human", "candidate": "pseudo", "ratio": 0.49}


# --------------------------------------------------------------------------- reading


def test_rows_of_another_schedule_are_left_out() -> None:
    rows, left_out = sweep_rows(sweep_table())
    assert left_out == 1 and "box_drop_0.6" not in set(rows["source"])
    no_anchor, all_out = sweep_rows(sweep_table().iloc[1:])
    assert no_anchor.empty and all_out == 8


def test_the_pseudo_source_is_placed_by_its_class_aware_overall_row() -> None:
    pseudo = pseudo_box_quality(box_metrics_table(), "seed_detector", COMPARISON, epochs=10)
    assert pseudo is not None
    assert (pseudo.box_recall, pseudo.box_precision, pseudo.mean_iou) == (0.62, 0.21, 0.53)
    assert (pseudo.ratio, pseudo.epochs) == (0.49, 10)
    other = pseudo_box_quality(box_metrics_table(), "whole_image", {})
    assert other is not None and other.ratio is None
    assert other.mean_iou == pytest.approx(0.03)
    swapped = {**COMPARISON, "candidate": "seed_only"}
    assert pseudo_box_quality(box_metrics_table(), "seed_detector", swapped).ratio is None
    assert pseudo_box_quality(box_metrics_table(), "self_training") is None
    assert pseudo_box_quality(Path("/nonexistent/box_metrics.csv"), "seed_detector") is None


def test_an_absent_benchmark_reads_as_none_and_every_view_says_so(tmp_path: Path) -> None:
    benchmark = read_box_noise_benchmark("data/benchmarks/box_noise.csv", tmp_path)
    assert benchmark.table is None and benchmark.path == "data/benchmarks/box_noise.csv"
    text = box_noise_summary(benchmark).data
    assert "No box-noise benchmark" in text and "`data/benchmarks/box_noise.csv`" in text
    assert isinstance(needed_quality_table(None), str)
    figure = box_noise_map(None)
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    assert "no box-noise benchmark" in figure.axes[0].texts[0].get_text()
    plt.close(figure)
    assert read_box_noise_benchmark(None, tmp_path).table is None


def test_a_present_benchmark_is_read_with_its_manifest(tmp_path: Path) -> None:
    table = tmp_path / "data" / "benchmarks" / "box_noise.csv"
    table.parent.mkdir(parents=True)
    sweep_table().to_csv(table, index=False)
    manifest = {
        "parameters": {"schedule": {"epochs": 5, "imgsz": 256, "batch": 16, "device": "cpu"}},
        "git": {"commit": "0123456789abcdef"},
        "complete": True,
    }
    manifest_path(table).write_text(json.dumps(manifest))
    assert manifest_path(table).name == "box_noise.manifest.json"
    metrics = tmp_path / "box_metrics.csv"
    box_metrics_table().to_csv(metrics, index=False)
    benchmark = read_box_noise_benchmark(
        "data/benchmarks/box_noise.csv", tmp_path, metrics, "seed_detector", COMPARISON, 10
    )
    assert benchmark.table is not None and len(benchmark.table) == 9
    assert benchmark.manifest["git"]["commit"].startswith("0123")
    assert benchmark.pseudo is not None and benchmark.pseudo.ratio == 0.49
    text = box_noise_summary(benchmark).data
    assert "7 spoiled versions" in text and "5 epochs at image size 256" in text
    assert "read from its manifest" in text and "`0123456789`" in text
    assert "another schedule are left out (1)" in text
    assert "not chapter 5's (10 epochs)" in text
    assert "49% of the human model's test mAP50" in text
    assert "box recall for `drop` (needs 0.78, has 0.62)" in text
    assert "On box precision the pseudo-boxes lie below every level tried" in text


def _with_pseudo_row(epochs: int = 5) -> pd.DataFrame:
    """The sweep's table with the pseudo source trained on a schedule (``--pseudo``)."""
    row = pd.DataFrame(
        [("pseudo", "pseudo", math.nan, 0.66, 0.33, 0.58, 0.492, 0.82)], columns=_COLUMNS
    ).assign(epochs=epochs, imgsz=256, train_wall_seconds=100.0)
    return pd.concat([sweep_table(), row], ignore_index=True)


def test_the_sweeps_own_pseudo_row_is_the_share_the_map_compares(tmp_path: Path) -> None:
    """Trained on the sweep's schedule, the pseudo source's share is the filled star and the one a
    mix is compared with; chapter 5's share stays, hollow; it is not a spoiled version."""
    table = tmp_path / "data" / "benchmarks" / "box_noise.csv"
    table.parent.mkdir(parents=True)
    _with_pseudo_row().to_csv(table, index=False)
    manifest_path(table).write_text(json.dumps({"complete": True}))
    metrics = tmp_path / "box_metrics.csv"
    box_metrics_table().to_csv(metrics, index=False)
    benchmark = read_box_noise_benchmark(
        "data/benchmarks/box_noise.csv", tmp_path, metrics, "seed_detector", COMPARISON, 10
    )
    pseudo = benchmark.pseudo
    assert pseudo is not None and pseudo.ratio == 0.49
    assert pseudo.sweep_ratio == pytest.approx(0.82) and pseudo.ratio_on_map == pytest.approx(0.82)
    text = box_noise_summary(benchmark).data
    assert "7 spoiled versions" in text
    assert "49% of the human model's test mAP50 after 10 epochs" in text
    assert "it kept 82% of the anchor" in text
    figure = box_noise_map(benchmark.table, pseudo)
    stars = _pseudo_markers(figure, "*")
    filled = [tuple(s.get_xydata()[0]) for s in stars if s.get_markerfacecolor() != "none"]
    hollow = [tuple(s.get_xydata()[0]) for s in stars if s.get_markerfacecolor() == "none"]
    assert filled == [(0.62, 0.82), (0.21, 0.82), (0.53, 0.82)]
    assert hollow == [(0.62, 0.49), (0.21, 0.49), (0.53, 0.49)]
    plt.close(figure)

    assert sweep_pseudo_ratio(_with_pseudo_row(epochs=10)) is None  # not the anchor's schedule
    assert sweep_pseudo_ratio(sweep_table()) is None
    without = read_box_noise_benchmark(
        "data/benchmarks/box_noise.csv", tmp_path, None, None, COMPARISON, 10
    )
    assert without.pseudo is None and "7 spoiled versions" in box_noise_summary(without).data


def test_label_box_quality_judges_what_a_source_trained_on() -> None:
    """YOLO labels back in pixels against the truth, over the listed images only (text ids)."""
    from cascade_defect.metrics.box_quality import label_box_quality

    sizes = pd.DataFrame({"image_id": [7, 8, 9], "width": 100, "height": 50})
    truth = pd.DataFrame(
        {
            "image_id": ["7", "8", "9", "11"],
            "class_name": "crazing",
            "xmin": [10.0, 0.0, 0.0, 0.0],
            "ymin": [10.0, 0.0, 0.0, 0.0],
            "xmax": [30.0, 50.0, 20.0, 10.0],
            "ymax": [30.0, 50.0, 20.0, 10.0],
        }
    )
    labels = pd.DataFrame(
        {
            "image_id": ["7", "8", "8", "10"],
            "class_id": [0, 0, 1, 0],
            "cx": [0.2, 0.25, 0.8, 0.5],
            "cy": [0.4, 0.4, 0.1, 0.5],
            "w": [0.2, 0.5, 0.2, 0.2],
            "h": [0.4, 0.8, 0.2, 0.2],
        }
    )
    # 7: exact; 8: [0, 0, 50, 40] on [0, 0, 50, 50] (IoU 0.8) and a false box; 9: missed;
    # 10 and 11 are not listed.
    quality = label_box_quality(truth, labels, sizes)
    assert quality["n_truth"] == 3 and quality["n_boxes"] == 3
    assert quality["box_recall"] == pytest.approx(2 / 3)
    assert quality["box_precision"] == pytest.approx(2 / 3)
    assert quality["mean_iou"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)


# --------------------------------------------------------------------------- needed quality


def test_needed_quality_reuses_the_sweeps_reading_and_adds_the_pseudo_source() -> None:
    table = sweep_table()
    needed = needed_quality(table, PSEUDO)
    rows, _ = sweep_rows(table)
    pd.testing.assert_frame_equal(
        needed.drop(columns=["pseudo_has", "pseudo_meets"]), quality_needed(rows, (0.9, 0.97))
    )
    at = needed.set_index(["kind", "target"])
    assert at.loc[("drop", 0.97), "quality_needed"] == pytest.approx(0.78)
    assert at.loc[("drop", 0.9), "quality_needed"] == pytest.approx(0.64)
    assert at.loc[("merge", 0.97), "quality_needed"] == pytest.approx(0.94)
    assert at.loc[("jitter", 0.97), "quality_needed"] == pytest.approx(1 - 0.3 * 3 / 7)
    assert at.loc[("false_boxes", 0.97), "note"] == "not reached"
    assert at.loc[("drop", 0.97), "pseudo_meets"] == "no"
    assert at.loc[("false_boxes", 0.97), "pseudo_meets"].startswith("not known")
    assert at.loc[("merge", 0.9), "pseudo_meets"] == "not known (below every level tried)"
    generous = PSEUDO.model_copy(update={"box_recall": 0.95, "box_precision": 0.5})
    again = needed_quality(table, generous).set_index(["kind", "target"])
    assert again.loc[("merge", 0.9), "pseudo_meets"] == "yes"
    assert again.loc[("false_boxes", 0.97), "pseudo_meets"] == "yes"

    shown = needed_quality_table(table, PSEUDO)
    assert isinstance(shown, pd.DataFrame) and len(shown) == 8
    assert set(shown["axis"]) == {"box recall", "box precision", "mean best IoU"}
    assert {"pseudo (seed_detector) has", "pseudo clears it"} <= set(shown.columns)
    assert "no clean anchor row" in needed_quality_table(table.iloc[1:], PSEUDO)


# --------------------------------------------------------------------------- the map


def _pseudo_markers(figure: Figure, marker: str) -> list:
    return [
        line
        for ax in figure.axes
        for line in ax.get_lines()
        if line.get_marker() == marker and str(line.get_label()).startswith("pseudo")
    ]


def test_the_map_has_one_panel_per_axis_with_the_bars_and_the_pseudo_source() -> None:
    figure = box_noise_map(sweep_table(), PSEUDO)
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    labels = [ax.get_xlabel() for ax in figure.axes]
    assert labels == ["box recall", "box precision", "mean best IoU"]
    stars = _pseudo_markers(figure, "*")
    assert len(stars) == 3
    assert [tuple(s.get_xydata()[0]) for s in stars] == [(0.62, 0.49), (0.21, 0.49), (0.53, 0.49)]
    for ax in figure.axes:
        bars = {
            round(line.get_ydata()[0], 2)
            for line in ax.get_lines()
            if "anchor" in str(line.get_label())
        }
        assert bars == {0.9, 0.97}
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert {"drop", "merge"} <= set(legend)
    plt.close(figure)

    without_share = box_noise_map(sweep_table(), PSEUDO.model_copy(update={"ratio": None}))
    assert len(_pseudo_markers(without_share, "^")) == 3 and not _pseudo_markers(without_share, "*")
    plt.close(without_share)
    bare = box_noise_map(sweep_table())
    assert len(bare.axes) == 3 and not _pseudo_markers(bare, "*")
    plt.close(bare)


def test_a_mix_is_a_diamond_at_its_own_quality_on_every_panel_and_a_sentence() -> None:
    mix_row = (
        "box_mix_drop0.4_jitter0.7_false_boxes1.2",
        "mix",
        math.nan,
        0.55,
        0.9,
        0.62,
        0.3,
        0.5,
    )
    table = pd.concat(
        [sweep_table(), pd.DataFrame([mix_row], columns=_COLUMNS)], ignore_index=True
    ).assign(epochs=[5] * 8 + [10, 5], imgsz=256)
    figure = box_noise_map(table, PSEUDO)
    diamonds = [
        tuple(line.get_xydata()[0])
        for ax in figure.axes
        for line in ax.get_lines()
        if line.get_marker() == "D"
    ]
    assert diamonds == [(0.55, 0.5), (0.9, 0.5), (0.62, 0.5)]
    assert "several at once" in figure._suptitle.get_text()
    plt.close(figure)
    # the mix is on no single kind's line, so it moves no needed-quality reading
    assert "mix" not in set(quality_needed(table).kind)
    text = box_noise_summary(
        BoxNoiseBenchmark(table=table, manifest={}, path="b.csv", pseudo=PSEUDO)
    ).data
    assert "several ways at once (drop 0.4, jitter 0.7, false_boxes 1.2): box recall 0.55" in text
    assert "kept 50% of the anchor's mAP50" in text
    # within 0.1 of the pseudo-boxes (0.62 / 0.21 / 0.53) it would be compared; this one is not
    assert "Its boxes are within" not in text
    close = table.copy()
    close.loc[close["kind"] == "mix", ["box_recall", "box_precision", "mean_iou"]] = [
        0.6,
        0.25,
        0.5,
    ]
    text = box_noise_summary(
        BoxNoiseBenchmark(table=close, manifest={}, path="b.csv", pseudo=PSEUDO)
    ).data
    assert "yet the pseudo-label detector kept 49%: the pseudo-boxes' errors cost more than" in text
    on_schedule = PSEUDO.model_copy(update={"sweep_ratio": 0.8})  # trained with --pseudo
    text = box_noise_summary(
        BoxNoiseBenchmark(table=close, manifest={}, path="b.csv", pseudo=on_schedule)
    ).data
    assert "and the pseudo-label detector kept 80%: the pseudo-boxes' errors cost no more" in text


# --------------------------------------------------------------------------- the notebook section


def _run_cell(source: str, namespace: dict) -> object:
    """Run a cell as Jupyter does: its last expression's value is what it shows."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)


def _section_cells() -> tuple[list[str], list[str]]:
    """The code of notebook 06's parameters and imports cells, and of the box-noise section."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    tags = [c.metadata.get("tags", []) for c in cells]
    setup = [c.source for c, t in zip(cells, tags, strict=True) if "parameters" in t]
    setup += [c.source for c in cells if c.source.startswith("from IPython.display")]
    (start,) = [i for i, c in enumerate(cells) if "## What box quality would be enough" in c.source]
    end = next(i for i in range(start + 1, len(cells)) if cells[i].source.startswith("## "))
    section = [c.source for c in cells[start:end] if c.cell_type == "code"]
    return setup, section


@pytest.mark.parametrize("present", [True, False], ids=["benchmark", "no benchmark"])
def test_the_notebook_section_runs_on_generated_files(tmp_path: Path, present: bool) -> None:
    setup, section = _section_cells()
    assert len(setup) == 2 and len(section) == 3
    namespace: dict = {}
    _run_cell(setup[0], namespace)
    namespace.update(profile="smoke", work_dir=str(tmp_path / "work"))
    _run_cell(setup[1], namespace)
    config = namespace["config"]
    config.paths.audit_dir.mkdir(parents=True)
    box_metrics_table().to_csv(config.paths.audit_dir / "box_metrics.csv", index=False)
    table = config.work_dir / "benchmarks" / "sweep.csv"
    if present:
        table.parent.mkdir(parents=True)
        sweep_table().to_csv(table, index=False)
    namespace["box_noise_table"] = "$CASCADE_WORK_DIR/benchmarks/sweep.csv"
    namespace["result"] = SimpleNamespace(comparison=COMPARISON)
    text, figure, needed = (_run_cell(source, namespace) for source in section)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == (3 if present else 1)
    plt.close(figure)
    if present:
        assert "5 epochs at image size 256" in text.data
        assert "its table (no manifest beside it)" in text.data
        assert isinstance(needed, pd.DataFrame) and "pseudo clears it" in needed.columns
    else:
        assert "No box-noise benchmark in this run" in text.data
        assert "`$CASCADE_WORK_DIR/benchmarks/sweep.csv`" in text.data
        assert isinstance(needed, str)
    assert "recall 0.62" in text.data or "box recall 0.62" in text.data


# --------------------------------------------------------------------------- the sweep's manifest


def test_the_sweeps_manifest_holds_only_portable_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_script
) -> None:
    script = load_script("bench_box_noise")
    weights = tmp_path / "weights" / "yolov8n.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    config = load_config("smoke", work_dir=tmp_path / "work", yolo_weights=str(weights))
    pool = config.paths.split_dir / "pool.csv"
    pool.parent.mkdir(parents=True)
    pool.write_text("image_id,file\n1,a.jpg\n")
    csv = tmp_path / "bench" / "box_noise_5ep.csv"
    record = script.SweepManifest(
        config,
        csv,
        csv.parent / "box_noise_5ep_runs",
        parameters={"run_dir": config.paths.run_dir, "schedule": {"epochs": 5, "imgsz": 256}},
        inputs={"pool": pool, "yolo_weights": weights, "gone": config.paths.split_dir / "x.csv"},
        requested=["human", "box_drop_0.2", "box_drop_0.4"],
        counts={"n_pool_images": 1},
    )
    table = sweep_table().iloc[:2]
    written = record.write(table, current={"human", "box_drop_0.2"})
    assert written == manifest_path(csv) and written.name == "box_noise_5ep.manifest.json"
    assert not absolute_paths_in_file(written)
    manifest = json.loads(written.read_text())
    assert manifest["inputs"]["pool"] == {
        "path": "$CASCADE_WORK_DIR/runs/smoke/02_split/pool.csv",
        "sha256": tree_sha256(pool),
    }
    assert manifest["inputs"]["yolo_weights"]["path"] == "$CASCADE_YOLO_WEIGHTS"
    assert manifest["inputs"]["gone"]["sha256"] is None
    assert manifest["parameters"]["run_dir"] == "$CASCADE_WORK_DIR/runs/smoke"
    assert manifest["outputs"]["table"] == "box_noise_5ep.csv"
    assert manifest["outputs"]["scratch"] == "box_noise_5ep_runs"
    assert manifest["complete"] is False
    assert manifest["sources"]["missing_or_stale"] == ["box_drop_0.4"]
    assert manifest["counts"] == {"n_pool_images": 1, "n_requested": 3, "n_rows": 2}
    assert manifest["timings_s"]["training_of_requested_rows"] == 200.0
    assert set(manifest["git"]) == {"commit", "dirty"}
    # Trainings in a benchmark depend on the packages and the CPU as a chapter's do.
    assert manifest["environment"]["packages"]["ultralytics"]
    assert isinstance(manifest["environment"]["cpu_isa"], list)
    done = json.loads(record.write(table, {"human", "box_drop_0.2", "box_drop_0.4"}).read_text())
    assert done["complete"] is True


def _sweep_command(run_dir: Path, csv: Path, *extra: str) -> list[str]:
    """The sweep on a run folder: one drop level, one epoch at 64 px."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "bench_box_noise.py"),
        *("--run-dir", str(run_dir), "--noise", "drop=0.5", "--epochs", "1", "--imgsz", "64"),
        *("--csv", str(csv), *extra),
    ]


def _run_sweep(
    command: list[str], weights: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """The sweep's command in the project root, which must succeed; its output for the checks."""
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CASCADE_YOLO_WEIGHTS": str(weights), "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def split_run(tmp_path: Path):
    """Chapters 01-02 on a small generated dataset: what the sweep reads."""
    from cascade_defect.chapters.c01_data import run_data_strategy
    from cascade_defect.chapters.c02_split import run_split
    from tests.synthetic import make_neu_like

    data = make_neu_like(tmp_path / "neu", per_class=4, size=48)
    config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
    run_data_strategy(config)
    run_split(config)
    return config


def test_manifest_only_writes_the_manifest_and_trains_nothing(
    split_run, yolo_weights: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "bench" / "sweep.csv"
    done = _run_sweep(_sweep_command(split_run.paths.run_dir, csv, "--manifest-only"), yolo_weights)
    assert done.stdout.count("--manifest-only trains nothing") == 2
    assert not csv.exists() and not (csv.parent / "sweep_runs" / "runs").exists()
    manifest = json.loads(manifest_path(csv).read_text())
    assert manifest["complete"] is False
    assert manifest["sources"]["requested"] == ["human", "box_drop_0.5"]
    assert manifest["parameters"]["schedule"]["epochs"] == 1
    assert manifest["parameters"]["noise"] == [{"kind": "drop", "level": 0.5, "seed": 0}]
    assert manifest["inputs"]["pool_boxes"]["path"].startswith("$CASCADE_WORK_DIR/runs/smoke/")
    assert all(entry["sha256"] for entry in manifest["inputs"].values())
    assert not absolute_paths_in_file(manifest_path(csv))


def test_another_training_seed_of_the_anchor_alone(
    split_run, yolo_weights: Path, tmp_path: Path
) -> None:
    """``--noise`` with nothing after it asks for the anchor alone; ``--training-seed`` changes
    the schedule's seed (so the fingerprint) and nothing else."""
    csv = tmp_path / "bench" / "seed3.csv"
    command = _sweep_command(split_run.paths.run_dir, csv, "--manifest-only")
    command[command.index("drop=0.5")] = "--training-seed"
    command.insert(command.index("--training-seed") + 1, "3")
    done = _run_sweep(command, yolo_weights)
    assert "ultralytics seed 3," in done.stdout
    manifest = json.loads(manifest_path(csv).read_text())
    assert manifest["sources"]["requested"] == ["human"]
    assert manifest["parameters"]["noise"] == []
    assert manifest["parameters"]["schedule"]["seed"] == 3
    assert manifest["parameters"]["val_fraction"] == split_run.profile.training.val_fraction


def test_a_sweep_made_on_another_test_set_is_not_drawn_against_this_run(tmp_path: Path) -> None:
    from cascade_defect.data.split import SplitLayout

    config = load_config("smoke", work_dir=tmp_path / "work")
    listing = SplitLayout(config.paths.split_dir).test_listing
    listing.parent.mkdir(parents=True)
    listing.write_text("image_id,class_name\nx,crazing\n")
    table = tmp_path / "box_noise.csv"
    sweep_table().to_csv(table, index=False)
    entry = {"path": "$CASCADE_WORK_DIR/runs/quick/02_split/test.csv", "sha256": "2" * 64}
    manifest_path(table).write_text(json.dumps({"inputs": {"test": entry}}))
    benchmark = read_box_noise_benchmark(str(table), config)
    assert benchmark.table is None and benchmark.other_test_set
    text = box_noise_summary(benchmark).data
    assert "box-noise benchmark" in text and "is not shown" in text
    figure = box_noise_map(benchmark.table, benchmark.pseudo)
    assert len(figure.axes) == 1  # the message figure
    plt.close(figure)


def test_a_sweep_made_on_other_pseudo_labels_is_drawn_with_a_note(tmp_path: Path) -> None:
    """The same golden test set, other pseudo-labels (the run annotated again since): the rows
    stay, and the summary says which inputs differ and what that changes."""
    from cascade_defect.data.split import SplitLayout
    from cascade_defect.hashing import sha256_file

    config = load_config("smoke", work_dir=tmp_path / "work")
    listing = SplitLayout(config.paths.split_dir).test_listing
    listing.parent.mkdir(parents=True)
    listing.write_text("image_id,class_name\nx,crazing\n")
    labels = config.paths.annotation_dir / "pseudo_labels.csv"
    boxes = labels.with_name("pseudo_boxes.csv")
    labels.parent.mkdir(parents=True)
    labels.write_text("image_id,defect_class\nx,crazing\n")
    boxes.write_text("image_id,strategy\nx,seed_detector\n")
    run = "$CASCADE_WORK_DIR/runs/smoke"
    inputs = {
        "test": {"path": f"{run}/02_split/test.csv", "sha256": sha256_file(listing)},
        "pseudo_labels": {"path": f"{run}/03_annotation/pseudo_labels.csv", "sha256": "3" * 64},
        "pseudo_boxes": {
            "path": f"{run}/03_annotation/pseudo_boxes.csv",
            "sha256": sha256_file(boxes),
        },
    }
    table = tmp_path / "box_noise.csv"
    sweep_table().to_csv(table, index=False)
    manifest_path(table).write_text(json.dumps({"inputs": inputs}))
    benchmark = read_box_noise_benchmark(str(table), config)
    assert benchmark.table is not None and benchmark.other_test_set is None
    assert benchmark.other_pseudo_labels == (
        "it was made on other pseudo-labels than this run's "
        "(its `03_annotation/pseudo_labels.csv` differs from this run's)"
    )
    assert (
        "false boxes and fragments come from that annotation's" in box_noise_summary(benchmark).data
    )
    inputs["pseudo_labels"]["sha256"] = sha256_file(labels)  # the labels the run has now
    manifest_path(table).write_text(json.dumps({"inputs": inputs}))
    again = read_box_noise_benchmark(str(table), config)
    assert again.other_pseudo_labels is None
    assert "other pseudo-labels" not in box_noise_summary(again).data


@pytest.mark.slow
def test_the_sweep_trains_the_pseudo_source_on_its_own_schedule(
    tmp_path: Path, yolo_weights: Path
) -> None:
    """``--pseudo``: chapter 05's pseudo source, assembled from chapter 03's files, trained on the
    sweep's schedule beside the anchor, judged on the labels it trained on; a rerun reuses it."""
    from cascade_defect.chapters.c01_data import run_data_strategy
    from cascade_defect.chapters.c02_split import run_split
    from cascade_defect.chapters.c03_annotation import run_annotation
    from cascade_defect.chapters.c05_training import assemble_source
    from cascade_defect.data.split import SplitLayout, read_pool_ground_truth
    from tests.synthetic import make_neu_like

    data = make_neu_like(tmp_path / "neu", per_class=4, size=48)
    config = load_config(
        "smoke", data_dir=data, work_dir=tmp_path / "work", yolo_weights=str(yolo_weights)
    )
    run_data_strategy(config)
    run_split(config)
    run_annotation(config, annotator="offline", box_strategies=("seed_detector",), progress=False)
    csv = tmp_path / "bench" / "sweep.csv"
    command = _sweep_command(config.paths.run_dir, csv, "--pseudo", "--verified", "1")
    done = _run_sweep(command, yolo_weights, timeout=900)
    assert "pseudo: training (chapter 03's pseudo-labels" in done.stdout
    table = pd.read_csv(csv)
    assert list(table["kind"]) == ["human", "drop", "pseudo", "verified"]
    # a verifier never wrong keeps only boxes that find a defect of their class
    verified = table[table["kind"] == "verified"].iloc[0]
    assert verified["source"] == "verified_1" and verified["level"] == 1.0
    assert verified["n_boxes"] <= table.loc[table["kind"] == "pseudo", "n_boxes"].iloc[0]
    assert verified["n_boxes"] == 0 or verified["box_precision"] == 1.0
    row = table[table["kind"] == "pseudo"].iloc[0]
    dataset, _, _ = assemble_source(config, "pseudo")
    from_pool = dataset.images.loc[dataset.images["origin"] == "pool", "image_id"].astype(str)
    _, truth = read_pool_ground_truth(SplitLayout(config.paths.split_dir))
    assert row["n_truth"] == len(truth)
    assert row["n_boxes"] == dataset.labels["image_id"].astype(str).isin(set(from_pool)).sum()
    assert row["epochs"] == 1 and row["imgsz"] == 64 and math.isfinite(row["map50"])
    manifest = json.loads(manifest_path(csv).read_text())
    assert manifest["sources"]["requested"] == ["human", "box_drop_0.5", "pseudo", "verified_1"]
    assert manifest["parameters"]["verified"] == [1.0]
    assert {"pseudo_labels", "pseudo_boxes"} <= set(manifest["inputs"])

    again = _run_sweep(command, yolo_weights, timeout=900)
    assert "pseudo: its row in" in again.stdout and "verified_1: its row in" in again.stdout
    assert "training" not in again.stdout

    # the same run's boxes sorted by kind: every box is a hit or one kind of false box
    kinds_csv, figure = tmp_path / "bench" / "kinds.csv", tmp_path / "kinds.png"
    kinds_command = _script_command(
        "bench_box_kinds.py", config.paths.run_dir, kinds_csv, "--figure", str(figure)
    )
    _run_sweep(kinds_command, yolo_weights)
    kinds = pd.read_csv(kinds_csv)
    counted = kinds.filter(like="n_").drop(columns=["n_gt", "n_pred"]).sum(axis=1)
    assert (counted == kinds["n_pred"]).all() and figure.stat().st_size > 0
    assert set(kinds["strategy"]) == {"seed_detector"}  # the one strategy chapter 3 ran
    kinds_manifest = json.loads(manifest_path(kinds_csv).read_text())
    assert kinds_manifest["outputs"]["table"] == "kinds.csv"
    assert not absolute_paths_in_file(manifest_path(kinds_csv))

    # what score and shape tell apart on the same boxes, and a kept table for another training
    ranking_csv, kept_csv = tmp_path / "bench" / "ranking.csv", tmp_path / "kept.csv"
    ranking_command = _script_command(
        "bench_verifier_features.py", config.paths.run_dir, ranking_csv,
        *("--reviewed", "2", "--draws", "2", "--kept-csv", str(kept_csv), "--keep-reviewed", "2"),
    )  # fmt: skip
    ranked = _run_sweep(ranking_command, yolo_weights)
    assert "reviewed images hold" in ranked.stdout
    ranking = pd.read_csv(ranking_csv)
    assert list(ranking["ranking"]) == ["score", "seed_shape_prior", "reviewed_2", "all_pool_truth"]
    n_boxes = int((pd.read_csv(config.paths.annotation_dir / "pseudo_boxes.csv")["strategy"]
                   == "seed_detector").sum())  # fmt: skip
    assert (ranking.loc[[0, 1, 3], "boxes_scored"] == n_boxes).all()
    kept = pd.read_csv(kept_csv)
    assert 0 < len(kept) <= n_boxes and set(kept["strategy"]) == {"seed_detector"}
    ranking_manifest = json.loads(manifest_path(ranking_csv).read_text())
    assert ranking_manifest["parameters"]["reviewed"] == [2]
    assert not absolute_paths_in_file(manifest_path(ranking_csv))


def _script_command(script: str, run_dir: Path, csv: Path, *extra: str) -> list[str]:
    """A benchmark script of ``scripts/`` on a run folder, writing its table to ``csv``."""
    return [
        sys.executable, str(ROOT / "scripts" / script),
        "--run-dir", str(run_dir), "--csv", str(csv), *extra,
    ]  # fmt: skip

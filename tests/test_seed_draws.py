"""Chapter 06's seed-draw table: read from the benchmark's CSV and manifest, summarised honestly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.plots.book import manifest_path
from cascade_defect.plots.seed_draws import (
    CSV_COLUMNS,
    read_seed_draws,
    seed_draw_summary,
    seed_draw_table,
)
from cascade_defect.settings import load_config


def write_table(folder: Path, ratios: list[float]) -> Path:
    rows = []
    for i, ratio in enumerate(ratios):
        rows.append(
            {
                "draw": "record" if i == 0 else str(i),
                "seeds": f"a_{i};b_{i}",
                "class_accuracy": 0.98,
                "box_recall": 0.6,
                "box_precision": 0.2,
                "mean_iou": 0.55,
                "pseudo_map50": 0.7 * ratio,
                "pseudo_map50_low": 0.7 * ratio - 0.02,
                "pseudo_map50_high": 0.7 * ratio + 0.02,
                "human_map50": 0.7,
                "human": "record",
                "ratio": ratio,
                "ratio_low": ratio - 0.05,
                "ratio_high": ratio + 0.05,
                "pseudo_train_wall_seconds": 600.0,
                "chapter_03_seconds": None,
                "chapter_05_seconds": None,
            }
        )
    path = folder / "seed_draws.csv"
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(path, index=False)
    manifest_path(path).write_text(
        json.dumps({"git": {"commit": "abcdef1234567"}, "parameters": {"human": "per draw"}})
    )
    return path


def test_the_table_and_summary_give_each_draw_and_the_ratio_range(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.5, 0.4, 0.8])
    draws = read_seed_draws(str(path), config)
    table = seed_draw_table(draws)
    assert list(table.index) == ["record", "1", "2"]
    assert table.loc["1", "share of human [95% CI]"] == "40.0% [35.0, 45.0]"
    assert table.loc["2", "pseudo mAP50 [95% CI]"] == "0.560 [0.540, 0.580]"
    text = seed_draw_summary(draws).data
    assert "**56.7%**" in text and "from 40.0% to 80.0%" in text
    assert "2 of 3 draws stayed below 70%" in text
    assert "Human reference: per draw" in text and "`abcdef1234`" in text


def test_every_draw_above_the_bar_is_said_so(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    draws = read_seed_draws(str(write_table(tmp_path, [0.75, 0.9])), config)
    assert "Every draw reached 70%." in seed_draw_summary(draws).data
    assert "redrawn draws ran with" not in seed_draw_summary(draws).data


def test_settings_the_redrawn_draws_changed_are_named(tmp_path: Path) -> None:
    """Draws trained with another device or recipe than the record say so beside the ratio."""
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.6, 0.62])
    changes = {"training": {"device": "0", "workers": 8}}
    manifest_path(path).write_text(json.dumps({"parameters": {"profile_changes": changes}}))
    text = seed_draw_summary(read_seed_draws(str(path), config)).data
    assert "ran with `training.device=0`, `training.workers=8` (the record's profile" in text


def test_draws_labelled_with_other_annotation_settings_are_named(tmp_path: Path) -> None:
    """A table whose redrawn draws ran an earlier chapter 03 (a setting absent or different)
    says which draws and which settings, so a mixed table is not read as one recipe."""
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.65, 0.58, 0.57])
    record = {"annotation.seed_detector_freeze": 10, "annotation.fragment_merge": {"enabled": True}}
    older = {"annotation.seed_detector_freeze": 10}
    settings = {"record": record, "1": older, "2": dict(older)}
    manifest_path(path).write_text(json.dumps({"parameters": {"annotation_settings": settings}}))
    text = seed_draw_summary(read_seed_draws(str(path), config)).data
    assert "Draws 1, 2 labelled the pool with other settings" in text
    assert "(`annotation.fragment_merge`)" in text and "they do not repeat" in text
    settings = {"record": record, "1": dict(record), "2": dict(record)}
    manifest_path(path).write_text(json.dumps({"parameters": {"annotation_settings": settings}}))
    assert "other settings" not in seed_draw_summary(read_seed_draws(str(path), config)).data


@pytest.mark.parametrize(
    ("record_extra", "named"),
    [
        ({"annotation.seed_detector_flips": []}, False),
        ({"annotation.fragment_merge": {"enabled": False, "min_aspect": 3.0}}, False),
        ({"annotation.seed_detector_flips": ["horizontal"]}, True),
        ({"annotation.fragment_merge": {"enabled": True}}, True),
    ],
)
def test_a_setting_the_older_draws_lacked_counts_as_off(
    tmp_path: Path, record_extra: dict[str, object], named: bool
) -> None:
    """A draw made before a setting existed ran without it: the same recipe as a record that
    has it switched off, another one where the record switches it on."""
    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.65, 0.6])
    older = {"annotation.seed_detector_freeze": 10}
    settings = {"record": {**older, **record_extra}, "1": older}
    manifest_path(path).write_text(json.dumps({"parameters": {"annotation_settings": settings}}))
    text = seed_draw_summary(read_seed_draws(str(path), config)).data
    assert ("Draw 1 labelled the pool with other settings" in text) is named


def test_a_missing_table_says_which_file_and_how_to_make_it(tmp_path: Path) -> None:
    config = load_config("smoke", work_dir=tmp_path / "work")
    draws = read_seed_draws(str(tmp_path / "absent.csv"), config)
    assert draws.table is None and seed_draw_table(draws).empty
    text = seed_draw_summary(draws).data
    assert "absent.csv" in text and "scripts/bench_seed_draws.py" in text
    assert "No seed-draw" in seed_draw_summary(read_seed_draws(None, config)).data


def test_a_table_made_on_another_test_set_is_not_shown_as_this_runs(tmp_path: Path) -> None:
    """A record of another dataset (or split) must not show this benchmark's numbers as its own:
    the manifest's test listing hash decides, and without one the table is shown."""
    from cascade_defect.data.split import SplitLayout
    from cascade_defect.hashing import sha256_file
    from cascade_defect.plots.review_budget import read_review_budget, review_budget_summary

    config = load_config("smoke", work_dir=tmp_path / "work")
    listing = SplitLayout(config.paths.split_dir).test_listing
    listing.parent.mkdir(parents=True)
    listing.write_text("image_id,class_name\n1001,MT_Crack\n")
    path = write_table(tmp_path, [0.5, 0.4])
    assert read_seed_draws(str(path), config).table is not None  # no test listing named: shown

    def manifest_naming(sha: str) -> None:
        entry = {"path": "data/runs/quick/02_split/test.csv", "sha256": sha}
        manifest_path(path).write_text(json.dumps({"inputs": {"record_test": entry}}))

    manifest_naming("0" * 64)
    draws = read_seed_draws(str(path), config)
    assert draws.table is None and seed_draw_table(draws).empty
    assert "another golden test set" in draws.other_test_set
    text = seed_draw_summary(draws).data
    assert "is not shown" in text and "`02_split/test.csv` differs from this run's" in text
    assert "scripts/bench_seed_draws.py" in text
    manifest_naming(sha256_file(listing))
    assert read_seed_draws(str(path), config).table is not None  # this run's test set
    # the review budget goes through the same reader
    budget = tmp_path / "review_budget.csv"
    budget.write_text("source,order,k\n")
    entry = {"path": "data/runs/quick/02_split/test.csv", "sha256": "1" * 64}
    manifest_path(budget).write_text(json.dumps({"inputs": {"test": entry}}))
    found = read_review_budget(str(budget), config)
    assert found.table is None
    assert "review-budget benchmark" in review_budget_summary(found).data
    assert found.other_test_set and "is not shown" in review_budget_summary(found).data


def test_a_recipe_is_tried_on_redrawn_draws_only(tmp_path: Path, load_script) -> None:
    """``--set annotation.synthetic_defects=100`` reaches the draws' profile, the record keeps
    its own, and a key without a section or an unknown section is refused by name."""
    bench = load_script("bench_seed_draws")

    changes = bench.profile_changes(
        ["annotation.synthetic_defects=100", "annotation.seed_detector_epochs=20"]
    )
    assert changes == {"annotation": {"synthetic_defects": 100, "seed_detector_epochs": 20}}
    record = load_config("smoke", work_dir=tmp_path / "record")
    draw = bench.draw_config(record, 0, tmp_path / "draws", changes)
    assert draw.profile.annotation.synthetic_defects.tiles == 100
    assert draw.profile.annotation.seed_detector_epochs == 20
    assert draw.profile.split.seed_draw == 0
    assert record.profile.annotation.synthetic_defects.tiles == "auto"
    same_seeds = bench.draw_config(record, None, tmp_path / "draws", changes)
    assert same_seeds.profile.split.seed_draw is None
    assert same_seeds.work_dir == tmp_path / "draws" / "record_seeds"
    with pytest.raises(SystemExit, match=r"SECTION\.KEY"):
        bench.profile_changes(["synthetic_defects=100"])
    with pytest.raises(SystemExit, match="'anotation'"):
        bench.draw_config(record, 0, tmp_path / "draws", {"anotation": {"x": 1}})


def test_a_draw_run_elsewhere_keeps_its_chapter_times(tmp_path: Path, load_script) -> None:
    """A draw whose chapters ran before (another machine, an interrupted run) is not run again,
    and its chapter times come from the chapters' manifests rather than going missing."""
    bench = load_script("bench_seed_draws")
    config = bench.draw_config(load_config("smoke", work_dir=tmp_path / "r"), 1, tmp_path / "d")
    for folder, total in (
        (config.paths.data_card_dir, 1.0),
        (config.paths.split_dir, 1.0),
        (config.paths.annotation_dir, 66.159),
    ):
        folder.mkdir(parents=True)
        recorded = {"split.seed_draw": 1, "annotation.seed_detector_conf": 0.05}
        manifest = {"timings_s": {"total": total}, "config": recorded}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    # what labelled the draw's pool, for the summary to compare with the record's
    assert bench.annotation_settings(config) == {"annotation.seed_detector_conf": 0.05}
    training = config.paths.training_dir
    training.mkdir(parents=True)
    (training / "manifest.json").write_text(
        json.dumps(
            {
                "timings_s": {"train_pseudo": 47.0},
                "config": {"training.device": "0"},
                "environment": {"cpu": "Xeon"},
            }
        )
    )
    assert bench.training_machine(config) == {"device": "0", "cpu": "Xeon"}
    timings = bench.run_draw(config, "seed_detector", [])  # every chapter there: none runs
    assert timings == {"chapter_03_seconds": 66.2, "chapter_05_seconds": None}  # 05: no total
    assert bench.recorded_seconds(tmp_path / "nowhere") is None


def test_the_defect_gate_benchmark_takes_a_recipe(monkeypatch, load_script) -> None:
    """``--set`` on the defect-gate benchmark reaches its settings the same way."""
    bench = load_script("bench_defect_gate")
    argv = ["bench", "--data-dir", "d", "--scratch", "s", "--csv", "t.csv"]
    monkeypatch.setattr("sys.argv", [*argv, "--set", "annotation.seed_detector_freeze=0"])
    args = bench.parse_args()
    changes = bench.profile_changes(args.set)
    assert changes == {"annotation": {"seed_detector_freeze": 0}}
    # a GPU index read as a number by YAML still names a device
    device = load_config("quick", overrides=bench.profile_changes(["training.device=0"]))
    assert device.profile.training.device == "0"
    assert load_config("quick", overrides=changes).profile.annotation.seed_detector_freeze == 0
    monkeypatch.setattr("sys.argv", argv)
    assert bench.profile_changes(bench.parse_args().set) == {}
    assert bench.parse_args().defect_types is None  # the profile's defect_type alone
    monkeypatch.setattr("sys.argv", [*argv, "--defect-types", "crops", "annotator_x_crops"])
    assert bench.parse_args().defect_types == ["crops", "annotator_x_crops"]
    monkeypatch.setattr("sys.argv", [*argv, "--defect-types", "pixels"])
    with pytest.raises(SystemExit):
        bench.parse_args()


def test_the_detector_gate_answers_and_its_figures(load_script) -> None:
    """The defect-gate benchmark's answers and figures on four images computed by hand."""
    import numpy as np

    bench = load_script("bench_defect_gate")

    classes = ["crack", "no_defect", "blow hole"]
    probabilities = np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1], [0.05, 0.9, 0.05]])
    scores = np.array([0.4, 0.02, 0.1, 0.3])
    gated = bench.score_gated_answers(probabilities, classes, scores, 0.1)
    # The annotator's no_defect never wins once the detector finds a box; the tie 0.05/0.05
    # goes to the first defect class.
    assert list(gated) == ["crack", "no_defect", "crack", "crack"]
    truth = np.array(["crack", "blow hole", "no_defect", "no_defect"])
    figures = bench.answer_figures(truth, gated)
    assert figures["accuracy"] == 0.25
    assert figures["defect_recall"] == 0.5
    assert figures["false_alarm_rate"] == 1.0
    assert figures["flagged_share"] == 0.75
    assert figures["type_accuracy_on_found"] == 1.0
    # Balanced accuracy: recall crack 1, blow hole 0, no_defect 0.
    assert abs(figures["balanced_accuracy"] - 1 / 3) < 1e-12


def test_the_gate_rows_score_each_boundary_against_the_truth(load_script) -> None:
    """P(defect) 0.8, 0.6, 0.3, 0.2 on two defective and two defect-free images: from 0.5 the
    first two are flagged (recall 1/2, one false alarm of two); the first three hold 1.7 of the
    1.9 expected defects (0.89), so a 0.95 recall target lowers the boundary to 0.2."""
    bench = load_script("bench_defect_gate")
    probabilities = pd.DataFrame(
        {
            "image_id": ["1", "2", "3", "4"],
            "crack": [0.8, 0.6, 0.3, 0.2],
            "no_defect": [0.2, 0.4, 0.7, 0.8],
        }
    )
    pool = pd.DataFrame({"image_id": [4, 3, 2, 1]})  # ids read as numbers are matched as text
    truth = np.array(["crack", "no_defect", "no_defect", "crack"])
    answer_of = {"1": "crack", "2": "crack", "3": "no_defect", "4": "no_defect"}
    rows = bench.gate_rows({"draw": 0}, probabilities, answer_of, pool, truth, "x", [0.95])
    assert [r["answer"] for r in rows] == ["defect gate (x)", "defect gate (x), recall target 0.95"]
    default, recalled = rows
    assert default["auc_gate"] == 0.5  # 0.8 > 0.6 but 0.3 > 0.2: two of four pairs ordered
    assert (default["defect_recall"], default["false_alarm_rate"]) == (0.5, 0.5)
    assert default["defect_threshold"] == 0.5
    assert recalled["defect_threshold"] == pytest.approx(0.2) and recalled["flagged_share"] == 1.0
    assert (recalled["defect_recall"], recalled["false_alarm_rate"]) == (1.0, 1.0)
    assert recalled["expected_defect_recall"] == 1.0


def test_the_gate_rows_take_the_defect_type_from_each_source(load_script) -> None:
    """Two defective images whose crops name the right type and whose annotator names the wrong
    one, two clean ones: every source flags the same images, only the type's source differs."""
    from cascade_defect.annotate.defect_gate import CropEvidence, GatedAnswers, gated_answers
    from cascade_defect.box_settings import DefectGateSettings

    bench = load_script("bench_defect_gate")
    annotator = pd.DataFrame(
        {
            "image_id": ["1", "2", "3", "4"],
            "crack": [0.1, 0.5, 0.1, 0.1],
            "hole": [0.5, 0.1, 0.1, 0.1],
            "no_defect": [0.4, 0.4, 0.8, 0.8],
        }
    )
    evidence = CropEvidence(
        image_ids=["1", "2", "3", "4"],
        p_defect=np.array([0.9, 0.9, 0.1, 0.1]),
        type_proba=np.array([[0.8, 0.2], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5]]),
        class_names=["crack", "hole"],
    )
    settings = DefectGateSettings()  # crops' type, log-odds pool without a recall target
    probabilities, answers = gated_answers(annotator, evidence, "crops", None, "logarithmic")
    gate = GatedAnswers(probabilities, answers, params={}, evidence=evidence)
    pool = pd.DataFrame({"image_id": [1, 2, 3, 4]})
    truth = np.array(["crack", "hole", "no_defect", "no_defect"])
    rows = bench.defect_gate_rows(
        {"draw": 0}, annotator, gate, settings, list(bench.DEFECT_TYPES), pool, truth, []
    )
    by_label = {r["answer"]: r for r in rows}
    assert list(by_label) == [
        "defect gate (linear pool)",
        "defect gate (logarithmic pool)",
        "defect gate (linear pool, type from annotator)",
        "defect gate (logarithmic pool, type from annotator)",
        "defect gate (linear pool, type from annotator_x_crops)",
        "defect gate (logarithmic pool, type from annotator_x_crops)",
    ]
    for row in rows:  # 0.9 with 0.6 is defective, 0.1 with 0.2 is not, whichever pool
        assert (row["defect_recall"], row["false_alarm_rate"]) == (1.0, 0.0)
    assert by_label["defect gate (logarithmic pool)"]["type_accuracy_on_found"] == 1.0
    assert by_label["defect gate (linear pool, type from annotator)"]["type_accuracy_on_found"] == 0
    # crack: 0.1/0.6 x 0.8 = 0.133 < hole: 0.5/0.6 x 0.2 = 0.167, so the product says hole
    product = by_label["defect gate (linear pool, type from annotator_x_crops)"]
    assert product["type_accuracy_on_found"] == 0.0
    # without --defect-types only the profile's source
    assert len(bench.defect_gate_rows({}, annotator, gate, settings, None, pool, truth, [])) == 2
    # a class-aware detector joined the crops: the crops' own evidence gives a second set of rows
    crops_alone = CropEvidence(
        image_ids=evidence.image_ids,
        p_defect=np.array([0.9, 0.1, 0.1, 0.1]),  # the crops alone miss image 2
        type_proba=evidence.type_proba,
        class_names=evidence.class_names,
    )
    joined = GatedAnswers(
        probabilities, answers, params={}, evidence=evidence, crops_alone=crops_alone
    )
    rows = bench.defect_gate_rows({}, annotator, joined, settings, None, pool, truth, [])
    assert [r["answer"] for r in rows] == [
        "defect gate (linear pool)",
        "defect gate (logarithmic pool)",
        "defect gate (crops alone, linear pool)",
        "defect gate (crops alone, logarithmic pool)",
    ]
    assert [r["defect_recall"] for r in rows] == [1.0, 1.0, 0.5, 0.5]


def test_a_table_made_against_an_earlier_record_says_its_record_row_is_not_this_ones(
    tmp_path: Path,
) -> None:
    """The record trained again after the table was made: the rows are still shown, and the
    summary says the record row is an earlier training's (the manifest's hash of chapter 05's
    results decides; without the file or the input nothing is said)."""
    from cascade_defect.hashing import sha256_file

    config = load_config("smoke", work_dir=tmp_path / "work")
    path = write_table(tmp_path, [0.5, 0.4])
    results = config.paths.training_dir / "training_results.json"

    def manifest_naming(sha: str) -> None:
        entry = {"path": "data/runs/quick/05_training/training_results.json", "sha256": sha}
        manifest_path(path).write_text(json.dumps({"inputs": {"record_training_results": entry}}))

    manifest_naming("2" * 64)
    assert read_seed_draws(str(path), config).other_record is None  # no results here to compare
    results.parent.mkdir(parents=True)
    results.write_text('{"human": {"map50": 0.7}}')
    draws = read_seed_draws(str(path), config)
    assert draws.table is not None and len(seed_draw_table(draws)) == 2
    assert "`05_training/training_results.json` differs" in draws.other_record
    text = seed_draw_summary(draws).data
    assert "its `record` row is an earlier record's" in text
    assert "scripts/bench_seed_draws.py" in text
    manifest_naming(sha256_file(results))
    draws = read_seed_draws(str(path), config)
    assert draws.other_record is None
    assert "earlier record" not in seed_draw_summary(draws).data

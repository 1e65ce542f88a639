"""The defect-gate benchmark's kept evidence: a draw pooled again from its files gives the rows
the live draw gave, and evidence made with other settings is never reused."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.annotate.defect_gate import CropEvidence, GatedAnswers, gated_answers
from cascade_defect.box_settings import DefectGateSettings
from cascade_defect.settings import load_config

CLASSES = ["blow hole", "crack"]
IDS = ["0012", "12", "tile 3", "ñ4", "5", "6"]  # numbers, a leading zero, a space, unicode


def draw_evidence(bench, settings: DefectGateSettings):
    """Six pool tiles (two of each defect, two clean) with a class-aware detector's evidence."""
    rng = np.random.default_rng(7)
    annotator = pd.DataFrame(
        rng.dirichlet(np.ones(3), size=len(IDS)), columns=[*CLASSES, "no_defect"]
    )
    annotator.insert(0, "image_id", IDS)
    crops = CropEvidence(
        IDS,
        np.array([0.9, 0.0, 0.7, 0.4, 0.2, 0.6]),  # tile 12: nothing proposed
        rng.dirichlet(np.ones(2), size=len(IDS)),
        CLASSES,
        n_crops=25,
    )
    joined = CropEvidence(
        IDS,
        np.clip(crops.p_defect + 0.05, 0, 1),
        rng.dirichlet(np.ones(2), size=len(IDS)),
        CLASSES,
        25,
    )
    probabilities, answers = gated_answers(
        annotator, joined, settings.defect_type, settings.target_recall, settings.pooling_rule
    )
    gate = GatedAnswers(
        probabilities, answers, {"settings": {"top_proposals": 5}}, {}, joined, crops
    )
    truth = np.array(
        ["blow hole", "crack", "no_defect", "blow hole", "no_defect", "crack"], dtype=object
    )
    common = {"draw": 0, "n_pool": len(IDS), "gate_seconds": 12.5}
    scores = np.array([0.8, 0.01, 0.3, 0.2, 0.05, 0.6])
    return bench.DrawEvidence(common, annotator, gate, scores, truth)


def bench_args(tmp_path: Path, **changes) -> argparse.Namespace:
    values = {
        "data_dir": tmp_path / "Magnetic-tile",
        "draw_seed": 20240,
        "per_class": 3,
        "defect_types": ["crops", "annotator", "annotator_x_crops"],
        "target_recalls": [0.85],
        "thresholds": [0.1, 0.25],
        "evidence_dir": tmp_path / "evidence",
    }
    return argparse.Namespace(**{**values, **changes})


def test_a_draw_pooled_again_from_its_files_gives_the_live_rows(
    tmp_path: Path, load_script
) -> None:
    bench = load_script("bench_defect_gate")
    settings = DefectGateSettings()
    args = bench_args(tmp_path)
    live = draw_evidence(bench, settings)
    key = bench.evidence_settings(args, 0, load_config("quick"), "L")
    bench.write_draw_evidence(args.evidence_dir, 0, key, live)
    assert sorted(p.name for p in args.evidence_dir.iterdir()) == ["draw_0.csv", "draw_0.json"]

    again = bench.read_draw_evidence(args.evidence_dir, 0, key, settings)
    assert again is not None
    assert again.annotator_proba["image_id"].tolist() == IDS  # text, leading zero kept
    assert again.gate.evidence.image_ids == IDS and again.gate.crops_alone is not None
    live_rows, kept_rows = (
        bench.draw_rows(live, args, settings),
        bench.draw_rows(again, args, settings),
    )
    # annotator, 12 gate rows (3 types x 2 pools x 2 boundaries) twice (joined, crops alone), 2 score gates
    assert len(live_rows) == 1 + 2 * 12 + 2
    assert pd.DataFrame(kept_rows).equals(pd.DataFrame(live_rows))


def test_the_crops_alone_are_kept_without_a_class_aware_detector(
    tmp_path: Path, load_script
) -> None:
    bench = load_script("bench_defect_gate")
    settings = DefectGateSettings(class_aware_detector=False)
    live = draw_evidence(bench, settings)
    crops = live.gate.crops_alone
    probabilities, answers = gated_answers(
        live.annotator_proba, crops, settings.defect_type, None, settings.pooling_rule
    )
    live.gate = GatedAnswers(probabilities, answers, {}, {}, crops, None)
    args = bench_args(tmp_path)
    bench.write_draw_evidence(args.evidence_dir, 0, {"k": 1}, live)
    header = (args.evidence_dir / "draw_0.csv").read_text().splitlines()[0]
    assert "crops:p_defect" in header and "joined" not in header
    again = bench.read_draw_evidence(args.evidence_dir, 0, {"k": 1}, settings)
    assert again.gate.crops_alone is None
    assert np.array_equal(again.gate.evidence.p_defect, crops.p_defect)
    assert pd.DataFrame(bench.draw_rows(again, args, settings)).equals(
        pd.DataFrame(bench.draw_rows(live, args, settings))
    )


def test_evidence_made_otherwise_or_half_written_is_made_again(
    tmp_path: Path, load_script, capsys
) -> None:
    bench = load_script("bench_defect_gate")
    settings = DefectGateSettings()
    args = bench_args(tmp_path)
    config = load_config("quick")
    key = bench.evidence_settings(args, 0, config, "L")
    bench.write_draw_evidence(args.evidence_dir, 0, key, draw_evidence(bench, settings))

    other = bench.evidence_settings(bench_args(tmp_path, per_class=5), 0, config, "L")
    assert bench.read_draw_evidence(args.evidence_dir, 0, other, settings) is None
    assert "made with other per_class; made again" in capsys.readouterr().out
    assert bench.read_draw_evidence(args.evidence_dir, 1, key, settings) is None  # no draw 1
    (args.evidence_dir / "draw_0.json").unlink()  # interrupted before the JSON was written
    assert bench.read_draw_evidence(args.evidence_dir, 0, key, settings) is None


def test_pooling_settings_are_not_evidence_settings(tmp_path: Path, load_script) -> None:
    """A recall target, a pool or a type source re-pools the same evidence; anything the
    detectors or the crops depend on makes it again."""
    bench = load_script("bench_defect_gate")
    args = bench_args(tmp_path)

    def key(**gate):
        config = load_config("quick", overrides={"annotation": {"defect_gate": gate}})
        return bench.evidence_settings(args, 0, config, "L")

    plain = key()
    assert key(target_recall=0.85, pooling="linear", defect_type="annotator") == plain
    assert key(top_proposals=3) != plain
    assert key(class_aware_detector=False) != plain
    assert key(class_aware_members=3) != plain
    assert bench.evidence_settings(args, 1, load_config("quick"), "L") != plain  # another draw
    assert bench.evidence_settings(args, 0, load_config("quick"), "M") != plain  # other labels


def test_evidence_kept_before_a_setting_existed_is_read_with_its_default(
    tmp_path: Path, load_script, capsys
) -> None:
    """Evidence whose settings lack a gate setting added since (here ``class_aware_members``)
    was made with its default: it is pooled again under the default and made again under
    another value; a kept setting this version does not know makes it again."""
    import json

    bench = load_script("bench_defect_gate")
    settings = DefectGateSettings()
    args = bench_args(tmp_path)
    key = bench.evidence_settings(args, 0, load_config("quick"), "L")
    bench.write_draw_evidence(args.evidence_dir, 0, key, draw_evidence(bench, settings))
    meta = args.evidence_dir / "draw_0.json"
    record = json.loads(meta.read_text())
    del record["settings"]["annotation"]["defect_gate"]["class_aware_members"]
    meta.write_text(json.dumps(record))
    assert bench.read_draw_evidence(args.evidence_dir, 0, key, settings) is not None

    three = {"annotation": {"defect_gate": {"class_aware_members": 3}}}
    other = bench.evidence_settings(args, 0, load_config("quick", overrides=three), "L")
    assert bench.read_draw_evidence(args.evidence_dir, 0, other, settings) is None
    assert "made with other annotation; made again" in capsys.readouterr().out

    record["settings"]["annotation"]["defect_gate"]["retired_setting"] = 1
    meta.write_text(json.dumps(record))
    assert bench.read_draw_evidence(args.evidence_dir, 0, key, settings) is None


def test_a_kept_draw_is_not_trained_again(tmp_path: Path, load_script, monkeypatch) -> None:
    bench = load_script("bench_defect_gate")
    config = load_config("quick")
    settings = config.profile.annotation.defect_gate
    args = bench_args(tmp_path)
    made = []

    def make(args, draw, dataset, config):
        made.append(draw)
        return draw_evidence(bench, settings)

    monkeypatch.setattr(bench, "make_draw_evidence", make)
    monkeypatch.setattr(bench, "labels_digest", lambda dataset: "L")
    first = bench.run_draw(args, 0, None, config)
    second = bench.run_draw(args, 0, None, config)
    assert made == [0]
    assert pd.DataFrame(second).equals(pd.DataFrame(first))
    without = bench.run_draw(bench_args(tmp_path, evidence_dir=None), 0, None, config)
    assert made == [0, 0] and pd.DataFrame(without).equals(pd.DataFrame(first))


def test_the_evidence_folder_is_an_option(monkeypatch, load_script) -> None:
    bench = load_script("bench_defect_gate")
    argv = ["bench", "--data-dir", "d", "--scratch", "s", "--csv", "t.csv"]
    monkeypatch.setattr("sys.argv", argv)
    assert bench.parse_args().evidence_dir is None
    monkeypatch.setattr("sys.argv", [*argv, "--evidence-dir", "kept"])
    assert bench.parse_args().evidence_dir == Path("kept")


@pytest.mark.parametrize("draw", [0, 3])
def test_the_evidence_names_its_draw(tmp_path: Path, load_script, draw: int) -> None:
    bench = load_script("bench_defect_gate")
    args = bench_args(tmp_path)
    key = bench.evidence_settings(args, draw, load_config("quick"), "L")
    assert key["draw_seed"] == 20240 + draw and key["dataset"] == "Magnetic-tile"
    assert key["version"] == bench.EVIDENCE_VERSION


def test_the_labels_digest_follows_labels_not_order(load_script) -> None:
    """Fixing one box in place, or a class, changes the digest; listing the same images in
    another order does not."""
    from types import SimpleNamespace

    bench = load_script("bench_defect_gate")
    images = pd.DataFrame(
        {
            "image_id": ["001", "2"],
            "class_name": ["crack", "no_defect"],
            "image_path": ["a.png", "b.png"],
            "width": [100, 700],
            "height": [300, 120],
        }
    )
    boxes = pd.DataFrame(
        {"image_id": ["001"], "image_class": ["crack"], "class_name": ["crack"]}
        | {k: [v] for k, v in zip(["xmin", "ymin", "xmax", "ymax"], [1, 2, 30, 40], strict=True)}
    )

    def digest(images: pd.DataFrame, boxes: pd.DataFrame) -> str:
        return bench.labels_digest(
            SimpleNamespace(images_frame=lambda: images, boxes_frame=lambda: boxes)
        )

    plain = digest(images, boxes)
    assert digest(images.iloc[::-1], boxes) == plain
    assert digest(images, boxes.assign(xmax=31)) != plain
    assert digest(images.assign(class_name=["crack", "crack"]), boxes) != plain
    assert digest(images.assign(image_id=["1", "2"]), boxes) != plain  # "001" is not "1"

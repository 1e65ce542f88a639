"""`cascade-defect annotate` as a user runs it: a subprocess on generated folders in every layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.fake_openai_server import FakeOpenAIServer
from tests.synthetic import make_byo_dataset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("hole punch", "oil stain", "scratch")


def annotate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "cascade_defect.cli", "annotate", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def unlabelled(tmp_path: Path) -> Path:
    return make_byo_dataset(
        tmp_path / "unlabelled", layout="classfolders", classes=CLASSES, per_class=3, labelled=False
    )


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["classfolders", "voc", "yolo"])
def test_openai_compatible_annotation_writes_yolo_coco_and_review(
    tmp_path: Path, unlabelled: Path, layout: str
) -> None:
    seeds = make_byo_dataset(tmp_path / "seeds", layout=layout, classes=CLASSES, per_class=2)
    out = tmp_path / "out"
    with FakeOpenAIServer() as server:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}
        result = annotate(
            "--images",
            str(unlabelled),
            "--seeds",
            str(seeds),
            "--out",
            str(out),
            "--box-strategy",
            "annotator",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "labelled 9 of 9" in result.stdout
        first_requests = len(server.chat_requests())
        again = annotate(
            "--images",
            str(unlabelled),
            "--seeds",
            str(seeds),
            "--out",
            str(out),
            "--box-strategy",
            "annotator",
            env=env,
        )
        assert again.returncode == 0, again.stderr
        assert len(server.chat_requests()) == first_requests  # resumed: nothing sent twice
    assert (out / "classes.txt").read_text().splitlines() == sorted(CLASSES)
    assert len(list((out / "labels").glob("*.txt"))) == 9
    coco = json.loads((out / "annotations.coco.json").read_text())
    assert len(coco["images"]) == 9 and {c["name"] for c in coco["categories"]} == set(CLASSES)
    review = pd.read_csv(out / "review.csv")
    assert len(review) == 9
    assert review["confidence"].is_monotonic_increasing


@pytest.mark.slow
def test_offline_annotation_of_a_folder(
    tmp_path: Path, unlabelled: Path, yolo_weights: Path
) -> None:
    seeds = make_byo_dataset(
        tmp_path / "seeds", layout="classfolders", classes=CLASSES, per_class=2
    )
    out = tmp_path / "out"
    result = annotate(
        "--images",
        str(unlabelled),
        "--seeds",
        str(seeds),
        "--out",
        str(out),
        "--annotator",
        "offline",
        "--weights",
        str(yolo_weights),
    )
    assert result.returncode == 0, result.stderr
    assert "offline" in result.stdout and "labelled 9 of 9" in result.stdout
    review = pd.read_csv(out / "review.csv")
    assert set(review["defect_class"]) <= set(CLASSES)


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    seeds = make_byo_dataset(tmp_path / "seeds", layout="classfolders", per_class=2)
    (tmp_path / "empty").mkdir()
    result = annotate(
        "--images", str(tmp_path / "empty"), "--seeds", str(seeds), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "no images" in result.stderr


def test_seed_class_without_image_is_a_clear_error(tmp_path: Path, unlabelled: Path) -> None:
    seeds = make_byo_dataset(tmp_path / "seeds", layout="classfolders", per_class=2)
    (seeds / "dent").mkdir()
    result = annotate(
        "--images", str(unlabelled), "--seeds", str(seeds), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "dent" in result.stderr and "no image" in result.stderr


def test_unreadable_image_is_named(tmp_path: Path, unlabelled: Path) -> None:
    seeds = make_byo_dataset(tmp_path / "seeds", layout="classfolders", per_class=2)
    broken = unlabelled / "broken.png"
    broken.write_bytes(b"not an image")
    result = annotate(
        "--images", str(unlabelled), "--seeds", str(seeds), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "broken.png" in result.stderr


def test_help_explains_every_option() -> None:
    result = annotate("--help")
    assert result.returncode == 0
    for option in (
        "--images",
        "--seeds",
        "--out",
        "--annotator",
        "--model",
        "--budget",
        "--box-strategy",
        "--detail",
        "--concurrency",
        "--images-per-request",
        "--max-attempts",
        "--no-progress",
        "--no-defect-gate",
        "--no-class-aware-detector",
        "--class-aware-members",
        "--class-aware-flips",
        "--defect-recall",
    ):
        assert option in result.stdout


def test_an_invalid_option_is_named(tmp_path: Path, unlabelled: Path) -> None:
    seeds = make_byo_dataset(tmp_path / "seeds", layout="classfolders", per_class=2)
    common = ("--images", str(unlabelled), "--seeds", str(seeds), "--out", str(tmp_path / "o"))
    result = annotate(*common, "--concurrency", "0", "--budget", "-1")
    assert result.returncode == 2
    assert "--concurrency" in result.stderr and "--budget" in result.stderr
    assert "greater than or equal to" in result.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written
    wrong_choice = annotate(*common, "--box-strategy", "polygons")
    assert wrong_choice.returncode == 2 and "--box-strategy" in wrong_choice.stderr
    for recall in ("1.5", "0"):
        wrong_recall = annotate(*common, "--defect-recall", recall)
        assert wrong_recall.returncode == 2 and "--defect-recall" in wrong_recall.stderr
    no_gate = annotate(*common, "--defect-recall", "0.85", "--no-defect-gate")
    assert no_gate.returncode == 2 and "--no-defect-gate" in no_gate.stderr
    crops_without_gate = annotate(*common, "--no-class-aware-detector", "--no-defect-gate")
    assert crops_without_gate.returncode == 2
    assert "--no-class-aware-detector needs the defect gate" in crops_without_gate.stderr
    members_without_detector = annotate(
        *common, "--class-aware-members", "3", "--no-class-aware-detector"
    )
    assert members_without_detector.returncode == 2
    assert "--class-aware-members needs the class-aware detector" in members_without_detector.stderr
    flips_without_detector = annotate(
        *common, "--class-aware-flips", "horizontal", "--no-class-aware-detector"
    )
    assert flips_without_detector.returncode == 2
    assert "--class-aware-flips needs the class-aware detector" in flips_without_detector.stderr
    flips_without_gate = annotate(*common, "--class-aware-flips", "vertical", "--no-defect-gate")
    assert flips_without_gate.returncode == 2
    assert "--class-aware-flips needs the defect gate" in flips_without_gate.stderr
    wrong_flip = annotate(*common, "--class-aware-flips", "diagonal")
    assert wrong_flip.returncode == 2 and "--class-aware-flips" in wrong_flip.stderr
    no_members = annotate(*common, "--class-aware-members", "0")
    assert no_members.returncode == 2
    assert "argument --class-aware-members: Input should be greater than or equal to 1" in (
        no_members.stderr
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), {"mode": "auto", "class_aware_detector": True, "target_recall": None}),
        (
            ("--no-class-aware-detector", "--defect-recall", "0.9"),
            {"mode": "auto", "class_aware_detector": False, "target_recall": 0.9},
        ),
        (("--no-defect-gate",), {"mode": "off", "class_aware_detector": True}),
        (("--class-aware-members", "3"), {"class_aware_detector": True, "class_aware_members": 3}),
        (
            ("--class-aware-flips", "horizontal", "vertical", "horizontal"),
            {"class_aware_flips": ("horizontal", "vertical"), "class_aware_members": 1},
        ),
    ],
)
def test_the_gate_flags_reach_the_folder_annotator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: tuple[str, ...], expected: dict
) -> None:
    """What the command hands ``annotate_folder``: the defect gate's settings from its flags."""
    from cascade_defect import cli
    from cascade_defect.annotate import folder

    handed = {}

    def capture(*args: object, defect_gate: object, **kwargs: object) -> object:
        handed["gate"] = defect_gate
        raise folder.InputError("stopped after the settings were handed over")

    monkeypatch.setattr(folder, "annotate_folder", capture)
    status = cli.main(
        ["annotate", "--images", str(tmp_path), "--seeds", str(tmp_path), "--out", "o", *flags]
    )
    assert status == 2
    gate = handed["gate"].model_dump()
    assert {key: gate[key] for key in expected} == expected


def test_every_annotate_flag_defaults_to_the_options_model() -> None:
    """Defaults, choices and help of the option flags are the options model's, not copies."""
    from typing import get_args

    from cascade_defect.annotate.folder import FOLDER_DEFAULTS
    from cascade_defect.annotate.options import AnnotatorOptions, ImageDetail
    from cascade_defect.cli import ANNOTATE_OPTION_FLAGS, annotator_options_from_args, build_parser

    parser = build_parser()
    required = ("--images", "i", "--seeds", "s", "--out", "o")
    args = parser.parse_args(["annotate", *required])
    assert annotator_options_from_args(args) == FOLDER_DEFAULTS
    model_defaults = AnnotatorOptions()
    for name in ANNOTATE_OPTION_FLAGS:
        expected = AnnotatorOptions.model_fields[name].default
        if name == "box_strategies":  # the folder's one deliberate difference: one strategy
            assert (getattr(args, name),) == FOLDER_DEFAULTS.box_strategies
            assert set(FOLDER_DEFAULTS.box_strategies) < set(expected)
        else:
            assert getattr(args, name) == expected == getattr(model_defaults, name), name

    annotate = next(
        action.choices["annotate"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "annotate" in action.choices
    )
    actions = {action.dest: action for action in annotate._actions}
    assert actions["detail"].choices == list(get_args(ImageDetail))
    assert actions["concurrency"].help.startswith(
        AnnotatorOptions.model_fields["concurrency"].description
    )
    off = parser.parse_args(["annotate", *required, "--no-progress", "--budget", "2.5"])
    assert annotator_options_from_args(off).progress is False
    assert annotator_options_from_args(off).budget_usd == 2.5

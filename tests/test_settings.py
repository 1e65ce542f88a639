"""Settings: profiles, environment variables and strict validation of parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cascade_defect.settings import (
    PROFILES,
    DataLocationError,
    key_value_arguments,
    load_config,
)


def test_environment_sets_the_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.setenv("CASCADE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", str(weights))
    monkeypatch.setenv("CASCADE_WORK_DIR", str(tmp_path / "work"))
    config = load_config("smoke")
    assert config.data_dir == tmp_path
    assert config.yolo_weights == str(weights)
    assert config.paths.run_dir == tmp_path / "work" / "runs" / "smoke"


def test_explicit_arguments_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CASCADE_DATA_DIR", "/elsewhere")
    assert load_config("quick", data_dir=tmp_path, work_dir=tmp_path).data_dir == tmp_path


def test_bare_weights_name_is_left_for_ultralytics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CASCADE_YOLO_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config("quick", work_dir=tmp_path).yolo_weights == "yolov8n.pt"


def test_misspelt_override_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="epoch"):
        load_config("quick", work_dir=tmp_path, overrides={"training": {"epoch": 3}})
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("huge", work_dir=tmp_path)
    with pytest.raises(ValidationError, match="abfss"):
        load_config("quick", work_dir=tmp_path, storage="s3://bucket")


def test_overrides_merge_into_the_profile(tmp_path: Path) -> None:
    config = load_config(
        "quick",
        work_dir=tmp_path,
        overrides={"training": {"epochs": 3}, "split": {"random_seed": 1}},
    )
    assert config.profile.training.epochs == 3
    assert config.profile.training.imgsz == PROFILES["quick"].training.imgsz
    assert config.profile.split.random_seed == 1


def test_missing_data_dir_explains_how_to_get_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CASCADE_DATA_DIR", raising=False)
    with pytest.raises(DataLocationError, match="CASCADE_DATA_DIR"):
        load_config("quick", work_dir=tmp_path).require_data_dir()


def test_relative_locations_resolve_from_a_notebook_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notebooks run inside notebooks/; paths given relative to the project root still resolve."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "_quarto.yml").write_text("project:\n  type: book\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    weights = tmp_path / "shared" / "weights" / "yolov8n.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not really weights")
    data = tmp_path / "shared" / "NEU-DET"
    data.mkdir()
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", "../shared/weights/yolov8n.pt")
    monkeypatch.setenv("CASCADE_DATA_DIR", "../shared/NEU-DET")
    monkeypatch.delenv("CASCADE_WORK_DIR", raising=False)
    for folder in (project, project / "notebooks"):
        monkeypatch.chdir(folder)
        config = load_config("smoke")
        assert Path(config.yolo_weights) == weights
        assert config.data_dir == data
        assert config.work_dir == project / "data"
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", "yolov8n.pt")
    assert load_config("smoke").yolo_weights == "yolov8n.pt"  # a bare name stays a name


def test_parameter_overrides_keep_the_profile_where_a_parameter_is_none() -> None:
    from cascade_defect.settings import parameter_overrides

    overrides = parameter_overrides(
        training={"epochs": None, "imgsz": 320}, classification={"sources": []}
    )
    assert overrides == {"training": {"imgsz": 320}, "classification": {"sources": []}}
    config = load_config("quick", overrides=overrides)
    assert config.profile.training.imgsz == 320
    assert config.profile.training.epochs == load_config("quick").profile.training.epochs
    assert config.profile.classification.sources == []


def test_key_value_arguments_arrive_typed() -> None:
    parsed = key_value_arguments(["lr0=0.002", " cos_lr = true", "optimizer=SGD", "nbs=16"])
    assert parsed == {"lr0": 0.002, "cos_lr": True, "optimizer": "SGD", "nbs": 16}
    assert key_value_arguments(["cache=ram", "fliplr=0"]) == {"cache": "ram", "fliplr": 0}
    for bad in (["lr0"], ["=3"]):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            key_value_arguments(bad)


def _checkout(root: Path) -> Path:
    """A folder the settings recognise as the project root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "_quarto.yml").write_text("project:\n  type: book\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_portable_paths_are_relative_or_name_their_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cascade_defect.locations import portable_path, resolve_portable_path

    project = _checkout(tmp_path / "checkout")
    data = tmp_path / "shared" / "NEU-DET"
    data.mkdir(parents=True)
    weights = tmp_path / "shared" / "weights" / "yolov8n.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    monkeypatch.chdir(tmp_path)
    config = load_config(
        "quick", data_dir=data, work_dir=project / "data", yolo_weights=str(weights)
    )
    assert config.project_root == project
    expected = {
        data / "IMAGES" / "crazing_1.jpg": "$CASCADE_DATA_DIR/IMAGES/crazing_1.jpg",
        data: "$CASCADE_DATA_DIR",
        weights: "$CASCADE_YOLO_WEIGHTS",
        # A work folder inside the checkout travels with it: relative to the project root.
        project / "data" / "runs" / "quick" / "05_training": "data/runs/quick/05_training",
        project / "notebooks" / "01_data_strategy.ipynb": "notebooks/01_data_strategy.ipynb",
        project: ".",
    }
    for path, written in expected.items():
        assert portable_path(path, config) == written
        assert resolve_portable_path(written, config) == path
    outside = tmp_path / "elsewhere" / "x.csv"
    assert portable_path(outside, config) == str(outside)  # nothing to name it by
    assert resolve_portable_path(str(outside), config) == outside  # records from before
    assert portable_path("yolov8n.pt", config) == "yolov8n.pt"  # a bare name stays a name

    scratch = load_config("smoke", data_dir=data, work_dir=tmp_path / "scratch")
    run_file = tmp_path / "scratch" / "runs" / "smoke" / "01_data_strategy" / "quirks.csv"
    assert (
        portable_path(run_file, scratch)
        == "$CASCADE_WORK_DIR/runs/smoke/01_data_strategy/quirks.csv"
    )
    assert resolve_portable_path("$CASCADE_WORK_DIR/runs/smoke", scratch) == run_file.parents[1]
    nested = load_config("smoke", data_dir=tmp_path, work_dir=tmp_path / "work")
    assert portable_path(tmp_path / "work" / "a", nested) == "$CASCADE_WORK_DIR/a"  # innermost


def test_a_portable_path_needs_its_variable_to_be_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cascade_defect.locations import resolve_portable_path

    monkeypatch.delenv("CASCADE_DATA_DIR", raising=False)
    config = load_config("smoke", work_dir=tmp_path)
    with pytest.raises(DataLocationError, match="CASCADE_DATA_DIR"):
        resolve_portable_path("$CASCADE_DATA_DIR/IMAGES/a.jpg", config)
    monkeypatch.setenv("CASCADE_DATA_DIR", str(tmp_path / "neu"))
    # Without a configuration, the environment says where the variable points.
    assert resolve_portable_path("$CASCADE_DATA_DIR/IMAGES/a.jpg", tmp_path) == (
        tmp_path / "neu" / "IMAGES" / "a.jpg"
    )
    with pytest.raises(ValueError, match="HOME"):
        resolve_portable_path("$HOME/x", config)


def test_the_printed_settings_show_portable_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _checkout(tmp_path / "checkout")
    weights, classifier = tmp_path / "w.pt", tmp_path / "w-cls.pt"
    weights.write_bytes(b"w")
    classifier.write_bytes(b"c")
    monkeypatch.setenv("CASCADE_YOLO_CLS_WEIGHTS", str(classifier))
    config = load_config(
        "quick", data_dir=tmp_path, work_dir=project / "data", yolo_weights=str(weights)
    )
    summary = config.summary()
    assert summary["data_dir"] == "$CASCADE_DATA_DIR"
    assert summary["yolo_weights"] == "$CASCADE_YOLO_WEIGHTS"
    assert summary["yolo_cls_weights"] == "$CASCADE_YOLO_CLS_WEIGHTS"
    assert (summary["work_dir"], summary["run_dir"]) == ("data", "data/runs/quick")
    assert str(tmp_path) not in repr(summary)


def test_free_text_gets_the_same_portable_forms(tmp_path: Path) -> None:
    from cascade_defect.locations import portable_text

    project = _checkout(tmp_path / "checkout")
    data = tmp_path / "NEU-DET"
    config = load_config("quick", data_dir=data, work_dir=project / "data")
    line = f"val: {project}/data/runs/x... found 7 images; see {data}/IMAGES and {data}-copy"
    assert portable_text(line, config) == (
        f"val: data/runs/x... found 7 images; see $CASCADE_DATA_DIR/IMAGES and {data}-copy"
    )

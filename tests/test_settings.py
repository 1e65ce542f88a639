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

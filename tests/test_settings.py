"""Settings: profiles, environment variables and strict validation of parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cascade_defect.settings import PROFILES, DataLocationError, load_config


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

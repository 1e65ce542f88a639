"""The runner hands the kernels the weights it resolved, and leaves the environment as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cascade_defect import runner
from cascade_defect.settings import load_config


def test_kernels_get_the_resolved_weights_and_the_environment_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.delenv("CASCADE_YOLO_WEIGHTS", raising=False)
    monkeypatch.setenv("CASCADE_YOLO_CLS_WEIGHTS", "kept.pt")
    config = load_config("smoke", work_dir=tmp_path / "work", yolo_weights=str(weights))
    with runner._kernel_settings(config):
        assert os.environ["CASCADE_YOLO_WEIGHTS"] == str(weights)
    assert "CASCADE_YOLO_WEIGHTS" not in os.environ
    assert os.environ["CASCADE_YOLO_CLS_WEIGHTS"] == "kept.pt"


def test_a_failing_chapter_still_restores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", "before.pt")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    config = load_config("smoke", work_dir=tmp_path / "work", yolo_weights=str(weights))
    with pytest.raises(RuntimeError), runner._kernel_settings(config):
        raise RuntimeError("chapter failed")
    assert os.environ["CASCADE_YOLO_WEIGHTS"] == "before.pt"

"""Shared fixtures: the real dataset and weights (skip locally, fail under CI), and offline guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the network for weights or settings.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_path(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    path = Path(value) if value else None
    if path is not None and path.exists():
        return path
    reason = f"{what} not available: set {variable}" + (f" (now {value!r})" if value else "")
    if UNDER_CI:
        pytest.fail(
            f"{reason}. Under CI the real data is required, so this is a failure, not a skip."
        )
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real NEU-DET (CASCADE_DATA_DIR)."""
    return _require_path("CASCADE_DATA_DIR", "the real NEU-DET dataset")


@pytest.fixture(scope="session")
def yolo_weights() -> Path:
    """The COCO-pretrained YOLOv8n checkpoint (CASCADE_YOLO_WEIGHTS)."""
    return _require_path("CASCADE_YOLO_WEIGHTS", "the YOLOv8n COCO checkpoint")


@pytest.fixture(autouse=True)
def _project_local_ultralytics(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep ultralytics' settings file out of the user's home during tests."""
    if "YOLO_CONFIG_DIR" not in os.environ:
        monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "ultralytics"))

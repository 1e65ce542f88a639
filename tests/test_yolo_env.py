"""The shared ultralytics environment: thread count and device choice."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from cascade_defect.train import yolo_env


def test_training_threads_default_to_every_available_core() -> None:
    assert yolo_env.training_threads(None) == yolo_env.available_cores()
    assert yolo_env.training_threads(3) == 3
    if hasattr(os, "sched_getaffinity"):
        assert yolo_env.available_cores() == len(os.sched_getaffinity(0))


class _RecordingModel:
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[object], None]]] = {}

    def add_callback(self, event: str, callback) -> None:
        self.callbacks.setdefault(event, []).append(callback)


def test_pinned_threads_apply_when_the_trainer_starts() -> None:
    import torch

    before = torch.get_num_threads()
    model = _RecordingModel()
    wanted = 1 if before != 1 else 2
    yolo_env.pin_training_threads(model, wanted)
    (callback,) = model.callbacks["on_pretrain_routine_start"]
    try:
        assert torch.get_num_threads() == before, "nothing changes until training starts"
        callback(object())
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_gpu_request_without_a_gpu_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert yolo_env.resolve_device("auto") == "cpu"
    assert yolo_env.resolve_device("CPU") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA"):
        yolo_env.resolve_device("0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert yolo_env.resolve_device("cuda:0") == "0"
    assert yolo_env.resolve_device("auto") == "0"

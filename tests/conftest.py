"""Shared fixtures: the real dataset and weights (skip locally, fail under CI), and offline guards."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse and record every non-loopback connection or name lookup."""
    attempts: list[str] = []
    loopback = {"127.0.0.1", "::1", "localhost"}
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo
    real_create_connection = socket.create_connection

    def host_of(address) -> str:
        return str(address[0]) if isinstance(address, tuple) else str(address)

    def guarded_connect(self, address):
        if self.family == socket.AF_UNIX or host_of(address) in loopback:
            return real_connect(self, address)
        attempts.append(f"connect {address}")
        raise OSError("network blocked by test")

    def guarded_create_connection(address, *args, **kwargs):
        if host_of(address) in loopback:  # the loopback servers the integration tests start
            return real_create_connection(address, *args, **kwargs)
        attempts.append(f"create_connection {address}")
        raise OSError("network blocked by test")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is None or str(host) in loopback:
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """A benchmark script of ``scripts/`` imported as a module by its name: its own imports
    (``_bench_cli``, another script) resolve, and its dataclasses find their module."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"

    def load(name: str) -> ModuleType:
        monkeypatch.syspath_prepend(str(scripts))
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load

"""Running ultralytics the way this project needs: offline, quiet, on the device asked for.

ultralytics reads ``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL`` and ``YOLO_CONFIG_DIR`` when it is first
imported, so they are set here, before that import; a process that imported it earlier keeps its
own settings and a warning says so. Every module that trains or predicts goes through here.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


def import_ultralytics(config_dir: str | os.PathLike[str]) -> ModuleType:
    """Import ultralytics offline: no downloads, no pip installs, settings under ``config_dir``."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    import ultralytics
    from ultralytics.utils import ONLINE, USER_CONFIG_DIR

    if ONLINE:
        log.warning("ultralytics was imported before YOLO_OFFLINE was set; it may try the network")
    _provide_fonts(Path(USER_CONFIG_DIR))
    return ultralytics


def _provide_fonts(config_dir: Path) -> None:
    """Put a local font where ultralytics looks for Arial, so it never tries to download it.

    Ultralytics checks for ``Arial.ttf`` in its settings folder whenever it reads a dataset and
    otherwise probes its asset server. DejaVu Sans ships with matplotlib; it only draws labels
    on ultralytics' own plots.
    """
    from matplotlib import font_manager

    dejavu = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists() and dejavu.exists():
            shutil.copyfile(dejavu, target)


def resolve_weights_file(weights: str, config_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint file behind ``weights``.

    A local path is returned as is; a bare name such as ``yolov8n.pt`` is handed to ultralytics,
    which downloads it on a machine with internet access (and fails clearly on one without).
    """
    candidate = Path(weights).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    try:
        model = YOLO(weights)
    except (ConnectionError, OSError) as exc:
        raise FileNotFoundError(
            f"YOLO weights {weights!r} are not a local file and could not be downloaded ({exc}); "
            "set CASCADE_YOLO_WEIGHTS to a local yolov8n.pt"
        ) from exc
    path = Path(str(model.ckpt_path or weights))
    if not path.is_file():
        raise FileNotFoundError(
            f"YOLO weights {weights!r} not found; set CASCADE_YOLO_WEIGHTS to a local yolov8n.pt"
        )
    return path.resolve()


@contextmanager
def quiet_ultralytics(enabled: bool = True) -> Iterator[None]:
    """Silence ultralytics' per-batch logging (our progress bars replace it), then restore it."""
    from ultralytics.utils import LOGGER

    previous = LOGGER.level
    if enabled:
        LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(previous)


def resolve_device(requested: str) -> str:
    """The device string to hand ultralytics, failing clearly when a GPU is asked for but absent.

    ``auto`` picks GPU 0 when CUDA is available, else the CPU.
    """
    import torch

    value = str(requested).strip().lower()
    if value == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if value in {"cpu", "mps"}:
        return value
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"the profile asks for device {requested!r} but torch sees no CUDA GPU; run the "
            "'quick' profile on a CPU, or override training.device='cpu' (or 'auto')"
        )
    return value.removeprefix("cuda:")


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def training_threads(requested: int | None) -> int:
    """Threads for CPU training: ``requested``, or every available core when it is None.

    ultralytics resets CPU training to ``cpu_count - 1`` threads (at most 8), which on a 2-core
    machine is one core. Measured on this project's 2-core machine, one epoch of the quick
    profile's human run took 105.6 s on one thread and 65.7 s on two.
    """
    return int(requested) if requested else available_cores()


def pin_training_threads(model: Any, threads: int) -> None:
    """Make ``model.train()`` use ``threads`` CPU threads.

    ultralytics sets its own thread count when the trainer picks its device, just before
    ``on_pretrain_routine_start``; this callback overrides it right after.
    """
    import torch

    model.add_callback("on_pretrain_routine_start", lambda trainer: torch.set_num_threads(threads))

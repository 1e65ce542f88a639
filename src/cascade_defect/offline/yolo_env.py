"""Import ultralytics so that it never reaches the network.

ultralytics reads ``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL`` and ``YOLO_CONFIG_DIR`` when it is first
imported, so they are set here, before that import; a process that imported it earlier keeps its
own settings and a warning says so.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

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
    """Put a local font where ultralytics looks for Arial, which it would otherwise download."""
    try:
        from matplotlib import font_manager
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return
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

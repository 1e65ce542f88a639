"""Fine-tune a YOLOv8 model offline and seeded, and know when an earlier run can be reused.

Every label source and both tracks train through :func:`train_yolo`, so only the labels differ
between the models the book compares; the fingerprint lets a re-run skip an identical training.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.hashing import sha256_file
from cascade_defect.locations import (
    DataLocationError,
    PathAnchors,
    portable_path,
    resolve_portable_path,
)
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import TrainingSettings
from cascade_defect.train.yolo_env import (
    import_ultralytics,
    pin_training_threads,
    quiet_ultralytics,
    resolve_device,
    training_threads,
)

log = logging.getLogger(__name__)


#: Arguments :func:`train_yolo` sets itself; ``ultralytics_args`` may not override them.
RESERVED_TRAIN_ARGS = frozenset(
    {
        "data",
        "epochs",
        "imgsz",
        "batch",
        "workers",
        "device",
        "patience",
        "seed",
        "deterministic",
        "amp",
        "project",
        "name",
        "exist_ok",
        "model",
        "resume",
    }
)


_METRIC_NAMES = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/accuracy_top1": "top1",
    "metrics/accuracy_top5": "top5",
}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data-loader workers).

    On a shared machine wall time depends on the neighbours; CPU time measures the work itself.
    """
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class EpochRecorder:
    """Ultralytics callbacks that collect per-epoch metrics and drive an epoch progress bar.

    ``on_fit_epoch_end`` fires after each epoch's validation and once more after the final
    validation of ``best.pt``; only the first kind follows ``on_train_epoch_end``, which is how
    the two are told apart.
    """

    epochs: int
    desc: str = "epochs"
    progress: bool = True
    headline: str = "map50"
    """The hold-out metric shown on the bar and in the log (``top1`` for classifiers)."""
    rows: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    _pending: bool = False
    _bar: Any = None
    _start: float = field(default_factory=time.perf_counter)

    def on_train_start(self, trainer: Any) -> None:
        self._start = time.perf_counter()
        self._bar = tqdm(
            total=self.epochs,
            desc=self.desc,
            unit="epoch",
            disable=progress_disabled(self.progress),
        )

    def on_train_epoch_end(self, trainer: Any) -> None:
        self._pending = True

    def on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = {
            _METRIC_NAMES.get(k, k.replace("/", "_")): _as_float(v)
            for k, v in (trainer.metrics or {}).items()
        }
        if not self._pending:
            self.final = metrics
            return
        self._pending = False
        losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}
        row = {
            "epoch": int(trainer.epoch) + 1,
            "seconds": round(time.perf_counter() - self._start, 2),
            **{k.replace("/", "_"): _as_float(v) for k, v in losses.items()},
            **metrics,
            **{k.replace("/", "_"): _as_float(v) for k, v in (trainer.lr or {}).items()},
        }
        self.rows.append(row)
        value = metrics.get(self.headline, float("nan"))
        log.info(
            "%s epoch %d/%d: hold-out %s %.3f (%.0f s)",
            self.desc,
            row["epoch"],
            self.epochs,
            self.headline,
            value,
            row["seconds"],
        )
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({self.headline: f"{value:.3f}"})

    def on_train_end(self, trainer: Any) -> None:
        if self._bar is not None:
            self._bar.close()

    def attach(self, model: Any) -> None:
        for event in ("on_train_start", "on_train_epoch_end", "on_fit_epoch_end", "on_train_end"):
            model.add_callback(event, getattr(self, event))


@dataclass
class TrainingResult:
    """One trained model: where its weights are, how it learned and how long it took."""

    source: str
    best_weights: Path
    run_dir: Path
    epochs_planned: int
    epochs_run: int
    imgsz: int
    wall_seconds: float
    history: pd.DataFrame
    holdout_metrics: dict[str, float]
    cpu_seconds: float = float("nan")
    reused: bool = False
    dataset_counts: dict[str, int] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)

    def summary(self, where: PathAnchors | None = None) -> dict[str, Any]:
        """The result as JSON-ready values; with ``where``, paths written by ``portable_path``."""

        def written(path: Path) -> str:
            return portable_path(path, where) if where is not None else str(path)

        return {
            "source": self.source,
            "best_weights": written(self.best_weights),
            "run_dir": written(self.run_dir),
            "epochs_planned": self.epochs_planned,
            "epochs_run": self.epochs_run,
            "imgsz": self.imgsz,
            "wall_seconds": round(self.wall_seconds, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "reused_earlier_run": self.reused,
            "holdout": self.holdout_metrics,
            **self.dataset_counts,
            "train_args": self.train_args,
        }


def train_yolo(
    data_yaml: Path,
    *,
    weights: str,
    project_dir: Path,
    name: str,
    epochs: int,
    imgsz: int,
    batch: int,
    workers: int,
    device: str,
    patience: int,
    seed: int,
    config_dir: Path,
    ultralytics_args: Mapping[str, Any] | None = None,
    torch_threads: int | None = None,
    progress: bool = True,
    verbose: bool = False,
    model: Any = None,
    headline: str = "map50",
) -> TrainingResult:
    """Fine-tune YOLOv8n from ``weights`` on one dataset, offline and seeded.

    Metrics come from ultralytics' callbacks (``trainer.metrics`` after each validation), not
    from its logs. ``amp=False`` because the AMP check downloads a model; ``deterministic=True``
    with ``seed`` makes a rerun on the same machine repeat itself. ``model`` replaces
    ``YOLO(weights)`` when the caller built the model itself (the classification track builds
    YOLOv8n-cls and loads ``weights`` into it); ``data_yaml`` is then whatever that task's
    trainer reads (a folder for classification).
    """
    clash = RESERVED_TRAIN_ARGS & set(ultralytics_args or {})
    if clash:
        raise ValueError(f"ultralytics_args may not set {sorted(clash)}; use the profile fields")
    if not Path(weights).exists():
        raise FileNotFoundError(
            f"YOLO weights {weights!r} not found; set CASCADE_YOLO_WEIGHTS to a local yolov8n.pt "
            "(this project never downloads weights)"
        )
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    run_dir = Path(project_dir) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if model is None:
        model = YOLO(str(weights))
    recorder = EpochRecorder(
        epochs=epochs, desc=f"train {name}", progress=progress, headline=headline
    )
    recorder.attach(model)
    pin_training_threads(model, training_threads(torch_threads))
    args: dict[str, Any] = {
        "plots": False,
        "val": True,
        "verbose": verbose,
        **(ultralytics_args or {}),
        "data": str(data_yaml),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "workers": workers,
        "device": resolve_device(device),
        "patience": patience,
        "seed": seed,
        "deterministic": True,
        "amp": False,
        "project": str(Path(project_dir).resolve()),
        "name": name,
        "exist_ok": True,
    }
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with quiet_ultralytics(not verbose):
        model.train(**args)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    trainer = model.trainer
    best = Path(trainer.best)
    if not best.exists():
        best = Path(trainer.last)
    history = pd.DataFrame(recorder.rows)
    return TrainingResult(
        source=name,
        best_weights=best,
        run_dir=Path(trainer.save_dir),
        epochs_planned=epochs,
        epochs_run=len(history),
        imgsz=imgsz,
        wall_seconds=wall,
        cpu_seconds=cpu,
        history=history,
        holdout_metrics={k: v for k, v in recorder.final.items() if k in _METRIC_NAMES.values()},
        train_args={k: v for k, v in args.items() if k not in {"data", "project"}},
    )


def training_fingerprint(dataset_dir: Path, weights: str, train_args: Mapping[str, Any]) -> str:
    """A hash of everything a trained model depends on: labels, image list, weights, arguments.

    Two runs with the same fingerprint train the same model (training is seeded and
    deterministic), so a re-run of the chapter may reuse the earlier one instead of spending
    its minutes again.
    """
    import hashlib

    digest = hashlib.sha256()
    root = Path(dataset_dir)
    for path in sorted((root / "labels").rglob("*.txt")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update((root / "images.csv").read_bytes())
    digest.update(sha256_file(Path(weights)).encode())
    digest.update(json.dumps(dict(train_args), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def reusable_result(path: Path, fingerprint: str, where: PathAnchors) -> TrainingResult | None:
    """The saved result of an identical earlier run, if its weights are still there.

    Its paths are read back with :func:`resolve_portable_path`, so a result written in another
    checkout (or on another machine) is reused when its weights were brought along.
    """
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    if payload.get("fingerprint") != fingerprint or not payload.get("best_weights"):
        return None
    try:
        best = resolve_portable_path(payload["best_weights"], where)
    except DataLocationError:
        return None
    if not best.exists():
        return None
    return TrainingResult(
        source=payload["source"],
        best_weights=best,
        run_dir=resolve_portable_path(payload["run_dir"], where),
        epochs_planned=int(payload["epochs_planned"]),
        epochs_run=int(payload["epochs_run"]),
        imgsz=int(payload["imgsz"]),
        wall_seconds=float(payload["wall_seconds"]),
        cpu_seconds=float(payload.get("cpu_seconds", float("nan"))),
        history=pd.DataFrame(payload.get("history", [])),
        holdout_metrics=dict(payload.get("holdout", {})),
        train_args=dict(payload.get("train_args", {})),
        reused=True,
    )


def training_schedule(settings: TrainingSettings, epochs: int) -> dict[str, Any]:
    """:func:`train_yolo`'s keyword arguments from a profile's training settings.

    The thread count is resolved here so that a fingerprint of the schedule changes with it (it
    changes the arithmetic, and so the weights).
    """
    return {
        "epochs": epochs,
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "workers": settings.workers,
        "device": settings.device,
        "patience": settings.patience,
        "seed": settings.seed,
        "ultralytics_args": settings.ultralytics_args,
        "torch_threads": training_threads(settings.torch_threads),
    }

"""Training and scoring shared by the benchmark scripts that retrain YOLOv8n on variants of
chapter 05's data (``bench_box_noise.py``, ``bench_review_budget.py``).

Both must score a model exactly as chapter 06 does (ultralytics' detections on the golden test
set, the package's matching and mAP), and neither should train a dataset twice: a training's
weights are found again in the scratch folder by the training fingerprint (labels, weights,
schedule) written beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cascade_defect.chapters.c06_comparison import golden_test_dataset, golden_test_truth
from cascade_defect.data.split import SplitLayout
from cascade_defect.metrics.detection import detection_metrics, match_detections
from cascade_defect.settings import StudyConfig
from cascade_defect.train.predict import validate_on_test
from cascade_defect.train.yolo import train_yolo


@dataclass
class GoldenTestScorer:
    """The golden test set, written once into ``scratch``, and each model's matched detections
    on it."""

    config: StudyConfig
    schedule: dict[str, Any]
    scratch: Path
    _test: tuple[pd.DataFrame, pd.DataFrame, list[str], Path] | None = field(default=None)

    @property
    def layout(self) -> SplitLayout:
        return SplitLayout(self.config.paths.split_dir)

    def test_set(self) -> tuple[pd.DataFrame, pd.DataFrame, list[str], Path]:
        """Images, truth boxes, class names and the dataset YAML of the golden test set."""
        if self._test is None:
            images, truth, class_names = golden_test_truth(self.layout)
            data_yaml = golden_test_dataset(self.layout, self.scratch / "test_dataset", class_names)
            self._test = images, truth, class_names, data_yaml
        return self._test

    def matched(self, weights: Path, name: str) -> pd.DataFrame:
        """The model's detections matched with the truth, as chapter 06 matches them."""
        images, truth, class_names, data_yaml = self.test_set()
        _, detections = validate_on_test(
            weights,
            data_yaml,
            images[["image_id", "width", "height"]],
            imgsz=self.schedule["imgsz"],
            device=self.schedule["device"],
            config_dir=self.config.work_dir / ".ultralytics",
            project_dir=self.scratch / "val",
            name=name,
        )
        return match_detections(detections, truth, list(images["image_id"]), class_names)

    def score(self, weights: Path, name: str) -> tuple[dict[str, float], pd.DataFrame]:
        """Test mAP50 and mAP50-95, and the matched detections they came from."""
        matched = self.matched(weights, name)
        scores = detection_metrics(matched)
        return {"map50": scores["map50"], "map50_95": scores["map50_95"]}, matched


def trained_weights(
    data_yaml: Path,
    fingerprint: str,
    *,
    config: StudyConfig,
    schedule: dict[str, Any],
    scratch: Path,
    name: str,
    record_name: str,
    describe: str,
) -> tuple[Path, float]:
    """Best weights and training wall seconds of ``data_yaml`` on ``schedule``: those of an
    identical earlier run in ``scratch`` (its ``runs/<record_name>.json`` names the same
    fingerprint and the weights are there), else a training whose record is written."""
    record = scratch / "runs" / f"{record_name}.json"
    saved = json.loads(record.read_text()) if record.exists() else {}
    best = Path(saved.get("best_weights", ""))
    if saved.get("fingerprint") == fingerprint and best.is_file():
        print(f"{name}: weights of an identical run found in {best.parent}; scoring only")
        return best, float(saved["wall_seconds"])
    print(f"{name}: training ({describe})")
    result = train_yolo(
        data_yaml,
        weights=config.yolo_weights,
        project_dir=scratch / "runs",
        name=name,
        config_dir=config.work_dir / ".ultralytics",
        **schedule,
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "best_weights": str(result.best_weights),
                "wall_seconds": result.wall_seconds,
            }
        )
    )
    return result.best_weights, result.wall_seconds

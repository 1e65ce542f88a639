"""The offline annotator on the real NEU-DET pool (CASCADE_DATA_DIR + CASCADE_YOLO_WEIGHTS).

Skipped without the data or weights on a user's machine; a failure under CI=true.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_defect.annotate.offline import OfflineAnnotator
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.split import (
    SplitLayout,
    read_labelled_listing,
    read_pool_ground_truth,
    read_pool_listing,
)
from cascade_defect.settings import load_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_offline_annotator_labels_the_real_pool(
    real_data_dir: Path, yolo_weights: Path, tmp_path: Path
) -> None:
    config = load_config(
        "quick", data_dir=real_data_dir, work_dir=tmp_path, yolo_weights=str(yolo_weights)
    )
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    pool = read_pool_listing(layout)
    annotator = OfflineAnnotator(
        config.yolo_weights,
        cache_dir=tmp_path / "cache",
        config_dir=tmp_path / "yolo",
        progress=False,
    ).fit(seeds, seed_boxes, layout.class_names())
    store = AnnotationStore(config.paths.annotation_dir / "predictions.jsonl")

    summary = annotator.annotate(pool, store)

    assert summary.n_written == len(pool) == 1422
    truth, _ = read_pool_ground_truth(layout)  # scoring only
    answers = {r.image_id: r.prediction.defect_class for r in store.records() if r.prediction}
    accuracy = (truth["image_id"].map(answers) == truth["class_name"]).mean()
    assert accuracy >= 0.96, f"pool accuracy {accuracy:.3f} below the 96% target"
    assert summary.seconds["total"] < 120  # features + fit + predict + records, cold cache

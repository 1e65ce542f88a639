"""The real NEU-DET: the loader sees exactly what PROVENANCE.txt documents, and the split holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import data_card
from cascade_defect.settings import NEU_CLASSES, load_config

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def card(real_data_dir: Path) -> dict:
    return data_card(load_dataset(real_data_dir, progress=False))


def test_real_counts_match_the_documented_dataset(card: dict) -> None:
    assert card["n_images"] == 1800
    assert card["images_per_class"] == dict.fromkeys(NEU_CLASSES, 300)
    assert card["boxes"]["n_boxes"] == 4189
    assert card["boxes"]["by_box_class"] == {
        "crazing": 689,
        "inclusion": 1011,
        "patches": 881,
        "pitted_surface": 432,
        "rolled-in_scale": 628,
        "scratches": 548,
    }
    assert card["boxes"]["truncated"] == 1507 and card["boxes"]["difficult"] == 81


def test_real_quirks_are_all_reported(card: dict) -> None:
    assert card["quirks"]["cross_class_box"] == 188
    assert card["images_with_cross_class_boxes"] == 123
    assert card["quirks"]["mismatched_filename"] == 174
    assert card["quirks"]["duplicate_image"] == 2
    assert card["quarantined"] == []


def test_real_split_is_18_1422_360_and_keeps_the_duplicate_pair_together(
    real_data_dir: Path, tmp_path: Path
) -> None:
    config = load_config("quick", data_dir=real_data_dir, work_dir=tmp_path)
    run_data_strategy(config)
    result = run_split(config)
    assert result.assignment["split"].value_counts().to_dict() == {
        "pool": 1422,
        "test": 360,
        "seed": 18,
    }
    pair = result.assignment.set_index("image_id").loc[["patches_101", "patches_105"], "split"]
    assert pair.nunique() == 1
    assert not any(result.leakage.values())
    assert (config.paths.split_dir / "manifest.json").exists()


def test_real_quirks_match_the_record_with_paths_named_by_the_data_variable(
    real_data_dir: Path, tmp_path: Path
) -> None:
    """Chapter 01 on the real data writes the recorded quirks, each path under $CASCADE_DATA_DIR."""
    import json

    import pandas as pd

    config = load_config("quick", data_dir=real_data_dir, work_dir=tmp_path)
    out = run_data_strategy(config).outputs
    written = pd.read_csv(out.quirks, keep_default_na=False)
    assert len(written) == 364
    assert written["path"].str.startswith("$CASCADE_DATA_DIR/").all()
    assert json.loads(out.card.read_text())["root"] == "$CASCADE_DATA_DIR"

    record = Path(__file__).resolve().parents[1] / "data" / "runs" / "quick" / "01_data_strategy"
    recorded = pd.read_csv(record / "quirks.csv", keep_default_na=False)
    recorded_root = json.loads((record / "data_card.json").read_text())["root"]
    # The record may predate portable paths: compare paths below each record's own data root.
    for frame, root in ((written, "$CASCADE_DATA_DIR"), (recorded, recorded_root)):
        frame["path"] = [p.removeprefix(root + "/") for p in frame["path"]]
    assert written.to_dict("records") == recorded.to_dict("records")

"""The label sources built from the real NEU-DET split: sizes, hold-out and no test image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.data.split import SplitLayout
from cascade_defect.settings import load_config
from cascade_defect.train.sources import (
    build_source,
    holdout_ids,
    read_pool_truth,
    read_split_inputs,
)

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real_split(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    config = load_config("quick", data_dir=real_data_dir, work_dir=tmp_path_factory.mktemp("rd"))
    run_data_strategy(config)
    run_split(config)
    layout = SplitLayout(config.paths.split_dir)
    split = read_split_inputs(layout)
    return config, layout, split


def test_real_sources_have_the_documented_sizes_and_no_test_image(real_split) -> None:
    config, layout, split = real_split
    settings = config.profile.training
    holdout = holdout_ids(split.pool["image_id"], settings.val_fraction, settings.seed)
    truth = read_pool_truth(layout, split.class_names)
    human = build_source("human", split, holdout=holdout, truth=truth)
    counts = human.counts()
    assert (counts["n_seed"], counts["n_pool"]) == (18, 1422)
    assert counts["n_val"] == round(settings.val_fraction * 1422)
    assert counts["n_train"] == 1440 - counts["n_val"]
    assert counts["n_boxes"] == len(split.seed_labels) + len(truth.labels)
    seed_only = build_source("seed_only", split, holdout=holdout)
    assert seed_only.counts()["n_train"] == 18
    noisy = build_source("noise_0.1", split, holdout=holdout, truth=truth)
    assert len(noisy.flips) == 142
    test = pd.read_csv(layout.test_listing)
    for dataset in (human, seed_only, noisy):
        assert not set(dataset.images["sha256"]) & set(test["sha256"])
        assert not set(dataset.images["image_id"]) & set(test["image_id"].astype(str))

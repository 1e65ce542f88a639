"""Label-source assembly: what each source trains on, what it may read, and nothing from the test set."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cascade_defect.chapters import c05_training
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c05_training import (
    TrainingOutputs,
    prepare_source,
    run_training,
    train_source,
)
from cascade_defect.data.split import SplitLayout
from cascade_defect.settings import load_config
from cascade_defect.train.sources import (
    GroundTruthAccessError,
    LeakageError,
    SourceDataset,
    SplitInputs,
    build_source,
    epochs_for,
    flip_image_classes,
    holdout_ids,
    link_or_copy,
    noise_rate,
    noise_source,
    planned_sources,
    pseudo_training_labels,
    read_pool_truth,
    read_split_inputs,
    uses_pool_ground_truth,
    validate_source,
)
from cascade_defect.train.yolo import TrainingResult, train_yolo, training_fingerprint
from tests.synthetic import make_neu_like

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def split_config(tmp_path_factory: pytest.TempPathFactory):
    """A generated NEU-like dataset split by chapters 01-02 under the smoke profile."""
    root = tmp_path_factory.mktemp("train_split")
    data = make_neu_like(root / "neu", per_class=8, size=64)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    return config


def write_fake_pseudo_labels(config, *, flip_every: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 03's two tables built from the pool's truth, with planted failures and errors.

    Per pool image (sorted): #0 failed, #1 low confidence, #2 no_defect, #3 no box for the
    'annotator' strategy; every ``flip_every``-th image gets the next class.
    """
    layout = SplitLayout(config.paths.split_dir)
    names = layout.class_names()
    truth = pd.read_csv(layout.pool_truth).sort_values("image_id").reset_index(drop=True)
    label_rows, box_rows = [], []
    for i, row in truth.iterrows():
        cls = row.class_name
        if i % flip_every == 0:
            cls = names[(names.index(cls) + 1) % len(names)]
        status = "failed" if i == 0 else "ok"
        confidence = 0.2 if i == 1 else 0.9
        defect = "no_defect" if i == 2 else cls
        label_rows.append(
            {
                "image_id": row.image_id,
                "status": status,
                "defect_class": None if status == "failed" else defect,
                "confidence": None if status == "failed" else confidence,
            }
        )
        if status == "ok" and defect != "no_defect":
            box_rows.append(
                {
                    "image_id": row.image_id,
                    "strategy": "whole_image",
                    "class_name": cls,
                    "x1": 0.0,
                    "y1": 0.0,
                    "x2": 1.0,
                    "y2": 1.0,
                    "confidence": confidence,
                }
            )
            if i != 3:
                box_rows.append(
                    {
                        "image_id": row.image_id,
                        "strategy": "annotator",
                        "class_name": cls,
                        "x1": 0.1,
                        "y1": 0.2,
                        "x2": 0.5,
                        "y2": 0.6,
                        "confidence": confidence,
                    }
                )
    labels, boxes = pd.DataFrame(label_rows), pd.DataFrame(box_rows)
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    outputs.root.mkdir(parents=True, exist_ok=True)
    labels.to_csv(outputs.labels, index=False)
    boxes.to_csv(outputs.boxes, index=False)
    return labels, boxes


# --------------------------------------------------------------------------- names


def test_source_names_round_trip_and_reject_typos() -> None:
    assert noise_source(0.1) == "noise_0.1"
    assert noise_rate("noise_0.3") == pytest.approx(0.3)
    assert noise_rate("human") is None
    with pytest.raises(ValueError):
        validate_source("humans")
    with pytest.raises(ValueError):
        noise_rate("noise_abc")
    with pytest.raises(ValueError):
        noise_source(1.5)


def test_planned_sources_add_the_noise_sweep_to_the_profile_sources() -> None:
    settings = load_config("quick").profile.training
    planned = planned_sources(settings)
    assert planned[: len(settings.sources)] == settings.sources
    assert planned[len(settings.sources) :] == [f"noise_{r:g}" for r in settings.noise_levels]


def test_only_human_and_noise_sources_use_the_pool_truth() -> None:
    assert uses_pool_ground_truth("human")
    assert uses_pool_ground_truth("noise_0.2")
    assert not uses_pool_ground_truth("pseudo")
    assert not uses_pool_ground_truth("seed_only")


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_flip_changes_exactly_the_requested_share_of_images_never_to_the_same_class(
    rate: float,
) -> None:
    n_images, n_classes = 200, 6
    ids = [f"img{i:03d}" for i in range(n_images)]
    classes = pd.Series(np.arange(n_images) % n_classes, index=ids)
    labels = pd.DataFrame(
        {
            "image_id": ids * 2,
            "class_id": list(classes) * 2,
            "cx": 0.5,
            "cy": 0.5,
            "w": 0.2,
            "h": 0.2,
        }
    )
    noisy, flips = flip_image_classes(labels, classes, rate, n_classes, seed=7)
    assert len(flips) == round(rate * n_images)
    assert flips["image_id"].is_unique
    assert (flips["noisy_class"] != flips["true_class"]).all()
    changed = noisy["class_id"].to_numpy() != labels["class_id"].to_numpy()
    changed_images = set(noisy.loc[changed, "image_id"])
    assert changed_images == set(flips["image_id"])
    # every box of a flipped image carries the new class
    merged = noisy.merge(flips, on="image_id")
    assert (merged["class_id"] == merged["noisy_class"]).all()
    assert noisy["class_id"].between(0, n_classes - 1).all()


def test_flip_is_seeded_and_uses_every_other_class() -> None:
    ids = [f"i{i}" for i in range(600)]
    classes = pd.Series(0, index=ids)
    labels = pd.DataFrame({"image_id": ids, "class_id": 0, "cx": 0.5, "cy": 0.5, "w": 1, "h": 1})
    _, first = flip_image_classes(labels, classes, 0.5, 4, seed=3)
    _, again = flip_image_classes(labels, classes, 0.5, 4, seed=3)
    _, other = flip_image_classes(labels, classes, 0.5, 4, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert set(first["noisy_class"]) == {1, 2, 3}


# --------------------------------------------------------------------------- hold-out


def test_holdout_is_the_same_for_every_caller_and_sized_by_the_fraction() -> None:
    ids = [f"p{i}" for i in range(1422)]
    holdout = holdout_ids(ids, 0.1, seed=0)
    assert len(holdout) == 142
    assert holdout == holdout_ids(list(reversed(ids)), 0.1, seed=0)
    assert holdout != holdout_ids(ids, 0.1, seed=1)
    assert len(holdout_ids(ids[:5], 0.1, seed=0)) == 1  # never empty when possible


# --------------------------------------------------------------------------- pseudo filter


def test_pseudo_labels_leave_out_failed_low_confidence_no_defect_and_boxless_images() -> None:
    names = ["a", "b"]
    labels = pd.DataFrame(
        {
            "image_id": ["ok1", "ok2", "fail", "low", "none", "nobox", "weird", "flat", "lost"],
            "status": ["ok", "ok", "failed", "ok", "ok", "ok", "ok", "ok", "missing"],
            "defect_class": ["a", "b", None, "a", "no_defect", "b", "zzz", "a", None],
            "confidence": [0.9, 0.6, None, 0.3, 0.9, 0.9, 0.9, 0.9, None],
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": ["ok1", "ok2", "ok2", "low", "weird", "nobox", "flat"],
            "strategy": ["annotator"] * 5 + ["whole_image", "annotator"],
            "class_name": ["a", "b", "b", "a", "zzz", "b", "a"],
            "x1": [0.1, 0.0, 0.5, 0.1, 0.1, 0.0, 1.2],
            "y1": [0.1, 0.0, 0.5, 0.1, 0.1, 0.0, 0.1],
            "x2": [0.5, 0.4, 1.2, 0.5, 0.5, 1.0, 1.5],  # "flat" lies right of the image
            "y2": [0.3, 0.4, 0.9, 0.5, 0.5, 1.0, 0.5],
            "confidence": [0.9] * 7,
        }
    )
    yolo, excluded = pseudo_training_labels(
        labels, boxes, names, strategy="annotator", min_confidence=0.5
    )
    assert set(yolo["image_id"]) == {"ok1", "ok2"}
    assert dict(zip(excluded["image_id"], excluded["reason"], strict=True)) == {
        "fail": "failed",
        "low": "below_threshold",
        "none": "no_defect",
        "nobox": "no_boxes",
        "weird": "unknown_class",
        "flat": "no_boxes",
        "lost": "failed",
    }
    first = yolo[yolo["image_id"] == "ok1"].iloc[0]
    assert (first["class_id"], first["cx"], first["cy"], first["w"], first["h"]) == pytest.approx(
        (0, 0.3, 0.2, 0.4, 0.2)
    )
    clipped = yolo[yolo["image_id"] == "ok2"].iloc[1]
    assert clipped["cx"] + clipped["w"] / 2 == pytest.approx(1.0)  # x2 = 1.2 clipped to 1
    # a threshold at the confidence keeps the image (>=), one above it drops it
    kept, _ = pseudo_training_labels(labels, boxes, names, strategy="annotator", min_confidence=0.6)
    assert "ok2" in set(kept["image_id"])
    dropped, _ = pseudo_training_labels(
        labels, boxes, names, strategy="annotator", min_confidence=0.61
    )
    assert "ok2" not in set(dropped["image_id"])
    with pytest.raises(ValueError):
        pseudo_training_labels(labels, boxes, names, strategy="grid")


# --------------------------------------------------------------------------- sources on disk


def _all_sources(config) -> dict[str, SourceDataset]:
    layout = SplitLayout(config.paths.split_dir)
    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], 0.2, seed=0)
    truth = read_pool_truth(layout, split.class_names)
    pseudo = read_pseudo_labels(AnnotationOutputs(config.paths.annotation_dir))
    return {
        "human": build_source("human", split, holdout=holdout, truth=truth),
        "noise_0.5": build_source("noise_0.5", split, holdout=holdout, truth=truth),
        "seed_only": build_source("seed_only", split, holdout=holdout),
        "pseudo": build_source(
            "pseudo",
            split,
            holdout=holdout,
            pseudo=pseudo,
            box_strategy="annotator",
            min_confidence=0.5,
        ),
    }


def test_no_test_image_enters_any_source(split_config) -> None:
    write_fake_pseudo_labels(split_config)
    layout = SplitLayout(split_config.paths.split_dir)
    test = pd.read_csv(layout.test_listing)
    for source, dataset in _all_sources(split_config).items():
        assert not set(dataset.images["image_id"]) & set(test["image_id"].astype(str)), source
        assert not set(dataset.images["sha256"]) & set(test["sha256"]), source
        assert not dataset.images["path"].str.contains("/yolo/test/").any(), source


def test_sources_hold_the_right_images_and_the_same_holdout(split_config) -> None:
    labels, _ = write_fake_pseudo_labels(split_config)
    layout = SplitLayout(split_config.paths.split_dir)
    pool = pd.read_csv(layout.pool_listing)["image_id"].astype(str)
    seeds = pd.read_csv(layout.seed_listing)["image_id"].astype(str)
    sources = _all_sources(split_config)
    human = sources["human"]
    assert set(human.images["image_id"]) == set(pool) | set(seeds)
    assert set(human.images.loc[human.images["origin"] == "seed", "subset"]) == {"train"}
    seed_only = sources["seed_only"]
    assert set(seed_only.images["image_id"]) == set(seeds)
    assert seed_only.val_is_train
    pseudo = sources["pseudo"]
    kept_pool = set(pseudo.images.loc[pseudo.images["origin"] == "pool", "image_id"])
    planted = set(labels["image_id"].iloc[:4])  # failed, low confidence, no_defect, no box
    assert not kept_pool & planted
    assert kept_pool | planted == set(pool)
    assert set(pseudo.excluded["image_id"]) == planted
    human_val = set(human.images.loc[human.images["subset"] == "val", "image_id"])
    pseudo_val = set(pseudo.images.loc[pseudo.images["subset"] == "val", "image_id"])
    assert pseudo_val == human_val & kept_pool
    assert human_val <= set(pool)


def test_pseudo_labels_carry_the_annotator_classes_not_the_truth(split_config) -> None:
    labels, _ = write_fake_pseudo_labels(split_config, flip_every=2)
    layout = SplitLayout(split_config.paths.split_dir)
    names = layout.class_names()
    truth = pd.read_csv(layout.pool_truth).set_index("image_id")["class_name"]
    pseudo = _all_sources(split_config)["pseudo"]
    pool_labels = pseudo.labels[
        ~pseudo.labels["image_id"].isin(pd.read_csv(layout.seed_listing)["image_id"])
    ]
    given = labels.set_index("image_id")["defect_class"]
    for row in pool_labels.itertuples(index=False):
        assert names[row.class_id] == given[row.image_id]
    disagreeing = sum(
        names[r.class_id] != truth[r.image_id] for r in pool_labels.itertuples(index=False)
    )
    assert disagreeing > 0


def test_pseudo_and_seed_only_never_read_the_pool_ground_truth(
    split_config, tmp_path: Path
) -> None:
    """With the hidden ground truth removed, the two sources still build; human cannot."""
    write_fake_pseudo_labels(split_config)
    config = split_config.model_copy(update={"work_dir": tmp_path / "work"})
    shutil.copytree(split_config.paths.run_dir, config.paths.run_dir)
    layout = SplitLayout(config.paths.split_dir)
    shutil.rmtree(layout.ground_truth_dir)
    for source in ("pseudo", "seed_only"):
        dataset, data_yaml = prepare_source(config, source)
        assert data_yaml.exists() and len(dataset.images) > 0
    with pytest.raises(FileNotFoundError):
        prepare_source(config, "human")


def test_build_source_refuses_ground_truth_for_sources_that_must_not_see_it(split_config) -> None:
    write_fake_pseudo_labels(split_config)
    layout = SplitLayout(split_config.paths.split_dir)
    split = read_split_inputs(layout)
    truth = read_pool_truth(layout, split.class_names)
    pseudo = read_pseudo_labels(AnnotationOutputs(split_config.paths.annotation_dir))
    holdout = frozenset()
    for source in ("pseudo", "seed_only"):
        with pytest.raises(GroundTruthAccessError):
            build_source(source, split, holdout=holdout, truth=truth, pseudo=pseudo)
    with pytest.raises(ValueError):
        build_source("human", split, holdout=holdout)
    with pytest.raises(ValueError):
        build_source("human", split, holdout=holdout, truth=truth, pseudo=pseudo)


def test_a_test_image_smuggled_into_the_pool_is_refused(split_config) -> None:
    layout = SplitLayout(split_config.paths.split_dir)
    split = read_split_inputs(layout)
    truth = read_pool_truth(layout, split.class_names)
    smuggled = split.test.iloc[[0]].assign(image_id="renamed_copy")  # same bytes, new name
    tampered = SplitInputs(
        class_names=split.class_names,
        seeds=split.seeds,
        seed_labels=split.seed_labels,
        pool=pd.concat([split.pool, smuggled], ignore_index=True),
        test=split.test,
    )
    with pytest.raises(LeakageError):
        build_source("human", tampered, holdout=frozenset(), truth=truth)


def test_noise_source_flips_only_pool_images_at_the_exact_rate(split_config) -> None:
    write_fake_pseudo_labels(split_config)
    sources = _all_sources(split_config)
    human, noisy = sources["human"], sources["noise_0.5"]
    n_pool = int((human.images["origin"] == "pool").sum())
    assert len(noisy.flips) == round(0.5 * n_pool)
    seeds = set(human.images.loc[human.images["origin"] == "seed", "image_id"])
    assert not set(noisy.flips["image_id"]) & seeds
    merged = human.labels.reset_index(drop=True).compare(noisy.labels.reset_index(drop=True))
    assert len(merged) > 0
    pd.testing.assert_frame_equal(
        human.labels[human.labels["image_id"].isin(seeds)].reset_index(drop=True),
        noisy.labels[noisy.labels["image_id"].isin(seeds)].reset_index(drop=True),
    )


def test_written_dataset_is_an_ultralytics_folder_with_linked_images(split_config) -> None:
    write_fake_pseudo_labels(split_config)
    dataset, data_yaml = prepare_source(split_config, "human")
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec["path"])
    assert spec["names"] == dict(enumerate(SplitLayout(split_config.paths.split_dir).class_names()))
    train_images = sorted((root / spec["train"]).iterdir())
    val_images = sorted((root / spec["val"]).iterdir())
    assert len(train_images) + len(val_images) == len(dataset.images)
    assert len(val_images) == int((dataset.images["subset"] == "val").sum()) > 0
    for image in train_images + val_images:
        label = root / "labels" / image.parent.name / f"{image.stem}.txt"
        assert label.exists()
        assert image.stat().st_nlink > 1 or image.is_symlink()
    first = dataset.labels.iloc[0]
    subset = dataset.images.set_index("image_id").loc[first["image_id"], "subset"]
    text = (root / "labels" / subset / f"{first['image_id']}.txt").read_text().split()
    assert int(text[0]) == first["class_id"] and float(text[1]) == pytest.approx(
        first["cx"], abs=1e-6
    )


def test_seed_only_validates_on_its_own_images(split_config) -> None:
    _, data_yaml = prepare_source(split_config, "seed_only")
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["val"] == spec["train"] == "images/train"


def test_link_or_copy_falls_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"pixels")

    def refuse(*_args, **_kwargs):
        raise OSError("links not allowed here")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(Path, "symlink_to", refuse)
    assert link_or_copy(source, tmp_path / "out" / "a.jpg") == "copy"
    assert (tmp_path / "out" / "a.jpg").read_bytes() == b"pixels"


def _tiny_schedule(tmp_path: Path) -> dict:
    """train_yolo arguments for a run that must fail before any training starts."""
    return {
        "project_dir": tmp_path,
        "name": "x",
        "epochs": 1,
        "imgsz": 64,
        "batch": 2,
        "workers": 0,
        "device": "cpu",
        "patience": 1,
        "seed": 0,
        "config_dir": tmp_path,
    }


def test_reserved_arguments_cannot_be_overridden(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        train_yolo(
            tmp_path / "data.yaml",
            weights="missing.pt",
            ultralytics_args={"epochs": 5},
            **_tiny_schedule(tmp_path),
        )


def test_missing_weights_fail_without_any_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CASCADE_YOLO_WEIGHTS"):
        train_yolo(tmp_path / "data.yaml", weights="yolov8n.pt", **_tiny_schedule(tmp_path))


def test_full_profile_is_sized_for_a_gpu() -> None:
    settings = load_config("full").profile.training
    assert settings.device != "cpu" and settings.imgsz == 640 and settings.epochs >= 100


# --------------------------------------------------------------------------- one real epoch


@pytest.mark.slow
def test_one_epoch_trains_offline_and_records_metrics_through_callbacks(
    yolo_weights: Path, tmp_path: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    data = make_neu_like(tmp_path / "neu", per_class=6, size=64)
    config = load_config(
        "smoke", data_dir=data, work_dir=tmp_path / "work", yolo_weights=str(yolo_weights)
    )
    run_data_strategy(config)
    run_split(config)
    result = train_source(config, "human", epochs=1, progress=False)
    assert no_network == []
    assert result.best_weights.exists()
    assert len(result.history) == 1 and result.history["epoch"].tolist() == [1]
    assert {"map50", "map50_95", "precision", "recall"} <= set(result.history.columns)
    assert {"map50", "map50_95"} <= set(result.holdout_metrics)
    assert result.wall_seconds > 0
    assert result.train_args["amp"] is False and result.train_args["deterministic"] is True
    saved = TrainingOutputs(config.paths.training_dir).result_file("human")
    assert saved.exists()


@pytest.mark.slow
def test_chapters_05_and_06_run_end_to_end_on_a_tiny_dataset(
    yolo_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train two sources for one epoch, then score them; own mAP must track ultralytics' val."""
    from cascade_defect.chapters.c06_comparison import cascade_inputs, run_comparison

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    data = make_neu_like(tmp_path / "neu", per_class=8, size=64)  # imgsz 64: no resampling
    config = load_config(
        "smoke", data_dir=data, work_dir=tmp_path / "work", yolo_weights=str(yolo_weights)
    )
    run_data_strategy(config)
    run_split(config)
    write_fake_pseudo_labels(config)
    chapter = run_training(config, sources=["human", "pseudo"], progress=False)
    assert list(chapter.summary.index) == ["human", "pseudo"]
    assert (config.paths.training_dir / "manifest.json").exists()
    cascade = cascade_inputs(
        config, annotator="offline", annotator_usd_per_image=0.002, progress=False
    )
    assert cascade.vm_usd_per_hour > 0 and cascade.price_origin["annotator"] == "parameter"
    test_ids = pd.read_csv(SplitLayout(config.paths.split_dir).test_listing)["image_id"]
    labelled = cascade.annotator(list(test_ids.astype(str)))
    assert set(labelled) == set(test_ids.astype(str))
    assert set(labelled.values()) <= set(SplitLayout(config.paths.split_dir).class_names())
    result = run_comparison(
        config,
        n_bootstrap=50,
        latency_images=3,
        annotator=cascade.annotator,
        annotator_usd_per_image=cascade.usd_per_image,
        vm_usd_per_hour=cascade.vm_usd_per_hour,
        progress=False,
    )
    metrics = result.metrics
    assert list(metrics.index) == ["human", "pseudo"]
    assert (metrics["map50"] - metrics["map50_ultralytics"]).abs().max() < 0.01
    assert (metrics["map50_ci_low"] <= metrics["map50"] + 1e-9).all()
    assert (metrics["map50"] <= metrics["map50_ci_high"] + 1e-9).all()
    assert metrics["latency_ms_median"].gt(0).all()
    assert result.cascade["escalated_share"].is_monotonic_increasing
    assert result.cascade["usd_per_1000_cascade"].is_monotonic_increasing
    assert result.cascade["escalated_share"].iloc[-1] == 1.0
    assert result.comparison["reference"] == "human"
    for path in (result.outputs.metrics, result.outputs.comparison, result.outputs.cascade):
        assert path.exists()


def test_each_source_gets_its_own_schedule() -> None:
    settings = load_config(
        "quick", overrides={"training": {"epochs": 7, "noise_epochs": 3, "seed_only_epochs": 50}}
    ).profile.training
    assert epochs_for("human", settings) == 7
    assert epochs_for("pseudo", settings) == 7
    assert epochs_for("seed_only", settings) == 50
    assert epochs_for("noise_0.3", settings) == 3
    unset = settings.model_copy(update={"seed_only_epochs": None})
    assert epochs_for("seed_only", unset) == 7


def test_fingerprint_follows_labels_weights_and_arguments(split_config, tmp_path: Path) -> None:
    _, data_yaml = prepare_source(split_config, "human")
    root = data_yaml.parent
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    args = {"epochs": 3, "imgsz": 64}
    first = training_fingerprint(root, str(weights), args)
    assert training_fingerprint(root, str(weights), dict(args)) == first
    assert training_fingerprint(root, str(weights), {**args, "epochs": 4}) != first
    label = next((root / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert training_fingerprint(root, str(weights), args) != first
    relabelled = training_fingerprint(root, str(weights), args)
    weights.write_bytes(b"other weights")
    assert training_fingerprint(root, str(weights), args) != relabelled


def test_reuse_returns_an_identical_earlier_run_without_training(
    split_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved result with the same fingerprint and existing weights is reused; others are not."""
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"coco weights")
    config = split_config.model_copy(update={"yolo_weights": str(weights)})
    calls: list[str] = []
    monkeypatch.setattr(c05_training, "train_yolo", _fake_training(calls))
    first = train_source(config, "seed_only", reuse=True, progress=False)
    again = train_source(config, "seed_only", reuse=True, progress=False)
    assert calls == ["seed_only"]
    assert again.reused and not first.reused
    assert again.wall_seconds == 12.0 and again.history["map50"].tolist() == [0.5]
    train_source(config, "seed_only", reuse=False, progress=False)
    assert calls == ["seed_only", "seed_only"]
    other = config.model_copy(deep=True)
    other.profile.training.seed_only_epochs = 3
    train_source(other, "seed_only", reuse=True, progress=False)
    assert len(calls) == 3  # a changed schedule trains again
    again.best_weights.unlink()
    train_source(other, "seed_only", reuse=True, progress=False)
    assert len(calls) == 4  # missing weights train again


def _fake_training(calls: list[str]):
    """Stands in for :func:`train_yolo`: writes a ``best.pt`` and returns its result."""

    def fake_train(data_yaml, **kwargs):
        calls.append(kwargs["name"])
        best = Path(kwargs["project_dir"]) / kwargs["name"] / "weights" / "best.pt"
        best.parent.mkdir(parents=True, exist_ok=True)
        best.write_bytes(b"trained")
        return TrainingResult(
            source=kwargs["name"],
            best_weights=best,
            run_dir=best.parent.parent,
            epochs_planned=kwargs["epochs"],
            epochs_run=kwargs["epochs"],
            imgsz=kwargs["imgsz"],
            wall_seconds=12.0,
            history=pd.DataFrame({"epoch": [1], "map50": [0.5]}),
            holdout_metrics={"map50": 0.5},
        )

    return fake_train


def _checkout_with_split(split_config, root: Path, weights: Path):
    """A project folder whose ``data/`` holds a copy of the split, and its configuration."""
    root.mkdir(parents=True)
    (root / "_quarto.yml").write_text("project:\n  type: book\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    config = split_config.model_copy(
        update={"work_dir": root / "data", "yolo_weights": str(weights)}
    )
    for chapter in (split_config.paths.data_card_dir, split_config.paths.split_dir):
        shutil.copytree(chapter, config.paths.run_dir / chapter.name)
    return config


def test_reuse_finds_the_weights_of_a_result_written_in_another_checkout(
    split_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result committed in one checkout names its weights portably; another checkout reuses it."""
    weights = tmp_path / "shared" / "yolov8n.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"coco weights")
    calls: list[str] = []
    monkeypatch.setattr(c05_training, "train_yolo", _fake_training(calls))
    first = _checkout_with_split(split_config, tmp_path / "first", weights)
    train_source(first, "seed_only", reuse=True, progress=False)
    assert calls == ["seed_only"]
    result_file = TrainingOutputs(first.paths.training_dir).result_file("seed_only")
    written = json.loads(result_file.read_text())
    assert written["best_weights"] == "data/runs/smoke/05_training/runs/seed_only/weights/best.pt"
    assert written["run_dir"] == "data/runs/smoke/05_training/runs/seed_only"
    assert str(tmp_path) not in result_file.read_text()

    # A fresh clone of the record, with the weights brought along, and the first checkout gone.
    second_root = tmp_path / "second"
    second = _checkout_with_split(split_config, second_root, weights)
    shutil.copytree(first.paths.training_dir, second.paths.training_dir)
    shutil.rmtree(tmp_path / "first")
    again = train_source(second, "seed_only", reuse=True, progress=False)
    assert calls == ["seed_only"]  # not trained again
    assert again.reused
    assert again.best_weights == second.paths.training_dir / "runs/seed_only/weights/best.pt"
    assert again.run_dir == second.paths.training_dir / "runs" / "seed_only"
    again.best_weights.unlink()
    train_source(second, "seed_only", reuse=True, progress=False)
    assert calls == ["seed_only", "seed_only"]  # without its weights the result is not reused


def test_training_results_are_written_portably_and_read_back_as_local_paths(
    split_config, tmp_path: Path
) -> None:
    from cascade_defect.chapters.c05_training import read_training_results, write_results

    config = split_config.model_copy(update={"work_dir": tmp_path / "work"})
    out = TrainingOutputs(config.paths.training_dir)
    out.root.mkdir(parents=True)
    best = out.runs_dir / "human" / "weights" / "best.pt"
    result = TrainingResult(
        source="human",
        best_weights=best,
        run_dir=best.parent.parent,
        epochs_planned=1,
        epochs_run=1,
        imgsz=64,
        wall_seconds=1.0,
        history=pd.DataFrame(),
        holdout_metrics={},
    )
    write_results({"human": result}, out.results, config)
    entry = json.loads(out.results.read_text())["human"]
    assert (
        entry["best_weights"]
        == "$CASCADE_WORK_DIR/runs/smoke/05_training/runs/human/weights/best.pt"
    )
    assert entry["run_dir"] == "$CASCADE_WORK_DIR/runs/smoke/05_training/runs/human"
    back = read_training_results(out, config)["human"]
    assert (Path(back["best_weights"]), Path(back["run_dir"])) == (best, best.parent.parent)


def test_pseudo_variants_train_on_their_named_box_strategy(split_config) -> None:
    from cascade_defect.train.sources import is_pseudo, pseudo_box_strategy

    assert pseudo_box_strategy("pseudo", "seed_detector") == "seed_detector"
    assert pseudo_box_strategy("pseudo_self_training", "seed_detector") == "self_training"
    assert pseudo_box_strategy("pseudo_other", "seed_detector") is None
    assert is_pseudo("pseudo_annotator") and not is_pseudo("human")
    with pytest.raises(ValueError, match="pseudo_<box strategy>"):
        validate_source("pseudo_bogus")

    write_fake_pseudo_labels(split_config)
    layout = SplitLayout(split_config.paths.split_dir)
    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], 0.2, seed=0)
    pseudo = read_pseudo_labels(AnnotationOutputs(split_config.paths.annotation_dir))
    named = build_source(
        "pseudo_annotator", split, holdout=holdout, pseudo=pseudo, box_strategy="whole_image"
    )
    adopted = build_source(
        "pseudo", split, holdout=holdout, pseudo=pseudo, box_strategy="annotator"
    )
    pd.testing.assert_frame_equal(
        named.labels.reset_index(drop=True), adopted.labels.reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="add 'self_training' to chapter 03's box_strategies"):
        build_source("pseudo_self_training", split, holdout=holdout, pseudo=pseudo)

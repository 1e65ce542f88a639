"""The image-classification track: labels per source, dataset folders, scoring, a real epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c05_training import (
    assemble_source,
    primary_track,
    read_training_results,
    run_classification_training,
    track_note,
)
from cascade_defect.chapters.c06_comparison import run_classification_comparison
from cascade_defect.data.split import SplitLayout
from cascade_defect.metrics.bootstrap import accuracy_samples, paired_comparison, read_comparison
from cascade_defect.settings import ClassificationSettings, TrainingSettings, load_config
from cascade_defect.train.classify import (
    base_classifier,
    image_classes,
    write_classification_dataset,
)
from cascade_defect.train.sources import epochs_for
from tests.synthetic import make_byo_dataset, make_neu_like
from tests.test_training import write_fake_pseudo_labels

CLASSES = ("hole punch", "oil stain", "scratch")


@pytest.fixture(scope="module")
def neu_split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cls_split")
    data = make_neu_like(root / "neu", per_class=8, size=64)
    config = load_config(
        "smoke",
        data_dir=data,
        work_dir=root / "work",
        overrides={"training": {"box_strategy": "whole_image"}},
    )
    run_data_strategy(config)
    run_split(config)
    write_fake_pseudo_labels(config)
    return config


@pytest.fixture(scope="module")
def folders_split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cls_folders")
    data = make_byo_dataset(root / "byo", layout="classfolders", classes=CLASSES, per_class=12)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    return config


# --------------------------------------------------------------------------- which track


def test_datasets_with_boxes_read_detection_and_class_folders_read_classification(
    neu_split, folders_split
) -> None:
    boxes = SplitLayout(neu_split.paths.split_dir)
    folders = SplitLayout(folders_split.paths.split_dir)
    assert boxes.label_kind() == "boxes" and folders.label_kind() == "image"
    assert primary_track(boxes) == "detection"
    assert primary_track(folders) == "classification"
    assert "image-level labels only" in track_note(folders)


def test_image_level_labels_become_whole_image_boxes_for_detection(folders_split) -> None:
    layout = SplitLayout(folders_split.paths.split_dir)
    seeds = pd.read_csv(layout.seed_listing)
    boxes = pd.read_csv(layout.seed_boxes)
    assert len(boxes) == len(seeds)  # one box per image
    merged = boxes.merge(seeds, on="image_id", suffixes=("_box", ""))
    assert (merged["class_name_box"] == merged["class_name"]).all()
    assert (merged["xmin"] == 0).all() and (merged["ymin"] == 0).all()
    assert (merged["xmax"] == merged["width"]).all() and (merged["ymax"] == merged["height"]).all()
    label = (layout.yolo_dir("seed") / "labels" / f"{seeds['image_id'].iloc[0]}.txt").read_text()
    assert label.split()[1:] == ["0.500000", "0.500000", "1.000000", "1.000000"]


# --------------------------------------------------------------------------- labels per source


def _assembled(config, source: str):
    return assemble_source(config, source)


def test_human_images_take_the_truth_and_pseudo_images_the_annotator_class(neu_split) -> None:
    layout = SplitLayout(neu_split.paths.split_dir)
    truth = pd.read_csv(layout.pool_truth).set_index("image_id")["class_name"]
    human = image_classes(*_assembled(neu_split, "human"))
    pool_ids = [i for i in human.index if i in truth.index]
    assert (human[pool_ids] == truth[pool_ids]).all()

    pseudo_dataset, split, none = _assembled(neu_split, "pseudo")
    assert none is None  # pseudo never receives the pool's truth
    pseudo = image_classes(pseudo_dataset, split, none)
    labels = pd.read_csv(neu_split.paths.annotation_dir / "pseudo_labels.csv").set_index("image_id")
    pool = [i for i in pseudo.index if i in labels.index]
    assert pool, "the fake pseudo labels cover pool images"
    assert (pseudo[pool] == labels.loc[pool, "defect_class"]).all()
    flipped = [i for i in pool if labels.loc[i, "defect_class"] != truth[i]]
    assert flipped, "planted annotator errors reach the classifier's labels"

    seeds = split.seeds.set_index("image_id")["class_name"]
    assert (pseudo[list(seeds.index)] == seeds).all()


def test_noise_sources_are_not_a_classification_source(neu_split) -> None:
    dataset, split, truth = _assembled(neu_split, "noise_0.3")
    with pytest.raises(ValueError, match="classification track"):
        image_classes(dataset, split, truth)


def test_written_folders_hold_every_class_in_both_subsets(neu_split, tmp_path: Path) -> None:
    dataset, split, truth = _assembled(neu_split, "human")
    classes = image_classes(dataset, split, truth)
    root = write_classification_dataset(dataset, classes, tmp_path / "cls", split.class_names)
    for subset in ("train", "val"):
        assert sorted(p.name for p in (root / subset).iterdir()) == sorted(split.class_names)
    listing = pd.read_csv(root / "images.csv")
    assert len(listing) == len(dataset.images)
    for row in listing.itertuples():
        assert len(list((root / row.subset / row.class_name).glob(f"{row.image_id}.*"))) == 1
    test_ids = set(split.test["image_id"])
    assert not test_ids & set(listing["image_id"])


def test_seed_only_validates_on_its_own_images(neu_split, tmp_path: Path) -> None:
    dataset, split, truth = _assembled(neu_split, "seed_only")
    classes = image_classes(dataset, split, truth)
    root = write_classification_dataset(dataset, classes, tmp_path / "seeds", split.class_names)
    train = sorted(p.name for p in (root / "train").rglob("*.*"))
    val = sorted(p.name for p in (root / "val").rglob("*.*"))
    assert train == val and len(train) == len(split.seeds)


def test_class_names_that_cannot_be_folders_are_refused(neu_split, tmp_path: Path) -> None:
    dataset, split, truth = _assembled(neu_split, "human")
    classes = image_classes(dataset, split, truth)
    with pytest.raises(ValueError, match="folder name"):
        write_classification_dataset(
            dataset, classes, tmp_path / "bad", ["a/b", *split.class_names[1:]]
        )


# --------------------------------------------------------------------------- scoring


def test_bootstrap_accuracy_on_a_known_case() -> None:
    correct = np.array([1, 1, 0, 0], dtype=bool)
    multiplicities = np.array([[1, 1, 1, 1], [4, 0, 0, 0], [0, 0, 2, 2], [2, 0, 2, 0]])
    assert accuracy_samples(correct, multiplicities).tolist() == [
        0.5,
        1.0,
        0.0,
        0.5,
    ]


def test_paired_comparison_and_the_ratio_verdict() -> None:
    samples = {"human": np.linspace(0.8, 1.0, 101), "pseudo": np.linspace(0.78, 0.98, 101)}

    def compare(estimates: dict[str, float]):
        return paired_comparison(estimates, samples, metric="accuracy", target_ratio=0.97)

    result = compare({"human": 0.9, "pseudo": 0.88})
    assert result is not None and result.metric == "accuracy"
    assert (result.reference_value, result.candidate_value) == (0.9, 0.88)
    assert result.difference == pytest.approx(-0.02)
    assert result.difference_ci == pytest.approx((-0.02, -0.02))
    assert result.ratio == pytest.approx(0.88 / 0.9) and result.target_met is True
    worse = compare({"human": 0.9, "pseudo": 0.8})
    assert worse is not None and worse.target_met is False
    assert compare({"human": 0.9}) is None


def test_epochs_for_reads_each_tracks_own_settings() -> None:
    """Both tracks share one epochs_for; classification has no noise sweep to give epochs to."""
    classification = ClassificationSettings(epochs=7, seed_only_epochs=40)
    assert epochs_for("human", classification) == 7
    assert epochs_for("pseudo", classification) == 7
    assert epochs_for("seed_only", classification) == 40
    assert epochs_for("seed_only", ClassificationSettings(epochs=7)) == 7  # None: epochs
    with pytest.raises(ValueError, match="no noise sources"):
        epochs_for("noise_0.1", classification)
    detection = TrainingSettings(epochs=7, noise_epochs=3, seed_only_epochs=50)
    assert epochs_for("noise_0.1", detection) == 3
    assert epochs_for("seed_only", detection) == 50


# --------------------------------------------------------------------------- real epochs


def test_backbone_comes_from_the_detection_checkpoint(yolo_weights: Path, tmp_path: Path) -> None:
    import torch

    model, origin = base_classifier(str(yolo_weights), None, tmp_path / "cfg", seed=0)
    assert "backbone" in origin
    detection = torch.load(yolo_weights, weights_only=False)["model"].float().state_dict()
    weights = model.model.state_dict()
    shared = [k for k in weights if k in detection and weights[k].shape == detection[k].shape]
    assert len(shared) > 100
    assert all(torch.equal(weights[k].float(), detection[k]) for k in shared)
    with pytest.raises(FileNotFoundError, match="CASCADE_YOLO_CLS_WEIGHTS"):
        base_classifier(str(yolo_weights), str(tmp_path / "nope.pt"), tmp_path, seed=0)


def test_the_head_depends_on_the_seed_not_on_what_ran_before(
    yolo_weights: Path, tmp_path: Path
) -> None:
    """The head layers the detection checkpoint lacks start from ``seed``, so a classifier
    trained after another one (which drew random numbers) starts where it would alone."""
    import torch

    def build(seed: int) -> dict[str, torch.Tensor]:
        model, _ = base_classifier(str(yolo_weights), None, tmp_path / "cfg", seed=seed)
        return model.model.state_dict()

    first = build(0)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = build(0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's draws are left alone
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = build(1)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_class_folder_dataset_trains_and_scores_offline(
    folders_split,
    yolo_weights: Path,
    no_network: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    config = folders_split.model_copy(update={"yolo_weights": str(yolo_weights)})
    chapter = run_classification_training(config, sources=["human", "seed_only"], progress=False)
    assert no_network == []
    assert list(chapter.summary.index) == ["human", "seed_only"]
    assert {"top1", "top5"} <= set(chapter.history.columns)
    results = read_training_results(chapter.outputs, config)
    assert (
        "backbone"
        in json.loads(chapter.outputs.result_file("human").read_text())["initial_weights"]
    )
    for entry in results.values():
        assert Path(entry["best_weights"]).exists()
    assert (chapter.outputs.root / "manifest.json").exists()

    scored = run_classification_comparison(config, n_bootstrap=50, latency_images=2, progress=False)
    n_test = len(pd.read_csv(SplitLayout(config.paths.split_dir).test_listing))
    metrics = scored.metrics
    assert list(metrics.index) == ["human", "seed_only"]
    assert (metrics["n_test"] == n_test).all()
    assert (
        (metrics["ci_low"] <= metrics["accuracy"]) & (metrics["accuracy"] <= metrics["ci_high"])
    ).all()
    for source, frame in scored.predictions.items():
        assert len(frame) == n_test
        assert set(frame["predicted_class"]) <= set(CLASSES)
        assert scored.confusion[source].to_numpy().sum() == n_test
        assert frame["correct"].mean() == pytest.approx(metrics.loc[source, "accuracy"])
    assert scored.latency["latency_ms_median"] > 0
    assert scored.outputs.metrics.exists() and scored.outputs.comparison.exists()
    comparison, extra = read_comparison(scored.outputs.comparison)
    assert comparison is None and scored.comparison == {}  # no pseudo model to compare
    assert extra["n_test_images"] == n_test and extra["latency"]["model"] == "human"

    again = run_classification_training(config, sources=["human"], reuse=True, progress=False)
    assert again.results["human"].reused

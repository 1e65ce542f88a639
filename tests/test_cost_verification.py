"""Chapter 07 prices the MLLM check of the seed detector's boxes on top of annotation.

The check's numbers must be exactly what :func:`estimate_verification_cost` says for the same
request (the chapter bills the same tokens with its own cache-hit rate, so the cached modes are
compared at the estimate's rate: every request after the first hits), with the candidate count
read from chapter 03's ``pseudo_boxes.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from IPython.display import Markdown

from cascade_defect.annotate.mllm.verify_request import (
    build_verification_prompt,
    estimate_verification_cost,
)
from cascade_defect.annotate.seeds import seed_examples
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationOutputs
from cascade_defect.chapters.c07_cost import (
    DEFAULT_CANDIDATES,
    VERIFIED_STRATEGY,
    candidate_count,
    run_cost_analysis,
)
from cascade_defect.data.split import SplitLayout, read_pool_listing
from cascade_defect.plots.cost import verification_sentence, verification_table
from cascade_defect.settings import StudyConfig, load_config
from tests.synthetic import make_neu_like

BOX_COLUMNS = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]


def pseudo_boxes(per_image: dict[str, int], strategy: str = VERIFIED_STRATEGY) -> pd.DataFrame:
    """A chapter 03 box table: ``per_image[id]`` boxes of ``strategy`` plus one whole-image box
    per image, which the count must ignore."""
    rows = []
    for image_id, n in per_image.items():
        rows.append([image_id, "whole_image", "crazing", 0.0, 0.0, 1.0, 1.0, 0.9])
        rows += [[image_id, strategy, "crazing", 0.1, 0.1, 0.4, 0.5, 0.5]] * n
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


def test_candidates_are_the_mean_seed_detector_boxes_per_pool_image(tmp_path: Path) -> None:
    path = tmp_path / "pseudo_boxes.csv"
    # Ids that pandas would read as numbers; "0003" has no seed-detector box but is in the pool.
    pseudo_boxes({"0001": 3, "0002": 4, "0003": 0}).to_csv(path, index=False)
    count = candidate_count(path, n_pool=3)
    assert count.mean == pytest.approx(7 / 3)
    assert count.sent == 2
    assert "7 seed_detector boxes over 3 pool images, 2.33 per image" in count.source

    pseudo_boxes({"a": 3, "b": 4}).to_csv(path, index=False)
    assert candidate_count(path, n_pool=2).sent == 4  # 3.5 rounds up


def test_without_seed_detector_boxes_the_detector_cap_is_assumed_and_said(tmp_path: Path) -> None:
    path = tmp_path / "pseudo_boxes.csv"
    pseudo_boxes({"a": 2}, strategy="annotator").to_csv(path, index=False)
    for boxes_file in (path, tmp_path / "missing.csv"):
        count = candidate_count(boxes_file, n_pool=5)
        assert (count.mean, count.sent) == (float(DEFAULT_CANDIDATES), DEFAULT_CANDIDATES)
        assert "max_det" in count.source and "no seed_detector boxes" in count.source


@pytest.fixture(scope="module")
def split_config(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    """Chapters 01-02 on a generated NEU-like dataset, and a chapter 03 box table for its pool
    (chapter 07 reads nothing else that these do not write; the rest is optional)."""
    root = tmp_path_factory.mktemp("verification_cost")
    data = make_neu_like(root / "data", per_class=6, size=64)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    pool = read_pool_listing(SplitLayout(config.paths.split_dir))
    per_image = {image_id: 1 + i % 4 for i, image_id in enumerate(pool["image_id"])}
    config.paths.annotation_dir.mkdir(parents=True, exist_ok=True)
    pseudo_boxes(per_image).to_csv(
        AnnotationOutputs(config.paths.annotation_dir).boxes, index=False
    )
    return config


def test_the_chapter_prices_the_check_as_the_estimate_does(split_config: StudyConfig) -> None:
    config = split_config
    layout = SplitLayout(config.paths.split_dir)
    pool = read_pool_listing(layout)
    n_pool = len(pool)
    # At this hit rate the chapter's cost model bills exactly the estimate's cached modes.
    analysis = run_cost_analysis(
        config, models=["gpt-4o", "gpt-5-nano"], cache_hit_rate=(n_pool - 1) / n_pool
    )
    table = analysis.verification
    expected_mean = sum(1 + i % 4 for i in range(n_pool)) / n_pool
    assert analysis.verification_setup["candidates_mean"] == pytest.approx(expected_mean)
    assert set(table["candidates_per_image"]) == {int(expected_mean + 0.5)}
    assert list(table["configuration"][:3]) == [
        "gpt-4o standard",
        "gpt-4o standard + caching",
        "gpt-4o Batch",
    ]
    assert table["configuration"].iloc[3].startswith("cheapest: ")

    class_names = layout.class_names()
    prompt = build_verification_prompt(class_names, seed_examples(layout), detail="low")
    field = {
        ("standard", False): "standard_usd",
        ("standard", True): "standard_cached_usd",
        ("batch", False): "batch_usd",
        ("batch", True): "batch_cached_usd",
    }
    for row in table.itertuples(index=False):
        estimate, run_cost = estimate_verification_cost(
            prompt,
            pool["path"].iloc[0],
            n_pool,
            int(row.candidates_per_image),
            image_class=class_names[0],
            model=row.model,
        )
        assert row.verification_prompt_tokens == estimate.prompt_tokens
        assert row.verification_prefix_tokens == estimate.prefix_tokens
        assert row.verification_completion_tokens == run_cost.completion_tokens_per_request
        pool_usd = getattr(run_cost, field[(row.mode, row.prompt_caching)])
        assert row.verification_usd_pool == pytest.approx(pool_usd, rel=1e-9)
        assert row.verification_usd_per_image == pytest.approx(pool_usd / n_pool, rel=1e-9)
        grid = analysis.grid
        annotation = grid[
            (grid["model"] == row.model)
            & (grid["mode"] == row.mode)
            & (grid["prompt_caching"] == row.prompt_caching)
        ]["total_usd"].iloc[0]
        assert row.annotation_usd_pool == pytest.approx(annotation)
        assert row.total_usd_per_image == pytest.approx((annotation + pool_usd) / n_pool)
    uncached = table[~table["prompt_caching"] & (table["model"] == "gpt-4o")]
    assert set(uncached["mode"]) == {"standard", "batch"}


def test_the_check_is_written_and_listed_in_the_manifest(split_config: StudyConfig) -> None:
    config = split_config
    analysis = run_cost_analysis(config, models=["gpt-4o", "gpt-5-nano"])
    out = config.paths.cost_dir
    written = pd.read_csv(out / "verification_cost.csv")
    assert list(written.columns) == list(analysis.verification.columns)
    assert written["total_usd_pool"].tolist() == pytest.approx(
        analysis.verification["total_usd_pool"].tolist()
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["verification_cost"].endswith("07_cost/verification_cost.csv")
    assert "pseudo_boxes" in manifest["inputs"]
    summary = json.loads((out / "cost_summary.json").read_text())["verification"]
    assert summary["strategy"] == VERIFIED_STRATEGY
    assert summary["measured_in_chapter_03"] is False
    assert len(summary["costs"]) == len(written)

    # What the notebook shows: the table and a sentence built from the same numbers.
    shown = verification_table(analysis.verification)
    assert len(shown) == len(written) and "both, USD pool" in shown.columns
    sentence = verification_sentence(analysis.verification, analysis.verification_setup)
    assert isinstance(sentence, Markdown)
    first = analysis.verification.iloc[0]
    assert f"USD {first['total_usd_per_image']:.6f}" in sentence.data
    assert f"{first['total_usd_pool']:.2f}" in sentence.data
    assert "not measured here" in sentence.data and "`mllm_verified`" in sentence.data
    assert "$" not in sentence.data


def test_the_sentence_says_when_chapter_03_measured_the_check() -> None:
    row = {
        "configuration": "gpt-4o standard",
        "model": "gpt-4o",
        "mode": "standard",
        "prompt_caching": False,
        "n_images": 10,
        "candidates_per_image": 3,
        "annotation_usd_per_image": 0.01,
        "total_usd_per_image": 0.02,
        "annotation_usd_pool": 0.1,
        "total_usd_pool": 0.2,
    }
    setup = {"candidates_source": "chapter 03", "measured_in_chapter_03": True}
    text = verification_sentence(pd.DataFrame([row]), setup).data
    assert "2.0 times as much" in text and "chapter 04's box-quality table shows" in text
    other = {**setup, "measured_in_chapter_03": False, "chapter_03_annotator": "azure"}
    assert "ran `azure` without" in verification_sentence(pd.DataFrame([row]), other).data

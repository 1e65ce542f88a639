"""Packing in the book: chapter 03 runs packed (here against a server without structured
outputs) and says so; chapter 07 recommends only configurations chapter 03 can run, prices the
packed layout as the estimate counts it, and names the run that would measure its accuracy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from cascade_defect.annotate.mllm.estimate import estimate_pool_cost
from cascade_defect.annotate.mllm.prompt import build_prompt
from cascade_defect.annotate.options import supported_configuration
from cascade_defect.annotate.seeds import seed_examples
from cascade_defect.chapters import c07_cost
from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.chapters.c03_annotation import AnnotationResult, run_annotation
from cascade_defect.chapters.c07_cost import REFERENCE_MODEL, CostAnalysis, run_cost_analysis
from cascade_defect.costs.model import BillingOptions, spec_cost
from cascade_defect.data.split import SplitLayout, read_pool_listing
from cascade_defect.plots.annotation import annotation_overview, structured_output_line
from cascade_defect.plots.cost import packing_sentence
from cascade_defect.settings import StudyConfig, load_config
from tests.fake_openai_server import FakeOpenAIServer
from tests.synthetic import make_neu_like

MODELS = ["gpt-4o", "gpt-5-nano"]


@pytest.fixture(scope="module")
def packed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StudyConfig, AnnotationResult, FakeOpenAIServer]]:
    """Chapters 01-03 on generated data, chapter 03 packing 4 images per request against a
    loopback server that refuses JSON-schema structured outputs."""
    root = tmp_path_factory.mktemp("packing_chapters")
    data = make_neu_like(root / "data", per_class=6, size=64)
    config = load_config("smoke", data_dir=data, work_dir=root / "work")
    run_data_strategy(config)
    run_split(config)
    with FakeOpenAIServer(reject_json_schema=True) as server, pytest.MonkeyPatch.context() as env:
        for name in ("AZURE_OPENAI_ENDPOINT", "OPENAI_API_KEY"):
            env.delenv(name, raising=False)
        env.setenv("OPENAI_BASE_URL", server.base_url)
        env.setenv("OPENAI_API_KEY", "sk-test")
        result = run_annotation(
            config,
            annotator="openai",
            images_per_request=4,
            concurrency=2,
            box_strategies=("whole_image",),
            progress=False,
        )
        yield config, result, server


@pytest.fixture(scope="module")
def analysis(packed_run: tuple[StudyConfig, AnnotationResult, FakeOpenAIServer]) -> CostAnalysis:
    return run_cost_analysis(packed_run[0], models=MODELS)


@pytest.mark.integration
def test_chapter_03_packs_and_shows_the_json_mode_fallback(
    packed_run: tuple[StudyConfig, AnnotationResult, FakeOpenAIServer],
) -> None:
    config, result, server = packed_run
    n_pool = len(read_pool_listing(SplitLayout(config.paths.split_dir)))
    summary = json.loads(result.outputs.summary.read_text())
    assert summary["images_per_request"] == 4
    assert summary["structured_output_mode"] == "json_object_fallback"
    assert summary["run"]["structured_output_mode"] == "json_object_fallback"
    assert summary["status_counts"] == {"ok": n_pool}
    assert summary["estimate"]["images_per_request"] == 4
    manifest = json.loads((config.paths.annotation_dir / "manifest.json").read_text())
    assert manifest["parameters"]["images_per_request"] == 4
    answered = [r for r in server.chat_requests() if r.status == 200]
    assert len(answered) == -(-n_pool // 4)
    assert {len(r.image_sha256s) for r in answered} <= {1, 2, 3, 4}

    shown = annotation_overview(result.summary, result.timings)["run"]
    assert shown["images per request"] == 4
    assert shown["structured output"].startswith("JSON mode fallback")
    assert structured_output_line({"structured_output_mode": "json_schema"}).startswith(
        "JSON schema"
    )
    assert "offline" in structured_output_line({})


@pytest.mark.integration
def test_chapter_07_recommends_only_configurations_chapter_03_can_run(
    analysis: CostAnalysis,
) -> None:
    targets = analysis.targets
    assert len(targets) == 3
    for row in targets.to_dict("records"):
        assert supported_configuration(**row), f"recommended but not runnable: {row}"
    assert (targets["images_per_request"] > 1).any()  # packing is runnable now, and cheaper


@pytest.mark.integration
def test_an_unsupported_configuration_is_never_recommended(
    packed_run: tuple[StudyConfig, AnnotationResult, FakeOpenAIServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def single_images_only(*, images_per_request: int, **row: object) -> bool:
        return images_per_request == 1 and supported_configuration(
            images_per_request=images_per_request, **row
        )

    monkeypatch.setattr(c07_cost, "supported_configuration", single_images_only)
    restricted = run_cost_analysis(packed_run[0], models=MODELS)
    assert set(restricted.targets["images_per_request"]) == {1}


@pytest.mark.integration
def test_chapter_07_prices_packing_as_the_estimate_counts_it(
    packed_run: tuple[StudyConfig, AnnotationResult, FakeOpenAIServer], analysis: CostAnalysis
) -> None:
    config = packed_run[0]
    layout = SplitLayout(config.paths.split_dir)
    pool = read_pool_listing(layout)
    prompt = build_prompt(seed_examples(layout), layout.class_names(), detail="low")
    sample = Path(pool["path"].iloc[0]).read_bytes()
    for per_request in (1, 8):
        _, estimate = estimate_pool_cost(
            prompt, sample, len(pool), REFERENCE_MODEL, images_per_request=per_request
        )
        spec = replace(analysis.spec, images_per_request=per_request)
        priced = spec_cost(REFERENCE_MODEL, spec, len(pool), BillingOptions())
        assert priced.n_requests == estimate.n_requests
        assert priced.total_usd == pytest.approx(estimate.standard_usd, rel=0.01)


@pytest.mark.integration
def test_chapter_07_says_packing_accuracy_is_unmeasured_and_names_the_experiment(
    packed_run: tuple[StudyConfig, AnnotationResult, FakeOpenAIServer], analysis: CostAnalysis
) -> None:
    assert analysis.packing == {
        "chapter_03_annotator": "openai",
        "chapter_03_images_per_request": 4,
    }
    saved = json.loads((packed_run[0].paths.cost_dir / "cost_summary.json").read_text())
    assert saved["packing"] == analysis.packing
    text = packing_sentence(analysis.targets, analysis.packing).data
    assert "not measured here" in text
    assert "`images_per_request=1`" in text and "`images_per_request=8`" in text
    assert "same pool" in text and "chapter 04" in text
    assert "chapter 03 ran `openai` with `images_per_request=4`" in text
    assert "$" not in text  # a dollar sign can open TeX math in the rendered book
    packed = analysis.targets[analysis.targets["images_per_request"] > 1]
    for _, row in packed.iterrows():
        assert f"USD {row['total_usd']:.2f}" in text

    single = pd.DataFrame([{**analysis.targets.iloc[0].to_dict(), "images_per_request": 1}])
    offline = packing_sentence(single, {})
    assert "No target is met more cheaply" in offline.data
    assert "recorded no annotation summary" in offline.data

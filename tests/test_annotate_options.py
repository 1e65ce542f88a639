"""AnnotatorOptions: one validated set of annotator options for chapter 03, the CLI and Batch."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cascade_defect.annotate.mllm.annotator import MLLMAnnotator
from cascade_defect.annotate.options import (
    OFFLINE_OPTION_NAMES,
    AnnotatorOptions,
    resolve_annotator,
)
from cascade_defect.cli import annotator_options_from_args, build_parser, describe_option_errors
from tests.conftest_annotate import FAST_RETRY, make_world
from tests.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def test_the_notebook_parameters_build_the_options() -> None:
    options = AnnotatorOptions.from_fields(
        None,
        annotator="offline",
        model="gpt-4o",
        pricing_model=None,
        detail="low",
        concurrency=4,
        budget_usd=5.0,
        max_attempts=3,
        box_strategies=["whole_image", "seed_detector", "annotator"],
    )
    assert options == AnnotatorOptions(annotator="offline")
    assert options.box_strategies == ("whole_image", "seed_detector", "annotator")
    assert options.priced_model == "gpt-4o"
    assert AnnotatorOptions(model="neu-4o", pricing_model="gpt-4o").priced_model == "gpt-4o"


def test_changing_options_validates_again() -> None:
    base = AnnotatorOptions(concurrency=2)
    assert AnnotatorOptions.from_fields(base) is base
    assert AnnotatorOptions.from_fields(base, budget_usd=1.0).concurrency == 2
    with pytest.raises(ValidationError, match="budget_usd"):
        AnnotatorOptions.from_fields(base, budget_usd=-1.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"detail": "medium"}, "detail"),
        ({"annotator": "claude"}, "annotator"),
        ({"box_strategies": ["whole_image", "polygons"]}, "box_strategies"),
        ({"box_strategies": []}, "box_strategies"),
        ({"box_strategies": ["whole_image", "whole_image"]}, "box_strategies"),
        ({"offline_options": {"imgsize": 224}}, "offline_options"),
        ({"budget": 5.0}, "budget"),
    ],
)
def test_a_wrong_option_is_named(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AnnotatorOptions(**fields)
    assert named in {str(error["loc"][0]) for error in caught.value.errors()}


def test_offline_options_are_offline_annotator_arguments() -> None:
    from cascade_defect.annotate.offline import OfflineAnnotator

    accepted = set(inspect.signature(OfflineAnnotator.__init__).parameters)
    assert accepted >= OFFLINE_OPTION_NAMES
    AnnotatorOptions(offline_options={"transductive": False, "imgsz": 160})


def test_auto_resolves_from_the_environment_only() -> None:
    assert resolve_annotator("auto", {}) == "offline"
    assert resolve_annotator("auto", {"OPENAI_API_KEY": "k"}) == "openai"
    assert resolve_annotator("auto", {"AZURE_OPENAI_ENDPOINT": "https://x"}) == "azure"
    assert resolve_annotator("openai", {}) == "openai"
    options = AnnotatorOptions(concurrency=3)
    resolved = options.resolved({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})
    assert (resolved.annotator, resolved.concurrency, options.annotator) == ("openai", 3, "auto")


def test_the_online_annotator_takes_its_settings_from_the_options(tmp_path: Path) -> None:
    world = make_world(tmp_path, n_pool=1)
    options = AnnotatorOptions(
        annotator="openai",
        model="gpt-4o-mini",
        detail="high",
        concurrency=7,
        budget_usd=0.5,
        max_attempts=5,
        max_completion_tokens=300,
        temperature=None,
        progress=False,
    )
    with FakeOpenAIServer() as server:
        environ = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.base_url}
        annotator = MLLMAnnotator.from_options(
            world.seeds,
            world.class_names,
            tmp_path / "s.jsonl",
            options,
            environ=environ,
            retry=FAST_RETRY,
        )
    assert (annotator.config.provider, annotator.config.model) == ("openai", "gpt-4o-mini")
    assert (annotator.prompt.detail, annotator.concurrency, annotator.budget_usd) == (
        "high",
        7,
        0.5,
    )
    assert annotator.retry.max_attempts == 5
    assert annotator.retry.backoff_base_s == FAST_RETRY.backoff_base_s
    assert annotator.request_params == {"max_completion_tokens": 300}
    with pytest.raises(ValueError, match="offline"):
        MLLMAnnotator.from_options(
            world.seeds,
            world.class_names,
            tmp_path / "s.jsonl",
            AnnotatorOptions(annotator="offline"),
        )


def test_cli_errors_name_the_flag() -> None:
    args = build_parser().parse_args(
        ["annotate", "--images", "i", "--seeds", "s", "--out", "o", "--concurrency", "0"]
    )
    with pytest.raises(ValidationError) as caught:
        annotator_options_from_args(args)
    assert describe_option_errors(caught.value).startswith("argument --concurrency:")


def test_generic_annotation_code_imports_no_chapter() -> None:
    check = (
        "import sys, cascade_defect.annotate.folder, cascade_defect.annotate.options;"
        "loaded = [m for m in sys.modules if m.startswith('cascade_defect.chapters')];"
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

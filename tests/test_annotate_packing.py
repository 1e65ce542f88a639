"""Packed requests without HTTP: the packed schema, the request layout, the per-image split of
an answer and of its usage, the per-image estimate, and which configurations are runnable."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from openai.lib._parsing import type_to_response_format_param
from openai.lib._pydantic import to_strict_json_schema
from pydantic import ValidationError

from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    compare_with_usage,
    count_text_tokens,
    estimate_pool_cost,
    estimate_request_tokens,
    typical_answer_json,
    typical_packed_answer_json,
)
from cascade_defect.annotate.mllm.packing import (
    IMAGE_ID_TEXT,
    classify_packed,
    image_labels,
    packed_model_for,
    plan_request,
    split_usage,
)
from cascade_defect.annotate.mllm.prompt import build_prompt
from cascade_defect.annotate.mllm.requests import JSON_OBJECT_FORMAT
from cascade_defect.annotate.options import AnnotatorOptions, supported_configuration
from cascade_defect.annotate.schema import (
    DefectPrediction,
    Usage,
    packed_prediction_model_for,
    prediction_model_for,
)
from cascade_defect.costs import pricing
from cascade_defect.costs.model import PromptSpec, cheapest_config
from cascade_defect.settings import NEU_CLASSES
from tests.conftest_annotate import AnnotateWorld, make_world
from tests.test_annotate_schema_store import STRICT_KEYWORDS, _walk, good_prediction, make_record

ANSWER_MODEL = prediction_model_for(NEU_CLASSES)
PACKED_MODEL = packed_prediction_model_for(ANSWER_MODEL)
LABELS = ["img-aaaa0001", "img-bbbb0002", "img-cccc0003", "img-dddd0004"]


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=4, seeds_per_class=3)


def item(image_id: str, **overrides: Any) -> dict[str, Any]:
    return {"image_id": image_id, **good_prediction(**overrides)}


def completion(content: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": usage
        or {"prompt_tokens": 3001, "completion_tokens": 242, "prompt_tokens_details": {}},
    }


# -- the packed structured output -------------------------------------------------------------


def test_packed_schema_is_strict_and_names_the_image_first() -> None:
    schema = to_strict_json_schema(PACKED_MODEL)
    for path, node in _walk(schema):
        assert not set(node) - STRICT_KEYWORDS, path
        if node.get("type") == "object":
            assert node["additionalProperties"] is False, path
            assert set(node["required"]) == set(node["properties"]), path
    assert list(schema["properties"]) == ["predictions"]
    (item_def,) = [d for name, d in schema["$defs"].items() if "image_id" in d["properties"]]
    assert next(iter(item_def["properties"])) == "image_id"
    assert item_def["properties"]["image_id"]["type"] == "string"
    assert item_def["properties"]["defect_class"]["enum"] == [*NEU_CLASSES, "no_defect"]
    assert type_to_response_format_param(PACKED_MODEL)["json_schema"]["strict"] is True


def test_packed_model_validates_each_item_like_a_single_answer() -> None:
    answer = PACKED_MODEL.model_validate({"predictions": [item(label) for label in LABELS]})
    first = answer.predictions[0]  # type: ignore[attr-defined]
    assert isinstance(first, DefectPrediction) and first.image_id == LABELS[0]
    with pytest.raises(ValidationError, match="confidence"):
        PACKED_MODEL.model_validate({"predictions": [item("img-1", confidence=1.7)]})
    with pytest.raises(ValidationError, match="extra"):
        PACKED_MODEL.model_validate({"predictions": [item("img-1")], "note": "x"})
    with pytest.raises(ValidationError, match="extra"):
        PACKED_MODEL.model_validate({"predictions": [{**item("img-1"), "colour": "red"}]})
    with pytest.raises(ValidationError, match="image_id"):  # ids are strings, never numbers
        PACKED_MODEL.model_validate_json(json.dumps({"predictions": [item(7)]}))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="image_id"):
        PACKED_MODEL.model_validate({"predictions": [good_prediction()]})


def test_image_labels_are_short_distinct_strings_from_the_keys() -> None:
    assert image_labels(["0123456789abcdef", "fedcba9876543210"]) == [
        "img-01234567",
        "img-fedcba98",
    ]
    clash = image_labels(["0123456789abcdef", "01234567ffffffff"])
    assert clash == ["img-0123456789abcdef", "img-01234567ffffffff"]
    with pytest.raises(ValueError, match="once"):
        image_labels(["ab", "ab"])


def test_usage_is_split_into_equal_shares_that_add_up() -> None:
    shares = split_usage(Usage(prompt_tokens=3001, cached_tokens=1920, completion_tokens=242), 4)
    assert [s.prompt_tokens for s in shares] == [751, 750, 750, 750]
    assert [s.cached_tokens for s in shares] == [480] * 4
    assert [s.completion_tokens for s in shares] == [61, 61, 60, 60]
    assert split_usage(Usage(prompt_tokens=5), 1) == [Usage(prompt_tokens=5)]


# -- splitting a packed answer ----------------------------------------------------------------


def test_a_complete_packed_answer_gives_each_image_its_own_prediction() -> None:
    items = [item(label, confidence=0.5 + i / 10) for i, label in enumerate(LABELS)]
    results = classify_packed(
        completion(json.dumps({"predictions": items[::-1]})), ANSWER_MODEL, LABELS
    )
    assert [r.prediction.confidence for r in results] == [0.5, 0.6, 0.7, 0.8]  # type: ignore[union-attr]
    assert all(type(r.prediction) is ANSWER_MODEL for r in results)  # same type as N=1
    assert json.loads(results[0].raw_text or "")["image_id"] == LABELS[0]
    assert sum(r.usage.prompt_tokens for r in results) == 3001


@pytest.mark.parametrize(
    ("items", "kinds"),
    [
        ([item(LABELS[0]), item(LABELS[1]), item(LABELS[3])], [None, None, "missing_answer", None]),
        (
            [item(LABELS[0]), item(LABELS[1]), item(LABELS[1]), item(LABELS[2]), item(LABELS[3])],
            [None, "duplicate_answer", None, None],
        ),
        (
            [item(LABELS[0]), item("img-unknown"), item(LABELS[2]), item(LABELS[3])],
            [None, "missing_answer", None, None],
        ),
        (
            [item(LABELS[0]), item(LABELS[1]), item(LABELS[2], confidence=1.7), item(LABELS[3])],
            [None, None, "schema_violation", None],
        ),
    ],
    ids=["omitted", "duplicated", "unknown", "invalid_item"],
)
def test_a_partial_answer_fails_only_the_images_it_concerns(
    items: list[dict[str, Any]], kinds: list[str | None]
) -> None:
    results = classify_packed(completion(json.dumps({"predictions": items})), ANSWER_MODEL, LABELS)
    assert [r.failure_kind for r in results] == kinds
    assert [r.prediction is not None for r in results] == [k is None for k in kinds]
    assert all(r.usage.prompt_tokens > 0 for r in results)  # billed either way
    if any(i["image_id"] == "img-unknown" for i in items):
        assert "'img-unknown'" in (results[1].error or "")


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ('{"predictions": [', "invalid_json"),
        (json.dumps(good_prediction()), "schema_violation"),
        (json.dumps({"predictions": {}}), "schema_violation"),
        (json.dumps({"predictions": [], "extra": 1}), "schema_violation"),
        (None, "invalid_json"),
    ],
)
def test_a_broken_packed_answer_fails_every_image(content: str | None, kind: str) -> None:
    results = classify_packed(completion(content), ANSWER_MODEL, LABELS)
    assert [r.failure_kind for r in results] == [kind] * 4
    assert sum(r.usage.completion_tokens for r in results) == 242


# -- the request ------------------------------------------------------------------------------


def test_one_image_per_request_is_exactly_the_single_image_request(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names)
    data = world.pool[0].path.read_bytes()
    plan = plan_request(prompt, ANSWER_MODEL, [("k" * 64, data)], packed=False)
    assert plan.messages == prompt.messages_for(data)
    assert plan.response_format is ANSWER_MODEL and not plan.packed
    with pytest.raises(ValueError, match="exactly one"):
        plan_request(prompt, ANSWER_MODEL, [("a", data), ("b", data)], packed=False)


def test_a_packed_request_keeps_the_prefix_and_names_each_image(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names)
    images = [(f"{i:02d}" * 32, p.path.read_bytes()) for i, p in enumerate(world.pool)]
    plan = plan_request(prompt, ANSWER_MODEL, images, packed=True)
    assert plan.messages[:-1] == list(prompt.static_messages)
    content = plan.messages[-1]["content"]
    texts = [part["text"] for part in content if part["type"] == "text"]
    assert texts[1:] == [IMAGE_ID_TEXT.format(image_id=label) for label in plan.labels]
    assert plan.labels == tuple(image_labels([key for key, _ in images]))
    assert [part["type"] for part in content[1:]] == ["text", "image_url"] * 4
    assert plan.response_format is packed_model_for(ANSWER_MODEL)  # built once per model
    assert not any(name in " ".join(texts) for name in NEU_CLASSES)  # no pool ground truth

    json_mode = plan_request(prompt, ANSWER_MODEL, images, packed=True, json_mode=True)
    assert json_mode.response_format == JSON_OBJECT_FORMAT
    schema_text = json_mode.messages[-1]["content"][-1]["text"]
    schema = json.loads(schema_text[schema_text.index("{") :])
    assert schema == to_strict_json_schema(PACKED_MODEL)
    assert json_mode.messages[:-1] == list(prompt.static_messages)


# -- estimates --------------------------------------------------------------------------------


def test_packed_estimate_counts_the_prefix_once_for_n_images(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names, detail="low")
    sample = world.pool[0].path.read_bytes()
    single, run1 = estimate_pool_cost(prompt, sample, 1422, "gpt-4o")
    packed, run8 = estimate_pool_cost(prompt, sample, 1422, "gpt-4o", images_per_request=8)

    assert packed.prefix_tokens == single.prefix_tokens
    assert packed.n_images == single.n_images + 7 and packed.image_tokens == 26 * 85
    per_image = (
        estimate_request_tokens(prompt, [sample] * 9, "gpt-4o", packed=True).query_tokens
        - estimate_request_tokens(prompt, [sample], "gpt-4o", packed=True).query_tokens
    ) / 8
    assert 85 < per_image < 85 + 15  # an image and its short id line
    assert run8.n_requests == math.ceil(1422 / 8) == 178 and run8.images_per_request == 8
    assert run8.completion_tokens_per_request == count_text_tokens(typical_packed_answer_json(8))
    assert run8.per_image_usd == pytest.approx(run8.per_request_usd / 8)
    assert run1.per_image_usd == pytest.approx(run1.per_request_usd)
    assert run8.standard_usd == pytest.approx(178 * run8.per_request_usd)
    # The prefix is shared by 8 images: each image costs well under a third of a single request.
    assert run8.per_image_usd < run1.per_image_usd / 3
    assert run1.completion_tokens_per_request == count_text_tokens(typical_answer_json())
    with pytest.raises(ValueError, match="images_per_request"):
        estimate_pool_cost(prompt, sample, 10, images_per_request=0)


def test_packed_usage_is_compared_per_image() -> None:
    estimate = PromptEstimate("gpt-4o", 0, 0, 0, 0, prompt_tokens=4000, prefix_tokens=2000)
    records = [make_record("a", usage=Usage(prompt_tokens=1000, completion_tokens=60))]
    comparison = compare_with_usage(records, estimate, completion_tokens=240, images_per_request=4)
    assert comparison.estimated_prompt_tokens == 1000
    assert comparison.estimated_completion_tokens == 60
    assert comparison.prompt_token_error_pct == 0
    assert comparison.estimated_cost_per_request_usd == pytest.approx(
        pricing.request_cost("gpt-4o", 4000, 0, 240) / 4
    )


# -- what the annotator can run ---------------------------------------------------------------


def test_images_per_request_is_an_option_of_at_least_one() -> None:
    assert AnnotatorOptions().images_per_request == 1
    assert AnnotatorOptions(images_per_request=8).images_per_request == 8
    with pytest.raises(ValidationError, match="images_per_request"):
        AnnotatorOptions(images_per_request=0)


def test_supported_configurations_are_what_the_options_accept() -> None:
    assert supported_configuration(model="gpt-4o", detail="low", images_per_request=8, mode="batch")
    assert supported_configuration(
        model="gpt-5-nano", detail="high", images_per_request=1, mode="standard", extra=1
    )
    assert not supported_configuration(
        model="gpt-4o", detail="low", images_per_request=0, mode="standard"
    )
    assert not supported_configuration(
        model="gpt-4o", detail="low", images_per_request=2.5, mode="standard"
    )
    assert not supported_configuration(
        model="gpt-4o", detail="medium", images_per_request=1, mode="standard"
    )
    assert not supported_configuration(
        model="gpt-4o", detail="low", images_per_request=1, mode="flex"
    )


def test_the_cheapest_configuration_is_drawn_from_supported_ones_only() -> None:
    spec = PromptSpec(prefix_text_tokens=1290, output_tokens_per_image=100, query_text_tokens=20)
    free = cheapest_config(spec, models=["gpt-4o"], details=("low",), images_per_request=(1, 8))
    assert free["images_per_request"] == 8
    single_only = cheapest_config(
        spec,
        models=["gpt-4o"],
        details=("low",),
        images_per_request=(1, 8),
        supported=lambda row: row["images_per_request"] == 1,
    )
    assert single_only["images_per_request"] == 1
    with pytest.raises(ValueError, match="supported"):
        cheapest_config(spec, models=["gpt-4o"], supported=lambda row: False)


def test_prompt_spec_prices_the_packed_layout_when_it_is_known() -> None:
    base = PromptSpec(prefix_text_tokens=1290, output_tokens_per_image=100, query_text_tokens=20)
    packed = PromptSpec(
        prefix_text_tokens=1290,
        output_tokens_per_image=100,
        query_text_tokens=20,
        images_per_request=8,
        packed_request_text_tokens=60,
        packed_image_text_tokens=9,
        packed_output_tokens_per_image=110,
    )
    assert packed.breakdown("gpt-4o").varying_tokens == 60 + 8 * (9 + 85)
    assert packed.output_tokens_per_request() == 8 * 110
    from dataclasses import replace

    one = replace(packed, images_per_request=1)  # one image per request ignores packed counts
    assert one.breakdown("gpt-4o") == base.breakdown("gpt-4o")
    assert one.output_tokens_per_request() == 100
    with pytest.raises(ValueError, match="non-negative"):
        replace(packed, packed_image_text_tokens=-1)

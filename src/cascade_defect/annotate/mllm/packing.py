"""What one annotation request sends and how its answer becomes one result per image.

A request holds one query image (``images_per_request=1``, the request body exactly as before
packing existed) or several: the *packed* request. Why pack: the static few-shot prefix
(instructions and the seed gallery) is most of a request's tokens, and N query images after one
prefix share it. Whether the labels stay as good is not measured in this book (chapter 07 names
the experiment that would).

Layout of a packed request: the static prefix unchanged (same prompt hash, same prefix cache,
same annotation keys), then one user message with a short instruction and, for each image, a
text part naming its ``image_id`` followed by the image. Ids are strings derived from each
image's annotation key (:func:`image_labels`), so an image keeps its id when it is re-sent in a
smaller pack.

The answer is split per image (:func:`classify_packed`): each item is validated alone with the
single-image model, so one bad item costs a retry of that image only. An omitted id, an id given
twice and an invalid item fail the images they concern; an item under an id the request did not
hold cannot be attributed and is reported with the images left unanswered. Usage and cost of a
packed request are split into equal shares per image (:func:`split_usage`).

Servers without structured outputs (vLLM, Ollama) get JSON mode instead
(:data:`~cascade_defect.annotate.mllm.requests.JSON_OBJECT_FORMAT`): the same JSON schema is
then written into the final user message, so the static prefix and the keys stay the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

import pydantic
from openai.lib._parsing import type_to_response_format_param

from cascade_defect.annotate.mllm.prompt import FewShotPrompt, encode_image, image_part
from cascade_defect.annotate.mllm.requests import (
    JSON_OBJECT_FORMAT,
    AttemptResult,
    _usage_from,
    classify_completion,
    completion_content,
    validation_summary,
)
from cascade_defect.annotate.schema import (
    DefectPrediction,
    Usage,
    packed_prediction_model_for,
)

PACKED_QUERY_TEXT = (
    "New images to label: {n}. Label each one separately, with the same conventions as the "
    "references. Each image follows a line giving its image_id. Answer with one prediction per "
    "image in predictions, each naming that image's image_id; give every image_id exactly once."
)
IMAGE_ID_TEXT = "image_id = {image_id}"
JSON_MODE_TEXT = (
    "Answer with one JSON object that follows this JSON schema, nothing else:\n{schema}"
)
StructuredOutputMode = Literal["json_schema", "json_object_fallback"]
"""How answers were constrained: the provider's structured outputs, or JSON mode after a server
refused ``response_format`` with a JSON schema."""


def image_labels(keys: Sequence[str]) -> list[str]:
    """Short, distinct string ids for a pack's images: ``img-`` and the key's first 8 hex
    digits (longer prefixes if two keys in the pack share them)."""
    if len(set(keys)) != len(keys):
        raise ValueError("a packed request holds each image once")
    width = 8
    while True:
        labels = [f"img-{key[:width]}" for key in keys]
        if len(set(labels)) == len(labels) or width >= max(len(key) for key in keys):
            return labels
        width *= 2


def split_usage(usage: Usage, n: int) -> list[Usage]:
    """``usage`` in ``n`` equal integer shares (the first ones carry the remainder), so the
    shares add up to what the provider billed."""
    if n < 1:
        raise ValueError("n must be at least 1")

    def shares(total: int) -> list[int]:
        base, extra = divmod(total, n)
        return [base + (i < extra) for i in range(n)]

    return [
        Usage(prompt_tokens=p, cached_tokens=c, completion_tokens=o)
        for p, c, o in zip(
            shares(usage.prompt_tokens),
            shares(usage.cached_tokens),
            shares(usage.completion_tokens),
            strict=True,
        )
    ]


@cache
def _schema_text(response_model: type[pydantic.BaseModel]) -> str:
    schema = type_to_response_format_param(response_model)["json_schema"]["schema"]  # type: ignore[index]
    return json.dumps(schema, separators=(",", ":"))


def with_json_schema_text(
    message: dict[str, Any], response_model: type[pydantic.BaseModel]
) -> dict[str, Any]:
    """The final user message with the answer's JSON schema appended as instructions (JSON
    mode has no schema parameter)."""
    text = JSON_MODE_TEXT.format(schema=_schema_text(response_model))
    return {**message, "content": [*message["content"], {"type": "text", "text": text}]}


def packed_messages(
    prompt: FewShotPrompt, labels: Sequence[str], images: Sequence[bytes]
) -> list[dict[str, Any]]:
    """A packed request's messages: the static prefix, then one user message with the
    instruction and, per image, its id line and the image."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": PACKED_QUERY_TEXT.format(n=len(images))}
    ]
    for label, data in zip(labels, images, strict=True):
        content.append({"type": "text", "text": IMAGE_ID_TEXT.format(image_id=label)})
        content.append(image_part(encode_image(data).data_url, prompt.detail))
    return [*prompt.static_messages, {"role": "user", "content": content}]


packed_model_for = cache(packed_prediction_model_for)
"""The packed structured output of an answer model, built once per model."""


def classify_packed(
    completion: Mapping[str, Any], answer_model: type[DefectPrediction], labels: Sequence[str]
) -> list[AttemptResult]:
    """One result per label (in order) from a packed answer; usage split into equal shares.

    A failure of the whole answer (refusal, truncation, invalid JSON, no ``predictions`` list)
    is every image's failure; otherwise each image is judged on its own item.
    """
    usages = split_usage(_usage_from(completion.get("usage")), len(labels))
    content, failure = completion_content(completion)
    if failure is not None:
        return [replace(failure, usage=usage) for usage in usages]
    data = json.loads(content or "")
    items = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(items, list) or set(data) != {"predictions"}:
        error = "a packed answer is an object whose only key, predictions, holds a list"
        return [AttemptResult(None, "schema_violation", content, error, u) for u in usages]
    wanted = set(labels)
    found: dict[str, list[Any]] = defaultdict(list)
    unknown: list[str] = []
    for item in items:
        image_id = item.get("image_id") if isinstance(item, dict) else None
        if isinstance(image_id, str) and image_id in wanted:
            found[image_id].append(item)
        else:
            unknown.append(repr(image_id))
    results = []
    for label, usage in zip(labels, usages, strict=True):
        answers = found.get(label, [])
        if not answers:
            error = f"no prediction for image_id {label}"
            if unknown:
                error += f"; answers under ids not in the request: {', '.join(unknown)}"
            results.append(AttemptResult(None, "missing_answer", content, error[:1000], usage))
            continue
        raw = json.dumps(answers if len(answers) > 1 else answers[0])
        if len(answers) > 1:
            error = f"image_id {label} answered {len(answers)} times"
            results.append(AttemptResult(None, "duplicate_answer", raw, error, usage))
            continue
        answer = {key: value for key, value in answers[0].items() if key != "image_id"}
        try:  # from JSON text, exactly as a single-image answer is validated
            prediction = answer_model.model_validate_json(json.dumps(answer))
        except pydantic.ValidationError as exc:
            results.append(
                AttemptResult(None, "schema_violation", raw, validation_summary(exc), usage)
            )
            continue
        results.append(AttemptResult(prediction, None, raw, None, usage))
    return results


@dataclass(frozen=True)
class RequestPlan:
    """One request for one or more images: its messages, its ``response_format`` and how its
    answer splits into one result per image (in the order of ``keys``)."""

    keys: tuple[str, ...]
    labels: tuple[str, ...]  # image ids of a packed request; () for a single-image request
    messages: list[dict[str, Any]]
    answer_model: type[DefectPrediction]
    response_model: type[pydantic.BaseModel]
    json_mode: bool = False

    @property
    def packed(self) -> bool:
        return bool(self.labels)

    @property
    def response_format(self) -> type[pydantic.BaseModel] | Mapping[str, Any]:
        """What the request sends as ``response_format``."""
        return JSON_OBJECT_FORMAT if self.json_mode else self.response_model

    def classify(self, completion: Mapping[str, Any]) -> list[AttemptResult]:
        """One result per image; a single-image answer is judged exactly as before packing."""
        if not self.packed:
            return [classify_completion(completion, self.answer_model)]
        return classify_packed(completion, self.answer_model, self.labels)


def plan_request(
    prompt: FewShotPrompt,
    answer_model: type[DefectPrediction],
    images: Sequence[tuple[str, bytes]],
    *,
    packed: bool,
    json_mode: bool = False,
) -> RequestPlan:
    """The request for ``images`` (``(key, bytes)`` pairs): the single-image request when
    ``packed`` is false (one image), else the packed layout, even for a pack of one."""
    keys = tuple(key for key, _ in images)
    if not packed:
        if len(images) != 1:
            raise ValueError("a request that is not packed holds exactly one image")
        messages = prompt.messages_for(images[0][1])
        labels: tuple[str, ...] = ()
        response_model: type[pydantic.BaseModel] = answer_model
    else:
        labels = tuple(image_labels(keys))
        messages = packed_messages(prompt, labels, [data for _, data in images])
        response_model = packed_model_for(answer_model)
    if json_mode:
        messages = [*messages[:-1], with_json_schema_text(messages[-1], response_model)]
    return RequestPlan(keys, labels, messages, answer_model, response_model, json_mode)

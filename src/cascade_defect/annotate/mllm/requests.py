"""One chat request and the classification of its answer, shared by the online and Batch paths.

Both paths must judge an answer by the same rules (refusal, truncation, invalid JSON, schema
violation) and the retry loop must know which HTTP errors are worth another attempt, so the
request, its error classes and :func:`classify_completion` live here, apart from the run loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
from openai import OpenAI

from cascade_defect.annotate.mllm.throttle import retry_after_seconds
from cascade_defect.annotate.schema import (
    DefectPrediction,
    Usage,
)


@dataclass
class AttemptResult:
    """Outcome of one HTTP request that reached the model (status 200)."""

    prediction: DefectPrediction | None
    failure_kind: str | None
    raw_text: str | None
    error: str | None
    usage: Usage


def _usage_from(usage: Any) -> Usage:
    """The provider's usage object (or dict) as a :class:`Usage`; zeros when absent."""
    if usage is None:
        return Usage()
    if not isinstance(usage, Mapping):
        usage = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def completion_content(completion: Mapping[str, Any]) -> tuple[str | None, AttemptResult | None]:
    """The answer's text, or the failure that stops it being read (no choice, refusal,
    truncation, content filter, empty or invalid JSON); shared by single and packed answers."""
    usage = _usage_from(completion.get("usage"))
    choices = completion.get("choices") or []
    if not choices:
        return None, AttemptResult(None, "invalid_json", None, "completion has no choices", usage)
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if message.get("refusal"):
        return None, AttemptResult(None, "refusal", message["refusal"], "model refused", usage)
    finish = choice.get("finish_reason")
    if finish == "length":
        failure = AttemptResult(None, "length", content, "answer truncated (max tokens)", usage)
        return None, failure
    if finish == "content_filter":
        return None, AttemptResult(None, "content_filter", content, "content filter", usage)
    if not content:
        return None, AttemptResult(None, "invalid_json", content, "empty content", usage)
    try:
        json.loads(content)
    except json.JSONDecodeError as exc:
        return None, AttemptResult(None, "invalid_json", content, f"invalid JSON: {exc}", usage)
    return content, None


def validation_summary(error: pydantic.ValidationError) -> str:
    """A validation error in one line (field path: message; ...), cut to 1,000 characters."""
    text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return text[:1000]


def classify_completion(
    completion: Mapping[str, Any], response_model: type[DefectPrediction]
) -> AttemptResult:
    """Turn a chat.completion JSON body into a prediction or a typed failure.

    Shared by the online client and Batch ingestion so both apply the same rules.
    """
    content, failure = completion_content(completion)
    if failure is not None:
        return failure
    usage = _usage_from(completion.get("usage"))
    try:
        prediction = response_model.model_validate_json(content or "")
    except pydantic.ValidationError as exc:
        return AttemptResult(None, "schema_violation", content, validation_summary(exc), usage)
    return AttemptResult(prediction, None, content, None, usage)


@dataclass
class _Sent:
    """What one send produced: an answer, a classified HTTP error, or no budget."""

    result: AttemptResult | list[AttemptResult] | None  # a list: one result per image
    error: Exception | None
    latency_s: float
    reserved: bool = True


class _RateLimited(Exception):
    def __init__(self, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Transient(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Fatal(Exception):
    """A client error that retrying cannot fix (400 for this image, 401/403/404 for all)."""

    def __init__(self, message: str, abort_run: bool) -> None:
        super().__init__(message)
        self.abort_run = abort_run


class _SchemaUnsupported(_Fatal):
    """HTTP 400 naming ``response_format``/``json_schema``: the server (vLLM, Ollama) has no
    structured outputs; the annotator may fall back to JSON mode once."""

    def __init__(self, message: str) -> None:
        super().__init__(message, abort_run=False)


JSON_OBJECT_FORMAT: dict[str, str] = {"type": "json_object"}
"""``response_format`` of JSON mode: any JSON object, the schema given in the instructions."""


def _parse_method(client: OpenAI) -> Callable[..., Any]:
    """``chat.completions.with_raw_response.parse``; older SDKs keep it under ``beta``."""
    completions = client.chat.completions
    if hasattr(completions, "parse"):
        return completions.with_raw_response.parse
    return client.beta.chat.completions.with_raw_response.parse  # type: ignore[attr-defined]


def _mentions_structured_outputs(exc: openai.APIStatusError) -> bool:
    text = f"{exc.message} {json.dumps(exc.body, default=str)}".lower()
    return "response_format" in text or "json_schema" in text


def post_chat(
    client: OpenAI,
    *,
    model: str,
    messages: list[dict[str, Any]],
    response_format: type[pydantic.BaseModel] | Mapping[str, Any],
    request_params: Mapping[str, Any],
) -> dict[str, Any]:
    """One chat request; returns the completion's raw JSON body or raises a typed error.

    ``response_format`` is a pydantic model (structured outputs, through
    ``chat.completions.parse``) or :data:`JSON_OBJECT_FORMAT` (JSON mode, plain ``create``).
    A 400 that names the structured-output parameters raises :class:`_SchemaUnsupported`.
    """
    json_mode = isinstance(response_format, Mapping)
    try:
        if json_mode:
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                response_format=dict(response_format),  # type: ignore[arg-type]
                **request_params,
            )
        else:
            raw = _parse_method(client)(
                model=model,
                messages=messages,
                response_format=response_format,
                **request_params,
            )
    except openai.RateLimitError as exc:
        raise _RateLimited(retry_after_seconds(exc.response.headers), str(exc)) from exc
    except openai.APITimeoutError as exc:
        raise _Transient("timeout", str(exc) or "request timed out") from exc
    except openai.APIConnectionError as exc:
        raise _Transient("http_error", f"connection error: {exc}") from exc
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            raise _Transient("http_error", f"HTTP {exc.status_code}: {exc.message}") from exc
        message = f"HTTP {exc.status_code}: {exc.message}"
        if exc.status_code == 400 and not json_mode and _mentions_structured_outputs(exc):
            raise _SchemaUnsupported(message) from exc
        abort = exc.status_code in (401, 403, 404)
        raise _Fatal(message, abort_run=abort) from exc
    # The body is read as raw JSON (not the SDK's parsed object) so that a failed answer
    # keeps its exact text and gets a precise failure kind.
    return raw.http_response.json()

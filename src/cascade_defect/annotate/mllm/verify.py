"""Checking detector proposals with the MLLM: one request per image, numbered boxes drawn on it.

The seed detector proposes candidate boxes on each pool image, and many of them are texture, not
defects. The verifier draws the candidates as numbered rectangles on the image and sends it, after
the annotation prompt's few-shot seed gallery when seeds are given, with the class list and the
image's annotated class; the model answers, for each candidate number, whether it is a defect and
of which class. Only candidates judged defects become pseudo-boxes.

Choices and why:

* The answer format is the provider's structured output (class names as an enum), and each answer
  is checked again against what was sent: every candidate number exactly once, no unknown number,
  a known class, and ``no_defect`` exactly when ``is_defect`` is false. Anything else is a
  ``schema_violation`` (invalid JSON, refusals and truncation as in the annotator), retried up to
  ``options.max_attempts`` times.
* An image whose attempts all fail keeps its candidates *unverified*: :func:`verify_proposals`
  returns them apart (``VerificationResult.unverified``) instead of keeping or dropping them,
  because whether an unchecked box beats no box depends on the caller's label source. A re-run
  sends failed images again, answered ones never.
* Requests, retries, 429 pauses, the budget, prices and the fall-back to JSON mode on a server
  without structured outputs are the annotator's: the same run loop
  (:class:`~cascade_defect.annotate.mllm.run_loop.RequestRun`) sends both. Every attempt is
  appended to a JSONL store keyed by the content hash of the image, the candidate boxes, the
  model and the prompt.

The request itself (answer schema, drawing, prompt, record, cost estimate) is in
:mod:`cascade_defect.annotate.mllm.verify_request`; this module sends it and applies the answers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pydantic
from openai import OpenAI

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.mllm.annotator import PoolImage, client_from_options
from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    estimate_prompt_tokens,
    request_cost_upper_bound,
)
from cascade_defect.annotate.mllm.packing import with_json_schema_text
from cascade_defect.annotate.mllm.prompt import SeedExample
from cascade_defect.annotate.mllm.providers import ClientConfig
from cascade_defect.annotate.mllm.requests import (
    JSON_OBJECT_FORMAT,
    AttemptResult,
    classify_completion,
)
from cascade_defect.annotate.mllm.run_loop import Pack, RequestRun, RunTally, attempt_fields
from cascade_defect.annotate.mllm.throttle import BudgetGuard, RetryPolicy
from cascade_defect.annotate.mllm.verify_request import (
    COMPLETION_TOKENS_BASE,
    COMPLETION_TOKENS_PER_CANDIDATE,
    CandidateVerdict,
    VerificationAnswer,
    VerificationPrompt,
    VerificationRecord,
    VerificationStore,
    apply_verdicts,
    build_verification_prompt,
    candidate_boxes,
    check_answer,
    draw_candidates,
    verification_model_for,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import Usage, annotation_key
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- verifier


@dataclass
class VerificationSummary(RunTally):
    """What a verification run did (:class:`RunTally`'s counts, which count images with
    candidates), and how many candidates it was asked about."""

    with_candidates: int = 0
    candidates: int = 0
    unique_requests: int = 0


@dataclass
class VerifyItem:
    """One image whose candidates are to be checked: what its request and record need."""

    image_id: str
    path: Path
    proposals: list[Proposal]
    image_class: str | None
    key: str
    image_sha256: str
    params: dict[str, Any]
    reservation_usd: float


@dataclass(frozen=True)
class VerificationPlan:
    """One verification request (the image drawn with its numbered candidates) and how its
    answer is judged: the schema, then :func:`check_answer` against the candidates sent."""

    messages: list[dict[str, Any]]
    response_model: type[VerificationAnswer]
    n_candidates: int
    class_names: tuple[str, ...]
    json_mode: bool = False

    @property
    def response_format(self) -> type[pydantic.BaseModel] | Mapping[str, Any]:
        return JSON_OBJECT_FORMAT if self.json_mode else self.response_model

    def classify(self, completion: Mapping[str, Any]) -> list[AttemptResult]:
        """The answer as one result; a well-formed answer that does not fit the candidates sent
        is a ``schema_violation``."""
        result = classify_completion(completion, self.response_model)  # type: ignore[arg-type]
        if result.prediction is not None:
            answer = cast(VerificationAnswer, result.prediction)
            try:
                check_answer(answer, self.n_candidates, self.class_names)
            except ValueError as exc:
                error = str(exc)[:1000]
                result = AttemptResult(
                    None, "schema_violation", result.raw_text, error, result.usage
                )
        return [result]


class MllmProposalVerifier:
    """Verifies proposals over any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI)."""

    progress_label = "verify"

    def __init__(
        self,
        client: OpenAI,
        config: ClientConfig,
        prompt: VerificationPrompt,
        store: VerificationStore,
        options: AnnotatorOptions | None = None,
        *,
        retry: RetryPolicy | None = None,
        budget_margin: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        """As :class:`MLLMAnnotator`: ``options`` give the pricing model, budget (spent by this
        store's records of the same prompt and model), concurrency, attempts and answer length."""
        self.options = options = options or AnnotatorOptions()
        self.client, self.config, self.prompt, self.store = client, config, prompt, store
        self.pricing_model = options.pricing_model or config.model
        self.priced = True
        try:
            pricing.price_for(self.pricing_model)
        except KeyError:
            if config.provider != "compatible":
                raise
            logger.warning("no price for %r: recording cost as $0", self.pricing_model)
            self.priced = False
        self.retry = replace(retry or RetryPolicy(), max_attempts=options.max_attempts)
        self.concurrency = options.concurrency
        self.progress = options.progress
        self.budget_margin = budget_margin
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.response_model = verification_model_for(prompt.class_names)
        self.schema_hash = sha256_bytes(
            json.dumps(self.response_model.model_json_schema(), sort_keys=True).encode()
        )[:16]

    @classmethod
    def from_options(
        cls,
        class_names: Sequence[str],
        store_path: str | os.PathLike[str],
        options: AnnotatorOptions,
        *,
        seeds: Sequence[SeedExample] = (),
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> MllmProposalVerifier:
        """The client (credentials from ``environ``), prompt and store ``options`` describe."""
        if options.annotator == "offline":
            raise ValueError("verification needs an MLLM provider, not the offline annotator")
        client, config = client_from_options(options, environ)
        prompt = build_verification_prompt(class_names, seeds, detail=options.detail)
        return cls(client, config, prompt, VerificationStore(store_path), options, **kwargs)

    # -- requests, keys and estimates ------------------------------------------------------

    def request_params(self, n_candidates: int) -> dict[str, Any]:
        """Answer settings; the length cap grows with the candidates so long lists fit."""
        need = COMPLETION_TOKENS_BASE + COMPLETION_TOKENS_PER_CANDIDATE * n_candidates
        params: dict[str, Any] = {
            "max_completion_tokens": max(self.options.max_completion_tokens, need)
        }
        if self.options.temperature is not None:
            params["temperature"] = self.options.temperature
        return params

    def key_params(self, proposals: Sequence[Proposal], image_class: str | None) -> dict[str, Any]:
        """Everything besides the model, prompt and image that changes the answer."""
        return {
            "detail": self.prompt.detail,
            "response_schema": self.schema_hash,
            "candidates": candidate_boxes(proposals),
            "image_class": image_class,
            **self.request_params(len(proposals)),
        }

    def key_for(
        self, image_bytes: bytes, proposals: Sequence[Proposal], image_class: str | None = None
    ) -> str:
        """Content-hash key: image SHA-256, candidate boxes, model, prompt and answer settings."""
        params = self.key_params(proposals, image_class)
        return annotation_key(self.config.model, self.prompt.prompt_hash, image_bytes, params)

    def estimate_for(
        self, image_bytes: bytes, proposals: Sequence[Proposal], image_class: str | None = None
    ) -> PromptEstimate:
        """Input tokens of the real request (the drawn image at its size plus all text)."""
        messages = self.prompt.messages_for(
            draw_candidates(image_bytes, proposals), proposals, image_class
        )
        return estimate_prompt_tokens(
            messages, self.pricing_model, n_static_messages=len(self.prompt.static_messages)
        )

    def request_cost(self, usage: Usage) -> float:
        """Dollars billed for one answered request (cached tokens at the cached rate)."""
        if not self.priced:
            return 0.0
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        return pricing.request_cost(
            self.pricing_model, usage.prompt_tokens, cached, usage.completion_tokens
        )

    def _backoff(self, failure_number: int) -> float:
        with self._rng_lock:
            return self.retry.backoff(failure_number, self._rng)

    # -- what the run loop asks ------------------------------------------------------------

    def plan_for(self, items: Sequence[VerifyItem], *, json_mode: bool = False) -> VerificationPlan:
        """The request for one image: drawn here, when it is sent, so a run holds no drawings."""
        (item,) = items
        drawn = draw_candidates(item.path, item.proposals)
        messages = self.prompt.messages_for(drawn, item.proposals, item.image_class)
        if json_mode:
            messages = [*messages[:-1], with_json_schema_text(messages[-1], self.response_model)]
        return VerificationPlan(
            messages, self.response_model, len(item.proposals), self.prompt.class_names, json_mode
        )

    def request_params_for(self, items: Sequence[VerifyItem]) -> dict[str, Any]:
        (item,) = items
        return self.request_params(len(item.proposals))

    def reservation_for_items(self, items: Sequence[VerifyItem]) -> float:
        return sum(item.reservation_usd for item in items)

    def record_for(
        self, item: VerifyItem, attempt: int, result: AttemptResult | None, **kw: Any
    ) -> VerificationRecord:
        """The store's line for one attempt at ``item`` (``kw``: failure_kind, error,
        cost_usd, latency_s)."""
        answer = cast(VerificationAnswer | None, result.prediction if result else None)
        return VerificationRecord(
            key=item.key,
            image_id=item.image_id,
            image_sha256=item.image_sha256,
            annotator=self.config.provider,
            model=self.config.model,
            prompt_hash=self.prompt.prompt_hash,
            params=item.params,
            candidates=item.params["candidates"],
            image_class=item.image_class,
            status="ok" if answer is not None else "failed",
            answer=None
            if answer is None
            else VerificationAnswer.model_validate(answer.model_dump()),
            failure_kind=None if answer is not None else kw.get("failure_kind"),
            **attempt_fields(result, attempt, **kw),
        )

    # -- run -------------------------------------------------------------------------------

    def verify(
        self,
        images: Sequence[PoolImage],
        proposals: Mapping[str, Sequence[Proposal]],
        image_classes: Mapping[str, str] | None = None,
    ) -> VerificationSummary:
        """Send one request per image with candidates and no answer in the store yet."""
        started = time.monotonic()
        classes = image_classes or {}
        summary = VerificationSummary(requested=len(images), budget_usd=self.options.budget_usd)
        answered = self.store.answered_keys()
        items: list[VerifyItem] = []
        seen: set[str] = set()
        for image in images:
            candidates = list(proposals.get(image.image_id, ()))
            if not candidates:
                continue  # nothing to verify, nothing sent
            summary.with_candidates += 1
            summary.candidates += len(candidates)
            data = Path(image.path).read_bytes()
            image_class = classes.get(image.image_id)
            key = self.key_for(data, candidates, image_class)
            summary.keys_by_image[image.image_id] = key
            if key in seen:
                continue
            seen.add(key)
            if key in answered:
                summary.skipped_cached += 1
                continue
            reservation = 0.0
            if self.priced:
                estimate = self.estimate_for(data, candidates, image_class)
                max_tokens = self.request_params(len(candidates))["max_completion_tokens"]
                reservation = request_cost_upper_bound(
                    estimate, max_tokens, self.pricing_model, self.budget_margin
                )
            items.append(
                VerifyItem(
                    image.image_id,
                    Path(image.path),
                    candidates,
                    image_class,
                    key,
                    sha256_bytes(data),
                    self.key_params(candidates, image_class),
                    reservation,
                )
            )
        summary.unique_requests = len(seen)
        if items:
            prior = sum(
                r.cost_usd
                for r in self.store.records()
                if r.prompt_hash == self.prompt.prompt_hash and r.model == self.config.model
            )
            run = RequestRun(self, summary, BudgetGuard(self.options.budget_usd, prior), prior)
            run.execute([Pack([item], item.reservation_usd) for item in items])
        summary.elapsed_s = time.monotonic() - started
        logger.info("verification run finished: %s", summary.as_dict())
        return summary


# --------------------------------------------------------------------------- results


@dataclass
class VerificationResult:
    """Per image: ``verified`` holds the candidates judged defects (``[]`` when none was, or
    the image had no candidates); ``unverified`` the candidates of images without an answer
    (failed or not sent), as proposed, for the caller to keep or drop."""

    verified: dict[str, list[Proposal]]
    unverified: dict[str, list[Proposal]]
    verdicts: dict[str, list[CandidateVerdict]]
    summary: VerificationSummary

    @property
    def kept(self) -> int:
        return sum(len(boxes) for boxes in self.verified.values())

    def as_dict(self) -> dict[str, Any]:
        """The run's summary plus what verification kept."""
        return {
            **self.summary.as_dict(),
            "kept_candidates": self.kept,
            "verified_images": len(self.verdicts),
            "unverified_images": len(self.unverified),
        }


def verify_proposals(
    verifier: MllmProposalVerifier,
    images: Sequence[PoolImage],
    proposals: Mapping[str, Sequence[Proposal]],
    *,
    image_classes: Mapping[str, str] | None = None,
    class_constraints: Mapping[str, str] | None = None,
) -> VerificationResult:
    """Verify every image's candidates (cached answers are reused) and apply the verdicts.

    ``image_classes`` are shown to the model as each image's annotated class; with
    ``class_constraints`` an image keeps only candidates judged of its constrained class.
    """
    summary = verifier.verify(images, proposals, image_classes)
    latest = cast(dict[str, VerificationRecord], verifier.store.latest_by_key())
    constraints = class_constraints or {}
    verified: dict[str, list[Proposal]] = {}
    unverified: dict[str, list[Proposal]] = {}
    verdicts: dict[str, list[CandidateVerdict]] = {}
    for image in images:
        candidates = list(proposals.get(image.image_id, ()))
        record = latest.get(summary.keys_by_image.get(image.image_id, ""))
        if not candidates:
            verified[image.image_id] = []
        elif record is None or record.answer is None:
            unverified[image.image_id] = candidates
        else:
            verdicts[image.image_id] = list(record.answer.verdicts)
            constraint = constraints.get(image.image_id)
            verified[image.image_id] = apply_verdicts(candidates, record.answer, constraint)
    return VerificationResult(verified, unverified, verdicts, summary)

"""Data contracts shared by every annotator (online MLLM, Batch, offline).

The prediction models double as the OpenAI *structured outputs* ``response_format``.
Strict mode rejects several JSON-schema keywords (``default``, and on some
deployments ``minimum``/``maximum``/``minItems``), so every range rule lives in
pydantic validators instead of ``Field(ge=..., le=...)``: the schema sent to the
provider stays minimal and the answer is still checked locally.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from cascade_defect.data.records import NO_DEFECT as NO_DEFECT  # the label of a defect-free answer
from cascade_defect.hashing import sha256_bytes

FailureKind = Literal[
    "refusal",
    "invalid_json",
    "schema_violation",
    "http_error",
    "timeout",
    "budget",
    "batch_error",
    "missing_answer",
    "duplicate_answer",
]
FAILURE_KINDS: tuple[str, ...] = FailureKind.__args__  # type: ignore[attr-defined]


class BoxPrediction(BaseModel):
    """One defect box, normalised to the image size so it is resolution-free."""

    model_config = ConfigDict(extra="forbid")

    defect_class: str = Field(description="Defect class of this box.")
    box: list[float] = Field(
        description="Normalised [x1, y1, x2, y2], each in [0, 1], x1 < x2 and y1 < y2."
    )

    @field_validator("box")
    @classmethod
    def _check_box(cls, box: list[float]) -> list[float]:
        if len(box) != 4:
            raise ValueError(f"box needs exactly 4 numbers [x1, y1, x2, y2], got {len(box)}")
        if any(not 0.0 <= value <= 1.0 for value in box):
            raise ValueError(f"box coordinates must be normalised to [0, 1], got {box}")
        x1, y1, x2, y2 = box
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"box must satisfy x1 < x2 and y1 < y2, got {box}")
        return box


class DefectPrediction(BaseModel):
    """What the annotator says about one image: class, confidence, boxes.

    ``bounding_box_present`` is redundant with ``boxes`` on purpose: asking the model
    for it explicitly makes an inconsistent answer detectable (it is a schema
    violation here, retried, never stored as a label).
    """

    model_config = ConfigDict(extra="forbid")

    defect_class: str = Field(description="Dominant defect class of the image, or 'no_defect'.")
    confidence: float = Field(description="Confidence in defect_class, between 0 and 1.")
    reasoning: str = Field(description="One sentence explaining the decision.")
    bounding_box_present: bool = Field(description="True when at least one box is returned.")
    boxes: list[BoxPrediction] = Field(description="Defect boxes; empty when none.")

    @field_validator("confidence")
    @classmethod
    def _check_confidence(cls, confidence: float) -> float:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        return confidence

    @model_validator(mode="after")
    def _check_consistency(self) -> DefectPrediction:
        if self.bounding_box_present != bool(self.boxes):
            raise ValueError(
                f"bounding_box_present={self.bounding_box_present} contradicts "
                f"{len(self.boxes)} box(es)"
            )
        if self.defect_class == NO_DEFECT and self.boxes:
            raise ValueError("a 'no_defect' answer cannot carry boxes")
        return self


def prediction_model_for(class_names: Sequence[str]) -> type[DefectPrediction]:
    """Build a ``DefectPrediction`` subclass whose class fields are ``Literal`` enums.

    The enum comes from the dataset's own class list, so the provider's constrained
    decoding can only produce known classes; the result is a plain subclass, so
    ``isinstance(x, DefectPrediction)`` holds and records stay interchangeable.
    """
    names = tuple(dict.fromkeys(str(name) for name in class_names))
    if not names:
        raise ValueError("class_names must not be empty")
    if NO_DEFECT in names:
        raise ValueError(f"{NO_DEFECT!r} is reserved and cannot be a dataset class")
    box_class_type: Any = Literal[names]  # type: ignore[valid-type]
    image_class_type: Any = Literal[(*names, NO_DEFECT)]  # type: ignore[valid-type]
    box_model = create_model(
        "DefectBox",
        __base__=BoxPrediction,
        defect_class=(box_class_type, Field(description="Defect class of this box.")),
    )
    return create_model(
        "DefectAnswer",
        __base__=DefectPrediction,
        defect_class=(
            image_class_type,
            Field(description="Dominant defect class of the image, or 'no_defect'."),
        ),
        boxes=(list[box_model], Field(description="Defect boxes; empty when none.")),
    )


PACKED_IMAGE_ID_DESCRIPTION = "The image_id written just before the image this prediction answers."


def packed_prediction_model_for(answer_model: type[DefectPrediction]) -> type[BaseModel]:
    """Structured output of a packed request: ``predictions``, one per query image, each an
    ``answer_model`` answer that names the ``image_id`` it answers (first, so the model commits
    to an image before describing it).

    Each item is a subclass of ``answer_model``, so the same validators judge a packed item and
    a single-image answer; ids are strings and the request decides which ones are valid.
    """
    id_base = create_model(
        "ImageId",
        __config__=ConfigDict(extra="forbid"),
        image_id=(str, Field(description=PACKED_IMAGE_ID_DESCRIPTION)),
    )
    item = create_model("PackedDefectAnswer", __base__=(answer_model, id_base))
    return create_model(
        "PackedDefectAnswers",
        __config__=ConfigDict(extra="forbid"),
        predictions=(
            list[item],  # type: ignore[valid-type]
            Field(description="One prediction per new image, each image_id exactly once."),
        ),
    )


class Usage(BaseModel):
    """Token usage of one request as the provider reported it."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


def utc_now_iso() -> str:
    """Timestamp format used in every record (ISO 8601, UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class AnnotationRecord(BaseModel):
    """One attempt at annotating one image: the unit written to the store.

    Failures are records too, so a report can show what went wrong and how much it
    cost; only ``status == "ok"`` records are ever turned into labels.
    """

    key: str
    image_id: str
    image_sha256: str
    annotator: str
    model: str
    prompt_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    status: Literal["ok", "failed"]
    prediction: DefectPrediction | None = None
    failure_kind: str | None = None
    raw_text: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempt: int = 1
    created_at: str = Field(default_factory=utc_now_iso)

    @model_validator(mode="after")
    def _check_status(self) -> AnnotationRecord:
        if self.status == "ok" and self.prediction is None:
            raise ValueError("an 'ok' record must carry a prediction")
        if self.status == "failed":
            if self.prediction is not None:
                raise ValueError("a 'failed' record must not carry a prediction")
            if not self.failure_kind:
                raise ValueError("a 'failed' record must name its failure_kind")
        return self


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) so hashes do not depend on dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def annotation_key(
    model: str, prompt_hash: str, image_bytes: bytes, params: Mapping[str, Any]
) -> str:
    """Content-hash key of one request: same model, prompt, image and params -> same key.

    This is what makes re-runs free: a key that already has an ``ok`` record is
    never sent again, whatever the image's file name or the run's order.
    """
    payload = {
        "model": model,
        "prompt_hash": prompt_hash,
        "image_sha256": sha256_bytes(image_bytes),
        "params": dict(params),
    }
    return sha256_bytes(canonical_json(payload).encode("utf-8"))

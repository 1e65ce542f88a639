"""One proposal-verification request: answer schema, drawing, prompt, stored record, cost.

The verifier (:mod:`cascade_defect.annotate.mllm.verify`) shows the model an image with the
detector's candidate boxes drawn as numbered rectangles, after the annotation prompt's seed gallery
when seeds are given, and asks for one verdict per candidate number. Nothing here needs the
``openai`` client, so the cost chapter can price a request (:func:`estimate_verification_cost`)
without one.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    RunCostEstimate,
    count_text_tokens,
    estimate_prompt_tokens,
    estimate_run_cost,
)
from cascade_defect.annotate.mllm.prompt import SeedExample, build_prompt, encode_image, image_part
from cascade_defect.annotate.schema import NO_DEFECT, Usage, canonical_json, utc_now_iso
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.hashing import sha256_bytes

logger = logging.getLogger(__name__)


VERIFY_PROMPT_VERSION = "verify-v2"  # v2: names no product (v1: hot-rolled steel strip)
DRAW_STYLE = "numbered-rectangles-v1"  # part of the prompt hash: a new drawing is a new request
BOX_COLOURS = ((255, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (255, 128, 0))
COMPLETION_TOKENS_PER_CANDIDATE = 24  # one verdict object is about 20 tokens
COMPLETION_TOKENS_BASE = 16

SYSTEM_TEMPLATE = """\
You are an expert visual inspector of manufactured surfaces.
A detector proposed candidate defect regions on surface images; you check each one.

Defect classes: {class_list}.
{gallery_note}For the new image, its candidate regions are drawn as numbered coloured rectangles
(the number sits in a filled tag at the rectangle's top-left corner) and listed with their
coordinates [x1, y1, x2, y2] normalised to the image size. For every candidate number, exactly once:
- candidate: the number.
- is_defect: true when the rectangle mainly covers a visible defect of one of the classes above;
  false for clean background, normal texture, or a rectangle that misses the defect.
- defect_class: the class of that defect, or "{no_defect}" exactly when is_defect is false.
Answer only with JSON that follows the response schema."""
GALLERY_NOTE = (
    "You are first shown {n_seeds} reference images labelled by experts, with the class and the\n"
    "defect boxes of each.\n"
)
QUERY_TEMPLATE = (
    "New image with {n} numbered candidate region(s) drawn on it.{hint}\n"
    "Candidates [x1, y1, x2, y2]: {boxes}\n"
    "Give one verdict for each candidate number from 1 to {n}."
)
CLASS_HINT = " Its image-level label is {image_class}."


# --------------------------------------------------------------------------- answer schema


class CandidateVerdict(BaseModel):
    """The model's judgement of one numbered candidate box."""

    model_config = ConfigDict(extra="forbid")

    candidate: int = Field(description="Number of the candidate, as drawn on the image.")
    is_defect: bool = Field(description="True when the rectangle mainly covers a visible defect.")
    defect_class: str = Field(description="Defect class in the rectangle, or 'no_defect'.")


class VerificationAnswer(BaseModel):
    """One answer per image: a verdict for each candidate number."""

    model_config = ConfigDict(extra="forbid")

    verdicts: list[CandidateVerdict] = Field(description="One verdict per candidate number.")


def verification_model_for(class_names: Sequence[str]) -> type[VerificationAnswer]:
    """``VerificationAnswer`` with ``defect_class`` as an enum of the classes plus ``no_defect``,
    so the provider's constrained decoding cannot name an unknown class."""
    names = tuple(dict.fromkeys(str(name) for name in class_names))
    if not names:
        raise ValueError("class_names must not be empty")
    if NO_DEFECT in names:
        raise ValueError(f"{NO_DEFECT!r} is reserved and cannot be a dataset class")
    class_type: Any = Literal[(*names, NO_DEFECT)]  # type: ignore[valid-type]
    verdict = create_model(
        "CandidateVerdictAnswer",
        __base__=CandidateVerdict,
        defect_class=(
            class_type,
            Field(description="Defect class in the rectangle, or 'no_defect'."),
        ),
    )
    return create_model(
        "VerificationAnswerFor",
        __base__=VerificationAnswer,
        verdicts=(list[verdict], Field(description="One verdict per candidate number.")),
    )


def check_answer(answer: VerificationAnswer, n_candidates: int, class_names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming every problem unless the answer fits the request exactly."""
    numbers = [verdict.candidate for verdict in answer.verdicts]
    sent = set(range(1, n_candidates + 1))
    known = {*class_names, NO_DEFECT}
    problems = []
    if unknown := sorted(set(numbers) - sent):
        problems.append(f"unknown candidate number(s) {unknown} (sent 1..{n_candidates})")
    if repeated := sorted(n for n, count in Counter(numbers).items() if count > 1):
        problems.append(f"repeated candidate number(s) {repeated}")
    if missing := sorted(sent - set(numbers)):
        problems.append(f"no verdict for candidate(s) {missing}")
    for verdict in answer.verdicts:
        if verdict.defect_class not in known:
            problems.append(
                f"candidate {verdict.candidate}: unknown class {verdict.defect_class!r}"
            )
        elif verdict.is_defect == (verdict.defect_class == NO_DEFECT):
            problems.append(
                f"candidate {verdict.candidate}: is_defect={verdict.is_defect} contradicts "
                f"class {verdict.defect_class!r}"
            )
    if problems:
        raise ValueError("; ".join(problems))


def apply_verdicts(
    proposals: Sequence[Proposal], answer: VerificationAnswer, class_name: str | None = None
) -> list[Proposal]:
    """Candidates judged defects (of ``class_name`` when given), in proposal order, each carrying
    the class the model named."""
    by_number = {verdict.candidate: verdict for verdict in answer.verdicts}
    kept = []
    for number, proposal in enumerate(proposals, start=1):
        verdict = by_number.get(number)
        if verdict is None or not verdict.is_defect:
            continue
        if class_name is not None and verdict.defect_class != class_name:
            continue
        kept.append(replace(proposal, class_name=verdict.defect_class))
    return kept


# --------------------------------------------------------------------------- drawing


def _rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB copy; 16-bit and float greyscale are stretched to 0..255 first."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        img = Image.fromarray(scaled.astype(np.uint8), mode="L")
    return img.convert("RGB")


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in box)
    left, top = min(int(x1 * width), width - 1), min(int(y1 * height), height - 1)
    right = min(max(left, int(np.ceil(x2 * width)) - 1), width - 1)
    bottom = min(max(top, int(np.ceil(y2 * height)) - 1), height - 1)
    return left, top, right, bottom


def draw_candidates(
    image: str | os.PathLike[str] | bytes,
    proposals: Sequence[Proposal],
    *,
    image_format: Literal["PNG", "JPEG"] = "PNG",
) -> bytes:
    """The image (path or bytes, any mode and size) as RGB with candidate ``i`` drawn as a
    rectangle tagged ``i`` (1-based, in ``proposals`` order); the size is unchanged, so the
    request costs the same image tokens as the plain image. PNG keeps edges and digits crisp."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        canvas = _rgb(img)
    width, height = canvas.size
    line = max(1, round(min(width, height) / 100))  # 2 px on a 200 px NEU image
    font = ImageFont.load_default(size=max(10, round(min(width, height) / 16)))
    draw = ImageDraw.Draw(canvas)
    pixel_boxes = [_pixel_box(p.box, width, height) for p in proposals]
    for number, box in enumerate(pixel_boxes, start=1):
        draw.rectangle(box, outline=BOX_COLOURS[(number - 1) % len(BOX_COLOURS)], width=line)
    # Tags after every rectangle, so no rectangle crosses a number.
    pad = max(1, line)
    for number, (left, top, _, _) in enumerate(pixel_boxes, start=1):
        label = str(number)
        t_left, t_top, t_right, t_bottom = draw.textbbox((0, 0), label, font=font)
        tag_w, tag_h = t_right - t_left + 2 * pad, t_bottom - t_top + 2 * pad
        x = max(0, min(left, width - tag_w))
        y = top - tag_h if top - tag_h >= 0 else top  # above the box, inside it at the top edge
        y = max(0, min(y, height - tag_h))
        draw.rectangle(
            (x, y, x + tag_w - 1, y + tag_h - 1), fill=BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        )
        draw.text((x + pad - t_left, y + pad - t_top), label, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


# --------------------------------------------------------------------------- prompt


def candidate_boxes(proposals: Sequence[Proposal]) -> list[list[float]]:
    """Candidate corners rounded for the key and the text; invalid boxes are the caller's bug."""
    boxes = [[round(float(v), 6) for v in p.box] for p in proposals]
    for number, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise ValueError(f"candidate {number} box {[x1, y1, x2, y2]} is not normalised")
    return boxes


@dataclass(frozen=True)
class VerificationPrompt:
    """Static prefix (instructions, optional seed gallery) and the per-image query message."""

    version: str
    detail: str
    class_names: tuple[str, ...]
    seed_ids: tuple[str, ...]
    static_messages: tuple[dict[str, Any], ...]
    prompt_hash: str

    def query_text(self, proposals: Sequence[Proposal], image_class: str | None = None) -> str:
        """The candidate list (and the image's annotated class) the drawn image comes with."""
        if image_class is not None and image_class not in (*self.class_names, NO_DEFECT):
            raise ValueError(f"image class {image_class!r} is not in {list(self.class_names)}")
        boxes = candidate_boxes(proposals)
        listed = "; ".join(
            f"{n}: [{', '.join(f'{v:.3f}' for v in box)}]" for n, box in enumerate(boxes, start=1)
        )
        hint = CLASS_HINT.format(image_class=image_class) if image_class else ""
        return QUERY_TEMPLATE.format(n=len(boxes), hint=hint, boxes=listed)

    def messages_for(
        self, drawn_image: bytes, proposals: Sequence[Proposal], image_class: str | None = None
    ) -> list[dict[str, Any]]:
        """Full request: the static prefix, then the text and the drawn image last."""
        text = self.query_text(proposals, image_class)
        query = {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                image_part(encode_image(drawn_image).data_url, self.detail),
            ],
        }
        return [*self.static_messages, query]


def build_verification_prompt(
    class_names: Sequence[str], seeds: Sequence[SeedExample] = (), detail: str = "low"
) -> VerificationPrompt:
    """Instructions for checking candidates; with ``seeds``, the annotation prompt's labelled
    gallery follows them unchanged (a byte-identical prefix the provider can cache)."""
    names = tuple(dict.fromkeys(str(name) for name in class_names))
    verification_model_for(names)  # same class-list rules as the answer schema
    messages: list[dict[str, Any]] = []
    gallery_note = ""
    if seeds:
        gallery = build_prompt(seeds, names, detail=detail).static_messages[1]
        messages.append(gallery)
        gallery_note = GALLERY_NOTE.format(n_seeds=len(seeds))
    elif detail not in ("low", "high", "auto"):
        raise ValueError(f"detail must be low, high or auto, not {detail!r}")
    system = SYSTEM_TEMPLATE.format(
        class_list=", ".join(names), gallery_note=gallery_note, no_defect=NO_DEFECT
    )
    static = ({"role": "system", "content": system}, *messages)
    payload = {
        "version": VERIFY_PROMPT_VERSION,
        "detail": detail,
        "draw": DRAW_STYLE,
        "query": [QUERY_TEMPLATE, CLASS_HINT],
        "static": list(static),
    }
    return VerificationPrompt(
        version=VERIFY_PROMPT_VERSION,
        detail=detail,
        class_names=names,
        seed_ids=tuple(seed.image_id for seed in seeds),
        static_messages=static,
        prompt_hash=sha256_bytes(canonical_json(payload).encode("utf-8")),
    )


# --------------------------------------------------------------------------- store


class VerificationRecord(BaseModel):
    """One attempt at verifying one image's candidates: the unit written to the store."""

    model_config = ConfigDict(extra="forbid")

    key: str
    image_id: str
    image_sha256: str
    annotator: str
    model: str
    prompt_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    candidates: list[list[float]]
    image_class: str | None = None
    status: Literal["ok", "failed"]
    answer: VerificationAnswer | None = None
    failure_kind: str | None = None
    raw_text: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempt: int = 1
    created_at: str = Field(default_factory=utc_now_iso)

    @model_validator(mode="after")
    def _check_status(self) -> VerificationRecord:
        if (self.status == "ok") != (self.answer is not None):
            raise ValueError("an 'ok' record carries an answer, a 'failed' one none")
        if self.status == "failed" and not self.failure_kind:
            raise ValueError("a 'failed' record must name its failure_kind")
        return self


class VerificationStore(AnnotationStore):
    """The annotation store (append + fsync per line, cached keys, failures kept) holding
    :class:`VerificationRecord` lines; only loading needs to know the record type."""

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                self._records.append(VerificationRecord.model_validate_json(line))  # type: ignore[arg-type]
            except (ValidationError, ValueError) as exc:
                self._skipped_lines += 1
                logger.warning("%s: ignoring line %d: %s", self.path, number, str(exc)[:200])
        if raw and not raw.endswith(b"\n"):  # start the next record on its own line
            with self.path.open("ab") as handle:
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())

    def verification_records(self) -> list[VerificationRecord]:
        """Every attempt in file order, typed."""
        return cast(list[VerificationRecord], self.records())


# --------------------------------------------------------------------------- cost estimate


def typical_verification_json(n_candidates: int, class_name: str = "rolled-in_scale") -> str:
    """A realistic answer for ``n_candidates``; its token count is the expected completion."""
    verdicts = [
        CandidateVerdict(
            candidate=number,
            is_defect=number % 2 == 1,
            defect_class=class_name if number % 2 == 1 else NO_DEFECT,
        )
        for number in range(1, n_candidates + 1)
    ]
    return VerificationAnswer(verdicts=verdicts).model_dump_json()


def _spread_candidates(n: int) -> list[Proposal]:
    """``n`` boxes stepping down the diagonal, standing in for a detector's output."""
    step = 0.7 / max(n - 1, 1)
    return [
        Proposal((0.05 + i * step, 0.05 + i * step, 0.15 + i * step, 0.25 + i * step), 0.5)
        for i in range(n)
    ]


def estimate_verification_cost(
    prompt: VerificationPrompt,
    sample_image: bytes | str | os.PathLike[str],
    n_images: int,
    candidates: Sequence[Proposal] | int = 3,
    *,
    image_class: str | None = None,
    model: str = "gpt-4o",
    completion_tokens: int | None = None,
    pricing_model: str | None = None,
) -> tuple[PromptEstimate, RunCostEstimate]:
    """One verification request per pool image, priced from the real request for one sample.

    ``candidates`` are the sample's proposals, or how many to assume (the text grows with them;
    the drawn image costs what the plain one does, as its size does not change).
    """
    priced = pricing_model or model
    proposals = _spread_candidates(candidates) if isinstance(candidates, int) else candidates
    data = sample_image if isinstance(sample_image, bytes) else Path(sample_image).read_bytes()
    messages = prompt.messages_for(draw_candidates(data, proposals), proposals, image_class)
    estimate = estimate_prompt_tokens(
        messages, priced, n_static_messages=len(prompt.static_messages)
    )
    if completion_tokens is None:
        completion_tokens = count_text_tokens(typical_verification_json(len(proposals)), priced)
    return estimate, estimate_run_cost(estimate, n_images, completion_tokens, priced)

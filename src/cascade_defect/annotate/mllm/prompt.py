"""Versioned few-shot prompt: instructions + labelled seed gallery + the query image last.

Layout matters for money: everything that is the same for every request (system
instructions and all seed images with their labels) comes first and is byte-identical
across requests, so providers' automatic prefix caching bills it at the cached rate;
only the final user message (the query image) varies.

The prompt never receives a pool image's class: the query message holds the image and
a fixed instruction, nothing else.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from cascade_defect.annotate.schema import NO_DEFECT, canonical_json
from cascade_defect.hashing import sha256_bytes

logger = logging.getLogger(__name__)

PROMPT_VERSION = "v2"
"""v2: the first lines name no product (v1 named hot-rolled steel strip, NEU-DET's)."""
Detail = Literal["low", "high", "auto"]
DETAILS: tuple[str, ...] = ("low", "high", "auto")

# Formats the chat API accepts as image input; anything else is re-encoded as PNG.
_ACCEPTED_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_BOX_DECIMALS = 3

SYSTEM_TEMPLATE = """\
You are an expert visual inspector of manufactured surfaces.
You label surface images for a defect-detection training set; the reference images show what
each defect class looks like on this product.

Defect classes: {class_list}.
Answer "{no_defect}" only if none of these defects is visible.

You are first shown {n_seeds} reference images labelled by experts, with the class of each
and its defect boxes. Then you get one new image. For the new image:
- defect_class: the dominant defect class of the image (one of the classes above, or "{no_defect}").
- boxes: every visible defect region as [x1, y1, x2, y2] normalised to the image size
  (0 = left/top edge, 1 = right/bottom edge, x1 < x2, y1 < y2), each with its defect_class.
  Elongated or spread-out defects may need several boxes, as in the references.
- bounding_box_present: true exactly when boxes is non-empty.
- confidence: your probability (0 to 1) that defect_class is right.
- reasoning: one short sentence naming the visual cue you used.
Answer only with JSON that follows the response schema."""

GALLERY_INTRO = "Reference images with expert labels ({n_seeds} images, {per_class})."
SEED_TEMPLATE = (
    "Reference {index}/{n_seeds}: class = {class_name}; boxes [x1, y1, x2, y2] = {boxes}"
)
QUERY_TEXT = "New image to label. Use the same conventions as the references."


@dataclass(frozen=True)
class SeedExample:
    """One labelled seed image shown to the model as a reference.

    ``boxes`` are ``(class_name, x1, y1, x2, y2)`` with coordinates normalised to
    [0, 1]; use :func:`normalise_box` to convert Pascal VOC pixel boxes.
    """

    image_id: str
    image: Path | bytes
    class_name: str
    boxes: tuple[tuple[str, float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", tuple(tuple(box) for box in self.boxes))
        for box in self.boxes:
            if len(box) != 5:
                raise ValueError(f"{self.image_id}: a box is (class, x1, y1, x2, y2), got {box}")
            _, x1, y1, x2, y2 = box
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise ValueError(f"{self.image_id}: box {box} is not normalised x1<x2, y1<y2")

    def image_bytes(self) -> bytes:
        """Raw bytes of the seed image (read from disk when given as a path)."""
        return self.image if isinstance(self.image, bytes) else Path(self.image).read_bytes()


def normalise_box(
    class_name: str, xmin: float, ymin: float, xmax: float, ymax: float, width: int, height: int
) -> tuple[str, float, float, float, float]:
    """Pascal VOC pixel box -> normalised ``(class, x1, y1, x2, y2)`` clipped to [0, 1]."""
    if width <= 0 or height <= 0:
        raise ValueError("image width and height must be positive")

    def clip(value: float) -> float:
        return min(1.0, max(0.0, value))

    return (
        class_name,
        clip(xmin / width),
        clip(ymin / height),
        clip(xmax / width),
        clip(ymax / height),
    )


@dataclass(frozen=True)
class EncodedImage:
    """An image ready for a chat message, with the size needed for token estimates."""

    data_url: str
    mime: str
    width: int
    height: int
    sha256: str


def encode_image(image_bytes: bytes) -> EncodedImage:
    """Base64 data URL of an image; formats the API does not take (BMP, TIFF) become PNG."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        width, height = img.size
        fmt = (img.format or "").upper()
        if fmt in _ACCEPTED_MIME:
            payload, mime = image_bytes, _ACCEPTED_MIME[fmt]
        else:
            buffer = io.BytesIO()
            img.save(buffer, format="PNG")
            payload, mime = buffer.getvalue(), "image/png"
    data_url = f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
    return EncodedImage(data_url, mime, width, height, sha256_bytes(image_bytes))


def image_part(data_url: str, detail: str) -> dict[str, Any]:
    """Chat-completions content part for one image."""
    return {"type": "image_url", "image_url": {"url": data_url, "detail": detail}}


def _format_boxes(boxes: Sequence[tuple[str, float, float, float, float]]) -> str:
    if not boxes:
        return "[] (no box)"
    rendered = [
        f"{name}: [{x1:.{_BOX_DECIMALS}f}, {y1:.{_BOX_DECIMALS}f}, "
        f"{x2:.{_BOX_DECIMALS}f}, {y2:.{_BOX_DECIMALS}f}]"
        for name, x1, y1, x2, y2 in boxes
    ]
    return "; ".join(rendered)


@dataclass(frozen=True)
class FewShotPrompt:
    """The static prompt prefix plus a factory for per-image request messages."""

    version: str
    detail: str
    class_names: tuple[str, ...]
    seed_ids: tuple[str, ...]
    static_messages: tuple[dict[str, Any], ...]
    prompt_hash: str
    seed_sizes: tuple[tuple[int, int], ...] = field(default=())

    def messages_for(self, image_bytes: bytes) -> list[dict[str, Any]]:
        """Full message list for one query image: static prefix + the image last."""
        encoded = encode_image(image_bytes)
        return [*self.static_messages, self.query_message(encoded.data_url)]

    def query_message(self, data_url: str) -> dict[str, Any]:
        """The only per-request part of the prompt."""
        return {
            "role": "user",
            "content": [{"type": "text", "text": QUERY_TEXT}, image_part(data_url, self.detail)],
        }


def build_prompt(
    seeds: Sequence[SeedExample], class_names: Sequence[str], detail: str = "low"
) -> FewShotPrompt:
    """Assemble the few-shot prompt from labelled seeds (order kept as given)."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, not {detail!r}")
    names = tuple(dict.fromkeys(class_names))
    if not seeds:
        raise ValueError("at least one seed example is needed for a few-shot prompt")
    unknown = sorted({s.class_name for s in seeds} - {*names, NO_DEFECT})
    if unknown:
        raise ValueError(f"seed classes {unknown} are not in class_names {list(names)}")
    if any(s.class_name == NO_DEFECT and s.boxes for s in seeds):
        raise ValueError(f"a {NO_DEFECT!r} seed cannot carry boxes")
    # Defect-free seeds are shown as such: the model then knows what a good part looks like.
    shown = [*names, NO_DEFECT] if any(s.class_name == NO_DEFECT for s in seeds) else names
    per_class = ", ".join(f"{sum(s.class_name == name for s in seeds)} {name}" for name in shown)
    system = SYSTEM_TEMPLATE.format(
        class_list=", ".join(names), no_defect=NO_DEFECT, n_seeds=len(seeds)
    )
    gallery: list[dict[str, Any]] = [
        {"type": "text", "text": GALLERY_INTRO.format(n_seeds=len(seeds), per_class=per_class)}
    ]
    sizes: list[tuple[int, int]] = []
    for index, seed in enumerate(seeds, start=1):
        encoded = encode_image(seed.image_bytes())
        sizes.append((encoded.width, encoded.height))
        text = SEED_TEMPLATE.format(
            index=index,
            n_seeds=len(seeds),
            class_name=seed.class_name,
            boxes=_format_boxes(seed.boxes),
        )
        gallery.append({"type": "text", "text": text})
        gallery.append(image_part(encoded.data_url, detail))
    static_messages = (
        {"role": "system", "content": system},
        {"role": "user", "content": gallery},
    )
    prompt_hash = sha256_bytes(
        canonical_json(
            {"version": PROMPT_VERSION, "detail": detail, "static": list(static_messages)}
        ).encode("utf-8")
    )
    logger.debug("built prompt %s with %d seeds, hash %s", PROMPT_VERSION, len(seeds), prompt_hash)
    return FewShotPrompt(
        version=PROMPT_VERSION,
        detail=detail,
        class_names=names,
        seed_ids=tuple(s.image_id for s in seeds),
        static_messages=static_messages,
        prompt_hash=prompt_hash,
        seed_sizes=tuple(sizes),
    )


def prompt_overview(prompt: FewShotPrompt) -> list[dict[str, str]]:
    """Rows (message, role, kind, content) describing the prompt without base64 blobs.

    A notebook can show this as a table to document exactly what the model saw.
    """
    rows: list[dict[str, str]] = []
    seed_iter = iter(zip(prompt.seed_ids, prompt.seed_sizes, strict=False))
    messages = [*prompt.static_messages, prompt.query_message("data:<query image>")]
    for number, message in enumerate(messages, start=1):
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                rows.append(
                    {
                        "message": str(number),
                        "role": message["role"],
                        "kind": "text",
                        "content": part["text"],
                    }
                )
                continue
            url = part["image_url"]["url"]
            if url.startswith("data:<query"):
                label = "query image (pool image, class not shown)"
            else:
                seed_id, (width, height) = next(seed_iter, ("?", (0, 0)))
                label = f"seed image {seed_id} ({width}x{height})"
            rows.append(
                {
                    "message": str(number),
                    "role": message["role"],
                    "kind": "image",
                    "content": f"{label}, detail={part['image_url']['detail']}",
                }
            )
    return rows


def render_prompt(prompt: FewShotPrompt) -> str:
    """Plain-text rendering of the prompt (images as placeholders) for display."""
    lines = [f"prompt {prompt.version}  hash {prompt.prompt_hash[:12]}  detail={prompt.detail}"]
    current = None
    for row in prompt_overview(prompt):
        if row["message"] != current:
            current = row["message"]
            lines.append(f"\n--- message {current} ({row['role']}) ---")
        lines.append(row["content"] if row["kind"] == "text" else f"[{row['content']}]")
    return "\n".join(lines)

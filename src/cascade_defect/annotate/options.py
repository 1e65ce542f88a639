"""The annotator's options as one validated model, shared by chapter 03, the CLI and the scripts.

Which annotator, which model, how much to spend, how fast to send and which boxes to write are
decided together and travel together: from the notebook's parameters or ``cascade-defect
annotate``'s flags down to the online annotator and the Batch path. One model validates them once,
names a wrong option in its error, and documents each one in a single place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cascade_defect.annotate.boxes import DEFAULT_BOX_STRATEGIES, BoxStrategy

AnnotatorChoice = Literal["auto", "azure", "openai", "offline"]
ResolvedAnnotator = Literal["azure", "openai", "offline"]
ImageDetail = Literal["low", "high", "auto"]

OFFLINE_OPTION_NAMES = frozenset(
    {"imgsz", "layers", "stats", "hflip", "transductive", "classifier", "device", "threads"}
)
"""Keyword arguments of :class:`~cascade_defect.annotate.offline.OfflineAnnotator` that
``offline_options`` may set (weights, caches and progress come from the caller)."""


class AnnotatorOptions(BaseModel):
    """How to annotate: the annotator, its model, the spending cap, the pace and the boxes.

    Credentials are never options: they come from the environment only (see
    :func:`resolve_annotator`), so a rendered notebook or a saved manifest cannot hold a key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    annotator: AnnotatorChoice = Field(
        "auto",
        description=(
            "auto: Azure OpenAI when AZURE_OPENAI_ENDPOINT is set, else OpenAI (or a compatible "
            "server) when OPENAI_API_KEY or OPENAI_BASE_URL is set, else the offline annotator."
        ),
    )
    model: str = Field(
        "gpt-4o", min_length=1, description="Model name, or the deployment name on Azure OpenAI."
    )
    pricing_model: str | None = Field(
        None,
        min_length=1,
        description="The priced model behind a deployment whose name differs; None: ``model``.",
    )
    detail: ImageDetail = Field(
        "low", description="Image detail sent to the model (low: 85 tokens per 200x200 image)."
    )
    budget_usd: float | None = Field(
        5.0,
        ge=0,
        description=(
            "No request is sent that could take the recorded spend past this many dollars; "
            "None: no cap. A Batch is not submitted when its worst case exceeds it."
        ),
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    images_per_request: int = Field(
        1,
        ge=1,
        description=(
            "Query images packed into one request after the shared seed prefix (1: one image "
            "per request). Each image keeps its own cache key, so answers are reused across "
            "settings; what packing does to accuracy is not measured here."
        ),
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts per image for failures other than rate limits (429)."
    )
    max_completion_tokens: int = Field(400, ge=1, description="Cap on each answer's length.")
    temperature: float | None = Field(
        0.0, ge=0, le=2, description="Sampling temperature; None for reasoning models."
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds before one request times out.")
    base_url: str | None = Field(
        None,
        description="An OpenAI-compatible server (vLLM, Ollama); None: OPENAI_BASE_URL or OpenAI.",
    )
    api_version: str | None = Field(
        None, description="Azure OpenAI API version; None: OPENAI_API_VERSION or the default."
    )
    box_strategies: tuple[BoxStrategy, ...] = Field(
        DEFAULT_BOX_STRATEGIES,  # type: ignore[arg-type]
        min_length=1,
        description=(
            "Boxes written for each labelled image: whole_image, seed_detector (a detector "
            "fine-tuned on the seeds), self_training (cross-fitted teachers taught by the seed "
            "detector; a few teacher trainings more), crop_verified (low-score detector boxes "
            "kept by a crop classifier), classifier_cam (boxes around a YOLOv8n-cls activation "
            "map) and/or annotator (the MLLM's own boxes)."
        ),
    )
    offline_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the offline annotator (imgsz, layers, transductive, ...).",
    )
    progress: bool = Field(True, description="Show progress bars (off in recorded runs).")

    @field_validator("box_strategies")
    @classmethod
    def _each_strategy_once(cls, strategies: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"each box strategy at most once, got {list(strategies)}")
        return strategies

    @field_validator("offline_options")
    @classmethod
    def _known_offline_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - OFFLINE_OPTION_NAMES)
        if unknown:
            raise ValueError(
                f"unknown offline annotator option(s) {unknown}; "
                f"known: {sorted(OFFLINE_OPTION_NAMES)}"
            )
        return options

    @classmethod
    def from_fields(
        cls, options: AnnotatorOptions | None = None, **fields: Any
    ) -> AnnotatorOptions:
        """``options`` with ``fields`` changed (validated again), or new options from ``fields``."""
        if options is None:
            return cls(**fields)
        if not fields:
            return options
        return cls.model_validate({**options.model_dump(), **fields})

    @property
    def priced_model(self) -> str:
        """The model whose price applies to this run's requests."""
        return self.pricing_model or self.model

    def resolved(self, environ: Mapping[str, str] | None = None) -> AnnotatorOptions:
        """The same options with ``annotator="auto"`` replaced by what it means here."""
        return self.model_copy(update={"annotator": resolve_annotator(self.annotator, environ)})


def resolve_annotator(
    choice: AnnotatorChoice, environ: Mapping[str, str] | None = None
) -> ResolvedAnnotator:
    """The annotator ``auto`` stands for on this machine (credentials come from the environment)."""
    if choice != "auto":
        return choice
    from cascade_defect.annotate.mllm.providers import detect_provider

    return detect_provider(environ) or "offline"


BILLING_MODES_SENT = ("standard", "batch")
"""How the MLLM annotator can send requests: online (standard) or through the Batch API."""


def supported_configuration(
    *, model: str, detail: str, images_per_request: int, mode: str, **_: Any
) -> bool:
    """Whether the annotator can run a priced configuration (a cost-search row).

    The options model is the one judge: the configuration must be valid
    :class:`AnnotatorOptions` (any ``images_per_request`` >= 1 is, now that requests pack) and
    its billing mode one the annotator sends. Prompt caching is the provider's, not an option.
    Chapter 07 recommends only configurations this accepts.
    """
    if mode not in BILLING_MODES_SENT or images_per_request != int(images_per_request):
        return False
    try:
        AnnotatorOptions(model=model, detail=detail, images_per_request=int(images_per_request))
    except (ValidationError, ValueError, TypeError):
        return False
    return True

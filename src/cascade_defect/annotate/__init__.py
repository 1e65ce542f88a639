"""Few-shot multimodal-LLM annotator: schema, durable store, prompt, client, Batch, cost.

``schema`` and ``store`` are imported eagerly (every annotator, the offline one
included, needs them and they are light); the online client, Batch and estimate
modules pull in the ``openai`` SDK and the tokenizer, so their names are resolved
lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from cascade_defect.annotate.schema import (
    NO_DEFECT,
    AnnotationRecord,
    BoxPrediction,
    DefectPrediction,
    Usage,
    annotation_key,
    prediction_model_for,
)
from cascade_defect.annotate.store import AnnotationStore

_LAZY = {
    "PROMPT_VERSION": "prompt",
    "SeedExample": "prompt",
    "FewShotPrompt": "prompt",
    "build_prompt": "prompt",
    "normalise_box": "prompt",
    "prompt_overview": "prompt",
    "render_prompt": "prompt",
    "PoolImage": "client",
    "RunSummary": "client",
    "RetryPolicy": "client",
    "MLLMAnnotator": "client",
    "ProviderNotConfigured": "client",
    "annotate_pool": "client",
    "detect_provider": "client",
    "make_client": "client",
    "run_batch": "batch",
    "collect_batch": "batch",
    "BatchManifest": "batch",
    "estimate_prompt_tokens": "estimate",
    "estimate_run_cost": "estimate",
    "estimate_pool_cost": "estimate",
    "compare_with_usage": "estimate",
    "count_text_tokens": "estimate",
}

__all__ = [
    "NO_DEFECT",
    "AnnotationRecord",
    "AnnotationStore",
    "BoxPrediction",
    "DefectPrediction",
    "Usage",
    "annotation_key",
    "prediction_model_for",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"cascade_defect.annotate.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

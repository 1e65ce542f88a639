"""Few-shot annotation of an unlabelled pool: options, schema, durable store, MLLM and offline.

``schema`` and ``store`` are imported eagerly (every annotator, the offline one
included, needs them and they are light); the options, the online annotator, Batch and
estimate modules pull in pandas, the ``openai`` SDK and the tokenizer, so their names
are resolved lazily on first use.
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
    "PROMPT_VERSION": "mllm.prompt",
    "SeedExample": "mllm.prompt",
    "FewShotPrompt": "mllm.prompt",
    "build_prompt": "mllm.prompt",
    "normalise_box": "mllm.prompt",
    "prompt_overview": "mllm.prompt",
    "render_prompt": "mllm.prompt",
    "AnnotatorOptions": "options",
    "resolve_annotator": "options",
    "PoolImage": "mllm.annotator",
    "RunSummary": "mllm.annotator",
    "MLLMAnnotator": "mllm.annotator",
    "annotate_pool": "mllm.annotator",
    "RetryPolicy": "mllm.throttle",
    "ProviderNotConfigured": "mllm.providers",
    "detect_provider": "mllm.providers",
    "make_client": "mllm.providers",
    "run_batch": "mllm.batch",
    "collect_batch": "mllm.batch",
    "BatchManifest": "mllm.batch",
    "estimate_prompt_tokens": "mllm.estimate",
    "estimate_run_cost": "mllm.estimate",
    "estimate_pool_cost": "mllm.estimate",
    "compare_with_usage": "mllm.estimate",
    "count_text_tokens": "mllm.estimate",
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

"""Offline few-shot annotator: COCO-pretrained YOLOv8n features + a transductive classifier.

A free, local counterpart to the multimodal-LLM annotator that writes the same records into the
same store, so every later chapter can compare the two without knowing which made a label.
"""

from cascade_defect.annotate.offline.annotator import (
    ANNOTATOR_NAME,
    AnnotationSummary,
    OfflineAnnotator,
)
from cascade_defect.annotate.offline.classifier import ClassifierSettings, FewShotClassifier
from cascade_defect.annotate.offline.features import FeatureSpec, YoloFeatureExtractor
from cascade_defect.annotate.offline.gate import GateSettings

__all__ = [
    "ANNOTATOR_NAME",
    "AnnotationSummary",
    "ClassifierSettings",
    "FeatureSpec",
    "FewShotClassifier",
    "GateSettings",
    "OfflineAnnotator",
    "YoloFeatureExtractor",
]

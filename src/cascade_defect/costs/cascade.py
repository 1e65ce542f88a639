"""The YOLO-then-annotator cascade: accuracy and dollars as more uncertain images are escalated.

A deployed detector need not be right on every image; this module traces what sending its least
confident images to the annotator buys in accuracy and costs per 1,000 images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cascade_defect.costs.sweeps import cost_per_1000_images

Annotator = Callable[[Sequence[str]], Mapping[str, str]] | Mapping[str, str]


def annotate_escalated(annotator: Annotator, image_ids: Sequence[str]) -> dict[str, str]:
    """The annotator's class for each escalated image (a mapping or a callable on image ids).

    A callable is asked once, for every image any threshold of the sweep would escalate, so an
    expensive annotator labels each image at most once. Images it cannot label stay missing and
    count as wrong.
    """
    answers = annotator(list(image_ids)) if callable(annotator) else annotator
    return {str(k): str(v) for k, v in answers.items() if str(k) in set(map(str, image_ids))}


def images_annotator(
    predict: Callable[[pd.DataFrame], pd.DataFrame], images: pd.DataFrame
) -> Annotator:
    """An :data:`Annotator` over known images from a classifier of image frames.

    ``predict`` takes rows of ``images`` (``image_id, path, sha256`` only, never a label) and
    returns ``image_id, class_name``; the annotator answers for the ids it is asked about.
    """
    unlabelled = images[["image_id", "path", "sha256"]].assign(
        image_id=lambda f: f["image_id"].astype(str)
    )

    def label(image_ids: Sequence[str]) -> dict[str, str]:
        chosen = unlabelled[unlabelled["image_id"].isin(set(map(str, image_ids)))]
        if chosen.empty:
            return {}
        answers = predict(chosen)
        return dict(zip(answers["image_id"].astype(str), answers["class_name"], strict=True))

    return label


def escalation_thresholds(
    top_confidence: Sequence[float] | pd.Series, steps: int = 20
) -> list[float]:
    """Thresholds that escalate 0, 1/steps, ..., all of the images (quantiles of the confidences).

    Fixed steps such as 0.05 would crowd every point where a confident model's scores sit; the
    quantiles spread the curve evenly over the share escalated. The last threshold lies just
    above the highest confidence, so every image is escalated there.
    """
    values = np.asarray(top_confidence, dtype=float)
    if values.size == 0:
        return [0.0]
    inner = np.quantile(values, np.linspace(0, 1, steps + 1)[1:-1])
    top = float(np.nextafter(values.max(), np.inf))
    return sorted({0.0, *map(float, inner), top})


def cascade_curve(
    yolo: pd.DataFrame,
    truth: Mapping[str, str] | pd.Series,
    annotator: Annotator,
    thresholds: Iterable[float] | None = None,
) -> pd.DataFrame:
    """Accuracy of YOLO-then-annotator against the share of images escalated, per threshold.

    ``yolo`` holds ``image_id, predicted_class, top_confidence`` (see :func:`image_predictions`).
    An image whose top confidence is below the threshold takes the annotator's class instead.
    Without ``thresholds``, :func:`escalation_thresholds` spreads them over the confidences.
    """
    if thresholds is None:
        thresholds = escalation_thresholds(yolo["top_confidence"])
    thresholds = sorted(float(t) for t in thresholds)
    truth = pd.Series(truth)
    frame = yolo.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame["truth"] = frame["image_id"].map(truth)
    widest = thresholds[-1] if thresholds else 0.0
    candidates = frame.loc[frame["top_confidence"] < widest, "image_id"].tolist()
    answers = annotate_escalated(annotator, candidates) if candidates else {}
    frame["annotator_class"] = frame["image_id"].map(answers)
    yolo_right = frame["predicted_class"] == frame["truth"]
    annotator_right = frame["annotator_class"] == frame["truth"]
    rows = []
    for threshold in thresholds:
        escalated = frame["top_confidence"] < threshold
        correct = np.where(escalated, annotator_right, yolo_right)
        rows.append(
            {
                "threshold": threshold,
                "escalated_share": float(escalated.mean()),
                "n_escalated": int(escalated.sum()),
                "accuracy": float(correct.mean()),
                "yolo_accuracy_kept": float(yolo_right[~escalated].mean())
                if (~escalated).any()
                else float("nan"),
                "annotator_accuracy_escalated": float(annotator_right[escalated].mean())
                if escalated.any()
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def cascade_costs(
    curve: pd.DataFrame,
    *,
    annotator_usd_per_image: float,
    yolo_latency_s: float,
    vm_usd_per_hour: float,
) -> pd.DataFrame:
    """Dollars per 1,000 images for each point of the cascade curve, and for both extremes."""
    frame = curve.copy()
    costs = [
        cost_per_1000_images(annotator_usd_per_image, yolo_latency_s, vm_usd_per_hour, share)
        for share in frame["escalated_share"]
    ]
    frame["usd_per_1000_cascade"] = [c["cascade"] for c in costs]
    frame["usd_per_1000_annotator_only"] = [c["mllm_only"] for c in costs]
    frame["usd_per_1000_yolo_only"] = [c["yolo_only"] for c in costs]
    return frame


@dataclass
class CascadeInputs:
    """Who labels escalated test images and the prices that turn escalation into dollars."""

    annotator: Annotator | None
    name: str | None
    usd_per_image: float
    vm_usd_per_hour: float
    price_origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "annotator for escalated test images": self.name or "none (cascade skipped)",
            "annotator USD per image": self.usd_per_image,
            "annotator price from": self.price_origin.get("annotator", ""),
            "VM USD per hour": self.vm_usd_per_hour,
            "VM price from": self.price_origin.get("vm", ""),
        }


def annotator_price_per_image(annotation_summary: Mapping[str, Any]) -> tuple[float, str]:
    """Dollars per annotated image: measured in chapter 03 when it paid an API, else its estimate.

    The estimate is chapter 03's standard-price cost of one request for its priced model (no
    prompt caching, no Batch discount): an escalated image arrives alone, at an unknown time.
    """
    counts = annotation_summary.get("status_counts", {}) or {}
    answered = int(counts.get("ok", 0))
    recorded = float(annotation_summary.get("recorded_cost_usd", 0.0) or 0.0)
    if recorded > 0 and answered > 0:
        return recorded / answered, f"measured in chapter 03 ({answered} answered images)"
    estimate = annotation_summary.get("estimate", {}) or {}
    if "per_request_usd" in estimate:
        model = estimate.get("model", "the priced model")
        return float(estimate["per_request_usd"]), f"chapter 03's estimate for {model}"
    raise ValueError("chapter 03's summary holds neither a recorded cost nor an estimate")

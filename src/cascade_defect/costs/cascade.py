"""The YOLO-then-annotator cascade: accuracy and dollars as more uncertain images are escalated.

A deployed detector need not be right on every image; this module traces what sending its least
confident images to the annotator buys in accuracy and costs per 1,000 images. Where most images
are defect-free, the detector also clears the images it finds nothing on, so only its uncertain
images reach the annotator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cascade_defect.costs.sweeps import cost_per_1000_images
from cascade_defect.data.records import NO_DEFECT
from cascade_defect.metrics.classification import detector_image_class
from cascade_defect.metrics.defect_rates import (
    called_defective,
    defect_rates,
    nan_if_none,
    truly_defective,
)

if TYPE_CHECKING:
    from cascade_defect.settings import StudyConfig

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


def escalation_annotator(config: StudyConfig, kind: str, progress: bool = True) -> Annotator:
    """An annotator for the test images the cascade escalates (chapter 03 labelled the pool only).

    ``offline`` is the few-shot annotator of chapter 03's offline mode: it learns from the
    seeds alone, so it can label test images without seeing any of their labels. It is fitted
    here and asked once, for every image the widest threshold escalates; it is handed image ids,
    paths and hashes only.
    """
    if kind != "offline":
        raise ValueError(f"unknown test-set annotator {kind!r}; supported: 'offline'")
    from cascade_defect.annotate.offline import OfflineAnnotator
    from cascade_defect.data.split import SplitLayout, read_labelled_listing
    from cascade_defect.train.yolo_env import resolve_device

    layout = SplitLayout(config.paths.split_dir)
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    test, _ = read_labelled_listing(layout, "test")
    annotator = OfflineAnnotator(
        config.yolo_weights,
        cache_dir=config.work_dir / ".cache" / "offline_features",
        config_dir=config.work_dir / ".ultralytics",
        device=resolve_device(config.profile.training.device),
        progress=progress,
    )
    annotator.fit(seeds, seed_boxes, layout.class_names())
    return images_annotator(annotator.predict, test)


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
    clear_below: float | None = None,
) -> pd.DataFrame:
    """Accuracy of YOLO-then-annotator against the share of images escalated, per threshold.

    ``yolo`` holds ``image_id, predicted_class, top_confidence`` (see :func:`image_predictions`).
    An image whose top confidence is below the threshold takes the annotator's class instead.
    Without ``thresholds``, :func:`escalation_thresholds` spreads them over the confidences.

    ``clear_below`` is for data with defect-free images: an image without a box at or above it
    is passed as ``no_defect`` by the detector alone (cleared, never escalated), so the annotator
    sees only the uncertain images between it and the threshold. ``None`` (datasets where every
    image shows a defect) leaves every image to the detector or the annotator, as before. Each
    point also reports the cascade's defect recall and false-alarm rate (see
    :mod:`~cascade_defect.metrics.defect_rates`; NaN where there are no such images).
    """
    frame = yolo.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    confidence = frame["top_confidence"].astype(float)
    cleared = confidence < clear_below if clear_below is not None else confidence.isna() & False
    if thresholds is None:
        thresholds = escalation_thresholds(confidence[~cleared])
    thresholds = sorted(float(t) for t in thresholds)
    truth = pd.Series(truth)
    frame["truth"] = frame["image_id"].map(truth)
    widest = thresholds[-1] if thresholds else 0.0
    candidates = frame.loc[~cleared & (confidence < widest), "image_id"].tolist()
    answers = annotate_escalated(annotator, candidates) if candidates else {}
    frame["annotator_class"] = frame["image_id"].map(answers)
    yolo_class = detector_image_class(frame["predicted_class"].where(~cleared, NO_DEFECT))
    yolo_right = yolo_class == frame["truth"]
    annotator_right = frame["annotator_class"] == frame["truth"]
    is_defective = truly_defective(frame["truth"].fillna(""))
    rows = []
    for threshold in thresholds:
        escalated = ~cleared & (confidence < threshold)
        correct = np.where(escalated, annotator_right, yolo_right)
        final = called_defective(frame["annotator_class"].where(escalated, yolo_class))
        rates = defect_rates(is_defective, final)
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
                **(
                    {"clear_below": clear_below, "n_cleared": int(cleared.sum())}
                    if clear_below is not None
                    else {}
                ),
                "defect_recall": nan_if_none(rates["defect_recall"]),
                "false_alarm_rate": nan_if_none(rates["false_alarm_rate"]),
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

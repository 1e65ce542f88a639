"""Chapter 03: label the pool from the 18 seeds with the chosen annotator, then write pseudo-labels.

The chapter's parameters are :class:`~cascade_defect.annotate.options.AnnotatorOptions`.
``annotator="auto"`` uses Azure OpenAI when ``AZURE_OPENAI_ENDPOINT`` is set, else OpenAI (or a
compatible server) when ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` is set, else the offline few-shot
annotator, so the book always runs end to end. Every answer goes into the same append-only store
under a content-hash key, so re-running the chapter sends nothing already answered.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cascade_defect.annotate.defect_gate import GatedOffline
from cascade_defect.annotate.labels import (
    BOX_COLUMNS,
    LABEL_COLUMNS,
    image_labels_from_store,
    read_label_tables,
    yolo_lines,
)
from cascade_defect.annotate.mllm.annotator import PoolImage, annotate_pool
from cascade_defect.annotate.mllm.estimate import compare_with_usage, estimate_pool_cost
from cascade_defect.annotate.mllm.prompt import FewShotPrompt, build_prompt, prompt_overview
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.annotate.seeds import seed_examples
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.annotate.strategies import DetectorRecipe, runnable_strategies
from cascade_defect.box_settings import whole_image_fallback
from cascade_defect.data.split import SplitLayout, read_labelled_listing, read_pool_listing
from cascade_defect.data.yolo_txt import write_label_file
from cascade_defect.manifest import ChapterRun
from cascade_defect.settings import StudyConfig

log = logging.getLogger(__name__)


@dataclass
class AnnotationResult:
    """What chapter 03 shows."""

    annotator: str
    model: str
    prompt: FewShotPrompt
    prompt_table: pd.DataFrame
    labels: pd.DataFrame
    boxes: pd.DataFrame
    summary: dict
    estimate: dict
    estimate_vs_actual: dict | None
    failures: pd.DataFrame
    outputs: AnnotationOutputs
    options: AnnotatorOptions
    timings: dict[str, float] = field(default_factory=dict)


def run_annotation(
    config: StudyConfig, options: AnnotatorOptions | None = None, **fields: Any
) -> AnnotationResult:
    """Annotate chapter 02's pool and write chapter 03's outputs and manifest.

    ``fields`` are :class:`AnnotatorOptions` fields given as keywords (the notebook passes its
    papermill parameters this way: ``annotator=..., model=..., budget_usd=...``); they change
    ``options``, or the defaults when ``options`` is None. A wrong name or value raises
    pydantic's ``ValidationError`` naming it.
    """
    options = AnnotatorOptions.from_fields(options, **fields)
    layout = SplitLayout(config.paths.split_dir)
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    resolved = options.resolved()
    chosen = resolved.annotator
    run = ChapterRun(
        "03_few_shot_annotation",
        config,
        outputs.root,
        parameters={
            "annotator": options.annotator,
            "resolved_annotator": chosen,
            "model": options.model,
            "detail": options.detail,
            "concurrency": options.concurrency,
            "images_per_request": options.images_per_request,
            "budget_usd": options.budget_usd,
            "max_attempts": options.max_attempts,
            "box_strategies": list(options.box_strategies),
            "offline_options": dict(options.offline_options),
        },
        inputs={
            "seed": layout.seed_listing,
            "seed_boxes": layout.seed_boxes,
            "pool": layout.pool_listing,
        },
    )
    class_names = layout.class_names()
    seeds = seed_examples(layout)
    pool = read_pool_listing(layout)
    prompt = build_prompt(seeds, class_names, detail=options.detail)
    sample = Path(pool["path"].iloc[0]).read_bytes()
    priced = options.priced_model
    per_request = options.images_per_request
    prompt_estimate, cost_estimate = estimate_pool_cost(
        prompt, sample, len(pool), priced, images_per_request=per_request
    )
    store = AnnotationStore(outputs.predictions)

    gated = None
    if chosen == "offline":
        with run.timed("annotate"):
            run_summary, gated = _annotate_offline(config, layout, pool, store, options)
        model_name = run_summary["model"]
    else:
        images = [PoolImage(str(r.image_id), Path(r.path)) for r in pool.itertuples(index=False)]
        with run.timed("annotate"):
            summary = annotate_pool(images, seeds, class_names, outputs.predictions, resolved)
        run_summary = summary.as_dict()
        model_name = options.model
    store = AnnotationStore(outputs.predictions)
    box_fallback = whole_image_fallback(
        config.profile.annotation.whole_image_fallback, has_no_defect=layout.has_no_defect()
    )
    with run.timed("boxes"):
        boxes, box_details = _pseudo_boxes(
            config, layout, pool, store, resolved, seeds, fallback=box_fallback, gated=gated
        )

    store = AnnotationStore(outputs.predictions)
    labels = image_labels_from_store(store, pool)
    with run.timed("write"):
        written = write_pseudo_labels(
            outputs,
            labels,
            boxes,
            class_names,
            no_defect_as_background=layout.has_no_defect(),
            strategies=runnable_strategies(resolved.box_strategies, chosen),
        )
    records = store.records()
    failures = pd.DataFrame(
        [
            {
                "image_id": r.image_id,
                "failure_kind": r.failure_kind,
                "attempt": r.attempt,
                "error": (r.error or "")[:200],
                "raw_text": (r.raw_text or "")[:200],
            }
            for r in records
            if r.status == "failed"
        ],
        columns=["image_id", "failure_kind", "attempt", "error", "raw_text"],
    )
    comparison = None
    billed = [r for r in records if r.usage.prompt_tokens > 0]
    if billed:
        comparison = compare_with_usage(
            billed,
            prompt_estimate,
            cost_estimate.completion_tokens_per_request,
            priced,
            images_per_request=per_request if chosen != "offline" else 1,
        ).as_dict()
    estimate = {
        "model": priced,
        "images_per_request": per_request,
        "prompt_tokens_per_request": prompt_estimate.prompt_tokens,
        "prefix_tokens": prompt_estimate.prefix_tokens,
        "text_tokens": prompt_estimate.text_tokens,
        "image_tokens": prompt_estimate.image_tokens,
        **{k: v for k, v in cost_estimate.as_dict().items() if k.endswith("_usd")},
    }
    status_counts = labels["status"].value_counts().to_dict()
    summary_payload = {
        "annotator": chosen,
        "model": model_name,
        "prompt_version": prompt.version,
        "prompt_hash": prompt.prompt_hash,
        "n_pool": len(pool),
        "images_per_request": per_request,
        # How answers were constrained (None offline): the provider's JSON schema, or JSON mode
        # after the server refused it (vLLM, Ollama without structured outputs).
        "structured_output_mode": run_summary.get("structured_output_mode"),
        "status_counts": status_counts,
        "failures_by_kind": failures["failure_kind"].value_counts().to_dict(),
        "recorded_cost_usd": round(sum(r.cost_usd for r in records), 6),
        "run": run_summary,
        "estimate": estimate,
        "estimate_vs_actual": comparison,
        "label_files_per_strategy": written,
        "box_strategies": sorted(boxes["strategy"].unique().tolist()) if len(boxes) else [],
        **({"box_strategy_details": box_details} if box_details else {}),
        "whole_image_fallback": box_fallback,
        "defect_gate": gated.gate.details if gated is not None else None,
    }
    outputs.summary.write_text(json.dumps(summary_payload, indent=2, default=str) + "\n")
    run.counts.update(
        n_pool=len(pool),
        n_labelled=int(status_counts.get("ok", 0)),
        n_failed=int(status_counts.get("failed", 0) + status_counts.get("missing", 0)),
        n_records=len(records),
    )
    run.write(
        {
            "predictions": outputs.predictions,
            "pseudo_labels": outputs.labels,
            "pseudo_boxes": outputs.boxes,
            "summary": outputs.summary,
        }
    )
    return AnnotationResult(
        annotator=chosen,
        model=model_name,
        prompt=prompt,
        prompt_table=pd.DataFrame(prompt_overview(prompt)),
        labels=labels,
        boxes=boxes,
        summary=summary_payload,
        estimate=estimate,
        estimate_vs_actual=comparison,
        failures=failures,
        outputs=outputs,
        options=options,
        timings=dict(run.timings),
    )


def _annotate_offline(
    config: StudyConfig,
    layout: SplitLayout,
    pool: pd.DataFrame,
    store: AnnotationStore,
    options: AnnotatorOptions,
) -> tuple[dict, GatedOffline | None]:
    """Fit the offline few-shot annotator on the seeds and label the pool into the store; where
    the seeds include defect-free images, the seed detector is trained first and its crops join
    the answer (``annotation.defect_gate``; the box strategies then reuse that detector)."""
    from cascade_defect.annotate.defect_gate import gate_applies, gate_offline_answers
    from cascade_defect.annotate.offline import OfflineAnnotator

    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    annotator = OfflineAnnotator(
        config.yolo_weights,
        cache_dir=config.work_dir / ".cache" / "features",
        config_dir=config.work_dir / ".ultralytics",
        progress=options.progress,
        **options.offline_options,
    )
    annotator.fit(seeds, seed_boxes, layout.class_names())
    gate_settings = config.profile.annotation.defect_gate
    gated = None
    if gate_applies(gate_settings, "offline", seeds["class_name"]):
        detector_seeds, detector_boxes, recipe = detector_recipe(config, layout)
        gated = gate_offline_answers(
            annotator,
            pool,
            recipe=recipe,
            seeds=detector_seeds,
            seed_boxes=detector_boxes,
            class_names=layout.class_names(),
            settings=gate_settings,
            progress=options.progress,
        )
    summary = annotator.annotate(
        pool, store, box_strategy="whole_image", gate=gated.gate if gated else None
    )
    return {"model": annotator.model_name, **asdict(summary), "seconds": annotator.seconds}, gated


def detector_recipe(
    config: StudyConfig, layout: SplitLayout
) -> tuple[pd.DataFrame, pd.DataFrame, DetectorRecipe]:
    """The seeds (with mask paths where synthetic tiles are cut from them), their boxes and how
    this profile's seed detector and detector-based strategies train."""
    from cascade_defect.annotate.boxes import SeedDetectorSettings
    from cascade_defect.annotate.strategies import DetectorRecipe, synthetic_plan

    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    profile = config.profile
    synthetic, schedule = synthetic_plan(profile.annotation.synthetic_defects, seeds)
    if synthetic:
        seeds = seeds_with_mask_paths(seeds, config)
    recipe = DetectorRecipe(
        weights=config.yolo_weights,
        work_dir=config.paths.annotation_dir,
        seed_detector=SeedDetectorSettings.for_profile(profile, **schedule),
        ensemble=profile.annotation.seed_detector_ensemble,
        self_training=profile.annotation.self_training,
        crop_verifier=profile.annotation.crop_verifier,
        classifier_cam=profile.annotation.classifier_cam,
        device=profile.training.device,
        seed=profile.training.seed,
        config_dir=config.work_dir / ".ultralytics",
        threads=profile.training.torch_threads,
        synthetic_defects=synthetic,
    )
    return seeds, seed_boxes, recipe


def _pseudo_boxes(
    config: StudyConfig,
    layout: SplitLayout,
    pool: pd.DataFrame,
    store: AnnotationStore,
    options: AnnotatorOptions,
    seed_examples: Sequence[Any] = (),
    *,
    fallback: bool = True,
    gated: GatedOffline | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pseudo boxes for each of ``options.box_strategies`` from the store's latest answers
    (``options.annotator`` resolved: the offline annotator has no boxes of its own), and what
    each detector-based strategy did (teachers, verification requests). ``fallback``: the
    resolved ``annotation.whole_image_fallback``; ``gated``: the defect gate's seed detector,
    reused instead of trained again."""
    from cascade_defect.annotate.boxes import predictions_from_store, pseudo_boxes
    from cascade_defect.annotate.strategies import strategy_proposals

    predictions = predictions_from_store(store, pool)
    strategies = runnable_strategies(options.box_strategies, options.annotator)
    seeds, seed_boxes, recipe = detector_recipe(config, layout)
    proposals, details = strategy_proposals(
        strategies,
        seeds=seeds,
        seed_boxes=seed_boxes,
        pool=pool,
        predictions=predictions,
        class_names=layout.class_names(),
        recipe=recipe,
        options=options,
        seed_examples=seed_examples,
        detector=gated.detector if gated else None,
        trained_details=gated.detector_details if gated else None,
    )
    frames = [
        pseudo_boxes(predictions, s, proposals=proposals.get(s), fallback=fallback)
        for s in strategies
    ]
    boxes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return boxes, details


def seeds_with_mask_paths(seeds: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """The seeds with a ``mask_path`` column (chapter 01's index, read back as chapter 01 reads
    it) where the dataset has masks, so synthetic defects are cut out by their pixels rather
    than their boxes."""
    from cascade_defect.chapters.c01_data import DataStrategyOutputs, dataset_from_index

    dataset = dataset_from_index(DataStrategyOutputs(config.paths.data_card_dir), config)
    masks = {r.image_id: str(r.mask_path) for r in dataset.images if r.mask_path is not None}
    if not masks:
        return seeds
    return seeds.assign(mask_path=seeds["image_id"].astype(str).map(masks))


@dataclass(frozen=True)
class AnnotationOutputs:
    """The files chapter 03 writes under its run folder."""

    root: Path

    @property
    def predictions(self) -> Path:
        """The append-only store of every request and answer (JSONL)."""
        return self.root / "predictions.jsonl"

    @property
    def labels(self) -> Path:
        return self.root / "pseudo_labels.csv"

    @property
    def boxes(self) -> Path:
        return self.root / "pseudo_boxes.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def yolo_labels_dir(self, strategy: str) -> Path:
        return self.root / "yolo" / strategy / "labels"


def write_pseudo_labels(
    outputs: AnnotationOutputs,
    labels: pd.DataFrame,
    boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    no_defect_as_background: bool = False,
    strategies: Sequence[str] = (),
) -> dict[str, int]:
    """Write both tables and one YOLO label folder per box strategy (each of ``strategies``,
    even one that found no box, and any other in ``boxes``); returns files per strategy.

    With ``no_defect_as_background`` (a dataset with defect-free images) a ``no_defect`` answer
    gets an empty label file, YOLO's background image; otherwise it gets none. A defective
    answer the strategy gave no box (``annotation.whole_image_fallback``) gets no file either:
    an empty one would teach its defect as background.
    """
    outputs.root.mkdir(parents=True, exist_ok=True)
    labels.reindex(columns=LABEL_COLUMNS).to_csv(outputs.labels, index=False)
    boxes = boxes.reindex(columns=BOX_COLUMNS)
    boxes.to_csv(outputs.boxes, index=False)
    index = {name: i for i, name in enumerate(class_names)}
    answered = labels["defect_class"] != NO_DEFECT
    if no_defect_as_background:
        answered |= labels["defect_class"] == NO_DEFECT
    labelled = labels.loc[(labels["status"] == "ok") & answered, "image_id"]
    background = set(labels.loc[labels["defect_class"] == NO_DEFECT, "image_id"])
    written: dict[str, int] = {}
    named = {*map(str, strategies), *boxes["strategy"].dropna().astype(str)}
    for strategy in sorted(named):
        group = boxes[boxes["strategy"] == strategy]
        folder = outputs.yolo_labels_dir(strategy)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        by_image = {image_id: rows for image_id, rows in group.groupby("image_id")}
        n_files = 0
        for image_id in labelled:
            rows = by_image.get(image_id)
            if rows is None and image_id not in background:
                continue
            lines = [] if rows is None else yolo_lines(rows, index)
            write_label_file(folder / f"{image_id}.txt", lines)
            n_files += 1
        written[strategy] = n_files
    return written


def read_pseudo_labels(outputs: AnnotationOutputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 03's tables, or an error naming the chapter to run first."""
    for path in (outputs.labels, outputs.boxes):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: run notebook 03 (few-shot annotation) first"
            )
    return read_label_tables(outputs.labels, outputs.boxes)

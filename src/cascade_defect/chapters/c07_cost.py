"""Chapter 07: the study's economics from the real prompt, recorded usage and measured results.

Token counts come from the prompt the annotator actually builds from the 18 seeds (counted with
the model's tokenizer, images by the provider's rule), not from a rounded guess. Where an earlier
chapter measured something (recorded API usage, the label accuracy, the escalation share and YOLO
latency of the cascade), it is read from that chapter's files; where it has not, the analysis
says so instead of inventing a figure.

The optional MLLM check of the seed detector's boxes (one request per pool image, the candidates
drawn numbered on it) is priced the same way, from the real verification request with as many
candidates as chapter 03's seed detector proposed per pool image on average.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cascade_defect.annotate.boxes import SeedDetectorSettings
from cascade_defect.annotate.mllm.estimate import (
    estimate_completion_tokens,
    estimate_prompt_tokens,
    estimate_request_tokens,
    typical_answer_json,
    typical_packed_answer_json,
)
from cascade_defect.annotate.mllm.prompt import build_prompt
from cascade_defect.annotate.mllm.verify_request import (
    build_verification_prompt,
    estimate_verification_cost,
)
from cascade_defect.annotate.options import supported_configuration
from cascade_defect.annotate.seeds import seed_examples
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c03_annotation import AnnotationOutputs
from cascade_defect.costs import references
from cascade_defect.costs.model import (
    DEFAULT_CACHE_HIT_RATE,
    BillingOptions,
    PromptSpec,
    annotation_cost,
    cheapest_config,
    cost_from_usage,
    cost_grid,
)
from cascade_defect.costs.pricing import image_tokens, load_pricing
from cascade_defect.costs.review import review_budget_costs, review_pricing
from cascade_defect.costs.sweeps import (
    break_even_images,
    cost_per_1000_images,
    cost_sweep,
    human_labelling_cost,
    vendor_labelling_cost,
)
from cascade_defect.data.split import SplitLayout, read_pool_listing
from cascade_defect.data.tables import read_table
from cascade_defect.manifest import ChapterRun
from cascade_defect.settings import StudyConfig

REFERENCE_MODEL = "gpt-4o"
PACKING_OPTIONS = (1, 2, 4, 8)
"""Query images per request searched for the cost targets (chapter 03's ``images_per_request``)."""
VERIFIED_STRATEGY = "seed_detector"
"""Chapter 03's box strategy whose proposals the verifier would check."""
DEFAULT_CANDIDATES = SeedDetectorSettings().max_det
"""Candidates per image when chapter 03 wrote no seed-detector boxes: the detector's cap, so the
estimate errs high rather than low."""


@dataclass
class CostAnalysis:
    """Everything chapter 07 shows."""

    spec: PromptSpec
    prompt_tokens: dict[str, int]
    n_pool: int
    boxes_per_image: float
    grid: pd.DataFrame
    original_estimate_usd: float
    targets: pd.DataFrame
    recorded_usage: pd.DataFrame
    break_even: pd.DataFrame
    per_1000: pd.DataFrame | None
    operating_point: dict | None
    sensitivity: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verification: pd.DataFrame = field(default_factory=pd.DataFrame)
    verification_setup: dict = field(default_factory=dict)
    packing: dict = field(default_factory=dict)  # what chapter 03 sent: annotator, images/request

    def headline_costs(self) -> pd.Series:
        """The original estimate next to what the real prompt costs with gpt-4o, per mode."""
        reference = reference_pool_costs(self.grid)
        return pd.Series(
            {
                "original estimate (1,420 x 2,500 input tokens, gpt-4o)": self.original_estimate_usd,
                "gpt-4o standard, from the real prompt": reference["standard"],
                "gpt-4o standard + caching": reference["standard_cached"],
                "gpt-4o Batch": reference["batch"],
            },
            name="USD for the pool",
        ).round(2)

    def review_costs(self, budgets: pd.DataFrame | None) -> pd.DataFrame:
        """The review budget priced: the pool's gpt-4o Batch annotation plus a person's review."""
        if budgets is None or budgets.empty:
            return pd.DataFrame()
        per_image = reference_pool_costs(self.grid)["batch"] / max(self.n_pool, 1)
        pricing = review_pricing(self.n_pool, self.boxes_per_image, per_image)
        return review_budget_costs(budgets, pricing)


def reference_pool_costs(grid: pd.DataFrame, model: str = REFERENCE_MODEL) -> dict[str, float]:
    """Cost of labelling the pool with ``model``, one image per request: standard, standard with
    a warm prefix cache, and Batch (the grid's first row of each kind)."""
    rows = grid[grid["model"] == model]

    def total(mode: str, caching: bool) -> float:
        chosen = rows[(rows["mode"] == mode) & (rows["prompt_caching"] == caching)]
        return float(chosen["total_usd"].iloc[0])

    return {
        "standard": total("standard", False),
        "standard_cached": total("standard", True),
        "batch": total("batch", False),
    }


def supported_runnable(row: Mapping[str, Any]) -> bool:
    """Whether chapter 03 can run a cost-search row: recommendations come only from these
    (:func:`~cascade_defect.annotate.options.supported_configuration`)."""
    return supported_configuration(**row)


def measured_prompt_spec(
    layout: SplitLayout, detail: str = "low"
) -> tuple[PromptSpec, dict[str, int]]:
    """Describe the real few-shot prompt by token counts (text counted, images by rule)."""
    seeds = seed_examples(layout)
    prompt = build_prompt(seeds, layout.class_names(), detail=detail)
    pool = read_pool_listing(layout)
    query = Path(pool["path"].iloc[0]).read_bytes()
    estimate = estimate_prompt_tokens(
        prompt.messages_for(query), REFERENCE_MODEL, n_static_messages=len(prompt.static_messages)
    )
    seed_image_tokens = sum(
        image_tokens(REFERENCE_MODEL, w, h, detail) for w, h in prompt.seed_sizes
    )
    query_size = (int(pool["width"].iloc[0]), int(pool["height"].iloc[0]))
    query_image_tokens = image_tokens(REFERENCE_MODEL, *query_size, detail)
    output_tokens = estimate_completion_tokens(typical_answer_json(), REFERENCE_MODEL)
    seed_size = prompt.seed_sizes[0] if prompt.seed_sizes else query_size
    # The packed layout, counted: packs of 1 and 9 give the per-image and once-per-request text.
    one, nine = (
        estimate_request_tokens(prompt, [query] * n, REFERENCE_MODEL, packed=True).query_tokens
        for n in (1, 9)
    )
    per_image = (nine - one) / 8
    packed_answer = estimate_completion_tokens(typical_packed_answer_json(8), REFERENCE_MODEL)
    spec = PromptSpec(
        prefix_text_tokens=estimate.prefix_tokens - seed_image_tokens,
        output_tokens_per_image=output_tokens,
        n_seed_images=len(seeds),
        seed_size=tuple(seed_size),  # type: ignore[arg-type]
        query_size=query_size,
        query_text_tokens=estimate.query_tokens - query_image_tokens,
        detail=detail,
        seed_text_tokens=round(
            (estimate.prefix_tokens - seed_image_tokens) / max(len(seeds), 1) * 0.5
        ),
        packed_request_text_tokens=round(one - per_image),
        packed_image_text_tokens=round(per_image - query_image_tokens),
        packed_output_tokens_per_image=-(-packed_answer // 8),  # rounded up
    )
    counted = {
        "prompt_tokens_gpt4o": estimate.prompt_tokens,
        "prefix_tokens_gpt4o": estimate.prefix_tokens,
        "query_tokens_gpt4o": estimate.query_tokens,
        "text_tokens": estimate.text_tokens,
        "image_tokens_gpt4o": estimate.image_tokens,
        "n_images_per_request": estimate.n_images,
        "output_tokens_typical_answer": output_tokens,
    }
    return spec, counted


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class CandidateCount:
    """How many candidate boxes one verification request carries, and where that came from."""

    mean: float  # seed-detector boxes per pool image
    sent: int  # what the priced request draws: the mean rounded, at least one
    source: str


def candidate_count(
    boxes_file: Path, n_pool: int, strategy: str = VERIFIED_STRATEGY
) -> CandidateCount:
    """Mean ``strategy`` boxes per pool image in chapter 03's ``pseudo_boxes.csv``; without
    any, :data:`DEFAULT_CANDIDATES` (the detector's ``max_det``), said so in ``source``."""
    boxes = (
        read_table(boxes_file, dtype={"strategy": "object", "class_name": "object"})
        if boxes_file.exists()
        else pd.DataFrame(columns=["strategy"])
    )
    n_boxes = int((boxes["strategy"] == strategy).sum())
    if n_boxes == 0 or n_pool < 1:
        return CandidateCount(
            float(DEFAULT_CANDIDATES),
            DEFAULT_CANDIDATES,
            f"chapter 03 wrote no {strategy} boxes: assumed the seed detector's max_det cap "
            f"({DEFAULT_CANDIDATES} per image)",
        )
    mean = n_boxes / n_pool
    return CandidateCount(
        mean,
        max(1, int(mean + 0.5)),
        f"chapter 03: {n_boxes:,} {strategy} boxes over {n_pool:,} pool images, "
        f"{mean:.2f} per image",
    )


def verification_configurations(
    cheapest_single: pd.Series,
) -> list[tuple[str, str, bool, bool]]:
    """(label, model, batch, caching) priced for verification: gpt-4o in the headline modes and
    the cheapest configuration at one image per request (a check carries one pool image)."""
    batch, caching = cheapest_single["mode"] == "batch", bool(cheapest_single["prompt_caching"])
    mode = "Batch" if batch else "standard"
    return [
        (f"{REFERENCE_MODEL} standard", REFERENCE_MODEL, False, False),
        (f"{REFERENCE_MODEL} standard + caching", REFERENCE_MODEL, False, True),
        (f"{REFERENCE_MODEL} Batch", REFERENCE_MODEL, True, False),
        (
            f"cheapest: {cheapest_single['model']} {mode}" + (" + caching" if caching else ""),
            str(cheapest_single["model"]),
            bool(batch),
            caching,
        ),
    ]


def verification_costs(
    layout: SplitLayout,
    candidates: CandidateCount,
    grid: pd.DataFrame,
    configurations: list[tuple[str, str, bool, bool]],
    billing: BillingOptions,
    detail: str = "low",
) -> pd.DataFrame:
    """Per configuration, annotation alone (the grid, one image per request) next to annotation
    plus one verification request per pool image.

    The request is the real one (seed gallery, a pool image with ``candidates.sent`` numbered
    boxes drawn on it) counted by :func:`estimate_verification_cost`; its tokens are billed by
    :func:`annotation_cost` with the chapter's ``billing``, so verification and annotation share
    one cache-hit assumption (uncached, the dollars are exactly the estimate's).
    """
    class_names = layout.class_names()
    prompt = build_verification_prompt(class_names, seed_examples(layout), detail=detail)
    pool = read_pool_listing(layout)
    n_pool = len(pool)
    rows = []
    for label, model, batch, caching in configurations:
        # The image's annotated class is sent as a hint; any class costs about the same tokens.
        estimate, run_cost = estimate_verification_cost(
            prompt,
            pool["path"].iloc[0],
            n_pool,
            candidates.sent,
            image_class=class_names[0],
            model=model,
        )
        options = billing.with_mode(batch, caching)
        verification = annotation_cost(
            model,
            n_pool,
            estimate.prefix_tokens,
            estimate.query_tokens,
            run_cost.completion_tokens_per_request,
            options,
        ).total_usd
        chosen = grid[
            (grid["model"] == model)
            & (grid["mode"] == options.mode)
            & (grid["prompt_caching"] == caching)
        ]
        annotation = float(chosen["total_usd"].iloc[0])
        rows.append(
            {
                "configuration": label,
                "model": model,
                "mode": options.mode,
                "prompt_caching": caching,
                "n_images": n_pool,
                "candidates_per_image": candidates.sent,
                "verification_prompt_tokens": estimate.prompt_tokens,
                "verification_prefix_tokens": estimate.prefix_tokens,
                "verification_completion_tokens": run_cost.completion_tokens_per_request,
                "annotation_usd_per_image": annotation / n_pool,
                "verification_usd_per_image": verification / n_pool,
                "total_usd_per_image": (annotation + verification) / n_pool,
                "annotation_usd_pool": annotation,
                "verification_usd_pool": verification,
                "total_usd_pool": annotation + verification,
            }
        )
    return pd.DataFrame(rows)


def run_cost_analysis(
    config: StudyConfig,
    *,
    detail: str = "low",
    models: list[str] | None = None,
    cache_hit_rate: float = DEFAULT_CACHE_HIT_RATE,
    budget_gpt4o_usd: float = 2.50,
    budget_cheapest_usd: float = 0.50,
    original_requests: int = 1420,
    original_input_tokens: int = 2500,
) -> CostAnalysis:
    """Price the annotation, compare with people and AutoML, and cost the cascade."""
    layout = SplitLayout(config.paths.split_dir)
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    run = ChapterRun(
        "07_cost_analysis",
        config,
        config.paths.cost_dir,
        parameters={"detail": detail, "cache_hit_rate": cache_hit_rate, "models": models},
        inputs={
            "seed": layout.seed_listing,
            "pool": layout.pool_listing,
            **({"pseudo_boxes": annotation.boxes} if annotation.boxes.exists() else {}),
        },
    )
    notes: list[str] = []
    models = models or list(load_pricing())
    with run.timed("prompt"):
        spec, counted = measured_prompt_spec(layout, detail)
    n_pool = len(read_pool_listing(layout))
    card = _load_json(config.paths.data_card_dir / "data_card.json") or {}
    boxes_per_image = float(card.get("boxes", {}).get("per_image", {}).get("mean", 0.0))

    billing = BillingOptions(cache_hit_rate=cache_hit_rate)
    grid = cost_grid(spec, n_images=n_pool, models=models, billing=billing)
    original = annotation_cost(
        REFERENCE_MODEL, original_requests, original_input_tokens, 0, 0
    ).total_usd

    def recommend(chosen: list[str], budget: float, packing: tuple[int, ...]) -> pd.Series:
        """The cheapest configuration chapter 03 can actually send (see supported_runnable)."""
        return cheapest_config(
            spec,
            n_pool,
            chosen,
            budget,
            details=(detail,),
            images_per_request=packing,
            billing=billing,
            supported=supported_runnable,
        )

    gpt4o = recommend([REFERENCE_MODEL], budget_gpt4o_usd, PACKING_OPTIONS)
    gpt4o_single = recommend([REFERENCE_MODEL], budget_gpt4o_usd, (1,))
    cheapest = recommend(models, budget_cheapest_usd, PACKING_OPTIONS)
    cheapest_single = recommend(models, budget_cheapest_usd, (1,))
    targets = pd.DataFrame(
        [
            {"target": "gpt-4o, one image per request", **gpt4o_single.to_dict()},
            {"target": f"gpt-4o within ${budget_gpt4o_usd:.2f}", **gpt4o.to_dict()},
            {"target": f"cheapest model within ${budget_cheapest_usd:.2f}", **cheapest.to_dict()},
        ]
    ).drop(columns=["_cost_key"], errors="ignore")

    recorded = pd.DataFrame()
    if annotation.predictions.exists():
        records = [
            r for r in AnnotationStore(annotation.predictions).records() if r.annotator != "offline"
        ]
        if records:
            recorded = cost_from_usage(records)
    if recorded.empty:
        notes.append(
            "No API annotation run is recorded (chapter 03 used the offline annotator, cost $0): the "
            "costs below are estimates from the real prompt, not billed usage."
        )

    human_rate = references.reference("human_labelling.hourly_rate_us_office_support").value
    rows = []
    per_image_gpt4o = float(gpt4o_single["total_usd"]) / n_pool
    per_image_cheapest = float(cheapest["total_usd"]) / n_pool
    for label, seconds in (
        (
            "extreme clicking",
            references.reference("human_labelling.seconds_per_box_extreme_clicking").value,
        ),
        (
            "conventional drawing",
            references.reference("human_labelling.seconds_per_box_conventional").value,
        ),
    ):
        human = human_labelling_cost(n_pool, boxes_per_image, seconds, human_rate)
        human_per_image = human / n_pool
        rows.append(
            {
                "human method": f"boxes, {label} ({seconds:.0f} s/box at ${human_rate}/h)",
                "human_usd_pool": human,
                "human_usd_per_image": human_per_image,
                "gpt4o_usd_per_image": per_image_gpt4o,
                "cheapest_usd_per_image": per_image_cheapest,
                "gpt4o_saving_pool_usd": human - float(gpt4o_single["total_usd"]),
            }
        )
    vendor_box = references.reference("vendor_labelling.google_data_labeling_per_box").value
    vendor_image = references.reference(
        "vendor_labelling.google_data_labeling_per_image_classification"
    ).value
    for label, value in (
        (
            "vendor, boxes (Google Data Labeling, per box)",
            vendor_labelling_cost(n_pool, boxes_per_image, vendor_box),
        ),
        (
            "vendor, image-level labels (Google, per image)",
            vendor_labelling_cost(n_pool, 0, 0.0, vendor_image),
        ),
    ):
        rows.append(
            {
                "human method": label,
                "human_usd_pool": value,
                "human_usd_per_image": value / n_pool,
                "gpt4o_usd_per_image": per_image_gpt4o,
                "cheapest_usd_per_image": per_image_cheapest,
                "gpt4o_saving_pool_usd": value - float(gpt4o_single["total_usd"]),
            }
        )
    break_even = pd.DataFrame(rows)
    # The MLLM route still needs the seeds labelled by a person: that is its fixed cost.
    n_seeds = spec.n_seed_images
    break_even["break_even_images_gpt4o"] = [
        break_even_images(h, per_image_gpt4o, mllm_fixed_cost=n_seeds * h)
        for h in break_even["human_usd_per_image"]
    ]

    comparison = _load_json(config.paths.comparison_dir / "comparison.json")
    cascade_file = config.paths.comparison_dir / "cascade.csv"
    per_1000 = None
    operating_point: dict | None = None
    cascade = (
        pd.read_csv(cascade_file)
        if cascade_file.exists() and cascade_file.stat().st_size > 1
        else pd.DataFrame()
    )
    latency_ms = (comparison or {}).get("latency", {}).get("latency_ms_median")
    if len(cascade) and latency_ms is not None:
        # The cheapest escalation share whose accuracy is within one point of the best measured.
        best = cascade["accuracy"].max()
        point = cascade[cascade["accuracy"] >= best - 0.01].sort_values("escalated_share").iloc[0]
        operating_point = {
            "escalated_share": float(point["escalated_share"]),
            "accuracy": float(point["accuracy"]),
            "yolo_latency_ms": float(latency_ms),
        }
        vm, _ = references.cpu_vm_usd_per_hour()
        per_1000 = (
            cost_per_1000_images(
                per_image_gpt4o, latency_ms / 1000, vm, operating_point["escalated_share"]
            )
            .to_frame()
            .T
        )
    else:
        notes.append(
            "Chapter 06 has not measured the cascade yet: cost per 1,000 images is not computed."
        )

    sensitivity = {
        "price": cost_sweep(
            spec,
            "price_multiplier_value",
            [0.25, 0.5, 1.0, 1.5, 2.0],
            [REFERENCE_MODEL, "gpt-4.1-mini", "gpt-5-mini"],
            n_pool,
            billing=billing,
        ),
        "tokens_per_image": cost_sweep(
            spec,
            "tokens_per_image",
            [85, 170, 255, 425, 765],
            [REFERENCE_MODEL, "gpt-4.1"],
            n_pool,
            billing=billing,
        ),
        "seed_images": cost_sweep(
            spec,
            "n_seeds",
            [6, 12, 18, 30, 60],
            [REFERENCE_MODEL, "gpt-5-mini"],
            n_pool,
            billing=billing,
        ),
        "pool_size": cost_sweep(
            spec,
            "pool_size",
            [500, 1422, 5000, 20000],
            [REFERENCE_MODEL, "gpt-5-mini"],
            billing=billing,
        ),
    }

    with run.timed("verification"):
        candidates = candidate_count(annotation.boxes, n_pool)
        verification = verification_costs(
            layout,
            candidates,
            grid,
            verification_configurations(cheapest_single),
            billing,
            detail,
        )
    annotated = _load_json(annotation.summary) or {}
    verification_setup = {
        "strategy": VERIFIED_STRATEGY,
        "candidates_mean": candidates.mean,
        "candidates_sent": candidates.sent,
        "candidates_source": candidates.source,
        "n_requests": n_pool,
        "measured_in_chapter_03": "mllm_verified" in annotated.get("box_strategies", []),
        "chapter_03_annotator": annotated.get("annotator"),
    }

    packing = {
        "chapter_03_annotator": annotated.get("annotator"),
        "chapter_03_images_per_request": int(annotated.get("images_per_request", 1)),
    }
    reference = reference_pool_costs(grid)
    summary = {
        "prompt_tokens": counted,
        "n_pool": n_pool,
        "original_estimate_usd": original,
        "gpt4o_standard_usd": reference["standard"],
        "gpt4o_batch_usd": reference["batch"],
        "targets": json.loads(targets.to_json(orient="records")),
        "recorded_cost_usd": float(recorded["cost_usd"].sum()) if not recorded.empty else None,
        "packing": packing,
        "cascade_operating_point": operating_point,
        "usd_per_1000_images": per_1000.iloc[0].to_dict() if per_1000 is not None else None,
        "verification": {
            **verification_setup,
            "costs": json.loads(verification.to_json(orient="records")),
        },
        "notes": notes,
    }
    (config.paths.cost_dir / "cost_summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n"
    )
    grid.to_csv(config.paths.cost_dir / "cost_grid.csv", index=False)
    verification.to_csv(config.paths.cost_dir / "verification_cost.csv", index=False)
    run.counts.update(
        n_pool=n_pool, n_models=len(models), verification_candidates_per_image=candidates.sent
    )
    run.write(
        {
            "cost_summary": config.paths.cost_dir / "cost_summary.json",
            "cost_grid": config.paths.cost_dir / "cost_grid.csv",
            "verification_cost": config.paths.cost_dir / "verification_cost.csv",
        }
    )
    return CostAnalysis(
        spec=spec,
        prompt_tokens=counted,
        n_pool=n_pool,
        boxes_per_image=boxes_per_image,
        grid=grid,
        original_estimate_usd=original,
        targets=targets,
        recorded_usage=recorded,
        break_even=break_even,
        per_1000=per_1000,
        operating_point=operating_point,
        sensitivity=sensitivity,
        notes=notes,
        verification=verification,
        verification_setup=verification_setup,
        packing=packing,
    )

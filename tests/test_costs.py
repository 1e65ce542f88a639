"""Cost arithmetic against hand-computed cases (prices: gpt-4o $2.50 / $1.25 cached /
$10 out per 1M tokens, Batch half; gpt-5 $1.25 / $0.125 / $10, Batch cached $0.0625)."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from matplotlib.figure import Figure
from pydantic import ValidationError

from cascade_defect.costs.model import (
    NEU_DET_POOL_SIZE,
    BillingOptions,
    PromptSpec,
    annotation_cost,
    cacheable_prefix_tokens,
    cheapest_config,
    config_search,
    cost_from_usage,
    cost_grid,
    prompt_token_breakdown,
    spec_cost,
)
from cascade_defect.costs.references import load_cost_references, reference, references_table
from cascade_defect.costs.sweeps import (
    break_even_images,
    cost_per_1000_images,
    cost_sweep,
    human_labelling_cost,
    vendor_labelling_cost,
    yolo_cost_per_image,
)
from cascade_defect.plots.cost import (
    plot_break_even,
    plot_cost_grid,
    plot_cost_per_1000,
    plot_sensitivity,
)

# A test prompt, stated explicitly: 1,290 prefix text tokens (instructions + 18 seeds'
# boxes at 55 tokens each), 20 text tokens per query, 100 output tokens per image.
TEST_SPEC = PromptSpec(
    prefix_text_tokens=1290,
    output_tokens_per_image=100,
    query_text_tokens=20,
    seed_text_tokens=55,
)
SEEDS = [(200, 200)] * 18


# --------------------------------------------------------------------------- prompt tokens


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [(0, 0), (1000, 0), (1023, 0), (1024, 1024), (1100, 1024), (2000, 1920), (2048, 2048)],
)
def test_cacheable_prefix_follows_1024_minimum_and_128_steps(prefix: int, expected: int) -> None:
    assert cacheable_prefix_tokens(prefix) == expected


def test_prompt_breakdown_low_detail_gpt4o() -> None:
    tokens = prompt_token_breakdown(
        "gpt-4o",
        prefix_image_sizes=SEEDS,
        varying_image_sizes=[(200, 200)],
        prefix_text_tokens=1290,
        varying_text_tokens=20,
    )
    assert tokens.prefix_tokens == 18 * 85 + 1290 == 2820
    assert tokens.varying_tokens == 85 + 20
    assert tokens.input_tokens == 2925
    assert tokens.cacheable_tokens == 2816  # 22 * 128


def test_prompt_breakdown_high_detail_and_patch_model() -> None:
    high = prompt_token_breakdown(
        "gpt-4o",
        prefix_image_sizes=SEEDS,
        varying_image_sizes=[(200, 200)],
        prefix_text_tokens=1290,
        detail="high",
    )
    assert high.prefix_tokens == 18 * 255 + 1290
    patch = prompt_token_breakdown(
        "gpt-4.1-mini-2025-04-14",
        prefix_image_sizes=SEEDS,
        varying_image_sizes=[(200, 200)],
        prefix_text_tokens=1290,
    )
    assert patch.model == "gpt-4.1-mini"
    assert patch.prefix_image_tokens == 18 * 80


def test_prompt_spec_seeds_and_packing() -> None:
    six = TEST_SPEC.with_seeds(6)
    assert six.prefix_text_tokens == 1290 - 12 * 55
    assert six.breakdown("gpt-4o").prefix_tokens == 6 * 85 + 630
    packed = PromptSpec(prefix_text_tokens=1290, output_tokens_per_image=100, images_per_request=4)
    assert packed.n_requests(1422) == 356  # ceil(1422 / 4)
    assert packed.breakdown("gpt-4o").varying_tokens == 4 * 85
    assert packed.output_tokens_per_request() == 400
    forced = PromptSpec(prefix_text_tokens=0, output_tokens_per_image=0, image_tokens_override=10)
    assert forced.breakdown("gpt-4o").prefix_tokens == 180


def test_prompt_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PromptSpec(prefix_text_tokens=10, output_tokens_per_image=1, images_per_request=0)
    with pytest.raises(ValueError):
        PromptSpec(prefix_text_tokens=10, output_tokens_per_image=1, seed_text_tokens=5).with_seeds(
            0
        )


# --------------------------------------------------------------------------- annotation cost


def test_standard_without_caching() -> None:
    cost = annotation_cost("gpt-4o", 10, 2000, 100, 50)
    # 10 * 2100 input tokens * $2.50 + 10 * 50 output * $10, per 1M
    assert cost.input_usd == pytest.approx(0.0525)
    assert cost.output_usd == pytest.approx(0.005)
    assert cost.total_usd == pytest.approx(0.0575)
    assert cost.cached_input_tokens == 0
    assert cost.usd_per_request == pytest.approx(0.00575)


@pytest.mark.parametrize(
    ("hit_rate", "expected"),
    [
        # all hit: 10 * 1920 cached * $1.25 + 10 * 180 uncached * $2.50 + $0.005 output
        (1.0, 0.024 + 0.0045 + 0.005),
        # half hit: 9600 cached * $1.25 + 11400 uncached * $2.50 + $0.005
        (0.5, 0.012 + 0.0285 + 0.005),
        (0.0, 0.0575),
    ],
)
def test_prompt_caching_discounts_the_cacheable_prefix(hit_rate: float, expected: float) -> None:
    billing = BillingOptions(prompt_caching=True, cache_hit_rate=hit_rate)
    cost = annotation_cost("gpt-4o", 10, 2000, 100, 50, billing)
    assert cost.total_usd == pytest.approx(expected)
    assert cost.input_tokens == 21000


def test_short_prefix_earns_no_caching() -> None:
    plain = annotation_cost("gpt-4o", 10, 1000, 100, 50)
    cached = annotation_cost(
        "gpt-4o", 10, 1000, 100, 50, BillingOptions(prompt_caching=True, cache_hit_rate=1)
    )
    assert cached.total_usd == pytest.approx(plain.total_usd)


def test_batch_and_caching_interplay() -> None:
    # gpt-4o on Batch: half price, no listed Batch cache discount -> caching changes nothing
    batch = annotation_cost("gpt-4o", 10, 2000, 100, 50, BillingOptions(batch=True))
    assert batch.total_usd == pytest.approx(0.02625 + 0.0025)
    cached_batch = BillingOptions(batch=True, prompt_caching=True, cache_hit_rate=1)
    both = annotation_cost("gpt-4o", 10, 2000, 100, 50, cached_batch)
    assert both.total_usd == pytest.approx(batch.total_usd)
    # assumed stacking: 19200 * $0.625 + 1800 * $1.25 + 500 * $5
    assumed = annotation_cost(
        "gpt-4o",
        10,
        2000,
        100,
        50,
        billing=BillingOptions(
            batch=True, prompt_caching=True, cache_hit_rate=1, batch_caching=True
        ),
    )
    assert assumed.total_usd == pytest.approx(0.012 + 0.00225 + 0.0025)
    # gpt-5 lists a Batch cached price: 19200 * $0.0625 + 1800 * $0.625 + 500 * $5
    gpt5 = annotation_cost("gpt-5", 10, 2000, 100, 50, cached_batch)
    assert gpt5.total_usd == pytest.approx(0.0012 + 0.001125 + 0.0025)
    assert gpt5.mode == "batch"


def test_price_multiplier_scales_linearly() -> None:
    one = annotation_cost("gpt-4.1", 7, 3000, 90, 40, BillingOptions(prompt_caching=True))
    two = annotation_cost(
        "gpt-4.1", 7, 3000, 90, 40, BillingOptions(prompt_caching=True, price_multiplier=2)
    )
    assert two.total_usd == pytest.approx(2 * one.total_usd)


def test_annotation_cost_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        annotation_cost("gpt-4o", n_requests=-1, prefix_tokens=1, varying_tokens=1, output_tokens=1)


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"cache_hit_rate": 1.5}, "cache_hit_rate", "less than or equal to 1"),
        ({"cache_hit_rate": -0.1}, "cache_hit_rate", "greater than or equal to 0"),
        ({"price_multiplier": -1}, "price_multiplier", "greater than or equal to 0"),
        ({"prompt_cache": True}, "prompt_cache", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_billing_option_is_named(options: dict, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        BillingOptions(**options)
    (error,) = raised.value.errors()
    assert error["loc"] == (field,)
    assert message in str(raised.value)


def test_a_sweep_refuses_a_negative_price_multiplier() -> None:
    with pytest.raises(ValidationError, match="price_multiplier"):
        cost_sweep(TEST_SPEC, "price_multiplier_value", [-1.0], ["gpt-4o"])


def test_billing_options_are_frozen() -> None:
    with pytest.raises(ValidationError):
        BillingOptions().batch = True  # type: ignore[misc]


def test_spec_cost_for_the_pool() -> None:
    cost = spec_cost("gpt-4o", TEST_SPEC, NEU_DET_POOL_SIZE)
    # 1422 * 2925 input * $2.50 + 1422 * 100 output * $10
    assert cost.total_usd == pytest.approx((1422 * 2925 * 2.50 + 1422 * 100 * 10.0) / 1e6)


def test_cost_grid_covers_models_times_modes() -> None:
    grid = cost_grid(TEST_SPEC, models=["gpt-4o", "gpt-5-mini"])
    assert len(grid) == 2 * 2 * 2
    assert set(zip(grid["mode"], grid["prompt_caching"], strict=True)) == {
        ("standard", False),
        ("standard", True),
        ("batch", False),
        ("batch", True),
    }
    cell = grid[
        (grid["model"] == "gpt-4o") & (grid["mode"] == "standard") & ~grid["prompt_caching"]
    ]
    assert cell["total_usd"].item() == pytest.approx(11.820375)
    assert cell["usd_per_1000_images"].item() == pytest.approx(11.820375 / 1422 * 1000)


# --------------------------------------------------------------------------- recorded usage


def test_cost_from_usage_sums_per_model_and_mode() -> None:
    records = [
        {
            "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 2000, "cached_tokens": 1024, "completion_tokens": 100},
        },
        {
            "model": "gpt-4o",
            "usage": {
                "prompt_tokens": 2000,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens": 100,
            },
        },
        SimpleNamespace(
            model="gpt-5",
            batch=True,
            usage=SimpleNamespace(prompt_tokens=2000, cached_tokens=1024, completion_tokens=100),
        ),
    ]
    table = cost_from_usage(records).set_index(["model", "batch"])
    gpt4o = table.loc[("gpt-4o", False)]
    assert gpt4o["n_requests"] == 2
    assert gpt4o["cached_tokens"] == 1024
    assert gpt4o["cache_hit_rate"] == pytest.approx(0.5)
    assert gpt4o["cost_usd"] == pytest.approx(0.00472 + (2000 * 2.5 + 100 * 10) / 1e6)
    assert table.loc[("gpt-5", True), "cost_usd"] == pytest.approx(
        (976 * 0.625 + 1024 * 0.0625 + 100 * 5) / 1e6
    )


def test_cost_from_usage_reads_responses_api_names() -> None:
    record = {
        "model": "gpt-4o",
        "usage": {
            "input_tokens": 2000,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 100,
        },
    }
    assert cost_from_usage([record])["cost_usd"].item() == pytest.approx(0.00472)


def test_cost_from_usage_of_nothing_is_empty() -> None:
    assert cost_from_usage([]).empty


# --------------------------------------------------------------------------- human labelling


def test_human_labelling_cost() -> None:
    # 100 images * 2 boxes * 7 s = 1400 s = 0.3889 h at $18/h
    assert human_labelling_cost(100, 2, 7.0, 18.0) == pytest.approx(7.0)
    assert human_labelling_cost(100, 2, 35.0, 18.0) == pytest.approx(35.0)
    # image-level only: 100 images * 3.6 s = 0.1 h at $10/h
    assert human_labelling_cost(100, 0, 7.0, 10.0, seconds_per_image=3.6) == pytest.approx(1.0)


def test_vendor_labelling_cost() -> None:
    assert vendor_labelling_cost(100, 2, 0.063) == pytest.approx(12.6)
    assert vendor_labelling_cost(100, 2, 0.063, labellers_per_item=3) == pytest.approx(37.8)
    assert vendor_labelling_cost(100, 0, 0.063, price_per_image=0.035) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        vendor_labelling_cost(1, 1, 1.0, labellers_per_item=0)


def test_break_even() -> None:
    n = break_even_images(human_cost_per_image=0.07, mllm_cost_per_image=0.02, mllm_fixed_cost=5)
    assert n == pytest.approx(100)
    assert n * 0.07 == pytest.approx(5 + n * 0.02)  # both routes cost the same there
    assert break_even_images(0.07, 0.02) == 0
    assert math.isinf(break_even_images(0.02, 0.07, 5))
    assert math.isinf(break_even_images(0.02, 0.02))


# --------------------------------------------------------------------------- cascade


def test_yolo_cost_per_image() -> None:
    # 0.05 s per image on a $0.36/h VM = $0.000005
    assert yolo_cost_per_image(0.05, 0.36) == pytest.approx(5e-6)


def test_cascade_cost_per_1000_images() -> None:
    costs = cost_per_1000_images(
        mllm_cost_per_image=0.004, yolo_latency_s=0.05, vm_usd_per_hour=0.36, escalation_rate=0.2
    )
    assert costs["mllm_only"] == pytest.approx(4.0)
    assert costs["yolo_only"] == pytest.approx(0.005)
    assert costs["cascade"] == pytest.approx(0.005 + 0.2 * 4.0)
    none = cost_per_1000_images(0.004, 0.05, 0.36, 0.0)
    assert none["cascade"] == pytest.approx(none["yolo_only"])
    with pytest.raises(ValueError):
        cost_per_1000_images(0.004, 0.05, 0.36, 1.2)


# --------------------------------------------------------------------------- sensitivity


def test_price_sweep_is_linear() -> None:
    sweep = cost_sweep(
        TEST_SPEC, "price_multiplier_value", [0.5, 1.0, 2.0], ["gpt-4o"], modes=[(False, False)]
    )
    costs = sweep.set_index("price_multiplier_value")["total_usd"]
    assert costs[2.0] == pytest.approx(2 * costs[1.0]) and costs[0.5] == pytest.approx(
        costs[1.0] / 2
    )


def test_tokens_per_image_sweep_matches_the_real_rule_at_85() -> None:
    sweep = cost_sweep(TEST_SPEC, "tokens_per_image", [85, 255], ["gpt-4o"], modes=[(False, False)])
    real = spec_cost("gpt-4o", TEST_SPEC, NEU_DET_POOL_SIZE).total_usd
    assert sweep.loc[sweep["tokens_per_image"] == 85, "total_usd"].item() == pytest.approx(real)
    # each image token more costs 19 images * 1422 requests * $2.50 / 1M
    delta = sweep["total_usd"].diff().iloc[-1]
    assert delta == pytest.approx(170 * 19 * 1422 * 2.5 / 1e6)


def test_seed_sweep_adds_image_and_box_text_per_seed() -> None:
    sweep = cost_sweep(TEST_SPEC, "n_seeds", [6, 18], ["gpt-4o"], modes=[(False, False)])
    prefix = sweep.set_index("n_seeds")["prefix_tokens"]
    assert prefix[18] - prefix[6] == 12 * (85 + 55)


def test_pool_sweep_scales_with_requests() -> None:
    sweep = cost_sweep(TEST_SPEC, "pool_size", [711, 1422], ["gpt-5-mini"], modes=[(True, False)])
    costs = sweep.set_index("pool_size")["total_usd"]
    assert costs[1422] == pytest.approx(2 * costs[711])


def test_every_sweep_point_is_the_cost_model_at_that_setting() -> None:
    """Each row equals pricing the varied configuration directly, and the column names it."""
    models, modes = ["gpt-4o", "gpt-5-mini"], [(False, False), (True, True)]
    direct = {
        "price_multiplier_value": (1.5, lambda: (TEST_SPEC, NEU_DET_POOL_SIZE, 1.5)),
        "tokens_per_image": (
            255,
            lambda: (replace(TEST_SPEC, image_tokens_override=255), NEU_DET_POOL_SIZE, 1.0),
        ),
        "n_seeds": (30, lambda: (TEST_SPEC.with_seeds(30), NEU_DET_POOL_SIZE, 1.0)),
        "pool_size": (5000, lambda: (TEST_SPEC, 5000, 1.0)),
    }
    for parameter, (value, setting) in direct.items():
        sweep = cost_sweep(TEST_SPEC, parameter, [value], models, modes=modes)
        assert sweep[parameter].tolist() == [value] * len(models) * len(modes)
        spec, n_images, multiplier = setting()
        for row in sweep.to_dict("records"):
            billing = BillingOptions(
                batch=row["mode"] == "batch",
                prompt_caching=row["prompt_caching"],
                price_multiplier=multiplier,
            )
            expected = spec_cost(row["model"], spec, n_images, billing)
            assert row["total_usd"] == expected.total_usd, parameter
    with pytest.raises(ValueError, match="unknown sweep parameter"):
        cost_sweep(TEST_SPEC, "detail", [1], models)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cheapest config


def test_cheapest_config_is_the_minimum_of_the_search() -> None:
    table = config_search(TEST_SPEC, models=["gpt-4o", "gpt-4.1-mini"], images_per_request=(1, 4))
    assert len(table) == 2 * 2 * 2 * 4
    assert table["total_usd"].round(9).is_monotonic_increasing
    best = cheapest_config(TEST_SPEC, models=["gpt-4o", "gpt-4.1-mini"], images_per_request=(1, 4))
    assert best["total_usd"] == pytest.approx(table["total_usd"].min())
    assert bool(best["within_budget"])


def test_cheapest_config_flags_a_missed_budget() -> None:
    best = cheapest_config(TEST_SPEC, models=["gpt-4o"], budget_usd=0.01)
    assert not best["within_budget"]
    assert best["total_usd"] > 0.01


def test_ties_prefer_no_caching() -> None:
    # gpt-4o on Batch: caching earns nothing, so the tie goes to caching off
    best = cheapest_config(
        TEST_SPEC, models=["gpt-4o"], details=("low",), modes=[(True, True), (True, False)]
    )
    assert best["mode"] == "batch" and not best["prompt_caching"]


# --------------------------------------------------------------------------- references


def test_reference_figures_carry_provenance() -> None:
    refs = load_cost_references()
    for key in (
        "human_labelling.seconds_per_box_extreme_clicking",
        "human_labelling.seconds_per_box_conventional",
        "human_labelling.hourly_rate_us_office_support",
        "vendor_labelling.google_data_labeling_per_box",
        "vendor_labelling.google_data_labeling_per_image_classification",
        "azure_custom_vision.training_per_compute_hour",
        "azure_custom_vision.predictions_per_1000",
        "azure_custom_vision.retirement",
        "inference_vms.cpu_vm",
        "inference_vms.gpu_vm_t4",
    ):
        ref = refs[key]
        assert ref.source and ref.date, key
    assert reference("human_labelling.seconds_per_box_extreme_clicking").value == 7.0
    assert reference("azure_custom_vision.retirement").value == "2028-09-25"
    with pytest.raises(KeyError):
        reference("nope.nothing")


def test_unverified_references_say_why() -> None:
    for ref in load_cost_references().values():
        if not ref.verified:
            assert ref.note, ref.key


def test_references_table_has_one_row_per_figure() -> None:
    table = references_table()
    assert {"key", "value", "source", "date", "verified"} <= set(table.columns)
    assert table["key"].is_unique
    assert table["key"].str.startswith("openai.").sum() >= 6


# --------------------------------------------------------------------------- plots


def test_plots_return_figures() -> None:
    grid = cost_grid(TEST_SPEC, models=["gpt-4o", "gpt-5-nano"])
    sweep = cost_sweep(TEST_SPEC, "n_seeds", [6, 18], ["gpt-4o"])
    figures = [
        plot_cost_grid(grid),
        plot_cost_grid(grid, kind="heatmap"),
        plot_sensitivity(sweep, "n_seeds", reference=2.5, reference_label="budget"),
        plot_break_even({"extreme clicking": 0.05}, {"gpt-4o": 0.004}, 1422, 1.0),
        plot_cost_per_1000(cost_per_1000_images(0.004, 0.05, 0.36, 0.2)),
        plot_cost_per_1000(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})),
    ]
    for fig in figures:
        assert isinstance(fig, Figure) and fig.axes
    with pytest.raises(ValueError):
        plot_cost_grid(grid, kind="pie")


def test_reference_pool_costs_pick_each_mode_of_the_reference_model() -> None:
    from cascade_defect.chapters.c07_cost import reference_pool_costs

    grid = pd.DataFrame(
        [
            {"model": "gpt-4o-mini", "mode": "standard", "prompt_caching": False, "total_usd": 1.0},
            {"model": "gpt-4o-mini", "mode": "standard", "prompt_caching": True, "total_usd": 0.6},
            {"model": "gpt-4o-mini", "mode": "batch", "prompt_caching": False, "total_usd": 0.5},
            {"model": "gpt-4o", "mode": "standard", "prompt_caching": False, "total_usd": 14.0},
            {"model": "gpt-4o", "mode": "standard", "prompt_caching": True, "total_usd": 8.0},
            {"model": "gpt-4o", "mode": "batch", "prompt_caching": False, "total_usd": 7.0},
            {"model": "gpt-4o", "mode": "batch", "prompt_caching": True, "total_usd": 4.0},
        ]
    )
    assert reference_pool_costs(grid) == {"standard": 14.0, "standard_cached": 8.0, "batch": 7.0}
    assert reference_pool_costs(grid, "gpt-4o-mini") == {
        "standard": 1.0,
        "standard_cached": 0.6,
        "batch": 0.5,
    }

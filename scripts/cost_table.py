"""Print what pseudo-labelling the NEU-DET pool would cost per model and billing mode.

The text-token counts below are ASSUMPTIONS (the notebook replaces them with the real,
tokenizer-counted prompt); image tokens and prices come from the packaged pricing data.

    .venv/bin/python scripts/cost_table.py [--prefix-text-tokens N] [--output-tokens N] ...
"""

from __future__ import annotations

import argparse

import pandas as pd

from cascade_defect.costs.model import (
    DEFAULT_CACHE_HIT_RATE,
    NEU_DET_POOL_SIZE,
    BillingOptions,
    PromptSpec,
    cheapest_config,
    config_search,
    cost_grid,
)
from cascade_defect.costs.pricing import load_pricing

# Assumed prompt text (not counted): ~300 tokens of instructions plus, per seed image, its
# class name and normalised box coordinates (~55 tokens for ~2 boxes).
ASSUMED_INSTRUCTION_TOKENS = 300
ASSUMED_TEXT_TOKENS_PER_SEED = 55
ASSUMED_N_SEEDS = 18
ASSUMED_QUERY_TEXT_TOKENS = 20
# Assumed answer: JSON with ~2 boxes (class + 4 coordinates each) per image.
ASSUMED_OUTPUT_TOKENS_PER_IMAGE = 100

GPT4O_BUDGET_USD = 2.50
OVERALL_BUDGET_USD = 0.50
PACKING_OPTIONS = (1, 2, 4, 8)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prefix-text-tokens",
        type=int,
        default=ASSUMED_INSTRUCTION_TOKENS + ASSUMED_N_SEEDS * ASSUMED_TEXT_TOKENS_PER_SEED,
        help="text tokens of the static prefix (instructions + seed classes/boxes)",
    )
    parser.add_argument("--query-text-tokens", type=int, default=ASSUMED_QUERY_TEXT_TOKENS)
    parser.add_argument("--output-tokens", type=int, default=ASSUMED_OUTPUT_TOKENS_PER_IMAGE)
    parser.add_argument(
        "--reasoning-tokens",
        type=int,
        default=0,
        help="hidden reasoning tokens per image for reasoning models (billed as output)",
    )
    parser.add_argument("--pool", type=int, default=NEU_DET_POOL_SIZE)
    parser.add_argument("--detail", default="low", choices=("low", "high"))
    parser.add_argument("--cache-hit-rate", type=float, default=DEFAULT_CACHE_HIT_RATE)
    return parser.parse_args()


def main() -> None:
    args = _args()
    spec = PromptSpec(
        prefix_text_tokens=args.prefix_text_tokens,
        output_tokens_per_image=args.output_tokens + args.reasoning_tokens,
        n_seed_images=ASSUMED_N_SEEDS,
        query_text_tokens=args.query_text_tokens,
        detail=args.detail,
        seed_text_tokens=ASSUMED_TEXT_TOKENS_PER_SEED,
    )
    print(
        f"Pool {args.pool} images, {spec.n_seed_images} seed + 1 query image per request "
        f"(200x200, detail={spec.detail}).\nASSUMED text tokens: prefix "
        f"{spec.prefix_text_tokens}, per query {spec.query_text_tokens}; ASSUMED output "
        f"{spec.output_tokens_per_image} tokens/image (incl. {args.reasoning_tokens} "
        f"reasoning); cache hit rate {args.cache_hit_rate:.0%} (assumed).\n"
    )
    billing = BillingOptions(cache_hit_rate=args.cache_hit_rate)
    grid = cost_grid(spec, args.pool, billing=billing)
    grid["mode_label"] = grid["mode"] + grid["prompt_caching"].map({False: "", True: "+cache"})
    table = grid.pivot(index="model", columns="mode_label", values="total_usd")
    table = table[["standard", "standard+cache", "batch", "batch+cache"]]
    tokens = grid.drop_duplicates("model").set_index("model")[
        ["image_tokens_per_image", "prefix_tokens", "varying_tokens"]
    ]
    table = tokens.join(table).loc[list(load_pricing())]
    with pd.option_context("display.float_format", "{:,.2f}".format, "display.width", 120):
        print("USD to annotate the pool (columns: billing mode):")
        print(table.to_string())

    gpt4o = cheapest_config(
        spec,
        args.pool,
        models=["gpt-4o"],
        budget_usd=GPT4O_BUDGET_USD,
        images_per_request=PACKING_OPTIONS,
        billing=billing,
    )
    overall = cheapest_config(
        spec,
        args.pool,
        budget_usd=OVERALL_BUDGET_USD,
        images_per_request=PACKING_OPTIONS,
        billing=billing,
    )
    gpt4o_1 = cheapest_config(
        spec,
        args.pool,
        models=["gpt-4o"],
        budget_usd=GPT4O_BUDGET_USD,
        billing=billing,
    )
    for label, best in (
        ("gpt-4o, one query image per request", gpt4o_1),
        (f"gpt-4o, up to {max(PACKING_OPTIONS)} query images per request", gpt4o),
        ("any model", overall),
    ):
        print(
            f"\nCheapest ({label}): {best['model']} detail={best['detail']} "
            f"mode={best['mode']} caching={best['prompt_caching']} "
            f"images/request={best['images_per_request']} -> ${best['total_usd']:.2f} "
            f"(budget ${best['budget_usd']:.2f}: "
            f"{'met' if best['within_budget'] else 'NOT met'})"
        )

    packed = config_search(
        spec,
        args.pool,
        models=["gpt-4o"],
        images_per_request=PACKING_OPTIONS,
        billing=billing,
    )
    affordable = packed[packed["total_usd"] <= GPT4O_BUDGET_USD]
    if affordable.empty:
        print(f"\nNo gpt-4o configuration tried stays within ${GPT4O_BUDGET_USD:.2f}.")
    else:
        fewest = affordable.sort_values(["images_per_request"], kind="stable").iloc[0]
        print(
            f"\nFewest query images per request keeping gpt-4o within "
            f"${GPT4O_BUDGET_USD:.2f}: {fewest['images_per_request']} "
            f"(detail={fewest['detail']}, mode={fewest['mode']}, "
            f"caching={fewest['prompt_caching']}) -> ${fewest['total_usd']:.2f}"
        )


if __name__ == "__main__":
    main()
